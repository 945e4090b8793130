"""hw.combined_cache.CombinedCache alone: same-cycle lookup, fills, sized keys, every
invalidation scope, context flushes, replacement."""

import pytest
from amaranth.sim import Simulator
from conftest import run

from hw.combined_cache import CombinedCache, InvScope
from hw.layouts import CombinedEntry, GuestTableEntry, PageSize

KEY_BITS = 36


def _tlb(entries=4, contexts=2):
    return CombinedCache(entries=entries, key_bits=KEY_BITS, data=CombinedEntry, contexts=contexts,
                         sized=True, name="combined_tlb")


def look(ctx, dut, key, vpid=1, ctx_id=0):
    """Combinational: (hit, data) in this very cycle."""
    p = dut.lookup[0]
    ctx.set(p.key, key)
    ctx.set(p.vpid, vpid)
    ctx.set(p.ctx, ctx_id)
    return ctx.get(p.hit), ctx.get(p.data)


async def fill(ctx, dut, key, vpid=1, ctx_id=0, **data):
    f = dut.fill
    ctx.set(f.valid, 1)
    ctx.set(f.key, key)
    ctx.set(f.vpid, vpid)
    ctx.set(f.ctx, ctx_id)
    ctx.set(f.data, {"size": PageSize.SIZE_4K, "gsize": PageSize.SIZE_4K, "hpa": 0, "gpa": 0,
                     "memtype": 6, "read": 1, "write": 0, "fetch": 0, "user": 0, **data})
    await ctx.tick()
    ctx.set(f.valid, 0)


async def invalidate(ctx, dut, scope, key=0, vpid=0):
    ctx.set(dut.inv.scope, scope)
    ctx.set(dut.inv.key, key)
    ctx.set(dut.inv.vpid, vpid)
    await ctx.tick()
    ctx.set(dut.inv.scope, InvScope.NONE)


def test_fill_seen_from_the_next_cycle_and_tags_compared():
    dut = _tlb()

    async def tb(ctx):
        ctx.set(dut.fill.valid, 1)
        ctx.set(dut.fill.key, 0x12345)
        ctx.set(dut.fill.vpid, 1)
        assert look(ctx, dut, 0x12345)[0] == 0          # not in the fill's own cycle
        await ctx.tick()
        ctx.set(dut.fill.valid, 0)
        await fill(ctx, dut, 0x12345, hpa=0xABC)
        hit, data = look(ctx, dut, 0x12345)
        assert hit and data.hpa == 0xABC
        assert look(ctx, dut, 0x12345, vpid=2)[0] == 0    # another VPID
        assert look(ctx, dut, 0x12345, ctx_id=1)[0] == 0  # another EPT context
        assert look(ctx, dut, 0x12346)[0] == 0            # another page
    run(dut, tb)


@pytest.mark.parametrize("size, span", [(PageSize.SIZE_4K, 1), (PageSize.SIZE_2M, 1 << 9),
                                        (PageSize.SIZE_1G, 1 << 18)])
def test_a_slot_covers_its_page_size(size, span):
    dut = _tlb()
    base = 0x3 << 18

    async def tb(ctx):
        await fill(ctx, dut, base + 5, size=size)
        assert look(ctx, dut, base)[0] == (span > 1)
        assert look(ctx, dut, base + span - 1)[0] == 1 or span == 1
        assert look(ctx, dut, base + 5)[0] == 1
        assert look(ctx, dut, base + span + 5)[0] == 0
        # INVVPID of one address anywhere in the page drops it
        await invalidate(ctx, dut, InvScope.ADDRESS, key=base + max(span - 1, 5), vpid=1)
        assert look(ctx, dut, base + 5)[0] == 0
    run(dut, tb)


def test_invalidation_scopes():
    dut = _tlb(entries=4)

    async def tb(ctx):
        for key, vpid in ((1, 1), (2, 1), (1, 2), (3, 3)):
            await fill(ctx, dut, key, vpid=vpid)
        await invalidate(ctx, dut, InvScope.ADDRESS, key=1, vpid=1)
        assert [look(ctx, dut, k, v)[0] for k, v in ((1, 1), (2, 1), (1, 2), (3, 3))] == [0, 1, 1, 1]
        await invalidate(ctx, dut, InvScope.VPID, vpid=2)
        assert [look(ctx, dut, k, v)[0] for k, v in ((2, 1), (1, 2), (3, 3))] == [1, 0, 1]
        await invalidate(ctx, dut, InvScope.ALL)
        assert [look(ctx, dut, k, v)[0] for k, v in ((2, 1), (3, 3))] == [0, 0]
    run(dut, tb)


