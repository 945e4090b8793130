"""The nested unit through the rtl backend, checked by the nested scoreboard.

Two parts: the scoreboard alone, fed hand-made linear tickets whose windows
come from HarnessCore's own bookkeeping (a stale combined mapping after an
INVVPID that should have dropped it must fail; a fresh answer where an old one
was allowed must pass), and a hypothesis cosimulation of random guest and EPT
tables through ``PysimBackend(nested=True)``, every answer checked by the
scoreboard and compared with ``model.nested.translate_la`` on a copy of the
world, and the whole memory (guest and EPT A/D) compared at the end.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.formats import EPT_R, EPT_RWX, EPT_W, EPT_X, Access, Level, make_leaf_entry as ept_leaf
from model.guest import PG_XD, make_leaf_entry
from model.nested import LaOutcome, translate_la
from model.physmem import PhysicalMemory
from sim.cosim.harness import LINEAR_RESPONSE, GuestLoad, HarnessCore, LinearTicket
from sim.cosim.nested_scoreboard import NestedScoreboard
from sim.cosim.scoreboard import MemoryHistory

from nested_util import World

LA = 0x0000_1234_5678_9000
OLD_GPA, NEW_GPA = 0x4000_0000, 0x4010_0000


# -- the scoreboard alone: tickets through HarnessCore's bookkeeping, no RTL ---------------------------

class Core(HarnessCore):
    """HarnessCore's edges driven by hand (no clock): the windows its tickets get."""
    nested = has_vpid = linear_caches = True
    gpa_tags = 15


def setup(world: World, level=Level.PTE, la=LA):
    """A world with ``la`` -> OLD_GPA (and NEW_GPA EPT-mapped), a core in its guest context."""
    world.guest_map(la, OLD_GPA, level)
    world.ept_map(NEW_GPA, level=Level.PTE)
    hist = MemoryHistory(world.mem)
    core = Core(world.mem, None, resp_stall_probability=0.0, seed=1, store_seq=lambda: hist.seq)
    core.eptp, core.eptp_valid = world.eptp, True
    regs = world.regs
    core._guest_taken(GuestLoad(None, regs.vpid, regs.paging, regs.wp, regs.nxe))
    core._guest_taken(GuestLoad(regs.cr3 >> 12, None, regs.paging, regs.wp, regs.nxe, cr3=regs.cr3))
    core._guest_sampled(True, True)
    return hist, core, NestedScoreboard(hist, world.config, needs_vpid=True)


def answer(core, la, access, ref, *, refused=False):
    """Take a linear request for ``la`` now and answer it with ``ref``'s architectural result."""
    lt = LinearTicket(la, access)
    core.linear_pending.append(lt)
    lt.tag = core.linear_free_tags[0]
    core._accept_linear(lt)
    if refused:
        raw = LINEAR_RESPONSE.pack(outcome=5, tag=lt.tag)
    else:
        from hw.layouts import LinearOutcome
        sizes = {4096: 0, 1 << 21: 1, 1 << 30: 2}
        raw = LINEAR_RESPONSE.pack(outcome=LinearOutcome[ref.outcome.name].value, gpa=ref.gpa or 0,
                                   hpa=ref.hpa or 0, page_size=sizes.get(ref.page_size, 0),
                                   memtype=ref.memtype or 0, pf_error=ref.pf_error or 0, qual=ref.qual or 0,
                                   tag=lt.tag)
    core._complete_linear(raw)
    return lt


def remap(world, la, gpa, level=Level.PTE):
    world.gwrite(world.guest_entry_gpa(la, level), make_leaf_entry(gpa, level))


def model_on_copy(world, la, access=Access.READ, user=False):
    copy = PhysicalMemory(world.config.maxphyaddr)
    for a, v in world.mem.nonzero_words():
        copy.write(a, v)
    return translate_la(copy, world.eptp, world.regs, la, access, user, world.config)


