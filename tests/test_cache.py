# amaranth: UnusedElaboratable=no
"""The TLB, paging-structure caches, INVEPT and concurrent walks, on the RTL.

Every response goes through the scoreboard (``Rig.translate``/``run_all``),
which accepts a cached translation only if it was valid at some point since
the last INVEPT covering the context, and a fault only if memory said so
while the request was in flight.  On top of that, each test states what the
caches must have done (hit, walk, drop) through the unit's counters and the
port timing.
"""

import random

import pytest

from hw.top import PageWalkUnit
from model.formats import EPT_D, EPT_W, Access, Level, Outcome, gpa_index
from sim.cosim.dram import DramConfig
from sim.cosim.tables import random_table_set

from rtl_util import Rig, Tables, run_all

L = 8                      # DRAM read latency in these tests
FLAT = DramConfig(read_latency=L, row_miss_penalty=0)
BASE = 0x7f00_0000_0000    # GPAs used here: all under one PML4E
HPA = 0x4000_0000


def rig_and_tables(ad=True, **unit):
    rig = Rig(dram=FLAT, **unit)
    return rig, Tables(rig, ad=ad)


def loaded(rig, tables):
    assert rig.load(tables.eptp)
    return tables


def delta(rig, before):
    now = rig.harness.counters()
    return {k: now[k] - before[k] for k in now}


# --- hits ---------------------------------------------------------------------------------

def test_hit_answers_in_one_cycle_one_per_cycle():
    rig, tb = rig_and_tables()
    pages = [BASE + i * 0x1000 for i in range(8)]
    for i, gpa in enumerate(pages):
        tb.map(gpa, HPA + i * 0x1000)
    loaded(rig, tb)
    run_all(rig, [(gpa, Access.READ) for gpa in pages])          # fill
    before = rig.harness.counters()
    hits = run_all(rig, [(gpa + 8 * n, Access.READ) for n in range(2) for gpa in pages])
    assert all(t.outcome is Outcome.OK and t.cycles == 1 for t in hits)
    accepted = [t.accepted for t in hits]
    assert accepted == list(range(accepted[0], accepted[0] + 16))     # one lookup per cycle
    d = delta(rig, before)
    assert d["hits_4k"] == 16 and d["walks"] == 0 and d["mem_reads"] == 0


def test_only_successes_are_cached():
    rig, tb = rig_and_tables()
    tb.map(BASE, HPA)
    loaded(rig, tb)
    before = rig.harness.counters()
    for _ in range(2):
        t = rig.translate(BASE + 0x1000, Access.READ)        # PTE not present
        assert t.outcome is Outcome.VIOLATION and t.cycles > 1
    assert delta(rig, before)["walks"] == 2


def test_write_on_entry_without_d_walks_and_sets_d():
    rig, tb = rig_and_tables()
    pte = tb.map(BASE, HPA)
    loaded(rig, tb)
    rig.translate(BASE, Access.READ)                         # cached with D = 0
    assert not rig.memory.peek(pte) & EPT_D
    before = rig.harness.counters()
    t = rig.translate(BASE, Access.WRITE)
    assert t.outcome is Outcome.OK and t.cycles > 1
    assert rig.memory.peek(pte) & EPT_D                      # the walk set D
    assert delta(rig, before)["dropped"] == 1
    assert rig.translate(BASE, Access.WRITE).cycles == 1     # now D is cached


def test_write_hits_without_d_when_ad_is_off():
    rig, tb = rig_and_tables(ad=False)
    tb.map(BASE, HPA)
    loaded(rig, tb)
    rig.translate(BASE, Access.READ)
    assert rig.translate(BASE, Access.WRITE).cycles == 1


def test_hit_lacking_permission_is_dropped_and_memory_walked():
    rig, tb = rig_and_tables()
    pte = tb.map(BASE, HPA, perms=0b001)
    loaded(rig, tb)
    assert rig.translate(BASE, Access.READ).outcome is Outcome.OK
    rig.memory.write(pte, rig.memory.peek(pte) | EPT_W, source="host")   # raise W, no INVEPT
    before = rig.harness.counters()
    t = rig.translate(BASE, Access.WRITE)
    assert t.outcome is Outcome.OK                           # what memory says now
    d = delta(rig, before)
    assert d["dropped"] == 1 and d["walks"] == 1


# --- staleness and INVEPT ----------------------------------------------------------------------

