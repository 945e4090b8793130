"""Tests of the NetBSD EPT pmap golden model (model/pmap.py).

Every expectation is that of NetBSD's x86 pmap.c with the EPT callbacks of
the seed commit (rev. 1.322, Feb 2019): pmap_ept_transform, pmap_ept_enter,
pmap_ept_remove / pmap_ept_remove_pte / pmap_ept_free_ptp, pmap_ept_sync_pv,
pmap_ept_write_protect, pmap_ept_unwire, and the generic pmap_pp_clear_attrs,
pmap_test_attrs, pmap_pp_remove, pmap_protect, pmap_page_protect.

The tables are checked in the simulated DRAM directly (raw words), and the
result of each operation is checked through the reference walker
(model.walk.walk / translate), which stands in for the hardware.
"""

from __future__ import annotations

import pytest

from model.formats import (
    EPT_A, EPT_D, EPT_IGNORE_PAT, EPT_PVLIST, EPT_R, EPT_W, EPT_WIRED, EPT_X,
    Access, MemType, Outcome,
)
from model.physmem import FrameAllocator, PhysicalMemory
from model.pmap import (
    ENOMEM, PMAP_CANFAIL, PMAP_NOCACHE, PMAP_NOCACHE_OVR, PMAP_WIRED,
    PMAP_WRITE_BACK, PMAP_WRITE_COMBINE, PP_ATTRS_M, PP_ATTRS_U, PP_ATTRS_W,
    VM_MAXUSER_ADDRESS, VM_PROT_ALL, VM_PROT_EXECUTE, VM_PROT_NONE, VM_PROT_READ,
    VM_PROT_WRITE, PageDB, Pmap, PmapError, Shootdown, native_mmu_access,
)
from model.walk import translate, walk

# x86-64 native PTE bits (x86/include/pte.h), written out here on purpose
# rather than imported, so a wrong constant in the model shows up.
PG_V = 1 << 0
PG_RW = 1 << 1
PG_u = 1 << 2
PG_U = 1 << 5        # accessed
PG_M = 1 << 6        # modified
PG_W = 1 << 9        # wired (PTE_AVL1)
PG_PVLIST = 1 << 10  # PTE_AVL2
PG_NX = 1 << 63

FRAME = 0x000FFFFFFFFFF000
PTP_BASE = 0x100000
GUEST_BASE = 0x1000000
UNMANAGED = 0x80000000          # outside the guest allocator: device memory
WB_BITS = (int(MemType.WB) << 3) | EPT_IGNORE_PAT     # 0x70
RWX = EPT_R | EPT_W | EPT_X

R = VM_PROT_READ
RW = VM_PROT_READ | VM_PROT_WRITE
RX = VM_PROT_READ | VM_PROT_EXECUTE
RWXP = VM_PROT_ALL

PDP = 1              # pmap_create counts the top-level page (PDP_SIZE) in resident_count
K4 = 1 << 12
M2 = 1 << 21
G1 = 1 << 30
G512 = 1 << 39


def gva(pml4=0, pdpt=0, pd=0, pt=0):
    return (pml4 << 39) | (pdpt << 30) | (pd << 21) | (pt << 12)


class Env:
    """One simulated machine: DRAM, a PTP allocator, managed guest frames."""

    def __init__(self, ptp_count=64, guest_count=64):
        self.mem = PhysicalMemory()
        self.ptp_frames = FrameAllocator(self.mem, PTP_BASE, ptp_count)
        self.guest = FrameAllocator(self.mem, GUEST_BASE, guest_count)
        self.pages = PageDB(self.guest)
        self.log: list[tuple[Pmap, int, Shootdown]] = []

    def _flush(self, pmap, va, why):
        self.log.append((pmap, va, why))

    def ept(self, has_ad: bool = True) -> Pmap:
        pm = Pmap(self.mem, self.ptp_frames, self.pages, tlb_flush=self._flush)
        pm.ept_transform(has_ad=has_ad)
        return pm

    def native(self) -> Pmap:
        return Pmap(self.mem, self.ptp_frames, self.pages, tlb_flush=self._flush)

    def gpa(self, i: int) -> int:
        """Managed guest frame number i."""
        return GUEST_BASE + i * K4

    def shots(self, pmap=None):
        """The shootdown log as (va, why), optionally for one pmap."""
        return [(va, why) for p, va, why in self.log if pmap is None or p is pmap]

    def dram(self):
        return list(self.mem.nonzero_words())


@pytest.fixture
def env():
    return Env()


def entries(mem: PhysicalMemory, root: int, va: int, valid: int = RWX):
    """Raw [(addr, value)] of PML4E, PDPTE, PDE, PTE for va, read from DRAM.

    Stops after the first entry without a ``valid`` bit.  Independent of the
    model's own table walking.
    """
    out = []
    table = root
    for shift in (39, 30, 21, 12):
        addr = table + ((va >> shift) & 0x1FF) * 8
        value = mem.peek(addr)
        out.append((addr, value))
        if not value & valid:
            break
        table = value & FRAME
    return out


def leaf(env_or_mem, pm: Pmap, va: int) -> int:
    mem = env_or_mem.mem if isinstance(env_or_mem, Env) else env_or_mem
    e = entries(mem, pm.pdir_pa, va, valid=PG_V if not pm.is_ept else RWX)
    return e[3][1] if len(e) == 4 else 0


def pv_set(env: Env, pa: int):
    return set(env.pages.page(pa).pv)


# =============================================================================
# pmap_ept_transform / eptp
# =============================================================================

class TestTransform:
    def test_top_level_zeroed_and_is_ept(self, env):
        pm = env.native()
        assert not pm.is_ept
        # stale native entries (kernel slots, recursive slot) in the pdir
        env.mem.write(pm.pdir_pa + 256 * 8, 0x200000 | PG_V | PG_RW)
        env.mem.write(pm.pdir_pa + 511 * 8, pm.pdir_pa | PG_V | PG_RW)
        pm.ept_transform()
        assert pm.is_ept
        assert not env.mem.read_frame(pm.pdir_pa).any()
        assert pm.resident_count == PDP and pm.wired_count == 0
        assert pm.ptp_count == 0

    def test_eptp_points_at_pdir(self, env):
        pm = env.ept()
        e = pm.eptp()
        assert e.pml4_pa == pm.pdir_pa
        assert e.ad_enabled is True
        assert e.memtype == MemType.WB
        assert e.walk_length == 4
        assert e.encode() == pm.pdir_pa | 6 | (3 << 3) | (1 << 6)
        with pytest.raises(PmapError, match="A/D"):
            pm.eptp(ad_enabled=False)          # the pmap's shootdowns rely on A
        no_ad = env.ept(has_ad=False)
        assert no_ad.eptp().encode() == no_ad.pdir_pa | 6 | (3 << 3)

    def test_native_pmap_has_no_eptp(self, env):
        with pytest.raises(PmapError):
            env.native().eptp()

    def test_transform_with_mappings_raises(self, env):
        pm = env.native()
        assert pm.enter(gva(pt=1), env.gpa(0), RW) == 0
        before = env.dram()
        with pytest.raises(PmapError):
            pm.ept_transform()
        assert not pm.is_ept
        assert env.dram() == before
        assert pm.extract(gva(pt=1)) == env.gpa(0)

    def test_fresh_ept_pmap_has_nothing_mapped(self, env):
        pm = env.ept()
        for va in (0, gva(pt=1), gva(1, 2, 3, 4)):
            t = walk(env.mem, pm.eptp(), va, Access.READ)
            assert t.outcome is Outcome.VIOLATION
            assert t.qual == 1            # read, not present at the PML4E
            assert len(t.steps) == 1
            assert pm.extract(va) is None


# =============================================================================
# pmap_ept_enter
# =============================================================================

