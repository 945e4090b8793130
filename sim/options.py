"""Command-line pieces every command shares: option types, the RTL and unit
option groups, output-path checks and the one-line usage error.

Each command module (``sim/*/…``, registered in :mod:`sim.cli`) owns its
options through ``add_arguments(parser)`` and runs through ``main(args)``;
what several commands have in common lives here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["PROG", "UsageError", "Parser", "positive", "nonneg", "fraction", "probability",
           "add_rtl_options", "add_unit_options", "rtl_kwargs", "unit_kwargs", "output_path",
           "progress_printer", "add_reliability_option"]

PROG = "python -m sim"


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, not usage + error
        raise UsageError(f"{self.prog}: {message}")


def positive(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be positive")
    return v


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v} is not in 0..1")
    return v


def probability(text: str) -> float:
    v = fraction(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"{v} must be below 1")
    return v


def nonneg(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must not be negative")
    return v


def add_rtl_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("RTL backend (DRAM model and port behaviour)")
    g.add_argument("--dram-latency", type=positive, default=8, metavar="L",
                   help="cycles from a read's acceptance to its response (default 8)")
    g.add_argument("--cas-latency", type=positive, default=12, help="the same for a CAS (default 12)")
    g.add_argument("--row-miss-penalty", type=nonneg, default=6,
                   help="extra cycles when an access misses its bank's open row (default 6)")
    g.add_argument("--max-outstanding", type=positive, default=4,
                   help="DRAM requests in flight at most (default 4)")
    g.add_argument("--dram-stall", type=probability, default=0.0, metavar="P",
                   help="chance per cycle that the DRAM is not ready (default 0)")
    g.add_argument("--bus-error-rate", type=probability, default=0.0, metavar="P",
                   help="chance that a DRAM access answers with a bus error (default 0)")
    g.add_argument("--resp-stall", type=probability, default=0.0, metavar="P",
                   help="chance per cycle that the translate response is not taken (default 0)")
    g.add_argument("--dram-seed", type=int, default=1, help="seed of the stall/error generators")
    g.add_argument("--wave", "--vcd", dest="wave", metavar="FILE",
                   help="write a waveform (rtl: FILE.vcd, verilator: FILE.fst) with a GTKWave save "
                        "file FILE.gtkw, enum filters and a transaction log FILE.txn.log")
    add_unit_options(p)


def add_unit_options(p: argparse.ArgumentParser) -> None:
    u = p.add_argument_group("the unit's parameters (RTL backend)")
    u.add_argument("--walkers", type=positive, default=2, help="concurrent walks (default 2)")
    u.add_argument("--tlb-sets", type=positive, default=16, help="4K TLB sets (default 16)")
    u.add_argument("--tlb-ways", type=positive, default=4, help="4K TLB ways (default 4)")
    u.add_argument("--pde-cache", type=nonneg, default=8, help="PDE cache entries (default 8)")
    u.add_argument("--no-caches", action="store_true",
                   help="no TLB and no paging-structure caches: every request walks")


def rtl_kwargs(args) -> dict:
    if args.backend == "model":
        if args.wave:
            raise UsageError(f"{PROG}: --wave needs --backend rtl or verilator (the model has no waveform)")
        return {}
    if args.wave:
        want = ".fst" if args.backend == "verilator" else ".vcd"
        if Path(args.wave).suffix != want:
            raise UsageError(f"{PROG}: --wave {args.wave}: the {args.backend} backend writes {want} "
                             f"(rtl: .vcd, verilator: .fst)")
    from sim.cosim.dram import DramConfig
    dram = DramConfig(read_latency=args.dram_latency, cas_latency=args.cas_latency,
                      row_miss_penalty=args.row_miss_penalty, max_outstanding=args.max_outstanding,
                      stall_probability=args.dram_stall, error_probability=args.bus_error_rate,
                      seed=args.dram_seed)
    try:
        dram.validate()
    except ValueError as e:
        raise UsageError(f"{PROG}: {e}") from None
    unit = unit_kwargs(args)
    return {"dram": dram, "wave": args.wave, "resp_stall_probability": args.resp_stall,
            "seed": args.dram_seed, "unit": unit}


def output_path(flag: str, path: str | None) -> None:
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


def unit_kwargs(args) -> dict:
    unit = {"walkers": args.walkers, "tlb_sets": args.tlb_sets, "tlb_ways": args.tlb_ways,
            "pde_cache": args.pde_cache, "caches": not args.no_caches}
    from hw.top import PageWalkUnit
    try:
        PageWalkUnit(**unit)
    except ValueError as e:
        raise UsageError(f"{PROG}: {e}") from None
    return unit


def progress_printer(quiet: bool):
    """A progress callback printing to stderr, or None when ``quiet``."""
    return None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))


def add_reliability_option(p: argparse.ArgumentParser) -> None:
    """``--no-reliability``: leave build/reliability/report.json alone (a sweep's jobs run
    side by side, and the sweep writes the reliability figures from all of them)."""
    p.add_argument("--no-reliability", action="store_true",
                   help="do not write this run's section of build/reliability/report.json "
                        "(a sweep's jobs: `python -m sim sweep` writes it from the whole regression)")