def test_stale_until_invept_then_never():
    rig, tb = rig_and_tables()
    pte = tb.map(BASE, HPA)
    loaded(rig, tb)
    assert rig.translate(BASE, Access.READ).hpa == HPA
    new = (rig.memory.peek(pte) & ~0xFFFFF000) | (HPA + 0x5000)
    rig.memory.write(pte, new, source="host")                # remap, no INVEPT yet
    stale = rig.translate(BASE, Access.READ)
    assert stale.hpa == HPA and stale.cycles == 1            # the reference page allows it
    rig.harness.invept("single", tb.eptp.tag)
    fresh = rig.translate(BASE, Access.READ)
    assert fresh.hpa == HPA + 0x5000 and fresh.cycles > 1
    # and the scoreboard would have refused the old frame after the INVEPT
    fresh.hpa = HPA
    assert not rig.scoreboard.check(fresh)


def test_invept_during_a_walk_installs_nothing():
    for invept in (False, True):
        rig, tb = rig_and_tables()
        tb.map(BASE, HPA)
        loaded(rig, tb)
        t = rig.harness.submit(BASE, Access.READ)
        rig.harness.step(3 * L)                              # the walk is in flight
        assert not t.done
        if invept:
            rig.harness.invept("global")
        rig.harness.run_until(lambda t=t: t.done, 2000)
        assert rig.scoreboard.check(t) and t.outcome is Outcome.OK
        again = rig.translate(BASE, Access.READ)
        assert (again.cycles > 1) == invept, invept


def test_contexts_are_tagged_and_flushed_separately():
    rig = Rig(dram=FLAT)
    a, b = Tables(rig), Tables(rig)
    a.map(BASE, HPA)
    b.map(BASE, HPA + 0x10_0000)
    loaded(rig, a)
    assert rig.translate(BASE, Access.READ).hpa == HPA
    loaded(rig, b)
    t = rig.translate(BASE, Access.READ)
    assert t.hpa == HPA + 0x10_0000 and t.cycles > 1       # not a's entry
    loaded(rig, a)
    assert rig.translate(BASE, Access.READ).cycles == 1    # a's entry survived
    rig.harness.invept("single", b.eptp.tag)
    assert rig.translate(BASE, Access.READ).cycles == 1    # still: only b was flushed
    loaded(rig, b)
    assert rig.translate(BASE, Access.READ).cycles > 1


def test_context_slot_reuse_flushes_the_old_context():
    rig = Rig(dram=FLAT, contexts=2)
    tbs = [Tables(rig) for _ in range(3)]
    for i, tb in enumerate(tbs):
        tb.map(BASE, HPA + i * 0x10_0000)
    for i, tb in enumerate(tbs):                              # the third reuses a slot
        loaded(rig, tb)
        t = rig.translate(BASE, Access.READ)
        assert t.hpa == HPA + i * 0x10_0000 and t.cycles > 1
    loaded(rig, tbs[0])                                      # its slot went to tbs[2]
    t = rig.translate(BASE, Access.READ)
    assert t.hpa == HPA and t.cycles > 1


# --- page sizes and replacement ------------------------------------------------------------------

def test_page_size_mix():
    rig, tb = rig_and_tables()
    tb.map(BASE, HPA, Level.PTE)
    tb.map(BASE + (1 << 21), 0x8000_0000, Level.PDE)
    tb.map(BASE + (1 << 30), 0x1_0000_0000, Level.PDPTE)
    loaded(rig, tb)
    gpas = [BASE + 0x123, BASE + (1 << 21) + 0x54321, BASE + (1 << 30) + 0x1234567]
    run_all(rig, [(g, Access.READ) for g in gpas])
    before = rig.harness.counters()
    again = run_all(rig, [(g + 0x1000 * (i > 0), Access.READ) for i, g in enumerate(gpas)])
    assert [t.cycles for t in again] == [1, 1, 1]
    assert [t.page_size for t in again] == [1 << 12, 1 << 21, 1 << 30]
    d = delta(rig, before)
    assert (d["hits_4k"], d["hits_2m"], d["hits_1g"]) == (1, 1, 1)


def test_pseudo_lru_replacement():
    """Five pages in one 4-way set: fill 0-3, touch 0, add 4.  Tree PLRU then
    evicts way 2 (page 2), where true LRU would evict page 1."""
    rig, tb = rig_and_tables()
    stride = 16 * 0x1000                                     # 16 sets
    pages = [BASE + i * stride for i in range(5)]
    for i, gpa in enumerate(pages):
        tb.map(gpa, HPA + i * 0x1000)
    loaded(rig, tb)
    for i in (0, 1, 2, 3, 0, 4):
        rig.translate(pages[i], Access.READ)
    for i in (0, 1, 3, 4):                                   # hits evict nothing
        assert rig.translate(pages[i], Access.READ).cycles == 1, i
    assert rig.translate(pages[2], Access.READ).cycles > 1


