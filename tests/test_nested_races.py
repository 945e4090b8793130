"""hw.nested_top.NestedWalkUnit under stress, in pysim, against the golden model
(``model.nested.translate_la`` / ``model.walk.translate``):

* a guest entry changed by another agent between the walker's read of it and its A/D
  CAS (the DRAM's hook writes the word as the read is performed): the CAS loses, the
  walk restarts (``retries``, ``lost_race``), the old value is not resurrected, and
  the answer is the model's on the new tables;
* a bus error on the Nth memory response of a cold 2D walk, for every N: BUS_ERROR,
  the walk stops, nothing hangs, the next request is answered as the model does;
* random backpressure on both response ports, random DRAM latency, GPA requests
  interleaved with linear ones: every answer once, each the model's;
* a table change and an INVEPT at every point of a 2D walk: whatever that walk
  answered (the old tables' or the new tables' translation), it installs nothing,
  and the same access afterwards sees the new tables.

Cases of one kind run back to back in one simulation (a fresh world, its context
loaded and INVEPT all before each: every case starts cold)."""

import random

import pytest
from conftest import send
from nested_util import (
    LEVELS, NestedBench, World, clone_memory, compare_la, la_req, model_la,
)

from hw.layouts import Access as HAccess
from hw import layouts
from hw.layouts import InveptKind, LinearOutcome, MemOp
from hw.nested_top import guest_tag
from model.formats import EPT_R, Access, Level, make_leaf_entry as ept_leaf
from model.guest import PG_A, PG_D, PG_P, PG_RW, la_index, make_leaf_entry, make_table_entry
from model.walk import translate

LA = 0x0000_1234_5678_9ABC
DATA_GPA = 0x4000_0000
NEW_GPA = 0x4020_0000            # what a racer or a table change maps LA to instead
LATENCY = 2
HAS_INVVPID = hasattr(layouts, "InvvpidRequest")     # the caching unit: VPID, INVVPID, hits pass walks


def mapped_world(ad, **kw):
    w = World(ad=ad)
    w.guest_map(LA, DATA_GPA, **kw)
    w.ept_map(NEW_GPA)
    return w


def same(resp, ref):
    """The architectural answer of an RTL response equals the model's (no assert)."""
    try:
        compare_la(resp, ref, resp.tag)
    except AssertionError:
        return False
    return True


# -- a CAS race on a guest entry ------------------------------------------------------------------
# racer(world, old entry) -> the value another agent stores between the walker's read and its CAS

def _remap(w, old, level):
    """The guest OS points the entry elsewhere: a PTE at NEW_GPA, a PDE at a fresh page
    table mapping LA to NEW_GPA, a PML4E at a fresh PDPT, PD and PT doing the same."""
    if level == Level.PTE:
        return make_leaf_entry(NEW_GPA, Level.PTE)
    below = LEVELS[LEVELS.index(level) + 1:]      # a fresh chain of tables, not linked yet
    tables = [w.guest_table() for _ in below]
    for k, lv in enumerate(below):
        e = make_leaf_entry(NEW_GPA, lv) if lv == Level.PTE else make_table_entry(tables[k + 1])
        w.gwrite(tables[k] + la_index(LA, lv) * 8, e)
    return make_table_entry(tables[0])


RACERS = {
    "remap": lambda w, old, level: _remap(w, old, level),
    "clear_p": lambda w, old, level: old & ~PG_P,
    "set_a": lambda w, old, level: old | PG_A,            # another CPU's walk set A first
    "clear_rw": lambda w, old, level: old & ~PG_RW,       # the guest OS write-protects
}
RACE_CASES = [(level, racer, access, ad)
              for level in (Level.PTE, Level.PDE, Level.PML4E)
              for racer in RACERS
              for access in (Access.READ, Access.WRITE)
              for ad in (0, 1)]
