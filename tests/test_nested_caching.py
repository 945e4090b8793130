"""hw.nested_top.NestedWalkUnit's caches in pysim: the combined TLB (LA -> HPA, tagged
by VPID and EPT context), the guest paging-structure caches, VPID, INVVPID, MOV to
CR3 and INVEPT, against the reference's §10 and the golden model.

The pattern of each invalidation test: fill mappings, change the tables *without*
invalidating -- the old translation is still served, from the combined TLB (one
cycle, ``ctlb_hits`` up), and it is legal (the model's answer on the old tables);
then the covering invalidation -- the new translation (the model's on the new
tables).  Mappings an operation is not required to drop are checked to be still
served where this implementation keeps them (over-invalidation would be legal too;
where the RTL drops more than required, the test says so)."""

from functools import partial

import pytest
from nested_util import (
    HOST_OFFSET, NestedBench, World, clone_memory, compare_la, la_req, model_la,
)

from hw import layouts
from hw.layouts import InveptKind, LinearOutcome
from model.formats import EPT_D, Access, Eptp, Level, MemType, make_leaf_entry as ept_leaf
from model.guest import PG_D, la_index, make_leaf_entry

HAS_CACHES = hasattr(layouts, "InvvpidRequest")     # the caching unit: VPID, INVVPID, hits pass walks
pytestmark = pytest.mark.skipif(not HAS_CACHES, reason="the unit has no combined TLB / VPID / INVVPID yet")
if HAS_CACHES:
    from hw.layouts import InvvpidKind

LA_A = 0x0000_1234_5678_9000
LA_B = LA_A + 0x1000                    # the same guest PT
LA_C = LA_A + (1 << 21)                 # the same PD, another PT
LA_D = LA_A + (1 << 30)                 # the same PDPT, another PD
LA_E = LA_A + (1 << 39)                 # another PDPT
LA_2M = LA_A & ~((1 << 21) - 1)         # 2M-aligned (in LA_A's PD)
GPA = {LA_A: 0x4000_0000, LA_B: 0x4000_1000, LA_C: 0x4000_2000, LA_D: 0x4000_3000, LA_E: 0x4000_4000}
NEW_GPA = 0x5000_0000                   # where a changed guest PTE points
NEW_HPA = 0x7_0000_0000
LATENCY = 2


def cache_world(ad=False):
    w = World(ad=ad)
    for la, gpa in GPA.items():
        w.guest_map(la, gpa)
    for k in range(len(GPA)):
        w.ept_map(NEW_GPA + k * 0x1000)
    return w


def repoint(w, la, k=0):
    """The guest OS changes LA's PTE to NEW_GPA + k pages (no invalidation)."""
    w.gwrite(w.guest_entry_gpa(la, Level.PTE), make_leaf_entry(NEW_GPA + k * 0x1000, Level.PTE))


class Probe:
    """Runs accesses on a bench, each checked against the model on a shadow world kept in
    step with the RTL's (``shadow``), and says whether it was a combined-TLB hit."""

    def __init__(self, bench, world):
        self.bench, self.world = bench, world
        self.log = []

    async def access(self, ctx, la, access=Access.READ, user=False, tag=1):
        before = await self.bench.counters(ctx)
        n = self.bench.dram.count
        resp, cycles = await self.bench.linear(ctx, la, access, user, tag=tag)
        await self.bench.idle(ctx)
        after = await self.bench.counters(ctx)
        delta = {k: after[k] - before[k] for k in after}
        hit = delta["ctlb_hits"] == 1
        if hit:        # a hit: one cycle, no memory traffic, no walk
            assert cycles == 1, cycles
            assert self.bench.dram.count == n and delta["guest_walks"] == 0
        else:
            assert delta["ctlb_misses"] == 1 and delta["guest_walks"] == 1, delta
        self.log.append((la, access, user, resp, hit, delta))
        return resp, hit, delta


def model_on(world, la, access=Access.READ, user=False):
    """The model's answer on a copy of ``world``'s memory now (the world untouched)."""
    w = cache_world(world.eptp.ad_enabled)
    w.mem = clone_memory(world.mem)
    w.eptp, w.regs = world.eptp, world.regs
    return model_la(w, la, access, user)


def run_script(world, script, **bench_args):
    bench = NestedBench(world, latency=LATENCY, **bench_args)
    probe = Probe(bench, world)

    async def tb(ctx):
        assert await bench.load_context(ctx) == (1, 0, 1)
        assert ctx.get(bench.dut.vpid_valid) == 1
        await script(ctx, bench, probe)

    bench.run(tb, deadline_cycles=100_000)
    return bench, probe


# Most cases share one simulation (building the unit costs about a second): each case is a
# builder returning (world, script); the group runs every script on its fresh world with
# every cache emptied (INVEPT all, INVVPID all), and each test reports its own case.

CASES = {}           # name -> builder() -> (world, async script(ctx, bench, probe))
_group = {}


def case(name):
    def register(builder):
        CASES[name] = builder
        return builder
    return register