# --- paging-structure caches -------------------------------------------------------------------------

def test_pde_cache_skips_three_levels():
    rig, tb = rig_and_tables(ad=False)
    tb.map(BASE, HPA)
    tb.map(BASE + 0x1000, HPA + 0x1000)
    loaded(rig, tb)
    cold = rig.translate(BASE, Access.READ)
    assert cold.cycles == 4 * (L + 1) + 2
    before = rig.harness.counters()
    t = rig.translate(BASE + 0x1000, Access.READ)
    assert t.cycles == (L + 1) + 2
    d = delta(rig, before)
    assert d["psc_hits_pde"] == 1 and d["mem_reads"] == 1


def test_upper_caches():
    rig, tb = rig_and_tables(ad=False, pde_cache=0)
    tb.map(BASE, HPA)
    tb.map(BASE + (1 << 21), HPA + 0x1000)                  # another PDE, same PDPTE
    tb.map(BASE + (1 << 30), HPA + 0x2000)                  # another PDPTE, same PML4E
    loaded(rig, tb)
    rig.translate(BASE, Access.READ)
    before = rig.harness.counters()
    assert rig.translate(BASE + (1 << 21), Access.READ).cycles == 2 * (L + 1) + 2
    assert rig.translate(BASE + (1 << 30), Access.READ).cycles == 3 * (L + 1) + 2
    d = delta(rig, before)
    assert d["psc_hits_pdpte"] == 1 and d["psc_hits_pml4e"] == 1


def test_fault_through_a_cached_pde_is_decided_by_memory():
    rig, tb = rig_and_tables()
    tb.map(BASE, HPA)                                        # PT1 holds only BASE
    loaded(rig, tb)
    rig.translate(BASE, Access.READ)                         # PDE cached -> PT1
    # the host moves the region to a new page table (no INVEPT) that maps BASE+4K too
    pde = tb.entry_addr(BASE, Level.PDE)
    pt2 = rig.frame()
    rig.memory.write(pt2 + gpa_index(BASE, Level.PTE) * 8, rig.memory.peek(tb.entry_addr(BASE, Level.PTE)))
    rig.memory.write(pt2 + gpa_index(BASE + 0x1000, Level.PTE) * 8, (HPA + 0x9000) | 0x37)
    rig.memory.write(pde, (rig.memory.peek(pde) & 0xFFF) | pt2, source="host")
    before = rig.harness.counters()
    t = rig.translate(BASE + 0x1000, Access.READ)
    assert t.outcome is Outcome.OK and t.hpa == HPA + 0x9000   # not the cached PT1's fault
    d = delta(rig, before)
    assert d["psc_hits_pde"] == 1 and d["mem_reads"] == 1 + 4


# --- concurrency ---------------------------------------------------------------------------------------

def test_misses_to_one_page_share_a_walk():
    rig, tb = rig_and_tables()
    tb.map(BASE, HPA)
    loaded(rig, tb)
    before = rig.harness.counters()
    ts = run_all(rig, [(BASE, Access.READ), (BASE + 8, Access.READ), (BASE + 16, Access.FETCH)])
    assert all(t.outcome is Outcome.OK for t in ts)
    d = delta(rig, before)
    assert d["walks"] == 1 and d["merged"] == 2


def test_hits_under_a_miss_leave_out_of_order():
    rig, tb = rig_and_tables()
    tb.map(BASE, HPA)
    tb.map(BASE + (1 << 30), HPA + 0x1000)
    loaded(rig, tb)
    rig.translate(BASE, Access.READ)
    miss, hit, *more = run_all(rig, [(BASE + (1 << 30), Access.READ)] + [(BASE + 8 * i, Access.READ)
                                                                        for i in range(6)])
    # the hit right behind the miss waits one cycle (S1 moves on once S2 is empty);
    # the hits after it answer in one cycle each, all before the miss
    assert hit.cycles == 2 and [t.cycles for t in more] == [1] * 5
    assert max(t.answered for t in [hit] + more) < miss.answered
    assert len({t.tag for t in [miss, hit] + more}) == 7


