"""The 2D reference walk (model/nested.py): every rule of docs/nested.md,
each as its own test.

The world (tests/nested_util.py) puts guest page-table pages at GPAs that EPT
maps to different HPAs, with 4K EPT leaves, so every memory reference of the
24 is visible.
"""

from __future__ import annotations

import itertools

import pytest

from model.formats import EPT_A, EPT_D, EPT_R, EPT_RWX, EPT_W, EPT_X, Access, Level, MemType
from model.guest import (
    PF_ID, PF_P, PF_RSVD, PF_US, PF_WR, PG_A, PG_D, PG_PS, PG_RW, PG_US, PG_XD, GuestRegs,
    guest_reserved_mask, is_canonical,
)
from model.nested import LaOutcome, Stage, translate_la

from nested_util import LEVELS, World

LA = (0x0A5 << 39) | (0x13C << 30) | (0x0F1 << 21) | (0x1D2 << 12) | 0x5A8
DATA_GPA = {Level.PTE: 0x0123_4000, Level.PDE: 0x0160_0000, Level.PDPTE: 0x8000_0000}
LEAF = {"4K": Level.PTE, "2M": Level.PDE, "1G": Level.PDPTE}
ACCESSES = (Access.READ, Access.WRITE, Access.FETCH)


def tla(w: World, la=LA, access=Access.READ, user=False, regs=None):
    return translate_la(w.mem, w.eptp, regs or w.regs, la, access, user, w.config)


def world(size="4K", ad=False, **kw) -> World:
    w = World(ad=ad, **{k: kw.pop(k) for k in ("maxphyaddr", "paging", "wp", "nxe") if k in kw})
    w.guest_map(LA, DATA_GPA[LEAF[size]], LEAF[size], **kw)
    return w


def levels_of(size):
    return LEVELS[: LEVELS.index(LEAF[size]) + 1]


# -- success -------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["4K", "2M", "1G"])
@pytest.mark.parametrize("access", ACCESSES)
def test_ok_each_guest_page_size(size, access):
    w = world(size)
    t = tla(w, access=access)
    leaf = LEAF[size]
    assert t.outcome is LaOutcome.OK, t.reason
    off = LA & (leaf.page_size - 1)
    assert t.gpa == DATA_GPA[leaf] | off
    assert t.hpa == w.hpa_of(t.gpa)
    assert t.page_size == leaf.page_size
    assert t.memtype == MemType.WB
    n = len(levels_of(size))
    # (n + 1)(m + 1) - 1 references with a 4-level EPT of 4K leaves: 24, 19, 14
    assert t.guest_refs == n
    assert t.ept_refs == 4 * (n + 1)
    assert t.guest_refs + t.ept_refs == (n + 1) * 5 - 1
    assert t.qual is None and t.pf_error is None


def test_guest_entries_read_at_their_hpa_not_their_gpa():
    w = world()
    t = tla(w)
    for s in t.guest_steps:
        assert s.hpa == w.hpa_of(s.gpa) != s.gpa
        assert w.mem.peek(s.gpa) == 0       # nothing lives at the GPA in host memory


def test_memtype_is_the_ept_leaf_of_the_final_gpa():
    w = world()
    w.ept_map(DATA_GPA[Level.PTE], memtype=MemType.WC)
    assert tla(w).memtype == MemType.WC


# -- guest #PF: not present, at each level ----------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("access,user", list(itertools.product(ACCESSES, (False, True))))
def test_not_present_pf_at_each_level(level, access, user):
    w = world()
    w.gwrite(w.guest_entry_gpa(LA, level), 0x1234_5000)     # P = 0, the rest is ignored
    t = tla(w, access=access, user=user)
    assert t.outcome is LaOutcome.PAGE_FAULT
    want = (PF_WR if access is Access.WRITE else 0) | (PF_US if user else 0) | \
           (PF_ID if access is Access.FETCH else 0)
    assert t.pf_error == want
    # the walk stopped: no EPT access below, no final GPA, no A/D anywhere
    assert len(t.guest_steps) == LEVELS.index(level) + 1
    assert t.final is None and len(t.ept_translations) == LEVELS.index(level) + 1
    assert t.ad_updates == ()
    for lv in LEVELS[:LEVELS.index(level)]:
        assert not w.gread(w.guest_entry_gpa(LA, lv)) & PG_A