# the default set: every racer at the PTE, a read with EPTP[6] = 0 and a write with EPTP[6] = 1,
# and the PDE remapped or made not present the same two ways; the rest slow
FAST_RACES = [c for c in RACE_CASES
              if (c[0] == Level.PTE or (c[0] == Level.PDE and c[1] in ("remap", "clear_p")))
              and c[3] == (c[2] is Access.WRITE)]


def race_world(level, racer, access, ad):
    """(world, target entry's GPA, the racer's value)."""
    w = mapped_world(ad)
    gpa = w.guest_entry_gpa(LA, level)
    value = RACERS[racer](w, w.gread(gpa), level)
    return w, gpa, value


def _racing_reads(mem, target, value):
    """Make ``mem.read`` of ``target`` store ``value`` right after the first read of it
    (what the DRAM hook does for the RTL)."""
    real = mem.read
    fired = []

    def read(addr):
        word = real(addr)
        if addr == target and not fired:
            fired.append(1)
            mem.write(addr, value, source="host")
        return word
    mem.read = read
    return fired


_race_results = {}


def race_group(fast):
    if fast in _race_results:
        return _race_results[fast]
    cases = FAST_RACES if fast else [c for c in RACE_CASES if c not in FAST_RACES]
    worlds = {c: race_world(*c) for c in cases}
    bench = NestedBench(worlds[cases[0]][0], latency=LATENCY)
    out = {}

    async def tb(ctx):
        for case in cases:
            w, gpa, value = worlds[case]
            target = w.hpa_of(gpa)
            fired = []

            def hook(n, op, addr, compare, data, old, target=target, value=value, w=w, fired=fired):
                if op == MemOp.READ and addr == target and not fired:
                    fired.append(n)
                    w.mem.write(addr, value, source="host")
            await bench.fresh(ctx, w)
            bench.dram.hooks = [hook]
            lost = bench.lost_races
            resp, _ = await bench.linear(ctx, LA, case[2], False, tag=7)
            await bench.idle(ctx)
            bench.dram.hooks = []
            cases_after = [e for e in bench.dram.log if fired and e[1] > fired[0]
                           and e[2] == MemOp.CAS and e[3] == target]
            mem_then = clone_memory(w.mem)
            # the same access again: whatever the walk after the race cached is the new tables'
            again, _ = await bench.linear(ctx, LA, case[2], False, tag=8)
            await bench.idle(ctx)
            out[case] = (resp, bench.lost_races - lost, fired, cases_after, mem_then, again, w)

    bench.run(tb)
    _race_results[fast] = out
    return out


def _race_check(level, racer, access, ad, fast):
    resp, lost, fired, cases_after, mem_then, again, rtl_world = race_group(fast)[(level, racer, access, ad)]
    w, gpa, value = race_world(level, racer, access, ad)
    old = w.gread(gpa)
    assert old != value and not old & PG_A        # the walk must CAS it, and the racer changed it
    # the model with the same race, on a third copy: the same retry, the same memory
    w_race, _, _ = race_world(level, racer, access, ad)
    assert w_race.gread(gpa) == old
    model_fired = _racing_reads(w_race.mem, w_race.hpa_of(gpa), value)
    ref_race = model_la(w_race, LA, access)
    assert model_fired and ref_race.retries == 1
    # the model on the new tables: the racer's value there from the start
    w_new, _, _ = race_world(level, racer, access, ad)
    w_new.gwrite(gpa, value)
    ref_new = model_la(w_new, LA, access)

    assert fired, "the walker never read the entry"
    compare_la(resp, ref_new, tag=7)
    compare_la(resp, ref_race, tag=7)
    assert resp.retries == 1 and lost == 1, (resp.retries, lost)

    # no resurrection: the word is the racer's plus only the A/D the re-walk sets
    want = value
    if resp.outcome == LinearOutcome.OK:
        want |= PG_A
        if level == Level.PTE and access is Access.WRITE:
            want |= PG_D
    assert rtl_world.gread(gpa) == want, (hex(rtl_world.gread(gpa)), hex(want))
    # the CASes of that entry after the race: the one that lost (expecting the old word),
    # then the re-walk's, against the racer's word
    compares = [compare for _, _, _, _, compare, _, _ in cases_after]
    assert compares[:1] == [old], [hex(c) for c in compares]
    assert all(c == value for c in compares[1:]), [hex(c) for c in compares]
    assert len(compares) == 1 + (want != value)
    assert dict(mem_then.nonzero_words()) == dict(w_race.mem.nonzero_words())
    # and the same access again: the new tables (a fill from the re-walk, or a walk)
    ref_again = model_la(w_race, LA, access)
    compare_la(again, ref_again, tag=8)
    assert again.retries == 0
    assert dict(rtl_world.mem.nonzero_words()) == dict(w_race.mem.nonzero_words())