def run_cases():
    """Run every registered case in one simulation (cached): {name: AssertionError or None}."""
    if _group:
        return _group
    built = {name: builder() for name, builder in CASES.items()}
    first = next(iter(built.values()))[0]
    bench = NestedBench(first, latency=LATENCY)

    async def tb(ctx):
        for name, (w, script) in built.items():
            try:
                await bench.fresh(ctx, w)
                await bench.invvpid(ctx, InvvpidKind.ALL, 0)
                assert ctx.get(bench.dut.vpid_valid) == 1
                await script(ctx, bench, Probe(bench, w))
                _group[name] = None
            except AssertionError as e:
                _group[name] = e
                ctx.set(bench.dut.linear_req.valid, 0)      # withdraw, and drain what is in flight
                ctx.set(bench.dut.translate_req.valid, 0)
                ctx.set(bench.dut.linear_resp.ready, 1)
                for _ in range(2000):
                    await ctx.tick()
                ctx.set(bench.dut.linear_resp.ready, 0)

    bench.run(tb, deadline_cycles=100_000 * len(built))
    return _group


def check_case(name):
    error = run_cases()[name]
    if error is not None:
        raise error


async def expect(ctx, probe, la, *, hit, access=Access.READ, user=False, old=None, tag=1):
    """An access that must hit (and answer ``old``, the model's answer before the change) or
    walk (and answer as the model on the tables now)."""
    w = probe.world
    ref_now = model_on(w, la, access, user)
    resp, was_hit, delta = await probe.access(ctx, la, access, user, tag)
    assert was_hit == hit, (hex(la), "hit" if was_hit else "walk", delta)
    compare_la(resp, old if hit and old is not None else ref_now, tag)
    if not hit:
        model_la(w, la, access, user)           # the model's A/D land too (nothing differs)
    return resp, delta


# -- hits, fills, the guest paging-structure caches --------------------------------------------

@case("a_combined_tlb_hit_answers_in_one_cycle")
def _a_combined_tlb_hit_answers_in_one_cycle():
    w = cache_world()

    async def script(ctx, bench, probe):
        first, d0 = await expect(ctx, probe, LA_A, hit=False)
        assert first.outcome == LinearOutcome.OK
        second, d1 = await expect(ctx, probe, LA_A, hit=True)
        assert (second.gpa, second.hpa, second.page_size) == (first.gpa, first.hpa, first.page_size)
        assert d1["linear_lookups"] == 1 and d1["guest_mem_reads"] == 0 and d1["ept_lookups"] == 0
        # another offset in the page hits too
        resp, _, _ = await probe.access(ctx, LA_A + 0x888)
        assert probe.log[-1][4] and resp.hpa == first.hpa - (LA_A & 0xFFF) + 0x888

    return w, script


def test_a_combined_tlb_hit_answers_in_one_cycle():
    check_case("a_combined_tlb_hit_answers_in_one_cycle")


def _fills_allow_only_what_the_walk_proved(ad):
    """A read fill reads only: a write walks (and sets guest D, EPT D with EPTP[6] = 1), then
    hits; a fetch fill fetches only; a CPL-0 fill does not serve CPL 3, a CPL-3 fill serves
    CPL 0."""
    w = cache_world(ad)

    async def script(ctx, bench, probe):
        pte = w.guest_entry_gpa(LA_A, Level.PTE)
        await expect(ctx, probe, LA_A, hit=False)                         # a read fill
        await expect(ctx, probe, LA_A, hit=True)
        assert not w.gread(pte) & PG_D
        _, d = await expect(ctx, probe, LA_A, access=Access.WRITE, hit=False)    # needs D: walks
        assert d["guest_mem_cas"] >= 1 and w.gread(pte) & PG_D
        if ad:
            assert w.mem.peek(w.ept_leaf_addr(GPA[LA_A])) & EPT_D
        await expect(ctx, probe, LA_A, access=Access.WRITE, hit=True)     # a write fill: both
        await expect(ctx, probe, LA_A, hit=True)
        await expect(ctx, probe, LA_A, access=Access.FETCH, hit=False)    # fetch never proved
        await expect(ctx, probe, LA_A, access=Access.FETCH, hit=True)
        # CPL
        await expect(ctx, probe, LA_B, hit=False)                         # CPL 0 fill
        await expect(ctx, probe, LA_B, user=True, hit=False)              # CPL 3 walks
        await expect(ctx, probe, LA_C, user=True, hit=False)              # CPL 3 fill
        await expect(ctx, probe, LA_C, user=True, hit=True)
        await expect(ctx, probe, LA_C, user=False, hit=True)              # serves CPL 0

    return w, script


for _ad in (False, True):
    case(f"fills_allow_only_what_the_walk_proved[{_ad!r}]")(
        partial(_fills_allow_only_what_the_walk_proved, _ad))


@pytest.mark.parametrize("ad", [False, True], ids=["eptp6=0", "eptp6=1"])
def test_fills_allow_only_what_the_walk_proved(ad):
    check_case(f"fills_allow_only_what_the_walk_proved[{ad!r}]")


@case("guest_psc_hits_are_counted_per_level")
def _guest_psc_hits():
    w = cache_world()

    async def script(ctx, bench, probe):
        _, d = await expect(ctx, probe, LA_A, hit=False)
        # EPT translations: each entry read, the final GPA, and (EPTP[6] = 0) the write check of
        # each entry's A update
        assert d["guest_mem_reads"] == 4 and d["ept_lookups"] == 4 + 1 + 4
        assert d["gpsc_hits_pml4e"] + d["gpsc_hits_pdpte"] + d["gpsc_hits_pde"] == 0
        for la, level, reads in ((LA_B, "pde", 1), (LA_C, "pdpte", 2), (LA_D, "pml4e", 3)):
            _, d = await expect(ctx, probe, la, hit=False)
            hits = {lv: d[f"gpsc_hits_{lv}"] for lv in ("pml4e", "pdpte", "pde")}
            assert hits == {lv: int(lv == level) for lv in hits}, (hex(la), hits)
            # the cached entry gives the HPA of the first table read: one EPT translation fewer
            assert d["guest_mem_reads"] == reads and d["ept_lookups"] == 2 * reads, (hex(la), d)
        _, d = await expect(ctx, probe, LA_E, hit=False)     # another PDPT: from the PML4E
        assert d["guest_mem_reads"] == 4
        w_ref = cache_world()
        for la in (LA_A, LA_B, LA_C, LA_D, LA_E):
            model_la(w_ref, la)
        assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())

    return w, script