@pytest.mark.parametrize("inval", [None, "address", "single", "all", "cr3", "invept"])
def test_stale_combined_mapping_only_until_the_covering_invalidation(inval):
    w = World()
    hist, core, sb = setup(w)
    old = model_on_copy(w, LA + 8)
    remap(w, LA, NEW_GPA)                       # a guest PTE change, no invalidation yet
    new = model_on_copy(w, LA + 8)
    assert (old.gpa, new.gpa) == (OLD_GPA + 8, NEW_GPA + 8)
    if inval is None:
        pass
    elif inval == "cr3":
        core._guest_taken(GuestLoad(w.regs.cr3 >> 12, None, True, True, True, cr3=w.regs.cr3))
    elif inval == "invept":
        core._invept_taken((1, 0, hist.seq))                  # global
    else:
        core._invvpid_taken(({"address": 0, "single": 1, "all": 2}[inval], w.regs.vpid, LA, hist.seq))
    assert sb.check(answer(core, LA + 8, Access.READ, new))        # fresh: always right
    stale_ok = sb.check(answer(core, LA + 8, Access.READ, old))
    assert stale_ok == (inval is None), sb.mismatches
    if not stale_ok:
        msg = sb.mismatches[-1]
        assert f"LA {LA + 8:#x} read supervisor: expected ok gpa={NEW_GPA + 8:#x}" in msg
        assert f"got ok gpa={OLD_GPA + 8:#x}" in msg and "cycle" in msg


def test_invalidations_that_do_not_cover_it_keep_the_stale_mapping_legal():
    w = World()
    hist, core, sb = setup(w)
    old = model_on_copy(w, LA)
    remap(w, LA, NEW_GPA)
    core._invvpid_taken((0, w.regs.vpid, LA + 0x1000, hist.seq))        # another page
    core._invvpid_taken((1, w.regs.vpid + 1, 0, hist.seq))              # another VPID
    core._invvpid_taken((0, 0, LA, hist.seq))                            # VPID 0: refused by the unit
    core._invept_taken((0, w.eptp.tag + 1, hist.seq))                    # another EP4TA
    assert sb.check(answer(core, LA, Access.READ, old)), sb.mismatches


def test_invvpid_address_in_the_same_large_page_drops_the_2m_mapping():
    w = World()
    la = LA & ~((1 << 21) - 1)
    hist, core, sb = setup(w, Level.PDE, la)
    new_2m = OLD_GPA + (1 << 21)
    w.ept_map(OLD_GPA + 0x5000)
    w.ept_map(new_2m + 0x5000)
    old = model_on_copy(w, la + 0x5000)
    assert old.page_size == 1 << 21 and old.outcome is LaOutcome.OK
    remap(w, la, new_2m, Level.PDE)
    core._invvpid_taken((0, w.regs.vpid, la + 0x1F_F000, hist.seq))     # the same 2M page, another 4K
    assert sb.check(answer(core, la + 0x5000, Access.READ, model_on_copy(w, la + 0x5000)))
    assert not sb.check(answer(core, la + 0x5000, Access.READ, old))
    assert "INVVPID of its page" in sb.mismatches[-1]
    # a 4K INVVPID elsewhere in the page would not do for a 4K mapping: see the test above


def test_not_present_fault_is_never_from_a_cache():
    w = World()
    hist, core, sb = setup(w)
    pte = w.guest_entry_gpa(LA, Level.PTE)
    saved = w.gread(pte)
    w.gwrite(pte, 0)
    fault = model_on_copy(w, LA)
    assert fault.outcome is LaOutcome.PAGE_FAULT
    w.gwrite(pte, saved)          # present again before the request: a #PF now is stale
    assert not sb.check(answer(core, LA, Access.READ, fault))
    assert sb.check(answer(core, LA, Access.READ, model_on_copy(w, LA)))


def test_refusal_and_a_wrong_answer():
    w = World()
    hist, core, sb = setup(w)
    assert not sb.check(answer(core, LA, Access.READ, None, refused=True))    # everything was valid
    core.vpid_valid = False
    assert sb.check(answer(core, LA, Access.READ, None, refused=True))
    core.vpid_valid = True
    wrong = model_on_copy(w, LA + 0x1000)                    # not mapped: a #PF
    assert not sb.check(answer(core, LA, Access.READ, wrong))
    assert "expected ok" in sb.mismatches[-1] and "got page_fault" in sb.mismatches[-1]


