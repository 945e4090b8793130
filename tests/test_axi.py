# amaranth: UnusedElaboratable=no
"""The AXI4 memory master, the AXI4-Lite CSR block and the AXI top level in pysim.

The master runs against the behavioural AXI memory (``sim/cosim/axi_mem.py``) with
seeded random READY stalls and RVALID/BVALID delays on every channel, and
random valid gaps / ready stalls on its native side.  Every run also checks
the AXI handshake rules with :class:`AxiProtocolMonitor` and the native
stream rule (a response payload held while not taken).
"""

import gc
import random
from collections import deque
from dataclasses import dataclass, field

import pytest
from amaranth import *
from amaranth.lib import data
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from hw.axi import AXI4LiteSignature, AXI4Signature, Burst, Resp
from hw.axi_master import AxiMemoryMaster, MasterState
from hw.csr import CSR_ID, CSR_VERSION, CsrBlock, Reg
from hw.axi_top import EptWalkerAxi
from hw.layouts import Access as HwAccess, InveptKind, MemOp
from model.formats import (
    EPT_A, EPT_D, EPT_PVLIST, Access, Eptp, Level, Outcome, gpa_index, make_leaf_entry,
    make_table_entry,
)
from model.walk import translate as model_translate, walk
from sim.cosim.harness import HW_OUTCOME, PAGE_SIZES
from sim.cosim.tables import random_table_set
from model.physmem import PhysicalMemory
from sim.cosim.axi_mem import AxiMemory, AxiMemoryConfig, AxiProtocolMonitor

STALLY = dict(ar_stall=0.4, aw_stall=0.4, w_stall=0.5, r_delay=0.3, b_delay=0.3)


@dataclass
class MasterRun:
    responses: list = field(default_factory=list)     # (data, error) in order
    accepted: list = field(default_factory=list)      # cycle of each request handshake
    answered: list = field(default_factory=list)      # cycle of each response handshake
    max_outstanding_seen: int = 0
    cas_retries: int = 0                                # the master's counter at the end
    retry_pulses: int = 0
    cycles: int = 0
    stream_violations: list = field(default_factory=list)
    dut: AxiMemoryMaster = None
    axi_mem: AxiMemory = None
    monitor: AxiProtocolMonitor = None


def run_master(memory, requests, *, config=None, bound=20_000, req_gap=0.2, resp_stall=0.3,
               seed=1, setup=None, **params):
    """Push ``requests`` ((op, addr, compare, data)) through a master; collect the answers."""
    dut = AxiMemoryMaster(**params)
    axi_mem = AxiMemory(memory, dut.axi, config or AxiMemoryConfig(**STALLY, seed=seed))
    monitor = AxiProtocolMonitor(dut.axi)
    run = MasterRun(dut=dut, axi_mem=axi_mem, monitor=monitor)
    if setup is not None:
        setup(axi_mem)
    rng = random.Random(seed)

    async def bench(ctx):
        pending = deque(requests)
        cur = None
        prev = None      # (valid, ready, payload) of the response port last cycle
        cycle = 0
        while len(run.responses) < len(requests):
            if cycle > bound:
                raise AssertionError(f"master hung: {len(run.responses)}/{len(requests)} answers "
                                     f"after {bound} cycles, state {ctx.get(dut.state)}")
            if cur is None and pending and rng.random() >= req_gap:
                cur = pending.popleft()
                op, addr, compare, wdata = cur
                ctx.set(dut.mem_req.payload, {"op": op, "addr": addr, "compare": compare, "data": wdata})
                ctx.set(dut.mem_req.valid, 1)
            elif cur is None:
                ctx.set(dut.mem_req.valid, 0)
            ready = rng.random() >= resp_stall
            ctx.set(dut.mem_resp.ready, ready)
            (_, _, req_ready, valid, payload, outstanding, run.cas_retries,
             retry) = await ctx.tick().sample(
                dut.mem_req.ready, dut.mem_resp.valid, dut.mem_resp.payload, dut.outstanding,
                dut.cas_retries, dut.cas_retry)
            run.retry_pulses += retry
            payload = (int(payload.data), int(payload.error))
            run.max_outstanding_seen = max(run.max_outstanding_seen, outstanding)
            if prev is not None and prev[0] and not prev[1] and (not valid or payload != prev[2]):
                run.stream_violations.append(f"cycle {cycle}: mem_resp changed while stalled")
            prev = (valid, ready, payload)
            if cur is not None and req_ready:
                run.accepted.append(cycle)
                cur = None
            if valid and ready:
                run.responses.append(payload)
                run.answered.append(cycle)
            cycle += 1
        run.cycles = cycle
        # every request answered: nothing may be left in flight
        assert ctx.get(dut.state) == MasterState.IDLE and ctx.get(dut.outstanding) == 0
        assert not ctx.get(dut.axi.arvalid) and not ctx.get(dut.axi.awvalid)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(axi_mem.process)
    sim.add_process(monitor.process)
    sim.add_testbench(bench)
    sim.run()
    assert monitor.violations == []
    assert run.stream_violations == []
    assert axi_mem.violations == []
    return run