def test_guest_psc_hits_are_counted_per_level():
    check_case("guest_psc_hits_are_counted_per_level")


# -- refusals -----------------------------------------------------------------------------------

def test_no_vpid_and_vpid_0_are_refused():
    w = cache_world()
    bench = NestedBench(w, latency=LATENCY)
    out = {}

    async def tb(ctx):
        assert await bench.load_context(ctx, vpid=False) == (1, 0, 1)     # CR3 and EPTP, no VPID
        assert (ctx.get(bench.dut.vpid_valid), ctx.get(bench.dut.vpid_error)) == (0, 0)
        out["none"] = (await bench.linear(ctx, LA_A, tag=4))[0]
        out["vpid0"] = await bench.set_vpid(ctx, 0)
        out["after0"] = (await bench.linear(ctx, LA_A, tag=5))[0]
        out["vpid7"] = await bench.set_vpid(ctx, 7)
        out["after7"] = (await bench.linear(ctx, LA_A, tag=6))[0]
        out["vpid0_again"] = await bench.set_vpid(ctx, 0)       # refused: no VPID any more
        out["after0_again"] = (await bench.linear(ctx, LA_A, tag=7))[0]

    bench.run(tb)
    assert out["none"].outcome == LinearOutcome.REFUSED and out["none"].tag == 4
    assert out["vpid0"] == (0, 1)
    assert out["after0"].outcome == LinearOutcome.REFUSED
    assert out["vpid7"] == (1, 0)
    compare_la(out["after7"], model_la(cache_world(), LA_A), tag=6)
    assert out["vpid0_again"] == (0, 1)
    assert out["after0_again"].outcome == LinearOutcome.REFUSED
    # the refused requests walked nothing: the only memory traffic is the one walk's
    w_ref = cache_world()
    model_la(w_ref, LA_A)
    assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())


@case("refused_invvpids_drop_nothing")
def _refused_invvpids():
    w = cache_world()
    errors = []

    async def script(ctx, bench, probe):
        await expect(ctx, probe, LA_A, hit=False)
        old = model_on(w, LA_A)
        repoint(w, LA_A)
        refused = [(InvvpidKind.ADDRESS, 0, LA_A), (InvvpidKind.SINGLE, 0, 0),
                   (InvvpidKind.SINGLE_KEEP_GLOBAL, 0, 0),
                   (InvvpidKind.ADDRESS, 1, 0x0000_8000_0000_0000),     # bit 47 set, 63:48 clear
                   (InvvpidKind.ADDRESS, 1, 0xFFFF_0000_0000_0000 | LA_A)]   # 63:48 set, 47 clear
        for kind, vpid, la in refused:
            await bench.invvpid(ctx, kind, vpid, la)
            errors.append(ctx.get(bench.dut.invvpid_error))
            await expect(ctx, probe, LA_A, hit=True, old=old)
            errors.append(ctx.get(bench.dut.invvpid_error))          # stays up
        # a canonical high LA is accepted (nothing of ours there), and clears the error
        await bench.invvpid(ctx, InvvpidKind.ADDRESS, 1, 0xFFFF_8000_0000_0000)
        errors.append(ctx.get(bench.dut.invvpid_error))
        await expect(ctx, probe, LA_A, hit=True, old=old)
        await bench.invvpid(ctx, InvvpidKind.ALL, 0, 0)
        errors.append(ctx.get(bench.dut.invvpid_error))
        await expect(ctx, probe, LA_A, hit=False)

    return w, script


def test_refused_invvpids_drop_nothing():
    """INVVPID with VPID 0 (ADDRESS, SINGLE, SINGLE_KEEP_GLOBAL) or a non-canonical LA
    (ADDRESS): invvpid_error, until the next INVVPID taken; the mappings still hit.  ALL
    with VPID 0 is legal and drops everything."""
    check_case("refused_invvpids_drop_nothing")


# -- what each invalidation drops (§10) ----------------------------------------------------------
# Filled: VPID 1 LA_A, LA_B (reads) and VPID 2 LA_A, all under one EPTP; then LA_A's and
# LA_B's PTEs change.  After ``op`` (issued under VPID 1), which of (VPID 1 LA_A, VPID 1
# LA_B, VPID 2 LA_A) must show the new tables (True), and which this implementation still
# serves from the combined TLB (False: not required to drop).

OPS = {
    "invvpid_address": ((True, False, False), "INVVPID type 0: that VPID and LA only"),
    "invvpid_single": ((True, True, False), "INVVPID type 1: that VPID"),
    "invvpid_single_keep_global": ((True, True, False), "INVVPID type 3: as type 1 (no global pages)"),
    "invvpid_all": ((True, True, True), "INVVPID type 2: every VPID"),
    "mov_cr3": ((True, True, False), "MOV to CR3: the current VPID, all EP4TAs"),
    "invept_single": ((True, True, True), "INVEPT type 1: that EP4TA, all VPIDs"),
    "invept_all": ((True, True, True), "INVEPT type 2: everything"),
}


