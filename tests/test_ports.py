"""The port numbers the harnesses use without Amaranth equal hw/layouts.py's."""

import json
import subprocess
import sys
from pathlib import Path

from sim.cosim import harness, ports

ROOT = Path(__file__).resolve().parents[1]


def test_cached_numbers_equal_a_fresh_computation(monkeypatch, tmp_path):
    monkeypatch.setenv("EPT_WALKER_BUILD_CACHE", str(tmp_path))
    monkeypatch.setattr(ports, "_PORTS", None)
    first = ports.ports()                   # computed, then cached
    assert list(tmp_path.glob("index/ports-*.json"))
    monkeypatch.setattr(ports, "_PORTS", None)
    assert ports.ports() == first == json.loads(json.dumps(ports.compute()))


def test_the_harness_numbers_are_the_layouts():
    from hw import layouts
    assert harness.TAG_BITS == layouts.TAG_BITS
    assert harness.PERF_EVENTS == list(layouts.PERF_EVENTS)
    assert harness.INVEPT_GLOBAL == layouts.InveptKind.GLOBAL.value
    gpa = layouts.TranslateRequest["gpa"]
    assert harness.TRANSLATE_REQUEST.field("gpa") == (gpa.offset, (1 << gpa.width) - 1)
    assert set(harness.HW_OUTCOME) == set(layouts.Outcome)
    assert harness.PAGE_SIZES[layouts.PageSize.SIZE_2M] == 1 << 21


def test_a_verilator_run_imports_no_amaranth():
    code = ("import sys, sim.cosim.run, sim.backends.verilator; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'amaranth'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
