"""hw.perf.PerfCounterBank alone: two-cycle latency, counts wider than one event, carry, clear."""

from conftest import run, ticks

from hw.layouts import PERF_EVENTS
from hw.perf import PerfCounterBank


def test_a_count_shows_two_cycles_after_its_event():
    dut = PerfCounterBank()

    async def tb(ctx):
        ctx.set(dut.events.walks, 1)
        await ctx.tick()                       # the event is registered here ...
        ctx.set(dut.events.walks, 0)
        assert ctx.get(dut.counters.walks) == 0
        await ctx.tick()                       # ... and added here
        assert ctx.get(dut.counters.walks) == 1
        assert all(ctx.get(dut.counters[name]) == 0 for name in PERF_EVENTS if name != "walks")

    run(dut, tb)


def test_counts_add_with_carry_into_the_high_bits():
    dut = PerfCounterBank()

    async def tb(ctx):
        ctx.set(dut.events.walk_cycles, 200)   # an event is a count (several walkers)
        await ticks(ctx, 3)                    # three events of 200
        ctx.set(dut.events.walk_cycles, 0)
        await ticks(ctx, 2)
        assert ctx.get(dut.counters.walk_cycles) == 600      # carried past 8 bits twice
        ctx.set(dut.events.lookups, 1)
        await ticks(ctx, 1000)
        ctx.set(dut.events.lookups, 0)
        await ticks(ctx, 2)
        assert ctx.get(dut.counters.lookups) == 1000

    run(dut, tb)


def test_clear_zeroes_and_drops_the_events_of_its_cycle():
    dut = PerfCounterBank()

    async def tb(ctx):
        ctx.set(dut.events.misses, 3)
        await ticks(ctx, 2)                    # two events registered, one added so far
        assert ctx.get(dut.counters.misses) == 3
        ctx.set(dut.clear, 1)                  # the second event is added in the clear's cycle
        ctx.set(dut.events.misses, 0)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert ctx.get(dut.counters.misses) == 0
        await ticks(ctx, 2)
        assert ctx.get(dut.counters.misses) == 0

    run(dut, tb)