class TestEnterBits:
    @pytest.mark.parametrize("prot,bits", [
        (R, EPT_R), (RW, EPT_R | EPT_W), (RX, EPT_R | EPT_X), (RWXP, RWX),
    ])
    def test_prot_bits(self, env, prot, bits):
        pm = env.ept()
        va, pa = gva(0, 0, 0, 5), env.gpa(3)
        assert pm.enter(va, pa, prot) == 0
        assert leaf(env, pm, va) == pa | bits | WB_BITS | EPT_PVLIST

    @pytest.mark.parametrize("flags,memtype", [
        (0, 6), (PMAP_WRITE_BACK, 6), (PMAP_NOCACHE, 0), (PMAP_NOCACHE_OVR, 0),
        (PMAP_WRITE_COMBINE, 1),
    ])
    def test_cache_flags_to_memtype(self, env, flags, memtype):
        pm = env.ept()
        va, pa = gva(0, 0, 1, 0), env.gpa(1)
        assert pm.enter(va, pa, R, flags) == 0
        assert leaf(env, pm, va) == pa | EPT_R | (memtype << 3) | EPT_IGNORE_PAT | EPT_PVLIST
        t = walk(env.mem, pm.eptp(), va | 0x123, Access.READ)
        assert t.outcome is Outcome.OK
        assert t.memtype == memtype
        assert t.hpa == pa | 0x123

    def test_wired(self, env):
        pm = env.ept()
        va, pa = gva(0, 0, 0, 7), env.gpa(0)
        pm.enter(va, pa, RW, PMAP_WIRED)
        assert leaf(env, pm, va) == pa | EPT_R | EPT_W | WB_BITS | EPT_PVLIST | EPT_WIRED
        assert pm.wired_count == 1
        pm.enter(va + K4, env.gpa(1), RW)
        assert pm.wired_count == 1
        assert leaf(env, pm, va + K4) & EPT_WIRED == 0

    def test_unmanaged_page_has_no_pvlist(self, env):
        pm = env.ept()
        va = gva(0, 0, 0, 9)
        pm.enter(va, UNMANAGED, RW, PMAP_NOCACHE)
        assert leaf(env, pm, va) == UNMANAGED | EPT_R | EPT_W | EPT_IGNORE_PAT
        assert env.pages.phys_to_vm_page(UNMANAGED) is None
        assert pm.resident_count == PDP + 4
        t = translate(env.mem, pm.eptp(), va | 8, Access.WRITE)
        assert (t.outcome, t.hpa, t.memtype) == (Outcome.OK, UNMANAGED | 8, 0)
        # removing it must not look for a PV entry
        pm.remove(va, va + K4)
        assert pm.resident_count == PDP

    def test_managed_page_gets_pv_entry(self, env):
        pm = env.ept()
        va, pa = gva(0, 0, 0, 9), env.gpa(5)
        pm.enter(va, pa, R)
        assert env.pages.page(pa).pv == [(pm, va)]
        assert env.pages.page(pa).attrs == 0

    @pytest.mark.parametrize("flags,prot,ad", [
        (0, RW, 0),
        (VM_PROT_READ, R, EPT_A),
        (VM_PROT_EXECUTE, RX, EPT_A),
        (VM_PROT_READ, RW, EPT_A),
        (VM_PROT_WRITE, RW, EPT_A | EPT_D),
        (VM_PROT_READ | VM_PROT_WRITE, RWXP, EPT_A | EPT_D),
        (PMAP_WIRED, RW, 0),                 # not an access
        (PMAP_CANFAIL | PMAP_NOCACHE, RW, 0),
    ])
    def test_access_flags_set_a_and_d(self, env, flags, prot, ad):
        pm = env.ept()
        va, pa = gva(0, 1, 0, 0), env.gpa(2)
        pm.enter(va, pa, prot, flags)
        pte = leaf(env, pm, va)
        assert pte & (EPT_A | EPT_D) == ad
        assert pte & FRAME == pa

    def test_write_access_without_write_prot_is_an_error(self, env):
        pm = env.ept()
        with pytest.raises(PmapError):
            pm.enter(gva(pt=1), env.gpa(0), R, VM_PROT_WRITE)

    def test_intermediate_entries_are_table_pa_rwx(self, env):
        pm = env.ept()
        va, pa = gva(3, 4, 5, 6), env.gpa(0)
        pm.enter(va, pa, R)
        e = entries(env.mem, pm.pdir_pa, va)
        assert len(e) == 4
        ptp_pas = {p.pa for p in pm.ptps()}
        assert len(ptp_pas) == 3
        for _addr, value in e[:3]:
            assert value & ~FRAME == RWX            # exactly table_pa | R | W | X
            assert value & FRAME in ptp_pas
            assert value & FRAME in env.ptp_frames.allocated()
        assert {v & FRAME for _, v in e[:3]} == ptp_pas
        # each entry is in the table its parent points to, at the va's index
        assert e[0][0] == pm.pdir_pa + 3 * 8
        assert e[1][0] == (e[0][1] & FRAME) + 4 * 8
        assert e[2][0] == (e[1][1] & FRAME) + 5 * 8
        assert e[3][0] == (e[2][1] & FRAME) + 6 * 8
        levels = sorted(p.level for p in pm.ptps())
        assert levels == [1, 2, 3]
        assert pm.ptp_count == 3
        assert pm.resident_count == PDP + 4
        assert env.ptp_frames.allocated_frames == 4
        # the intermediate entries pass the walker's reserved-bit checks
        assert walk(env.mem, pm.eptp(), va, Access.READ).outcome is Outcome.OK

    def test_second_page_in_same_pt_allocates_nothing(self, env):
        pm = env.ept()
        pm.enter(gva(pt=1), env.gpa(0), R)
        n = env.ptp_frames.allocated_frames
        pm.enter(gva(pt=2), env.gpa(1), R)
        assert env.ptp_frames.allocated_frames == n
        assert pm.resident_count == PDP + 5
        pm.enter(gva(pd=1), env.gpa(2), R)          # new PT only
        assert env.ptp_frames.allocated_frames == n + 1
        pm.enter(gva(pdpt=1), env.gpa(3), R)        # new PD + PT
        assert env.ptp_frames.allocated_frames == n + 3
        pm.enter(gva(pml4=1), env.gpa(4), R)        # new PDPT + PD + PT
        assert env.ptp_frames.allocated_frames == n + 6
        assert pm.ptp_count == 9
        assert pm.resident_count == PDP + 9 + 5

    def test_translates_with_right_permissions(self, env):
        pm = env.ept()
        eptp = pm.eptp()
        va_r, va_rw, va_rx = gva(0, 0, 0, 1), gva(0, 0, 0, 2), gva(0, 0, 0, 3)
        pm.enter(va_r, env.gpa(1), R)
        pm.enter(va_rw, env.gpa(2), RW)
        pm.enter(va_rx, env.gpa(3), RX)

        t = translate(env.mem, eptp, va_r | 0xABC, Access.READ)
        assert (t.outcome, t.hpa, t.page_size, t.memtype) == (
            Outcome.OK, env.gpa(1) | 0xABC, 4096, 6)
        t = translate(env.mem, eptp, va_r, Access.WRITE)
        assert t.outcome is Outcome.VIOLATION
        assert t.qual == 0b010 | (EPT_R << 3)
        t = translate(env.mem, eptp, va_r, Access.FETCH)
        assert t.outcome is Outcome.VIOLATION
        assert t.qual == 0b100 | (EPT_R << 3)

        assert translate(env.mem, eptp, va_rw, Access.WRITE).hpa == env.gpa(2)
        t = translate(env.mem, eptp, va_rw, Access.FETCH)
        assert t.outcome is Outcome.VIOLATION
        assert t.qual == 0b100 | ((EPT_R | EPT_W) << 3)

        assert translate(env.mem, eptp, va_rx, Access.FETCH).hpa == env.gpa(3)
        assert translate(env.mem, eptp, va_rx, Access.WRITE).outcome is Outcome.VIOLATION

    def test_translate_sets_a_and_d_in_the_pmap_entries(self, env):
        pm = env.ept()
        va, pa = gva(0, 0, 0, 1), env.gpa(1)
        pm.enter(va, pa, RW)
        translate(env.mem, pm.eptp(), va, Access.READ)
        e = entries(env.mem, pm.pdir_pa, va)
        assert all(v & EPT_A for _, v in e)
        assert e[3][1] & EPT_D == 0
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        assert leaf(env, pm, va) & EPT_D

    @pytest.mark.parametrize("prot", [VM_PROT_NONE, VM_PROT_WRITE, VM_PROT_EXECUTE,
                                      VM_PROT_WRITE | VM_PROT_EXECUTE])
    def test_ept_enter_without_read_raises(self, env, prot):
        pm = env.ept()
        with pytest.raises(PmapError):
            pm.enter(gva(pt=1), env.gpa(0), prot)
        assert env.ptp_frames.allocated_frames == 1
        assert pm.resident_count == PDP and pm.ptp_count == 0
        assert env.pages.page(env.gpa(0)).pv == []
        assert not env.mem.read_frame(pm.pdir_pa).any()

    @pytest.mark.parametrize("va,pa", [
        (VM_MAXUSER_ADDRESS, GUEST_BASE), (1 << 47, GUEST_BASE),
        (0x1800, GUEST_BASE), (0x1000, GUEST_BASE + 0x10),
    ])
    def test_enter_bad_va_or_alignment_raises(self, env, va, pa):
        pm = env.ept()
        with pytest.raises(PmapError):
            pm.enter(va, pa, R)
        assert env.ptp_frames.allocated_frames == 1

    def test_enter_last_user_page(self, env):
        pm = env.ept()
        va = VM_MAXUSER_ADDRESS - K4
        pm.enter(va, env.gpa(0), R)
        assert pm.extract(va) == env.gpa(0)
        assert walk(env.mem, pm.eptp(), va, Access.READ).hpa == env.gpa(0)


