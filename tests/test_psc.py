"""hw.psc.PagingStructureCache alone: fill and lookup timing, replacement, same-key refill, drop, flush."""

import gc

import pytest
from amaranth import Module, Signal
from conftest import run, ticks

from hw.layouts import Level
from hw.psc import PagingStructureCache


def _cache(**kw):
    kw.setdefault("entries", 2)
    kw.setdefault("contexts", 2)
    kw.setdefault("fillers", 2)
    return PagingStructureCache(Level.PDE, **kw)


async def lookup(ctx, dut, key, ctx_id=0):
    """S0 in this cycle; returns (hit, table, perms) as S1 shows them."""
    ctx.set(dut.lookup.en, 1)
    ctx.set(dut.lookup.key, key)
    ctx.set(dut.lookup.ctx, ctx_id)
    await ctx.tick()
    ctx.set(dut.lookup.en, 0)
    data = ctx.get(dut.lookup.data)
    return ctx.get(dut.lookup.hit), data.table, data.perms


async def fill(ctx, dut, key, table, ctx_id=0, perms=0b111, *, walker=0):
    """Announce the fill a cycle ahead (the same-key search), then fill."""
    ctx.set(dut.next_fill_keys[walker], key)
    ctx.set(dut.next_fill_ctxs[walker], ctx_id)
    ctx.set(dut.next_fill_sel, walker)
    await ctx.tick()
    ctx.set(dut.fill.valid, 1)
    ctx.set(dut.fill.key, key)
    ctx.set(dut.fill.ctx, ctx_id)
    ctx.set(dut.fill.data, {"table": table, "perms": perms})
    await ctx.tick()
    ctx.set(dut.fill.valid, 0)


def test_lookup_in_the_fill_cycle_sees_it():
    dut = _cache()

    async def tb(ctx):
        hit, _, _ = await lookup(ctx, dut, 0x123)
        assert not hit
        ctx.set(dut.fill.valid, 1)
        ctx.set(dut.fill.key, 0x123)
        ctx.set(dut.fill.ctx, 1)
        ctx.set(dut.fill.data, {"table": 0xAB, "perms": 0b101})
        hit, table, perms = await lookup(ctx, dut, 0x123, 1)
        ctx.set(dut.fill.valid, 0)
        assert (hit, table, perms) == (1, 0xAB, 0b101)
        assert (await lookup(ctx, dut, 0x123, 0))[0] == 0       # another context
        assert (await lookup(ctx, dut, 0x124, 1))[0] == 0       # another key
        # the answer holds while en is low
        await ticks(ctx, 3)
        assert ctx.get(dut.lookup.hit) == 0

    run(dut, tb)


def test_free_slots_then_round_robin_and_a_same_key_fill_replaces():
    dut = _cache()

    async def present(ctx, keys):
        return [(await lookup(ctx, dut, k))[0] for k in keys]

    async def tb(ctx):
        await fill(ctx, dut, 0xA, 0x1)
        await fill(ctx, dut, 0xB, 0x2)
        assert await present(ctx, [0xA, 0xB]) == [1, 1]
        # the same key again: its slot is rewritten, B stays, no slot is spent
        await fill(ctx, dut, 0xA, 0x3, walker=1)
        assert (await lookup(ctx, dut, 0xA))[1] == 0x3
        assert await present(ctx, [0xA, 0xB]) == [1, 1]
        # full: round robin from slot 0 (A), then slot 1 (B)
        await fill(ctx, dut, 0xC, 0x4)
        assert await present(ctx, [0xA, 0xB, 0xC]) == [0, 1, 1]
        await fill(ctx, dut, 0xD, 0x5)
        assert await present(ctx, [0xB, 0xC, 0xD]) == [0, 1, 1]

    run(dut, tb)


def test_drop_lands_a_cycle_late_and_flush_clears_a_context():
    dut = _cache(entries=4)

    async def tb(ctx):
        await fill(ctx, dut, 0x10, 0x1, ctx_id=0)
        await fill(ctx, dut, 0x11, 0x2, ctx_id=1)
        await fill(ctx, dut, 0x12, 0x3, ctx_id=1)
        ctx.set(dut.drop, 1)
        ctx.set(dut.drop_key, 0x11)
        ctx.set(dut.drop_ctx, 1)
        await ctx.tick()
        ctx.set(dut.drop, 0)
        # a lookup in the cycle after the drop still compares against the entry ...
        assert (await lookup(ctx, dut, 0x11, 1))[0] == 1
        # ... which is gone from then on
        assert (await lookup(ctx, dut, 0x11, 1))[0] == 0
        assert (await lookup(ctx, dut, 0x12, 1))[0] == 1
        ctx.set(dut.flush, 0b10)
        await ctx.tick()
        ctx.set(dut.flush, 0)
        assert (await lookup(ctx, dut, 0x12, 1))[0] == 0
        assert (await lookup(ctx, dut, 0x10, 0))[0] == 1

    run(dut, tb)


def test_a_fill_of_a_context_being_flushed_is_left_invalid():
    dut = _cache()

    async def tb(ctx):
        ctx.set(dut.flush, 0b01)
        await fill(ctx, dut, 0x7, 0x9)      # the flush is high through the fill's cycle
        ctx.set(dut.flush, 0)
        assert (await lookup(ctx, dut, 0x7))[0] == 0

    run(dut, tb)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_no_entries_never_hits_and_bad_parameters_are_refused():
    dut = _cache(entries=0)

    async def tb(ctx):
        ctx.set(dut.fill.valid, 1)
        ctx.set(dut.fill.key, 0x5)
        await ctx.tick()
        ctx.set(dut.fill.valid, 0)
        assert (await lookup(ctx, dut, 0x5))[0] == 0

    # an empty block has no clock domain of its own: give it one
    top = Module()
    top.submodules.psc = dut
    beat = Signal()
    top.d.sync += beat.eq(~beat)
    run(top, tb)
    for bad in ({"entries": 65}, {"fillers": 0}):
        with pytest.raises(ValueError):
            _cache(**bad)
    with pytest.raises(ValueError):
        PagingStructureCache(Level.PTE, entries=2, contexts=1)
    gc.collect()          # the refused ones warn now, under this test's filter
