"""hw.resp_arbiter.ResponseArbiter alone: priorities, the skid register, the held-offer rule."""

from conftest import run

from hw.layouts import Outcome
from hw.resp_arbiter import ResponseArbiter


def _resp(tag, outcome=Outcome.OK, hpa=0):
    return {"outcome": outcome, "hpa": hpa, "page_size": 0, "memtype": 0, "qual": 0, "level": 0,
            "retries": 0, "tag": tag}


def _offer_walker(ctx, dut, k, tag):
    ctx.set(dut.walker[k].valid, 1)
    ctx.set(dut.walker[k].payload, _resp(tag))


def _s1(ctx, dut, tag=None, *, load=1):
    """S1 resolves this cycle, with an answer if ``tag`` is given."""
    ctx.set(dut.s1.load, load)
    ctx.set(dut.s1.answer, tag is not None)
    ctx.set(dut.s1.payload, _resp(tag or 0))


def _port(ctx, dut):
    """What the port offers now: the tag, or None."""
    return ctx.get(dut.resp.payload.tag) if ctx.get(dut.resp.valid) else None


def test_s1_answer_goes_straight_out_when_the_port_is_free():
    dut = ResponseArbiter(walkers=2)

    async def tb(ctx):
        ctx.set(dut.resp.ready, 1)
        _s1(ctx, dut, 5)
        assert _port(ctx, dut) == 5
        await ctx.tick()
        _s1(ctx, dut, load=0)
        assert not ctx.get(dut.skid_full) and _port(ctx, dut) is None
        # S1 moving on without an answer (a miss) offers nothing and fills no skid
        _s1(ctx, dut, None)
        assert _port(ctx, dut) is None
        await ctx.tick()
        assert not ctx.get(dut.skid_full)

    run(dut, tb)


def test_walkers_before_s1_and_s1_waits_in_the_skid_register():
    dut = ResponseArbiter(walkers=2)

    async def tb(ctx):
        ctx.set(dut.resp.ready, 1)
        _offer_walker(ctx, dut, 1, 7)
        _s1(ctx, dut, 3)
        assert _port(ctx, dut) == 7 and ctx.get(dut.walker_sel) == 1
        assert ctx.get(dut.done) == 0b10
        await ctx.tick()
        ctx.set(dut.walker[1].valid, 0)
        _s1(ctx, dut, load=0)
        # S1's answer went into the skid register, which has the port first now
        assert ctx.get(dut.skid_full)
        _offer_walker(ctx, dut, 0, 9)
        assert _port(ctx, dut) == 3 and ctx.get(dut.done) == 0
        await ctx.tick()
        assert not ctx.get(dut.skid_full)
        assert _port(ctx, dut) == 9 and ctx.get(dut.done) == 0b01
        await ctx.tick()
        ctx.set(dut.walker[0].valid, 0)
        assert _port(ctx, dut) is None

    run(dut, tb)


def test_lower_walker_first_and_an_offer_not_taken_is_held():
    dut = ResponseArbiter(walkers=3)

    async def tb(ctx):
        ctx.set(dut.resp.ready, 0)
        _offer_walker(ctx, dut, 2, 2)
        assert _port(ctx, dut) == 2
        await ctx.tick()
        # walker 0 answers while walker 2's offer waits: the port keeps offering walker 2
        _offer_walker(ctx, dut, 0, 0)
        assert _port(ctx, dut) == 2 and ctx.get(dut.walker_sel) == 2
        await ctx.tick()
        assert _port(ctx, dut) == 2
        ctx.set(dut.resp.ready, 1)
        assert ctx.get(dut.done) == 0b100
        await ctx.tick()
        ctx.set(dut.walker[2].valid, 0)
        assert _port(ctx, dut) == 0 and ctx.get(dut.done) == 0b001
        await ctx.tick()
        ctx.set(dut.walker[0].valid, 0)
        # with both offering and the port free, the lower one goes first
        _offer_walker(ctx, dut, 1, 1)
        _offer_walker(ctx, dut, 2, 2)
        assert _port(ctx, dut) == 1

    run(dut, tb)


def test_s1_answer_not_taken_is_offered_again_from_the_skid_register():
    dut = ResponseArbiter(walkers=2)

    async def tb(ctx):
        ctx.set(dut.resp.ready, 0)
        _s1(ctx, dut, 4)
        assert _port(ctx, dut) == 4
        await ctx.tick()
        _s1(ctx, dut, load=0)
        # held: the same answer, now from the skid register, ahead of a walker answering
        _offer_walker(ctx, dut, 0, 8)
        assert ctx.get(dut.skid_full) and _port(ctx, dut) == 4
        ctx.set(dut.resp.ready, 1)
        await ctx.tick()
        assert _port(ctx, dut) == 8

    run(dut, tb)