def R(addr):
    return (MemOp.READ, addr, 0, 0)


def CAS(addr, compare, new):
    return (MemOp.CAS, addr, compare, new)


def filled(n=64, base=0x20_0000, seed=7):
    memory = PhysicalMemory()
    rng = random.Random(seed)
    words = {}
    for i in range(n):
        a = base + 8 * i
        words[a] = rng.getrandbits(64)
        memory.write(a, words[a], source="init")
    return memory, words


# --- reads ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_reads_answer_in_order_under_stalls(seed):
    memory, words = filled()
    rng = random.Random(seed)
    addrs = [rng.choice(list(words)) for _ in range(60)]
    run = run_master(memory, [R(a) for a in addrs], seed=seed)
    assert run.responses == [(words[a], 0) for a in addrs]
    assert run.axi_mem.count("read") == 60
    assert run.monitor.stalls["ar"] > 0 and run.monitor.stalls["r"] > 0   # the stalls happened


def test_reads_are_pipelined_up_to_max_outstanding():
    memory, words = filled()
    addrs = list(words)[:24]
    slow = AxiMemoryConfig(read_latency=20)
    runs = {n: run_master(memory, [R(a) for a in addrs], config=slow, req_gap=0, resp_stall=0,
                          max_outstanding=n)
            for n in (1, 4)}
    for n, run in runs.items():
        assert run.responses == [(words[a], 0) for a in addrs]
        assert run.max_outstanding_seen == n
    # four in flight: about a quarter of the time of one at a time
    assert runs[4].cycles * 3 < runs[1].cycles
    # latency of one read with an idle bus: ARVALID the cycle after the request, the answer
    # registered the cycle after R (read_latency after AR)
    assert runs[1].answered[0] - runs[1].accepted[0] == 1 + 20 + 1


def test_read_slverr_and_decerr_answer_error_in_order():
    memory, words = filled()
    good = list(words)[:3]
    bad = 0x30_0000
    outside = 1 << 47                  # beyond the memory's MAXPHYADDR 46: DECERR
    reqs = [R(good[0]), R(bad), R(good[1]), R(outside), R(good[2])]
    run = run_master(memory, reqs, config=AxiMemoryConfig(**STALLY, error_addrs=frozenset({bad})))
    assert [e for _, e in run.responses] == [0, 1, 0, 1, 0]
    assert [d for d, e in run.responses if not e] == [words[a] for a in good]
    assert ("read", Resp.DECERR) in {(w, r) for _, w, _, r in run.axi_mem.log}


def test_address_beyond_addr_width_is_refused_without_a_bus_transaction():
    memory, words = filled()
    a = list(words)[0]
    run = run_master(memory, [R(a), R(1 << 45), CAS(1 << 45, 0, 1), R(a)], addr_width=40)
    assert run.responses == [(words[a], 0), (0, 1), (0, 1), (words[a], 0)]
    assert run.monitor.handshakes["ar"] == 2 and run.monitor.handshakes["aw"] == 0


# --- compare-and-swap ---------------------------------------------------------------------

def test_cas_success_swaps_and_returns_the_old_word():
    memory, words = filled()
    a = list(words)[5]
    old, new = words[a], words[a] ^ 0x60
    run = run_master(memory, [R(a), CAS(a, old, new), R(a)])
    assert run.responses == [(old, 0), (old, 0), (new, 0)]
    assert memory.peek(a) == new
    log = [(w, r) for _, w, _, r in run.axi_mem.log]
    assert ("ex_read", Resp.EXOKAY) in log and ("ex_write", Resp.EXOKAY) in log
    assert run.cas_retries == 0


def test_cas_mismatch_writes_nothing():
    memory, words = filled()
    a = list(words)[5]
    run = run_master(memory, [CAS(a, words[a] ^ 1, 0xDEAD)])
    assert run.responses == [(words[a], 0)]
    assert memory.peek(a) == words[a]
    assert run.monitor.handshakes["aw"] == 0 and run.monitor.handshakes["w"] == 0
    assert run.axi_mem.count("ex_read") == 1


def other_agent(memory, addr, *values, times=1):
    """An exclusive-read hook: another agent stores ``values`` to ``addr`` right after it."""
    state = {"left": times}

    def hook(a, value):
        if a == addr and state["left"]:
            state["left"] -= 1
            for v in values:
                memory.write(a, v, source="other")
    return lambda axi_mem: axi_mem.on_exclusive_read.append(hook)


