"""``make bench``: the unit's speed, measured on the RTL, as JSON and plots.

Every figure comes from port handshakes and counters of the Amaranth unit in
pysim against the DRAM model; none is computed from a formula.  Ratios are
measured in the same run (the machines are noisy).  Writes
``build/bench/results.json`` and PNG plots next to it.
"""

from __future__ import annotations

import argparse
import sys
import random
import time
from pathlib import Path

from model.formats import Access, Level
from model.physmem import PhysicalMemory

from sim.cosim.dram import DramConfig
from sim.flows.bench_nested import CTLB_SIZES, LA_REGION, ctlb_sweep, guest_os_refs, nested_timing
from sim.backends.pysim import PysimHarness
from sim.cosim.tables import HandTables
from sim.files import write_json
from sim.options import output_dir, progress_printer

__all__ = ["run_bench", "main"]

L = 8                                    # DRAM read latency for the timing figures
REGION = 0x7f00_0000_0000                # the GPAs the patterns touch
HPA_BASE = 0x4000_0000


def _harness(dram: DramConfig, ad: bool = False, pages: int = 0, huge: int = 0,
             spread: list[int] | None = None, **unit):
    memory = PhysicalMemory()
    frames = iter(range(0x10_0000, 0x4000_0000, 0x1000))
    tables = HandTables(memory, lambda: next(frames), ad)
    for i in range(pages):
        tables.map(REGION + i * 0x1000, HPA_BASE + i * 0x1000)
    for i in range(huge):
        tables.map(REGION + (1 << 30) + i * (1 << 21), 0x1_0000_0000 + i * (1 << 21), Level.PDE)
    for i, gpa in enumerate(spread or []):
        tables.map(gpa, HPA_BASE + i * 0x1000)
    h = PysimHarness(memory, dram, **unit)
    e = tables.eptp
    assert h.load_eptp(e.encode(), e)
    return h


def _run(h: PysimHarness, requests, window: int = 16):
    """Keep up to ``window`` requests outstanding; returns the tickets."""
    tickets = []
    it = iter(requests)
    pending = []
    while True:
        while len([t for t in pending if not t.done]) < window:
            nxt = next(it, None)
            if nxt is None:
                break
            t = h.submit(*nxt)
            pending.append(t)
            tickets.append(t)
        if all(t.done for t in pending) and len(tickets) == len(requests):
            return tickets
        h.step(1)


def timing_figures() -> dict:
    """Hit latency and throughput, cold and PDE-cached walk latency."""
    flat = DramConfig(read_latency=L, row_miss_penalty=0)
    h = _harness(flat, pages=32)
    cold = h.translate(REGION, Access.READ)
    pde = h.translate(REGION + 0x1000, Access.READ)
    for i in range(2, 16):
        h.translate(REGION + i * 0x1000, Access.READ)
    hit = h.translate(REGION, Access.READ)
    burst = _run(h, [(REGION + (i % 16) * 0x1000 + 8 * i, Access.READ) for i in range(256)], window=16)
    span = max(t.answered for t in burst) - min(t.accepted for t in burst)
    assert all(t.cycles == 1 for t in burst), "a warm burst missed"
    return {
        "dram_latency_cycles": L,
        "tlb_hit_latency_cycles": hit.cycles,
        "tlb_hit_throughput_per_cycle": round(len(burst) / span, 3),
        "cold_walk_cycles": cold.cycles,
        "cold_walk_goal_cycles": 4 * (L + 1) + 2,
        "psc_pde_hit_walk_cycles": pde.cycles,
        "psc_pde_hit_walk_goal_cycles": (L + 1) + 2,
    }


def miss_throughput(n: int = 64) -> dict:
    """Independent misses (one per 1G region: no cache below the PML4E helps)."""
    dram = DramConfig(read_latency=L, row_miss_penalty=0, max_outstanding=4)
    gpas = [REGION + (i << 30) + (i % 512) * 0x1000 for i in range(n)]
    out = {}
    for walkers in (1, 2, 4):
        h = _harness(dram, spread=gpas, walkers=walkers)
        ts = _run(h, [(g, Access.READ) for g in gpas], window=16)
        span = max(t.answered for t in ts) - min(t.accepted for t in ts)
        out[walkers] = {"cycles": span, "misses_per_kcycle": round(1000 * n / span, 2)}
    return {
        "independent_misses": n,
        "miss_cycles_by_walkers": {str(k): v["cycles"] for k, v in out.items()},
        "miss_throughput_speedup_2_walkers": round(out[1]["cycles"] / out[2]["cycles"], 3),
        "miss_throughput_speedup_4_walkers": round(out[1]["cycles"] / out[4]["cycles"], 3),
    }