async def _do(ctx, bench, op, w):
    if op == "invvpid_address":
        await bench.invvpid(ctx, InvvpidKind.ADDRESS, 1, LA_A)
    elif op == "invvpid_single":
        await bench.invvpid(ctx, InvvpidKind.SINGLE, 1)
    elif op == "invvpid_single_keep_global":
        await bench.invvpid(ctx, InvvpidKind.SINGLE_KEEP_GLOBAL, 1)
    elif op == "invvpid_all":
        await bench.invvpid(ctx, InvvpidKind.ALL, 0)
    elif op == "mov_cr3":
        await bench.mov_cr3(ctx)
    elif op == "invept_single":
        await bench.invept(ctx, InveptKind.SINGLE, w.eptp.pml4_pa >> 12)
    else:
        await bench.invept(ctx, InveptKind.GLOBAL)
    await ctx.tick()


async def _invalidation_scenario(ctx, bench, probe, w, op):
    drops, _ = OPS[op]
    await expect(ctx, probe, LA_A, hit=False, tag=1)
    await expect(ctx, probe, LA_B, hit=False, tag=2)
    assert await bench.set_vpid(ctx, 2) == (1, 0)
    await expect(ctx, probe, LA_A, hit=False, tag=3)
    assert await bench.set_vpid(ctx, 1) == (1, 0)              # loading a VPID flushes nothing
    olds = {la: model_on(w, la) for la in (LA_A, LA_B)}
    repoint(w, LA_A, 0)
    repoint(w, LA_B, 1)
    # no invalidation yet: the old translations, from the combined TLB, both VPIDs
    await expect(ctx, probe, LA_A, hit=True, old=olds[LA_A])
    await expect(ctx, probe, LA_B, hit=True, old=olds[LA_B])
    assert await bench.set_vpid(ctx, 2) == (1, 0)
    await expect(ctx, probe, LA_A, hit=True, old=olds[LA_A])
    assert await bench.set_vpid(ctx, 1) == (1, 0)

    await _do(ctx, bench, op, w)
    for (vpid, la), drop in zip([(1, LA_A), (1, LA_B), (2, LA_A)], drops, strict=True):
        assert await bench.set_vpid(ctx, vpid) == (1, 0)
        resp, _ = await expect(ctx, probe, la, hit=not drop, old=olds[la])
        assert (resp.gpa & ~0xFFF != GPA[la]) == drop, (op, vpid, hex(la))
    # and then every one of them hits: the new translation where it walked, else the old
    for (vpid, la), drop in zip([(1, LA_A), (1, LA_B), (2, LA_A)], drops, strict=True):
        assert await bench.set_vpid(ctx, vpid) == (1, 0)
        await expect(ctx, probe, la, hit=True, old=model_on(w, la) if drop else olds[la])


def _invalidation_case(op):
    w = cache_world()

    async def script(ctx, bench, probe):
        await _invalidation_scenario(ctx, bench, probe, w, op)
    return w, script


for _op in OPS:
    case(f"invalidation[{_op}]")(partial(_invalidation_case, _op))


@pytest.mark.parametrize("op", list(OPS))
def test_each_invalidation_drops_its_mappings(op):
    check_case(f"invalidation[{op}]")


def _second_eptp(w):
    """A second EPT hierarchy over the same tables: a copy of the PML4 page elsewhere."""
    pml4 = 0x00F0_0000
    for off in range(0, 0x1000, 8):
        w.mem.write(pml4 + off, w.mem.peek(w.ept_pml4 + off))
    return Eptp(pml4_pa=pml4, memtype=MemType.WB, ad_enabled=w.eptp.ad_enabled)


def _invept_drops_combined_mappings_of_its_ep4ta(kind):
    """Combined mappings are tagged by EP4TA: INVEPT single drops those of its EP4TA, for
    every VPID, and (here) keeps another EP4TA's, whether its EP4TA is the current one
    (``single``) or not (``other``: INVEPT of B while A is loaded); INVEPT all drops both."""
    w = cache_world()
    eptp_a = w.eptp
    eptp_b = _second_eptp(w)

    async def script(ctx, bench, probe):
        await expect(ctx, probe, LA_A, hit=False)                         # EPTP A, VPID 1
        assert await bench.set_eptp(ctx, eptp_b) == 1
        await expect(ctx, probe, LA_A, hit=False)                         # EPTP B: its own entry
        old = model_on(w, LA_A)
        repoint(w, LA_A)
        await expect(ctx, probe, LA_A, hit=True, old=old)
        assert await bench.set_eptp(ctx, eptp_a) == 1
        await expect(ctx, probe, LA_A, hit=True, old=old)
        if kind == "single":
            await bench.invept(ctx, InveptKind.SINGLE, eptp_a.pml4_pa >> 12)
        elif kind == "other":
            await bench.invept(ctx, InveptKind.SINGLE, eptp_b.pml4_pa >> 12)
        else:
            await bench.invept(ctx, InveptKind.GLOBAL)
        await ctx.tick()
        await expect(ctx, probe, LA_A, hit=kind == "other", old=old)     # A: new, or kept
        assert await bench.set_eptp(ctx, eptp_b) == 1
        await expect(ctx, probe, LA_A, hit=kind == "single", old=old)     # B: kept, or new

    return w, script


