"""hw.walker.Walker alone (with the entry check on its memory data), against a behavioural memory."""

import pytest
from amaranth import Module
from conftest import Memory, receive, run, send

from hw.entry_check import EntryCheck
from hw.layouts import Access, Level, Outcome, PageSize
from hw.walker import Walker, WalkerState
from model.formats import (
    EPT_A,
    EPT_D,
    EPT_W,
    gpa_index,
    make_leaf_entry,
    make_table_entry,
)
from model.formats import Level as MLevel

GPA = 0x0000_1234_5678_9ABC
TABLES = {MLevel.PML4E: 0x10_000, MLevel.PDPTE: 0x11_000, MLevel.PDE: 0x12_000, MLevel.PTE: 0x13_000}
FRAME = 0x7_7000


def _addr(level, gpa=GPA):
    return TABLES[level] + 8 * gpa_index(gpa, level)


def _tables(*, accessed=True, leaf=None, override=None):
    """A 4-level path for GPA; entries with A set unless ``accessed`` is false."""
    a = EPT_A if accessed else 0
    words = {
        _addr(MLevel.PML4E): make_table_entry(TABLES[MLevel.PDPTE]) | a,
        _addr(MLevel.PDPTE): make_table_entry(TABLES[MLevel.PDE]) | a,
        _addr(MLevel.PDE): make_table_entry(TABLES[MLevel.PTE]) | a,
        _addr(MLevel.PTE): leaf if leaf is not None else make_leaf_entry(FRAME, accessed=accessed,
                                                                          dirty=accessed),
    }
    words.update(override or {})
    return words


def _request(access=Access.READ, *, ad=0, start=(Level.PML4E, TABLES[MLevel.PML4E] >> 12, 0b111),
             ctx_valid=1, tag=6):
    level, table, perms = start
    return {"gpa": GPA, "access": access, "tag": tag, "pml4": TABLES[MLevel.PML4E] >> 12,
            "ad_enabled": ad, "ctx_valid": ctx_valid, "start_level": level, "start_table": table,
            "start_perms": perms}


def _rig(words, latency=1, maxphyaddr=46, execute_only=True):
    m = Module()
    m.submodules.walker = w = Walker(maxphyaddr=maxphyaddr)
    m.submodules.check = c = EntryCheck(maxphyaddr=maxphyaddr, execute_only=execute_only)
    m.d.comb += [c.entry.eq(w.mem_resp.payload.data), w.mem_verdict.eq(c.verdict)]
    return m, w, Memory(w.mem_req, w.mem_resp, words, latency=latency)


def walk(words, request, *, latency=1, strobes=()):
    """One walk; returns (response, cycles from the request's cycle to the response's, memory,
    {strobe: cycles it was high})."""
    m, w, mem = _rig(words, latency)
    out = {}
    counts = dict.fromkeys(strobes, 0)

    async def tb(ctx):
        assert ctx.get(w.debug.state) == WalkerState.IDLE
        assert await send(ctx, w.req, request) == 0
        # the request's cycle was the one before this: count from it
        resp, waited = await receive(ctx, w.resp)
        out["resp"], out["cycles"] = resp, waited + 1

    async def watch(ctx):
        async for _, _, *values in ctx.tick().sample(*(getattr(w, n) for n in strobes)):
            for n, v in zip(strobes, values):
                counts[n] += v

    run(m, tb, processes=[mem.process, watch] if strobes else [mem.process])
    return out["resp"], out["cycles"], mem, counts


@pytest.mark.parametrize("latency", [1, 3])
def test_cold_walk_reads_four_entries_and_answers_in_4_times_l_plus_1(latency):
    resp, cycles, mem, _ = walk(_tables(), _request(), latency=latency)
    assert resp.outcome == Outcome.OK and resp.tag == 6
    assert (resp.hpa, resp.page_size, resp.level, resp.retries) == \
        (FRAME | GPA & 0xFFF, PageSize.SIZE_4K, Level.PTE, 0)
    assert mem.reads() == [_addr(lv) for lv in (MLevel.PML4E, MLevel.PDPTE, MLevel.PDE, MLevel.PTE)]
    assert cycles == 4 * (latency + 1)
    assert mem.cases() == []


def test_a_2m_leaf_stops_at_the_pde():
    big = 0x4000_0000
    words = _tables(override={_addr(MLevel.PDE): make_leaf_entry(big, MLevel.PDE, accessed=True)})
    resp, cycles, mem, _ = walk(words, _request())
    assert (resp.outcome, resp.page_size, resp.level) == (Outcome.OK, PageSize.SIZE_2M, Level.PDE)
    assert resp.hpa == big | GPA & 0x1F_FFFF
    assert len(mem.reads()) == 3 and cycles == 3 * 2


