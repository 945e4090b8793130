"""A model of the NetBSD x86 pmap with the EPT callbacks of the seed commit.

NetBSD makes a pmap an EPT pmap with ``pmap_ept_transform``, which installs
callbacks (``pm_enter``, ``pm_extract``, ``pm_remove``, ``pm_sync_pv``,
``pm_pp_remove_ent``, ``pm_write_protect``, ``pm_unwire``) that speak the EPT
entry format; every other piece of the pmap is shared with native.  This
model keeps that seam: one :class:`Pmap` class holds the shared logic and a
:class:`PteFormat` (:data:`NATIVE` or :data:`EPT`) supplies the format, so a
physical page mapped by a native and an EPT pmap gets one set of generic
attributes (``PP_ATTRS_*``) combined from both kinds of entry.

Tables live in the simulated DRAM (:class:`~model.physmem.PhysicalMemory`),
reached by physical address as NetBSD reaches them through the direct map;
they are read fresh on every operation, so A/D bits set by hardware are seen.
Every PTE update is an atomic store, swap or CAS loop, as in NetBSD.

The TLB shootdown callback (``pm_tlb_flush`` in NetBSD) is called exactly at
NetBSD's ``pmap_tlb_shootdown`` call sites, as ``tlb_flush(pmap, va, why)``;
the hypervisor sets it to issue INVEPT.

Also as in NetBSD (pmap.c rev. 1.421): ``resident_count`` counts the
top-level page from ``pmap_create`` on (``PDP_SIZE``); PV lists are walked
embedded entry first, then newest to oldest (``pv_pte_first`` /
``pv_pte_next``, ``LIST_INSERT_HEAD``); a freed PTP waits on the pmap's
``pm_gc_ptp`` list until :meth:`Pmap.update` (``pmap_update``) gives it back
to the allocator; and the native ``pmap_free_ptp`` shoots down each freed
PTP's VA in the recursive mapping (``TLBSHOOT_FREE_PTP``).

Not modelled: the kernel pmap, pv-tracked unmanaged pages, the contents of
the native recursive slot (only the VAs it gives freed PTPs, for the
shootdowns), pv_entry allocation (never fails here).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from .formats import (
    EPT_A, EPT_D, EPT_IGNORE_PAT, EPT_MEMTYPE_SHIFT, EPT_PVLIST, EPT_R, EPT_W,
    EPT_WIRED, EPT_X, EptConfig, Eptp, MemType, PAGE_SIZE,
)
from .physmem import FrameAllocator, OutOfFrames, PhysicalMemory

__all__ = [
    "VM_PROT_NONE", "VM_PROT_READ", "VM_PROT_WRITE", "VM_PROT_EXECUTE", "VM_PROT_ALL",
    "PMAP_WIRED", "PMAP_CANFAIL", "PMAP_NOCACHE", "PMAP_WRITE_COMBINE", "PMAP_WRITE_BACK",
    "PMAP_NOCACHE_OVR", "PMAP_CACHE_MASK", "PP_ATTRS_M", "PP_ATTRS_U", "PP_ATTRS_W",
    "ENOMEM", "VM_MAXUSER_ADDRESS", "PTP_LEVELS", "PDP_SIZE", "PDIR_SLOT_PTE",
    "recursive_va",
    "Shootdown", "PteFormat", "NATIVE", "EPT", "Page", "PageDB", "Pmap", "PmapError",
    "native_mmu_access",
]

# uvm_prot.h
VM_PROT_NONE = 0x0
VM_PROT_READ = 0x1
VM_PROT_WRITE = 0x2
VM_PROT_EXECUTE = 0x4
VM_PROT_ALL = 0x7
# uvm_pmap.h: pmap_enter flags
PMAP_WIRED = 0x00000010
PMAP_CANFAIL = 0x00000020
PMAP_CACHE_MASK = 0x00000f00
PMAP_NOCACHE = 0x00000100
PMAP_WRITE_COMBINE = 0x00000200
PMAP_WRITE_BACK = 0x00000300
PMAP_NOCACHE_OVR = 0x00000400
# x86 pmap_pv.h: generic page attributes
PP_ATTRS_M = 0x01    # modified
PP_ATTRS_U = 0x02    # referenced
PP_ATTRS_W = 0x04    # writable
ENOMEM = 12

PTP_LEVELS = 4
PDP_SIZE = 1              # amd64: one top-level page (pmap_create counts it)
VM_MAXUSER_ADDRESS = 0x00007F7FFFFFC000
PG_FRAME = 0x000FFFFFFFFFF000
# amd64 L4_SLOT_PTE: the recursive slot.  A native kernel picks it at boot
# (slotspace); Xen fixes it at 509, and so does the model.
PDIR_SLOT_PTE = 509
_VA_SIGN_MASK = 0xFFFF000000000000


def _va_sign_neg(va: int) -> int:
    return va | _VA_SIGN_MASK if va & (1 << 47) else va


def recursive_va(va: int, level: int) -> int:
    """Where the native recursive mapping shows the level-``level`` PTP of ``va``.

    ``pmap_free_ptp``'s ``invaladdr + index * PAGE_SIZE``: ``invaladdr`` is
    ``ptes`` (PTE_BASE) for a PT and ``pdes[level - 2]`` (L2_BASE, L3_BASE)
    above it; ``index = pl_i(va, level + 1)``, the index over the whole
    linear table (not within one page).
    """
    base = _va_sign_neg(PDIR_SLOT_PTE * _nbpd(4))          # PTE_BASE (= L1_BASE)
    for lvl in range(2, level + 1):                        # L2_BASE, L3_BASE
        base += PDIR_SLOT_PTE * _nbpd(PTP_LEVELS + 1 - lvl)
    index = (va & ~_VA_SIGN_MASK) >> (12 + 9 * level)      # pl_i(va, level + 1)
    return (base + index * PAGE_SIZE) & ((1 << 64) - 1)


class Shootdown(enum.Enum):
    """Why a TLB shootdown was asked for (NetBSD ``tlbwhy_t``)."""
    REMOVE_PTE = "remove_pte"
    ENTER = "enter"
    SYNC_PV = "sync_pv"
    WRITE_PROTECT = "write_protect"
    FREE_PTP = "free_ptp"          # native pmap_free_ptp only


class PmapError(RuntimeError):
    """A NetBSD panic or KASSERT failure: the caller broke a pmap rule."""


@dataclass(frozen=True)
class PteFormat:
    """The bits one kind of pmap uses in its entries."""
    name: str
    valid: int       # "entry is valid": PG_V, or EPT_R (pmap_ept_valid_entry)
    writable: int    # PG_RW / EPT_W
    accessed: int    # PG_U / EPT_A
    dirty: int       # PG_M / EPT_D
    pvlist: int      # PG_PVLIST / EPT_PVLIST (software)
    wired: int       # PG_W / EPT_WIRED (software)
    table_bits: int  # bits of an intermediate entry besides the address
    prot_bits: Callable[[int], int]
    type_bits: Callable[[int], int]
    user_bits: int = 0
    exec_disable: int = 0   # PG_NX, put by write_protect when execute is dropped

    def to_attrs(self, pte: int) -> int:
        """pmap_pte_to_pp_attrs / pmap_ept_to_pp_attrs."""
        a = 0
        if pte & self.dirty:
            a |= PP_ATTRS_M
        if pte & self.accessed:
            a |= PP_ATTRS_U
        if pte & self.writable:
            a |= PP_ATTRS_W
        return a

    def from_attrs(self, attrs: int) -> int:
        """pmap_pp_attrs_to_pte / pmap_pp_attrs_to_ept."""
        b = 0
        if attrs & PP_ATTRS_M:
            b |= self.dirty
        if attrs & PP_ATTRS_U:
            b |= self.accessed
        if attrs & PP_ATTRS_W:
            b |= self.writable
        return b


def _ept_prot(prot: int) -> int:
    """pmap_ept_prot."""
    res = 0
    if prot & VM_PROT_READ:
        res |= EPT_R
    if prot & VM_PROT_WRITE:
        res |= EPT_W
    if prot & VM_PROT_EXECUTE:
        res |= EPT_X
    return res


def _ept_type(flags: int) -> int:
    """pmap_ept_type: cache flags to memory type, always with ignore-PAT."""
    cache = flags & PMAP_CACHE_MASK
    if cache in (PMAP_NOCACHE, PMAP_NOCACHE_OVR):
        t = MemType.UC
    elif cache == PMAP_WRITE_COMBINE:
        t = MemType.WC
    else:
        t = MemType.WB
    return (int(t) << EPT_MEMTYPE_SHIFT) | EPT_IGNORE_PAT


# x86-64 native PTE bits (x86/include/pte.h)
PG_V, PG_RW, PG_u, PG_WT, PG_N = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
PG_U, PG_M, PG_PS = 1 << 5, 1 << 6, 1 << 7
PG_W, PG_PVLIST = 1 << 9, 1 << 10     # PTE_AVL1, PTE_AVL2
PG_NX = 1 << 63


def _native_prot(prot: int) -> int:
    """protection_codes[]: read-only unless writable; NX unless executable."""
    bits = PG_RW if prot & VM_PROT_WRITE else 0
    if not prot & VM_PROT_EXECUTE:
        bits |= PG_NX
    return bits | PG_V


def _native_type(flags: int) -> int:
    """pmap_pat_flags with NetBSD's PAT layout (PAT enabled)."""
    return {PMAP_NOCACHE: PG_WT | PG_N, PMAP_WRITE_COMBINE: PG_WT,
            PMAP_NOCACHE_OVR: PG_N}.get(flags & PMAP_CACHE_MASK, 0)


