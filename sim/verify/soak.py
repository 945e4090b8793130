"""The soak: the pageable-guest workload for a million translations on the
fastest backend, with every translation checked, and memory use sampled.

``python -m sim soak`` prints ``N translations, M mismatches`` last; the
figures (and resident memory at each tenth of the run) go to
``build/reliability/soak.json``.  Memory counts as flat when the resident
set grew by less than ``flat_mb`` between the first sample after warm-up
(a fifth of the run) and the end.
"""

from __future__ import annotations

import argparse

import resource
import time
from dataclasses import dataclass, field

from sim.cosim.run import run_workload
from sim.cosim.workload import WorkloadOptions
from sim.options import positive, output_path, progress_printer

__all__ = ["SoakReport", "run_soak", "rss_mb"]

# measured on the default workload: translations per guest access
TRANSLATIONS_PER_ACCESS = 1.25     # 1.27 measured: a little under, so N is reached


def rss_mb() -> float:
    """This process's resident set now, in MiB (Linux /proc; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class SoakReport:
    translations: int = 0
    accesses: int = 0
    cycles: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    rss_mb: list = field(default_factory=list)       # (accesses done, MiB)
    growth_mb: float = 0.0
    flat: bool = False
    backend: str = ""


def run_soak(translations: int = 1_000_000, backend: str = "verilator", seed: int = 1,
             flat_mb: float = 16.0, progress=None) -> SoakReport:
    accesses = max(10, int(translations / TRANSLATIONS_PER_ACCESS))
    rep = SoakReport(backend=backend)
    samples = rep.rss_mb

    def sample(line: str) -> None:
        done = int(line.split("/")[0].split()[-1])
        samples.append((done, round(rss_mb(), 1)))
        if progress:
            progress(f"{line}, RSS {samples[-1][1]} MiB")
    started = time.monotonic()
    s = run_workload(WorkloadOptions(accesses=accesses, seed=seed), backend, progress=sample)
    rep.seconds = round(time.monotonic() - started, 1)
    samples.append((accesses, round(rss_mb(), 1)))
    rep.translations, rep.accesses = s["translations"], accesses
    rep.cycles, rep.mismatches = s["cycles"], s["mismatches"]
    warm = samples[min(1, len(samples) - 1)][1]       # after the first fifth
    rep.growth_mb = round(samples[-1][1] - warm, 1)
    rep.flat = rep.growth_mb < flat_mb
    return rep


# -- the `soak` command ---------------------------------------------------------------
ABOUT = dict(help="the pageable guest for a million translations, memory sampled",
                        description="Run the default pageable-guest workload for N translations "
                                    "(every one checked) and sample resident memory; fails on any "
                                    "mismatch or if memory grows. The last line is "
                                    "'N translations, M mismatches'.",
             epilog=("examples:\n"
                     "  python -m sim soak --translations 100000\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--translations", type=positive, default=1_000_000, metavar="N",
                    help="about this many translations (default 1000000)")
    p.add_argument("--backend", default="verilator", choices=["rtl", "verilator"],
                    help="verilator (default: the fastest) or rtl")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def main(args) -> int:
    from dataclasses import asdict
    from sim.verify.reliability import update_report
    output_path("--out", "build/reliability/report.json")
    progress = progress_printer(args.quiet)
    rep = run_soak(args.translations, args.backend, args.seed, progress=progress)
    path = update_report("soak", asdict(rep))
    print(f"{rep.accesses} guest accesses, {rep.cycles} cycles in {rep.seconds} s on {rep.backend}; "
          f"resident memory {rep.rss_mb[0][1] if rep.rss_mb else '?'} -> {rep.rss_mb[-1][1]} MiB "
          f"({'flat' if rep.flat else 'GROWING'}: {rep.growth_mb:+} MiB after warm-up)")
    print(f"report written to {path}")
    print(f"{rep.translations} translations, {rep.mismatches} mismatches")
    return 1 if rep.mismatches or not rep.flat else 0
