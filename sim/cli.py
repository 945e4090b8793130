"""``python -m sim``: the command registry.

Each command is a module that owns its options and its work:
``ABOUT`` (the subcommand's help and description), ``add_arguments(parser)``
and ``main(args)``, the way Glasgow's applets do.  This module only
registers them and turns the errors a user can cause into one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from pathlib import Path

from model.formats import EptpError
from model.physmem import MemoryAccessError

from sim.backends.base import BackendUnavailable
from sim.cosim.scenario import ScenarioError
from sim.options import PROG, Parser, UsageError, settle

__all__ = ["COMMANDS", "build_parser", "main"]

# name -> module; the order is the order of `python -m sim --help`
COMMANDS = {
    "replay": "sim.verify.replay",
    "run": "sim.cosim.run",
    "fuzz": "sim.verify.fuzz",
    "races": "sim.verify.races",
    "soak": "sim.verify.soak",
    "formal": "sim.flows.formal",
    "wave": "sim.flows.wave",
    "verilog": "sim.flows.verilog",
    "lint": "sim.flows.lint",
    "synth": "sim.flows.synth",
    "bench": "sim.flows.bench",
    "sweep": "sim.verify.sweep",
}


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions as usual, but keeps an epilog of examples line by line."""

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return "".join(indent + line + "\n" for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def _help_of(module: str) -> str:
    """A command module's one-line help, read from its source (``ABOUT = dict(help=...)``)
    so that listing the commands imports none of them (some import Amaranth)."""
    origin = importlib.util.find_spec(module).origin
    for node in ast.parse(Path(origin).read_text()).body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ABOUT" for t in node.targets)
                and isinstance(node.value, ast.Call)):
            for kw in node.value.keywords:
                if kw.arg == "help" and isinstance(kw.value, ast.Constant):
                    return kw.value.value
    return ""


def build_parser(argv=None) -> Parser:
    """The parser; only the command named in ``argv`` (if any) is imported and given its options."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    p = Parser(prog=PROG, description="Cycle-level EPT page-walk unit: golden model, "
                                      "replay and cosimulation.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, module in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=_help_of(module))
            continue
        mod = importlib.import_module(module)
        cmd = sub.add_parser(name, formatter_class=_Formatter, **mod.ABOUT)
        mod.add_arguments(cmd)
        cmd.set_defaults(run=mod.main)
    return p


def main(argv=None) -> int:
    args = None
    try:
        args = build_parser(argv).parse_args(argv)
        settle(args)
        return args.run(args)
    except UsageError as e:
        prog = e.prog or (f"{PROG} {args.command}" if args is not None else PROG)
        print(f"error: {prog}: {e}", file=sys.stderr)
        return 2
    except (ScenarioError, BackendUnavailable, EptpError, MemoryAccessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        wave = getattr(args, "wave", None)
        if wave:
            # a dump cut off mid-run has no save file and no transaction log: do not leave it
            from sim.flows.gtkwave import wave_outputs
            for path in wave_outputs(wave):
                path.unlink(missing_ok=True)
            print(f"interrupted: the partial waveform {wave} was removed", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