class TestEnterReplace:
    def test_reenter_same_pa_inherits_a_and_d(self, env):
        pm = env.ept()
        va, pa = gva(0, 0, 0, 4), env.gpa(4)
        pm.enter(va, pa, RW)
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        assert leaf(env, pm, va) & (EPT_A | EPT_D) == EPT_A | EPT_D
        pm.enter(va, pa, RW)
        assert leaf(env, pm, va) == pa | EPT_R | EPT_W | WB_BITS | EPT_PVLIST | EPT_A | EPT_D
        assert env.pages.page(pa).pv == [(pm, va)]
        assert pm.resident_count == PDP + 4
        assert env.shots() == []           # same frame, same W

    def test_reenter_same_pa_changes_wiring_and_prot(self, env):
        pm = env.ept()
        va, pa = gva(0, 0, 0, 4), env.gpa(4)
        pm.enter(va, pa, R, VM_PROT_READ)
        pm.enter(va, pa, RX, PMAP_WIRED)
        assert leaf(env, pm, va) == pa | EPT_R | EPT_X | WB_BITS | EPT_PVLIST | EPT_WIRED | EPT_A
        assert pm.wired_count == 1 and pm.resident_count == PDP + 4
        assert env.shots() == []           # X changed, W and frame did not
        pm.enter(va, pa, RX)
        assert pm.wired_count == 0
        assert leaf(env, pm, va) & EPT_WIRED == 0

    def test_reenter_different_pa_moves_pv_and_folds_attrs(self, env):
        pm = env.ept()
        va, old, new = gva(0, 0, 0, 4), env.gpa(1), env.gpa(2)
        pm.enter(va, old, RW)
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        pm.enter(va, new, R)
        assert leaf(env, pm, va) == new | EPT_R | WB_BITS | EPT_PVLIST   # no A/D inherited
        assert env.pages.page(old).pv == []
        assert env.pages.page(new).pv == [(pm, va)]
        assert env.pages.page(old).attrs == PP_ATTRS_M | PP_ATTRS_U | PP_ATTRS_W
        assert env.pages.page(new).attrs == 0
        assert env.pages.is_referenced(old) and env.pages.is_modified(old)
        assert not env.pages.is_referenced(new) and not env.pages.is_modified(new)
        assert pm.resident_count == PDP + 4
        assert env.shots() == [(va, Shootdown.ENTER)]
        assert walk(env.mem, pm.eptp(), va, Access.READ).hpa == new

    def test_reenter_different_pa_without_access_folds_only_w(self, env):
        pm = env.ept()
        va, old, new = gva(0, 0, 0, 4), env.gpa(1), env.gpa(2)
        pm.enter(va, old, RW)
        pm.enter(va, new, RW)
        assert env.pages.page(old).attrs == PP_ATTRS_W
        assert env.shots() == []

    def test_managed_to_unmanaged_and_back(self, env):
        pm = env.ept()
        va, pa = gva(0, 0, 0, 4), env.gpa(1)
        pm.enter(va, pa, R, VM_PROT_READ)
        pm.enter(va, UNMANAGED, R)
        assert env.pages.page(pa).pv == []
        assert env.pages.page(pa).attrs == PP_ATTRS_U
        assert leaf(env, pm, va) & EPT_PVLIST == 0
        pm.enter(va, pa, R)
        assert env.pages.page(pa).pv == [(pm, va)]
        assert leaf(env, pm, va) & EPT_PVLIST
        assert env.shots() == [(va, Shootdown.ENTER)]     # only the first change had A

    # (old prot, old access flags, new pa index, new prot, shootdown?)
    @pytest.mark.parametrize("oprot,oflags,npa,nprot,shoot", [
        (R, 0, 2, R, False),                  # A clear, frame changes
        (R, 0, 1, RW, False),                 # A clear, W raised
        (R, VM_PROT_READ, 2, R, True),        # A set, frame changes
        (R, VM_PROT_READ, 1, R, False),       # A set, same frame same W
        (R, VM_PROT_READ, 1, RX, False),      # A set, only X changes
        (R, VM_PROT_READ, 1, RW, True),       # A set, W raised
        (RW, VM_PROT_WRITE, 1, R, True),      # A set, W lowered
        (RW, VM_PROT_WRITE, 1, RW, False),    # A+D set, identical
        (RW, VM_PROT_READ, 2, RW, True),      # A set, frame changes, same W
    ])
    def test_enter_shootdown_matrix(self, env, oprot, oflags, npa, nprot, shoot):
        pm = env.ept()
        va = gva(0, 0, 0, 8)
        pm.enter(va, env.gpa(1), oprot, oflags)
        assert env.shots() == []
        pm.enter(va, env.gpa(npa), nprot)
        assert env.shots() == ([(va, Shootdown.ENTER)] if shoot else [])
        assert pm.shootdowns == env.shots()

    def test_enter_shootdown_when_a_set_by_hardware(self, env):
        pm = env.ept()
        va = gva(0, 0, 0, 8)
        pm.enter(va, env.gpa(1), RW)
        pm.enter(va, env.gpa(2), RW)
        assert env.shots() == []
        translate(env.mem, pm.eptp(), va, Access.READ)
        pm.enter(va, env.gpa(3), RW)
        assert env.shots() == [(va, Shootdown.ENTER)]

    def test_fresh_enter_never_shoots_down(self, env):
        pm = env.ept()
        for i in range(5):
            pm.enter(gva(i, i, i, i), env.gpa(i), RWXP, VM_PROT_WRITE | PMAP_WIRED)
        assert env.shots() == []


class TestEnterNoMemory:
    def test_enomem_with_canfail_leaks_nothing(self):
        env = Env(ptp_count=2)                    # pdir + 1: a mapping needs 3
        pm = env.ept()
        before = env.dram()
        assert pm.enter(gva(pt=1), env.gpa(0), R, PMAP_CANFAIL) == ENOMEM
        assert pm.gc_ptp_count == 1 and env.ptp_frames.allocated_frames == 2   # pmap_unget_ptp -> pm_gc_ptp
        pm.update()
        assert env.ptp_frames.allocated_frames == 1
        assert env.ptp_frames.free_frames == 1
        assert pm.ptp_count == 0 and pm.resident_count == PDP
        assert env.pages.page(env.gpa(0)).pv == []
        assert env.dram() == before
        assert env.shots() == []

    def test_enomem_without_canfail_raises(self):
        env = Env(ptp_count=3)
        pm = env.ept()
        with pytest.raises(PmapError):
            pm.enter(gva(pt=1), env.gpa(0), R)
        assert pm.gc_ptp_count == 2 and env.ptp_frames.allocated_frames == 3   # pmap_unget_ptp -> pm_gc_ptp
        pm.update()
        assert env.ptp_frames.allocated_frames == 1
        assert pm.ptp_count == 0 and pm.resident_count == PDP
        assert env.pages.page(env.gpa(0)).pv == []

    def test_partial_allocation_is_given_back(self):
        env = Env(ptp_count=5)                    # pdir + 3 + 1 spare
        pm = env.ept()
        assert pm.enter(gva(0, 0, 0, 1), env.gpa(0), R) == 0
        assert env.ptp_frames.allocated_frames == 4
        before = env.dram()
        # needs a PD and a PT: the PD is allocated, the PT fails
        assert pm.enter(gva(0, 1, 0, 0), env.gpa(1), R, PMAP_CANFAIL) == ENOMEM
        assert env.ptp_frames.allocated_frames == 5 and pm.gc_ptp_count == 1     # the PD, on pm_gc_ptp
        pm.update()
        assert env.ptp_frames.allocated_frames == 4
        assert pm.ptp_count == 3 and pm.resident_count == PDP + 4
        assert env.dram() == before
        # a mapping in the existing PT still works without any frame
        assert pm.enter(gva(0, 0, 0, 2), env.gpa(1), R, PMAP_CANFAIL) == 0
        # and the spare frame is enough for a new PT under the existing PD
        assert pm.enter(gva(0, 0, 1, 0), env.gpa(2), R, PMAP_CANFAIL) == 0
        assert env.ptp_frames.allocated_frames == 5
        assert pm.resident_count == PDP + 4 + 1 + 2

    def test_enter_after_enomem_succeeds_once_frames_are_back(self):
        env = Env(ptp_count=4)
        a, b = env.ept(), env.ept()               # 2 pdirs, 2 frames left
        assert a.enter(gva(pt=1), env.gpa(0), R, PMAP_CANFAIL) == ENOMEM
        # pmap_unget_ptp queued the PDPT and PD on pm_gc_ptp: the retry takes
        # them back (pmap_get_ptp) and needs one frame, the one b gives back
        assert env.ptp_frames.allocated_frames == 4 and a.gc_ptp_count == 2
        b.destroy()
        assert a.enter(gva(pt=1), env.gpa(0), R, PMAP_CANFAIL) == 0
        assert a.extract(gva(pt=1)) == env.gpa(0)


# =============================================================================
# pmap_ept_remove
# =============================================================================

