"""Golden-model fidelity against NetBSD's x86 pmap.c (rev. 1.421; netbsd-9 noted).

Four behaviours a review of pmap.c found the model did not have:

1. ``pmap_create`` counts the top-level page: ``resident_count`` starts at
   ``PDP_SIZE`` (1 on amd64), and ``make sim`` reports the host pmap's count.
2. The native ``pmap_free_ptp`` shoots down, for every page-table page it
   frees, the page's VA in the recursive mapping (``invaladdr + index *
   PAGE_SIZE``, ``TLBSHOOT_FREE_PTP``) on the pmap itself;
   ``pmap_ept_free_ptp`` issues no shootdown (no recursive slot).
3. PV lists are walked as ``pv_pte_first`` / ``pv_pte_next`` walk them: the
   embedded entry ``pp_pte`` first, then ``pp_pvlist`` from its head, and
   ``pmap_enter_pv`` inserts at the head (``LIST_INSERT_HEAD``).
4. ``pmap_freepage`` puts a freed PTP on the pmap's ``pm_gc_ptp`` list;
   ``pmap_update`` gives it back (``uvm_pagefree``).  Until then its frame
   is not handed out again, except that ``pmap_get_ptp`` may take the very
   same PTP back (same pmap, same level and slot) off the list.
"""

from __future__ import annotations

from model.physmem import FrameAllocator, PhysicalMemory
from model.pmap import (
    VM_PROT_READ,
    VM_PROT_WRITE,
    PageDB,
    Pmap,
    Shootdown,
)

PTP_BASE = 0x100000
GUEST_BASE = 0x1000000
K4 = 1 << 12
R = VM_PROT_READ
RW = VM_PROT_READ | VM_PROT_WRITE

# amd64 (x86/include/pmap.h, amd64/include/pmap.h): the recursive slot's
# L1..L3 windows.  Written out here rather than imported from the model.
SLOT = 509                                  # L4_SLOT_PTE (Xen / not randomised)
NBPD_L1, NBPD_L2, NBPD_L3, NBPD_L4 = 1 << 12, 1 << 21, 1 << 30, 1 << 39


def _sign(va):
    return va | 0xFFFF000000000000 if va & (1 << 47) else va


PTE_BASE = _sign(SLOT * NBPD_L4)
L2_BASE = PTE_BASE + SLOT * NBPD_L3
L3_BASE = L2_BASE + SLOT * NBPD_L2


def gva(pml4=0, pdpt=0, pd=0, pt=0):
    return (pml4 << 39) | (pdpt << 30) | (pd << 21) | (pt << 12)


class Env:
    def __init__(self, ptp_count=64, guest_count=64):
        self.mem = PhysicalMemory()
        self.ptp_frames = FrameAllocator(self.mem, PTP_BASE, ptp_count)
        self.guest = FrameAllocator(self.mem, GUEST_BASE, guest_count)
        self.pages = PageDB(self.guest)
        self.log: list = []

    def _flush(self, pmap, va, why):
        self.log.append((pmap, va, why))

    def ept(self) -> Pmap:
        pm = Pmap(self.mem, self.ptp_frames, self.pages, tlb_flush=self._flush)
        pm.ept_transform()
        return pm

    def native(self) -> Pmap:
        return Pmap(self.mem, self.ptp_frames, self.pages, tlb_flush=self._flush)

    def gpa(self, i):
        return GUEST_BASE + i * K4


def ptp_frames_of(pm: Pmap) -> set[int]:
    return {p.pa for p in pm.ptps()}


# -- 1. resident_count counts the PDP ------------------------------------------

class TestResidentCountCountsThePdp:
    def test_fresh_pmaps_count_the_top_level_page(self):
        env = Env()
        assert env.native().resident_count == 1          # pmap_create: PDP_SIZE
        assert env.ept().resident_count == 1             # transform keeps it

    def test_count_through_enter_and_remove(self):
        env = Env()
        pm = env.ept()
        pm.enter(gva(pt=1), env.gpa(0), R)
        assert pm.resident_count == 1 + 3 + 1            # PDP + PDPT/PD/PT + leaf
        pm.remove(gva(pt=1), gva(pt=2))
        assert pm.resident_count == 1                    # pmap_remove_all's KASSERT value
        pm.update()
        assert pm.resident_count == 1

    def test_sim_summary_reports_the_host_resident_count(self):
        from sim.cosim.run import format_summary, run_workload
        from sim.cosim.workload import WorkloadOptions
        s = run_workload(WorkloadOptions(accesses=600, seed=2))
        assert s["pmap_resident_count"] == s["resident_pages"] + s["ptp_pages"] + 1
        text = format_summary(s)
        line = [ln for ln in text.splitlines() if "resident count" in ln]
        assert len(line) == 1 and str(s["pmap_resident_count"]) in line[0], text


# -- 2. native pmap_free_ptp shoots down the recursive mapping of each freed PTP