NATIVE = PteFormat("native", valid=PG_V, writable=PG_RW, accessed=PG_U, dirty=PG_M,
                   pvlist=PG_PVLIST, wired=PG_W, table_bits=PG_u | PG_RW | PG_V,
                   prot_bits=_native_prot, type_bits=_native_type, user_bits=PG_u,
                   exec_disable=PG_NX)
EPT = PteFormat("ept", valid=EPT_R, writable=EPT_W, accessed=EPT_A, dirty=EPT_D,
                pvlist=EPT_PVLIST, wired=EPT_WIRED, table_bits=EPT_R | EPT_W | EPT_X,
                prot_bits=_ept_prot, type_bits=_ept_type)


def _pte2pa(pte: int) -> int:
    return pte & PG_FRAME


def _pl_i(va: int, level: int) -> int:
    """Index of ``va`` in a table at ``level`` (4 = top)."""
    return (va >> (12 + 9 * (level - 1))) & 0x1FF


def _nbpd(level: int) -> int:
    """Bytes mapped by one entry at ``level``."""
    return 1 << (12 + 9 * (level - 1))


@dataclass(eq=False)
class Ptp:
    """A page-table page (``struct vm_page`` of a PTP)."""
    pa: int
    level: int           # 1 = PT, 2 = PD, 3 = PDPT
    key: int             # va >> (12 + 9 * level): which PTP of that level
    wire_count: int = 1  # 1 + number of valid entries in it


