"""``python -m sim``: replay scenarios and run the pageable-guest workload.

Bad input gets one line on stderr naming the problem, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Cycle-level EPT page-walk unit: golden model, "
                                      "replay and cosimulation.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    r = sub.add_parser("replay", help="run a replay scenario (JSON) and print JSON Lines",
                       description="Execute the ops of SCENARIO in order and print one JSON "
                                   "line per read and translate (see README, Replay contract).")
    r.add_argument("scenario", metavar="SCENARIO.json")
    r.add_argument("--backend", default="model", choices=sorted(BACKENDS),
                   help="model (golden model) or rtl (the Amaranth unit in pysim)")

    w = sub.add_parser("run", help="run the pageable-guest workload and print a summary",
                       description="A guest touches more pages than the host gives it frames; "
                                   "EPT violations fault pages in with pmap_enter, a clock page "
                                   "daemon evicts using the A/D bits the walker sets.")
    w.add_argument("--backend", default="model", choices=sorted(BACKENDS))
    w.add_argument("--accesses", type=_positive, default=20000, help="guest accesses (default 20000)")
    w.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    w.add_argument("--guest-pages", type=_positive, default=1024,
                   help="guest working set in 4K pages (default 1024)")
    w.add_argument("--host-frames", type=_positive, default=384,
                   help="frames the host gives the guest (default 384)")
    w.add_argument("--mix", type=_mix, default=(0.6, 0.3, 0.1), metavar="R,W,F",
                   help="read,write,fetch weights (default 0.6,0.3,0.1)")
    w.add_argument("--locality", type=_fraction, default=0.8,
                   help="share of accesses to the hot set (default 0.8)")
    w.add_argument("--hot-pages", type=_positive, default=48, help="hot-set size (default 48)")
    w.add_argument("--sequential", type=_fraction, default=0.15,
                   help="chance an access goes to the next page (default 0.15)")
    w.add_argument("--no-ad", action="store_true", help="run with EPTP A/D flags disabled")
    w.add_argument("--summary", default="build/sim/summary.json",
                   help="where to write the JSON summary (default build/sim/summary.json)")
    w.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def cmd_replay(args) -> int:
    from .replay import replay
    scenario = load_scenario(args.scenario)
    replay(scenario, args.backend)
    return 0


def cmd_run(args) -> int:
    from .run import format_summary, run_workload, write_summary
    from .workload import WorkloadOptions
    opts = WorkloadOptions(accesses=args.accesses, seed=args.seed, guest_pages=args.guest_pages,
                           host_frames=args.host_frames, mix=args.mix, locality=args.locality,
                           hot_pages=args.hot_pages, sequential=args.sequential, ad=not args.no_ad)
    try:
        opts.validate()
    except ValueError as e:
        raise UsageError(f"{PROG} run: {e}") from None
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    summary = run_workload(opts, args.backend, progress=progress)
    write_summary(summary, args.summary)
    print(format_summary(summary))
    print(f"summary written to {args.summary}")
    return 1 if summary["mismatches"] else 0


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"replay": cmd_replay, "run": cmd_run}[args.command](args)
    except (UsageError, ScenarioError, BackendUnavailable, EptpError, MemoryAccessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