for _kind in ("single", "other", "all"):
    case(f"invept_drops_combined_mappings_of_its_ep4ta[{_kind!r}]")(
        partial(_invept_drops_combined_mappings_of_its_ep4ta, _kind))


@pytest.mark.parametrize("kind", ["single", "other", "all"])
def test_invept_drops_combined_mappings_of_its_ep4ta(kind):
    check_case(f"invept_drops_combined_mappings_of_its_ep4ta[{kind!r}]")


# -- INVVPID does not drop guest-physical mappings --------------------------------------------

def _move_data_page(w, la):
    w.set_ept(GPA[la], Level.PTE, ept_leaf(NEW_HPA))


def _move_guest_pt(w, la):
    """The guest PT page moves (its EPT leaf), and the copy maps LA to NEW_GPA."""
    pt = w.guest_entry_gpa(la, Level.PTE) & ~0xFFF
    old_hpa = w.hpa_of(pt)
    for off in range(0, 0x1000, 8):
        w.mem.write(NEW_HPA + 0x1000 + off, w.mem.peek(old_hpa + off))
    w.mem.write(NEW_HPA + 0x1000 + la_index(la, Level.PTE) * 8, make_leaf_entry(NEW_GPA, Level.PTE))
    w.set_ept(pt, Level.PTE, ept_leaf(NEW_HPA + 0x1000))
    w.ept_pages[pt] = NEW_HPA + 0x1000


def _vpid_ops_keep_guest_physical_mappings(change, op):
    """An EPT change (the data page, or the page holding a guest table, moved): INVVPID or
    MOV CR3 drop the combined mapping and the guest PSC entries, but the EPT TLB still maps
    the old frame (neither is required to drop guest-physical mappings, and here neither
    does): the walk answers the old translation without one EPT walk.  INVEPT: the new one."""
    w = cache_world()
    move = {"data_page": _move_data_page, "guest_pt_page": _move_guest_pt}[change]

    async def script(ctx, bench, probe):
        await expect(ctx, probe, LA_A, hit=False)
        old = model_on(w, LA_A)
        move(w, LA_A)
        new = model_on(w, LA_A)
        assert new.hpa != old.hpa
        await expect(ctx, probe, LA_A, hit=True, old=old)
        if op == "invvpid":
            await bench.invvpid(ctx, InvvpidKind.SINGLE, 1)
        else:
            await bench.mov_cr3(ctx)
        resp, _, d = await probe.access(ctx, LA_A)
        assert not probe.log[-1][4], f"{op} kept the combined mapping"
        compare_la(resp, old, 1)                      # the stale EPT TLB entry, legal
        assert d["ept_lookups"] >= 1 and d["ept_walks"] == 0, d
        assert d["guest_mem_reads"] == 4, d           # the guest PSC entries went too
        await bench.invept(ctx, InveptKind.SINGLE, w.eptp.pml4_pa >> 12)
        await ctx.tick()
        await expect(ctx, probe, LA_A, hit=False)     # the new tables

    return w, script


VPID_OPS = [(change, op) for change in ("data_page", "guest_pt_page") for op in ("invvpid", "mov_cr3")]
for _change, _op in VPID_OPS:
    case(f"keeps_guest_physical[{_change}-{_op}]")(partial(_vpid_ops_keep_guest_physical_mappings, _change, _op))


@pytest.mark.parametrize("change,op", VPID_OPS)
def test_invvpid_and_mov_cr3_keep_guest_physical_mappings(change, op):
    check_case(f"keeps_guest_physical[{change}-{op}]")


@case("invvpid_address_drops_all_of_its_vpids_guest_psc_entries")
def _invvpid_address_psc():
    """Over-invalidation, documented: INVVPID type 0 drops every guest paging-structure
    cache entry of its VPID (they are not per page), not only those covering the LA; the
    combined mappings of other LAs stay."""
    w = cache_world()

    async def script(ctx, bench, probe):
        await expect(ctx, probe, LA_A, hit=False)
        _, d = await expect(ctx, probe, LA_B, hit=False)
        assert d["gpsc_hits_pde"] == 1
        await bench.invvpid(ctx, InvvpidKind.ADDRESS, 1, LA_E)       # an LA in another PDPT
        await expect(ctx, probe, LA_A, hit=True)                     # LA_A's combined entry stays
        _, d = await expect(ctx, probe, LA_C, hit=False)             # LA_C: a cold 2D walk
        assert d["gpsc_hits_pml4e"] + d["gpsc_hits_pdpte"] + d["gpsc_hits_pde"] == 0
        assert d["guest_mem_reads"] == 4

    return w, script


def test_invvpid_address_drops_all_of_its_vpids_guest_psc_entries():
    check_case("invvpid_address_drops_all_of_its_vpids_guest_psc_entries")