def test_fetch_error_code_has_id_only_with_nxe():
    for nxe, want in ((True, PF_ID), (False, 0)):
        w = world(nxe=nxe)
        w.gwrite(w.guest_entry_gpa(LA, Level.PTE), 0)
        assert tla(w, access=Access.FETCH).pf_error == want


# -- guest #PF: reserved bits, each level and page size -----------------------------------
RSVD_CASES = [
    ("4K", Level.PML4E, 1 << 46), ("4K", Level.PDPTE, 1 << 50), ("4K", Level.PDE, 1 << 51),
    ("4K", Level.PTE, 1 << 47), ("4K", Level.PML4E, PG_PS),
    ("2M", Level.PDE, 1 << 13), ("2M", Level.PDE, 1 << 20), ("2M", Level.PDE, 1 << 46),
    ("1G", Level.PDPTE, 1 << 13), ("1G", Level.PDPTE, 1 << 29), ("1G", Level.PDPTE, 1 << 49),
]


@pytest.mark.parametrize("size,level,bit", RSVD_CASES, ids=lambda v: hex(v) if isinstance(v, int) else str(v))
@pytest.mark.parametrize("access,user", [(Access.READ, False), (Access.WRITE, True), (Access.FETCH, False)])
def test_reserved_bit_pf(size, level, bit, access, user):
    w = world(size)
    a = w.guest_entry_gpa(LA, level)
    w.gwrite(a, w.gread(a) | bit)
    t = tla(w, access=access, user=user)
    assert t.outcome is LaOutcome.PAGE_FAULT, t.reason
    want = PF_P | PF_RSVD | (PF_WR if access is Access.WRITE else 0) | (PF_US if user else 0) | \
        (PF_ID if access is Access.FETCH else 0)
    assert t.pf_error == want
    assert t.final is None and len(t.guest_steps) == LEVELS.index(level) + 1


@pytest.mark.parametrize("size,level", [("4K", Level.PTE), ("2M", Level.PDE), ("1G", Level.PDPTE)])
def test_pat_bits_and_ignored_bits_are_not_reserved(size, level):
    w = world(size)
    a = w.guest_entry_gpa(LA, level)
    pat = PG_PS if level == Level.PTE else 1 << 12
    w.gwrite(a, w.gread(a) | pat | (0x7F << 52) | (1 << 8) | (7 << 9))   # PAT, 62:52, G, 11:9
    assert tla(w).outcome is LaOutcome.OK


def test_reserved_bits_follow_maxphyaddr():
    for mpa, ok in ((40, False), (46, True)):
        w = world(maxphyaddr=mpa)
        a = w.guest_entry_gpa(LA, Level.PTE)
        w.gwrite(a, w.gread(a) | 1 << 42)
        t = tla(w)
        # bit 42 is reserved with MAXPHYADDR 40; with 46 it is address: the GPA moves
        assert (t.outcome is LaOutcome.PAGE_FAULT) is not ok
        if not ok:
            assert t.pf_error == PF_P | PF_RSVD
    assert guest_reserved_mask(1, True, 52, True) == 0


@pytest.mark.parametrize("level", LEVELS)
def test_xd_is_reserved_without_nxe(level):
    w = world(nxe=False)
    a = w.guest_entry_gpa(LA, level)
    w.gwrite(a, w.gread(a) | PG_XD)
    t = tla(w)
    assert t.outcome is LaOutcome.PAGE_FAULT and t.pf_error == PF_P | PF_RSVD
    w2 = world(nxe=True)
    a = w2.guest_entry_gpa(LA, level)
    w2.gwrite(a, w2.gread(a) | PG_XD)
    assert tla(w2).outcome is LaOutcome.OK
    t = tla(w2, access=Access.FETCH)
    assert t.outcome is LaOutcome.PAGE_FAULT and t.pf_error == PF_P | PF_ID


# -- guest permissions -------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_user_access_to_supervisor_page(level):
    w = world()
    a = w.guest_entry_gpa(LA, level)
    w.gwrite(a, w.gread(a) & ~PG_US)
    assert tla(w, user=False).outcome is LaOutcome.OK
    for access in ACCESSES:
        t = tla(w, access=access, user=True)
        assert t.outcome is LaOutcome.PAGE_FAULT
        assert t.pf_error == PF_P | PF_US | (PF_WR if access is Access.WRITE else 0) | \
            (PF_ID if access is Access.FETCH else 0)
        assert t.final is None and len(t.guest_steps) == 4


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("wp", [True, False])
def test_write_to_read_only_page_with_and_without_wp(level, wp):
    w = world(wp=wp)
    a = w.guest_entry_gpa(LA, level)
    w.gwrite(a, w.gread(a) & ~PG_RW)
    assert tla(w, access=Access.READ, user=True).outcome is LaOutcome.OK
    t = tla(w, access=Access.WRITE, user=True)
    assert t.outcome is LaOutcome.PAGE_FAULT and t.pf_error == PF_P | PF_WR | PF_US
    t = tla(w, access=Access.WRITE, user=False)
    if wp:
        assert t.outcome is LaOutcome.PAGE_FAULT and t.pf_error == PF_P | PF_WR
    else:
        assert t.outcome is LaOutcome.OK
        assert w.gread(w.guest_entry_gpa(LA, Level.PTE)) & PG_D