@pytest.mark.parametrize("level,racer,access,ad", FAST_RACES,
                         ids=[f"{lv.name}-{r}-{a.name}-eptp6={ad}" for lv, r, a, ad in FAST_RACES])
def test_cas_race_on_a_guest_entry(level, racer, access, ad):
    _race_check(level, racer, access, ad, True)


SLOW_RACES = [c for c in RACE_CASES if c not in FAST_RACES]


@pytest.mark.slow
@pytest.mark.parametrize("level,racer,access,ad", SLOW_RACES,
                         ids=[f"{lv.name}-{r}-{a.name}-eptp6={ad}" for lv, r, a, ad in SLOW_RACES])
def test_cas_race_on_a_guest_entry_everywhere(level, racer, access, ad):
    _race_check(level, racer, access, ad, False)


# -- a bus error at every step of a 2D walk -------------------------------------------------------

def bus_world(ad):
    return mapped_world(ad)        # nothing accessed yet: every guest and EPT A/D to set


def _kind(world, op, addr):
    """What a memory reference of the walk is: a guest entry (at its HPA) or an EPT entry."""
    guest = {world.hpa_of(world.guest_entry_gpa(LA, lv)) for lv in LEVELS}
    return ("guest " if addr in guest else "EPT ") + ("read" if op == MemOp.READ else "CAS")


def run_bus_errors(ad, access=Access.WRITE):
    """One clean cold walk (its references counted), then for every N a cold walk with
    its Nth reference answered with an error, each followed by the same access again."""
    clean = bus_world(ad)
    bench = NestedBench(clean, latency=LATENCY)
    out = {"cases": {}}

    async def tb(ctx):
        await bench.fresh(ctx, clean)
        base = bench.dram.count
        out["clean"] = (await bench.linear(ctx, LA, access, tag=2))[0]
        await bench.idle(ctx)
        refs = [(e[2], e[3]) for e in bench.dram.since(base)]
        out["refs"] = refs
        for n in range(1, len(refs) + 1):
            w = bus_world(ad)
            await bench.fresh(ctx, w)
            base = bench.dram.count
            bench.dram.errors = {base + n}
            first, _ = await bench.linear(ctx, LA, access, tag=2)
            await bench.idle(ctx)
            for _ in range(3 * LATENCY + 4):       # anything still to come would show now
                await ctx.tick()
            issued = bench.dram.count - base
            bench.dram.errors = set()
            after_error = clone_memory(w.mem)
            again, _ = await bench.linear(ctx, LA, access, tag=3)
            await bench.idle(ctx)
            out["cases"][n] = (first, issued, after_error, again, w)

    bench.run(tb, deadline_cycles=200_000)
    return clean, out


