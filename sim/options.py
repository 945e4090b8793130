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
           "progress_printer", "settle", "SIM_FIXED"]

PROG = "python -m sim"


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit 2, prefixed with the command
    (``prog``, else the subcommand that was running)."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    def error(self, message):          # one line, not usage + error
        raise UsageError(message, prog=self.prog)


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


# -- options whose defaults are filled in after parsing, so a command knows which were given
_TRACKED: dict[str, tuple[str, object]] = {}     # dest -> (option string, default)


def _tracked(group, option: str, *, dest: str, default, **kw) -> None:
    _TRACKED[dest] = (option, default)
    group.add_argument(option, dest=dest, default=argparse.SUPPRESS, **kw)


def settle(args: argparse.Namespace) -> None:
    """Fill in the tracked options' defaults; ``args.given`` is the set of those given."""
    args.given = {}
    for dest, (option, default) in _TRACKED.items():
        if hasattr(args, dest):
            value = getattr(args, dest)
            # a switch is named as it was given: --caches or --no-caches
            args.given[dest] = option.replace("--", "--no-", 1) if value is False and default is True else option
        elif dest.startswith("unit_") or dest in _RTL_DESTS:
            setattr(args, dest, default)


_RTL_DESTS: set[str] = set()


def add_rtl_options(p: argparse.ArgumentParser) -> None:
    """The DRAM model and port options of the RTL backends, then the unit's parameters."""
    g = p.add_argument_group("DRAM model and port behaviour (rtl and verilator backends)")
    rows = [
        ("--dram-latency", "dram_latency", 8, positive, "L", "cycles from a read's acceptance to its response"),
        ("--dram-cas-latency", "dram_cas_latency", 12, positive, "L", "the same for a CAS"),
        ("--dram-row-miss-penalty", "dram_row_miss_penalty", 6, nonneg, "N",
         "extra cycles when an access misses its bank's open row"),
        ("--dram-max-outstanding", "dram_max_outstanding", 4, positive, "N",
         "DRAM requests in flight at most"),
        ("--dram-stall", "dram_stall", 0.0, probability, "P", "chance per cycle that the DRAM is not ready"),
        ("--bus-error-rate", "bus_error_rate", 0.0, probability, "P",
         "chance that a DRAM access answers with a bus error"),
        ("--resp-stall", "resp_stall", 0.0, probability, "P",
         "chance per cycle that the translate response is not taken"),
        ("--dram-seed", "dram_seed", 1, int, "S", "seed of the stall and error generators"),
    ]
    for option, dest, default, kind, metavar, text in rows:
        _RTL_DESTS.add(dest)
        _tracked(g, option, dest=dest, default=default, type=kind, metavar=metavar,
                 help=f"{text} (default {default})")
    _RTL_DESTS.add("wave")
    _tracked(g, "--wave", dest="wave", default=None, metavar="FILE",
             help="write a waveform (rtl: FILE.vcd, verilator: FILE.fst) with a GTKWave save "
                  "file FILE.gtkw, enum filters and a transaction log FILE.txn.log")
    add_unit_options(p)


# the unit's parameters a simulation does not take from the command line: the EPT
# configuration (scenario or memory) sets these two, and the protocol checks are always on
SIM_FIXED = ("maxphyaddr", "execute_only", "checks")


def _integer(text: str) -> int:
    # range checks belong to the constructor; here only "is it a number"
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def add_unit_options(p: argparse.ArgumentParser, params=None, *, title: str | None = None,
                     exclude=SIM_FIXED) -> None:
    """One option per constructor parameter of the unit (see :mod:`sim.unit_params`)."""
    from sim import unit_params
    params = unit_params.parameters(*unit_params.UNIT) if params is None else params
    g = p.add_argument_group(title or "the unit's parameters (PageWalkUnit; rtl and verilator backends; "
                                      "checked by its constructor)")
    for q in params:
        if q.name in exclude:
            continue
        default = ("on" if q.default else "off") if q.kind is bool else q.default
        text = f"{q.help + ' ' if q.help else ''}(default {default})"
        if q.kind is bool:
            _tracked(g, q.option, dest=f"unit_{q.name}", default=q.default,
                     action=argparse.BooleanOptionalAction, help=text)
        else:
            _tracked(g, q.option, dest=f"unit_{q.name}", default=q.default, type=_integer, metavar="N",
                     help=text)


def unit_kwargs(args, *, check: bool = True) -> dict:
    """The unit parameters given on the command line (only those), checked by the constructor."""
    given = {d[len("unit_"):]: getattr(args, d) for d in getattr(args, "given", {}) if d.startswith("unit_")}
    from sim import unit_params
    if given.get("caches") is False:
        sized = [args.given[f"unit_{n}"] for n in given if unit_params.CACHE_GEOMETRY(n)]
        if sized:
            raise UsageError(f"{sized[0]} sizes a cache, and --no-caches has none: drop one of them")
    if check and given:
        try:
            unit_params.check(given)
        except ValueError as e:
            # the constructor names the parameter its own way: say which options were given
            options = [args.given[f"unit_{n}"] for n in given]
            raise UsageError(f"{', '.join(options)}: {e}") from None
    return given


def rtl_kwargs(args) -> dict:
    """The backend keywords of the DRAM, port and unit options; refused on the model backend."""
    given = getattr(args, "given", {})
    if args.backend == "model":
        rtl = [opt for dest, opt in given.items() if dest in _RTL_DESTS or dest.startswith("unit_")]
        if rtl:
            raise UsageError(f"{rtl[0]} is for the rtl and verilator backends: the model backend has no "
                             f"DRAM model, port or unit")
        return {}
    if args.wave:
        want = ".fst" if args.backend == "verilator" else ".vcd"
        if Path(args.wave).suffix != want:
            raise UsageError(f"--wave {args.wave}: the {args.backend} backend writes {want} "
                             f"(rtl: .vcd, verilator: .fst)")
    from sim.cosim.dram import DramConfig
    dram = DramConfig(read_latency=args.dram_latency, cas_latency=args.dram_cas_latency,
                      row_miss_penalty=args.dram_row_miss_penalty, max_outstanding=args.dram_max_outstanding,
                      stall_probability=args.dram_stall, error_probability=args.bus_error_rate,
                      seed=args.dram_seed)
    try:
        dram.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    unit = unit_kwargs(args)
    return {"dram": dram, "wave": args.wave, "resp_stall_probability": args.resp_stall,
            "seed": args.dram_seed, "unit": unit}


def output_path(flag: str, path: str | None) -> None:
    """Refuse an output path that cannot be written, before any work is done.

    Missing folders are made only under ``build/`` (the tools' own output
    tree); elsewhere a missing folder is refused, not created silently.
    """
    if path is None:
        return
    p = Path(path)
    parent = p.parent.resolve()
    build = Path.cwd().resolve() / "build"
    if p.is_dir():
        raise UsageError(f"cannot write {flag} {path}: it is a directory")
    if not parent.exists():
        if not (parent == build or build in parent.parents):
            raise UsageError(f"cannot write {flag} {path}: folder {p.parent} does not exist")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot write {flag} {path}: {e.strerror}") from None
    # try it: permissions alone do not tell (root, read-only mounts, /proc)
    import tempfile
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".probe")
    except OSError as e:
        raise UsageError(f"cannot write {flag} {path}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def progress_printer(quiet: bool):
    """A progress callback printing to stderr, or None when ``quiet``."""
    return None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
