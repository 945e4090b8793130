"""Differential fuzzing (python -m sim fuzz): it runs clean, it finds a planted
bug and leaves a reproducer that reproduces alone, and its generator covers
what it claims (every reserved bit, 1G/2M pages, the top of MAXPHYADDR)."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rtl_util import verilator_or_skip

from model.formats import EptConfig, Outcome, PAGE_SIZE
from model.physmem import PhysicalMemory
from model.walk import walk
from sim.verify.fuzz import FuzzOptions, HostileBuilder, _sweep_table, run_fuzz, sweep_cases
from sim.backends.pysim import PysimHarness

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)




def test_sweep_breaks_every_reserved_bit_and_only_that():
    config = EptConfig()
    cases = sweep_cases(config)
    # PML4E 7:3 and 51:46; non-leaf PDPTE/PDE 6:3 and 51:46; 1G 29:12, 2M 20:12; 51:46 everywhere
    assert len(cases) == 11 + (10 + 24) + (10 + 15) + 6
    memory = PhysicalMemory()
    rng = random.Random(5)
    base, top = 0x100_0000, 1 << config.maxphyaddr
    for level, leaf, bit in cases:
        b = HostileBuilder(memory, base, rng, config, top)
        ts = _sweep_table(b, level, leaf, bit)
        base, top = b.next, b.top
        t = walk(memory, ts.eptp, ts.gpas[0], 0, config)
        assert t.outcome is Outcome.MISCONFIG and t.level == level, (level, leaf, bit, t.reason)
        assert "reserved" in t.reason
        # the same entry without the bit is valid: the bit alone is what broke it
        addr = t.steps[-1].addr
        memory.write(addr, memory.peek(addr) & ~(1 << bit))
        assert walk(memory, ts.eptp, ts.gpas[0], 0, config).outcome is not Outcome.MISCONFIG


def test_hostile_builder_makes_what_it_promises():
    config = EptConfig()
    memory = PhysicalMemory()
    rng = random.Random(11)
    seen = {"1G": 0, "2M": 0, "top page": 0, "top table": 0, "self/parent": 0}
    base, top = 0x100_0000, 1 << config.maxphyaddr
    for _ in range(300):
        b = HostileBuilder(memory, base, rng, config, top)
        ts = b.build(n_paths=5)
        base, top = b.next, b.top
        for gpa in ts.gpas:
            t = walk(memory, ts.eptp, gpa, 0, config)
            if t.outcome is Outcome.OK:
                if t.page_size == 1 << 30:
                    seen["1G"] += 1
                elif t.page_size == 1 << 21:
                    seen["2M"] += 1
                if t.hpa >> 30 == ((1 << config.maxphyaddr) - 1) >> 30:
                    seen["top page"] += 1
            tables = [s.addr & ~(PAGE_SIZE - 1) for s in t.steps]
            if any(a >= (1 << config.maxphyaddr) - (1 << 30) for a in tables):
                seen["top table"] += 1
            if len(tables) != len(set(tables)):
                seen["self/parent"] += 1         # a walk that met the same table twice
    assert all(v > 0 for v in seen.values()), seen


def test_fuzz_on_pysim_runs_clean(tmp_path):
    res = run_cli("fuzz", "--walks", "120", "--seed", "3", "--quiet", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    n, m = (int(x) for x in __import__("re").match(r"(\d+) walks, (\d+) mismatches$", last).groups())
    assert n >= 120 and m == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["walks"] == n and report["mismatches"] == 0 and report["sweep_cases"] > 0


def test_fuzz_with_faults_on_verilator_runs_clean(tmp_path):
    verilator_or_skip()
    rep = run_fuzz(FuzzOptions(walks=4000, seed=7, backend="verilator", faults=True, out=tmp_path))
    assert rep.mismatches == 0, rep.reports
    assert rep.walks >= 4000 and rep.hangs == 0 and rep.corruptions == 0
    assert rep.faults_injected > 20 and rep.outcomes.get("bus_error", 0) > 0
    assert rep.stall_cycles > 1000 and rep.invalid_eptps > 0
    for outcome in ("ok", "violation", "misconfig", "refused"):
        assert rep.outcomes.get(outcome, 0) > 0, outcome


def test_fuzz_finds_a_planted_bug_and_leaves_a_reproducer(monkeypatch, tmp_path):
    real = PysimHarness._fill

    def lying(self, t, raw):
        real(self, t, raw)
        if t.hpa is not None and t.gpa % 7 == 0 and t.access.name == "WRITE":
            t.hpa ^= 0x1000
    monkeypatch.setattr(PysimHarness, "_fill", lying)
    backend = "rtl"
    try:
        verilator_or_skip()
        from sim.backends import verilator as vb
        monkeypatch.setattr(vb.VerilatorHarness, "_fill", lying)
        backend = "verilator"
    except pytest.skip.Exception:
        pass
    rep = run_fuzz(FuzzOptions(walks=3000, seed=1, backend=backend, out=tmp_path))
    assert rep.mismatches > 0 and rep.reproducers
    r = rep.reproducers[0]
    assert r["reproduces"] and r["ops"] <= 3
    scenario = json.loads(Path(r["scenario"]).read_text())
    assert scenario["ops"][-1]["op"] == "translate" and scenario["ops"][-1]["access"] == "write"
    assert not list(tmp_path.glob("*.tmp"))          # nothing half-written
    # without the bug the reproducer passes, with the scoreboard on
    monkeypatch.setattr(PysimHarness, "_fill", real)
    res = run_cli("replay", r["scenario"], "--backend", "rtl")
    assert res.returncode == 0 and "MISMATCH" not in res.stderr, res.stderr


def test_fuzz_exits_1_on_a_mismatch_with_the_summary_last(tmp_path):
    # a planted bug through the CLI: a sitecustomize that patches the harness
    (tmp_path / "sitecustomize.py").write_text(
        "from sim.backends.pysim import PysimHarness\n"
        "real = PysimHarness._fill\n"
        "def lying(self, t, raw):\n"
        "    real(self, t, raw)\n"
        "    if t.hpa is not None:\n"
        "        t.hpa ^= 0x2000\n"
        "PysimHarness._fill = lying\n"
        "try:\n"
        "    from sim.backends.verilator import VerilatorHarness\n"
        "    VerilatorHarness._fill = lying\n"
        "except Exception:\n"
        "    pass\n")
    import os
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    from sim.backends.base import BackendUnavailable
    try:
        from sim.backends.verilator import toolchain
        toolchain()
        backend = "verilator"
    except BackendUnavailable:           # pragma: no cover - CI installs it
        backend = "rtl"
    res = subprocess.run([sys.executable, "-m", "sim", "fuzz", "--walks", "400", "--quiet",
                          "--backend", backend,
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=900)
    assert res.returncode == 1
    assert __import__("re").search(r"^\d+ walks, [1-9]\d* mismatches$", res.stdout.strip().splitlines()[-1])
    assert "reproducer" in res.stdout and list((tmp_path / "out").glob("repro-*.json"))


@pytest.mark.parametrize("args,word", [(("--walks", "0"), "--walks"), (("--backend", "model"), "backend"),
                                       (("--out", "/proc/nope"), "--out"), (("--walkers", "0"), "walkers")])
def test_fuzz_bad_input_is_one_line(args, word):
    res = run_cli("fuzz", *args)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and word in res.stderr
    assert "Traceback" not in res.stderr


def test_fuzz_runs_exactly_the_walks_asked_for():
    lines = []
    rep = run_fuzz(FuzzOptions(walks=37, seed=5, backend="rtl", cases_per_round=4), lines.append)
    assert rep.walks == 37
    counts = [int(line.split(":")[1].split("/")[0]) for line in lines]
    assert counts and max(counts) == 37 and counts == sorted(counts)


def test_a_second_run_says_it_replaces_a_report_section(tmp_path, capsys):
    from sim.verify.reliability import update_report
    path = tmp_path / "report.json"
    update_report("fuzz", {"walks": 1, "options": {"walks": 1, "seed": 1}}, path)
    assert capsys.readouterr().err == ""
    update_report("fuzz", {"walks": 2, "options": {"walks": 2, "seed": 9}}, path)
    err = capsys.readouterr().err
    assert "replaced the fuzz section" in err and "walks 1, seed 1" in err