def test_supervisor_may_fetch_and_read_user_pages():
    w = world()
    for access in ACCESSES:
        assert tla(w, access=access, user=False).outcome is LaOutcome.OK


# -- EPT exits during the walk ------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("ad", [False, True])
def test_ept_violation_on_a_guest_entry_beats_its_pf(level, ad):
    """The guest entry is not present and reserved-bit laden, but EPT cannot
    even fetch it: the EPT violation comes first."""
    w = world(ad=ad)
    egpa = w.guest_entry_gpa(LA, level)
    w.gwrite(egpa, 1 << 51)
    w.set_ept(egpa, Level.PTE, 0)
    for access in ACCESSES:
        t = tla(w, access=access)
        assert t.outcome is LaOutcome.VIOLATION, t.reason
        assert t.gpa == egpa and t.stage is Stage.WALK
        assert t.qual == (0x83 if ad else 0x81)       # RD (| WR with A/D), GLA valid, no PERM bits
        assert t.final is None


@pytest.mark.parametrize("ept_level", LEVELS)
def test_walk_violation_perm_bits_are_the_and_over_ept_levels(ept_level):
    """Restrict one EPT level mapping the guest PD page to R only (A/D on: the
    access is a write): bits 3-5 read R only whichever level it is.  The upper
    EPT levels also map the guest PML4 page, which then faults first."""
    w = world(ad=True)
    egpa = w.guest_entry_gpa(LA, Level.PDE)
    a = w.ept_entry_addr(egpa, ept_level, create=False)
    w.mem.write(a, w.mem.peek(a) & ~(EPT_W | EPT_X))
    t = tla(w, access=Access.FETCH)
    first = egpa if ept_level == Level.PTE else w.guest_entry_gpa(LA, Level.PML4E)
    assert t.outcome is LaOutcome.VIOLATION and t.gpa == first
    assert t.qual == 0x83 | EPT_R << 3


def test_misconfig_on_a_guest_entry_and_on_the_final_gpa():
    w = world()
    egpa = w.guest_entry_gpa(LA, Level.PDPTE)
    a = w.ept_leaf_addr(egpa)
    w.mem.write(a, w.mem.peek(a) & ~EPT_R)          # W without R
    t = tla(w)
    assert t.outcome is LaOutcome.MISCONFIG and t.gpa == egpa and t.stage is Stage.WALK
    assert t.to_json() == {"op": "translate_la", "la": hex(LA), "access": "read", "user": False,
                           "outcome": "misconfig", "gpa": hex(egpa)}
    w = world()
    a = w.ept_leaf_addr(DATA_GPA[Level.PTE])
    w.mem.write(a, (w.mem.peek(a) & ~0x38) | 2 << 3)   # memory type 2
    t = tla(w, access=Access.WRITE)
    assert t.outcome is LaOutcome.MISCONFIG and t.gpa == DATA_GPA[Level.PTE] | (LA & 0xFFF)
    assert t.stage is Stage.FINAL


# -- qualification of final accesses ------------------------------------------------------
@pytest.mark.parametrize("access", ACCESSES)
@pytest.mark.parametrize("ad", [False, True])
def test_final_not_present_qual(access, ad):
    w = world(ad=ad)
    w.set_ept(DATA_GPA[Level.PTE], Level.PTE, 0)
    t = tla(w, access=access)
    assert t.outcome is LaOutcome.VIOLATION and t.stage is Stage.FINAL
    assert t.gpa == DATA_GPA[Level.PTE] | (LA & 0xFFF)          # the full byte address
    # access bit, GLA valid, final, U/S = 1, R/W = 1, XD = 0
    assert t.qual == (1 << int(access)) | 0x80 | 0x100 | 0x200 | 0x400
    assert t.ad_updates == ()          # guest A/D only after the final access passed EPT