@case("hits_pass_a_walk_and_a_miss_waits_for_its_pages_walk")
def _hits_pass_walks():
    """Out of order: a hit taken while a 2D walk is in flight answers first (one cycle); a
    second miss on the page being walked waits for that walk and is then a hit."""
    w = cache_world()

    async def script(ctx, bench, probe):
        dut = bench.dut
        await expect(ctx, probe, LA_A, hit=False)
        before = await bench.counters(ctx)
        # offer the three requests in turn while taking every response as it comes
        offers = [la_req(LA_C, tag=4), la_req(LA_A, tag=5), la_req(LA_C + 0x10, tag=6)]
        taken, got = {}, []
        ctx.set(dut.linear_resp.ready, 1)
        for cycle in range(3000):
            ctx.set(dut.linear_req.valid, bool(offers))
            if offers:
                ctx.set(dut.linear_req.payload, offers[0])
            _, _, ready, valid, payload = await ctx.tick().sample(
                dut.linear_req.ready, dut.linear_resp.valid, dut.linear_resp.payload)
            if offers and ready:
                taken[offers.pop(0)["tag"]] = cycle
            if valid:
                got.append((payload, cycle))
            if len(got) == 3:
                break
        ctx.set(dut.linear_req.valid, 0)
        ctx.set(dut.linear_resp.ready, 0)
        assert [p.tag for p, _ in got] == [5, 4, 6], [p.tag for p, _ in got]
        (r5, c5), (r4, c4), (r6, c6) = got
        assert c5 == taken[5] + 1 and c4 > c5          # the hit: one cycle, before the walk's answer
        assert taken[6] >= c4 and c6 == taken[6] + 1   # LA_C's page: taken once walked, then a hit
        compare_la(r5, model_on(w, LA_A), 5)
        compare_la(r4, model_on(w, LA_C), 4)
        compare_la(r6, model_on(w, LA_C + 0x10), 6)
        after = await bench.counters(ctx)
        assert after["ctlb_hits"] - before["ctlb_hits"] == 2
        assert after["guest_walks"] - before["guest_walks"] == 1
        model_la(w, LA_C)

    return w, script


def test_hits_pass_a_walk_and_a_miss_waits_for_its_pages_walk():
    check_case("hits_pass_a_walk_and_a_miss_waits_for_its_pages_walk")


# -- sizes, context changes, cached permissions ----------------------------------------------------

def _fork_ept(w, gpa, new_hpa, at=0x00E0_0000):
    """A second EPT hierarchy: copies of the tables on ``gpa``'s path (from ``at`` up), the
    rest shared, and ``gpa``'s 4K leaf pointing at ``new_hpa``.  Returns its Eptp."""
    src = w.ept_pml4
    copies = []
    for k, lv in enumerate((Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE)):
        dst = at + k * 0x1000
        for off in range(0, 0x1000, 8):
            w.mem.write(dst + off, w.mem.peek(src + off))
        copies.append(dst)
        idx = (gpa >> (12 + 9 * (3 - k))) & 0x1FF
        if k:
            parent = copies[k - 1] + ((gpa >> (12 + 9 * (4 - k))) & 0x1FF) * 8
            w.mem.write(parent, (w.mem.peek(parent) & ~0x000F_FFFF_FFFF_F000) | dst)
        e = w.mem.peek(src + idx * 8)
        if lv == Level.PTE:
            w.mem.write(dst + idx * 8, ept_leaf(new_hpa))
        src = e & 0x000F_FFFF_FFFF_F000
    return Eptp(pml4_pa=copies[0], memtype=MemType.WB, ad_enabled=w.eptp.ad_enabled)


def test_a_reused_ept_context_id_drops_its_combined_mappings():
    """One EPT context (contexts=1): loading another EPTP reuses the context id, so the old
    EPTP's combined mappings must go (else the new EPTP would see the old HPA)."""
    w = cache_world()
    eptp_a = w.eptp
    eptp_b = _fork_ept(w, GPA[LA_A], NEW_HPA)

    async def script(ctx, bench, probe):
        resp_a, _ = await expect(ctx, probe, LA_A, hit=False)
        await expect(ctx, probe, LA_A, hit=True)
        assert await bench.set_eptp(ctx, eptp_b) == 1
        w.eptp = eptp_b
        resp_b, _ = await expect(ctx, probe, LA_A, hit=False)
        assert resp_b.hpa == NEW_HPA | (LA_A & 0xFFF) != resp_a.hpa
        assert await bench.set_eptp(ctx, eptp_a) == 1
        w.eptp = eptp_a
        resp, _ = await expect(ctx, probe, LA_A, hit=False)
        assert resp.hpa == resp_a.hpa

    run_script(w, script, contexts=1)


@case("a_guest_large_page_over_smaller_ept_pages_is_cached_at_the_ept_size")
def _a_guest_large_page_over_smaller_ept_pages_is_cached_at_the_ept_size():
    """A 2M guest page whose 4K EPT leaves are scattered: a hit may serve only the 4K page
    the walk translated; another 4K page of the 2M page walks (its own HPA).  A 2M guest page
    over a 2M EPT leaf: one entry serves the whole 2M page."""
    la_2m, la_big = LA_2M + (3 << 30), LA_2M + (4 << 30)
    w = cache_world()
    w.guest_map(la_2m, 0x6000_0000, Level.PDE)
    w.ept_map(0x6000_5000, hpa=NEW_HPA + 0x9000)               # far from 0x6000_0000's frame
    w.guest_map(la_big, 0x6020_0000, Level.PDE, ept=False)
    w.ept_map(0x6020_0000, level=Level.PDE)

    async def script(ctx, bench, probe):
        first, _ = await expect(ctx, probe, la_2m, hit=False)
        other, _ = await expect(ctx, probe, la_2m + 0x5000, hit=False)
        assert other.hpa == NEW_HPA + 0x9000
        assert first.page_size == other.page_size      # the guest's 2M, as the walk said
        await expect(ctx, probe, la_2m + 0x5000, hit=True)
        await expect(ctx, probe, la_big, hit=False)
        for off in (0x1000, 0x7_3000, 0x1F_F000):
            resp, _ = await expect(ctx, probe, la_big + off, hit=True)
            assert resp.hpa == 0x6020_0000 + HOST_OFFSET + off

    return w, script