@pytest.mark.parametrize("ad", [pytest.param(0, marks=pytest.mark.slow), 1], ids=["eptp6=0", "eptp6=1"])
def test_bus_error_at_every_memory_reference(ad):
    clean, out = run_bus_errors(ad)
    ref = model_la(bus_world(ad), LA, Access.WRITE)
    compare_la(out["clean"], ref, tag=2)
    refs = out["refs"]
    kinds = [_kind(clean, op, addr) for op, addr in refs]
    # the cold 4K-over-4K walk: 4 guest entry reads; 20 EPT entry reads without the EPT unit's
    # paging-structure caches, 10 with them (the guest tables share the EPT PML4E..PDE, the data
    # page the PML4E: 4 + 3 * 1 + 3); 4 guest A/D CASes, and with EPTP[6] = 1 the EPT A/D CASes
    assert kinds.count("guest read") == 4 and 10 <= kinds.count("EPT read") <= 20, kinds
    assert kinds.count("guest CAS") == 4
    assert (kinds.count("EPT CAS") > 0) == bool(ad)
    bad = []
    for n, (first, issued, after_error, again, _) in out["cases"].items():
        why = []
        if first.outcome != LinearOutcome.BUS_ERROR or first.tag != 2:
            why.append(f"answered {first.outcome.name}")
        if issued != n:
            why.append(f"{issued - n} references after the error")
        ref_again = model_la(_with_memory(ad, after_error), LA, Access.WRITE)
        if not same(again, ref_again):
            why.append(f"the next request answered {again.outcome.name}, the model {ref_again.outcome.value}")
        if why:
            bad.append(f"error on reference {n} ({kinds[n - 1]}): " + "; ".join(why))
    assert not bad, "\n".join(bad)


def _with_memory(ad, mem):
    w = bus_world(ad)
    w.mem = mem
    return w


# -- backpressure, random latency, GPA requests among the linear ones ----------------------------

def busy_world(ad, maxphyaddr=46):
    """4K, 2M and 1G guest pages (one in the upper half), a guest #PF, an EPT violation on a
    guest table and on a final GPA, and some GPA-only pages for the external port."""
    w = World(ad=ad, maxphyaddr=maxphyaddr)
    las = {"4k": LA, "2m": LA + (1 << 30), "1g": LA + (2 << 39), "ro": LA + 0x1000,
           "pf": LA + (3 << 39), "ept_table": LA + (4 << 39), "ept_final": LA + 0x2000,
           "high": 0xFFFF_8000_1234_5678}
    w.guest_map(las["high"], DATA_GPA + 0x4000)
    w.guest_map(las["4k"], DATA_GPA)
    w.guest_map(las["2m"], DATA_GPA + 0x20_0000, Level.PDE)
    w.guest_map(las["1g"], 0x8000_0000, Level.PDPTE)
    w.guest_map(las["ro"], DATA_GPA + 0x1000, rw=False)
    w.guest_map(las["ept_final"], DATA_GPA + 0x2000, ept_perms=EPT_R)
    w.guest_map(las["ept_table"], DATA_GPA + 0x3000)
    pt = w.guest_entry_gpa(las["ept_table"], Level.PTE) & ~0xFFF
    w.set_ept(pt, Level.PTE, 0)
    for k in range(4):
        w.ept_map(0x10_0000_0000 + k * 0x1000)
    return w, las


def _stream(rng, las, n_linear, n_gpa, gpa_tags):
    accesses = [(Access.READ, False), (Access.WRITE, False), (Access.FETCH, True), (Access.WRITE, True)]
    pages = list(las.values()) + [rng.choice(list(las.values())) for _ in range(n_linear - len(las))]
    rng.shuffle(pages)                                    # every page at least once
    linear = [(la, *rng.choice(accesses)) for la in pages]
    gpas = [0x10_0000_0000 + rng.randrange(4) * 0x1000 + 8 * rng.randrange(512) for _ in range(n_gpa - 1)]
    gpas.append(0x20_0000_0000)                           # unmapped: a violation
    gpa = [(g, rng.choice([Access.READ, Access.WRITE, Access.FETCH]), gpa_tags[k % len(gpa_tags)])
           for k, g in enumerate(gpas)]
    return linear, gpa