@pytest.mark.parametrize("us,rw,xd", list(itertools.product((0, 1), repeat=3)))
def test_final_qual_bits_9_to_11_from_the_guest_walk(us, rw, xd):
    """Bit 9 = AND U/S, bit 10 = AND R/W, bit 11 = OR XD over the guest entries,
    set on different levels so an AND/OR over the leaf alone would be wrong."""
    w = world()
    for level, bit, on in ((Level.PDPTE, PG_US, us), (Level.PML4E, PG_RW, rw)):
        a = w.guest_entry_gpa(LA, level)
        if not on:
            w.gwrite(a, w.gread(a) & ~bit)
    if xd:
        a = w.guest_entry_gpa(LA, Level.PDE)
        w.gwrite(a, w.gread(a) | PG_XD)
    a = w.ept_leaf_addr(DATA_GPA[Level.PTE])
    w.mem.write(a, w.mem.peek(a) & ~EPT_RWX | EPT_X)            # execute-only: reads violate
    t = tla(w, access=Access.READ, user=False)
    assert t.outcome is LaOutcome.VIOLATION
    assert t.qual == 0x1 | EPT_X << 3 | 0x180 | us << 9 | rw << 10 | xd << 11


def test_qual_bit_10_ignores_wp():
    w = world(wp=False)
    a = w.guest_entry_gpa(LA, Level.PTE)
    w.gwrite(a, w.gread(a) & ~PG_RW)
    w.set_ept(DATA_GPA[Level.PTE], Level.PTE, 0)
    t = tla(w, access=Access.WRITE)            # allowed by the guest (WP = 0), EPT not present
    assert t.outcome is LaOutcome.VIOLATION and t.qual == 0x2 | 0x180 | 0x200


def test_final_permission_qual_and_ept_perm_bits():
    w = world()
    a = w.ept_leaf_addr(DATA_GPA[Level.PTE])
    w.mem.write(a, w.mem.peek(a) & ~(EPT_W | EPT_X))
    assert tla(w, access=Access.READ).outcome is LaOutcome.OK
    assert tla(w, access=Access.WRITE).qual == 0x2 | EPT_R << 3 | 0x780
    assert tla(w, access=Access.FETCH).qual == 0x4 | EPT_R << 3 | 0x780


# -- guest A/D through EPT (kvm-unit-tests ept_access_test_paddr_*) ---------------------------
PADDR_OPS = [(Access.READ, False), (Access.WRITE, False), (Access.FETCH, False), (Access.FETCH, True)]


def paddr_world(ad: bool, pt_perms: int, pte_ad: int) -> tuple[World, int]:
    """The EPT leaf mapping the guest PT page (the page holding the leaf PTE) gets
    exactly ``pt_perms``; the leaf PTE's A/D are ``pte_ad``; upper guest entries have A."""
    w = world(ad=ad, accessed=bool(pte_ad & PG_A), dirty=bool(pte_ad & PG_D), table_accessed=True)
    pte = w.guest_entry_gpa(LA, Level.PTE)
    a = w.ept_leaf_addr(pte)
    w.mem.write(a, w.mem.peek(a) & ~EPT_RWX | pt_perms)
    return w, pte


# (EPTP[6], EPT perms of the guest PT page, preset PTE A/D) -> expected per op (None: allowed)
PADDR_TABLE = [
    (False, 0, PG_A | PG_D, [0x81] * 4),
    (True, 0, PG_A | PG_D, [0x83] * 4),
    (False, EPT_R, 0, [0x8B] * 4),
    (False, EPT_R, PG_A, [None, 0x8B, None, None]),
    (False, EPT_R, PG_A | PG_D, [None] * 4),
    (True, EPT_R, 0, [0x8B] * 4),
    (True, EPT_R, PG_A, [0x8B] * 4),
    (True, EPT_R, PG_A | PG_D, [0x8B] * 4),
    (False, EPT_R | EPT_W, 0, [None] * 4),
    (False, EPT_RWX, 0, [None] * 4),
    (False, EPT_R | EPT_X, 0, [0xAB] * 4),
    (False, EPT_R | EPT_X, PG_A, [None, 0xAB, None, None]),
    (False, EPT_R | EPT_X, PG_A | PG_D, [None] * 4),
    (True, EPT_R | EPT_X, 0, [0xAB] * 4),
    (True, EPT_R | EPT_X, PG_A, [0xAB] * 4),
    (True, EPT_R | EPT_X, PG_A | PG_D, [0xAB] * 4),
]


