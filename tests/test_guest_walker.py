"""hw.guest_walker.GuestWalker alone: a behavioural EPT unit (the golden model's
``model.walk.translate``) on its EPT client port and a DRAM (``PhysicalMemory``)
on its memory port, every response compared with ``model.nested.translate_la``
on an identical world built twice."""

from collections import deque

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from conftest import Memory, receive, run, send
from nested_util import LEVELS, SIZES, World, compare_la

from hw.guest_walker import GuestWalker
from hw.layouts import Access as HAccess
from hw.layouts import LinearOutcome, MemOp, PageSize
from hw.layouts import Outcome as HOutcome
from model.formats import EPT_R, EPT_RWX, EPT_X, Access, Level
from model.guest import PG_A, PG_D, PG_PS, PG_XD
from model.nested import translate_la
from model.walk import translate

LA = 0x0000_1234_5678_9ABC
DATA_GPA = 0x4000_0000            # 1G-aligned: fits every guest page size


class Dram(Memory):
    """conftest's Memory over a PhysicalMemory (``race``: a value another agent writes
    just before the CAS to that address)."""

    def __init__(self, mem_req, mem_resp, phys, latency=1):
        super().__init__(mem_req, mem_resp, latency=latency)
        self.phys = phys

    def _perform(self, op, addr, compare, data):
        if op == MemOp.READ:
            return self.phys.read(addr), 0
        if addr in self.race:
            self.phys.write(addr, self.race.pop(addr))
        _, old = self.phys.cas(addr, compare, data, source="walker")
        return old, 0


class EptResponder:
    """The EPT unit, behaviourally: each request translated by the reference walk
    (with EPT A/D) and answered ``latency`` cycles later."""

    def __init__(self, req, resp, world, latency=2):
        self.req, self.resp, self.world, self.latency = req, resp, world, latency
        self.log = []

    def _answer(self, gpa, access):
        w = self.world
        t = translate(w.mem, w.eptp, gpa, access, w.config)
        return {"outcome": HOutcome[t.outcome.name], "hpa": t.hpa or 0,
                "page_size": SIZES.get(t.page_size, PageSize.SIZE_4K), "memtype": t.memtype or 0,
                "qual": t.qual or 0}

    async def process(self, ctx):
        queue, cycle = deque(), 0
        ctx.set(self.req.ready, 1)
        async for _, _, valid, p, rv, rr in ctx.tick().sample(
                self.req.valid, self.req.payload, self.resp.valid, self.resp.ready):
            cycle += 1
            if rv and rr:
                queue.popleft()
            if valid:
                access = Access(p.access.value)
                self.log.append((p.gpa, access, p.paging))
                queue.append((cycle + self.latency - 1, self._answer(p.gpa, access)))
            if queue and queue[0][0] <= cycle:
                ctx.set(self.resp.payload, queue[0][1])
                ctx.set(self.resp.valid, 1)
            else:
                ctx.set(self.resp.valid, 0)


def run_rtl(world, la, access, user=False, *, latency=1, ept_latency=2, race=None):
    """One guest access through the RTL; returns (response, dram, ept responder, lost_race count)."""
    dut = GuestWalker(maxphyaddr=world.config.maxphyaddr)
    dram = Dram(dut.mem_req, dut.mem_resp, world.mem, latency)
    dram.race.update(race or {})
    ept = EptResponder(dut.ept_req, dut.ept_resp, world, ept_latency)
    out = {"lost": 0}

    async def tb(ctx):
        regs = world.regs
        ctx.set(dut.cr3, regs.pml4_gpa >> 12)
        ctx.set(dut.paging, regs.paging)
        ctx.set(dut.wp, regs.wp)
        ctx.set(dut.nxe, regs.nxe)
        ctx.set(dut.ept_ad, world.eptp.ad_enabled)
        await send(ctx, dut.req, {"la": la & ((1 << 48) - 1), "access": HAccess(int(access)),
                                  "user": user, "tag": 5})
        out["resp"], _ = await receive(ctx, dut.resp, timeout=3000)

    async def watch(ctx):
        async for _, _, v in ctx.tick().sample(dut.lost_race):
            out["lost"] += v

    run(dut, tb, processes=[dram.process, ept.process, watch])
    return out["resp"], dram, ept, out["lost"]