async def _receiver(ctx, stream, got, n, rng, p_ready, bench, when):
    while len(got) < n:
        ready = rng.random() < p_ready
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid and ready:
            got.append(payload)
            when.append(bench.cycle)
    ctx.set(stream.ready, 0)


async def _sender(ctx, stream, payloads, outstanding, rng, gap):
    for p in payloads:
        for _ in range(rng.randrange(gap + 1)):
            await ctx.tick()
        while p["tag"] in outstanding:              # a tag is reused only once answered
            await ctx.tick()
        outstanding.add(p["tag"])
        await send(ctx, stream, p, timeout=5000)


@pytest.mark.parametrize("walkers", [1, 2])
@pytest.mark.parametrize("seed,maxphyaddr", [(1, 46), pytest.param(2, 39, marks=pytest.mark.slow),
                                             pytest.param(3, 52, marks=pytest.mark.slow)])
def test_backpressure_and_random_latency(walkers, seed, maxphyaddr):
    rng = random.Random(seed * 10 + walkers)
    ad = seed % 2
    w, las = busy_world(ad, maxphyaddr)
    w_ref, _ = busy_world(ad, maxphyaddr)
    ext_tags = list(range(16 - walkers))
    linear, gpa = _stream(rng, las, 14, 8, ext_tags[:6])
    bench = NestedBench(w, latency=lambda: rng.randrange(1, 7), guest_walkers=walkers)
    dut = bench.dut
    lin_payloads = [la_req(la, acc, user, tag=k % 16) for k, (la, acc, user) in enumerate(linear)]
    gpa_payloads = [{"gpa": g, "access": HAccess(int(a)), "tag": t} for g, a, t in gpa]
    got_lin, got_gpa, when_lin, when_gpa = [], [], [], []
    out_lin, out_gpa = set(), set()

    async def tb_setup_and_linear(ctx):
        assert await bench.load_context(ctx) == (1, 0, 1)
        out_lin.clear()
        await _sender(ctx, dut.linear_req, lin_payloads, out_lin, rng, 3)

    async def tb_gpa(ctx):
        for _ in range(5):
            await ctx.tick()
        await _sender(ctx, dut.translate_req, gpa_payloads, out_gpa, rng, 20)

    async def tb_lin_resp(ctx):
        while len(got_lin) < len(linear):
            before = len(got_lin)
            await _receiver(ctx, dut.linear_resp, got_lin, before + 1, rng, 0.4, bench, when_lin)
            out_lin.discard(got_lin[-1].tag)

    async def tb_gpa_resp(ctx):
        while len(got_gpa) < len(gpa):
            before = len(got_gpa)
            await _receiver(ctx, dut.translate_resp, got_gpa, before + 1, rng, 0.3, bench, when_gpa)
            out_gpa.discard(got_gpa[-1].tag)
        for _ in range(50):                 # nothing more comes
            _, _, v = await ctx.tick().sample(dut.translate_resp.valid)
            assert not v

    bench.run(tb_setup_and_linear, tb_gpa, tb_lin_resp, tb_gpa_resp, deadline_cycles=30_000)

    assert when_gpa[-1] < when_lin[-1]     # the GPA answers came while the 2D walks went on
    # every request answered once: by tag, in request order per tag
    assert len(got_lin) == len(linear) and len(got_gpa) == len(gpa)
    by_tag = {}
    for resp in got_lin:
        by_tag.setdefault(resp.tag, []).append(resp)
    for k, (la, acc, user) in enumerate(linear):
        resp = by_tag[k % 16].pop(0)
        compare_la(resp, model_la(w_ref, la, acc, user), tag=k % 16)
    if walkers == 1 and not HAS_INVVPID:      # one guest walker, no combined TLB: in order
        assert [r.tag for r in got_lin] == [k % 16 for k in range(len(linear))]
    gpa_by_tag = {}
    for resp in got_gpa:
        gpa_by_tag.setdefault(resp.tag, []).append(resp)
    for g, acc, tag in gpa:
        resp = gpa_by_tag[tag].pop(0)
        t = translate(w_ref.mem, w_ref.eptp, g, acc, w_ref.config)
        assert resp.outcome.name.lower() == t.outcome.value, (hex(g), resp, t)
        if t.outcome.value == "ok":
            assert resp.hpa == t.hpa
    assert {r.outcome.name for r in got_lin} >= {"OK", "PAGE_FAULT", "VIOLATION"}
    # the A/D bits are order-free (each a set bit): the same memory as the model's
    assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())
    assert all(t not in guest_tag_set(walkers) for t in (r.tag for r in got_gpa))