def test_a_d_updates_each_entry_lacking_a_and_sets_d_for_a_write():
    words = _tables(accessed=False)
    resp, _, mem, _ = walk(words, _request(Access.WRITE, ad=1))
    assert resp.outcome == Outcome.OK
    order = (MLevel.PML4E, MLevel.PDPTE, MLevel.PDE, MLevel.PTE)
    assert [addr for addr, _, _ in mem.cases()] == [_addr(lv) for lv in order]
    for addr, compare, data in mem.cases():
        extra = EPT_A | (EPT_D if addr == _addr(MLevel.PTE) else 0)
        assert compare == words[addr] and data == compare | extra


def test_a_lost_cas_walks_again_and_counts_a_retry():
    words = _tables(accessed=False)
    mem_pte = _addr(MLevel.PTE)
    m, w, mem = _rig(words)
    mem.race[mem_pte] = words[mem_pte] | EPT_A          # the host sets A first, not D
    out = {}
    lost = []

    async def tb(ctx):
        await send(ctx, w.req, _request(Access.WRITE, ad=1))
        out["resp"], _ = await receive(ctx, w.resp)

    async def watch(ctx):
        async for _, _, v in ctx.tick().sample(w.lost_race):
            lost.append(v)

    run(m, tb, processes=[mem.process, watch])
    assert out["resp"].outcome == Outcome.OK and out["resp"].retries == 1
    assert sum(lost) == 1
    # walked twice (8 reads); the second walk's only CAS sets D on the PTE the host changed
    assert len(mem.reads()) == 8
    assert mem.cases()[-1] == (mem_pte, words[mem_pte] | EPT_A, words[mem_pte] | EPT_A | EPT_D)


def test_not_present_is_a_violation_with_its_qualification():
    words = _tables(override={_addr(MLevel.PDE): 0})
    resp, _, mem, _ = walk(words, _request(Access.READ))
    assert (resp.outcome, resp.level) == (Outcome.VIOLATION, Level.PDE)
    assert resp.qual == 0b000_001            # a read; no permission bits from the entry
    assert len(mem.reads()) == 3


def test_write_without_read_is_a_misconfiguration():
    words = _tables(override={_addr(MLevel.PDPTE): EPT_W | TABLES[MLevel.PDE]})
    resp, _, _, _ = walk(words, _request())
    assert (resp.outcome, resp.level) == (Outcome.MISCONFIG, Level.PDPTE)


def test_bus_error_and_refused():
    m_words = _tables()
    m, w, mem = _rig(m_words)
    mem.errors.add(_addr(MLevel.PDPTE))
    out = {}

    async def tb(ctx):
        await send(ctx, w.req, _request())
        out["err"], _ = await receive(ctx, w.resp)
        await send(ctx, w.req, _request(ctx_valid=0, tag=9))
        out["refused"], _ = await receive(ctx, w.resp)

    run(m, tb, processes=[mem.process])
    assert (out["err"].outcome, out["err"].level) == (Outcome.BUS_ERROR, Level.PDPTE)
    assert (out["refused"].outcome, out["refused"].tag) == (Outcome.REFUSED, 9)
    assert len(mem.reads()) == 2                 # the refused request read nothing


def test_a_walk_from_a_cached_pde_reads_only_the_pte():
    start = (Level.PTE, TABLES[MLevel.PTE] >> 12, 0b111)
    resp, cycles, mem, _ = walk(_tables(), _request(start=start), latency=2)
    assert resp.outcome == Outcome.OK and mem.reads() == [_addr(MLevel.PTE)]
    assert cycles == 2 + 1


def test_a_fault_below_a_cached_entry_drops_it_and_walks_again_from_the_pml4e():
    # the cached PDE said the PT is at 0x99000, where nothing is: memory decides
    start = (Level.PTE, 0x99, 0b111)
    resp, _, mem, counts = walk(_tables(), _request(start=start), strobes=("psc_drop",))
    assert counts["psc_drop"] == 1
    assert mem.reads()[0] == 0x99_000 + 8 * gpa_index(GPA, MLevel.PTE)
    assert mem.reads()[1:] == [_addr(lv) for lv in (MLevel.PML4E, MLevel.PDPTE, MLevel.PDE, MLevel.PTE)]
    assert resp.outcome == Outcome.OK