def test_memo_answers_repeats_without_a_walk_and_forgets_on_change():
    w = World()
    hist, core, sb = setup(w)
    ref = model_on_copy(w, LA)
    for k in range(5):
        assert sb.check(answer(core, LA + 8 * k, Access.READ, model_on_copy(w, LA + 8 * k)))
    assert sb.memo_hits == 4 and sb.candidates_run == 1
    remap(w, LA, NEW_GPA)
    core._invvpid_taken((0, w.regs.vpid, LA, hist.seq))
    assert not sb.check(answer(core, LA, Access.READ, ref))          # the memo was forgotten
    assert sb.candidates_run >= 2


# -- the rtl backend: stale mapping without INVVPID, only the new one after ---------------------------

def test_rtl_guest_pte_change_then_invvpid():
    from sim.backends.pysim import PysimBackend
    w = World(ad=True)
    w.guest_map(LA, OLD_GPA)
    w.ept_map(NEW_GPA)
    b = PysimBackend(w.mem, w.config, nested=True)
    try:
        b.load_eptp(w.eptp.encode())
        b.load_guest(w.regs)
        first, _ = b.translate_la(LA, Access.READ)
        assert first.gpa == OLD_GPA
        pte = w.guest_entry_gpa(LA, Level.PTE)
        b.write(w.hpa_of(pte), make_leaf_entry(NEW_GPA, Level.PTE))     # no INVVPID
        stale, cycles = b.translate_la(LA, Access.READ)
        assert stale.gpa == OLD_GPA and cycles == 1                       # a combined-TLB hit, accepted
        assert b.failures == 0, b.mismatches
        b.invvpid("address", LA)
        fresh, _ = b.translate_la(LA, Access.READ)
        assert fresh.gpa == NEW_GPA
        assert b.failures == 0, b.mismatches
        # the same request answered with the old mapping after the INVVPID: a mismatch
        from dataclasses import replace
        last = b.harness.completed[-1]
        assert last.gpa == NEW_GPA
        sb = b.la_scoreboard
        assert not sb.check(replace(last, gpa=OLD_GPA, hpa=w.hpa_of(OLD_GPA)))
        assert f"got ok gpa={OLD_GPA:#x}" in sb.mismatches[-1]
        sb.failed, sb.mismatches = 0, []
        # a GPA translation alongside, on the GPA port
        t, cycles = b.translate(NEW_GPA, Access.WRITE)
        assert t.hpa == w.hpa_of(NEW_GPA) and cycles >= 1
        c = b.counters()
        assert c["lookups"] > 0 and c["ctlb_hits"] == 1 and c["invvpids"] == 1 and c["linear_lookups"] == 3
    finally:
        b.close()


# -- hypothesis: random worlds through the rtl backend ------------------------------------------------

_BACKEND = {}


def backend():
    """One nested rtl backend for every example (elaborating one takes ~1 s): each
    example rebuilds the memory, then INVEPT global + a guest-context load flush it."""
    if "b" not in _BACKEND:
        from sim.backends.pysim import PysimBackend
        mem = PhysicalMemory(46)
        _BACKEND["mem"] = mem
        _BACKEND["b"] = PysimBackend(mem, World().config, nested=True)
    return _BACKEND["b"], _BACKEND["mem"]


LEVELS3 = [Level.PTE, Level.PDE, Level.PDPTE]
TWEAKS = ["none", "guest_not_present", "guest_reserved", "guest_ro", "guest_supervisor", "guest_xd",
          "ept_table_unmapped", "ept_table_read_only", "ept_final_read_only", "ept_final_no_x",
          "ept_misconfig"]
ACCESSES = [Access.READ, Access.WRITE, Access.FETCH]