class TestRemove:
    def test_single_page(self, env):
        pm = env.ept()
        a, b = gva(0, 0, 0, 1), gva(0, 0, 0, 2)
        pm.enter(a, env.gpa(1), R)
        pm.enter(b, env.gpa(2), R)
        pm.remove(a, a + K4)
        assert leaf(env, pm, a) == 0
        assert pm.extract(a) is None
        assert pm.extract(b) == env.gpa(2)
        assert pm.ptp_count == 3
        assert pm.resident_count == PDP + 4
        assert env.pages.page(env.gpa(1)).pv == []
        assert env.shots() == []                      # A clear, PT not empty
        t = walk(env.mem, pm.eptp(), a, Access.READ)
        assert t.outcome is Outcome.VIOLATION and t.qual == 1 and len(t.steps) == 4

    def test_last_page_frees_all_ptps(self, env):
        pm = env.ept()
        va = gva(2, 3, 4, 5)
        pm.enter(va, env.gpa(0), R)
        ptp_pas = {p.pa for p in pm.ptps()}
        pm.remove(va, va + K4)
        assert pm.ptp_count == 0 and pm.resident_count == PDP
        assert pm.gc_ptp_count == 3 and env.ptp_frames.allocated_frames == 4   # on pm_gc_ptp
        pm.update()                                   # pmap_update frees them
        assert env.ptp_frames.allocated_frames == 1
        assert not ptp_pas & env.ptp_frames.allocated()
        assert not env.mem.read_frame(pm.pdir_pa).any()
        # the PTE was zeroed, and every parent entry too, before the frees
        assert all(not env.mem.read_frame(p).any() for p in ptp_pas)
        # empty PT: NetBSD forces A to flush the PDE
        assert env.shots() == [(va, Shootdown.REMOVE_PTE)]
        assert walk(env.mem, pm.eptp(), va, Access.READ).qual == 1

    def test_parents_freed_only_when_empty(self, env):
        pm = env.ept()
        a = gva(0, 0, 0, 0)        # PD A under PDPT 0
        b = gva(0, 1, 0, 0)        # PD B under the same PDPT
        pm.enter(a, env.gpa(0), R)
        pm.enter(b, env.gpa(1), R)
        ea = entries(env.mem, pm.pdir_pa, a)
        eb = entries(env.mem, pm.pdir_pa, b)
        pd_a, pt_a = ea[1][1] & FRAME, ea[2][1] & FRAME
        assert pm.ptp_count == 5
        pm.remove(a, a + K4)
        assert pm.ptp_count == 3
        pm.update()
        assert env.ptp_frames.allocated_frames == 4
        assert pd_a not in env.ptp_frames.allocated()
        assert pt_a not in env.ptp_frames.allocated()
        assert env.mem.peek(ea[1][0]) == 0            # PDPTE[0] cleared
        assert env.mem.peek(ea[2][0]) == 0            # PDE in the freed PD cleared
        assert env.mem.peek(ea[0][0]) == ea[0][1]     # PML4E kept
        assert env.mem.peek(eb[1][0]) == eb[1][1]     # PDPTE[1] kept
        assert pm.extract(b) == env.gpa(1)
        assert pm.resident_count == PDP + 3 + 1

    def test_range_crossing_2m_and_1g_boundaries(self, env):
        pm = env.ept()
        a = G1 - K4                  # PDPT 0, PD 511, PT 511
        b = G1                       # PDPT 1, PD 0, PT 0
        c = G1 + M2 - K4             # PDPT 1, PD 0, PT 511
        d = G1 + M2                  # PDPT 1, PD 1, PT 0
        e = G1 + 2 * M2              # PDPT 1, PD 2: outside the range
        for i, va in enumerate((a, b, c, d, e)):
            pm.enter(va, env.gpa(i), R)
        assert pm.ptp_count == 1 + 2 + 4
        pm.remove(a, d + K4)
        for va in (a, b, c, d):
            assert pm.extract(va) is None
            assert walk(env.mem, pm.eptp(), va, Access.READ).outcome is Outcome.VIOLATION
        assert pm.extract(e) == env.gpa(4)
        assert pm.ptp_count == 3                      # PDPT, PD of PDPT 1, PT of e
        assert pm.resident_count == PDP + 4
        pm.update()
        assert env.ptp_frames.allocated_frames == 4
        assert entries(env.mem, pm.pdir_pa, a)[1][1] == 0   # PDPTE 0 cleared
        # no entry had A: only the PTs that emptied shoot down (b's PT keeps c)
        assert env.shots() == [(a, Shootdown.REMOVE_PTE), (c, Shootdown.REMOVE_PTE),
                               (d, Shootdown.REMOVE_PTE)]
        for i in range(4):
            assert env.pages.page(env.gpa(i)).pv == []
        assert env.pages.page(env.gpa(4)).pv == [(pm, e)]

    def test_range_crossing_512g_boundary(self, env):
        pm = env.ept()
        a, b = G512 - K4, G512
        pm.enter(a, env.gpa(0), R)
        pm.enter(b, env.gpa(1), R)
        assert pm.ptp_count == 6
        pm.remove(a, b + K4)
        assert pm.ptp_count == 0 and pm.resident_count == PDP
        pm.update()
        assert env.ptp_frames.allocated_frames == 1
        assert not env.mem.read_frame(pm.pdir_pa).any()

    def test_range_with_holes(self, env):
        pm = env.ept()
        base = gva(0, 0, 3, 0)
        vas = [base, base + 2 * K4, base + 5 * K4, base + 4 * M2 + 7 * K4]
        for i, va in enumerate(vas):
            pm.enter(va, env.gpa(i), R)
        translate(env.mem, pm.eptp(), vas[1], Access.READ)
        pm.remove(base, base + 8 * M2)
        assert pm.ptp_count == 0 and pm.resident_count == PDP
        pm.update()
        assert env.ptp_frames.allocated_frames == 1
        # vas[1] had A; vas[2] emptied its PT; vas[3] emptied its PT
        assert env.shots() == [(vas[1], Shootdown.REMOVE_PTE),
                               (vas[2], Shootdown.REMOVE_PTE),
                               (vas[3], Shootdown.REMOVE_PTE)]

    def test_partial_range_leaves_the_rest(self, env):
        pm = env.ept()
        base = gva(0, 0, 0, 0)
        for i in range(6):
            pm.enter(base + i * K4, env.gpa(i), R)
        pm.remove(base + K4, base + 4 * K4)
        assert [pm.extract(base + i * K4) is not None for i in range(6)] == \
            [True, False, False, False, True, True]
        assert pm.resident_count == PDP + 3 + 3

    def test_remove_whole_space(self, env):
        pm = env.ept()
        vas = [gva(0, 0, 0, 0), gva(0, 5, 6, 7), gva(1, 0, 0, 0), gva(200, 511, 511, 511),
               VM_MAXUSER_ADDRESS - K4]
        for i, va in enumerate(vas):
            pm.enter(va, env.gpa(i), RW, PMAP_WIRED)
        assert pm.wired_count == 5
        pm.remove(0, VM_MAXUSER_ADDRESS)
        assert pm.ptp_count == 0 and pm.resident_count == PDP and pm.wired_count == 0
        pm.update()
        assert env.ptp_frames.allocated_frames == 1
        assert not env.mem.read_frame(pm.pdir_pa).any()
        assert list(pm.mappings()) == []
        for i in range(5):
            assert env.pages.page(env.gpa(i)).pv == []
        # every PT emptied: one forced shootdown each
        assert [why for _, why in env.shots()] == [Shootdown.REMOVE_PTE] * 5
        assert sorted(va for va, _ in env.shots()) == sorted(vas)

    def test_remove_folds_a_d_into_page_attrs(self, env):
        pm = env.ept()
        keep = gva(0, 0, 0, 0)
        va, pa = gva(0, 0, 0, 1), env.gpa(1)
        pm.enter(keep, env.gpa(0), R)
        pm.enter(va, pa, RW)
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        pm.remove(va, va + K4)
        assert env.pages.page(pa).attrs == PP_ATTRS_M | PP_ATTRS_U | PP_ATTRS_W
        assert env.pages.is_referenced(pa)
        assert env.pages.is_modified(pa)
        assert env.shots() == [(va, Shootdown.REMOVE_PTE)]

    def test_remove_of_unaccessed_mapping_keeps_page_unreferenced(self, env):
        pm = env.ept()
        pm.enter(gva(pt=0), env.gpa(0), R)
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, R)
        pm.remove(va, va + K4)
        assert env.pages.page(pa).attrs == 0
        assert not env.pages.is_referenced(pa)
        assert not env.pages.is_modified(pa)
        assert env.shots() == []

    def test_forced_a_on_empty_ptp_reaches_the_page_attrs(self, env):
        # pmap_ept_remove_pte ORs EPT_A into opte when the PTP empties, before
        # the attributes are synced: the page is reported referenced.
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, RW)
        pm.remove(va, va + K4)
        assert env.pages.page(pa).attrs == PP_ATTRS_U | PP_ATTRS_W
        assert not env.pages.is_modified(pa)
        assert env.shots() == [(va, Shootdown.REMOVE_PTE)]

    def test_remove_unmapped_range_is_a_noop(self, env):
        pm = env.ept()
        va = gva(0, 0, 0, 0)
        pm.enter(va, env.gpa(0), R, PMAP_WIRED)
        before = env.dram()
        stats = (pm.resident_count, pm.wired_count, pm.ptp_count,
                 env.ptp_frames.allocated_frames)
        pm.remove(va + K4, va + 10 * K4)              # holes in a live PT
        pm.remove(gva(0, 0, 1, 0), gva(0, 0, 9, 0))   # PDEs invalid
        pm.remove(gva(0, 3, 0, 0), gva(0, 9, 0, 0))   # PDPTEs invalid
        pm.remove(gva(5, 0, 0, 0), gva(9, 0, 0, 0))   # PML4Es invalid
        pm.remove(va, va)                             # empty range
        assert env.dram() == before
        assert (pm.resident_count, pm.wired_count, pm.ptp_count,
                env.ptp_frames.allocated_frames) == stats
        assert env.shots() == []

    def test_remove_on_empty_pmap(self, env):
        pm = env.ept()
        pm.remove(0, VM_MAXUSER_ADDRESS)
        assert env.ptp_frames.allocated_frames == 1
        assert env.shots() == []

    def test_frames_are_reused_zeroed(self, env):
        pm = env.ept()
        va = gva(0, 0, 0, 3)
        pm.enter(va, env.gpa(0), RW)
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        pm.remove(va, va + K4)
        va2 = gva(0, 0, 0, 4)
        pm.enter(va2, env.gpa(1), R)
        e = entries(env.mem, pm.pdir_pa, va)
        assert e[3][1] == 0                          # no stale PTE in the reused PT
        assert walk(env.mem, pm.eptp(), va, Access.READ).outcome is Outcome.VIOLATION
        assert all(v & ~FRAME == RWX for _, v in e[:3])   # no stale A in new tables