@pytest.mark.parametrize("ad,perms,pte_ad,expected", PADDR_TABLE,
                         ids=[f"ad{int(a)}-p{p}-pte{q:#x}" for a, p, q, _ in PADDR_TABLE])
def test_kvm_unit_tests_paddr_table(ad, perms, pte_ad, expected):
    for (access, user), want in zip(PADDR_OPS, expected, strict=True):
        w, pte = paddr_world(ad, perms, pte_ad)
        t = tla(w, access=access, user=user)
        if want is None:
            assert t.outcome is LaOutcome.OK, (access, user, t.reason, t.qual and hex(t.qual))
            leaf = w.gread(pte)
            assert leaf & PG_A and bool(leaf & PG_D) == bool(pte_ad & PG_D or access is Access.WRITE)
        else:
            assert t.outcome is LaOutcome.VIOLATION, (access, user, t.reason)
            assert (t.qual, t.gpa) == (want, pte), (access, user, hex(t.qual))
            assert not t.qual & 0x104                # never bit 2 or 8 for the guest PT page
            # not present, or A/D on: the PTE read itself; else the A/D update write
            assert t.stage is (Stage.WALK if ad or not perms else Stage.AD)
            assert w.gread(pte) & (PG_A | PG_D) == pte_ad     # the PTE was not updated


def test_ad_update_violation_leaves_the_levels_above_updated():
    """Top level first: A lands in the PML4E/PDPTE/PDE (their pages are writable)
    before the PTE's A update meets the read-only page."""
    w, pte = paddr_world(False, EPT_R, 0)
    for level in LEVELS[:3]:
        a = w.guest_entry_gpa(LA, level)
        w.gwrite(a, w.gread(a) & ~PG_A)
    t = tla(w)
    assert t.outcome is LaOutcome.VIOLATION and t.stage is Stage.AD
    assert [u.level for u in t.ad_updates] == list(LEVELS[:3])
    for level in LEVELS[:3]:
        assert w.gread(w.guest_entry_gpa(LA, level)) & PG_A


@pytest.mark.parametrize("access", ACCESSES)
@pytest.mark.parametrize("ad", [False, True])
def test_guest_ad_land_in_dram_at_the_hpas(access, ad):
    w = world(ad=ad)
    t = tla(w, access=access)
    assert t.outcome is LaOutcome.OK
    assert [u.level for u in t.ad_updates] == list(LEVELS)          # top level first
    for s in t.guest_steps:
        e = w.mem.peek(s.hpa)
        assert e & PG_A
        assert bool(e & PG_D) == (s.level == Level.PTE and access is Access.WRITE)
    # a second identical access finds them set: no update
    assert tla(w, access=access).ad_updates == ()
    # with EPTP[6] = 0 each update was its own EPT write check
    assert len(t.ad_checks) == (0 if ad else 4)


def test_guest_d_only_on_the_leaf_and_only_on_writes():
    w = world()
    tla(w, access=Access.READ)
    tla(w, access=Access.FETCH)
    for level in LEVELS:
        assert not w.gread(w.guest_entry_gpa(LA, level)) & PG_D
    tla(w, access=Access.WRITE)
    assert [bool(w.gread(w.guest_entry_gpa(LA, lv)) & PG_D) for lv in LEVELS] == [False] * 3 + [True]


# -- EPT A/D (EPTP[6]) on the 2D walk -------------------------------------------------------------
def _ept_ad(w, gpa):
    return [w.mem.peek(w.ept_entry_addr(gpa, lv, create=False)) & (EPT_A | EPT_D) for lv in LEVELS]


@pytest.mark.parametrize("access", ACCESSES)
def test_ept_d_on_the_leaves_mapping_guest_tables_even_for_reads(access):
    w = world(ad=True)
    t = tla(w, access=access)
    assert t.outcome is LaOutcome.OK
    for s in t.guest_steps:
        assert _ept_ad(w, s.gpa)[-1] == EPT_A | EPT_D           # the leaf: A and D
        assert all(x == EPT_A for x in _ept_ad(w, s.gpa)[:-1])  # non-leaf: A only
    data = _ept_ad(w, DATA_GPA[Level.PTE])[-1]
    assert data == (EPT_A | EPT_D if access is Access.WRITE else EPT_A)