def test_exclusive_failure_retries_and_succeeds_when_the_word_is_unchanged():
    memory, words = filled()
    a = list(words)[3]
    old, new = words[a], words[a] | 1 << 8
    # ABA: the other agent changes the word and puts it back; the reservation is lost anyway
    run = run_master(memory, [CAS(a, old, new), R(a)],
                     setup=other_agent(memory, a, old ^ 0xFF, old, times=2))
    assert run.responses == [(old, 0), (new, 0)]
    assert memory.peek(a) == new
    exw = [r for _, w, _, r in run.axi_mem.log if w == "ex_write"]
    assert exw == [Resp.OKAY, Resp.OKAY, Resp.EXOKAY]
    assert run.cas_retries == 2


def test_exclusive_failure_retries_and_fails_the_compare_on_the_new_word():
    memory, words = filled()
    a = list(words)[3]
    old = words[a]
    cleared = old & ~0x1FF               # the host cleared the entry meanwhile
    run = run_master(memory, [CAS(a, old, old | 1 << 8), R(a)],
                     setup=other_agent(memory, a, cleared))
    assert run.responses == [(cleared, 0), (cleared, 0)]
    assert memory.peek(a) == cleared     # nothing resurrected
    assert [r for _, w, _, r in run.axi_mem.log if w.startswith("ex_")] == [
        Resp.EXOKAY, Resp.OKAY, Resp.EXOKAY]     # read, failed write, re-read (then no write)
    assert run.cas_retries == 1


def test_host_store_between_cycles_breaks_the_reservation():
    """A store straight to the memory (not through the exclusive hook) is seen by the monitor."""
    memory, words = filled()
    a = list(words)[0]
    old = words[a]
    slow_b = AxiMemoryConfig(write_latency=30)
    hit = {"done": False}

    def setup(axi_mem):
        def hook(cycle):
            if not hit["done"] and axi_mem.reservations and axi_mem._writes:
                hit["done"] = True
                memory.write(a, old ^ 2, source="host")
        axi_mem.hooks.append(hook)
    run = run_master(memory, [CAS(a, old, old ^ 1)], config=slow_b, setup=setup)
    assert hit["done"]
    assert run.responses == [(old ^ 2, 0)]
    assert memory.peek(a) == old ^ 2


def test_cas_retry_counter_counts_lost_exclusives():
    memory, words = filled()
    a = list(words)[1]
    old = words[a]
    run = run_master(memory, [CAS(a, old, old ^ 4)], setup=other_agent(memory, a, old, times=3))
    assert run.responses == [(old, 0)]
    assert memory.peek(a) == old ^ 4
    assert run.axi_mem.count("ex_write", Resp.OKAY) == 3
    assert run.cas_retries == 3 and run.retry_pulses == 3


def test_slverr_on_exclusive_read_and_on_exclusive_write():
    memory, words = filled()
    ra, wa = list(words)[:2]
    cfg = AxiMemoryConfig(**STALLY, error_addrs=frozenset({ra}), write_error_addrs=frozenset({wa}))
    run = run_master(memory, [CAS(ra, words[ra], 1), CAS(wa, words[wa], 2), R(wa)], config=cfg)
    assert run.responses == [(0, 1), (0, 1), (words[wa], 0)]
    assert memory.peek(ra) == words[ra] and memory.peek(wa) == words[wa]
    assert run.axi_mem.count("ex_write", Resp.SLVERR) == 1


def test_slave_without_exclusive_monitor_gets_an_error_not_a_plain_write():
    memory, words = filled()
    a = list(words)[0]
    run = run_master(memory, [CAS(a, words[a], 5)], config=AxiMemoryConfig(exclusive=False))
    assert run.responses == [(0, 1)]
    assert memory.peek(a) == words[a]
    assert run.monitor.handshakes["aw"] == 0


@pytest.mark.parametrize("seed", range(3))
def test_random_reads_and_cases_match_sequential_memory(seed):
    """Without other agents, the answers are those of the requests applied one by one."""
    memory, words = filled(n=8)
    rng = random.Random(seed)
    shadow = dict(words)
    reqs, want = [], []
    for _ in range(80):
        a = rng.choice(list(words))
        if rng.random() < 0.6:
            reqs.append(R(a))
            want.append((shadow[a], 0))
        else:
            cmp = shadow[a] if rng.random() < 0.6 else rng.getrandbits(64)
            new = rng.getrandbits(64)
            reqs.append(CAS(a, cmp, new))
            want.append((shadow[a], 0))
            if cmp == shadow[a]:
                shadow[a] = new
    run = run_master(memory, reqs, seed=seed, max_outstanding=3)
    assert run.responses == want
    assert run.monitor.stalls["aw"] > 0 and run.monitor.stalls["w"] > 0
    assert {a: memory.peek(a) for a in words} == shadow


# --- AXI rules on the master itself --------------------------------------------------------