# =============================================================================
# pmap_protect / pmap_ept_write_protect
# =============================================================================

class TestWriteProtect:
    def _three(self, env):
        pm = env.ept()
        p1, p2, p3 = gva(pt=1), gva(pt=2), gva(pt=3)
        pm.enter(p1, env.gpa(1), RWXP)
        pm.enter(p2, env.gpa(2), RW)
        pm.enter(p3, env.gpa(3), RW)
        translate(env.mem, pm.eptp(), p1, Access.WRITE)   # A + D
        translate(env.mem, pm.eptp(), p2, Access.READ)    # A only
        return pm, (p1, p2, p3)

    def test_drops_w_and_shoots_down_dirty_only(self, env):
        pm, (p1, p2, p3) = self._three(env)
        pm.write_protect(p1, p3 + K4, VM_PROT_READ)
        base = WB_BITS | EPT_PVLIST
        # A/D are kept: pmap_ept_write_protect only removes W
        assert leaf(env, pm, p1) == env.gpa(1) | EPT_R | EPT_X | base | EPT_A | EPT_D
        assert leaf(env, pm, p2) == env.gpa(2) | EPT_R | base | EPT_A
        assert leaf(env, pm, p3) == env.gpa(3) | EPT_R | base
        assert env.shots() == [(p1, Shootdown.WRITE_PROTECT)]
        for va in (p1, p2, p3):
            t = translate(env.mem, pm.eptp(), va, Access.WRITE)
            assert t.outcome is Outcome.VIOLATION
            assert translate(env.mem, pm.eptp(), va, Access.READ).outcome is Outcome.OK
        assert pm.resident_count == PDP + 6
        # page attributes are not touched by write_protect
        assert env.pages.page(env.gpa(1)).attrs == 0

    def test_protect_read_is_write_protect(self, env):
        pm, (p1, p2, p3) = self._three(env)
        pm.protect(p1, p3 + K4, VM_PROT_READ)
        assert all(leaf(env, pm, va) & EPT_W == 0 for va in (p1, p2, p3))
        assert env.shots() == [(p1, Shootdown.WRITE_PROTECT)]

    def test_execute_kept_by_ept_write_protect(self, env):
        pm, (p1, _, _) = self._three(env)
        pm.protect(p1, p1 + K4, VM_PROT_READ)        # EPT has no NX to put
        assert leaf(env, pm, p1) & EPT_X
        assert translate(env.mem, pm.eptp(), p1, Access.FETCH).outcome is Outcome.OK

    def test_only_the_range_is_touched(self, env):
        pm, (p1, p2, p3) = self._three(env)
        pm.write_protect(p2, p2 + K4, VM_PROT_READ)
        assert leaf(env, pm, p1) & EPT_W
        assert leaf(env, pm, p2) & EPT_W == 0
        assert leaf(env, pm, p3) & EPT_W
        assert env.shots() == []                     # p2 had no D

    def test_unaligned_bounds_are_truncated(self, env):
        pm, (p1, p2, p3) = self._three(env)
        pm.write_protect(p1 + 0x800, p3 + 0x800, VM_PROT_READ)
        assert leaf(env, pm, p1) & EPT_W == 0        # sva & PG_FRAME
        assert leaf(env, pm, p2) & EPT_W == 0
        assert leaf(env, pm, p3) & EPT_W             # eva & PG_FRAME excludes p3

    def test_protect_with_write_does_nothing(self, env):
        pm, (p1, _, p3) = self._three(env)
        before = env.dram()
        pm.protect(p1, p3 + K4, RW)
        pm.protect(p1, p3 + K4, VM_PROT_WRITE)
        pm.protect(p1, p3 + K4, VM_PROT_ALL)
        assert env.dram() == before
        assert env.shots() == []

    def test_write_protect_with_write_changes_nothing(self, env):
        pm, (p1, _, p3) = self._three(env)
        before = env.dram()
        pm.write_protect(p1, p3 + K4, RW)
        assert env.dram() == before
        # nothing removed, but D entries are still shot down (opte & EPT_D)
        assert env.shots() == [(p1, Shootdown.WRITE_PROTECT)]

    def test_protect_none_removes(self, env):
        pm, (p1, p2, p3) = self._three(env)
        pm.protect(p1, p3 + K4, VM_PROT_NONE)
        assert pm.resident_count == PDP and pm.ptp_count == 0
        pm.update()
        assert env.ptp_frames.allocated_frames == 1
        for i in (1, 2, 3):
            assert env.pages.page(env.gpa(i)).pv == []
        assert env.pages.page(env.gpa(1)).attrs == PP_ATTRS_M | PP_ATTRS_U | PP_ATTRS_W
        assert env.shots() == [(p1, Shootdown.REMOVE_PTE), (p2, Shootdown.REMOVE_PTE),
                               (p3, Shootdown.REMOVE_PTE)]

    def test_write_protect_unmapped_range_noop(self, env):
        pm = env.ept()
        pm.enter(gva(pt=0), env.gpa(0), RW)
        before = env.dram()
        pm.write_protect(gva(pt=1), gva(pd=2), VM_PROT_READ)
        assert env.dram() == before
        assert env.shots() == []

    def test_write_after_write_protect_then_reenter_rw(self, env):
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, RW)
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        pm.protect(va, va + K4, VM_PROT_READ)
        assert translate(env.mem, pm.eptp(), va, Access.WRITE).outcome is Outcome.VIOLATION
        # the fault handler re-enters it writable: W changes with A set
        env.log.clear()
        pm.enter(va, pa, RW, VM_PROT_WRITE)
        assert env.shots() == [(va, Shootdown.ENTER)]
        assert translate(env.mem, pm.eptp(), va, Access.WRITE).outcome is Outcome.OK


# =============================================================================
# pmap_page_protect (PageDB.page_protect)
# =============================================================================

