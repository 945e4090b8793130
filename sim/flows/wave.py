"""The `wave` command: a short run with a waveform, opened in GTKWave."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from sim.cosim.scenario import load_scenario
from sim.options import UsageError, positive, add_rtl_options, rtl_kwargs, output_path

__all__ = ["add_arguments", "main"]


# -- the `wave` command ---------------------------------------------------------------
ABOUT = dict(help="a short run with a waveform, opened in GTKWave",
                        description="Run a short pageable-guest workload (or replay SCENARIO) on "
                                    "the RTL with a waveform, a GTKWave save file (signals grouped "
                                    "by block, enums by name) and a transaction log; open GTKWave "
                                    "on it if there is a display, else print the command.",
             epilog=("examples:\n"
                     "  python -m sim wave\n"
                     "  python -m sim wave examples/4k-read.json --no-open\n"
                     "  python -m sim wave --backend verilator --accesses 200\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", metavar="SCENARIO.json",
                    help="a replay scenario instead of the pageable guest")
    p.add_argument("--backend", default="rtl", choices=["rtl", "verilator"],
                    help="rtl (pysim, writes VCD; default) or verilator (writes FST)")
    p.add_argument("--accesses", type=positive, default=60, help="guest accesses (default 60)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--out", default="build/wave/ept", metavar="PATH",
                    help="the dump's path without suffix (default build/wave/ept: "
                         "ept.vcd or ept.fst, ept.gtkw, ept.txn.log)")
    p.add_argument("--no-open", action="store_true", help="do not start GTKWave")
    add_rtl_options(p)


def main(args) -> int:
    import shutil
    import subprocess
    if args.wave:
        raise UsageError("use --out PATH (without suffix), not --wave")
    args.wave = args.out + (".fst" if args.backend == "verilator" else ".vcd")
    output_path("--out", args.wave)
    kw = rtl_kwargs(args)
    if args.scenario:
        from sim.verify.replay import replay
        scenario = load_scenario(args.scenario)
        with open(os.devnull, "w") as sink:
            result = replay(scenario, args.backend, out=sink, **kw)
        mismatches = result.mismatches
    else:
        from sim.cosim.run import run_workload
        from sim.cosim.workload import WorkloadOptions
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