@st.composite
def worlds(draw):
    return dict(
        ad=draw(st.booleans()),
        guest_level=draw(st.sampled_from(LEVELS3)),
        ept_level=draw(st.sampled_from(LEVELS3)),
        tweak=draw(st.sampled_from(TWEAKS)),
        tweak_level=draw(st.sampled_from([Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE])),
        la_off=draw(st.integers(0, (1 << 30) - 1)) & ~7,
        wp=draw(st.booleans()),
        reqs=draw(st.lists(st.tuples(st.sampled_from(ACCESSES), st.booleans()), min_size=1, max_size=3)),
    )


LA_BASE = 0x0000_4000_0000_0000 | 0x40_0000_0000     # 1G-aligned: room for every page size
DATA_GPA = 0x8000_0000


def build(p) -> World:
    w = World(ad=p["ad"], wp=p["wp"])
    gl, el = p["guest_level"], p["ept_level"]
    size = gl.page_size
    la = LA_BASE + (p["la_off"] & (size - 1))
    w.guest_map(LA_BASE, DATA_GPA, gl, ept=False)
    # EPT maps the data region with leaves of ept_level (at least 4K; all of the guest page reachable)
    esize = el.page_size
    epage = (DATA_GPA + (la - LA_BASE)) & ~(esize - 1)
    perms = {"ept_final_read_only": EPT_R, "ept_final_no_x": EPT_R | EPT_W}.get(p["tweak"], EPT_RWX)
    w.ept_map(epage, 0x2_0000_0000 + (epage & ((1 << 31) - 1)), perms=perms, level=el)
    t, lv = p["tweak"], p["tweak_level"]
    if t.startswith("guest_"):
        lv = gl if lv.value < gl.value or t in ("guest_ro", "guest_supervisor", "guest_xd") else lv
        a = w.guest_entry_gpa(LA_BASE, lv)
        e = w.gread(a)
        e = {"guest_not_present": 0, "guest_reserved": e | 1 << 45, "guest_ro": e & ~2,
             "guest_supervisor": e & ~4, "guest_xd": e | PG_XD}[t]
        w.gwrite(a, e)
    elif t in ("ept_table_unmapped", "ept_table_read_only", "ept_misconfig"):
        lv = gl if lv.value < gl.value else lv
        page = w.guest_entry_gpa(LA_BASE, lv) & ~0xFFF
        leaf = w.ept_leaf_addr(page)
        if t == "ept_table_unmapped":
            w.mem.write(leaf, 0)
        elif t == "ept_table_read_only":
            w.mem.write(leaf, w.mem.peek(leaf) & ~0b110)
        else:
            w.mem.write(leaf, ept_leaf(w.hpa_of(page), Level.PTE, EPT_W | EPT_X))    # W without R
    return w, la


def run_example(p):
    b, mem = backend()
    w, la = build(p)
    ref, _ = build(p)
    for a, _ in list(mem.nonzero_words()):
        mem.write(a, 0)
    for a, v in w.mem.nonzero_words():
        mem.write(a, v)
    b.invept("global")
    b.load_eptp(w.eptp.encode())
    b.load_guest(w.regs)
    failures = b.failures
    outcomes = []
    for access, user in p["reqs"]:
        got, _ = b.translate_la(la, access, user)
        want = translate_la(ref.mem, ref.eptp, ref.regs, la, access, user, ref.config)
        assert got.architectural() == want.architectural(), (got, want.reason)
        outcomes.append(want.outcome)
    assert b.failures == failures, b.mismatches[-3:]
    assert dict(mem.nonzero_words()) == dict(ref.mem.nonzero_words())
    return outcomes


def test_every_outcome_is_reachable_by_the_generator():
    seen = set()
    for tweak in TWEAKS:
        p = dict(ad=True, guest_level=Level.PTE, ept_level=Level.PTE, tweak=tweak, tweak_level=Level.PTE,
                 la_off=0, wp=True, reqs=[(Access.WRITE, True)])
        w, la = build(p)
        seen.add(translate_la(w.mem, w.eptp, w.regs, la, Access.WRITE, True, w.config).outcome)
    assert seen == set(LaOutcome)


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=40, **_SETTINGS)
@given(worlds())
def test_cosim_random_worlds(p):
    run_example(p)