def test_valid_does_not_depend_on_ready_and_attributes_are_single_beats():
    """Drive the AXI side by hand: flipping a READY within a cycle never moves a VALID."""
    dut = AxiMemoryMaster()
    seen = {"ar": 0, "aw": 0, "w": 0}

    async def bench(ctx):
        axi = dut.axi
        ctx.set(dut.mem_resp.ready, 1)
        ctx.set(dut.mem_req.payload, {"op": MemOp.CAS, "addr": 0x1000, "compare": 7, "data": 9})
        ctx.set(dut.mem_req.valid, 1)
        await ctx.tick()
        ctx.set(dut.mem_req.valid, 0)
        for _ in range(40):
            for ch in ("ar", "aw", "w"):
                ready = getattr(axi, ch + "ready")
                valid = getattr(axi, ch + "valid")
                ctx.set(ready, 0)
                v0 = ctx.get(valid)
                ctx.set(ready, 1)
                assert ctx.get(valid) == v0, ch
                seen[ch] += v0
                ctx.set(ready, 0)        # keep it stalled: valid must then stay up
            if ctx.get(axi.arvalid):
                assert ctx.get(axi.arlock) == 1
                assert (ctx.get(axi.arlen), ctx.get(axi.arsize), ctx.get(axi.arburst)) == (0, 3, Burst.INCR)
                ctx.set(axi.arready, 1)
                await ctx.tick()
                ctx.set(axi.arready, 0)
                ctx.set(axi.rdata, 7)
                ctx.set(axi.rresp, Resp.EXOKAY)
                ctx.set(axi.rvalid, 1)
                await ctx.tick()
                ctx.set(axi.rvalid, 0)
                continue
            if ctx.get(axi.awvalid) and seen["aw"] > 3:
                assert ctx.get(axi.awlock) == 1 and ctx.get(axi.wstrb) == 0xFF and ctx.get(axi.wlast) == 1
                assert ctx.get(axi.wdata) == 9 and ctx.get(axi.awaddr) == 0x1000
                ctx.set(axi.awready, 1)
                ctx.set(axi.wready, 1)
                await ctx.tick()
                ctx.set(axi.awready, 0)
                ctx.set(axi.wready, 0)
                assert not ctx.get(axi.awvalid) and not ctx.get(axi.wvalid)
                ctx.set(axi.bresp, Resp.EXOKAY)
                ctx.set(axi.bvalid, 1)
                await ctx.tick()
                ctx.set(axi.bvalid, 0)
                break
            await ctx.tick()
        else:
            raise AssertionError("the exclusive write never came")
        while not ctx.get(dut.mem_resp.valid):
            await ctx.tick()
        assert (ctx.get(dut.mem_resp.payload.data), ctx.get(dut.mem_resp.payload.error)) == (7, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["ar"] >= 1 and seen["aw"] > 3 and seen["w"] > 3


def test_protocol_monitor_catches_a_dropped_valid_and_a_changed_payload():
    port = AXI4Signature(32, 64, 2).create()
    mon = AxiProtocolMonitor(port)
    m = Module()
    m.domains.sync = ClockDomain()

    async def bench(ctx):
        ctx.set(port.arvalid, 1)
        ctx.set(port.araddr, 0x100)
        await ctx.tick()
        ctx.set(port.araddr, 0x108)         # changed while stalled
        await ctx.tick()
        ctx.set(port.arvalid, 0)            # dropped while stalled
        await ctx.tick()
        await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_process(mon.process)
    sim.add_testbench(bench)
    sim.run()
    assert len(mon.violations) == 2
    assert "payload changed" in mon.violations[0] and "dropped" in mon.violations[1]


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_outstanding=0), "max_outstanding"),
    (dict(max_outstanding=65), "max_outstanding"),
    (dict(addr_width=16), "addr_width"),
    (dict(id_width=0), "id_width"),
    (dict(id_width=2, axi_id=4), "axi_id"),
    (dict(cache=16), "cache"),
    (dict(prot=True), "prot"),
    (dict(rdata_check=object()), "rdata_check"),
])
def test_master_parameters_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AxiMemoryMaster(**kwargs)


def test_signatures_validate_and_compare():
    assert AXI4Signature(52, 64, 4) == AXI4Signature(52, 64, 4)
    assert AXI4Signature(52, 64, 4) != AXI4Signature(52, 64, 3)
    assert "rresp" in AXI4Signature(52, 64, 4).members and "arlock" in AXI4Signature(52, 64, 4).members
    with pytest.raises(ValueError, match="data_width"):
        AXI4Signature(52, 48, 4)
    with pytest.raises(ValueError, match="data_width"):
        AXI4LiteSignature(12, 16)
    assert "arid" not in AXI4LiteSignature(12, 32).members


# --- AXI4-Lite CSR block ------------------------------------------------------------------

