"""hw.tlb alone: tree pseudo-LRU victim order, fill visibility, one-cycle flush, drop, size priority."""

from conftest import run, ticks

from hw.layouts import Access, PageSize
from hw.tlb import Tlb, TlbArray


def _entry(frame, perms=0b111, d=1):
    return {"hpa_page": frame, "perms": perms, "memtype": 6, "d": d}


async def fill(ctx, port, key, ctx_id=0, *, data):
    """One fill, then the two cycles it takes to land."""
    ctx.set(port.valid, 1)
    ctx.set(port.key, key)
    ctx.set(port.ctx, ctx_id)
    ctx.set(port.data, data)
    await ctx.tick()
    ctx.set(port.valid, 0)
    await ticks(ctx, 2)


async def lookup(ctx, port, key, ctx_id=0, access=Access.READ):
    """S0 in this cycle; returns (hit, ok, data) as S1 shows them."""
    ctx.set(port.en, 1)
    ctx.set(port.key, key)
    ctx.set(port.ctx, ctx_id)
    ctx.set(port.access, access)
    await ctx.tick()
    ctx.set(port.en, 0)
    return ctx.get(port.hit), ctx.get(port.ok), ctx.get(port.data)


def _array(**kw):
    kw.setdefault("sets", 4)
    kw.setdefault("ways", 4)
    kw.setdefault("contexts", 2)
    return TlbArray(PageSize.SIZE_4K, **kw)


def _page(set_index, n):
    # pages of one set: the set index is the low bits of the page number
    return (n << 2) | set_index


def test_plru_victim_order_and_refresh_by_a_hit():
    dut = _array()

    async def present(ctx, pages):
        out = []
        for p in pages:
            hit, ok, _ = await lookup(ctx, dut.lookup, p)
            out.append(bool(hit and ok))
        await ticks(ctx, 2)        # the LRU refresh of the last hits lands
        return out

    async def tb(ctx):
        pages = [_page(1, n) for n in range(8)]
        for n in range(4):         # invalid ways first: ways 0, 1, 2, 3
            await fill(ctx, dut.fill, pages[n], data=_entry(0x100 + n))
        # the tree (each node pointing away from the side used last) now points at way
        # 0; with no lookups in between the victims are ways 0, 2, 1: pages 0, 2, 1
        await fill(ctx, dut.fill, pages[4], data=_entry(0x104))
        await fill(ctx, dut.fill, pages[5], data=_entry(0x105))
        await fill(ctx, dut.fill, pages[6], data=_entry(0x106))
        assert await present(ctx, pages[:7]) == [False, False, False, True, True, True, True]
        # Without the lookups the next victim would be way 3 anyway; make it differ: the
        # hits above touched ways 3, 0, 2, 1 (pages 3, 4, 5, 6), which leaves the root
        # pointing right and its right child at way 3.  Touch way 3 (page 3) again: the
        # root now points left, and its left child at way 0 (way 1 was used after it).
        assert await present(ctx, [pages[3]]) == [True]
        await fill(ctx, dut.fill, pages[7], data=_entry(0x107))
        # way 0 (page 4) went, page 3 stayed
        assert await present(ctx, [pages[3], pages[4], pages[5], pages[6], pages[7]]) == \
            [True, False, True, True, True]
        # the other sets are untouched
        hit, _, _ = await lookup(ctx, dut.lookup, _page(2, 4))
        assert not hit

    run(dut, tb)


def test_victim_order_without_lookups_is_0_2_1_3():
    dut = _array(sets=1)           # one set: the ways are registers, not a memory

    async def tb(ctx):
        for n in range(4):
            await fill(ctx, dut.fill, n, data=_entry(n))
        # after each fill, the page expected to be gone misses (a miss refreshes nothing,
        # so the check does not steer the next victim; a wrong guess hits and fails)
        for n, gone in zip(range(4, 8), (0, 2, 1, 3)):
            await fill(ctx, dut.fill, n, data=_entry(n))
            hit, _, _ = await lookup(ctx, dut.lookup, gone)
            assert not hit, f"fill {n} evicted another page than {gone}"
        seen = []
        for n in range(8):
            hit, ok, data = await lookup(ctx, dut.lookup, n)
            seen.append(data.hpa_page if ok else None)
        assert seen == [None, None, None, None, 4, 5, 6, 7]

    run(dut, tb)