def guest_tag_set(walkers):
    return {guest_tag(k) for k in range(walkers)}


# -- an invalidation during a 2D walk --------------------------------------------------------------
# change(world) edits the tables the way a host would before its INVEPT

NEW_HPA = 0x7_0000_0000


def _move_data_page(w):
    """The host moves the data page: its EPT leaf to another frame."""
    w.set_ept(DATA_GPA, Level.PTE, ept_leaf(NEW_HPA))


def _move_guest_pt(w):
    """The host moves the guest's page-table page to another frame (EPT leaf), and the
    copy there maps LA to NEW_GPA (as if the guest had changed it meanwhile)."""
    pt = w.guest_entry_gpa(LA, Level.PTE) & ~0xFFF
    old_hpa = w.hpa_of(pt)
    for off in range(0, 0x1000, 8):
        w.mem.write(NEW_HPA + 0x1000 + off, w.mem.peek(old_hpa + off))
    w.mem.write(NEW_HPA + 0x1000 + la_index(LA, Level.PTE) * 8, make_leaf_entry(NEW_GPA, Level.PTE))
    w.set_ept(pt, Level.PTE, ept_leaf(NEW_HPA + 0x1000))
    w.ept_pages[pt] = NEW_HPA + 0x1000


def _repoint_guest_pte(w):
    """The guest OS points LA's PTE at NEW_GPA (an INVLPG / INVVPID / MOV CR3 matter)."""
    w.gwrite(w.guest_entry_gpa(LA, Level.PTE), make_leaf_entry(NEW_GPA, Level.PTE))


CHANGES = {"data_page": _move_data_page, "guest_pt_page": _move_guest_pt,
           "guest_pte": _repoint_guest_pte}


def _invept(kind):
    async def op(bench, ctx):
        await bench.invept(ctx, kind, bench.world.eptp.pml4_pa >> 12)
    op.__name__ = f"invept_{kind.name.lower()}"
    return op


def _invvpid(kind):
    async def op(bench, ctx):
        await bench.invvpid(ctx, kind, bench.vpid, LA)
    op.__name__ = f"invvpid_{kind.name.lower()}"
    return op


async def _mov_cr3(bench, ctx):
    await bench.mov_cr3(ctx)


def run_invalidations(change, ad, ops, access=Access.WRITE):
    """For every N: a cold walk; as its Nth memory reference is performed the tables change
    (``change``) and an invalidation follows (``ops`` taken in turn: async (bench, ctx));
    then the same access again."""
    clean = mapped_world(ad)
    bench = NestedBench(clean, latency=LATENCY)
    out = {"cases": {}}
    pending = []
    state = {"done": False}

    async def invalidator(ctx):
        while not state["done"]:
            await ctx.tick()
            if pending:
                op = pending.pop()
                await op(bench, ctx)
                out["taken"].append(bench.cycle)

    async def tb(ctx):
        await bench.fresh(ctx, clean)
        base = bench.dram.count
        await bench.linear(ctx, LA, access, tag=2)
        await bench.idle(ctx)
        total = bench.dram.count - base
        out["total"] = total
        for n in range(1, total + 1):
            w = mapped_world(ad)
            await bench.fresh(ctx, w)
            base = bench.dram.count
            out["taken"] = []

            def hook(k, op, addr, compare, data, old, n=n, base=base, w=w):
                if k == base + n:
                    change(w)
                    pending.append(ops[n % len(ops)])
            bench.dram.hooks = [hook]
            first, _ = await bench.linear(ctx, LA, access, tag=2)
            await bench.idle(ctx)
            bench.dram.hooks = []
            after_first = clone_memory(w.mem)
            again, _ = await bench.linear(ctx, LA, access, tag=3)
            await bench.idle(ctx)
            out["cases"][n] = (first, after_first, again, w, list(out["taken"]))
        state["done"] = True

    bench.run(tb, invalidator, deadline_cycles=200_000)
    return out