def _pattern(name: str, n: int, rng: random.Random, base: int = REGION) -> list[tuple[int, Access]]:
    """``n`` reads from ``base`` (GPAs here, guest LAs for the combined TLB): 1024 4K
    pages from ``base``, 32 2M pages from ``base`` + 1G."""
    pages = 1024
    if name == "sequential":          # 8 accesses per page, page after page
        return [(base + ((i // 8) % pages) * 0x1000 + (i % 8) * 512, Access.READ) for i in range(n)]
    if name == "random":
        return [(base + rng.randrange(pages // 2) * 0x1000 + rng.randrange(512) * 8, Access.READ)
                for _ in range(n)]
    if name == "strided":             # 64K stride over 16 pages: they crowd into few TLB sets
        return [(base + ((i * 16) % 256) * 0x1000, Access.READ) for i in range(n)]
    if name == "huge":                # random over 32 2M pages
        return [(base + (1 << 30) + rng.randrange(32 << 21) // 8 * 8, Access.READ) for _ in range(n)]
    raise ValueError(name)


PATTERNS = ("sequential", "random", "strided", "huge")
TLB_SETS = (4, 16, 64)               # x 4 ways: 16, 64, 256 4K entries


def pattern_sweep(n: int = 800) -> dict:
    dram = DramConfig(read_latency=L)
    out = {}
    for name in PATTERNS:
        rows = []
        for sets in TLB_SETS:
            h = _harness(dram, pages=1024, huge=32, tlb_sets=sets)
            reqs = _pattern(name, n, random.Random(1))
            ts = [h.translate(g, a) for g, a in reqs]       # one at a time: latency
            c = h.counters()
            hits = c["hits_4k"] + c["hits_2m"] + c["hits_1g"]
            rows.append({"tlb_entries_4k": sets * 4, "hit_rate": round(hits / c["lookups"], 4),
                         "cycles_per_translation": round(sum(t.cycles for t in ts) / len(ts), 2)})
        out[name] = rows
    return out


def workload_sweep(accesses: int) -> dict:
    from sim.cosim.run import run_workload
    from sim.cosim.workload import WorkloadOptions
    rows = []
    for sets in TLB_SETS:
        s = run_workload(WorkloadOptions(accesses=accesses), "rtl", unit={"tlb_sets": sets})
        c = s["counters"]
        hits = c["hits_4k"] + c["hits_2m"] + c["hits_1g"]
        rows.append({"tlb_entries_4k": sets * 4, "hit_rate": round(hits / max(c["lookups"], 1), 4),
                     "cycles_per_translation": s["cycles_per_translation"],
                     "mismatches": s["mismatches"]})
    return {"pageable_guest": rows}


def default_workload_speed() -> dict:
    from sim.cosim.run import run_workload
    from sim.cosim.workload import WorkloadOptions
    s = run_workload(WorkloadOptions(), "rtl")
    return {"pysim_cycles_per_second": s["cycles_per_second"],
            "default_workload": {"cycles": s["cycles"], "translations": s["translations"],
                                 "elapsed_seconds": s["elapsed_seconds"], "mismatches": s["mismatches"],
                                 "counters": s["counters"]}}


DEFAULT_UNIT = dict(walkers=2, tlb_sets=16, tlb_ways=4, pde_cache=8, caches=True)


def bare_speed(accesses: int = 4000, seed: int = 1, checks: bool = True, invept_every: int = 2) -> dict:
    """The bare Verilated model: the default workload's unit and DRAM timing,
    driven by C++ alone (driver.cpp ``sim_bare``) with the default workload's
    access stream (same guest, same seed) over tables that map every guest
    page, one translation at a time, and a single-context INVEPT before every
    ``invept_every``-th (the default workload shoots down about every other
    translation).  No Python runs in the measured loop: the physical limit of
    this design on this machine, against which the cosimulation is measured."""
    from sim.backends.verilator import VerilatorHarness
    from sim.cosim.workload import Guest, GuestLayout, WorkloadOptions
    opts = WorkloadOptions(accesses=accesses, seed=seed)
    layout = GuestLayout(opts.guest_pages)
    memory = PhysicalMemory()
    frames = iter(range(0x10_0000, 0x4000_0000, 0x1000))
    tables = HandTables(memory, lambda: next(frames), ad=True)
    for page in layout.pages:
        tables.map(page, next(frames))
    guest = Guest(layout, opts)
    requests = [guest.next() for _ in range(accesses)]
    h = VerilatorHarness(memory, DramConfig(), maxphyaddr=memory.maxphyaddr, execute_only=True,
                         checks=checks, **DEFAULT_UNIT)
    try:
        e = tables.eptp
        assert h.load_eptp(e.encode(), e)
        cycles, done, seconds = h.run_bare(requests, invept_every)
    finally:
        h.close()
    assert done == accesses, f"the bare model answered {done} of {accesses}"
    return {"verilator_bare_cycles_per_second": round(cycles / seconds),
            "verilator_bare_cycles": cycles, "verilator_bare_translations": done,
            "verilator_bare_seconds": round(seconds, 4),
            "verilator_bare_cpu_seconds": round(h.bare_cpu_seconds, 4),
            "verilator_bare_cycles_per_translation": round(cycles / done, 2)}


def cosim_vs_bare(accesses: int = 4000, seed: int = 1, repeat: int = 3, cold: bool = True) -> dict:
    """The default workload's cosimulation on Verilator against the bare model,
    in the same run: ``cosim_loop_vs_bare`` (cycles/s of run_workload's loop
    over the bare model's) and ``cosim_process_vs_bare`` (the same for a whole
    ``python -m sim run --backend verilator`` process, startup included).
    Medians of ``repeat`` alternating runs; ``cosim_loop_vs_bare_cpu``: the
    loop's ratio by CPU time instead of wall time.  Also the cold build's time
    (in a fresh cache directory, so it is measured, not assumed)."""
    import os
    import statistics
    import subprocess
    import tempfile
    from sim.backends.verilator import build_model
    from sim.cosim.run import run_workload
    from sim.cosim.workload import WorkloadOptions
    params = dict(maxphyaddr=46, execute_only=True, checks=True, **DEFAULT_UNIT)
    cold_seconds = None
    if cold:
        with tempfile.TemporaryDirectory(prefix="ept-walker-cold-") as tmp, open(os.devnull, "w") as quiet:
            cold_seconds = round(build_model(params, Path(tmp), progress=quiet).seconds, 1)
    build_model(params)
    loop, proc, bare, cycles = [], [], [], None
    loop_cpu, bare_cpu = [], []
    root = Path(__file__).resolve().parents[2]
    for _ in range(repeat):
        b = bare_speed(accesses, seed)
        bare.append(b["verilator_bare_cycles_per_second"])
        bare_cpu.append(b["verilator_bare_cycles"] / b["verilator_bare_cpu_seconds"])
        cpu = time.process_time()
        s = run_workload(WorkloadOptions(accesses=accesses, seed=seed), "verilator",
                         unit=dict(DEFAULT_UNIT))
        cpu = time.process_time() - cpu     # this process only: the scoreboard's is apart
        cycles = s["cycles"]
        loop.append(cycles / s["elapsed_seconds"])
        loop_cpu.append(cycles / cpu)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "sim", "run", "--backend", "verilator", "--quiet",
                                "--accesses", str(accesses), "--seed", str(seed),
                                "--summary", str(Path(tmp) / "s.json")],
                               cwd=root, capture_output=True, text=True)
            elapsed = time.perf_counter() - started
        if r.returncode:
            raise RuntimeError(f"python -m sim run failed:\n{r.stderr[-2000:]}")
        proc.append(cycles / elapsed)
    med = statistics.median
    return {
        **{k: v for k, v in b.items() if k != "verilator_bare_cycles_per_second"},
        "verilator_bare_cycles_per_second": round(med(bare)),
        "cosim_loop_cycles_per_second": round(med(loop)),
        "cosim_process_cycles_per_second": round(med(proc)),
        "cosim_loop_vs_bare": round(med([x / b for x, b in zip(loop, bare, strict=True)]), 3),
        "cosim_process_vs_bare": round(med([x / b for x, b in zip(proc, bare, strict=True)]), 3),
        # the same by CPU time (the simulating process's; the bare model's): less
        # sensitive to other jobs on a shared machine, blind to the second core's help
        "cosim_loop_vs_bare_cpu": round(med([x / b for x, b in zip(loop_cpu, bare_cpu, strict=True)]), 3),
        "cosim_cycles": cycles,
        "verilator_cold_build_seconds": cold_seconds,
        "cosim_vs_bare_runs": repeat,
    }


def measure_speed(accesses: int = 4000, pysim_accesses: int | None = 400, seed: int = 1,
                  checks: bool = True) -> dict:
    """Run the default ``make sim`` workload on both backends with one seed.

    pysim runs ``pysim_accesses`` (a prefix of the same access stream; None
    for all of it: ~3 minutes) and Verilator all ``accesses``; ``identical``
    compares the two summaries over the prefix pysim ran (Verilator runs that
    prefix too, separately, for the comparison).  ``checks``: the unit with
    its protocol Asserts (hw/checks.py), as every simulation runs it; they
    cost pysim more than Verilator, so make bench reports both.
    """
    from sim.backends.verilator import build_model
    from sim.cosim.run import run_workload
    from sim.cosim.workload import WorkloadOptions

    def run(backend, n):
        s = run_workload(WorkloadOptions(accesses=n, seed=seed), backend, unit={"checks": checks})
        return s, s["cycles"] / s["elapsed_seconds"]

    build_model(dict(maxphyaddr=46, execute_only=True, walkers=2, tlb_sets=16, tlb_ways=4,
                     pde_cache=8, caches=True, checks=checks))    # not timed: a cold build takes minutes
    n_py = pysim_accesses or accesses
    py, py_cps = run("rtl", n_py)
    vl, vl_cps = run("verilator", accesses)
    vl_prefix, vl_prefix_cps = (vl, vl_cps) if n_py == accesses else run("verilator", n_py)
    drop = ("backend", "elapsed_seconds", "cycles_per_second", "created")
    same = {k: v for k, v in py.items() if k not in drop} == \
           {k: v for k, v in vl_prefix.items() if k not in drop}
    return {
        "pysim_cycles_per_second": round(py_cps),
        "verilator_cycles_per_second": round(vl_cps),
        "verilator_speedup_vs_pysim": round(vl_cps / py_cps, 1),
        "identical": same,
        # the same prefix on both: the like-for-like ratio (the prefix walks more)
        "verilator_prefix_cycles_per_second": round(vl_prefix_cps),
        "verilator_speedup_same_prefix": round(vl_prefix_cps / py_cps, 1),
        "pysim_accesses": n_py,
        "verilator_accesses": accesses,
        "pysim_cycles": py["cycles"],
        "verilator_cycles": vl["cycles"],
        "note": ("pysim measured on a prefix of the same workload (same seed)"
                 if n_py != accesses else "both ran the full workload"),
    }


def plot(results: dict, outdir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    sweeps = dict(results["patterns"]) | results["workload"]
    for metric, label in (("hit_rate", "TLB hit rate"), ("cycles_per_translation", "cycles per translation")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, rows in sweeps.items():
            ax.plot([r["tlb_entries_4k"] for r in rows], [r[metric] for r in rows], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("4K TLB entries (4-way)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs TLB size (DRAM latency {L})")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = outdir / f"{metric}_vs_tlb_size.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in results["combined_tlb_patterns"].items():
        ax.plot([r["combined_tlb_entries"] for r in rows], [r["hit_rate"] for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("combined-TLB entries (fully associative)")
    ax.set_ylabel("combined-TLB hit rate (ctlb_hits / linear_lookups)")
    ax.set_title(f"nested unit: combined-TLB hit rate vs size (DRAM latency {L})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = outdir / "combined_tlb_hit_rate_vs_size.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))
    fig, ax = plt.subplots(figsize=(5, 4))
    by = results["miss_cycles_by_walkers"]
    ax.bar(list(by), [results["independent_misses"] * 1000 / v for v in by.values()])
    ax.set_xlabel("walkers")
    ax.set_ylabel("independent misses per 1000 cycles")
    ax.set_title("miss throughput")
    path = outdir / "miss_throughput_vs_walkers.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))
    return written


def run_bench(outdir: str | Path = "build/bench", quick: bool = False, progress=print) -> dict:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict = {"quick": quick}
    progress("timing: hit latency/throughput, cold and PDE-cached walks")
    results |= timing_figures()
    progress("miss throughput: 1, 2 and 4 walkers")
    results |= miss_throughput(16 if quick else 64)
    progress("access patterns vs TLB size")
    results["patterns"] = pattern_sweep(100 if quick else 800)
    progress("pageable-guest workload vs TLB size")
    results["workload"] = workload_sweep(100 if quick else 1000)
    # the nested unit (sim/flows/bench_nested.py)
    progress("nested unit: combined-TLB hit, cold and warm 2D walks")
    results |= nested_timing(L)
    progress("nested unit: combined-TLB hit rate vs size on the access patterns")
    n = 24 if quick else 256
    results["combined_tlb_patterns"] = ctlb_sweep(
        {name: _pattern(name, n, random.Random(1), LA_REGION) for name in PATTERNS}, L,
        sizes=(4, 16) if quick else CTLB_SIZES)
    progress("guest-os workload on the rtl nested unit: references per combined-TLB miss")
    results |= guest_os_refs(100 if quick else None)      # None: the whole default workload
    if not quick:
        # the default `make sim` workload, whole, on pysim and on Verilator in one run
        from sim.backends.base import BackendUnavailable
        progress("default workload on pysim and Verilator (pysim takes minutes)")
        try:
            progress("Verilator: cold build, bare model and cosimulation (3 alternating runs)")
            results |= cosim_vs_bare()
            results |= measure_speed(pysim_accesses=None)
            # without the protocol Asserts, which cost pysim more than Verilator
            bare = measure_speed(pysim_accesses=None, checks=False)
            results |= {f"{k}_no_checks": bare[k] for k in
                        ("pysim_cycles_per_second", "verilator_cycles_per_second",
                         "verilator_speedup_vs_pysim", "identical")}
        except BackendUnavailable as e:           # no Verilator: pysim alone
            progress(f"verilator unavailable ({e}); pysim only")
            results |= default_workload_speed()
    results["plots"] = plot(results, outdir)
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    write_json(outdir / "results.json", results)
    return results


# -- the `bench` command ---------------------------------------------------------------
ABOUT = dict(help="speed figures measured on the RTL: JSON and PNG plots",
             description="Hit latency and throughput, cold and cached walk cycles, miss "
                         "throughput with 1/2/4 walkers, hit rate vs TLB size on standard access "
                         "patterns, the nested unit's combined-TLB hit, cold and warm 2D walks, "
                         "combined-TLB hit rate vs size and references per miss, "
                         "and the default workload's speed on pysim and Verilator; "
                         "written to OUT/results.json with plots beside it.",
             epilog=("examples:\n"
                     "  python -m sim bench\n"
                     "  python -m sim bench --quick --out build/bench-quick\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="build/bench", help="output directory (default build/bench)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")


def goal_keys(key: str) -> tuple[str, str]:
    """The keys of a figure's goal and of whether it is met: ``nested_cold_walk_cycles``
    -> ``nested_cold_walk_goal_cycles``, ``nested_cold_walk_met``; otherwise ``KEY_goal``,
    ``KEY_met``."""
    base = key.removesuffix("_cycles")
    return (f"{base}_goal_cycles", f"{base}_met") if base != key else (f"{key}_goal", f"{key}_met")


def _goal_note(r: dict, key: str) -> str:
    goal, met = goal_keys(key)
    if goal not in r:
        return ""
    if met not in r:
        return f"   (goal <= {r[goal]})"
    verdict = {True: "met", False: "NOT met", None: "not measured"}[r[met]]
    return f"   (goal <= {r[goal]}: {verdict})"


def main(args) -> int:
    output_dir("--out", args.out)
    r = run_bench(args.out, args.quick, progress=progress_printer(False))
    keys = ("tlb_hit_latency_cycles", "tlb_hit_throughput_per_cycle", "cold_walk_cycles",
            "psc_pde_hit_walk_cycles", "miss_throughput_speedup_4_walkers", "pysim_cycles_per_second",
            "verilator_cycles_per_second", "verilator_speedup_vs_pysim", "verilator_bare_cycles_per_second",
            "cosim_loop_vs_bare", "cosim_process_vs_bare", "verilator_cold_build_seconds",
            "nested_tlb_hit_latency_cycles", "nested_cold_walk_cycles", "nested_warm_walk_cycles",
            "nested_refs_per_walk_guest_os")
    for k in keys:
        if k in r:
            print(f"{k:40s} {r[k]}{_goal_note(r, k)}")
    print(f"results written to {Path(args.out) / 'results.json'}")
    return 0