def test_fill_is_seen_from_the_next_cycle_and_a_flush_acts_in_one():
    dut = _array(contexts=2)

    async def tb(ctx):
        page = _page(3, 5)
        ctx.set(dut.fill.valid, 1)
        ctx.set(dut.fill.key, page)
        ctx.set(dut.fill.ctx, 1)
        ctx.set(dut.fill.data, _entry(0xABC))
        # a lookup in the fill's own cycle misses
        hit, _, _ = await lookup(ctx, dut.lookup, page, 1)
        ctx.set(dut.fill.valid, 0)
        assert not hit
        # the cycle after (the way being written at the lookup's edge) hits: the read is
        # transparent to the write
        hit, ok, data = await lookup(ctx, dut.lookup, page, 1)
        assert hit and ok and data.hpa_page == 0xABC
        # another context does not hit
        hit, _, _ = await lookup(ctx, dut.lookup, page, 0)
        assert not hit
        # flush context 0: context 1's entry stays
        ctx.set(dut.flush, 0b01)
        await ctx.tick()
        ctx.set(dut.flush, 0)
        hit, _, _ = await lookup(ctx, dut.lookup, page, 1)
        assert hit
        # flush context 1: a lookup in the flush's own cycle still hits (its request is
        # marked stale by the unit) ...
        ctx.set(dut.flush, 0b10)
        hit, _, _ = await lookup(ctx, dut.lookup, page, 1)
        ctx.set(dut.flush, 0)
        assert hit
        # ... and the one in the next cycle misses
        hit, _, _ = await lookup(ctx, dut.lookup, page, 1)
        assert not hit

    run(dut, tb)


def test_permissions_d_and_drop():
    dut = _array()

    async def tb(ctx):
        page = _page(0, 9)
        await fill(ctx, dut.fill, page, data=_entry(0x55, perms=0b101, d=0))   # R-X, D clear
        hit, ok, _ = await lookup(ctx, dut.lookup, page, access=Access.FETCH)
        assert hit and ok
        hit, ok, _ = await lookup(ctx, dut.lookup, page, access=Access.WRITE)
        assert hit and not ok                # no W
        # drop in S1 (the cycle after the lookup): gone for a lookup two cycles on
        ctx.set(dut.drop, 1)
        await ctx.tick()
        ctx.set(dut.drop, 0)
        await ctx.tick()
        hit, _, _ = await lookup(ctx, dut.lookup, page, access=Access.READ)
        assert not hit

    run(dut, tb)


def test_write_needs_d():
    dut = _array()

    async def tb(ctx):
        page = _page(2, 1)
        await fill(ctx, dut.fill, page, data=_entry(0x66, perms=0b111, d=0))
        hit, ok, _ = await lookup(ctx, dut.lookup, page, access=Access.WRITE)
        assert hit and not ok
        hit, ok, _ = await lookup(ctx, dut.lookup, page, access=Access.READ)
        assert hit and ok

    run(dut, tb)


def test_smaller_page_wins_and_keys_are_sliced_per_size():
    dut = Tlb(sets_4k=4, ways_4k=2, sets_2m=2, ways_2m=2, sets_1g=1, ways_1g=2, contexts=1)

    async def tb(ctx):
        gpa = 0x4020_3000
        page = gpa >> 12
        await fill(ctx, dut.fill, page, data={"size": PageSize.SIZE_2M, "entry": _entry(0x200)})
        _, ok, data = await lookup(ctx, dut.lookup, page + 1)       # same 2M page
        assert ok and data.size == PageSize.SIZE_2M and data.entry.hpa_page == 0x200
        await fill(ctx, dut.fill, page, data={"size": PageSize.SIZE_4K, "entry": _entry(0x400)})
        _, ok, data = await lookup(ctx, dut.lookup, page)
        assert ok and data.size == PageSize.SIZE_4K and data.entry.hpa_page == 0x400
        _, ok, data = await lookup(ctx, dut.lookup, page + 1)       # the 2M entry still
        assert ok and data.size == PageSize.SIZE_2M
        assert dut.entries == 4 * 2 + 2 * 2 + 2

    run(dut, tb)
