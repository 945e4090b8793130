"""hw.mem_arbiter.MemArbiter alone: round-robin grants, response routing, the in-flight limit."""

import gc

import pytest
from amaranth.hdl import Fragment
from conftest import Memory, receive, run, send, ticks

from hw.layouts import MemOp
from hw.mem_arbiter import MemArbiter


def _read(addr):
    return {"op": MemOp.READ, "addr": addr, "compare": 0, "data": 0}


def test_grants_round_robin_when_everyone_asks():
    dut = MemArbiter(ports=3, max_outstanding=8)
    mem = Memory(dut.mem_req, dut.mem_resp, {8 * a: 0x100 + a for a in range(64)}, latency=1)
    got = {i: [] for i in range(3)}

    def requester(i):
        async def tb(ctx):
            for j in range(4):
                await send(ctx, dut.req[i], _read(8 * (10 * i + j)))
        return tb

    def receiver(i):
        async def tb(ctx):
            for _ in range(4):
                payload, _ = await receive(ctx, dut.resp[i])
                got[i].append(payload.data)
        return tb

    run(dut, *(requester(i) for i in range(3)), *(receiver(i) for i in range(3)),
        processes=[mem.process])
    # one grant a cycle, in turn: 0, 1, 2, 0, 1, 2, ...
    assert [addr // 8 // 10 for addr in mem.reads()] == [0, 1, 2] * 4
    cycles = [c for c, *_ in mem.log]
    assert cycles == list(range(cycles[0], cycles[0] + 12))
    # each response reaches the port that asked, in its order
    for i in range(3):
        assert got[i] == [0x100 + 10 * i + j for j in range(4)]


def test_turn_moves_past_the_last_grant():
    # port 1 alone, then ports 0 and 1 together: port 0 goes first (the turn is after 1)
    dut = MemArbiter(ports=2, max_outstanding=8)
    mem = Memory(dut.mem_req, dut.mem_resp, latency=1)

    async def tb(ctx):
        ctx.set(dut.resp[0].ready, 1)
        ctx.set(dut.resp[1].ready, 1)
        await send(ctx, dut.req[1], _read(0x18))
        ctx.set(dut.req[0].payload, _read(0x00))
        ctx.set(dut.req[1].payload, _read(0x08))
        ctx.set(dut.req[0].valid, 1)
        ctx.set(dut.req[1].valid, 1)
        _, _, g0, g1 = await ctx.tick().sample(dut.req[0].ready, dut.req[1].ready)
        assert (g0, g1) == (1, 0)
        ctx.set(dut.req[0].valid, 0)
        _, _, g1 = await ctx.tick().sample(dut.req[1].ready)
        assert g1
        ctx.set(dut.req[1].valid, 0)
        await ticks(ctx, 3)

    run(dut, tb, processes=[mem.process])
    assert mem.reads() == [0x18, 0x00, 0x08]


def test_in_flight_limit_and_strobes():
    dut = MemArbiter(ports=1, max_outstanding=2)

    async def tb(ctx):
        # memory takes requests but never answers: the third must wait
        ctx.set(dut.mem_req.ready, 1)
        ctx.set(dut.req[0].payload, {"op": MemOp.CAS, "addr": 0x40, "compare": 1, "data": 3})
        ctx.set(dut.req[0].valid, 1)
        seen = []
        for _ in range(5):
            _, _, valid, ready, rd, cas = await ctx.tick().sample(
                dut.mem_req.valid, dut.req[0].ready, dut.read_issued, dut.cas_issued)
            seen.append((valid, ready, rd, cas))
        assert seen == [(1, 1, 0, 1), (1, 1, 0, 1), (0, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0)]
        # one answer frees one place
        ctx.set(dut.mem_resp.valid, 1)
        ctx.set(dut.mem_resp.payload, {"data": 7, "error": 0})
        ctx.set(dut.resp[0].ready, 1)
        _, _, taken, routed = await ctx.tick().sample(dut.mem_resp.ready, dut.resp[0].valid)
        assert taken and routed
        ctx.set(dut.mem_resp.valid, 0)
        _, _, valid = await ctx.tick().sample(dut.mem_req.valid)
        assert valid

    run(dut, tb)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_ports_are_arrays():
    dut = MemArbiter(ports=4)
    Fragment.get(dut, None)
    assert len(dut.req) == len(dut.resp) == 4
    with pytest.raises(ValueError, match="max_outstanding"):
        MemArbiter(ports=2, max_outstanding=0)
    gc.collect()          # the refused ones warn now, under this test's filter
