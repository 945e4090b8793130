"""Drive the pageable-guest workload on a backend and summarise it."""

from __future__ import annotations

import argparse

import time
from dataclasses import asdict
from pathlib import Path

from model.formats import EPT_D, EPT_R, Access, EptConfig, Outcome, PAGE_SIZE
from model.pmap import PG_FRAME
from model.physmem import PhysicalMemory

from sim import unit_params
from sim.backends.auto import auto_backend
from sim.backends.base import BACKENDS, backend_class, make_backend
from sim.cosim.guest_os import GuestOsOptions, format_guest_os_summary, run_guest_os
from sim.cosim.tabulate import format_rows
from sim.cosim.workload import Guest, GuestLayout, Host, HostAgent, WorkloadOptions
from sim.files import provenance, write_json
from sim.options import (
    UsageError, add_rtl_options, add_unit_options, fraction, output_path, positive, progress_printer, rtl_kwargs,
)

__all__ = ["run_workload", "format_summary", "write_summary"]


def run_workload(opts: WorkloadOptions, backend_name: str = "model", progress=None,
                 **backend_kw) -> dict:
    """Run the guest to completion; return the summary dict.

    On the model backend every translation is checked against the pmap
    (``pmap_extract``); on the RTL every response goes through the
    scoreboard.  On both, every guest load is checked against the last value
    stored to that GPA.  An access whose translation was overtaken by a host
    change (the entry no longer maps that frame, or lacks D for a write) is
    re-executed, as the shootdown's wait would force on real hardware.
    """
    opts.validate()
    memory = PhysicalMemory()
    config = EptConfig(memory.maxphyaddr)
    if backend_name == "verilator" and not backend_kw.get("wave"):
        # the second core checks while this one simulates (verdicts joined at close)
        backend_kw = {"scoreboard": "process", **backend_kw}
    backend = make_backend(backend_name, memory, config, **backend_kw)
    layout = GuestLayout(opts.guest_pages)
    host = Host(memory, layout, opts, invept=backend.invept)
    backend.load_eptp(host.eptp.encode())
    guest = Guest(layout, opts)
    agent = HostAgent(host, opts.race_rate, opts.seed)
    timed = backend.timed
    if not backend_kw.get("wave"):
        # only a waveform's transaction log needs every ticket: keep memory flat on long runs
        backend.keep_tickets(64)
    current = {"gpa": None}
    backend.add_hook(lambda cycle: agent.on_cycle(cycle, backend.busy, current["gpa"]))
    outcomes = {o.value: 0 for o in Outcome}
    by_access = {a.name.lower(): 0 for a in Access}
    mismatches: list[str] = []
    translations = latency_total = cas_retries = raced = 0
    latencies: list[int] = []
    started = time.monotonic()
    step = max(opts.accesses // 10, 1)

    def pmap_check(gpa, access, t):
        if t.outcome is Outcome.OK:
            want = host.pmap.extract(gpa & ~(PAGE_SIZE - 1))
            if want is None or t.hpa != want | (gpa & (PAGE_SIZE - 1)):
                mismatches.append(f"GPA {gpa:#x} {access.name.lower()}: got HPA {t.hpa:#x}, "
                                  f"pmap maps {want and hex(want)}")
        elif t.outcome is not Outcome.VIOLATION:
            mismatches.append(f"GPA {gpa:#x} {access.name.lower()}: {t.outcome.value} ({t.reason}) "
                              f"on tables the pmap built")

    def still_valid(gpa, access, t):
        pte = host.pmap.lookup(gpa)
        need = EPT_R | (access.perm_bit if access is not Access.READ else 0)
        if opts.ad and access is Access.WRITE:
            need |= EPT_D
        return pte & (PG_FRAME | need) == (t.hpa & PG_FRAME) | need

    try:
        for n in range(opts.accesses):
            gpa, access = guest.next()
            current["gpa"] = gpa
            by_access[access.name.lower()] += 1
            if not timed:
                agent.maybe_act(gpa)
            for _attempt in range(16):
                t, cycles = backend.translate(gpa, access)
                translations += 1
                latency_total += cycles or 0
                if cycles is not None:
                    latencies.append(cycles)
                cas_retries += t.retries
                outcomes[t.outcome.value] += 1
                if not timed:
                    pmap_check(gpa, access, t)
                if t.outcome is Outcome.OK:
                    if still_valid(gpa, access, t):
                        break
                    raced += 1
                elif t.outcome is Outcome.VIOLATION:
                    host.fault(gpa, access)
                else:
                    break
            else:
                mismatches.append(f"GPA {gpa:#x} {access.name.lower()}: no translation after 16 tries")
            if t.outcome is Outcome.OK:
                word = t.hpa & ~7
                if access is Access.WRITE:
                    memory.write(word, guest.store_value(gpa), source="guest")
                else:
                    got, want = memory.peek(word), guest.expected(gpa)
                    if got != want:
                        mismatches.append(f"GPA {gpa:#x} {access.name.lower()}: data {got:#x} "
                                          f"at HPA {word:#x}, guest stored {want:#x}")
            if progress and (n + 1) % step == 0 and n + 1 < opts.accesses:
                bad = len(mismatches) + len(backend.mismatches)
                progress(f"  [{100 * (n + 1) // opts.accesses:3d}%] {n + 1}/{opts.accesses} "
                         f"accesses, {host.stats.faults} faults, {host.stats.evictions} evictions, "
                         f"{bad} mismatches")
        counters = backend.counters()
    finally:
        backend.close()
    elapsed = time.monotonic() - started
    rtl_mismatches = list(backend.mismatches)
    failed = len(mismatches) + backend.failures
    walks = translations + cas_retries
    s = host.stats
    cycles = backend.cycle
    summary = provenance(SUMMARY_SCHEMA) | {
        "passed": failed == 0,
        "workload": "stress",
        "backend": backend_name,
        "seed": opts.seed,
        "accesses": opts.accesses,
        "translations": translations,
        "outcomes": outcomes,
        "accesses_by_type": by_access,
        "walks": walks,
        "memory_reads": backend.walk_reads,
        "memory_cas": backend.walk_cases,
        "cas_retries": cas_retries,
        "cycles": cycles,
        "cycles_per_translation": round(latency_total / translations, 2) if timed else None,
        "cycles_per_walk": round(latency_total / walks, 2) if timed else None,
        "latency_cycles": _percentiles(latencies) if timed else None,
        "faults": s.faults,
        "evictions": s.evictions,
        "writebacks": s.writebacks,
        "swapins": s.swapins,
        "second_chances": s.second_chances,
        "shootdowns": s.shootdowns,
        "raced_accesses": raced,
        "host_agent": asdict(agent.stats),
        "resident_pages": len(host.resident),
        "pmap_resident_count": host.pmap.resident_count,
        "ptp_pages": host.pmap.ptp_count,
        "mismatches": failed,
        "mismatch_details": (rtl_mismatches + mismatches)[:20],   # scoreboard reports first
        "elapsed_seconds": round(elapsed, 3),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
    }
    if timed:
        summary["cycles_per_second"] = round(cycles / elapsed) if elapsed else None
        summary["counters"] = counters
        # with a TLB, walks are what the unit counted, not one per translation
        summary["walks"] = counters["walks"]
        summary["cycles_per_walk"] = round(counters["walk_cycles"] / max(counters["walks"], 1), 2)
        # the harness runs the protocol checks in every simulation
        summary["unit"] = unit_params.defaults() | {"checks": True} | (backend_kw.get("unit") or {})
        summary.update(backend.report())
    return summary


def _resident(s: dict) -> str:
    """pm_stats.resident_count at the end of the run: leaves + PTPs + the PDP."""
    rc = s.get("pmap_resident_count")
    if rc is None:
        return "n/a"
    return (f"{rc} ({s.get('resident_pages', '?')} guest pages + "
            f"{s.get('ptp_pages', '?')} PTPs + 1 PDP)")


SUMMARY_SCHEMA = 2      # 2: provenance, passed, seed, every unit parameter, latency percentiles


def _percentiles(values: list[int]) -> dict:
    """p50 / p99 / max of the cycles per translation (nearest rank: a cycle count that occurred)."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    v = sorted(values)

    def rank(q: int) -> int:
        return v[max(0, -(-len(v) * q // 100) - 1)]
    return {"p50": rank(50), "p99": rank(99), "max": v[-1]}


def format_summary(s: dict) -> str:
    rows = [
        ("backend", s["backend"]),
        ("seed", s["seed"]),
    ]
    d = s.get("dram")
    if d:
        c = d["config"]
        rows.append(("DRAM read / CAS latency, row miss, in flight",
                     f"{c['read_latency']} / {c['cas_latency']} / +{c['row_miss_penalty']} / "
                     f"{c['max_outstanding']} (stall {c['stall_probability']}, "
                     f"bus errors {c['error_probability']})"))
    rows += [
        ("guest accesses", s["accesses"]),
        ("translations", s["translations"]),
        ("  ok / violation / misconfig / bus_error",
         " / ".join(str(s["outcomes"][k]) for k in ("ok", "violation", "misconfig", "bus_error"))),
        ("walks", s["walks"]),
        ("walker memory reads", s["memory_reads"]),
        ("walker CASes", s["memory_cas"]),
        ("CAS retries", s["cas_retries"]),
        ("cycles", s["cycles"] if s["cycles"] is not None else "n/a (untimed model)"),
        ("cycles per translation", s["cycles_per_translation"] if s["cycles_per_translation"] else "n/a"),
        ("cycles per walk", s["cycles_per_walk"] if s["cycles_per_walk"] else "n/a"),
        ("cycles per translation p50 / p99 / max",
         " / ".join(str(s["latency_cycles"][k]) for k in ("p50", "p99", "max")) if s["latency_cycles"] else "n/a"),
        ("EPT faults (pmap_enter)", s["faults"]),
        ("evictions (page daemon)", s["evictions"]),
        ("write-backs (D set)", s["writebacks"]),
        ("page-ins from swap", s["swapins"]),
        ("clock second chances (A set)", s["second_chances"]),
        ("shootdowns (INVEPT)", s["shootdowns"]),
        ("host-agent races (clear_ref/clear_mod/protect/evict)",
         "/".join(str(v) for v in s["host_agent"].values())),
        ("accesses re-run after a race", s["raced_accesses"]),
        ("host EPT pmap resident count", _resident(s)),
        ("mismatches", s["mismatches"]),
    ]
    c = s.get("counters")
    if c:
        hits = c["hits_4k"] + c["hits_2m"] + c["hits_1g"]
        rows[-1:-1] = [
            ("unit counters (read from the RTL)", ""),
            ("  TLB lookups / hits / misses", f"{c['lookups']} / {hits} / {c['misses']}"),
            ("  TLB hit rate", f"{100 * hits / max(hits + c['misses'], 1):.1f} %"),
            ("  hits 4K / 2M / 1G", f"{c['hits_4k']} / {c['hits_2m']} / {c['hits_1g']}"),
            ("  misses merged / hits dropped", f"{c['merged']} / {c['dropped']}"),
            ("  walks started / completed", f"{c['walks']} / {c['walks_completed']}"),
            ("  walk cycles (ept.walk_pending)", c["walk_cycles"]),
            ("  PSC hits PML4E / PDPTE / PDE",
             f"{c['psc_hits_pml4e']} / {c['psc_hits_pdpte']} / {c['psc_hits_pde']}"),
            ("  memory reads / CASes / CAS retries", f"{c['mem_reads']} / {c['mem_cas']} / {c['cas_retries']}"),
            ("  INVEPTs", c["invepts"]),
        ]
    lines = format_rows("stress summary (pageable guest, racing host agent)", rows)
    for m in s["mismatch_details"]:
        lines.append(f"MISMATCH: {m}")
    lines.append(f"{'PASS' if s['mismatches'] == 0 else 'FAIL'}: {s['translations']} translations, "
                 f"{s['mismatches']} mismatches in {s['elapsed_seconds']:.1f} s")
    return "\n".join(lines)


def write_summary(s: dict, path: str | Path) -> None:
    """Write the summary atomically: a reader never sees half a file."""
    write_json(path, s)


# -- the `run` command ---------------------------------------------------------------
ABOUT = dict(help="run a workload (guest-os or stress) and print a summary",
             description="guest-os (the default on the model backend): a paging guest OS runs four "
                         "processes (hot set, streaming, GUPS, pointer chasing) through 2D walks while "
                         "the host pages its memory. stress (the default on rtl/verilator, which cannot "
                         "walk guest tables yet): a guest touches more pages than the host gives it "
                         "frames while a host agent races pmap operations with the walks.",
             epilog=("examples:\n"
                     "  python -m sim run --backend verilator\n"
                     "  python -m sim run --backend rtl --accesses 300 --wave build/sim/run.vcd\n"
                     "  python -m sim run --backend model --workload guest-os --accesses 20000 --seed 7\n"))
WORKLOADS = ("guest-os", "stress")


def _mix(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: expected three numbers R,W,F") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: expected three non-negative weights R,W,F")
    return parts



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=["auto", *sorted(BACKENDS)],
                   help="auto (default: verilator when its model builds here, else rtl; with --wave, "
                        "by the file's suffix), verilator (the cosimulation compiled with Verilator), "
                        "rtl (the same in pysim: the debugging backend) or model (golden model alone)")
    p.add_argument("--workload", choices=WORKLOADS, default=None,
                   help="guest-os (the default: a paging guest OS, 2D walks through the unit's "
                        "combined TLB and guest caches) or stress (the pageable guest with a racing "
                        "host agent, EPT translations only)")
    p.add_argument("--accesses", type=positive, default=None,
                   help="guest accesses (default 40000 for guest-os, 4000 for stress)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--guest-pages", type=positive, default=None,
                   help="stress: guest working set in 4K pages (default 256)")
    p.add_argument("--host-frames", type=positive, default=None,
                   help="frames the host gives the guest (default 896 for guest-os, 96 for stress)")
    p.add_argument("--mix", type=_mix, default=None, metavar="R,W,F",
                   help="stress: read,write,fetch weights (default 0.6,0.3,0.1)")
    p.add_argument("--locality", type=fraction, default=None,
                   help="stress: share of accesses to the hot set (default 0.8)")
    p.add_argument("--hot-pages", type=positive, default=None, help="stress: hot-set size (default 24)")
    p.add_argument("--sequential", type=fraction, default=None,
                   help="stress: chance an access goes to the next page (default 0.15)")
    p.add_argument("--no-ad", action="store_true", help="run with EPTP A/D flags disabled")
    p.add_argument("--race-rate", type=fraction, default=None, metavar="P",
                   help="stress: chance per cycle (rtl) or per access (model) that the host agent runs a "
                        "pmap operation on the page being translated (default 0.02)")
    p.add_argument("--summary", default="build/sim/summary.json",
                   help="where to write the JSON summary (default build/sim/summary.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_rtl_options(p)
    add_unit_options(p, NESTED_PARAMS, exclude=(),
                     title="the nested unit's own parameters (NestedWalkUnit: guest-os on rtl and verilator)")


# the nested unit's own constructor parameters (the rest go to PageWalkUnit)
NESTED_PARAMS = tuple(q for q in unit_params.parameters("nested_top", "NestedWalkUnit")
                      if q.owner == "NestedWalkUnit")


def _nested_given(args) -> dict:
    """The nested unit's own parameters given, taken out of what the EPT unit's checks see."""
    given = getattr(args, "given", {})
    out = {}
    for q in NESTED_PARAMS:
        dest = f"unit_{q.name}"
        if dest in given:
            out[q.name] = (getattr(args, dest), given.pop(dest))
    return out


STRESS_ONLY = {"--guest-pages": "guest_pages", "--mix": "mix", "--locality": "locality",
               "--hot-pages": "hot_pages", "--sequential": "sequential", "--race-rate": "race_rate"}


def _given(value, default):
    return default if value is None else value


def main(args) -> int:
    # --backend auto: an RTL backend (a waveform's suffix picks which; else the
    # fastest that builds here, chosen once the options are checked)
    auto = args.backend == "auto" and not args.wave
    if args.backend == "auto":
        args.backend = "verilator" if args.wave and Path(args.wave).suffix == ".fst" else "rtl"
    workload = args.workload or "guest-os"
    nested = _nested_given(args)
    if workload == "guest-os":
        return main_guest_os(args, auto, nested)
    if nested:
        option = next(iter(nested.values()))[1]
        raise UsageError(f"{option} is a parameter of the nested unit, which the stress workload "
                         f"does not use (it runs the EPT unit alone)")
    d = WorkloadOptions()
    opts = WorkloadOptions(accesses=args.accesses or d.accesses, seed=args.seed,
                           guest_pages=_given(args.guest_pages, d.guest_pages),
                           host_frames=args.host_frames or d.host_frames, mix=_given(args.mix, d.mix),
                           locality=_given(args.locality, d.locality), hot_pages=_given(args.hot_pages, d.hot_pages),
                           sequential=_given(args.sequential, d.sequential), ad=not args.no_ad,
                           race_rate=_given(args.race_rate, d.race_rate))
    try:
        opts.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    kw = rtl_kwargs(args)
    output_path("--summary", args.summary)
    output_path("--wave", args.wave)
    if auto:
        # the fastest RTL backend that builds here (rtl_kwargs's checks are the same for
        # both), once every option is known to be good: a build is work
        args.backend = auto_backend(kw["unit"], PhysicalMemory().maxphyaddr)
    progress = progress_printer(args.quiet)
    summary = run_workload(opts, args.backend, progress=progress, **kw)
    write_summary(summary, args.summary)
    print(format_summary(summary))
    print(f"summary written to {args.summary}")
    if args.wave:
        print(f"waveform written to {args.wave} (open with: gtkwave {Path(args.wave).with_suffix('.gtkw')})")
    return 1 if summary["mismatches"] else 0


def main_guest_os(args, auto: bool = False, nested: dict | None = None) -> int:
    cls = backend_class(args.backend)
    if not cls.nested:
        raise cls.refuse_nested("the guest-os workload", ", or --workload stress")
    nested = nested or {}
    if nested and not cls.timed:
        option = next(iter(nested.values()))[1]
        raise UsageError(f"{option} is for the rtl and verilator backends: the model backend has no unit")
    kw = rtl_kwargs(args)       # the model takes no RTL options; rtl: DRAM, port and unit options
    if args.wave:
        raise UsageError(f"--wave {args.wave}: waveforms of the nested unit (the guest-os workload) are "
                         f"not supported yet: add --workload stress, or drop --wave")
    if nested:
        params = {name: value for name, (value, _) in nested.items()}
        try:
            unit_params.check({**kw["unit"], **params}, "nested_top", "NestedWalkUnit")
        except (TypeError, ValueError) as e:
            raise UsageError(f"{', '.join(o for _, o in nested.values())}: {e}") from None
        kw["unit"] = {**kw["unit"], **params}
    stress = [o for o, v in STRESS_ONLY.items() if getattr(args, v) is not None]
    if stress:
        raise UsageError(f"{stress[0]} is an option of the stress workload, not of guest-os")
    opts = GuestOsOptions(accesses=args.accesses or 40000, seed=args.seed,
                          host_frames=args.host_frames or 896, ad=not args.no_ad)
    try:
        opts.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    output_path("--summary", args.summary)
    if auto:        # the fastest RTL backend that builds the nested unit here
        args.backend = auto_backend(kw["unit"], PhysicalMemory().maxphyaddr, top="nested")
    summary = provenance(SUMMARY_SCHEMA) | run_guest_os(opts, args.backend, progress=progress_printer(args.quiet),
                                                        **kw)
    summary.setdefault("passed", summary["mismatches"] == 0)
    write_summary(summary, args.summary)
    print(format_guest_os_summary(summary))
    print(f"summary written to {args.summary}")
    return 1 if summary["mismatches"] else 0