@dataclass(eq=False)
class Page:
    """A managed physical page: ``struct vm_page`` with its ``pmap_page``.

    ``pp_pte`` is the embedded PV entry, ``pp_pvlist`` the list of the others
    with its head at index 0.
    """
    pa: int
    attrs: int = 0
    pp_pte: tuple[Pmap, int] | None = None
    pp_pvlist: list = field(default_factory=list)

    @property
    def pv(self) -> list[tuple[Pmap, int]]:
        """Every ``(pmap, va)`` in ``pv_pte_first`` / ``pv_pte_next`` order:
        the embedded entry, then ``pp_pvlist`` from its head (newest first)."""
        head = [] if self.pp_pte is None else [self.pp_pte]
        return head + self.pp_pvlist

    def mappings(self) -> list[tuple["Pmap", int]]:
        return self.pv

    def enter_pv(self, pmap: Pmap, va: int) -> None:
        """pmap_enter_pv: the embedded slot if free, else LIST_INSERT_HEAD."""
        if self.pp_pte is None:
            self.pp_pte = (pmap, va)
        else:
            self.pp_pvlist.insert(0, (pmap, va))

    def remove_pv(self, pmap: Pmap, va: int) -> None:
        """pmap_remove_pv: clear the embedded entry or unlink the list entry."""
        if self.pp_pte is not None and self.pp_pte[0] is pmap and self.pp_pte[1] == va:
            self.pp_pte = None
            return
        for i, (pm, v) in enumerate(self.pp_pvlist):
            if pm is pmap and v == va:
                del self.pp_pvlist[i]
                return
        raise PmapError(f"no pv entry for va {va:#x} on page {self.pa:#x}")


class PageDB:
    """The managed physical pages (``vm_physseg``) and the page-level pmap calls.

    ``phys_to_vm_page(pa)`` finds the page of a managed frame; pages outside
    the managed range are unmanaged (no PV list, as device memory).
    """

    def __init__(self, frames: FrameAllocator):
        self.frames = frames
        self._pages: dict[int, Page] = {}

    def phys_to_vm_page(self, pa: int) -> Optional[Page]:
        pa &= ~(PAGE_SIZE - 1)
        if pa not in self.frames:
            return None
        pg = self._pages.get(pa)
        if pg is None:
            pg = self._pages[pa] = Page(pa)
        return pg

    def page(self, pa: int) -> Page:
        pg = self.phys_to_vm_page(pa)
        if pg is None:
            raise PmapError(f"{pa:#x} is not a managed page")
        return pg

    # -- pmap_sync_pv and the page operations built on it --------------------
    def _sync_all(self, pg: Page, clearbits: int) -> None:
        for pmap, va in pg.pv:          # pmap_pp_clear_attrs: pv_pte_first on
            pg.attrs |= pmap._sync_pv(va, pg.pa, clearbits)[0]

    def clear_attrs(self, pa: int, clearbits: int) -> bool:
        """pmap_pp_clear: clear generic bits in every mapping; were any set?"""
        pg = self.page(pa)
        self._sync_all(pg, clearbits)
        result = pg.attrs & clearbits
        pg.attrs &= ~clearbits
        return result != 0

    def test_attrs(self, pa: int, testbits: int) -> bool:
        """pmap_test_attrs: gather bits from every mapping until one is found."""
        pg = self.page(pa)
        if pg.attrs & testbits:
            return True
        for pmap, va in pg.pv:
            if pg.attrs & testbits:
                break
            pg.attrs |= pmap._sync_pv(va, pg.pa, 0)[0]
        return pg.attrs & testbits != 0

    def clear_reference(self, pa: int) -> bool:
        return self.clear_attrs(pa, PP_ATTRS_U)

    def clear_modify(self, pa: int) -> bool:
        return self.clear_attrs(pa, PP_ATTRS_M)

    def is_referenced(self, pa: int) -> bool:
        return self.test_attrs(pa, PP_ATTRS_U)

    def is_modified(self, pa: int) -> bool:
        return self.test_attrs(pa, PP_ATTRS_M)

    def page_remove(self, pa: int) -> None:
        """pmap_pp_remove: remove every mapping of the page, pv_pte_first each time."""
        pg = self.page(pa)
        while pg.pv:
            pmap, va = pg.pv[0]
            oattrs, opte = pmap._sync_pv(va, pg.pa, ~0)
            pg.attrs |= oattrs
            pmap._remove_pv(pg, va)
            pmap._pp_remove_ent(opte, va)

    def page_protect(self, pa: int, prot: int) -> None:
        """pmap_page_protect: lower the protection of every mapping of a page."""
        if prot & VM_PROT_WRITE:
            return
        if prot & (VM_PROT_READ | VM_PROT_EXECUTE):
            self.clear_attrs(pa, PP_ATTRS_W)
        else:
            self.page_remove(pa)