def test_no_ept_ad_without_eptp_bit_6():
    w = world(ad=False)
    tla(w, access=Access.WRITE)
    for s in tla(w).guest_steps:
        assert _ept_ad(w, s.gpa) == [0] * 4
    assert _ept_ad(w, DATA_GPA[Level.PTE]) == [0] * 4


def test_completed_ept_translations_keep_ad_when_a_later_step_faults():
    w = world(ad=True)
    w.gwrite(w.guest_entry_gpa(LA, Level.PDE), 0)           # guest #PF at the PDE
    t = tla(w)
    assert t.outcome is LaOutcome.PAGE_FAULT
    for s in t.guest_steps:                                   # PML4E, PDPTE, PDE pages: A|D
        assert _ept_ad(w, s.gpa)[-1] == EPT_A | EPT_D
    # an EPT translation that faults sets nothing
    w = world(ad=True)
    egpa = w.guest_entry_gpa(LA, Level.PDE)
    a = w.ept_leaf_addr(egpa)
    w.mem.write(a, w.mem.peek(a) & ~EPT_W)
    t = tla(w)
    assert t.outcome is LaOutcome.VIOLATION and t.qual == 0x83 | (EPT_R | EPT_X) << 3
    assert _ept_ad(w, egpa)[-1] == 0        # (the upper levels are shared with the PML4 page)
    assert _ept_ad(w, t.guest_steps[0].gpa)[-1] == EPT_A | EPT_D


def test_final_violation_sets_no_guest_ad():
    w = world()
    w.set_ept(DATA_GPA[Level.PTE], Level.PTE, 0)
    tla(w, access=Access.WRITE)
    for level in LEVELS:
        assert not w.gread(w.guest_entry_gpa(LA, level)) & (PG_A | PG_D)


def test_guest_ad_cas_race_restarts_the_walk():
    w = world()
    pte = w.guest_entry_gpa(LA, Level.PTE)
    hpa = w.hpa_of(pte)
    orig = w.mem.cas
    fired = []

    def racing_cas(addr, expected, new, source="host"):
        if addr == hpa and not fired:
            fired.append(1)
            w.mem.write(hpa, expected | PG_A)               # another CPU sets A first
        return orig(addr, expected, new, source)
    w.mem.cas = racing_cas
    t = tla(w, access=Access.WRITE)
    assert t.outcome is LaOutcome.OK and t.retries == 1
    assert w.gread(pte) & (PG_A | PG_D) == PG_A | PG_D


# -- CR0.PG = 0 ---------------------------------------------------------------------------------------
def test_paging_off_la_is_the_gpa():
    w = World(paging=False)
    w.ept_map(0x0060_0000, 0x0300_0000, level=Level.PDE, memtype=MemType.WT)
    t = translate_la(w.mem, w.eptp, w.regs, 0x0061_2345, Access.WRITE, False, w.config)
    assert t.outcome is LaOutcome.OK
    assert (t.gpa, t.hpa, t.page_size, t.memtype) == (0x0061_2345, 0x0301_2345, 1 << 21, MemType.WT)
    assert t.guest_refs == 0 and t.ept_refs == 3
    t = translate_la(w.mem, w.eptp, w.regs, 0x0081_2345, Access.FETCH, True, w.config)
    assert t.outcome is LaOutcome.VIOLATION and t.gpa == 0x0081_2345
    assert t.qual == 0x4 | 0x80 | 0x100 | 0x200 | 0x400         # bits 9-11 = 1, 1, 0


def test_canonical_and_la_range_checks():
    assert is_canonical(0xFFFF_8000_0000_0000) and not is_canonical(0x0000_8000_0000_0000)
    w = world()
    with pytest.raises(ValueError):
        tla(w, la=0x0001_0000_0000_0000)
    # upper-half addresses use index 256.. of the PML4
    w.guest_map(0xFFFF_8000_0000_1000, 0x5000)
    assert tla(w, la=0xFFFF_8000_0000_1008).gpa == 0x5008
    with pytest.raises(ValueError):
        translate_la(w.mem, w.eptp, GuestRegs(paging=False), 1 << 48, Access.READ)


def test_cr3_low_and_high_bits_ignored_and_checked():
    w = world()
    regs = w.regs.with_cr3(w.guest_pml4 | 0x18 | 0xFFF)      # PWT/PCD and garbage in 11:0
    assert tla(w, regs=regs).outcome is LaOutcome.OK
    with pytest.raises(ValueError):
        GuestRegs(cr3=1 << 47).check(46)
    GuestRegs(cr3=(1 << 60) | 0x1000).check(46)                # bits 63:52 ignored