class TestPageProtect:
    def _shared(self, env):
        pa = env.gpa(7)
        pm1, pm2 = env.ept(), env.ept()
        v1, v2, v3 = gva(pt=1), gva(pdpt=2), gva(pt=3)
        pm1.enter(v1, pa, RW)
        pm1.enter(v2, pa, RW)
        pm2.enter(v3, pa, R)
        translate(env.mem, pm1.eptp(), v1, Access.WRITE)   # A + D
        translate(env.mem, pm1.eptp(), v2, Access.READ)    # A only
        return pa, pm1, pm2, (v1, v2, v3)

    def test_read_clears_w_everywhere(self, env):
        pa, pm1, pm2, (v1, v2, v3) = self._shared(env)
        env.pages.page_protect(pa, VM_PROT_READ)
        base = pa | EPT_R | WB_BITS | EPT_PVLIST
        assert leaf(env, pm1, v1) == base                 # A and D cleared with W
        assert leaf(env, pm1, v2) == base | EPT_A         # W only, D=0: A kept
        assert leaf(env, pm2, v3) == base                 # nothing to clear
        assert env.shots() == [(v1, Shootdown.SYNC_PV)]
        assert env.shots(pm1) == [(v1, Shootdown.SYNC_PV)]
        pg = env.pages.page(pa)
        assert pg.attrs == PP_ATTRS_M | PP_ATTRS_U         # W folded then cleared
        assert set(pg.pv) == {(pm1, v1), (pm1, v2), (pm2, v3)}
        for pm, va in ((pm1, v1), (pm1, v2), (pm2, v3)):
            assert translate(env.mem, pm.eptp(), va, Access.WRITE).outcome is Outcome.VIOLATION
            assert translate(env.mem, pm.eptp(), va, Access.READ).hpa == pa
        assert pm1.resident_count == PDP + 2 + 5 and pm2.resident_count == PDP + 1 + 3

    def test_read_execute_also_only_clears_w(self, env):
        pa, pm1, pm2, (v1, v2, v3) = self._shared(env)
        env.pages.page_protect(pa, VM_PROT_READ | VM_PROT_EXECUTE)
        assert all(leaf(env, pm, va) & EPT_W == 0
                   for pm, va in ((pm1, v1), (pm1, v2), (pm2, v3)))
        assert all(leaf(env, pm, va) & EPT_R
                   for pm, va in ((pm1, v1), (pm1, v2), (pm2, v3)))

    def test_none_removes_every_mapping(self, env):
        pa, pm1, pm2, (v1, v2, v3) = self._shared(env)
        env.pages.page_protect(pa, VM_PROT_NONE)
        assert env.pages.page(pa).pv == []
        assert pm1.resident_count == PDP and pm2.resident_count == PDP
        assert pm1.ptp_count == 0 and pm2.ptp_count == 0
        pm1.update()
        pm2.update()
        assert env.ptp_frames.allocated_frames == 2
        assert not env.mem.read_frame(pm1.pdir_pa).any()
        assert not env.mem.read_frame(pm2.pdir_pa).any()
        # sync_pv(~0) shoots down the entries with A; pmap_ept_pp_remove_ent
        # frees the PTPs without any shootdown of its own
        assert sorted(env.shots(pm1)) == sorted([(v1, Shootdown.SYNC_PV),
                                                 (v2, Shootdown.SYNC_PV)])
        assert env.shots(pm2) == []
        assert env.pages.page(pa).attrs == PP_ATTRS_M | PP_ATTRS_U | PP_ATTRS_W
        for pm, va in ((pm1, v1), (pm1, v2), (pm2, v3)):
            assert walk(env.mem, pm.eptp(), va, Access.READ).outcome is Outcome.VIOLATION

    def test_none_keeps_other_pages_and_ptps(self, env):
        pm = env.ept()
        a, b = gva(pt=1), gva(pt=2)
        pm.enter(a, env.gpa(1), R, PMAP_WIRED)
        pm.enter(b, env.gpa(2), R, PMAP_WIRED)
        env.pages.page_protect(env.gpa(1), VM_PROT_NONE)
        assert pm.extract(a) is None and pm.extract(b) == env.gpa(2)
        assert pm.ptp_count == 3 and pm.resident_count == PDP + 4 and pm.wired_count == 1
        assert env.shots() == []

    @pytest.mark.parametrize("prot", [VM_PROT_WRITE, RW, VM_PROT_ALL])
    def test_write_in_prot_does_nothing(self, env, prot):
        pa, pm1, pm2, _ = self._shared(env)
        before = env.dram()
        attrs = env.pages.page(pa).attrs
        env.pages.page_protect(pa, prot)
        assert env.dram() == before
        assert env.pages.page(pa).attrs == attrs
        assert env.shots() == []

    def test_unmanaged_page_raises(self, env):
        with pytest.raises(PmapError):
            env.pages.page_protect(UNMANAGED, VM_PROT_NONE)


# =============================================================================
# pmap_extract
# =============================================================================

class TestExtract:
    def test_mapped_and_unmapped(self, env):
        pm = env.ept()
        va, pa = gva(1, 2, 3, 4), env.gpa(9)
        assert pm.extract(va) is None                 # no tables at all
        pm.enter(va, pa, R)
        for off in (0, 1, 0x7FF, 0xFFF):
            assert pm.extract(va | off) == pa | off
        assert pm.extract(va + K4) is None            # same PT, empty PTE
        assert pm.extract(va + M2) is None            # same PD, no PT
        assert pm.extract(va + G1) is None            # same PDPT, no PD
        pm.remove(va, va + K4)
        assert pm.extract(va) is None

    def test_unmanaged(self, env):
        pm = env.ept()
        pm.enter(gva(pt=1), UNMANAGED + 5 * K4, R)
        assert pm.extract(gva(pt=1) | 0x10) == UNMANAGED + 5 * K4 + 0x10


# =============================================================================
# pmap_ept_unwire
# =============================================================================

class TestUnwire:
    def test_unwire_clears_wired_bit(self, env):
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, RW, PMAP_WIRED | VM_PROT_WRITE)
        pm.enter(va + K4, env.gpa(2), R, PMAP_WIRED)
        assert pm.wired_count == 2
        old = leaf(env, pm, va)
        assert pm.unwire(va) is True
        assert leaf(env, pm, va) == old & ~EPT_WIRED
        assert pm.wired_count == 1
        assert pm.resident_count == PDP + 5
        assert env.shots() == []

    def test_unwire_unwired_is_noop(self, env):
        pm = env.ept()
        va = gva(pt=1)
        pm.enter(va, env.gpa(1), RW)
        before = env.dram()
        assert pm.unwire(va) is False
        assert env.dram() == before
        assert pm.wired_count == 0

    def test_unwire_twice(self, env):
        pm = env.ept()
        va = gva(pt=1)
        pm.enter(va, env.gpa(1), RW, PMAP_WIRED)
        assert pm.unwire(va) is True
        assert pm.unwire(va) is False
        assert pm.wired_count == 0

    def test_unwire_unmapped_raises(self, env):
        pm = env.ept()
        with pytest.raises(PmapError):
            pm.unwire(gva(pt=1))                      # invalid PDE: panic
        pm.enter(gva(pt=1), env.gpa(1), R, PMAP_WIRED)
        with pytest.raises(PmapError):
            pm.unwire(gva(pt=2))                      # valid PT, invalid PTE
        assert pm.wired_count == 1

    def test_remove_of_wired_drops_wired_count(self, env):
        pm = env.ept()
        pm.enter(gva(pt=1), env.gpa(1), R, PMAP_WIRED)
        pm.remove(gva(pt=1), gva(pt=2))
        assert pm.wired_count == 0


# =============================================================================
# reference / modify
# =============================================================================

class TestReferenceModify:
    def test_reference_cycle(self, env):
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, RW)
        assert not env.pages.is_referenced(pa)
        assert not env.pages.is_modified(pa)
        translate(env.mem, pm.eptp(), va, Access.READ)
        assert leaf(env, pm, va) & EPT_A
        assert env.pages.is_referenced(pa)
        assert not env.pages.is_modified(pa)
        assert env.pages.page(pa).attrs & PP_ATTRS_U      # folded by test_attrs
        assert env.shots() == []                          # testing shoots nothing

        assert env.pages.clear_reference(pa) is True
        assert leaf(env, pm, va) & (EPT_A | EPT_D) == 0
        assert leaf(env, pm, va) & EPT_W                  # only U was asked
        assert env.shots() == [(va, Shootdown.SYNC_PV)]
        assert env.pages.page(pa).attrs & PP_ATTRS_U == 0
        assert not env.pages.is_referenced(pa)

        assert env.pages.clear_reference(pa) is False
        assert env.shots() == [(va, Shootdown.SYNC_PV)]   # nothing to clear

        translate(env.mem, pm.eptp(), va, Access.READ)
        assert leaf(env, pm, va) & EPT_A
        assert env.pages.is_referenced(pa)

    def test_clear_reference_clears_d_too(self, env):
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, RW)
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        assert env.pages.clear_reference(pa) is True
        assert leaf(env, pm, va) & (EPT_A | EPT_D) == 0
        # D was folded into the page attributes before it was cleared
        assert env.pages.is_modified(pa)
        assert not env.pages.is_referenced(pa)

    def test_modify_cycle(self, env):
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, RW)
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        assert env.pages.is_modified(pa)
        assert env.pages.clear_modify(pa) is True
        assert leaf(env, pm, va) & (EPT_A | EPT_D) == 0
        assert env.shots() == [(va, Shootdown.SYNC_PV)]
        assert not env.pages.is_modified(pa)
        assert env.pages.is_referenced(pa)                # U folded, not cleared
        assert env.pages.clear_modify(pa) is False
        assert len(env.shots()) == 1
        translate(env.mem, pm.eptp(), va, Access.WRITE)
        assert env.pages.is_modified(pa)

    def test_clear_modify_without_d_touches_nothing(self, env):
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, RW)
        translate(env.mem, pm.eptp(), va, Access.READ)
        before = env.dram()
        assert env.pages.clear_modify(pa) is False
        assert env.dram() == before
        assert env.shots() == []

    def test_clear_reference_from_attrs_only(self, env):
        pm = env.ept()
        pm.enter(gva(pt=0), env.gpa(0), R)
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, R, VM_PROT_READ)
        pm.remove(va, va + K4)                       # A folded into attrs
        env.log.clear()
        assert env.pages.clear_reference(pa) is True
        assert env.shots() == []
        assert env.pages.clear_reference(pa) is False

    def test_enter_with_access_flags_counts(self, env):
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm.enter(va, pa, RW, VM_PROT_WRITE)
        assert env.pages.is_referenced(pa) and env.pages.is_modified(pa)

    def test_clear_on_every_mapping(self, env):
        pm1, pm2 = env.ept(), env.ept()
        pa = env.gpa(3)
        pm1.enter(gva(pt=1), pa, RW)
        pm1.enter(gva(pt=2), pa, RW)
        pm2.enter(gva(pt=1), pa, RW)
        for pm, va in ((pm1, gva(pt=1)), (pm1, gva(pt=2)), (pm2, gva(pt=1))):
            translate(env.mem, pm.eptp(), va, Access.WRITE)
        assert env.pages.clear_modify(pa) is True
        for pm, va in ((pm1, gva(pt=1)), (pm1, gva(pt=2)), (pm2, gva(pt=1))):
            assert leaf(env, pm, va) & (EPT_A | EPT_D) == 0
        assert len(env.shots(pm1)) == 2 and len(env.shots(pm2)) == 1
        assert {why for _, why in env.shots()} == {Shootdown.SYNC_PV}

    def test_is_referenced_stops_at_first_hit(self, env):
        # pmap_test_attrs stops syncing once the bit is found
        pm = env.ept()
        pa = env.gpa(3)
        pm.enter(gva(pt=1), pa, RW, VM_PROT_READ)
        pm.enter(gva(pt=2), pa, RW, VM_PROT_WRITE)
        assert env.pages.is_referenced(pa)
        assert env.pages.page(pa).attrs & PP_ATTRS_U
        assert env.pages.is_modified(pa)

    def test_unmanaged_raises(self, env):
        with pytest.raises(PmapError):
            env.pages.is_referenced(UNMANAGED)
        with pytest.raises(PmapError):
            env.pages.clear_modify(UNMANAGED)