@pytest.mark.slow
@settings(max_examples=300, **_SETTINGS)
@given(worlds())
def test_cosim_random_worlds_many(p):
    run_example(p)


def test_guest_os_workload_on_rtl_is_checked_by_the_nested_scoreboard():
    from sim.cosim.guest_os import GuestOsOptions, run_guest_os
    s = run_guest_os(GuestOsOptions(accesses=160, host_frames=300, timeslice=40), "rtl")
    assert s["mismatches"] == 0, s["mismatch_details"]
    c = s["counters"]
    assert c["guest_walks"] > 0 and c["guest_page_faults"] > 0 and c["context_switches"] >= 3
    u = s["unit_counters"]
    # every access went to the unit (its combined TLB caches, not the workload's)
    assert s["nested_scoreboard"]["checked"] == u["linear_lookups"] >= s["accesses"]
    assert u["ctlb_hits"] > 0 and c["tlb_hits"] == u["ctlb_hits"]
    assert u["ctlb_hits"] + u["ctlb_misses"] == u["linear_lookups"]
    assert c["guest_walks"] == u["guest_walks"] and u["lookups"] > 0
    assert s["tlb"]["dtlb_hits"] == s["tlb"]["itlb_hits"] == 0


def test_rtl_with_the_host_racing_guest_and_ept_entries():
    """Guest PTEs and EPT leaves change between cycles while 2D walks are in flight
    (no invalidation): every answer must still be one the windows allow."""
    import random
    from sim.backends.pysim import PysimBackend
    w = World(ad=True)
    las = [LA + k * 0x1000 for k in range(4)]
    gpas = [OLD_GPA + k * 0x1000 for k in range(8)]
    for k, la in enumerate(las):
        w.guest_map(la, gpas[k])
    for g in gpas:
        w.ept_map(g)
    ptes = [w.hpa_of(w.guest_entry_gpa(la, Level.PTE)) for la in las]
    leaves = [w.ept_leaf_addr(g) for g in gpas]
    rng = random.Random(5)
    b = PysimBackend(w.mem, w.config, nested=True)
    changes = [0]

    def host(cycle):
        if rng.random() < 0.08:
            k = rng.randrange(len(ptes))
            b.write(ptes[k], make_leaf_entry(rng.choice(gpas), Level.PTE, rw=rng.random() < 0.7))
            changes[0] += 1
        if rng.random() < 0.04:
            a = rng.choice(leaves)
            e = w.mem.peek(a)
            b.write(a, e ^ EPT_W if rng.random() < 0.5 else e & ~0x300)
            changes[0] += 1
    try:
        b.load_eptp(w.eptp.encode())
        b.load_guest(w.regs)
        b.add_hook(host)
        outcomes = set()
        for n in range(60):
            t, _ = b.translate_la(rng.choice(las) + 8 * rng.randrange(512), rng.choice(ACCESSES[:2]),
                                  rng.random() < 0.5)
            outcomes.add(t.outcome)
            if n % 20 == 19:
                b.invvpid("single")
        assert b.failures == 0, b.mismatches[:3]
        assert changes[0] > 20 and LaOutcome.OK in outcomes and len(outcomes) >= 2
        assert b.la_scoreboard.alternatives_used > 0          # answers of older states were needed
    finally:
        b.close()


def test_harness_numbers_of_the_nested_ports_are_the_layouts():
    from hw import layouts
    from sim.cosim import harness
    for fields, layout in ((harness.LINEAR_REQUEST, layouts.LinearRequest),
                           (harness.LINEAR_RESPONSE, layouts.LinearResponse),
                           (harness.INVVPID_REQUEST, layouts.InvvpidRequest),
                           (harness.NESTED_COUNTERS, layouts.NestedCounters)):
        for name, f in layout:
            assert fields.field(name) == (f.offset, (1 << f.width) - 1), name
    assert harness.NESTED_EVENTS == list(layouts.NESTED_EVENTS)
    assert harness.INVVPID_KINDS == {k.name.lower(): k.value for k in layouts.InvvpidKind}
    assert not set(harness.NESTED_EVENTS) & set(harness.PERF_EVENTS)       # one flat counters() dict