def _world_on(ad, mem):
    w = mapped_world(ad)
    w.mem = mem
    return w


def _check_invalidations(change_name, ad, ops):
    change = CHANGES[change_name]
    out = run_invalidations(change, ad, ops)
    ref_old = model_la(mapped_world(ad), LA, Access.WRITE)
    w_new = mapped_world(ad)
    change(w_new)
    ref_new = model_la(w_new, LA, Access.WRITE)
    assert not same_arch(ref_old, ref_new)
    bad, saw = [], {"old": 0, "new": 0}
    for n, (first, after_first, again, w, taken) in out["cases"].items():
        op = ops[n % len(ops)].__name__
        if len(taken) != 1:
            bad.append(f"{n}: {op} taken {len(taken)} times")
        if same(first, ref_old):
            saw["old"] += 1
        elif same(first, ref_new):
            saw["new"] += 1
        else:
            bad.append(f"{n} ({op}): the walk in flight answered {first.outcome.name} gpa {first.gpa:#x} "
                       f"hpa {first.hpa:#x}: neither the old tables' nor the new ones'")
        w_after = _world_on(ad, after_first)
        ref_again = model_la(w_after, LA, Access.WRITE)
        if not same(again, ref_again) or not same(again, ref_new):
            bad.append(f"{n} ({op}): after it the same access answered hpa {again.hpa:#x} "
                       f"({again.outcome.name}), the new tables say {ref_new.hpa:#x}: stale")
        elif dict(w.mem.nonzero_words()) != dict(w_after.mem.nonzero_words()):
            bad.append(f"{n} ({op}): memory after the second access differs from the model's")
    assert not bad, "\n".join(bad)
    # the sweep covered changes the walk saw and changes it had already passed
    assert saw["old"] and saw["new"], saw


def same_arch(a, b):
    return a.architectural() == b.architectural()


@pytest.mark.parametrize("change,ad", [
    ("guest_pt_page", 0), pytest.param("data_page", 0, marks=pytest.mark.slow),
    pytest.param("guest_pt_page", 1, marks=pytest.mark.slow), pytest.param("data_page", 1, marks=pytest.mark.slow)])
def test_invept_during_a_2d_walk_installs_nothing(change, ad):
    _check_invalidations(change, ad, [_invept(InveptKind.GLOBAL), _invept(InveptKind.SINGLE)])



@pytest.mark.skipif(not HAS_INVVPID, reason="the unit has no INVVPID yet")
@pytest.mark.parametrize("ad", [0, pytest.param(1, marks=pytest.mark.slow)], ids=["eptp6=0", "eptp6=1"])
def test_invvpid_or_mov_cr3_during_a_2d_walk_installs_nothing(ad):
    from hw.layouts import InvvpidKind
    _check_invalidations("guest_pte", ad, [_invvpid(InvvpidKind.ADDRESS), _invvpid(InvvpidKind.SINGLE),
                                           _invvpid(InvvpidKind.ALL), _mov_cr3])