class AxiLiteMaster:
    """Test-side AXI4-Lite master: single transactions with random valid delays and
    READY/BREADY stalls, in a testbench."""

    def __init__(self, bus, seed=3, stall=0.3):
        self.bus = bus
        self.rng = random.Random(seed)
        self.stall = stall

    async def _idle(self, ctx):
        while self.rng.random() < self.stall:
            await ctx.tick()

    async def write(self, ctx, addr, value, strb=0xF):
        bus = self.bus
        await self._idle(ctx)
        ctx.set(bus.awaddr, addr)
        ctx.set(bus.wdata, value)
        ctx.set(bus.wstrb, strb)
        aw_done = w_done = False
        # either channel may lead the other: the slave must accept both orders
        aw_delay, w_delay = self.rng.randrange(3), self.rng.randrange(3)
        while not (aw_done and w_done):
            if aw_delay == 0 and not aw_done:
                ctx.set(bus.awvalid, 1)
            if w_delay == 0 and not w_done:
                ctx.set(bus.wvalid, 1)
            aw_delay -= 1
            w_delay -= 1
            _, _, awvalid, awready, wvalid, wready = await ctx.tick().sample(
                bus.awvalid, bus.awready, bus.wvalid, bus.wready)
            if awvalid and awready and not aw_done:
                aw_done = True
                ctx.set(bus.awvalid, 0)
            if wvalid and wready and not w_done:
                w_done = True
                ctx.set(bus.wvalid, 0)
        while True:
            ready = self.rng.random() >= self.stall
            ctx.set(bus.bready, ready)
            _, _, bvalid, bresp = await ctx.tick().sample(bus.bvalid, bus.bresp)
            if bvalid and ready:
                ctx.set(bus.bready, 0)
                return bresp

    async def read(self, ctx, addr):
        bus = self.bus
        await self._idle(ctx)
        ctx.set(bus.araddr, addr)
        ctx.set(bus.arvalid, 1)
        while True:
            _, _, arready = await ctx.tick().sample(bus.arready)
            if arready:
                break
        ctx.set(bus.arvalid, 0)
        while True:
            ready = self.rng.random() >= self.stall
            ctx.set(bus.rready, ready)
            _, _, rvalid, rdata, rresp = await ctx.tick().sample(bus.rvalid, bus.rdata, bus.rresp)
            if rvalid and ready:
                ctx.set(bus.rready, 0)
                return rdata, rresp


COUNTERS = data.StructLayout({"lookups": 48, "hits_4k": 48, "tiny": 5, "wide": 64})


def run_csr(body, counters=COUNTERS, seed=3):
    """Run ``body(ctx, dut, master, pulses)`` against a CsrBlock; pulses records the
    cycles and values of eptp_load and invept handshakes."""
    dut = CsrBlock(counters)
    master = AxiLiteMaster(dut.bus, seed=seed)
    monitor = AxiProtocolMonitor(dut.bus, "csr")
    pulses = {"eptp": [], "invept": [], "clear": [], "cycle": 0}

    async def watch(ctx):
        async for _, _, load, value, ivalid, iready, ipayload, clear in ctx.tick().sample(
                dut.eptp_load, dut.eptp_value, dut.invept.valid, dut.invept.ready,
                dut.invept.payload, dut.counters_clear):
            if clear:
                pulses["clear"].append(pulses["cycle"])
            if load:
                pulses["eptp"].append((pulses["cycle"], value))
            if ivalid and iready:
                pulses["invept"].append((pulses["cycle"], ipayload.kind, int(ipayload.tag)))
            pulses["cycle"] += 1

    async def bench(ctx):
        ctx.set(dut.invept.ready, 1)
        await body(ctx, dut, master, pulses)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(monitor.process)
    sim.add_process(watch)
    sim.add_testbench(bench)
    sim.run()
    assert monitor.violations == []
    assert monitor.handshakes["ar"] + monitor.handshakes["aw"] > 0
    return pulses


def test_csr_id_version_and_eptp_load_pulse():
    eptp = 0x0000_0012_3456_705E
    got = {}

    async def body(ctx, dut, bus, pulses):
        got["id"] = await bus.read(ctx, Reg.ID)
        got["version"] = await bus.read(ctx, Reg.VERSION)
        got["n"] = await bus.read(ctx, Reg.NUM_COUNTERS)
        assert await bus.write(ctx, Reg.EPTP_LO, eptp & 0xFFFF_FFFF) == Resp.OKAY
        got["before_hi"] = list(pulses["eptp"])
        assert await bus.write(ctx, Reg.EPTP_HI, eptp >> 32) == Resp.OKAY
        await ctx.tick().repeat(2)
        ctx.set(dut.eptp_valid, 1)
        got["status"] = await bus.read(ctx, Reg.EPTP_STATUS)
        ctx.set(dut.eptp_valid, 0)
        ctx.set(dut.eptp_error, 1)
        got["status_err"] = await bus.read(ctx, Reg.EPTP_STATUS)
        got["lo"] = await bus.read(ctx, Reg.EPTP_LO)
        got["hi"] = await bus.read(ctx, Reg.EPTP_HI)
        await bus.write(ctx, Reg.COUNTERS_CLEAR, 0)          # bit 0 clear: no pulse
        got["clears_before"] = list(pulses["clear"])
        assert await bus.write(ctx, Reg.COUNTERS_CLEAR, 1) == Resp.OKAY
        await ctx.tick()

    pulses = run_csr(body)
    assert got["id"] == (CSR_ID, Resp.OKAY) and got["version"] == (CSR_VERSION, Resp.OKAY)
    assert got["n"] == (4, Resp.OKAY)
    assert got["before_hi"] == []                        # writing LO alone loads nothing
    assert [v for _, v in pulses["eptp"]] == [eptp]      # exactly one one-cycle pulse
    assert got["status"] == (1, Resp.OKAY) and got["status_err"] == (2, Resp.OKAY)
    assert got["lo"] == (eptp & 0xFFFF_FFFF, Resp.OKAY) and got["hi"] == (eptp >> 32, Resp.OKAY)
    assert got["clears_before"] == [] and len(pulses["clear"]) == 1