class TestNativeFreePtpShootdowns:
    def test_every_freed_level_is_shot_down_in_the_recursive_slot(self):
        env = Env()
        pm = env.native()
        va = gva(3, 5, 7, 9)
        pm.enter(va, env.gpa(0), RW)
        env.log.clear()
        pm.remove(va, va + K4)
        pl = [(va >> (12 + 9 * lvl)) for lvl in (1, 2, 3)]    # pl2_i, pl3_i, pl4_i
        assert [(v, w) for p, v, w in env.log if p is pm] == [
            (va, Shootdown.REMOVE_PTE),                  # forced A: the PTP emptied
            (PTE_BASE + pl[0] * K4, Shootdown.FREE_PTP),  # the PT, level 1
            (L2_BASE + pl[1] * K4, Shootdown.FREE_PTP),   # the PD, level 2
            (L3_BASE + pl[2] * K4, Shootdown.FREE_PTP),   # the PDPT, level 3
        ]

    def test_only_the_levels_freed(self):
        env = Env()
        pm = env.native()
        a, b = gva(0, 0, 0, 1), gva(0, 0, 1, 1)           # two PTs under one PD
        pm.enter(a, env.gpa(0), R)
        pm.enter(b, env.gpa(1), R)
        env.log.clear()
        env.pages.page_remove(env.gpa(0))                # pmap_pp_remove_ent path
        free = [v for p, v, w in env.log if w is Shootdown.FREE_PTP]
        assert free == [PTE_BASE + (a >> 21) * K4]

    def test_ept_free_ptp_shoots_nothing_down(self):
        env = Env()
        pm = env.ept()
        va = gva(3, 5, 7, 9)
        pm.enter(va, env.gpa(0), RW)
        env.log.clear()
        pm.remove(va, va + K4)
        assert [(v, w) for p, v, w in env.log] == [(va, Shootdown.REMOVE_PTE)]


# -- 3. PV lists in NetBSD's order -----------------------------------------------

class TestPvOrder:
    def _three_mappings(self, env):
        a, b = env.ept(), env.ept()
        pa = env.gpa(4)
        a.enter(gva(pt=1), pa, RW, VM_PROT_WRITE)        # embedded pp_pte
        b.enter(gva(pt=2), pa, RW, VM_PROT_WRITE)        # pp_pvlist head
        a.enter(gva(pt=3), pa, RW, VM_PROT_WRITE)        # new head
        return a, b, pa

    def test_pv_is_embedded_then_newest_to_oldest(self):
        env = Env()
        a, b, pa = self._three_mappings(env)
        assert env.pages.page(pa).pv == [(a, gva(pt=1)), (a, gva(pt=3)), (b, gva(pt=2))]

    def test_clear_attrs_shoots_down_in_pv_order(self):
        env = Env()
        a, b, pa = self._three_mappings(env)
        env.log.clear()
        assert env.pages.clear_reference(pa)
        assert [(p, v) for p, v, w in env.log] == [
            (a, gva(pt=1)), (a, gva(pt=3)), (b, gva(pt=2))]

    def test_page_remove_in_pv_order(self):
        env = Env()
        a, b, pa = self._three_mappings(env)
        env.log.clear()
        env.pages.page_remove(pa)
        sync = [(p, v) for p, v, w in env.log if w is Shootdown.SYNC_PV]
        assert sync == [(a, gva(pt=1)), (a, gva(pt=3)), (b, gva(pt=2))]

    def test_a_free_embedded_slot_is_taken_first(self):
        env = Env()
        a, b, pa = self._three_mappings(env)
        a.remove(gva(pt=1), gva(pt=2))                   # empties pp_pte
        b.enter(gva(pt=4), pa, R)                        # pmap_enter_pv: embedded
        assert env.pages.page(pa).pv == [(b, gva(pt=4)), (a, gva(pt=3)), (b, gva(pt=2))]


# -- 4. freed PTPs wait on pm_gc_ptp until pmap_update ------------------------------

class TestDeferredPtpFree:
    def test_freed_ptps_stay_allocated_until_update(self):
        env = Env()
        pm = env.ept()
        va = gva(1, 1, 1, 1)
        pm.enter(va, env.gpa(0), R)
        freed = ptp_frames_of(pm)
        pm.remove(va, va + K4)
        assert pm.ptp_count == 0
        assert env.ptp_frames.allocated() >= freed | {pm.pdir_pa}   # on pm_gc_ptp
        pm.update()                                                  # pmap_gc_ptp
        assert env.ptp_frames.allocated() == {pm.pdir_pa}

    def test_freed_ptp_is_not_reused_in_another_role_before_update(self):
        env = Env()
        pm = env.ept()
        va = gva(1, 1, 1, 1)
        pm.enter(va, env.gpa(0), R)
        freed = ptp_frames_of(pm)
        pm.remove(va, va + K4)
        other = env.ept()                                # another pmap's tables
        other.enter(gva(2, 2, 2, 2), env.gpa(1), R)
        pm.enter(gva(3, 3, 3, 3), env.gpa(2), R)         # other slots of this pmap
        assert not freed & (ptp_frames_of(other) | ptp_frames_of(pm) | {other.pdir_pa})

    def test_same_slot_takes_its_own_ptps_back(self):
        env = Env()
        pm = env.ept()
        va = gva(1, 1, 1, 1)
        pm.enter(va, env.gpa(0), R)
        before = {(p.level, p.key): p.pa for p in pm.ptps()}
        pm.remove(va, va + K4)
        n = env.ptp_frames.allocated_frames
        pm.enter(va, env.gpa(0), R)                      # pmap_get_ptp dequeues them
        assert {(p.level, p.key): p.pa for p in pm.ptps()} == before
        assert env.ptp_frames.allocated_frames == n
        assert pm.resident_count == 1 + 3 + 1
        pm.update()
        assert env.ptp_frames.allocated_frames == n      # nothing left to free

    def test_destroy_runs_update(self):
        env = Env()
        pm = env.ept()
        pm.enter(gva(pt=1), env.gpa(0), R)
        pm.remove(0, gva(pt=2))
        assert pm.destroy()
        assert env.ptp_frames.allocated_frames == 0
