"""The port protocol Asserts (hw/checks.py): each fires on the violation it
names, and stays quiet on a legal trace.  The unit runs with them in every
pysim and Verilator simulation; here the checker is driven alone."""

import pytest
from amaranth.sim import Simulator

from hw.checks import PortChecker
from hw.layouts import MemOp


def run(process, history=16):
    dut = PortChecker(history=history, max_outstanding=8)
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        await process(ctx, dut)
    sim.add_testbench(bench)
    sim.run()


async def read(ctx, dut, addr, data):
    """A legal read: request taken, then its response."""
    ctx.set(dut.mreq_valid, 1)
    ctx.set(dut.mreq_ready, 1)
    ctx.set(dut.mreq, {"op": MemOp.READ, "addr": addr, "compare": 0, "data": 0})
    await ctx.tick()
    ctx.set(dut.mreq_valid, 0)
    ctx.set(dut.mresp_valid, 1)
    ctx.set(dut.mresp_ready, 1)
    ctx.set(dut.mresp, {"data": data, "error": 0})
    await ctx.tick()
    ctx.set(dut.mresp_valid, 0)


async def cas(ctx, dut, addr, compare, data):
    ctx.set(dut.mreq_valid, 1)
    ctx.set(dut.mreq_ready, 1)
    ctx.set(dut.mreq, {"op": MemOp.CAS, "addr": addr, "compare": compare, "data": data})
    await ctx.tick()
    ctx.set(dut.mreq_valid, 0)
    await ctx.tick()


def test_legal_trace_passes():
    async def process(ctx, dut):
        await read(ctx, dut, 0x1000, 0x2007)
        await read(ctx, dut, 0x2008, 0x3007)
        await cas(ctx, dut, 0x1000, 0x2007, 0x2107)          # A set, on the value read
        await cas(ctx, dut, 0x2008, 0x3007, 0x3307)          # A and D
        # a stalled request held unchanged, then taken
        ctx.set(dut.mreq_valid, 1)
        ctx.set(dut.mreq_ready, 0)
        ctx.set(dut.mreq, {"op": MemOp.READ, "addr": 0x4000, "compare": 0, "data": 0})
        for _ in range(3):
            await ctx.tick()
        ctx.set(dut.mreq_ready, 1)
        await ctx.tick()
        # a translation and its response
        ctx.set(dut.treq_valid, 1)
        ctx.set(dut.treq_ready, 1)
        ctx.set(dut.treq_tag, 5)
        await ctx.tick()
        ctx.set(dut.treq_valid, 0)
        ctx.set(dut.tresp_valid, 1)
        ctx.set(dut.tresp_ready, 1)
        ctx.set(dut.tresp.tag, 5)
        await ctx.tick()
        ctx.set(dut.tresp_valid, 0)
        await ctx.tick()
    run(process)


@pytest.mark.parametrize("what", ["unread", "other value", "not A/D", "clears"])
def test_cas_violations_fire(what):
    async def process(ctx, dut):
        await read(ctx, dut, 0x1000, 0x2007)
        if what == "unread":
            await cas(ctx, dut, 0x1008, 0x2007, 0x2107)
        elif what == "other value":
            await cas(ctx, dut, 0x1000, 0x2006, 0x2106)
        elif what == "not A/D":
            await cas(ctx, dut, 0x1000, 0x2007, 0x2105)
        else:
            await cas(ctx, dut, 0x1000, 0x2107 | 0x200, 0x2107)
    with pytest.raises(AssertionError, match="CAS"):
        run(process)


@pytest.mark.parametrize("port", ["mem_req", "translate_resp"])
@pytest.mark.parametrize("how", ["drop", "change"])
def test_handshake_violations_fire(port, how):
    async def process(ctx, dut):
        valid, ready, payload = ((dut.mreq_valid, dut.mreq_ready, dut.mreq.addr) if port == "mem_req"
                                 else (dut.tresp_valid, dut.tresp_ready, dut.tresp.hpa))
        if port == "translate_resp":      # a request in flight, so the tag is legal
            ctx.set(dut.treq_valid, 1)
            ctx.set(dut.treq_ready, 1)
            await ctx.tick()
            ctx.set(dut.treq_valid, 0)
        ctx.set(valid, 1)
        ctx.set(ready, 0)
        ctx.set(payload, 0x1000)
        await ctx.tick()
        if how == "drop":
            ctx.set(valid, 0)
        else:
            ctx.set(payload, 0x2000)
        await ctx.tick()
        await ctx.tick()
    with pytest.raises(AssertionError, match=f"{port}: (valid dropped|payload changed)"):
        run(process)


def test_response_without_request_fires():
    async def process(ctx, dut):
        ctx.set(dut.tresp_valid, 1)
        ctx.set(dut.tresp_ready, 1)
        ctx.set(dut.tresp.tag, 3)
        await ctx.tick()
        await ctx.tick()
    with pytest.raises(AssertionError, match="not in flight"):
        run(process)


def test_duplicate_response_fires():
    async def process(ctx, dut):
        ctx.set(dut.treq_valid, 1)
        ctx.set(dut.treq_ready, 1)
        ctx.set(dut.treq_tag, 2)
        await ctx.tick()
        ctx.set(dut.treq_valid, 0)
        ctx.set(dut.tresp_valid, 1)
        ctx.set(dut.tresp_ready, 1)
        ctx.set(dut.tresp.tag, 2)
        await ctx.tick()
        await ctx.tick()          # the same response again
        await ctx.tick()
    with pytest.raises(AssertionError, match="not in flight"):
        run(process)


def test_tag_reuse_fires():
    async def process(ctx, dut):
        ctx.set(dut.treq_valid, 1)
        ctx.set(dut.treq_ready, 1)
        ctx.set(dut.treq_tag, 7)
        await ctx.tick()
        await ctx.tick()          # the same tag again, still in flight
        await ctx.tick()
    with pytest.raises(AssertionError, match="tag reused"):
        run(process)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_history_is_validated():
    with pytest.raises(ValueError, match="history"):
        PortChecker(history=2)


@pytest.mark.parametrize("backend", ["rtl", "verilator"])
def test_the_unit_checks_itself_in_every_simulation(backend):
    """A driver that reuses a tag in flight trips the unit's own Assert, on
    pysim and on the Verilated model (built with --assert)."""
    from collections import deque

    from model.formats import Access
    from model.physmem import PhysicalMemory
    from sim.cosim.tables import HandTables
    if backend == "verilator":
        from sim.backends.base import BackendUnavailable
        try:
            from sim.backends.verilator import VerilatorHarness as H, toolchain
            toolchain()
        except BackendUnavailable as e:       # pragma: no cover - CI installs it
            pytest.skip(str(e))
    else:
        from sim.backends.pysim import PysimHarness as H
    memory = PhysicalMemory()
    frames = iter(range(0x10_0000, 0x20_0000, 0x1000))
    tables = HandTables(memory, lambda: next(frames))
    tables.map(0x4000, 0x8000)
    h = H(memory)
    h.load_eptp(tables.eptp.encode(), tables.eptp)
    h.free_tags = deque([1, 1, 1])              # a broken driver: one tag for everything
    for _ in range(3):
        h.submit(0x4000 + 8, Access.READ)
    with pytest.raises(AssertionError, match="tag reused|checks"):
        h.step(200)
    h.close()