def check(build, la=LA, access=Access.READ, user=False, *, race=None, **world_args):
    """Build the world twice, run the RTL on one and the golden model on the other,
    compare the architectural result and the whole memory (guest and EPT A/D)."""
    w_rtl, w_ref = World(**world_args), World(**world_args)
    build(w_rtl)
    build(w_ref)
    if race:
        # the reference sees the other agent's value from the start: same final answer
        for gpa_level, value in race.items():
            w_ref.gwrite(w_ref.guest_entry_gpa(la, gpa_level), value(w_ref))
        race = {w_rtl.hpa_of(w_rtl.guest_entry_gpa(la, lv)): value(w_rtl) for lv, value in race.items()}
    ref = translate_la(w_ref.mem, w_ref.eptp, w_ref.regs, la, access, user, w_ref.config)
    resp, dram, ept, lost = run_rtl(w_rtl, la, access, user, race=race)
    compare_la(resp, ref, tag=5)
    assert dict(w_rtl.mem.nonzero_words()) == dict(w_ref.mem.nonzero_words())
    return resp, ref, w_rtl, dram, ept, lost


def mapped(level=Level.PTE, **kw):
    def build(w):
        w.guest_map(LA, DATA_GPA, level, **kw)
    return build


# -- successful walks -----------------------------------------------------------------------

@pytest.mark.parametrize("level", [Level.PTE, Level.PDE, Level.PDPTE])
@pytest.mark.parametrize("access", list(Access))
def test_4k_2m_1g_guest_pages(level, access):
    resp, ref, *_ = check(mapped(level), access=access)
    assert resp.outcome == LinearOutcome.OK and ref.page_size == level.page_size


@pytest.mark.parametrize("ad", [False, True])
def test_guest_a_d_land_at_the_hpas_top_first(ad):
    resp, ref, w, dram, ept, _ = check(mapped(), access=Access.WRITE, ad=ad)
    assert resp.outcome == LinearOutcome.OK
    cases = [addr for addr, _, _ in dram.cases()]
    assert cases == [w.hpa_of(w.guest_entry_gpa(LA, lv)) for lv in LEVELS]
    assert w.gread(w.guest_entry_gpa(LA, Level.PTE)) & (PG_A | PG_D) == PG_A | PG_D
    # EPTP[6] = 1: the walk's accesses are EPT writes; = 0: reads, and each CAS is
    # preceded by an EPT write check of the entry's GPA
    ps = [a for _, a, p in ept.log if p]
    assert ps == ([Access.WRITE] * 4 if ad else [Access.READ] * 4 + [Access.WRITE] * 4)


def test_entries_with_a_and_d_need_no_cas():
    _, _, _, dram, _, _ = check(mapped(accessed=True, dirty=True, table_accessed=True),
                                access=Access.WRITE)
    assert dram.cases() == []


@pytest.mark.parametrize("access", list(Access))
def test_cr0_pg_0_is_one_ept_translation(access):
    def build(w):
        w.ept_map(DATA_GPA + 0x5000)
    resp, ref, _, dram, ept, _ = check(build, la=DATA_GPA + 0x5678, access=access, paging=False)
    assert resp.outcome == LinearOutcome.OK and dram.log == [] and len(ept.log) == 1


def test_cr0_pg_0_violation_has_bits_9_10():
    def build(w):
        w.ept_map(DATA_GPA, perms=EPT_R)
    resp, ref, *_ = check(build, la=DATA_GPA + 8, access=Access.WRITE, paging=False)
    assert resp.outcome == LinearOutcome.VIOLATION and resp.qual & 0xF00 == 0x700


# -- guest page faults ------------------------------------------------------------------------

@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("access,user", [(Access.READ, False), (Access.WRITE, True), (Access.FETCH, False)])
def test_not_present_at_each_level(level, access, user):
    def build(w):
        w.guest_map(LA, DATA_GPA)
        w.gwrite(w.guest_entry_gpa(LA, level), 0)
    resp, *_ = check(build, access=access, user=user)
    assert resp.outcome == LinearOutcome.PAGE_FAULT and resp.pf_error & 1 == 0


@pytest.mark.parametrize("level", LEVELS)
def test_reserved_address_bit_at_each_level(level):
    def build(w):
        w.guest_map(LA, DATA_GPA)
        a = w.guest_entry_gpa(LA, level)
        w.gwrite(a, w.gread(a) | 1 << 50)           # above MAXPHYADDR 46
    resp, *_ = check(build, access=Access.WRITE, user=True)
    assert resp.outcome == LinearOutcome.PAGE_FAULT and resp.pf_error == 0b01111