def test_csr_invept_pulse_carries_kind_and_tag():
    tag = 0xAB_1234_5678

    async def body(ctx, dut, bus, pulses):
        await bus.write(ctx, Reg.INVEPT_TAG_LO, tag & 0xFFFF_FFFF)
        await bus.write(ctx, Reg.INVEPT_TAG_HI, tag >> 32)
        await bus.write(ctx, Reg.INVEPT_TRIGGER, 1)
        await bus.write(ctx, Reg.INVEPT_KIND, 1)
        await bus.write(ctx, Reg.INVEPT_TRIGGER, 0)
        # a consumer that is not ready: the request waits, and so does the next trigger's B
        ctx.set(dut.invept.ready, 0)
        await bus.write(ctx, Reg.INVEPT_TRIGGER, 0)
        stalled = pulses["cycle"]
        for _ in range(5):
            await ctx.tick()
        assert ctx.get(dut.invept.valid)
        ctx.set(dut.invept.ready, 1)
        await ctx.tick()
        ctx.set(dut.invept.ready, 0)
        ctx.set(dut.invept_count, 77)
        assert await bus.read(ctx, Reg.INVEPT_COUNT) == (77, Resp.OKAY)
        assert await bus.read(ctx, Reg.INVEPT_TRIGGER) == (0, Resp.OKAY)
        pulses["stalled"] = stalled

    pulses = run_csr(body)
    assert [(k, t) for _, k, t in pulses["invept"]] == [
        (InveptKind.SINGLE, tag), (InveptKind.GLOBAL, tag), (InveptKind.GLOBAL, tag)]
    assert pulses["invept"][2][0] >= pulses["stalled"] + 5


def test_csr_counters_read_lo_hi_in_field_order_with_a_consistent_snapshot():
    values = {"lookups": 0xABCD_1234_5678, "hits_4k": 0x7FFF_FFFF_FFFF, "tiny": 0x1F,
              "wide": 0xFEDC_BA98_7654_3210}
    got = {}

    async def body(ctx, dut, bus, pulses):
        ctx.set(dut.counters, values)
        for i, name in enumerate(values):
            lo, r1 = await bus.read(ctx, Reg.counter_lo(i))
            hi, r2 = await bus.read(ctx, Reg.counter_hi(i))
            assert r1 == r2 == Resp.OKAY
            got[name] = hi << 32 | lo
        # LO snapshots HI: a carry between the two reads does not tear the value
        ctx.set(dut.counters.lookups, 0x0000_FFFF_FFFF)
        lo, _ = await bus.read(ctx, Reg.counter_lo(0))
        ctx.set(dut.counters.lookups, 0x0001_0000_0000)
        hi, _ = await bus.read(ctx, Reg.counter_hi(0))
        got["snapshot"] = hi << 32 | lo
        hi, _ = await bus.read(ctx, Reg.counter_hi(0))     # no LO before: live value
        got["live_hi"] = hi

    run_csr(body)
    assert {k: got[k] for k in values} == values
    assert got["snapshot"] == 0x0000_FFFF_FFFF
    assert got["live_hi"] == 1


def test_csr_unknown_addresses_answer_slverr():
    """Documented choice: unmapped reads answer SLVERR with data 0; writes to unmapped or
    read-only registers answer SLVERR and change nothing."""
    got = {}

    async def body(ctx, dut, bus, pulses):
        got["read_hole"] = await bus.read(ctx, 0x040)
        got["read_past_counters"] = await bus.read(ctx, Reg.counter_lo(4))
        got["write_hole"] = await bus.write(ctx, 0x044, 0x1234)
        got["write_ro"] = await bus.write(ctx, Reg.ID, 0)
        got["id"] = await bus.read(ctx, Reg.ID)
        got["partial"] = await bus.write(ctx, Reg.EPTP_LO, 0xAABBCCDD, strb=0b0101)
        got["eptp_lo"] = await bus.read(ctx, Reg.EPTP_LO)
        got["read_misaligned"] = await bus.read(ctx, Reg.ID + 1)
        got["write_misaligned"] = await bus.write(ctx, Reg.EPTP_HI + 2, 0x1)

    pulses = run_csr(body)
    assert got["read_hole"] == (0, Resp.SLVERR)
    assert got["read_past_counters"] == (0, Resp.SLVERR)
    assert got["write_hole"] == Resp.SLVERR and got["write_ro"] == Resp.SLVERR
    assert got["id"] == (CSR_ID, Resp.OKAY)
    assert got["partial"] == Resp.OKAY and got["eptp_lo"] == (0x00BB_00DD, Resp.OKAY)
    # registers are aligned words: a misaligned address is an error, and loads nothing
    assert got["read_misaligned"] == (0, Resp.SLVERR) and got["write_misaligned"] == Resp.SLVERR
    assert pulses["eptp"] == [] and pulses["invept"] == [] and pulses["clear"] == []