def test_a_guest_large_page_over_smaller_ept_pages_is_cached_at_the_ept_size():
    check_case("a_guest_large_page_over_smaller_ept_pages_is_cached_at_the_ept_size")


@case("invvpid_address_drops_the_large_entry_covering_the_la")
def _invvpid_address_drops_the_large_entry_covering_the_la():
    """INVVPID type 0 at any LA inside a 2M combined mapping drops that mapping."""
    la_big = LA_2M + (4 << 30)
    w = cache_world()
    w.guest_map(la_big, 0x6020_0000, Level.PDE, ept=False)
    w.ept_map(0x6020_0000, level=Level.PDE)
    w.ept_map(0x6040_0000, level=Level.PDE)

    async def script(ctx, bench, probe):
        await expect(ctx, probe, la_big, hit=False)
        old = model_on(w, la_big + 0x3000)
        w.gwrite(w.guest_entry_gpa(la_big, Level.PDE), make_leaf_entry(0x6040_0000, Level.PDE))
        await expect(ctx, probe, la_big + 0x3000, hit=True, old=old)
        await bench.invvpid(ctx, InvvpidKind.ADDRESS, 1, la_big + 0x12_3456)
        resp, _ = await expect(ctx, probe, la_big + 0x3000, hit=False)
        assert resp.gpa == 0x6040_3000

    return w, script


def test_invvpid_address_drops_the_large_entry_covering_the_la():
    check_case("invvpid_address_drops_the_large_entry_covering_the_la")


@case("context_changes_drop_or_refuse")
def _context_changes_drop_or_refuse():
    """CR0.WP, CR0.PG changes drop the combined mappings (a fill under WP = 0 proved a
    supervisor write to a read-only page; under WP = 1 it must #PF); an invalid CR3
    load refuses even a request that would hit."""
    la_ro = LA_A + (5 << 30)
    w = cache_world()
    w.regs = type(w.regs)(cr3=w.regs.cr3, paging=True, wp=False, nxe=True)
    w.guest_map(la_ro, 0x6000_0000, rw=False)

    async def script(ctx, bench, probe):
        resp, _ = await expect(ctx, probe, la_ro, access=Access.WRITE, hit=False)
        assert resp.outcome == LinearOutcome.OK
        await expect(ctx, probe, la_ro, access=Access.WRITE, hit=True)
        ctx.set(bench.dut.wp, 1)
        w.regs = type(w.regs)(cr3=w.regs.cr3, paging=True, wp=True, nxe=True)
        await ctx.tick()
        resp, _ = await expect(ctx, probe, la_ro, access=Access.WRITE, hit=False)
        assert resp.outcome == LinearOutcome.PAGE_FAULT
        # CR0.PG = 0: the LA is a GPA; nothing cached under paging may answer it
        await expect(ctx, probe, LA_A, hit=False)
        ctx.set(bench.dut.paging, 0)
        w.regs = type(w.regs)(cr3=w.regs.cr3, paging=False, wp=True, nxe=True)
        await ctx.tick()
        w.ept_map(LA_A)                                       # LA_A as a GPA, mapped
        resp, _ = await expect(ctx, probe, LA_A, hit=False)
        assert resp.gpa == LA_A and resp.hpa == LA_A + HOST_OFFSET
        ctx.set(bench.dut.paging, 1)
        w.regs = type(w.regs)(cr3=w.regs.cr3, paging=True, wp=True, nxe=True)
        await ctx.tick()
        await expect(ctx, probe, LA_A, hit=False)
        await expect(ctx, probe, LA_A, hit=True)
        await bench.mov_cr3(ctx, 1 << 50)                     # CR3[51:46] set: refused
        assert (ctx.get(bench.dut.cr3_valid), ctx.get(bench.dut.cr3_error)) == (0, 1)
        resp, _ = await bench.linear(ctx, LA_A, tag=9)
        assert resp.outcome == LinearOutcome.REFUSED and resp.tag == 9

    return w, script


def test_context_changes_drop_or_refuse():
    check_case("context_changes_drop_or_refuse")


def _psc_perm_world(bit):
    from model.guest import PG_RW, PG_US, PG_XD
    w = cache_world()
    pml4e = w.guest_entry_gpa(LA_A, Level.PML4E)
    w.gwrite(pml4e, w.gread(pml4e) & ~{"us": PG_US, "rw": PG_RW, "xd": 0}[bit]
             | {"us": 0, "rw": 0, "xd": PG_XD}[bit])
    return w


async def _psc_perm_scenario(ctx, bench, probe, w, bit):
    denied = {"us": (Access.READ, True), "rw": (Access.WRITE, False), "xd": (Access.FETCH, False)}[bit]
    resp, _ = await expect(ctx, probe, LA_A, hit=False)            # a supervisor read fill
    assert resp.outcome == LinearOutcome.OK
    resp, d = await expect(ctx, probe, LA_B, access=denied[0], user=denied[1], hit=False)
    assert d["gpsc_hits_pde"] == 1
    assert resp.outcome == LinearOutcome.PAGE_FAULT, resp


def _psc_perm_case(bit):
    w = _psc_perm_world(bit)

    async def script(ctx, bench, probe):
        await _psc_perm_scenario(ctx, bench, probe, w, bit)
    return w, script


for _bit in ("us", "rw", "xd"):
    case(f"psc_perms[{_bit}]")(partial(_psc_perm_case, _bit))