# =============================================================================
# PV lists
# =============================================================================

class TestPvLists:
    def test_one_page_many_mappings(self, env):
        pm1, pm2 = env.ept(), env.ept()
        pa = env.gpa(5)
        m1 = [gva(pt=1), gva(pd=3), gva(1, 2, 3, 4)]
        m2 = [gva(pt=1), gva(7, 0, 0, 0)]
        for va in m1:
            pm1.enter(va, pa, R)
        for va in m2:
            pm2.enter(va, pa, RW)
        pg = env.pages.page(pa)
        expected = {(pm1, v) for v in m1} | {(pm2, v) for v in m2}
        assert set(pg.pv) == expected and len(pg.pv) == 5
        assert set(pg.mappings()) == expected
        pg.mappings().clear()                         # a copy
        assert len(pg.pv) == 5

        pm1.remove(m1[1], m1[1] + K4)
        expected.discard((pm1, m1[1]))
        assert set(pg.pv) == expected

        pm2.enter(m2[0], env.gpa(6), R)               # va moves to another page
        expected.discard((pm2, m2[0]))
        assert set(pg.pv) == expected
        assert env.pages.page(env.gpa(6)).pv == [(pm2, m2[0])]

        pm1.protect(0, VM_MAXUSER_ADDRESS, VM_PROT_NONE)
        assert set(pg.pv) == {(pm2, m2[1])}

        env.pages.page_protect(pa, VM_PROT_NONE)
        assert pg.pv == []
        assert env.pages.page(env.gpa(6)).pv == [(pm2, m2[0])]
        assert pm2.resident_count == PDP + 1 + 3

    def test_same_va_in_two_pmaps_are_distinct(self, env):
        pm1, pm2 = env.ept(), env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        pm1.enter(va, pa, R)
        pm2.enter(va, pa, R)
        pm1.remove(va, va + K4)
        assert env.pages.page(pa).pv == [(pm2, va)]

    def test_reenter_same_page_does_not_duplicate(self, env):
        pm = env.ept()
        va, pa = gva(pt=1), env.gpa(1)
        for prot in (R, RW, RX, R):
            pm.enter(va, pa, prot)
        assert env.pages.page(pa).pv == [(pm, va)]


# =============================================================================
# statistics and the shootdown callback
# =============================================================================

class TestStatsAndShootdowns:
    def test_stats_through_a_sequence(self, env):
        pm = env.ept()
        a, b, c = gva(pt=1), gva(pt=2), gva(2, 0, 0, 0)
        seq = []

        def snap():
            seq.append((pm.resident_count, pm.wired_count, pm.ptp_count))

        pm.enter(a, env.gpa(1), RW, PMAP_WIRED); snap()          # 3 PTPs + 1
        pm.enter(b, env.gpa(2), R); snap()                       # + 1
        pm.enter(c, env.gpa(3), R, PMAP_WIRED); snap()           # + 3 PTPs + 1
        pm.enter(b, env.gpa(4), R, PMAP_WIRED); snap()           # replace: wired + 1
        pm.unwire(a); snap()
        pm.write_protect(a, b + K4, VM_PROT_READ); snap()
        pm.remove(a, a + K4); snap()
        env.pages.page_protect(env.gpa(4), VM_PROT_NONE); snap() # b gone, PTs freed
        pm.remove(c, c + K4); snap()
        assert seq == [(PDP + r, w, n) for r, w, n in [
            (4, 1, 3), (5, 1, 3), (9, 2, 6), (9, 3, 6), (9, 2, 6),
            (9, 2, 6), (8, 2, 6), (4, 1, 3), (0, 0, 0)]]
        assert env.ptp_frames.allocated_frames == 1 + 6      # the freed PTPs on pm_gc_ptp
        pm.update()
        assert env.ptp_frames.allocated_frames == 1

    def test_resident_count_matches_tables(self, env):
        pm = env.ept()
        for i in range(10):
            pm.enter(gva(i % 3, i % 2, i, i), env.gpa(i), R)
        assert pm.resident_count == PDP + len(list(pm.mappings())) + pm.ptp_count
        assert len(list(pm.mappings())) == 10

    def test_shootdown_calls_in_a_sequence(self, env):
        pm = env.ept()
        eptp = pm.eptp()
        a, b = gva(pt=1), gva(pt=2)
        calls = []

        def mark():
            calls.append(len(env.log))

        pm.enter(a, env.gpa(1), RW); mark()                  # new: 0
        pm.enter(b, env.gpa(2), RW); mark()                  # new: 0
        translate(env.mem, eptp, a, Access.WRITE); mark()    # hardware: 0
        pm.extract(a); mark()                                # 0
        env.pages.is_modified(env.gpa(1)); mark()            # 0
        pm.unwire(a); mark()                                 # 0
        pm.write_protect(a, b + K4, VM_PROT_READ); mark()    # a had D: 1
        pm.enter(a, env.gpa(1), RW); mark()                  # A set, W raised: 1
        env.pages.clear_reference(env.gpa(1)); mark()        # a has A: 1
        env.pages.clear_reference(env.gpa(2)); mark()        # b has no A: 0
        pm.remove(b, b + K4); mark()                         # no A, PT not empty: 0
        pm.remove(a, a + K4); mark()                         # PT empties: 1
        assert calls == [0, 0, 0, 0, 0, 0, 1, 2, 3, 3, 3, 4]
        assert [why for _, why in env.shots()] == [
            Shootdown.WRITE_PROTECT, Shootdown.ENTER, Shootdown.SYNC_PV,
            Shootdown.REMOVE_PTE]
        assert [va for va, _ in env.shots()] == [a, a, a, a]
        assert pm.shootdowns == env.shots()

    def test_callback_gets_the_pmap(self, env):
        pm1, pm2 = env.ept(), env.ept()
        pm1.enter(gva(pt=1), env.gpa(1), R, VM_PROT_READ)
        pm2.enter(gva(pt=1), env.gpa(1), R, VM_PROT_READ)
        env.pages.clear_reference(env.gpa(1))
        assert sorted(id(p) for p, _, _ in env.log) == sorted([id(pm1), id(pm2)])
        assert pm1.shootdowns == [(gva(pt=1), Shootdown.SYNC_PV)]
        assert pm2.shootdowns == [(gva(pt=1), Shootdown.SYNC_PV)]

    def test_no_callback_set(self, env):
        pm = Pmap(env.mem, env.ptp_frames, env.pages)        # NVMM sets it later
        pm.ept_transform()
        pm.enter(gva(pt=1), env.gpa(1), R, VM_PROT_READ)
        pm.remove(gva(pt=1), gva(pt=2))
        assert pm.shootdowns == [(gva(pt=1), Shootdown.REMOVE_PTE)]


# =============================================================================
# native and EPT pmaps sharing a page
# =============================================================================

