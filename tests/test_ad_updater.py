"""hw.ad_updater.ADUpdater alone, against a behavioural memory: CAS order, values, races, errors."""

from conftest import Memory, run, ticks

from hw.ad_updater import ADState, ADStatus, ADUpdater
from hw.layouts import Level
from model.formats import EPT_A, EPT_D, make_leaf_entry, make_table_entry

ENTRIES = [make_leaf_entry(0x5000), make_table_entry(0x4000), make_table_entry(0x3000),
           make_table_entry(0x2000)]                 # by hw Level: PTE, PDE, PDPTE, PML4E
ADDRS = [0x4008, 0x3010, 0x2018, 0x1020]


async def update(ctx, dut, pending, *, dirty=0, leaf=Level.PTE, limit=50):
    """Start the updater; returns (status, cycles from start to done)."""
    ctx.set(dut.entries.as_value(), sum(e << (64 * i) for i, e in enumerate(ENTRIES)))
    ctx.set(dut.addrs, ADDRS)
    ctx.set(dut.leaf_level, leaf)
    ctx.set(dut.dirty, dirty)
    ctx.set(dut.pending, pending)
    ctx.set(dut.start, 1)
    assert ctx.get(dut.debug.state) == ADState.IDLE
    await ctx.tick()
    ctx.set(dut.start, 0)
    for n in range(1, limit):
        if ctx.get(dut.done):
            return ctx.get(dut.status), n
        await ctx.tick()
    raise AssertionError("no done")


def _rig(latency=2):
    dut = ADUpdater()
    mem = Memory(dut.mem_req, dut.mem_resp, dict(zip(ADDRS, ENTRIES)), latency=latency)
    return dut, mem


def test_top_level_first_compares_the_value_read_and_sets_only_a_and_d():
    dut, mem = _rig(latency=2)
    result = {}

    async def tb(ctx):
        result["first"] = await update(ctx, dut, 0b1011, dirty=1)       # PML4E, PDE, PTE

    run(dut, tb, processes=[mem.process])
    assert result["first"][0] == ADStatus.DONE
    assert mem.cases() == [
        (ADDRS[3], ENTRIES[3], ENTRIES[3] | EPT_A),
        (ADDRS[1], ENTRIES[1], ENTRIES[1] | EPT_A),
        (ADDRS[0], ENTRIES[0], ENTRIES[0] | EPT_A | EPT_D),      # the leaf of a write: D too
    ]
    # one CAS at a time, each issued the cycle after the previous answer
    issued = [c for c, *_ in mem.log]
    assert issued[1] - issued[0] == issued[2] - issued[1] == 2 + 1
    assert mem.words[ADDRS[2]] == ENTRIES[2]                     # not pending: untouched


def test_a_read_leaves_d_alone_and_nothing_pending_is_done_at_once():
    dut, mem = _rig(latency=1)
    result = {}

    async def tb(ctx):
        result["read"] = await update(ctx, dut, 0b0001, dirty=0)
        await ticks(ctx, 2)
        result["none"] = await update(ctx, dut, 0)

    run(dut, tb, processes=[mem.process])
    assert result["read"][0] == ADStatus.DONE
    assert mem.cases() == [(ADDRS[0], ENTRIES[0], ENTRIES[0] | EPT_A)]
    assert result["none"] == (ADStatus.DONE, 1)                  # done the cycle after start


def test_a_lost_race_stops_at_that_entry():
    dut, mem = _rig(latency=1)
    mem.race[ADDRS[3]] = ENTRIES[3] | EPT_A                     # someone set A first
    result = {}

    async def tb(ctx):
        result["race"] = await update(ctx, dut, 0b1001)

    run(dut, tb, processes=[mem.process])
    assert result["race"][0] == ADStatus.LOST_RACE
    assert [addr for addr, _, _ in mem.cases()] == [ADDRS[3]]    # the PTE's CAS never left


def test_a_bus_error_ends_the_update():
    dut, mem = _rig(latency=1)
    mem.errors.add(ADDRS[2])
    result = {}

    async def tb(ctx):
        result["err"] = await update(ctx, dut, 0b0101)

    run(dut, tb, processes=[mem.process])
    assert result["err"][0] == ADStatus.BUS_ERROR
    assert [addr for addr, _, _ in mem.cases()] == [ADDRS[2]]
    assert mem.words[ADDRS[0]] == ENTRIES[0]