@pytest.mark.parametrize("bit", ["us", "rw", "xd"])
def test_a_guest_psc_hit_keeps_the_upper_levels_permissions(bit):
    """The PML4E denies (U/S = 0, R/W = 0, or XD = 1); a PDE-cache hit for another page of
    the same PT must still deny: the cached entry carries the ANDed U/S, R/W and ORed XD."""
    check_case(f"psc_perms[{bit}]")


# -- a random guest OS and host: every change followed by its covering invalidation ----------------

def os_world(ad):
    w = World(ad=ad)
    las = []
    for pd in range(2):
        for pt in range(2):
            for k in range(4):
                la = LA_2M + pd * (1 << 30) + pt * (1 << 21) + k * 0x1000
                w.guest_map(la, 0x4000_0000 + len(las) * 0x1000)
                las.append(la)
    big = LA_2M + (2 << 30)
    w.guest_map(big, 0x6000_0000, Level.PDE, ept=False)
    w.ept_map(0x6000_0000, level=Level.PDE)
    las += [big, big + 0x7_3000]
    for k in range(8):
        w.ept_map(0x5000_0000 + k * 0x1000)
    return w, las


def _random_ops(rng, las, n):
    ops = []
    for _ in range(n):
        r = rng.random()
        if r < 0.75:       # mostly a hot set, so that the combined TLB hits
            la = rng.choice(las[::3] if rng.random() < 0.7 else las)
            ops.append(("access", la, rng.choice([Access.READ] * 3 + [Access.WRITE, Access.FETCH]),
                        rng.random() < 0.2))
        elif r < 0.8:
            ops.append(("vpid", rng.choice([1, 2])))
        elif r < 0.87:
            ops.append(("repoint", rng.choice(las[:16]), rng.randrange(8)))
        elif r < 0.92:
            ops.append(("clear_ad", rng.choice(las[:16])))
        elif r < 0.97:
            ops.append(("move_data", rng.choice(las[:16]), rng.randrange(8)))
        else:
            ops.append(("clear_pde_a", rng.choice(las[:16])))
    return ops


def _apply(w, op):
    """A table change on ``w``; returns what covers it: ('address', la), ('single',) or ('invept',)."""
    from model.guest import PG_A
    kind, la = op[0], op[1]
    if kind == "repoint":
        w.gwrite(w.guest_entry_gpa(la, Level.PTE), make_leaf_entry(0x5000_0000 + op[2] * 0x1000, Level.PTE))
        return ("address", la)
    if kind == "clear_ad":
        a = w.guest_entry_gpa(la, Level.PTE)
        w.gwrite(a, w.gread(a) & ~(PG_A | PG_D))
        return ("address", la)
    if kind == "clear_pde_a":
        a = w.guest_entry_gpa(la, Level.PDE)
        w.gwrite(a, w.gread(a) & ~PG_A)
        return ("single",)
    gpa = w.gread(w.guest_entry_gpa(la, Level.PTE)) & 0x000F_FFFF_FFFF_F000
    w.set_ept(gpa, Level.PTE, ept_leaf(NEW_HPA + op[2] * 0x1000))
    return ("invept",)


@pytest.mark.parametrize("ad,seed", [(0, 1), pytest.param(1, 2, marks=pytest.mark.slow),
                                     pytest.param(0, 3, marks=pytest.mark.slow),
                                     pytest.param(1, 4, marks=pytest.mark.slow)])
def test_random_os_with_invalidations_matches_the_model(ad, seed):
    import random
    rng = random.Random(seed)
    w, las = os_world(ad)
    w_ref, _ = os_world(ad)
    ops = _random_ops(rng, las, 90)
    answers = []

    async def script(ctx, bench, probe):
        vpid = 1
        for k, op in enumerate(ops):
            if op[0] == "access":
                resp, _ = await bench.linear(ctx, op[1], op[2], op[3], tag=k % 16)
                answers.append((k, op, resp))
            elif op[0] == "vpid":
                vpid = op[1]
                assert await bench.set_vpid(ctx, vpid) == (1, 0)
            else:
                await bench.idle(ctx)
                cover = _apply(w, op)
                if cover[0] == "address":
                    for v in (1, 2):
                        await bench.invvpid(ctx, InvvpidKind.ADDRESS, v, cover[1])
                elif cover[0] == "single":
                    await bench.mov_cr3(ctx)                  # the current VPID's
                    await bench.invvpid(ctx, InvvpidKind.SINGLE, 3 - vpid)
                else:
                    await bench.invept(ctx, InveptKind.SINGLE, w.eptp.pml4_pa >> 12)
                answers.append((k, op, None))
        counters.update(await bench.counters(ctx))

    counters = {}
    bench, _ = run_script(w, script)
    # the caches took part: hits, guest PSC hits, and walks
    assert counters["ctlb_hits"] >= 5 and counters["ctlb_misses"] >= 5, counters
    assert counters["gpsc_hits_pde"] + counters["gpsc_hits_pdpte"] + counters["gpsc_hits_pml4e"] >= 3
    for k, op, resp in answers:
        if resp is None:
            _apply(w_ref, op)
            continue
        ref = model_la(w_ref, op[1], op[2], op[3])
        try:
            compare_la(resp, ref, k % 16)
        except AssertionError as e:
            raise AssertionError(f"op {k} {op}: {e}") from None
    assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())
    outcomes = {r.outcome for _, _, r in answers if r is not None}
    assert LinearOutcome.OK in outcomes
