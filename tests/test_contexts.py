"""hw.contexts.ContextTable alone: slot allocation, ready timing, flush by allocation and by INVEPT."""

import gc

import pytest
from conftest import run

from hw.contexts import ContextTable
from hw.layouts import InveptKind


async def load(ctx, dut, pml4, ad=0, ok=1):
    """Load an EPTP at this edge; returns [(ready, cur_id, flush)] for the next 3 cycles."""
    ctx.set(dut.load, 1)
    ctx.set(dut.load_ok, ok)
    ctx.set(dut.load_pml4, pml4)
    ctx.set(dut.load_ad, ad)
    await ctx.tick()
    ctx.set(dut.load, 0)
    seen = []
    for _ in range(3):
        seen.append((ctx.get(dut.ready), ctx.get(dut.cur_id), ctx.get(dut.flush)))
        await ctx.tick()
    return seen


async def invept(ctx, dut, kind, tag=0):
    """INVEPT in this cycle; returns the flush mask of the next cycle and the one after."""
    assert ctx.get(dut.invept.ready)
    ctx.set(dut.invept.valid, 1)
    ctx.set(dut.invept.payload, {"kind": kind, "tag": tag})
    assert ctx.get(dut.flush) == 0          # registered: nothing yet
    await ctx.tick()
    ctx.set(dut.invept.valid, 0)
    first = ctx.get(dut.flush)
    await ctx.tick()
    return first, ctx.get(dut.flush)


def test_new_eptp_allocates_flushes_then_is_ready():
    dut = ContextTable(contexts=2)

    async def tb(ctx):
        # a new EPTP: slot 0, flushed in the next cycle, ready the cycle after
        assert await load(ctx, dut, 0x111) == [(0, 0, 0b01), (1, 0, 0), (1, 0, 0)]
        # a second one: slot 1
        assert await load(ctx, dut, 0x222) == [(0, 1, 0b10), (1, 1, 0), (1, 1, 0)]
        # the first again: found, ready from the edge that loads it, nothing flushed
        assert await load(ctx, dut, 0x111) == [(1, 0, 0), (1, 0, 0), (1, 0, 0)]
        # same tables with A/D on: another context
        seen = await load(ctx, dut, 0x111, ad=1)
        assert seen[0] == (0, 0, 0b01)           # full: round robin from slot 0
        # next victim is slot 1
        assert (await load(ctx, dut, 0x333))[0] == (0, 1, 0b10)
        # an invalid EPTP: not ready
        assert (await load(ctx, dut, 0x444, ok=0))[0][0] == 0

    run(dut, tb)


def test_invept_single_and_global():
    dut = ContextTable(contexts=4)

    async def tb(ctx):
        await load(ctx, dut, 0xAAA)
        await load(ctx, dut, 0xBBB)
        assert await invept(ctx, dut, InveptKind.SINGLE, 0xBBB) == (0b0010, 0)
        assert await invept(ctx, dut, InveptKind.SINGLE, 0xCCC) == (0, 0)     # no such context
        assert await invept(ctx, dut, InveptKind.GLOBAL) == (0b1111, 0)
        # the slots stay allocated: loading one again is a hit
        assert (await load(ctx, dut, 0xAAA))[0] == (1, 0, 0)

    run(dut, tb)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_size_is_refused():
    for bad in (0, 65, True, "4"):
        with pytest.raises(ValueError, match="contexts"):
            ContextTable(contexts=bad)
    gc.collect()          # the refused ones warn now, under this test's filter