def test_csr_without_counters_and_parameter_checks():
    got = {}

    async def body(ctx, dut, bus, pulses):
        got["n"] = await bus.read(ctx, Reg.NUM_COUNTERS)
        got["c0"] = await bus.read(ctx, Reg.counter_lo(0))

    run_csr(body, counters=None)
    assert got["n"] == (0, Resp.OKAY) and got["c0"] == (0, Resp.SLVERR)
    with pytest.raises(ValueError, match="StructLayout"):
        CsrBlock({"a": 8})
    with pytest.raises(ValueError, match="1..64 bits"):
        CsrBlock(data.StructLayout({"big": 65}))
    with pytest.raises(ValueError, match="too narrow"):
        CsrBlock(data.StructLayout({f"c{i}": 48 for i in range(40)}), addr_width=8)


# --- end to end: EptWalkerAxi over the AXI memory ------------------------------------------

def shadow_of(memory):
    copy = PhysicalMemory(memory.maxphyaddr)
    for addr, value in memory.nonzero_words():
        copy.write(addr, value, source="init")
    return copy


def decode_translation(payload):
    """The architectural tuple of a TranslateResponse, as model.walk.Translation gives it."""
    outcome = HW_OUTCOME[payload.outcome]
    hpa = page_size = memtype = qual = None
    if outcome is Outcome.OK:
        hpa, page_size, memtype = int(payload.hpa), PAGE_SIZES[payload.page_size], int(payload.memtype)
    elif outcome is Outcome.VIOLATION:
        qual = int(payload.qual)
    return (outcome, hpa, page_size, memtype, qual), int(payload.retries)


def run_top(memory, eptp, jobs, *, config=None, setup=None, bound=3000, seed=5):
    """Load ``eptp`` through the CSRs, then translate each (gpa, access) of ``jobs``."""
    dut = EptWalkerAxi()
    axi_mem = AxiMemory(memory, dut.mem, config or AxiMemoryConfig(**STALLY, seed=seed))
    monitors = [AxiProtocolMonitor(dut.mem, "mem"), AxiProtocolMonitor(dut.csr, "csr")]
    csr = AxiLiteMaster(dut.csr, seed=seed)
    if setup is not None:
        setup(axi_mem)
    out = {"results": [], "counters": {}}
    rng = random.Random(seed)

    async def bench(ctx):
        ctx.set(dut.translate_resp.ready, 1)
        assert await csr.write(ctx, Reg.EPTP_LO, eptp.encode() & 0xFFFF_FFFF) == Resp.OKAY
        assert await csr.write(ctx, Reg.EPTP_HI, eptp.encode() >> 32) == Resp.OKAY
        out["status"] = await csr.read(ctx, Reg.EPTP_STATUS)
        for gpa, access in jobs:
            ctx.set(dut.translate_req.payload, {"gpa": gpa, "access": HwAccess(int(access))})
            ctx.set(dut.translate_req.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.translate_req.ready)
                if ready:
                    break
            ctx.set(dut.translate_req.valid, 0)
            for _ in range(bound):
                stall = rng.random() < 0.3
                ctx.set(dut.translate_resp.ready, not stall)
                _, _, valid, payload = await ctx.tick().sample(
                    dut.translate_resp.valid, dut.translate_resp.payload)
                if valid and not stall:
                    out["results"].append(decode_translation(payload))
                    break
            else:
                raise AssertionError(f"no answer for GPA {gpa:#x} within {bound} cycles")
        async def read_counters():
            got, direct = {}, {}
            for i, name in enumerate(dut.csr_block.counter_names):
                direct[name] = ctx.get(dut.master.cas_retries if i == 0 else dut.unit.counters[name])
                lo, _ = await csr.read(ctx, Reg.counter_lo(i))
                hi, _ = await csr.read(ctx, Reg.counter_hi(i))
                got[name] = hi << 32 | lo
            return got, direct
        out["counters"], out["direct"] = await read_counters()
        assert await csr.write(ctx, Reg.COUNTERS_CLEAR, 1) == Resp.OKAY
        out["cleared"], _ = await read_counters()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(axi_mem.process)
    for mon in monitors:
        sim.add_process(mon.process)
    sim.add_testbench(bench)
    sim.run()
    for mon in monitors:
        assert mon.violations == []
    assert axi_mem.violations == []
    out["axi_mem"] = axi_mem
    return out


