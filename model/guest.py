"""Guest paging formats: IA-32e 4-level entries, CR3, CR0.PG/WP and EFER.NXE.

The guest's own page tables, the ones a guest kernel builds for its processes
and the processor walks before EPT ever sees an address (see ``docs/nested.md``).
Entries are plain 64-bit integers, as in :mod:`model.formats`; this module
names their bits, gives the reserved-bit masks per level and page size, and
the page-fault error code.  Nothing here walks tables: :mod:`model.nested`
does, through EPT.

Scope: IA-32e 4-level paging (CR4.LA57 = 0), CR4.PGE = 0 (G is ignored), no
PCID, SMEP, SMAP or protection keys.  1G pages are supported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from .formats import MAX_MAXPHYADDR, MIN_MAXPHYADDR, Level, addr_mask, frame_mask

__all__ = [
    "PG_P", "PG_RW", "PG_US", "PG_PWT", "PG_PCD", "PG_A", "PG_D", "PG_PS", "PG_PAT",
    "PG_G", "PG_XD", "PF_P", "PF_WR", "PF_US", "PF_RSVD", "PF_ID",
    "CR3_ADDR_MASK", "LA_BITS", "GuestRegs", "GuestRegsError",
    "is_canonical", "la_index", "entry_is_leaf", "guest_reserved_mask", "leaf_frame",
    "make_table_entry", "make_leaf_entry", "pf_error_code", "describe_pf_error",
]

# Entry bits (SDM vol. 3A, tables 4-15 .. 4-20)
PG_P = 1 << 0       # present
PG_RW = 1 << 1      # read/write
PG_US = 1 << 2      # user/supervisor
PG_PWT = 1 << 3
PG_PCD = 1 << 4
PG_A = 1 << 5       # accessed
PG_D = 1 << 6       # dirty (leaves only)
PG_PS = 1 << 7      # page size in a PDPTE/PDE; PAT in a PTE
PG_PAT = 1 << 7     # PTE only
PG_G = 1 << 8       # global (ignored: CR4.PGE = 0)
PG_LARGE_PAT = 1 << 12   # PAT bit of a 2M/1G leaf
PG_XD = 1 << 63     # execute-disable (reserved unless EFER.NXE)

# #PF error code bits
PF_P = 1 << 0       # 0: not present; 1: protection or reserved bit
PF_WR = 1 << 1      # the access was a write
PF_US = 1 << 2      # the access was a user-mode (CPL 3) access
PF_RSVD = 1 << 3    # a reserved bit was set in a paging-structure entry
PF_ID = 1 << 4      # instruction fetch (reported only when EFER.NXE = 1, no SMEP here)

CR3_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF     # CR3[51:12]: the PML4 table; the rest ignored
LA_BITS = 48


class GuestRegsError(ValueError):
    """A guest register value the processor would refuse (MOV to CR3 with reserved bits)."""


@dataclass(frozen=True)
class GuestRegs:
    """The guest control state a translation depends on.

    ``cr3`` is the whole register; only bits 51:12 are used (no PCID, PWT/PCD
    ignored here).  ``paging`` is CR0.PG, ``wp`` CR0.WP, ``nxe`` EFER.NXE.
    ``vpid`` tags the combined mappings a TLB would make.
    """
    cr3: int = 0
    paging: bool = True
    wp: bool = True
    nxe: bool = True
    vpid: int = 1

    @property
    def pml4_gpa(self) -> int:
        return self.cr3 & CR3_ADDR_MASK

    def check(self, maxphyaddr: int) -> "GuestRegs":
        """Raise :class:`GuestRegsError` for a CR3 with bits 51:MAXPHYADDR set
        (MOV to CR3 would #GP) or a VPID outside 1..0xFFFF."""
        if isinstance(self.cr3, bool) or not isinstance(self.cr3, int) or not 0 <= self.cr3 < 1 << 64:
            raise GuestRegsError(f"cr3 {self.cr3!r} is not a 64-bit value")
        if not MIN_MAXPHYADDR <= maxphyaddr <= MAX_MAXPHYADDR:
            raise GuestRegsError(f"maxphyaddr {maxphyaddr} out of range")
        high = self.cr3 & CR3_ADDR_MASK & ~addr_mask(maxphyaddr)
        if high:
            raise GuestRegsError(f"cr3 {self.cr3:#x}: bits 51:{maxphyaddr} are set "
                                 f"(beyond MAXPHYADDR {maxphyaddr})")
        if isinstance(self.vpid, bool) or not isinstance(self.vpid, int) or not 1 <= self.vpid <= 0xFFFF:
            raise GuestRegsError(f"vpid {self.vpid!r} is not in 1..0xffff")
        for name in ("paging", "wp", "nxe"):
            if not isinstance(getattr(self, name), bool):
                raise GuestRegsError(f"{name} {getattr(self, name)!r} is not true or false")
        return self

    def with_cr3(self, cr3: int) -> "GuestRegs":
        return replace(self, cr3=cr3)


def is_canonical(la: int) -> bool:
    """Bits 63:47 all equal (48-bit linear addresses)."""
    top = la >> (LA_BITS - 1)
    return top == 0 or top == (1 << (64 - LA_BITS + 1)) - 1


def la_index(la: int, level: Level | int) -> int:
    """The 9-bit index of ``la`` into a guest table at ``level``."""
    return (la >> (12 + 9 * (int(level) - 1))) & 0x1FF


def entry_is_leaf(entry: int, level: Level | int) -> bool:
    """A PTE, or a PDPTE/PDE with PS = 1 (PS in a PML4E is reserved, not a leaf)."""
    level = int(level)
    if level == 1:
        return True
    if level == 4:
        return False
    return bool(entry & PG_PS)


@lru_cache(maxsize=None)
def guest_reserved_mask(level: Level | int, leaf: bool, maxphyaddr: int, nxe: bool) -> int:
    """Reserved bits of a present guest entry (SDM vol. 3A, 4.5.4 / table 4-20 notes).

    Bits 51:MAXPHYADDR in every entry; PS (bit 7) in a PML4E; bits 29:13 of a
    1G leaf and 20:13 of a 2M leaf (bit 12 is their PAT bit); XD (bit 63) when
    EFER.NXE = 0.  A PTE's bit 7 is PAT, not reserved.  Bits 62:52 are ignored
    (protection keys are off).
    """
    level = int(level)
    mask = ((1 << 52) - 1) & ~addr_mask(maxphyaddr)
    if not nxe:
        mask |= PG_XD
    if level == 4:
        mask |= PG_PS
    elif leaf and level == 3:
        mask |= ((1 << 30) - 1) & ~((1 << 13) - 1)
    elif leaf and level == 2:
        mask |= ((1 << 21) - 1) & ~((1 << 13) - 1)
    return mask


def leaf_frame(entry: int, level: Level | int, maxphyaddr: int) -> int:
    """The guest-physical page a leaf maps (4K, 2M or 1G aligned)."""
    size = 1 << (12 + 9 * (int(level) - 1))
    return entry & frame_mask(maxphyaddr) & ~(size - 1)


def make_table_entry(table_gpa: int, rw: bool = True, user: bool = True, accessed: bool = False,
                     xd: bool = False) -> int:
    """A present non-leaf guest entry pointing at the table at ``table_gpa``."""
    if table_gpa % 4096:
        raise ValueError(f"table address {table_gpa:#x} is not 4K-aligned")
    e = table_gpa | PG_P
    e |= PG_RW if rw else 0
    e |= PG_US if user else 0
    e |= PG_A if accessed else 0
    e |= PG_XD if xd else 0
    return e


def make_leaf_entry(gpa: int, level: Level | int = 1, rw: bool = True, user: bool = True,
                    xd: bool = False, accessed: bool = False, dirty: bool = False) -> int:
    """A present guest leaf mapping the page at ``gpa`` (aligned to the level's page size)."""
    level = int(level)
    if level not in (1, 2, 3):
        raise ValueError("a guest PML4E cannot be a leaf")
    size = 1 << (12 + 9 * (level - 1))
    if gpa % size:
        raise ValueError(f"level-{level} leaf address {gpa:#x} is not aligned to {size:#x}")
    e = gpa | PG_P
    e |= PG_RW if rw else 0
    e |= PG_US if user else 0
    e |= PG_XD if xd else 0
    e |= PG_A if accessed else 0
    e |= PG_D if dirty else 0
    if level != 1:
        e |= PG_PS
    return e


def pf_error_code(*, present: bool, write: bool, user: bool, rsvd: bool, fetch: bool, nxe: bool) -> int:
    """The #PF error code, bits 0-4 (no SMEP: I/D only with EFER.NXE)."""
    code = 0
    code |= PF_P if present else 0
    code |= PF_WR if write else 0
    code |= PF_US if user else 0
    code |= PF_RSVD if rsvd else 0
    code |= PF_ID if fetch and nxe else 0
    return code


def describe_pf_error(code: int) -> str:
    parts = ["P" if code & PF_P else "NP"]
    for name, bit in (("W", PF_WR), ("U", PF_US), ("RSVD", PF_RSVD), ("I", PF_ID)):
        if code & bit:
            parts.append(name)
    return "|".join(parts)


MAXPHYADDR_RANGE = (MIN_MAXPHYADDR, MAX_MAXPHYADDR)