def _independent_misses(walkers):
    rig = Rig(dram=DramConfig(read_latency=L, row_miss_penalty=0, max_outstanding=4),
              walkers=walkers)
    tb = Tables(rig)
    gpas = [BASE + (i << 30) for i in range(4)]              # separate PDPTEs: no cache helps much
    for i, g in enumerate(gpas):
        tb.map(g, HPA + i * 0x1000)
    loaded(rig, tb)
    ts = run_all(rig, [(g, Access.READ) for g in gpas])
    span = max(t.answered for t in ts) - min(t.accepted for t in ts)
    walking = rig.harness.counters()["walk_cycles"]
    if walkers > 1:
        assert walking > span * 1.5, (walking, span)        # walks overlapped
    return span


def test_independent_misses_walk_concurrently():
    spans = {w: _independent_misses(w) for w in (1, 2, 4)}
    assert spans[4] < spans[2] < spans[1] and spans[4] * 2 < spans[1], spans


# --- caches on and off agree -----------------------------------------------------------------------

def _random_run(seed: int, **unit):
    """Random tables; translations interleaved with host edits that INVEPT."""
    rng = random.Random(seed)
    rig = Rig(dram=DramConfig(read_latency=3, row_miss_penalty=1), **unit)
    ts, _ = random_table_set(rig.memory, 0x10_0000, seed, 12, rig.config, ad=True)
    eptp, gpas = ts.eptp, ts.gpas
    assert rig.load(eptp)
    results = []
    for _step in range(60):
        if rng.random() < 0.15:
            addr, value = rng.choice(sorted(rig.memory.nonzero_words()))
            rig.memory.write(addr, value ^ (1 << rng.choice([0, 1, 2, 8, 12])), source="host")
            rig.harness.invept(rng.choice(["single", "global"]), eptp.tag)
        batch = [(rng.choice(gpas) + rng.randrange(0, 1 << 12, 8), rng.choice(list(Access)))
                 for _ in range(rng.randint(1, 4))]
        results += [t.architectural() for t in run_all(rig, batch)]
    return results, rig


@pytest.mark.parametrize("seed", range(3))
def test_caches_on_and_off_give_the_same_results(seed):
    on, rig = _random_run(seed)
    off, _ = _random_run(seed, caches=False)
    assert on == off
    c = rig.harness.counters()
    assert c["hits_4k"] + c["hits_2m"] + c["hits_1g"] > 0    # the caches were used


def test_host_changes_without_invept_stay_within_the_rules():
    """Host edits with no INVEPT: the unit may answer from its caches, and the
    scoreboard (run_all) accepts only what was valid since the last INVEPT."""
    rng = random.Random(7)
    rig = Rig(dram=DramConfig(read_latency=3, row_miss_penalty=1))
    ts, _ = random_table_set(rig.memory, 0x10_0000, 7, 12, rig.config, ad=True)
    eptp, gpas = ts.eptp, ts.gpas
    assert rig.load(eptp)
    for _step in range(80):
        if rng.random() < 0.2:
            addr, value = rng.choice(sorted(rig.memory.nonzero_words()))
            rig.memory.write(addr, value ^ (1 << rng.choice([0, 1, 12, 13])), source="host")
            if rng.random() < 0.3:
                rig.harness.invept("single", eptp.tag)
        run_all(rig, [(rng.choice(gpas), rng.choice(list(Access))) for _ in range(rng.randint(1, 3))])
    assert rig.scoreboard.failed == 0
    assert rig.scoreboard.alternatives_used > 0              # stale answers did happen


def test_counters_add_up():
    _, rig = _random_run(11)
    c = rig.harness.counters()
    d = rig.harness.dram
    hits = c["hits_4k"] + c["hits_2m"] + c["hits_1g"]
    assert c["lookups"] == hits + c["misses"]
    assert c["misses"] == c["walks"] + c["merged"]
    assert c["walks"] == c["walks_completed"]
    assert c["mem_reads"] == d.reads + d.errors and c["mem_cas"] == d.cases
    assert c["invepts"] == rig.harness.invepts_sent


# --- parameters ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    ({"tlb_ways": 3}, "ways must be a power of two"),
    ({"tlb_sets": 0}, "sets must be a power of two"),
    ({"walkers": 0}, "walkers must be an integer in 1..16"),
    ({"contexts": 0}, "contexts must be an integer"),
    ({"pde_cache": 65}, "PDE cache entries"),
    ({"max_outstanding": 0}, "max_outstanding"),
    ({"caches": 1}, "caches must be a bool"),
])
def test_bad_parameters_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        PageWalkUnit(**kw)
