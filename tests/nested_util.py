"""A hand-built nested world for the 2D-walk tests: EPT tables in host memory,
guest tables at guest-physical addresses that EPT maps elsewhere.

Guest pages are EPT-mapped to HPAs far from their GPAs (GPA + HOST_OFFSET, or
a fresh frame), so a walk that read a guest entry at its GPA instead of its
HPA finds a zero word and shows up as a #PF.
"""

from __future__ import annotations

from model.formats import (
    EPT_RWX, EptConfig, Eptp, Level, MemType, gpa_index, make_leaf_entry as ept_leaf,
    make_table_entry as ept_table,
)
from model.guest import GuestRegs, la_index, make_leaf_entry, make_table_entry
from model.physmem import PhysicalMemory

from hw.layouts import PageSize

EPT_TABLES_BASE = 0x0010_0000
HOST_OFFSET = 0x4_0000_0000          # HPA = GPA + HOST_OFFSET for identity-shaped maps
GUEST_TABLES_GPA = 0x0020_0000       # guest page-table pages are allocated from here

LEVELS = (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE)


class World:
    def __init__(self, ad: bool = False, maxphyaddr: int = 46, paging: bool = True,
                 wp: bool = True, nxe: bool = True):
        self.config = EptConfig(maxphyaddr=maxphyaddr)
        self.mem = PhysicalMemory(maxphyaddr)
        self._ept_next = EPT_TABLES_BASE
        self.ept_pml4 = self._ept_alloc()
        self.eptp = Eptp(pml4_pa=self.ept_pml4, memtype=MemType.WB, ad_enabled=ad)
        self._gtable_next = GUEST_TABLES_GPA
        self.ept_pages: dict[int, int] = {}          # GPA page -> HPA page (4K EPT leaves)
        self.guest_pml4 = self.guest_table()
        self.regs = GuestRegs(cr3=self.guest_pml4, paging=paging, wp=wp, nxe=nxe)

    # -- EPT -------------------------------------------------------------------
    def _ept_alloc(self) -> int:
        pa = self._ept_next
        self._ept_next += 0x1000
        return pa

    def ept_entry_addr(self, gpa: int, level: Level, create: bool = True) -> int:
        table = self.ept_pml4
        for lv in LEVELS:
            addr = table + gpa_index(gpa, lv) * 8
            if lv == level:
                return addr
            e = self.mem.peek(addr)
            if not e & 7:
                if not create:
                    raise KeyError(hex(gpa))
                e = ept_table(self._ept_alloc())
                self.mem.write(addr, e)
            table = e & ~0xFFF & ((1 << 52) - 1)
        raise AssertionError

    def ept_map(self, gpa: int, hpa: int | None = None, perms: int = EPT_RWX,
                level: Level = Level.PTE, memtype: int = MemType.WB) -> int:
        size = level.page_size
        gpa &= ~(size - 1)
        if hpa is None:
            hpa = gpa + HOST_OFFSET
        self.mem.write(self.ept_entry_addr(gpa, level), ept_leaf(hpa, level, perms, memtype))
        if level == Level.PTE:
            self.ept_pages[gpa] = hpa
        else:
            for off in range(0, size, 0x1000) if size <= 1 << 21 else ():
                self.ept_pages[gpa + off] = hpa + off
        return hpa

    def ept_leaf_addr(self, gpa: int) -> int:
        return self.ept_entry_addr(gpa, Level.PTE, create=False)

    def set_ept(self, gpa: int, level: Level, value: int) -> None:
        self.mem.write(self.ept_entry_addr(gpa, level, create=False), value)

    def hpa_of(self, gpa: int) -> int:
        return self.ept_pages[gpa & ~0xFFF] | (gpa & 0xFFF)

    # -- guest memory (through the EPT map built here) ------------------------
    def gwrite(self, gpa: int, value: int) -> None:
        self.mem.write(self.hpa_of(gpa), value)

    def gread(self, gpa: int) -> int:
        return self.mem.peek(self.hpa_of(gpa))

    def guest_table(self) -> int:
        gpa = self._gtable_next
        self._gtable_next += 0x1000
        self.ept_map(gpa)
        return gpa

    def guest_entry_gpa(self, la: int, level: Level) -> int:
        table = self.guest_pml4
        for lv in LEVELS:
            addr = table + la_index(la, lv) * 8
            if lv == level:
                return addr
            e = self.gread(addr)
            table = e & 0x000F_FFFF_FFFF_F000
        raise AssertionError

    def guest_map(self, la: int, gpa: int, level: Level = Level.PTE, rw: bool = True, user: bool = True,
                  xd: bool = False, accessed: bool = False, dirty: bool = False,
                  table_rw: bool = True, table_user: bool = True, table_accessed: bool = False,
                  ept: bool = True, ept_perms: int = EPT_RWX) -> None:
        """Map guest page ``la`` -> ``gpa`` with a leaf at ``level``; EPT-map the data
        page too (4K EPT leaves) unless ``ept`` is false."""
        table = self.guest_pml4
        for lv in LEVELS:
            addr = table + la_index(la, lv) * 8
            if lv == level:
                self.gwrite(addr, make_leaf_entry(gpa, lv, rw=rw, user=user, xd=xd,
                                                  accessed=accessed, dirty=dirty))
                break
            e = self.gread(addr)
            if not e & 1:
                e = make_table_entry(self.guest_table(), rw=table_rw, user=table_user,
                                     accessed=table_accessed)
                self.gwrite(addr, e)
            table = e & 0x000F_FFFF_FFFF_F000
        if ept:     # the first page and the one ``la`` falls in (4K EPT leaves)
            for off in {0, la & (level.page_size - 1) & ~0xFFF}:
                self.ept_map(gpa + off, perms=ept_perms)


SIZES = {4096: PageSize.SIZE_4K, 1 << 21: PageSize.SIZE_2M, 1 << 30: PageSize.SIZE_1G}


def compare_la(resp, ref, tag):
    """An RTL linear-translation response against the golden model's ``translate_la`` result."""
    assert resp.tag == tag
    assert resp.outcome.name.lower() == ref.outcome.value, (resp, ref.reason)
    if ref.outcome.value == "ok":
        assert (resp.gpa, resp.hpa, resp.page_size, resp.memtype) == \
            (ref.gpa, ref.hpa, SIZES[ref.page_size], ref.memtype)
    elif ref.outcome.value == "page_fault":
        assert resp.pf_error == ref.pf_error, ref.reason
    elif ref.outcome.value == "violation":
        assert (resp.gpa, resp.qual) == (ref.gpa, ref.qual), (hex(resp.qual), hex(ref.qual), ref.reason)
    else:
        assert resp.gpa == ref.gpa