ShootdownFn = Callable[["Pmap", int, Shootdown], None]



SHOOTDOWN_LOG = 4096      # Pmap.shootdowns keeps between 2048 and 4096 of the latest

class Pmap:
    """One address space: a native pmap, or an EPT pmap after :meth:`ept_transform`.

    ``memory`` holds the tables, ``ptp_frames`` supplies page-table pages,
    ``pages`` is the managed-page database shared by every pmap.
    """

    def __init__(self, memory: PhysicalMemory, ptp_frames: FrameAllocator, pages: PageDB,
                 tlb_flush: Optional[ShootdownFn] = None):
        self.memory = memory
        self.ptp_frames = ptp_frames
        self.pages = pages
        self.fmt: PteFormat = NATIVE
        self.tlb_flush = tlb_flush
        self.pdir_pa = ptp_frames.alloc(zero=True)
        self._ptps: dict[tuple[int, int], Ptp] = {}
        # pm_gc_ptp: freed PTPs (wire_count 0) waiting for pmap_update; head first
        self._gc_ptp: list[Ptp] = []
        self.resident_count = PDP_SIZE      # pmap_create counts the PDP
        self.wired_count = 0
        self.refs = 1
        self.destroyed = False
        # the recent shootdowns, for checkers (bounded: a long run makes millions)
        self.shootdowns: list[tuple[int, Shootdown]] = []
        self.has_ad = True          # pmap_ept_has_ad; native PTEs always have A/D

    # -- identity ------------------------------------------------------------
    @property
    def is_ept(self) -> bool:
        return self.fmt is EPT

    def ept_transform(self, has_ad: bool = True) -> None:
        """pmap_ept_transform: make a fresh pmap an EPT pmap (top level zeroed).

        ``has_ad`` is NetBSD's ``pmap_ept_has_ad`` (set by nvmm from the CPU's
        EPT A/D capability; the seed commit assumes it).  Without A/D the
        hardware never sets A or D, so the pmap must treat every valid entry
        as possibly cached and every page as referenced and modified.
        """
        if self._ptps or self.resident_count != PDP_SIZE:
            raise PmapError("pmap_ept_transform on a pmap that already has mappings")
        self.fmt = EPT
        self.has_ad = bool(has_ad)
        self.memory.zero_frame(self.pdir_pa)

    def eptp(self, ad_enabled: bool | None = None, config: EptConfig = EptConfig()) -> Eptp:
        """The EPT pointer a hypervisor loads for this pmap (WB, 4-level).

        A/D follows ``has_ad`` unless given; an EPTP without A/D for a pmap
        that trusts A/D is refused, since its shootdown decisions would be wrong.
        """
        if not self.is_ept:
            raise PmapError("a native pmap has no EPTP")
        if ad_enabled is None:
            ad_enabled = self.has_ad
        if self.has_ad and not ad_enabled:
            raise PmapError("EPTP without A/D for a pmap that relies on A/D "
                            "(use ept_transform(has_ad=False))")
        e = Eptp(pml4_pa=self.pdir_pa, memtype=MemType.WB, ad_enabled=ad_enabled)
        Eptp.check(e.encode(), config)
        return e

    def reference(self) -> None:
        self.refs += 1

    # -- helpers -----------------------------------------------------------------
    def _check_live(self) -> None:
        if self.destroyed:
            raise PmapError("pmap used after destroy")

    def _check_va(self, va: int) -> None:
        if va < 0 or va >= VM_MAXUSER_ADDRESS:
            raise PmapError(f"va {va:#x} outside the user range")

    def _valid(self, pte: int) -> bool:
        return bool(pte & self.fmt.valid)

    def _shootdown(self, va: int, why: Shootdown) -> None:
        """pmap_tlb_shootdown: for EPT, straight to the pm_tlb_flush callback."""
        self.shootdowns.append((va, why))
        if len(self.shootdowns) > SHOOTDOWN_LOG:
            del self.shootdowns[:SHOOTDOWN_LOG // 2]
        if self.tlb_flush is not None:
            self.tlb_flush(self, va, why)

    def _to_attrs(self, pte: int) -> int:
        """pmap_ept_to_pp_attrs: without A/D every page counts as used and modified."""
        attrs = self.fmt.to_attrs(pte)
        return attrs if self.has_ad else attrs | PP_ATTRS_U | PP_ATTRS_M

    def _maybe_cached(self, pte: int) -> bool:
        """Could a TLB hold this (old) entry?  With A/D, only if A is set."""
        return bool(pte & self.fmt.accessed) if self.has_ad else self._valid(pte)

    def _stats_update_bypte(self, npte: int, opte: int) -> None:
        f = self.fmt
        for pte in (npte, opte):
            if pte & (f.valid | f.wired) == f.wired:
                raise PmapError(f"wired but invalid PTE {pte:#x}")
        self.resident_count += bool(npte & f.valid) - bool(opte & f.valid)
        self.wired_count += bool(npte & f.wired) - bool(opte & f.wired)

    def _pdes_invalid(self, va: int) -> tuple[int, int]:
        """pmap_ept_pdes_invalid: (level of the first invalid PDE or 0, the PDE)."""
        table = self.pdir_pa
        pde = 0
        for level in range(PTP_LEVELS, 1, -1):
            pde = self.memory.read(table + _pl_i(va, level) * 8)
            if not self._valid(pde):
                return level, pde
            table = _pte2pa(pde)
        return 0, pde

    def _pte_addr(self, va: int) -> Optional[int]:
        lvl, pde = self._pdes_invalid(va)
        if lvl:
            return None
        return _pte2pa(pde) + _pl_i(va, 1) * 8

    def _find_ptp(self, va: int, level: int) -> Optional[Ptp]:
        return self._ptps.get((level, va >> (12 + 9 * level)))

    def _get_tree(self, va: int) -> list[int]:
        """pmap_ept_get_tree: addresses of [PDE, PDPTE, PML4E] for va."""
        tree = [0, 0, 0]
        table = self.pdir_pa
        for level in range(PTP_LEVELS, 1, -1):
            addr = table + _pl_i(va, level) * 8
            pte = self.memory.read(addr)
            if not self._valid(pte):
                raise PmapError(f"get_tree: invalid level-{level} entry for va {va:#x}")
            tree[level - 2] = addr
            table = _pte2pa(pte)
        return tree

    def _freepage(self, ptp: Ptp) -> None:
        """pmap_freepage: uncount the PTP and queue it on pm_gc_ptp.

        NetBSD subtracts ``wire_count`` (1 for an emptied PTP, 0 for one
        ``pmap_unget_ptp`` gives back unused) and keeps the page in the pmap's
        object, marked free (wire_count 0), until ``pmap_update``.
        """
        if ptp.wire_count > 1:
            raise PmapError(f"pmap_freepage of a PTP still in use ({ptp.wire_count})")
        self.resident_count -= ptp.wire_count
        ptp.wire_count = 0
        if self._ptps.get((ptp.level, ptp.key)) is ptp:
            del self._ptps[(ptp.level, ptp.key)]
        self._gc_ptp.insert(0, ptp)         # LIST_INSERT_HEAD(&pmap->pm_gc_ptp, ...)

    def _take_gc_ptp(self, level: int, key: int) -> Ptp | None:
        """pmap_get_ptp: a PTP queued to be freed is dequeued and used again."""
        for i, ptp in enumerate(self._gc_ptp):
            if ptp.level == level and ptp.key == key:
                return self._gc_ptp.pop(i)
        return None

    def update(self) -> None:
        """pmap_update: shootdowns are immediate here; free the PTPs on pm_gc_ptp."""
        while self._gc_ptp:
            ptp = self._gc_ptp.pop(0)           # LIST_FIRST
            self.ptp_frames.free(ptp.pa)        # uvm_pagefree

    def _free_ptp(self, ptp: Ptp, va: int) -> None:
        """pmap_free_ptp / pmap_ept_free_ptp: free an empty PT and any parents it
        leaves empty.

        Native: after clearing each PDE, ``pmap_tlb_shootdown(pmap, invaladdr +
        index * PAGE_SIZE, opde, TLBSHOOT_FREE_PTP)``, the freed PTP's VA in the
        recursive mapping.  EPT has no recursive slot and shoots nothing down here
        (``pmap_ept_remove_pte`` forced A on the last PTE to flush the PDE).
        """
        tree = self._get_tree(va)
        level = 1
        while True:
            self.memory.swap(tree[level - 1], 0)
            if not self.is_ept:
                self._shootdown(recursive_va(va, level), Shootdown.FREE_PTP)
            self._freepage(ptp)
            if level < PTP_LEVELS - 1:
                ptp = self._find_ptp(va, level + 1)
                ptp.wire_count -= 1
                if ptp.wire_count > 1:
                    break
            level += 1
            if level >= PTP_LEVELS:
                break

    def _get_ptp(self, va: int) -> Ptp:
        """pmap_ept_get_ptp: allocate PDPT, PD and PT as needed; return the PT."""
        found: dict[int, tuple[Ptp, bool]] = {}
        try:
            for i in range(PTP_LEVELS, 1, -1):
                ptp = self._find_ptp(va, i - 1)
                if ptp is None:
                    key = va >> (12 + 9 * (i - 1))
                    ptp = self._take_gc_ptp(i - 1, key)
                    if ptp is None:
                        pa = self.ptp_frames.alloc(zero=True)
                        ptp = Ptp(pa, i - 1, key, wire_count=0)
                    found[i] = (ptp, True)
                else:
                    found[i] = (ptp, False)
        except OutOfFrames:
            # pmap_unget_ptp: pmap_freepage (wire_count 0) puts them on pm_gc_ptp
            for ptp, new in found.values():
                if new:
                    self._freepage(ptp)
            raise
        table = self.pdir_pa
        for i in range(PTP_LEVELS, 1, -1):
            addr = table + _pl_i(va, i) * 8
            pte = self.memory.read(addr)
            ptp, new = found[i]
            if self._valid(pte):
                if new:
                    raise PmapError(f"new PTP for a valid level-{i} entry at va {va:#x}")
                table = _pte2pa(pte)
                continue
            ptp.wire_count = 1
            self._ptps[(ptp.level, ptp.key)] = ptp
            self.memory.write(addr, ptp.pa | self.fmt.table_bits)
            self.resident_count += 1
            if i < PTP_LEVELS:
                found[i + 1][0].wire_count += 1
            table = ptp.pa
        return found[2][0]

    def _remove_pv(self, pg: Page, va: int) -> None:
        pg.remove_pv(self, va)

    # -- pmap_enter ---------------------------------------------------------------
    def enter(self, va: int, pa: int, prot: int, flags: int = 0) -> int:
        """pmap_enter: map ``va`` to ``pa``; returns 0, or ENOMEM with PMAP_CANFAIL.

        ``flags`` carries the faulting access (VM_PROT_* bits: sets A, and D
        for a write), PMAP_WIRED, PMAP_CANFAIL and the cache mode.
        """
        self._check_live()
        self._check_va(va)
        if va % PAGE_SIZE or pa % PAGE_SIZE:
            raise PmapError(f"enter: unaligned va {va:#x} or pa {pa:#x}")
        f = self.fmt
        if self.is_ept and not prot & VM_PROT_READ:
            # R is the EPT pmap's valid bit: an entry without it would be
            # counted as unmapped while holding a PV entry and a PTP reference.
            raise PmapError(f"enter: EPT mapping of va {va:#x} without VM_PROT_READ")
        npte = pa | f.prot_bits(prot) | f.type_bits(flags) | f.user_bits
        if flags & PMAP_WIRED:
            npte |= f.wired
        if flags & VM_PROT_ALL:
            npte |= f.accessed
            if flags & VM_PROT_WRITE:
                if not npte & f.writable:
                    raise PmapError("enter: write access on a mapping without write")
                npte |= f.dirty
        new_pg = self.pages.phys_to_vm_page(pa)
        if new_pg is not None:
            npte |= f.pvlist

        try:
            ptp = self._get_ptp(va)
        except OutOfFrames:
            if flags & PMAP_CANFAIL:
                return ENOMEM
            raise PmapError("pmap_enter: get ptp failed") from None

        ptep = ptp.pa + _pl_i(va, 1) * 8
        while True:
            opte = self.memory.read(ptep)
            # the same page: inherit A and D
            if (opte ^ npte) & (PG_FRAME | f.valid) == 0:
                npte |= opte & (f.accessed | f.dirty)
            ok, _ = self.memory.cas(ptep, opte, npte)
            if ok:
                break

        self._stats_update_bypte(npte, opte)
        if not self._valid(opte):
            ptp.wire_count += 1

        if (opte ^ npte) & (PG_FRAME | f.valid) != 0:
            if ~opte & (f.valid | f.pvlist) == 0:
                old_pg = self.pages.phys_to_vm_page(_pte2pa(opte))
                if old_pg is None:
                    raise PmapError(f"PVLIST set on unmanaged page {_pte2pa(opte):#x}")
                self._remove_pv(old_pg, va)
                old_pg.attrs |= self._to_attrs(opte)
            if new_pg is not None:
                new_pg.enter_pv(self, va)

        if self._maybe_cached(opte) and (opte ^ npte) & (PG_FRAME | f.writable):
            self._shootdown(va, Shootdown.ENTER)
        return 0

    # -- pmap_extract ---------------------------------------------------------------
    def extract(self, va: int) -> Optional[int]:
        """pmap_extract: the physical address ``va`` maps to, or None."""
        self._check_live()
        addr = self._pte_addr(va)
        if addr is None:
            return None
        pte = self.memory.read(addr)
        if not self._valid(pte):
            return None
        return _pte2pa(pte) | (va & (PAGE_SIZE - 1))

    def lookup(self, va: int) -> int:
        """The raw leaf entry for ``va`` (0 if none), for checkers."""
        addr = self._pte_addr(va)
        return 0 if addr is None else self.memory.peek(addr)

    # -- pmap_remove -----------------------------------------------------------------
    def _remove_pte(self, ptp: Ptp, ptep: int, va: int) -> bool:
        """pmap_ept_remove_pte."""
        f = self.fmt
        if not self._valid(self.memory.read(ptep)):
            return False
        opte = self.memory.swap(ptep, 0)
        if not self._valid(opte):
            return False
        self._stats_update_bypte(0, opte)
        # Dropping a PTE: if the PTP empties, make sure the PDE is flushed.
        ptp.wire_count -= 1
        if ptp.wire_count <= 1:
            opte |= f.accessed
        if self._maybe_cached(opte):
            self._shootdown(va, Shootdown.REMOVE_PTE)
        if not opte & f.pvlist:
            return True
        pg = self.pages.phys_to_vm_page(_pte2pa(opte))
        if pg is None:
            raise PmapError(f"PVLIST set on unmanaged page {_pte2pa(opte):#x}")
        pg.attrs |= self._to_attrs(opte)
        self._remove_pv(pg, va)
        return True

    def remove(self, sva: int, eva: int) -> None:
        """pmap_remove: unmap [sva, eva)."""
        self._check_live()
        va = sva
        while va < eva:
            blkendva = min((va + _nbpd(2)) & ~(_nbpd(2) - 1), eva)
            lvl, pde = self._pdes_invalid(va)
            if lvl:
                va = (va & ~(_nbpd(lvl) - 1)) + _nbpd(lvl)
                continue
            ptp = self._find_ptp(va, 1)
            if ptp is None or ptp.pa != _pte2pa(pde):
                raise PmapError(f"remove: no PTP for va {va:#x}")
            table = _pte2pa(pde)
            v = va
            while v < blkendva:
                if ptp.wire_count <= 1:
                    break
                self._remove_pte(ptp, table + _pl_i(v, 1) * 8, v)
                v += PAGE_SIZE
            if ptp.wire_count <= 1:
                self._free_ptp(ptp, va)
            va = blkendva

    def _pp_remove_ent(self, opte: int, va: int) -> None:
        """pmap_ept_pp_remove_ent: account for a PTE removed through its page."""
        self._stats_update_bypte(0, opte)
        ptp = self._find_ptp(va, 1)
        ptp.wire_count -= 1
        if ptp.wire_count <= 1:
            self._free_ptp(ptp, va)

    # -- pmap_sync_pv ------------------------------------------------------------------
    def _sync_pv(self, va: int, pa: int, clearbits: int) -> tuple[int, int]:
        """pmap_ept_sync_pv: clear generic ``clearbits`` in the PTE of ``va``.

        Returns (old generic attributes, old PTE).  Clearing only W from an
        entry never written (D = 0) needs no shootdown; otherwise a cached
        entry (A = 1) is shot down and A/D cleared with it.
        """
        f = self.fmt
        clear = ~0 if clearbits == ~0 else f.from_attrs(clearbits)
        ptep = self._pte_addr(va)
        if ptep is None:
            raise PmapError(f"sync_pv: invalid PDE for va {va:#x}")
        while True:
            opte = self.memory.read(ptep)
            if opte & (f.dirty | f.accessed) == f.dirty:
                raise PmapError(f"sync_pv: D without A in {opte:#x}")
            if (opte & (PG_FRAME | f.valid)) != (pa | f.valid):
                raise PmapError(f"sync_pv: PTE {opte:#x} at va {va:#x} does not map {pa:#x}")
            if opte & clear == 0:
                need_shootdown = False
                break
            need_shootdown = not self.has_ad or bool(opte & f.accessed) and not (
                clear == f.writable and not opte & f.dirty)
            npte = opte & ~clear & ((1 << 64) - 1)
            if need_shootdown:
                npte &= ~(f.accessed | f.dirty)
            ok, _ = self.memory.cas(ptep, opte, npte)
            if ok:
                break
        if need_shootdown:
            self._shootdown(va, Shootdown.SYNC_PV)
        return self._to_attrs(opte), opte

    # -- pmap_write_protect / pmap_protect -------------------------------------
    def write_protect(self, sva: int, eva: int, prot: int) -> None:
        """pmap_ept_write_protect: drop W from [sva, eva) unless prot has WRITE.

        An entry that was written (D = 1) may sit in a TLB as writable, so it
        is shot down; one never written cannot satisfy a write from a TLB.
        """
        self._check_live()
        f = self.fmt
        bit_rem = 0 if prot & VM_PROT_WRITE else f.writable
        bit_put = f.exec_disable if not prot & VM_PROT_EXECUTE else 0
        sva &= ~(PAGE_SIZE - 1)
        eva &= ~(PAGE_SIZE - 1)
        va = sva
        while va < eva:
            ptep = self._pte_addr(va)
            if ptep is not None:
                while True:
                    opte = self.memory.read(ptep)
                    if not self._valid(opte):
                        break
                    npte = (opte & ~bit_rem) | bit_put
                    ok, _ = self.memory.cas(ptep, opte, npte)
                    if ok:
                        if opte & f.dirty or not self.has_ad:
                            self._shootdown(va, Shootdown.WRITE_PROTECT)
                        break
            va += PAGE_SIZE

    def protect(self, sva: int, eva: int, prot: int) -> None:
        """pmap_protect: write-protect, or remove when no access is left."""
        if prot & VM_PROT_WRITE:
            return
        if prot & (VM_PROT_READ | VM_PROT_EXECUTE):
            self.write_protect(sva, eva, prot)
        else:
            self.remove(sva, eva)

    # -- pmap_unwire -------------------------------------------------------------------
    def unwire(self, va: int) -> bool:
        """pmap_ept_unwire: clear WIRED; False (NetBSD prints) if it was not wired."""
        self._check_live()
        ptep = self._pte_addr(va)
        if ptep is None:
            raise PmapError(f"unwire: invalid PDE for va {va:#x}")
        opte = self.memory.read(ptep)
        if not self._valid(opte):
            raise PmapError(f"unwire: va {va:#x} is not mapped")
        if not opte & self.fmt.wired:
            return False
        npte = opte & ~self.fmt.wired
        opte = self.memory.swap(ptep, npte)
        self._stats_update_bypte(npte, opte)
        return True

    # -- pmap_destroy ----------------------------------------------------------------
    def destroy(self) -> bool:
        """pmap_destroy: drop a reference; on the last, free the pmap.

        NetBSD asserts that no PTP is left, i.e. everything was removed.
        Returns True when the pmap was freed.
        """
        self._check_live()
        self.refs -= 1
        if self.refs > 0:
            return False
        self.update()                   # pmap_destroy: pmap_update(pmap) first
        if self._ptps:
            raise PmapError(f"destroy: {len(self._ptps)} page-table pages still in use")
        self.ptp_frames.free(self.pdir_pa)
        self.destroyed = True
        return True

    # -- inspection ---------------------------------------------------------------------
    @property
    def ptp_count(self) -> int:
        return len(self._ptps)

    def ptps(self) -> list[Ptp]:
        return list(self._ptps.values())

    @property
    def gc_ptp_count(self) -> int:
        """PTPs freed but not yet given back (on pm_gc_ptp until :meth:`update`)."""
        return len(self._gc_ptp)

    def mappings(self) -> Iterator[tuple[int, int]]:
        """Every valid leaf as ``(va, pte)``, found by walking the tables."""
        def rec(table: int, level: int, base: int):
            words = self.memory.read_frame(table)
            for i in map(int, words.nonzero()[0]):
                pte = int(words[i])
                if not self._valid(pte):
                    continue
                va = base | (i << (12 + 9 * (level - 1)))
                if level == 1:
                    yield va, pte
                else:
                    yield from rec(_pte2pa(pte), level - 1, va)
        yield from rec(self.pdir_pa, PTP_LEVELS, 0)


def native_mmu_access(pmap: Pmap, va: int, write: bool) -> Optional[int]:
    """What a CPU's native MMU does on a user access: set A (and D) in the PTE.

    Returns the physical address, or None for a fault.  Only for native pmaps;
    it stands in for the CPU so tests can show combined native+EPT attributes.
    """
    if pmap.is_ept:
        raise PmapError("native_mmu_access on an EPT pmap")
    ptep = pmap._pte_addr(va)
    if ptep is None:
        return None
    while True:
        pte = pmap.memory.read(ptep)
        if not pte & PG_V or (write and not pte & PG_RW):
            return None
        new = pte | PG_U | (PG_M if write else 0)
        if new == pte or pmap.memory.cas(ptep, pte, new, source="cpu")[0]:
            return _pte2pa(pte) | (va & (PAGE_SIZE - 1))
