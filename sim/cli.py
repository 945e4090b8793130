"""``python -m sim``: replay scenarios and run the pageable-guest workload.

Bad input gets one line on stderr naming the problem, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from model.formats import EptpError
from model.physmem import MemoryAccessError

from .backend import BACKENDS, BackendUnavailable
from .scenario import ScenarioError, load_scenario

__all__ = ["main"]

PROG = "python -m sim"


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, not usage + error
        raise UsageError(f"{self.prog}: {message}")


def _mix(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: expected three numbers R,W,F") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: expected three non-negative weights R,W,F")
    return parts


def _positive(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be positive")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v} is not in 0..1")
    return v


def _probability(text: str) -> float:
    v = _fraction(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"{v} must be below 1")
    return v


def _nonneg(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must not be negative")
    return v


def _add_rtl_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("RTL backend (DRAM model and port behaviour)")
    g.add_argument("--dram-latency", type=_positive, default=8, metavar="L",
                   help="cycles from a read's acceptance to its response (default 8)")
    g.add_argument("--cas-latency", type=_positive, default=12, help="the same for a CAS (default 12)")
    g.add_argument("--row-miss-penalty", type=_nonneg, default=6,
                   help="extra cycles when an access misses its bank's open row (default 6)")
    g.add_argument("--max-outstanding", type=_positive, default=4,
                   help="DRAM requests in flight at most (default 4)")
    g.add_argument("--dram-stall", type=_probability, default=0.0, metavar="P",
                   help="chance per cycle that the DRAM is not ready (default 0)")
    g.add_argument("--bus-error-rate", type=_probability, default=0.0, metavar="P",
                   help="chance that a DRAM access answers with a bus error (default 0)")
    g.add_argument("--resp-stall", type=_probability, default=0.0, metavar="P",
                   help="chance per cycle that the translate response is not taken (default 0)")
    g.add_argument("--dram-seed", type=int, default=1, help="seed of the stall/error generators")
    g.add_argument("--wave", "--vcd", dest="wave", metavar="FILE",
                   help="write a waveform (rtl: FILE.vcd, verilator: FILE.fst) with a GTKWave save "
                        "file FILE.gtkw, enum filters and a transaction log FILE.txn.log")
    _add_unit_options(p)


def _add_unit_options(p: argparse.ArgumentParser) -> None:
    u = p.add_argument_group("the unit's parameters (RTL backend)")
    u.add_argument("--walkers", type=_positive, default=2, help="concurrent walks (default 2)")
    u.add_argument("--tlb-sets", type=_positive, default=16, help="4K TLB sets (default 16)")
    u.add_argument("--tlb-ways", type=_positive, default=4, help="4K TLB ways (default 4)")
    u.add_argument("--pde-cache", type=_nonneg, default=8, help="PDE cache entries (default 8)")
    u.add_argument("--no-caches", action="store_true",
                   help="no TLB and no paging-structure caches: every request walks")


def _rtl_kwargs(args) -> dict:
    if args.backend == "model":
        if args.wave:
            raise UsageError(f"{PROG}: --wave needs --backend rtl or verilator (the model has no waveform)")
        return {}
    if args.wave:
        want = ".fst" if args.backend == "verilator" else ".vcd"
        if Path(args.wave).suffix != want:
            raise UsageError(f"{PROG}: --wave {args.wave}: the {args.backend} backend writes {want} "
                             f"(rtl: .vcd, verilator: .fst)")
    from .dram import DramConfig
    dram = DramConfig(read_latency=args.dram_latency, cas_latency=args.cas_latency,
                      row_miss_penalty=args.row_miss_penalty, max_outstanding=args.max_outstanding,
                      stall_probability=args.dram_stall, error_probability=args.bus_error_rate,
                      seed=args.dram_seed)
    try:
        dram.validate()
    except ValueError as e:
        raise UsageError(f"{PROG}: {e}") from None
    unit = _unit_kwargs(args)
    return {"dram": dram, "wave": args.wave, "resp_stall_probability": args.resp_stall,
            "seed": args.dram_seed, "unit": unit}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Cycle-level EPT page-walk unit: golden model, "
                                      "replay and cosimulation.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    r = sub.add_parser("replay", help="run a replay scenario (JSON) and print JSON Lines",
                       description="Execute the ops of SCENARIO in order and print one JSON "
                                   "line per read and translate (see README, Replay contract).")
    r.add_argument("scenario", metavar="SCENARIO.json")
    r.add_argument("--backend", default="model", choices=sorted(BACKENDS),
                   help="model (golden model), rtl (the Amaranth unit in pysim) or verilator "
                        "(the same unit compiled with Verilator: same results, faster)")
    _add_rtl_options(r)

    w = sub.add_parser("run", help="run the pageable-guest workload and print a summary",
                       description="A guest touches more pages than the host gives it frames; "
                                   "EPT violations fault pages in with pmap_enter, a clock page "
                                   "daemon evicts using the A/D bits the walker sets.")
    w.add_argument("--backend", default="rtl", choices=sorted(BACKENDS),
                   help="rtl (cosimulation in pysim, default), verilator (the same, compiled "
                        "with Verilator) or model (golden model alone)")
    w.add_argument("--accesses", type=_positive, default=4000, help="guest accesses (default 4000)")
    w.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    w.add_argument("--guest-pages", type=_positive, default=256,
                   help="guest working set in 4K pages (default 256)")
    w.add_argument("--host-frames", type=_positive, default=96,
                   help="frames the host gives the guest (default 96)")
    w.add_argument("--mix", type=_mix, default=(0.6, 0.3, 0.1), metavar="R,W,F",
                   help="read,write,fetch weights (default 0.6,0.3,0.1)")
    w.add_argument("--locality", type=_fraction, default=0.8,
                   help="share of accesses to the hot set (default 0.8)")
    w.add_argument("--hot-pages", type=_positive, default=24, help="hot-set size (default 24)")
    w.add_argument("--sequential", type=_fraction, default=0.15,
                   help="chance an access goes to the next page (default 0.15)")
    w.add_argument("--no-ad", action="store_true", help="run with EPTP A/D flags disabled")
    w.add_argument("--race-rate", type=_fraction, default=0.02, metavar="P",
                   help="chance per cycle (rtl) or per access (model) that the host agent runs a "
                        "pmap operation on the page being translated (default 0.02)")
    w.add_argument("--summary", default="build/sim/summary.json",
                   help="where to write the JSON summary (default build/sim/summary.json)")
    w.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_rtl_options(w)

    fz = sub.add_parser("fuzz", help="differential fuzzing: hostile tables on the RTL vs the golden model",
                        description="Random hostile EPT table sets (every reserved bit, 1G/2M pages, "
                                    "self/parent/aliased tables, the top of MAXPHYADDR, invalid EPTPs) "
                                    "and access streams with host stores and INVEPTs, run on the RTL "
                                    "and checked against the golden model. The last line is "
                                    "'N walks, M mismatches'; a mismatch exits 1 and leaves a replay "
                                    "scenario that reproduces it.")
    fz.add_argument("--walks", type=_positive, default=1000, metavar="N",
                    help="translations to run (default 1000)")
    fz.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    fz.add_argument("--backend", default="rtl", choices=["rtl", "verilator"],
                    help="rtl (pysim, default) or verilator (same results, much faster)")
    fz.add_argument("--faults", action="store_true",
                    help="hostile DRAM too: bus errors on entries and at random, long stalls, "
                         "latencies in the thousands of cycles")
    fz.add_argument("--cases-per-round", type=_positive, default=12, metavar="K",
                    help="table sets per unit instance (default 12)")
    fz.add_argument("--out", default="build/fuzz", metavar="DIR",
                    help="where reproducers and report.json go (default build/fuzz)")
    fz.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_unit_options(fz)

    ra = sub.add_parser("races", help="host pmap operations racing walks at every cycle offset",
                        description="clear_reference, clear_modify, protect, remove and enter-on-a-"
                                    "new-frame, run at every cycle offset of a cold and a warm "
                                    "translation of each access kind; checks: scoreboard, one answer "
                                    "per request, no A/D resurrection, no stale translation after "
                                    "INVEPT. The last line is 'N races, M failures'.")
    ra.add_argument("--backend", default="rtl", choices=["rtl", "verilator"],
                    help="rtl (pysim, default) or verilator")
    ra.add_argument("--max-offset", type=_positive, default=72, metavar="CYCLES",
                    help="offsets 0..CYCLES-1 from the request (default 72: past a cold walk and its CASes)")
    ra.add_argument("--no-ad", action="store_true", help="EPTP A/D flags disabled")
    ra.add_argument("--out", default="build/reliability/races.json", metavar="FILE.json",
                    help="where to write the JSON report (default build/reliability/races.json)")
    ra.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_unit_options(ra)

    so = sub.add_parser("soak", help="the pageable guest for a million translations, memory sampled",
                        description="Run the default pageable-guest workload for N translations "
                                    "(every one checked) and sample resident memory; fails on any "
                                    "mismatch or if memory grows. The last line is "
                                    "'N translations, M mismatches'.")
    so.add_argument("--translations", type=_positive, default=1_000_000, metavar="N",
                    help="about this many translations (default 1000000)")
    so.add_argument("--backend", default="verilator", choices=["rtl", "verilator"],
                    help="verilator (default: the fastest) or rtl")
    so.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    so.add_argument("--quiet", action="store_true", help="no progress lines")

    fo = sub.add_parser("formal", help="bounded proof of the handshake and CAS properties (yosys sat)",
                        description="Prove hw/checks.py's Asserts on a walker whose inputs are all "
                                    "free (the memory only answers what was asked) for N cycles from "
                                    "reset, with yosys's SAT solver; and show the depth reaches a CAS "
                                    "(asserting 'no CAS' must fail).")
    fo.add_argument("--depth", type=_positive, default=8, metavar="N",
                    help="cycles to prove (default 8; yosys's solver needs minutes per cycle beyond)")
    fo.add_argument("--reach-depth", type=_positive, default=12, metavar="N",
                    help="cycles within which a CAS must be reachable (default 12)")
    fo.add_argument("--out", default="build/formal", metavar="DIR", help="work folder (default build/formal)")

    wv = sub.add_parser("wave", help="a short run with a waveform, opened in GTKWave",
                        description="Run a short pageable-guest workload (or replay SCENARIO) on "
                                    "the RTL with a waveform, a GTKWave save file (signals grouped "
                                    "by block, enums by name) and a transaction log; open GTKWave "
                                    "on it if there is a display, else print the command.")
    wv.add_argument("scenario", nargs="?", metavar="SCENARIO.json",
                    help="a replay scenario instead of the pageable guest")
    wv.add_argument("--backend", default="rtl", choices=["rtl", "verilator"],
                    help="rtl (pysim, writes VCD; default) or verilator (writes FST)")
    wv.add_argument("--accesses", type=_positive, default=60, help="guest accesses (default 60)")
    wv.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    wv.add_argument("--out", default="build/wave/ept", metavar="PATH",
                    help="the dump's path without suffix (default build/wave/ept: "
                         "ept.vcd or ept.fst, ept.gtkw, ept.txn.log)")
    wv.add_argument("--no-open", action="store_true", help="do not start GTKWave")
    _add_rtl_options(wv)

    from .verilog import DEFAULT_OUT, add_parameter_options, top_class
    v = sub.add_parser("verilog", help="write the unit as Verilog (top module ept_walker)",
                       description=f"Convert {top_class().__name__} to Verilog with the given "
                                   "parameters; the options below are its constructor's.")
    v.add_argument("--out", default=DEFAULT_OUT, metavar="FILE.v",
                   help=f"where to write the Verilog (default {DEFAULT_OUT})")
    v.add_argument("--ports", action="store_true",
                   help="print the port list as a Markdown table instead of writing Verilog")
    add_parameter_options(v)

    li = sub.add_parser("lint", help="verilator --lint-only -Wall on the generated Verilog",
                        description="Lint FILE.v with Verilator -Wall and the reviewed waivers "
                                    "in hw/lint_waivers.vlt; exit 1 on any warning.")
    li.add_argument("verilog", nargs="?", default=DEFAULT_OUT, metavar="FILE.v",
                    help=f"(default {DEFAULT_OUT}, written by `verilog`)")

    from .synth import DEFAULT_REPORT, DEFAULT_TARGETS, TARGETS
    s = sub.add_parser("synth", help="ECP5 synthesis and place-and-route (yowasp yosys + nextpnr)",
                       description="Synthesize the unit with yosys synth_ecp5, place and route it "
                                   "with nextpnr-ecp5 at a 100 MHz constraint, and write fmax and "
                                   "utilization per target.")
    s.add_argument("--target", action="append", choices=sorted(TARGETS), metavar="TARGET",
                   help=f"one of {', '.join(sorted(TARGETS))}; repeatable "
                        f"(default: {' '.join(DEFAULT_TARGETS)})")
    s.add_argument("--freq", type=_positive, default=100, metavar="MHZ",
                   help="clock constraint in MHz (default 100)")
    s.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    s.add_argument("--report", default=DEFAULT_REPORT,
                   help=f"where to write the JSON report (default {DEFAULT_REPORT})")
    add_parameter_options(s)
    return p


def cmd_replay(args) -> int:
    from .replay import replay
    scenario = load_scenario(args.scenario)
    kw = _rtl_kwargs(args)
    _output_path("--wave", args.wave)
    result = replay(scenario, args.backend, **kw)
    for m in result.mismatches:
        print(f"MISMATCH: {m}", file=sys.stderr)
    return 1 if result.mismatches else 0


def _output_path(flag: str, path: str | None) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if path is None:
        return
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{PROG}: cannot write {flag} {path}: {e.strerror}") from None
    if p.is_dir() or not os.access(p.parent, os.W_OK):
        raise UsageError(f"{PROG}: cannot write {flag} {path}: "
                         f"{'is a directory' if p.is_dir() else 'directory not writable'}")


def cmd_run(args) -> int:
    from .run import format_summary, run_workload, write_summary
    from .workload import WorkloadOptions
    opts = WorkloadOptions(accesses=args.accesses, seed=args.seed, guest_pages=args.guest_pages,
                           host_frames=args.host_frames, mix=args.mix, locality=args.locality,
                           hot_pages=args.hot_pages, sequential=args.sequential, ad=not args.no_ad,
                           race_rate=args.race_rate)
    try:
        opts.validate()
    except ValueError as e:
        raise UsageError(f"{PROG} run: {e}") from None
    kw = _rtl_kwargs(args)
    _output_path("--summary", args.summary)
    _output_path("--wave", args.wave)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    summary = run_workload(opts, args.backend, progress=progress, **kw)
    write_summary(summary, args.summary)
    print(format_summary(summary))
    print(f"summary written to {args.summary}")
    if args.wave:
        print(f"waveform written to {args.wave} (open with: gtkwave {Path(args.wave).with_suffix('.gtkw')})")
    return 1 if summary["mismatches"] else 0


def _unit_kwargs(args) -> dict:
    unit = {"walkers": args.walkers, "tlb_sets": args.tlb_sets, "tlb_ways": args.tlb_ways,
            "pde_cache": args.pde_cache, "caches": not args.no_caches}
    from hw.top import PageWalkUnit
    try:
        PageWalkUnit(**unit)
    except ValueError as e:
        raise UsageError(f"{PROG}: {e}") from None
    return unit


def cmd_fuzz(args) -> int:
    from dataclasses import asdict
    from .fuzz import FuzzOptions, run_fuzz
    opts = FuzzOptions(walks=args.walks, seed=args.seed, backend=args.backend, faults=args.faults,
                       cases_per_round=args.cases_per_round, out=Path(args.out),
                       unit=_unit_kwargs(args))
    report_path = Path(args.out) / "report.json"
    _output_path("--out", str(report_path))
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    rep = run_fuzz(opts, progress)
    data = asdict(rep) | {"options": {"walks": args.walks, "seed": args.seed, "backend": args.backend,
                                      "faults": args.faults, "unit": opts.unit}}
    _write_json(report_path, data)
    from .reliability import update_report
    update_report("fuzz", {k: v for k, v in data.items() if k != "reports"})
    print(f"{rep.cases} table sets ({rep.sweep_cases} reserved-bit sweep, {rep.invalid_eptps} invalid "
          f"EPTPs) in {rep.rounds} rounds; {rep.host_writes} host stores, {rep.invepts} INVEPTs")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.outcomes.items())))
    if args.faults:
        print(f"faults: {rep.faults_injected} bus errors injected, {rep.stall_cycles} DRAM stall cycles, "
              f"{rep.hangs} hangs, {rep.corruptions} table corruptions")
    for line in rep.reports:
        print(f"MISMATCH: {line}", file=sys.stderr)
    for r in rep.reproducers:
        print(f"reproducer ({r['ops']} ops, {r['words']} words, "
              f"{'reproduces alone' if r['reproduces'] else 'does NOT reproduce alone'}): {r['command']}")
    print(f"report written to {report_path}")
    print(f"{rep.walks} walks, {rep.mismatches} mismatches")
    return 1 if rep.mismatches else 0


def _write_json(path: Path, data: dict) -> None:
    import json
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def cmd_races(args) -> int:
    from .races import RaceOptions, run_races
    opts = RaceOptions(backend=args.backend, offsets=range(args.max_offset), ad=not args.no_ad,
                       unit=_unit_kwargs(args))
    _output_path("--out", args.out)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    rep = run_races(opts, progress)
    from .reliability import update_report
    data = {"races": rep.races, "translations": rep.translations, "by_op": rep.by_op,
            "overlapped_walks": rep.overlapped, "cas_retries": rep.cas_lost,
            "failures": rep.failures[:50],
            "options": {"backend": args.backend, "max_offset": args.max_offset,
                        "ad": not args.no_ad, "unit": opts.unit}}
    _write_json(Path(args.out), data)
    update_report("races", data)
    for f in rep.failures[:20]:
        print(f"FAIL: {f}", file=sys.stderr)
    print(f"{rep.translations} translations; {rep.overlapped} races landed while the walk was in "
          f"flight; {rep.cas_lost} A/D CASes lost to the host and retried")
    print(f"report written to {args.out}")
    print(f"{rep.races} races, {rep.failed} failures")
    return 1 if rep.failed else 0


def cmd_soak(args) -> int:
    from dataclasses import asdict
    from .reliability import update_report
    from .soak import run_soak
    _output_path("--out", "build/reliability/report.json")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    rep = run_soak(args.translations, args.backend, args.seed, progress=progress)
    path = update_report("soak", asdict(rep))
    print(f"{rep.accesses} guest accesses, {rep.cycles} cycles in {rep.seconds} s on {rep.backend}; "
          f"resident memory {rep.rss_mb[0][1] if rep.rss_mb else '?'} -> {rep.rss_mb[-1][1]} MiB "
          f"({'flat' if rep.flat else 'GROWING'}: {rep.growth_mb:+} MiB after warm-up)")
    print(f"report written to {path}")
    print(f"{rep.translations} translations, {rep.mismatches} mismatches")
    return 1 if rep.mismatches or not rep.flat else 0


def cmd_formal(args) -> int:
    from .formal import YosysUnavailable, prove
    from .reliability import update_report
    _output_path("--out", str(Path(args.out) / "sat.log"))
    try:
        proof = prove(args.depth, Path(args.out))
        reach = prove(args.reach_depth, Path(args.out) / "reach", reach_cas=True)
    except YosysUnavailable as e:
        raise UsageError(f"{PROG} formal: {e}") from None
    reached = reach["result"] == "fail"
    covers_cas = reached and args.depth >= args.reach_depth
    update_report("formal", {"depth": args.depth, "properties": proof["asserts"], "result": proof["result"],
                             "cas_reachable_within": args.reach_depth if reached else None,
                             "cas_properties_covered": covers_cas})
    print(f"{proof['asserts']} properties hold for {args.depth} cycles from reset: "
          f"{proof['result'].upper()} ({proof['log']})")
    print(f"a CAS {'can be sent' if reached else 'cannot be sent'} within {args.reach_depth} cycles "
          f"({reach['log']}); the CAS properties are "
          f"{'covered' if covers_cas else 'not reached at this depth (checked in every simulation)'}")
    return 0 if proof["result"] == "pass" else 1


def cmd_wave(args) -> int:
    import shutil
    import subprocess
    if args.wave:
        raise UsageError(f"{PROG} wave: use --out PATH (without suffix), not --wave")
    args.wave = args.out + (".fst" if args.backend == "verilator" else ".vcd")
    _output_path("--out", args.wave)
    kw = _rtl_kwargs(args)
    if args.scenario:
        from .replay import replay
        scenario = load_scenario(args.scenario)
        with open(os.devnull, "w") as sink:
            result = replay(scenario, args.backend, out=sink, **kw)
        mismatches = result.mismatches
    else:
        from .run import run_workload
        from .workload import WorkloadOptions
        summary = run_workload(WorkloadOptions(accesses=args.accesses, seed=args.seed),
                               args.backend, **kw)
        mismatches = summary["mismatch_details"] if summary["mismatches"] else []
    gtkw = Path(args.wave).with_suffix(".gtkw")
    print(f"waveform:         {args.wave}")
    print(f"save file:        {gtkw}")
    print(f"transaction log:  {Path(args.wave).with_suffix('.txn.log')}")
    for m in mismatches:
        print(f"MISMATCH: {m}", file=sys.stderr)
    gtkwave = shutil.which("gtkwave")
    if args.no_open or not os.environ.get("DISPLAY") or gtkwave is None:
        why = ("" if args.no_open else
               " (no DISPLAY)" if gtkwave else " (GTKWave not found: apt install gtkwave)")
        print(f"open it with:     gtkwave {gtkw}{why}")
    else:
        subprocess.Popen([gtkwave, str(gtkw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        print(f"GTKWave started:  gtkwave {gtkw}")
    return 1 if mismatches else 0


def cmd_verilog(args) -> int:
    from .verilog import ParamError, build_top, generate, parameter_values, port_table, write_atomic
    params = parameter_values(args)
    try:
        if args.ports:
            print(port_table(params))
            return 0
        build_top(params, elaborate=False)      # refuse bad parameters before creating anything
        _output_path("--out", args.out)
        text = generate(params)
    except ParamError as e:
        raise UsageError(f"{PROG} verilog: {e}") from None
    write_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


def cmd_lint(args) -> int:
    from .lint import LintUnavailable, lint
    if not Path(args.verilog).is_file():
        raise UsageError(f"{PROG} lint: {args.verilog} not found (run `{PROG} verilog` first)")
    try:
        ok, output = lint(args.verilog)
    except LintUnavailable as e:
        raise UsageError(f"{PROG} lint: {e}") from None
    if not ok:                 # a clean run's output is only Verilator's statistics
        sys.stderr.write(output)
    print(f"lint {'clean' if ok else 'FAILED'}: {args.verilog}")
    return 0 if ok else 1


def cmd_synth(args) -> int:
    from .synth import SynthError, synthesize, write_report
    from .verilog import ParamError, build_top, parameter_values
    params = parameter_values(args)
    try:
        build_top(params, elaborate=False)   # refuse bad parameters before any tool runs
    except ParamError as e:
        raise UsageError(f"{PROG} synth: {e}") from None
    _output_path("--report", args.report)
    targets = args.target or None
    try:
        report = synthesize(params, targets=targets, freq_mhz=args.freq, seed=args.seed,
                            workdir=Path(args.report).parent,
                            progress=lambda line: print(line, file=sys.stderr, flush=True))
    except SynthError as e:
        raise UsageError(f"{PROG} synth: {e}") from None
    write_report(report, args.report)
    for name, r in report["targets"].items():
        print(f"{name}: fmax {r['fmax_mhz']:.1f} MHz (goal {r['goal_mhz']}: "
              f"{'met' if r['fmax_mhz'] >= r['goal_mhz'] else 'MISSED'}), "
              f"{r['luts']} LUT4, {r['ffs']} FF, {r['brams']} DP16KD")
    print(f"report written to {args.report}")
    return 0


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"replay": cmd_replay, "run": cmd_run, "wave": cmd_wave, "fuzz": cmd_fuzz, "races": cmd_races, "soak": cmd_soak, "formal": cmd_formal,
                "verilog": cmd_verilog,
                "lint": cmd_lint, "synth": cmd_synth}[args.command](args)
    except (UsageError, ScenarioError, BackendUnavailable, EptpError, MemoryAccessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