@pytest.mark.parametrize("level,bit", [(Level.PML4E, PG_PS), (Level.PDE, 1 << 13), (Level.PDPTE, 1 << 20)])
def test_reserved_ps_and_large_leaf_bits(level, bit):
    leaf = level if level != Level.PML4E else Level.PTE

    def build(w):
        w.guest_map(LA, DATA_GPA, leaf)
        a = w.guest_entry_gpa(LA, level)
        w.gwrite(a, w.gread(a) | bit)
    resp, *_ = check(build)
    assert resp.outcome == LinearOutcome.PAGE_FAULT and resp.pf_error == 0b01001


@pytest.mark.parametrize("nxe", [False, True])
@pytest.mark.parametrize("access", list(Access))
def test_xd_with_nxe_on_and_off(nxe, access):
    def build(w):
        w.guest_map(LA, DATA_GPA)
        a = w.guest_entry_gpa(LA, Level.PDE)
        w.gwrite(a, w.gread(a) | PG_XD)
    resp, ref, *_ = check(build, access=access, nxe=nxe)
    # NXE = 0: XD is reserved; NXE = 1: only the fetch faults
    assert (resp.outcome == LinearOutcome.PAGE_FAULT) == (not nxe or access is Access.FETCH)


@pytest.mark.parametrize("wp", [False, True])
@pytest.mark.parametrize("user", [False, True])
@pytest.mark.parametrize("access", list(Access))
def test_user_and_read_only_pages_with_wp(wp, user, access):
    resp, ref, *_ = check(mapped(rw=False, user=False), access=access, user=user, wp=wp)
    faults = user or (access is Access.WRITE and wp)
    assert (resp.outcome == LinearOutcome.PAGE_FAULT) == faults


def test_a_table_entry_without_u_s_faults_a_user_access():
    resp, *_ = check(mapped(table_user=False), user=True)
    assert resp.outcome == LinearOutcome.PAGE_FAULT and resp.pf_error == 0b00101


def test_no_a_d_on_a_fault():
    resp, _, w, dram, *_ = check(mapped(rw=False), access=Access.WRITE, user=True)
    assert resp.outcome == LinearOutcome.PAGE_FAULT and dram.cases() == []


# -- EPT exits --------------------------------------------------------------------------------

@pytest.mark.parametrize("ad", [False, True])
@pytest.mark.parametrize("level", LEVELS)
def test_ept_violation_on_a_guest_entry_beats_its_page_fault(ad, level):
    def build(w):
        w.guest_map(LA, DATA_GPA)
        gpa = w.guest_entry_gpa(LA, level)
        w.gwrite(gpa, 0)                                   # the guest entry would #PF
        w.set_ept(gpa, Level.PTE, 0)                       # but EPT does not map its page
    resp, ref, *_ = check(build, access=Access.FETCH, ad=ad)
    assert resp.outcome == LinearOutcome.VIOLATION and resp.qual & 0x100 == 0


def test_misconfigured_ept_entry_over_a_guest_table():
    def build(w):
        w.guest_map(LA, DATA_GPA)
        gpa = w.guest_entry_gpa(LA, Level.PDPTE)
        w.set_ept(gpa, Level.PTE, w.hpa_of(gpa) & ~0xFFF | 0b010)    # W without R
    resp, *_ = check(build)
    assert resp.outcome == LinearOutcome.MISCONFIG


@pytest.mark.parametrize("ad", [False, True])
@pytest.mark.parametrize("rw,user,xd", [(True, True, False), (False, False, True), (True, False, False)])
def test_final_access_violation_reports_the_guest_permissions(ad, rw, user, xd):
    resp, ref, w, dram, *_ = check(mapped(rw=rw, user=user, xd=xd, ept_perms=EPT_X),
                                   access=Access.READ, ad=ad)
    assert resp.outcome == LinearOutcome.VIOLATION and resp.gpa == DATA_GPA | LA & 0xFFF
    assert resp.qual >> 8 == 1 | user << 1 | rw << 2 | xd << 3
    assert dram.cases() == []                # no guest A/D on a failed final access