# seeds with OK walks of every page size, and misconfigurations at every level, between them
# (the AXI master judges each entry before registering it: hw.entry_check, hw.axi_master)
@pytest.mark.parametrize("seed", [15, 16, 18, 24])
def test_top_translates_random_tables_like_the_model(seed):
    memory = PhysicalMemory()
    ts, _ = random_table_set(memory, 0x100_0000, seed, n_paths=5, ad=True)
    shadow = shadow_of(memory)
    jobs = [(gpa, access) for gpa in ts.gpas for access in (Access.READ, Access.WRITE, Access.FETCH)]
    model = [model_translate(shadow, ts.eptp, gpa, access) for gpa, access in jobs]
    want = [t.architectural() for t in model]
    out = run_top(memory, ts.eptp, jobs, seed=seed)
    assert out["status"] == (1, Resp.OKAY)                 # the EPTP reached the unit, accepted
    assert [r for r, _ in out["results"]] == want
    # A/D landed word for word where the model put them, and only through exclusives
    assert {a: memory.peek(a) for a in ts.words} == {a: shadow.peek(a) for a in ts.words}
    axi_mem = out["axi_mem"]
    assert axi_mem.count("write") == 0
    changed = sum(1 for a in ts.words if memory.peek(a) != ts.words[a])
    assert axi_mem.count("ex_write", Resp.EXOKAY) >= changed > 0
    if seed in (15, 16):
        assert sum(r[0] is Outcome.OK for r in want) >= 5
    else:       # misconfigured PML4Es and PDEs (18), PTEs and PML4Es (24)
        assert sum(r[0] is Outcome.MISCONFIG for r in want) >= 6


def test_top_a_d_update_loses_its_reservation_and_walks_again():
    """The host sets a software bit in the PTE between the exclusive read and write: the
    exclusive write fails, the adapter's re-read sees a new word (CAS failed), the walker
    walks again and sets A/D on the new word, keeping the host's bit."""
    memory = PhysicalMemory()
    gpa = 0x0000_7F12_3456_7ABC
    table = 0x10_0000
    eptp = Eptp(pml4_pa=table, ad_enabled=True)
    addrs = {}
    for level in (Level.PML4E, Level.PDPTE, Level.PDE):
        addrs[level] = table + gpa_index(gpa, level) * 8
        memory.write(addrs[level], make_table_entry(table + 0x1000, 0b111) | EPT_A, source="init")
        table += 0x1000
    pte = table + gpa_index(gpa, Level.PTE) * 8
    memory.write(pte, make_leaf_entry(0x4000_0000, Level.PTE), source="init")
    hit = []

    def setup(axi_mem):
        def hook(addr, value):
            if addr == pte and not hit:
                hit.append(value)
                memory.write(pte, value | EPT_PVLIST, source="host")
        axi_mem.on_exclusive_read.append(hook)

    out = run_top(memory, eptp, [(gpa, Access.WRITE)], setup=setup)
    (arch, retries), = out["results"]
    assert hit
    assert arch[0] is Outcome.OK and arch[1] == 0x4000_0000 | (gpa & 0xFFF)
    assert retries == 1                                    # the walker restarted once
    assert memory.peek(pte) == hit[0] | EPT_PVLIST | EPT_A | EPT_D
    assert out["counters"]["axi_cas_retries"] == 1         # the exclusive write that lost
    assert out["axi_mem"].count("ex_write", Resp.OKAY) == 1
    assert arch == walk(memory, eptp, gpa, Access.WRITE).architectural()


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")  # the refused ones' parts
def test_top_forwards_params(monkeypatch):
    top = EptWalkerAxi(maxphyaddr=40, execute_only=False)
    Fragment.get(top, None)           # elaborated: a wrong connection would raise here
    assert top.unit.maxphyaddr == 40 and top.unit.execute_only is False
    assert top.csr_block.counter_names[0] == "axi_cas_retries"
    with pytest.raises(ValueError, match="maxphyaddr"):
        EptWalkerAxi(maxphyaddr=60)
    with pytest.raises(ValueError, match="max_outstanding"):
        EptWalkerAxi(axi_max_outstanding=0)
    gc.collect()                      # their unused parts warn now, under this test's filter


def test_top_exposes_the_unit_counters_and_clears_them():
    memory, _ = filled(n=1)
    eptp = Eptp(pml4_pa=0x10_0000, ad_enabled=True)      # an empty PML4: violations
    jobs = [(0x1000 * i, Access.READ) for i in range(3)]
    out = run_top(memory, eptp, jobs)
    assert [r[0][0] for r in out["results"]] == [Outcome.VIOLATION] * 3
    assert list(out["counters"])[0] == "axi_cas_retries" and len(out["counters"]) > 1
    assert out["counters"] == out["direct"]                 # CSR readout = the unit's outputs
    assert all(v == 0 for v in out["cleared"].values())
    assert out["counters"]["lookups"] == 3
