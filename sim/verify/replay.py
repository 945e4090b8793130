"""Run a replay scenario on a backend and print JSON Lines (the replay contract)."""

from __future__ import annotations

import argparse

import json
import sys
from dataclasses import dataclass, field
from typing import TextIO

from model.physmem import PhysicalMemory
from model.nested import NestedTranslation
from model.walk import Translation

from sim.backends.base import backend_class, make_backend
from sim.cosim.scenario import Scenario
from sim.backends.base import BACKENDS
from sim.cosim.scenario import load_scenario
from sim.options import add_rtl_options, rtl_kwargs, output_path

__all__ = ["replay", "ReplayResult"]


@dataclass
class ReplayResult:
    lines: list[dict]
    mismatches: list[str] = field(default_factory=list)   # scoreboard reports (rtl)


def translate_line(t: Translation | NestedTranslation, cycles: int | None) -> dict:
    d = t.to_json()
    if cycles is not None:
        d["cycles"] = cycles
    return d


def replay(scenario: Scenario, backend_name: str = "model", out: TextIO = sys.stdout,
           **backend_kw) -> ReplayResult:
    """Execute every op in order, each finished before the next; return the lines.

    A scenario with nested ops (translate_la, set_cr3, invvpid) on a backend
    that cannot walk guest tables is refused before anything runs.  On an RTL
    backend a scenario with a guest runs on the nested unit
    (:class:`hw.nested_top.NestedWalkUnit`), one without on the page-walk unit.
    """
    nested = scenario.nested_ops
    cls = backend_class(backend_name)
    if nested and not cls.nested:
        raise cls.refuse_nested(f"op {nested[0].kind!r}")
    memory = PhysicalMemory(scenario.config.maxphyaddr)
    for addr, value in scenario.memory:
        memory.write(addr, value, source="init")
    if scenario.guest is not None and cls.nested and cls.timed:
        backend_kw = dict(backend_kw, nested=True)
    backend = make_backend(backend_name, memory, scenario.config, **backend_kw)
    lines = []
    try:
        backend.load_eptp(scenario.eptp)
        if scenario.guest is not None and cls.nested:
            backend.load_guest(scenario.guest)
        for op in scenario.ops:
            line = None
            if op.kind == "write":
                backend.write(op.addr, op.value)
            elif op.kind == "read":
                line = {"op": "read", "addr": f"{op.addr:#x}", "value": f"{backend.read(op.addr):#x}"}
            elif op.kind == "invept":
                backend.invept(op.invept)
            elif op.kind == "translate_la":
                t, cycles = backend.translate_la(op.la, op.access, op.user)
                line = translate_line(t, cycles)
            elif op.kind == "set_cr3":
                backend.set_cr3(op.cr3)
            elif op.kind == "invvpid":
                backend.invvpid(op.invvpid, op.la)
            else:
                t, cycles = backend.translate(op.gpa, op.access)
                line = translate_line(t, cycles)
            if line is not None:
                lines.append(line)
                out.write(json.dumps(line) + "\n")
    finally:
        backend.close()
    out.flush()
    return ReplayResult(lines, list(backend.mismatches))


# -- the `replay` command ---------------------------------------------------------------
ABOUT = dict(help="run a replay scenario (JSON) and print JSON Lines",
                       description="Execute the ops of SCENARIO in order and print one JSON "
                                   "line per read, translate and translate_la (see README, Replay "
                                   "contract, and docs/nested.md for the guest ops).",
             epilog=("examples:\n"
                     "  python -m sim replay examples/4k-read.json\n"
                     "  python -m sim replay examples/4k-read.json --backend verilator\n"
                     "  cat scenario.json | python -m sim replay - --backend rtl --dram-latency 20\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", metavar="SCENARIO.json")
    p.add_argument("--backend", default="model", choices=sorted(BACKENDS),
                   help="model (golden model), rtl (the Amaranth unit in pysim) or verilator "
                        "(the same unit compiled with Verilator: same results, faster)")
    add_rtl_options(p)


def main(args) -> int:
    scenario = load_scenario(args.scenario)
    kw = rtl_kwargs(args)
    output_path("--wave", args.wave)
    result = replay(scenario, args.backend, **kw)
    for m in result.mismatches:
        print(f"MISMATCH: {m}", file=sys.stderr)
    return 1 if result.mismatches else 0
