"""hw.miss_dispatch.MissDispatcher alone: dispatch, parking behind a walk of the same page, replay."""

from conftest import run, ticks

from hw.layouts import Access, Level
from hw.miss_dispatch import MissDispatcher

PAGE = 0x12345


def _req(gpa, tag, ctx_id=0):
    return {"gpa": gpa, "access": Access.WRITE, "tag": tag, "ctx": ctx_id, "pml4": 0x100,
            "ad_enabled": 1, "ctx_valid": 1, "stale": 0}


async def miss(ctx, dut, gpa, tag, ctx_id=0, start=(Level.PML4E, 0x100, 0b111)):
    """S1 resolves a miss in this cycle (S2 must be empty)."""
    assert not ctx.get(dut.s1.full)
    ctx.set(dut.s1.load, 1)
    ctx.set(dut.s1.miss, 1)
    ctx.set(dut.s1.req, _req(gpa, tag, ctx_id))
    level, table, perms = start
    ctx.set(dut.s1.start, {"level": level, "table": table, "perms": perms})
    await ctx.tick()
    ctx.set(dut.s1.load, 0)
    ctx.set(dut.s1.miss, 0)


def _dut():
    return MissDispatcher(walkers=2, park_slots=2, contexts=2)


def test_a_miss_goes_to_the_lowest_idle_walker_from_its_start_level():
    dut = _dut()

    async def tb(ctx):
        ctx.set(dut.walk[0].ready, 0)
        ctx.set(dut.walk[1].ready, 1)
        await miss(ctx, dut, PAGE << 12 | 0x18, tag=3, ctx_id=1, start=(Level.PDE, 0x77, 0b101))
        assert ctx.get(dut.s1.full)
        assert not ctx.get(dut.walk[0].valid) and ctx.get(dut.walk[1].valid)
        p = ctx.get(dut.walk[1].payload)
        assert (p.gpa, p.access, p.tag, p.pml4, p.ad_enabled, p.ctx_valid) == \
            (PAGE << 12 | 0x18, Access.WRITE, 3, 0x100, 1, 1)
        assert (p.start_level, p.start_table, p.start_perms) == (Level.PDE, 0x77, 0b101)
        ev = ctx.get(dut.events)
        assert (ev.misses, ev.walks, ev.merged, ev.psc_hits_pdpte, ev.psc_hits_pde) == (1, 1, 0, 1, 0)
        assert ev.walk_cycles == 1                    # walker 0 is busy (not ready)
        await ctx.tick()
        assert not ctx.get(dut.s1.full)
        assert ctx.get(dut.walker_ctx[1]) == 1 and ctx.get(dut.walker_ad) == 0b10

    run(dut, tb)


def test_a_miss_waits_for_a_walker():
    dut = _dut()

    async def tb(ctx):
        ctx.set(dut.walk[0].ready, 0)
        ctx.set(dut.walk[1].ready, 0)
        await miss(ctx, dut, 0x5000, tag=1)
        for _ in range(3):
            assert ctx.get(dut.s1.full) and not ctx.get(dut.walk[0].valid)
            assert ctx.get(dut.events.misses) == 0
            await ctx.tick()
        ctx.set(dut.walk[0].ready, 1)
        assert ctx.get(dut.walk[0].valid) and ctx.get(dut.events.misses)
        await ctx.tick()
        assert not ctx.get(dut.s1.full)

    run(dut, tb)


async def _walk_page_on_walker0(ctx, dut, ctx_id=0):
    ctx.set(dut.walk[0].ready, 1)
    ctx.set(dut.walk[1].ready, 1)
    await miss(ctx, dut, PAGE << 12, tag=1, ctx_id=ctx_id)
    assert ctx.get(dut.walk[0].valid)
    await ctx.tick()                      # dispatched: walker 0 is busy with PAGE
    ctx.set(dut.walk[0].ready, 0)
    ctx.set(dut.walker_page[0], PAGE)