def test_context_flush_masks_hits_in_its_cycle_and_drops_fills():
    dut = _tlb(contexts=2)

    async def tb(ctx):
        await fill(ctx, dut, 7, ctx_id=0)
        await fill(ctx, dut, 8, ctx_id=1)
        ctx.set(dut.flush_ctx, 0b01)
        assert look(ctx, dut, 7, ctx_id=0)[0] == 0        # masked already
        ctx.set(dut.fill.valid, 1)                        # a fill of the flushed context
        ctx.set(dut.fill.key, 9)
        ctx.set(dut.fill.vpid, 1)
        ctx.set(dut.fill.ctx, 0)
        await ctx.tick()
        ctx.set(dut.fill.valid, 0)
        ctx.set(dut.flush_ctx, 0)
        assert look(ctx, dut, 7, ctx_id=0)[0] == 0
        assert look(ctx, dut, 9, ctx_id=0)[0] == 0
        assert look(ctx, dut, 8, ctx_id=1)[0] == 1
    run(dut, tb)


def test_a_fill_in_an_invalidation_cycle_is_dropped():
    dut = _tlb()

    async def tb(ctx):
        ctx.set(dut.inv.scope, InvScope.VPID)
        ctx.set(dut.inv.vpid, 5)
        await fill(ctx, dut, 4, vpid=1)
        ctx.set(dut.inv.scope, InvScope.NONE)
        assert look(ctx, dut, 4)[0] == 0
    run(dut, tb)


def test_refill_of_a_key_replaces_its_slot_then_round_robin():
    dut = _tlb(entries=2)

    async def tb(ctx):
        await fill(ctx, dut, 1, hpa=0x10)
        await fill(ctx, dut, 1, hpa=0x11, write=1)        # same key: same slot
        await fill(ctx, dut, 2, hpa=0x20)
        hit, data = look(ctx, dut, 1)
        assert hit and data.hpa == 0x11 and data.write == 1
        assert look(ctx, dut, 2)[0] == 1
        await fill(ctx, dut, 3)                           # full: the round-robin victim (slot 0)
        assert [look(ctx, dut, k)[0] for k in (1, 2, 3)] == [0, 1, 1]
        await fill(ctx, dut, 4)                           # then slot 1
        assert [look(ctx, dut, k)[0] for k in (2, 3, 4)] == [0, 1, 1]
    run(dut, tb)


def test_guest_psc_form_has_fixed_keys_and_several_ports():
    dut = CombinedCache(entries=2, key_bits=27, data=GuestTableEntry, contexts=1, ports=2,
                        name="guest_psc_pde")

    async def tb(ctx):
        f = dut.fill
        ctx.set(f.valid, 1)
        ctx.set(f.key, 0x1FF)
        ctx.set(f.vpid, 1)
        ctx.set(f.data, {"gpa": 0x55, "hpa": 0x66, "us": 1, "rw": 0, "xd": 1})
        await ctx.tick()
        ctx.set(f.valid, 0)
        for p, key in ((0, 0x1FF), (1, 0x1FE)):
            ctx.set(dut.lookup[p].key, key)
            ctx.set(dut.lookup[p].vpid, 1)
        assert ctx.get(dut.lookup[0].hit) == 1 and ctx.get(dut.lookup[1].hit) == 0
        assert ctx.get(dut.lookup[0].data.hpa) == 0x66
    run(dut, tb)


def test_zero_entries_never_hit_and_sizes_are_checked():
    dut = _tlb(entries=0)

    async def tb(ctx):
        ctx.set(dut.fill.valid, 1)
        ctx.set(dut.fill.key, 1)
        ctx.set(dut.fill.vpid, 1)
        await ctx.delay(1e-6)
        assert look(ctx, dut, 1)[0] == 0
    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    with pytest.raises(ValueError, match="combined_tlb"):
        _tlb(entries=65)


def test_address_invalidation_at_the_guest_page_size_drops_every_piece():
    """The combined TLB's form: 4K pieces of a 2M guest page (over 4K EPT pages) all go
    with an INVVPID of any address in the guest page; another 2M page stays."""
    dut = CombinedCache(entries=4, key_bits=KEY_BITS, data=CombinedEntry, contexts=1, sized=True,
                        inv_size_field="gsize")
    base = 0x5 << 9

    async def tb(ctx):
        for key in (base + 1, base + 300, base + 512):
            await fill(ctx, dut, key, gsize=PageSize.SIZE_2M)
        await invalidate(ctx, dut, InvScope.ADDRESS, key=base + 7, vpid=1)
        assert [look(ctx, dut, k)[0] for k in (base + 1, base + 300, base + 512)] == [0, 0, 1]
    run(dut, tb)