class TestNativeAndEpt:
    def _pair(self, env, pa):
        nat, ept = env.native(), env.ept()
        vn, ve = gva(0, 0, 0, 5), gva(0, 0, 0, 9)
        nat.enter(vn, pa, RW)
        ept.enter(ve, pa, RW)
        return nat, ept, vn, ve

    def test_each_side_uses_its_own_format(self, env):
        pa = env.gpa(2)
        nat, ept, vn, ve = self._pair(env, pa)
        en = entries(env.mem, nat.pdir_pa, vn, valid=PG_V)
        assert len(en) == 4
        assert en[3][1] == pa | PG_V | PG_RW | PG_u | PG_NX | PG_PVLIST
        for _, v in en[:3]:
            assert v & ~FRAME == PG_u | PG_RW | PG_V
        assert leaf(env, ept, ve) == pa | EPT_R | EPT_W | WB_BITS | EPT_PVLIST
        # native wired and executable, EPT wired
        nat.enter(vn + K4, pa, RWXP, PMAP_WIRED | VM_PROT_WRITE)
        assert leaf(env, nat, vn + K4) == (pa | PG_V | PG_RW | PG_u | PG_PVLIST | PG_W
                                           | PG_U | PG_M)
        nat.enter(vn + 2 * K4, pa, R, PMAP_NOCACHE)
        assert leaf(env, nat, vn + 2 * K4) == (pa | PG_V | PG_u | PG_NX | PG_PVLIST
                                               | (1 << 3) | (1 << 4))
        assert nat.wired_count == 1 and nat.resident_count == PDP + 3 + 3
        assert set(env.pages.page(pa).pv) == {(nat, vn), (ept, ve), (nat, vn + K4),
                                              (nat, vn + 2 * K4)}

    def test_only_native_accessed(self, env):
        pa = env.gpa(2)
        nat, ept, vn, ve = self._pair(env, pa)
        assert native_mmu_access(nat, vn | 0x44, write=False) == pa | 0x44
        assert leaf(env, nat, vn) & PG_U
        assert leaf(env, ept, ve) & EPT_A == 0
        assert env.pages.is_referenced(pa)
        assert not env.pages.is_modified(pa)

    def test_only_ept_written(self, env):
        pa = env.gpa(2)
        nat, ept, vn, ve = self._pair(env, pa)
        assert translate(env.mem, ept.eptp(), ve, Access.WRITE).outcome is Outcome.OK
        assert leaf(env, nat, vn) & (PG_U | PG_M) == 0
        assert env.pages.is_modified(pa)
        assert env.pages.is_referenced(pa)

    def test_only_native_written(self, env):
        pa = env.gpa(2)
        nat, ept, vn, ve = self._pair(env, pa)
        native_mmu_access(nat, vn, write=True)
        assert leaf(env, nat, vn) & (PG_U | PG_M) == PG_U | PG_M
        assert env.pages.is_modified(pa)

    def test_clear_reference_clears_both_sides(self, env):
        pa = env.gpa(2)
        nat, ept, vn, ve = self._pair(env, pa)
        native_mmu_access(nat, vn, write=True)
        translate(env.mem, ept.eptp(), ve, Access.READ)
        assert env.pages.clear_reference(pa) is True
        n, e = leaf(env, nat, vn), leaf(env, ept, ve)
        assert n & (PG_U | PG_M) == 0
        assert e & (EPT_A | EPT_D) == 0
        assert n == pa | PG_V | PG_RW | PG_u | PG_NX | PG_PVLIST
        assert e == pa | EPT_R | EPT_W | WB_BITS | EPT_PVLIST
        assert sorted((p is nat, why) for p, _, why in env.log) == [
            (False, Shootdown.SYNC_PV), (True, Shootdown.SYNC_PV)]
        assert not env.pages.is_referenced(pa)
        assert env.pages.is_modified(pa)                  # native PG_M was folded

    def test_clear_modify_clears_both_sides(self, env):
        pa = env.gpa(2)
        nat, ept, vn, ve = self._pair(env, pa)
        native_mmu_access(nat, vn, write=True)
        translate(env.mem, ept.eptp(), ve, Access.WRITE)
        assert env.pages.clear_modify(pa) is True
        assert leaf(env, nat, vn) & (PG_U | PG_M) == 0
        assert leaf(env, ept, ve) & (EPT_A | EPT_D) == 0
        assert not env.pages.is_modified(pa)

    def test_page_protect_read_both_sides(self, env):
        pa = env.gpa(2)
        nat, ept, vn, ve = self._pair(env, pa)
        env.pages.page_protect(pa, VM_PROT_READ)
        assert leaf(env, nat, vn) & PG_RW == 0
        assert leaf(env, ept, ve) & EPT_W == 0
        assert native_mmu_access(nat, vn, write=True) is None
        assert translate(env.mem, ept.eptp(), ve, Access.WRITE).outcome is Outcome.VIOLATION
        assert env.shots() == []                          # nothing had A

    def test_page_remove_both_sides(self, env):
        pa = env.gpa(2)
        nat, ept, vn, ve = self._pair(env, pa)
        native_mmu_access(nat, vn, write=False)
        env.pages.page_protect(pa, VM_PROT_NONE)
        assert env.pages.page(pa).pv == []
        assert nat.resident_count == PDP and ept.resident_count == PDP
        assert nat.ptp_count == 0 and ept.ptp_count == 0
        nat.update()
        ept.update()
        assert env.ptp_frames.allocated_frames == 2
        assert native_mmu_access(nat, vn, write=False) is None
        assert env.pages.is_referenced(pa)

    def test_native_mmu_access_refuses_ept(self, env):
        with pytest.raises(PmapError):
            native_mmu_access(env.ept(), 0, write=False)


# =============================================================================
# pmap_destroy
# =============================================================================

class TestDestroy:
    def test_refs(self, env):
        pm = env.ept()
        pm.reference()
        assert pm.destroy() is False
        assert pm.enter(gva(pt=1), env.gpa(1), R) == 0        # still alive
        assert env.ptp_frames.allocated_frames == 4

    def test_destroy_with_mappings_raises(self, env):
        pm = env.ept()
        pm.enter(gva(pt=1), env.gpa(1), R)
        with pytest.raises(PmapError):
            pm.destroy()
        assert env.ptp_frames.allocated_frames == 4

    def test_destroy_after_remove_frees_everything(self, env):
        pm = env.ept()
        other = env.ept()
        for i in range(4):
            pm.enter(gva(i, 0, 0, i), env.gpa(i), RW)
        pm.remove(0, VM_MAXUSER_ADDRESS)
        assert pm.destroy() is True
        assert env.ptp_frames.allocated_frames == 1
        assert pm.pdir_pa not in env.ptp_frames.allocated()
        assert other.destroy() is True
        assert env.ptp_frames.allocated_frames == 0

    def test_use_after_destroy_raises(self, env):
        pm = env.ept()
        pm.destroy()
        for op in (lambda: pm.enter(gva(pt=1), env.gpa(1), R),
                   lambda: pm.remove(0, K4),
                   lambda: pm.extract(0),
                   lambda: pm.write_protect(0, K4, VM_PROT_READ),
                   lambda: pm.protect(0, K4, VM_PROT_NONE),
                   lambda: pm.unwire(0),
                   lambda: pm.destroy()):
            with pytest.raises(PmapError):
                op()
        assert env.ptp_frames.allocated_frames == 0


class TestWithoutAD:
    """pmap_ept_has_ad = false (nvmm on a CPU without EPT A/D; NetBSD pmap.c
    after 2019): the hardware never sets A or D, so every valid entry may be
    cached and every page counts as referenced and modified."""

    def setup(self, env):
        pm = env.ept(has_ad=False)
        eptp = pm.eptp()
        assert not eptp.ad_enabled
        return pm, eptp

    def test_attrs_always_referenced_and_modified(self, env):
        pm, eptp = self.setup(env)
        pm.enter(0x1000, env.gpa(0), R)               # no faulting access: A/D clear
        assert pm.lookup(0x1000) & (EPT_A | EPT_D) == 0
        assert env.pages.is_referenced(env.gpa(0)) and env.pages.is_modified(env.gpa(0))
        assert env.pages.clear_reference(env.gpa(0))
        assert env.pages.is_referenced(env.gpa(0))    # still: nothing can say otherwise

    def test_guest_write_then_write_protect_shoots_down(self, env):
        pm, eptp = self.setup(env)
        pm.enter(0x1000, env.gpa(0), RW, R)
        env.pages.clear_reference(env.gpa(0))         # clears the software A: shootdown
        t = translate(env.mem, eptp, 0x1000, Access.WRITE)
        assert t.outcome is Outcome.OK and pm.lookup(0x1000) & (EPT_A | EPT_D) == 0
        env.log.clear()
        pm.protect(0x1000, 0x2000, R)                 # D=0, yet a TLB may hold it writable
        assert env.shots(pm) == [(0x1000, Shootdown.WRITE_PROTECT)]

    def test_remove_and_page_protect_always_shoot_down(self, env):
        pm, eptp = self.setup(env)
        for i in range(3):
            pm.enter((i + 1) * K4, env.gpa(i), RW)    # no faulting access: A clear
        env.log.clear()
        pm.remove(K4, 2 * K4)                         # PTP still in use
        assert env.shots(pm) == [(K4, Shootdown.REMOVE_PTE)]
        env.log.clear()
        env.pages.page_protect(env.gpa(1), VM_PROT_NONE)
        assert (2 * K4, Shootdown.SYNC_PV) in env.shots(pm)

    def test_enter_over_valid_entry_shoots_down(self, env):
        pm, eptp = self.setup(env)
        pm.enter(K4, env.gpa(0), RW)
        env.log.clear()
        pm.enter(K4, env.gpa(1), RW)                  # new frame over a valid, A-less entry
        assert env.shots(pm) == [(K4, Shootdown.ENTER)]
        env.log.clear()
        pm.enter(K4, env.gpa(1), RW)                  # same frame and W: nothing to flush
        assert env.shots(pm) == []

    def test_with_ad_the_same_sequence_needs_no_shootdown(self, env):
        """The contrast: with A/D, entries the hardware never used are not flushed."""
        pm = env.ept()
        for i in range(3):
            pm.enter((i + 1) * K4, env.gpa(i), RW)
        env.log.clear()
        pm.remove(K4, 2 * K4)
        pm.enter(2 * K4, env.gpa(3), RW)
        pm.protect(3 * K4, 4 * K4, R)
        assert env.shots(pm) == []