def test_a_racer_winning_twenty_times_saturates_retries():
    """The guest PTE changes between every one of the walker's first 20 reads of it and its
    CAS (A toggled in a software bit): 20 lost races, ``retries`` saturates at 15, and the
    answer is the model's on the final tables."""
    w = mapped_world(0)
    pte_gpa = w.guest_entry_gpa(LA, Level.PTE)
    target = w.hpa_of(pte_gpa)
    bench = NestedBench(w, latency=LATENCY)
    fired = []

    def hook(n, op, addr, compare, data, old):
        if op == MemOp.READ and addr == target and len(fired) < 20:
            fired.append(n)
            w.mem.write(addr, old ^ (1 << 9), source="host")      # bit 9: ignored by hardware
    out = {}

    async def tb(ctx):
        assert await bench.load_context(ctx) == (1, 0, 1)
        bench.dram.hooks = [hook]
        out["resp"], _ = await bench.linear(ctx, LA, Access.WRITE, tag=4, timeout=20_000)

    bench.run(tb, deadline_cycles=40_000)
    resp = out["resp"]
    assert len(fired) == 20 and bench.lost_races == 20
    assert resp.retries == 15
    w_ref = mapped_world(0)
    w_ref.gwrite(pte_gpa, w_ref.gread(pte_gpa) ^ (0 if len(fired) % 2 == 0 else 1 << 9))
    compare_la(resp, model_la(w_ref, LA, Access.WRITE), tag=4)
    assert w.gread(pte_gpa) == w_ref.gread(pte_gpa)
    assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())


@pytest.mark.parametrize("ad", [pytest.param(0, marks=pytest.mark.slow), 1], ids=["eptp6=0", "eptp6=1"])
def test_cas_race_on_a_walk_started_from_the_guest_psc(ad):
    """A neighbour page of the same guest PT walked first, so the racing walk starts at the
    PTE from a guest PDE-cache hit; the PTE changes between its read and its CAS: the walk
    restarts (from the top) and answers the new PTE's translation, and a second access is
    served the new translation."""
    neighbour = LA + 0x1000
    w = mapped_world(ad)
    w.guest_map(neighbour, DATA_GPA + 0x1000)
    pte_gpa = w.guest_entry_gpa(LA, Level.PTE)
    target = w.hpa_of(pte_gpa)
    value = make_leaf_entry(NEW_GPA, Level.PTE)
    bench = NestedBench(w, latency=LATENCY)
    fired, out = [], {}

    def hook(n, op, addr, compare, data, old):
        if op == MemOp.READ and addr == target and not fired:
            fired.append(n)
            w.mem.write(addr, value, source="host")

    async def tb(ctx):
        assert await bench.load_context(ctx) == (1, 0, 1)
        out["neighbour"], _ = await bench.linear(ctx, neighbour, Access.READ, tag=1)
        await bench.idle(ctx)
        before = await bench.counters(ctx)
        bench.dram.hooks = [hook]
        out["raced"], _ = await bench.linear(ctx, LA, Access.WRITE, tag=2)
        await bench.idle(ctx)
        bench.dram.hooks = []
        out["delta"] = {k: v - before[k] for k, v in (await bench.counters(ctx)).items()}
        out["again"], _ = await bench.linear(ctx, LA, Access.WRITE, tag=3)

    bench.run(tb)
    w_ref = mapped_world(ad)
    w_ref.guest_map(neighbour, DATA_GPA + 0x1000)
    compare_la(out["neighbour"], model_la(w_ref, neighbour), tag=1)
    _racing_reads(w_ref.mem, w_ref.hpa_of(pte_gpa), value)
    ref = model_la(w_ref, LA, Access.WRITE)
    assert ref.retries == 1 and ref.gpa & ~0xFFF == NEW_GPA
    compare_la(out["raced"], ref, tag=2)
    assert out["raced"].retries == 1 and bench.lost_races == 1 and fired
    if HAS_INVVPID:
        assert out["delta"]["gpsc_hits_pde"] == 1 and out["delta"]["guest_cas_retries"] == 1
    compare_la(out["again"], model_la(w_ref, LA, Access.WRITE), tag=3)
    assert w.gread(pte_gpa) == value | PG_A | PG_D
    assert dict(w.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())