def test_a_miss_to_a_page_being_walked_parks_and_replays_after_the_answer():
    dut = _dut()

    async def tb(ctx):
        await _walk_page_on_walker0(ctx, dut)
        await miss(ctx, dut, PAGE << 12 | 0x800, tag=2)
        # parked: no walk, one miss merged
        assert not ctx.get(dut.walk[0].valid) and not ctx.get(dut.walk[1].valid)
        assert ctx.get(dut.events.merged) and ctx.get(dut.events.misses)
        assert not ctx.get(dut.events.walks)
        # the same page in another context walks on walker 1
        await ctx.tick()
        await miss(ctx, dut, PAGE << 12, tag=4, ctx_id=1)
        assert ctx.get(dut.walk[1].valid) and not ctx.get(dut.events.merged)
        await ctx.tick()
        ctx.set(dut.walk[1].ready, 0)
        await ticks(ctx, 2)
        assert not ctx.get(dut.replay.valid)
        # walker 0 answers: the slot wakes a cycle later, and is in the replay register after that
        ctx.set(dut.walker_done, 0b01)
        await ctx.tick()
        ctx.set(dut.walker_done, 0)
        assert not ctx.get(dut.replay.valid)
        await ctx.tick()
        assert ctx.get(dut.replay.valid)
        assert not ctx.get(dut.replay_empty_tlb) and not ctx.get(dut.replay_empty_psc)
        r = ctx.get(dut.replay.payload)
        assert (r.gpa, r.tag, r.stale) == (PAGE << 12 | 0x800, 2, 0)
        # held until S0 takes it
        await ticks(ctx, 2)
        assert ctx.get(dut.replay.valid)
        ctx.set(dut.replay.ready, 1)
        await ctx.tick()
        ctx.set(dut.replay.ready, 0)
        assert not ctx.get(dut.replay.valid)
        assert ctx.get(dut.replay_empty_tlb) and ctx.get(dut.replay_empty_psc)

    run(dut, tb)


def test_a_flush_marks_walks_and_parked_requests_stale():
    dut = _dut()

    async def tb(ctx):
        await _walk_page_on_walker0(ctx, dut)
        await miss(ctx, dut, PAGE << 12 | 0x40, tag=5)       # parks
        assert ctx.get(dut.events.merged)
        await ctx.tick()
        ctx.set(dut.flush, 0b01)
        await ctx.tick()
        ctx.set(dut.flush, 0)
        assert ctx.get(dut.walker_stale) & 1       # (an idle walker's bit means nothing)
        # a stale walk is no walk to park behind: the next miss to the page walks
        await miss(ctx, dut, PAGE << 12 | 0x80, tag=6)
        assert ctx.get(dut.walk[1].valid)
        await ctx.tick()
        ctx.set(dut.walker_done, 0b01)
        await ctx.tick()
        ctx.set(dut.walker_done, 0)
        await ctx.tick()
        assert ctx.get(dut.replay.valid) and ctx.get(dut.replay.payload.stale)

    run(dut, tb)


def test_with_every_park_slot_taken_a_miss_waits():
    dut = _dut()

    async def tb(ctx):
        await _walk_page_on_walker0(ctx, dut)
        ctx.set(dut.walk[1].ready, 0)
        for tag in (7, 8):
            await miss(ctx, dut, PAGE << 12, tag=tag)
            assert ctx.get(dut.events.merged)
            await ctx.tick()
        await miss(ctx, dut, PAGE << 12, tag=9)
        for _ in range(3):
            assert ctx.get(dut.s1.full) and not ctx.get(dut.events.merged)
            await ctx.tick()
        # the walk answers: both slots replay, lowest first; then the third one parks
        ctx.set(dut.walker_done, 0b01)
        await ctx.tick()
        ctx.set(dut.walker_done, 0)
        ctx.set(dut.replay.ready, 1)
        tags = []
        for _ in range(4):
            await ctx.tick()
            if ctx.get(dut.replay.valid):
                tags.append(ctx.get(dut.replay.payload.tag))
        assert tags[:2] == [7, 8]

    run(dut, tb)
