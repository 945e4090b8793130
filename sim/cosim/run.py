"""Drive the pageable-guest workload on a backend and summarise it."""

from __future__ import annotations

import argparse

import time
from dataclasses import asdict
from pathlib import Path

from model.formats import EPT_D, EPT_R, Access, EptConfig, Outcome, PAGE_SIZE
from model.pmap import PG_FRAME
from model.physmem import PhysicalMemory

from sim.backends.base import make_backend
from sim.cosim.workload import Guest, GuestLayout, Host, HostAgent, WorkloadOptions
from sim.files import write_json
from sim.backends.base import BACKENDS
from sim.options import PROG, UsageError, positive, fraction, add_rtl_options, rtl_kwargs, output_path, progress_printer

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
    summary = {
        "backend": backend_name,
        "accesses": opts.accesses,
        "translations": translations,
        "outcomes": outcomes,
        "accesses_by_type": by_access,
        "walks": walks,
        "memory_reads": backend.walk_reads,
        "memory_cases": backend.walk_cases,
        "cas_retries": cas_retries,
        "cycles": cycles,
        "cycles_per_translation": round(latency_total / translations, 2) if timed else None,
        "cycles_per_walk": round(latency_total / walks, 2) if timed else None,
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
        summary["unit"] = backend_kw.get("unit") or {}
        summary.update(backend.report())
    return summary


def _resident(s: dict) -> str:
    """pm_stats.resident_count at the end of the run: leaves + PTPs + the PDP."""
    rc = s.get("pmap_resident_count")
    if rc is None:
        return "n/a"
    return (f"{rc} ({s.get('resident_pages', '?')} guest pages + "
            f"{s.get('ptp_pages', '?')} PTPs + 1 PDP)")


def format_summary(s: dict) -> str:
    rows = [
        ("backend", s["backend"]),
        ("guest accesses", s["accesses"]),
        ("translations", s["translations"]),
        ("  ok / violation / misconfig / bus_error",
         " / ".join(str(s["outcomes"][k]) for k in ("ok", "violation", "misconfig", "bus_error"))),
        ("walks", s["walks"]),
        ("walker memory reads", s["memory_reads"]),
        ("walker CASes", s["memory_cases"]),
        ("CAS retries", s["cas_retries"]),
        ("cycles", s["cycles"] if s["cycles"] is not None else "n/a (untimed model)"),
        ("cycles per translation", s["cycles_per_translation"] if s["cycles_per_translation"] else "n/a"),
        ("cycles per walk", s["cycles_per_walk"] if s["cycles_per_walk"] else "n/a"),
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
    w = max(len(k) for k, _ in rows)
    lines = ["", "pageable-guest summary", "-" * (w + 16)]
    lines += [f"{k:<{w}}  {v}" for k, v in rows]
    lines.append("-" * (w + 16))
    for m in s["mismatch_details"]:
        lines.append(f"MISMATCH: {m}")
    lines.append(f"{'PASS' if s['mismatches'] == 0 else 'FAIL'}: {s['translations']} translations, "
                 f"{s['mismatches']} mismatches in {s['elapsed_seconds']:.1f} s")
    return "\n".join(lines)


def write_summary(s: dict, path: str | Path) -> None:
    """Write the summary atomically: a reader never sees half a file."""
    write_json(path, s)


# -- the `run` command ---------------------------------------------------------------
ABOUT = dict(help="run the pageable-guest workload and print a summary",
                       description="A guest touches more pages than the host gives it frames; "
                                   "EPT violations fault pages in with pmap_enter, a clock page "
                                   "daemon evicts using the A/D bits the walker sets.")


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
    p.add_argument("--accesses", type=positive, default=4000, help="guest accesses (default 4000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--guest-pages", type=positive, default=256,
                   help="guest working set in 4K pages (default 256)")
    p.add_argument("--host-frames", type=positive, default=96,
                   help="frames the host gives the guest (default 96)")
    p.add_argument("--mix", type=_mix, default=(0.6, 0.3, 0.1), metavar="R,W,F",
                   help="read,write,fetch weights (default 0.6,0.3,0.1)")
    p.add_argument("--locality", type=fraction, default=0.8,
                   help="share of accesses to the hot set (default 0.8)")
    p.add_argument("--hot-pages", type=positive, default=24, help="hot-set size (default 24)")
    p.add_argument("--sequential", type=fraction, default=0.15,
                   help="chance an access goes to the next page (default 0.15)")
    p.add_argument("--no-ad", action="store_true", help="run with EPTP A/D flags disabled")
    p.add_argument("--race-rate", type=fraction, default=0.02, metavar="P",
                   help="chance per cycle (rtl) or per access (model) that the host agent runs a "
                        "pmap operation on the page being translated (default 0.02)")
    p.add_argument("--summary", default="build/sim/summary.json",
                   help="where to write the JSON summary (default build/sim/summary.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_rtl_options(p)


def _choose_backend(args) -> dict:
    """``--backend auto``: sets ``args.backend`` to Verilator when it can build
    here, else pysim (one line why); a waveform picks the backend that writes
    its format (.fst: verilator, else rtl).  Returns ``rtl_kwargs(args)``."""
    from sim.backends.auto import auto_backend
    args.backend = "verilator" if args.wave and Path(args.wave).suffix == ".fst" else "rtl"
    kw = rtl_kwargs(args)          # the same options, the same checks for both RTL backends
    if not args.wave:
        args.backend = auto_backend(kw["unit"], PhysicalMemory().maxphyaddr)
    return kw


def main(args) -> int:
    from sim.cosim.workload import WorkloadOptions
    opts = WorkloadOptions(accesses=args.accesses, seed=args.seed, guest_pages=args.guest_pages,
                           host_frames=args.host_frames, mix=args.mix, locality=args.locality,
                           hot_pages=args.hot_pages, sequential=args.sequential, ad=not args.no_ad,
                           race_rate=args.race_rate)
    try:
        opts.validate()
    except ValueError as e:
        raise UsageError(f"{PROG} run: {e}") from None
    kw = _choose_backend(args) if args.backend == "auto" else rtl_kwargs(args)
    output_path("--summary", args.summary)
    output_path("--wave", args.wave)
    progress = progress_printer(args.quiet)
    summary = run_workload(opts, args.backend, progress=progress, **kw)
    write_summary(summary, args.summary)
    print(format_summary(summary))
    print(f"summary written to {args.summary}")
    if args.wave:
        print(f"waveform written to {args.wave} (open with: gtkwave {Path(args.wave).with_suffix('.gtkw')})")
    return 1 if summary["mismatches"] else 0