@pytest.mark.parametrize("ad", [False, True])
def test_read_only_guest_table_page_and_the_a_d_write_check(ad):
    def build(w):
        w.guest_map(LA, DATA_GPA)
        gpa = w.guest_entry_gpa(LA, Level.PDE)
        w.set_ept(gpa, Level.PTE, w.hpa_of(gpa) & ~0xFFF | EPT_R | EPT_X)
    resp, ref, *_ = check(build, ad=ad)
    # EPTP[6] = 1: the walk's own access is a write and faults; = 0: the A/D check does
    assert resp.outcome == LinearOutcome.VIOLATION and resp.qual & 0x1FF == ref.qual


def test_a_d_check_violation_keeps_the_updates_before_it():
    def build(w):
        w.guest_map(LA, DATA_GPA)
        gpa = w.guest_entry_gpa(LA, Level.PTE)
        w.set_ept(gpa, Level.PTE, w.hpa_of(gpa) & ~0xFFF | EPT_R)
    resp, ref, w, dram, *_ = check(build, access=Access.WRITE)
    assert resp.outcome == LinearOutcome.VIOLATION and resp.qual == 0x83 | (EPT_R << 3)
    assert len(dram.cases()) == 3


# -- races ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ad", [False, True])
def test_a_lost_cas_restarts_the_whole_2d_walk(ad):
    # between the walker's read and its CAS, another agent sets A in the PDE itself
    race = {Level.PDE: lambda w: w.gread(w.guest_entry_gpa(LA, Level.PDE)) | PG_A}
    resp, ref, w, dram, ept, lost = check(mapped(), access=Access.WRITE, race=race, ad=ad)
    assert resp.outcome == LinearOutcome.OK and resp.retries == 1 and lost == 1
    assert len(dram.reads()) == 8
    assert w.gread(w.guest_entry_gpa(LA, Level.PTE)) & (PG_A | PG_D) == PG_A | PG_D


def test_data_page_ept_read_only_write_fails():
    resp, ref, *_ = check(mapped(ept_perms=EPT_R), access=Access.WRITE, user=True)
    assert resp.outcome == LinearOutcome.VIOLATION


def test_guest_tables_with_rwx_ept():
    resp, *_ = check(mapped(ept_perms=EPT_RWX), access=Access.FETCH, user=True)
    assert resp.outcome == LinearOutcome.OK


# -- random worlds --------------------------------------------------------------------------

@st.composite
def _worlds(draw):
    level = draw(st.sampled_from([Level.PTE, Level.PDE, Level.PDPTE]))
    flags = {k: draw(st.booleans()) for k in ("rw", "user", "xd", "accessed", "dirty",
                                               "table_rw", "table_user", "table_accessed")}
    ept_perms = draw(st.sampled_from([EPT_RWX, EPT_R, EPT_X, EPT_R | EPT_X]))
    # one tweak to one guest entry or to the EPT entry mapping its table page
    tweak = draw(st.sampled_from(["none", "zero", "rsvd", "xd", "ept_ro", "ept_none"]))
    tweak_level = draw(st.sampled_from(LEVELS))
    la = draw(st.integers(0, (1 << 47) - 1)) & ~7
    return level, flags, ept_perms, tweak, tweak_level, la


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_worlds(), st.sampled_from(list(Access)), st.booleans(),
       st.fixed_dictionaries({"ad": st.booleans(), "wp": st.booleans(), "nxe": st.booleans()}))
def test_random_guest_tables_match_the_golden_model(world, access, user, regs):
    level, flags, ept_perms, tweak, tweak_level, la = world
    stop = LEVELS.index(level)

    def build(w):
        w.guest_map(la, DATA_GPA, level, ept_perms=ept_perms, **flags)
        if tweak == "none" or LEVELS.index(tweak_level) > stop:
            return
        gpa = w.guest_entry_gpa(la, tweak_level)
        if tweak == "zero":
            w.gwrite(gpa, 0)
        elif tweak == "rsvd":
            w.gwrite(gpa, w.gread(gpa) | 1 << 49)
        elif tweak == "xd":
            w.gwrite(gpa, w.gread(gpa) | PG_XD)
        else:
            perms = EPT_R if tweak == "ept_ro" else 0
            w.set_ept(gpa, Level.PTE, w.hpa_of(gpa) & ~0xFFF | perms)
    event(tweak)
    check(build, la=la, access=access, user=user, **regs)
