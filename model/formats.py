"""EPT formats: entry bits, the EPT pointer, memory types and access kinds.

Everything here follows docs/ept.md (Intel SDM vol. 3C,
ch. 29).  Entries are plain 64-bit integers; :class:`Eptp` and the helpers
below give them named fields.  Nothing in this module walks tables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "PAGE_SIZE", "PAGE_4K", "PAGE_2M", "PAGE_1G", "ENTRIES_PER_TABLE",
    "EPT_R", "EPT_W", "EPT_X", "EPT_RWX", "EPT_MEMTYPE_SHIFT", "EPT_MEMTYPE_MASK",
    "EPT_IGNORE_PAT", "EPT_LEAF", "EPT_A", "EPT_D", "EPT_UX", "EPT_PVLIST", "EPT_WIRED",
    "EPT_SUPPRESS_VE",
    "MemType", "VALID_MEMTYPES", "Access", "Outcome", "Level", "as_level",
    "EptConfig", "Eptp", "EptpError",
    "addr_mask", "frame_mask", "gpa_index", "entry_memtype", "entry_is_leaf",
    "reserved_mask", "make_table_entry", "make_leaf_entry", "describe_entry",
    "GPA_BITS", "MAX_MAXPHYADDR", "MIN_MAXPHYADDR",
]

PAGE_SIZE = 4096
PAGE_4K = 1 << 12
PAGE_2M = 1 << 21
PAGE_1G = 1 << 30
ENTRIES_PER_TABLE = 512
GPA_BITS = 48
MIN_MAXPHYADDR = 36
MAX_MAXPHYADDR = 52

# Hardware bits.
EPT_R = 1 << 0
EPT_W = 1 << 1
EPT_X = 1 << 2
EPT_RWX = EPT_R | EPT_W | EPT_X
EPT_MEMTYPE_SHIFT = 3
EPT_MEMTYPE_MASK = 0b111 << EPT_MEMTYPE_SHIFT
EPT_IGNORE_PAT = 1 << 6
EPT_LEAF = 1 << 7          # "large page" in PDPTE/PDE; ignored in a PTE
EPT_A = 1 << 8
EPT_D = 1 << 9
EPT_UX = 1 << 10           # user-execute with MBEC, else ignored
EPT_SUPPRESS_VE = 1 << 63  # ignored here
# NetBSD software bits (ignored by hardware).
EPT_PVLIST = 1 << 60
EPT_WIRED = 1 << 61


class MemType(enum.IntEnum):
    """EPT memory types (IA32_PAT encodings)."""
    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6


VALID_MEMTYPES = frozenset(int(t) for t in MemType)


class Access(enum.IntEnum):
    """The kind of guest access being translated (exit qualification bit)."""
    READ = 0
    WRITE = 1
    FETCH = 2

    @property
    def qual_bit(self) -> int:
        return 1 << int(self)

    @property
    def perm_bit(self) -> int:
        """The entry permission bit this access needs (R, W or X)."""
        return 1 << int(self)

    @classmethod
    def parse(cls, text: str) -> "Access":
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"access must be read, write or fetch, not {text!r}") from None


class Outcome(enum.Enum):
    OK = "ok"
    VIOLATION = "violation"
    MISCONFIG = "misconfig"
    BUS_ERROR = "bus_error"


class Level(enum.IntEnum):
    """Paging-structure level; the number is the one the SDM uses."""
    PTE = 1
    PDE = 2
    PDPTE = 3
    PML4E = 4

    @property
    def shift(self) -> int:
        """Bit position of this level's GPA index."""
        return 12 + 9 * (int(self) - 1)

    @property
    def page_size(self) -> int:
        """Size of a page mapped by a leaf at this level."""
        return 1 << self.shift

    @property
    def can_be_leaf(self) -> bool:
        return self in (Level.PTE, Level.PDE, Level.PDPTE)


def as_level(level: Level | int) -> Level:
    """``Level(level)``; skips the enum call when ``level`` already is one
    (the walk asks on every entry, and an enum call costs more than the rest)."""
    return level if type(level) is Level else Level(level)


@dataclass(frozen=True)
class EptConfig:
    """Processor parameters the EPT rules depend on."""
    maxphyaddr: int = 46
    execute_only: bool = True

    def __post_init__(self):
        if isinstance(self.maxphyaddr, bool) or not isinstance(self.maxphyaddr, int):
            raise ValueError(f"maxphyaddr must be an integer, not {self.maxphyaddr!r}")
        if not MIN_MAXPHYADDR <= self.maxphyaddr <= MAX_MAXPHYADDR:
            raise ValueError(f"maxphyaddr must be in {MIN_MAXPHYADDR}..{MAX_MAXPHYADDR}, "
                             f"not {self.maxphyaddr}")
        if not isinstance(self.execute_only, bool):
            raise ValueError(f"execute_only must be true or false, not {self.execute_only!r}")


def addr_mask(maxphyaddr: int) -> int:
    """Mask of a physical address: bits maxphyaddr-1:0."""
    return (1 << maxphyaddr) - 1


def frame_mask(maxphyaddr: int) -> int:
    """Mask of the physical frame field of an entry: bits maxphyaddr-1:12."""
    return addr_mask(maxphyaddr) & ~(PAGE_SIZE - 1)


def gpa_index(gpa: int, level: Level | int) -> int:
    """The 9-bit index of ``gpa`` into a table at ``level``."""
    return (gpa >> as_level(level).shift) & 0x1FF


def entry_memtype(entry: int) -> int:
    return (entry & EPT_MEMTYPE_MASK) >> EPT_MEMTYPE_SHIFT


def entry_is_leaf(entry: int, level: Level | int) -> bool:
    level = as_level(level)
    if level == Level.PTE:
        return True
    if level == Level.PML4E:
        return False          # bit 7 of a PML4E is reserved, never "large"
    return bool(entry & EPT_LEAF)


@lru_cache(maxsize=None)      # a handful of distinct arguments; asked on every entry walked
def reserved_mask(level: Level | int, leaf: bool, maxphyaddr: int) -> int:
    """Reserved (must-be-zero) bits of a present entry at ``level``.

    Bits 51:MAXPHYADDR everywhere; bits 7:3 of a PML4E; bits 6:3 of a
    non-leaf PDPTE/PDE (bit 7 = 0 is what makes it non-leaf); bits 29:12 of a
    1G leaf and 20:12 of a 2M leaf.  A PTE's bit 7 is ignored.
    """
    level = Level(level)
    mask = ((1 << 52) - 1) & ~addr_mask(maxphyaddr)
    if level == Level.PML4E:
        mask |= 0b11111 << 3
    elif not leaf:
        if level == Level.PTE:
            raise ValueError("a PTE is always a leaf")
        mask |= 0b1111 << 3
    elif level == Level.PDPTE:
        mask |= ((1 << 30) - 1) & ~(PAGE_SIZE - 1)
    elif level == Level.PDE:
        mask |= ((1 << 21) - 1) & ~(PAGE_SIZE - 1)
    return mask


def make_table_entry(table_pa: int, perms: int = EPT_RWX) -> int:
    """A non-leaf entry pointing at the table at ``table_pa``."""
    if table_pa % PAGE_SIZE:
        raise ValueError(f"table address {table_pa:#x} is not 4K-aligned")
    return table_pa | (perms & EPT_RWX)


def make_leaf_entry(pa: int, level: Level | int = Level.PTE, perms: int = EPT_RWX,
                    memtype: int = MemType.WB, ignore_pat: bool = True,
                    accessed: bool = False, dirty: bool = False) -> int:
    """A leaf entry mapping the page at ``pa`` (aligned to the level's page size)."""
    level = Level(level)
    if not level.can_be_leaf:
        raise ValueError("a PML4E cannot be a leaf")
    if pa % level.page_size:
        raise ValueError(f"{level.name} leaf address {pa:#x} is not aligned to "
                         f"{level.page_size:#x}")
    e = pa | (perms & EPT_RWX) | ((int(memtype) & 7) << EPT_MEMTYPE_SHIFT)
    if ignore_pat:
        e |= EPT_IGNORE_PAT
    if level != Level.PTE:
        e |= EPT_LEAF
    if accessed:
        e |= EPT_A
    if dirty:
        e |= EPT_D
    return e


def describe_entry(entry: int) -> str:
    """A short human-readable form, e.g. ``0x1234000 RWX WB A D``."""
    parts = [f"{entry & frame_mask(MAX_MAXPHYADDR):#x}"]
    parts.append("".join(c if entry & b else "-" for c, b in (("R", EPT_R), ("W", EPT_W), ("X", EPT_X))))
    mt = entry_memtype(entry)
    parts.append(MemType(mt).name if mt in VALID_MEMTYPES else f"type{mt}")
    for name, bit in (("L", EPT_LEAF), ("A", EPT_A), ("D", EPT_D), ("PV", EPT_PVLIST), ("WIRED", EPT_WIRED)):
        if entry & bit:
            parts.append(name)
    return " ".join(parts)


class EptpError(ValueError):
    """An EPT pointer that must be refused when loaded."""


@dataclass(frozen=True)
class Eptp:
    """The EPT pointer, with named fields.

    ``Eptp.decode(value, config)`` validates and refuses an invalid pointer
    with :class:`EptpError`; nothing is ever walked from an invalid EPTP.
    """
    pml4_pa: int
    memtype: int = MemType.WB
    ad_enabled: bool = False
    walk_length: int = 4          # levels; EPTP[5:3] holds walk_length - 1
    sss: bool = False             # supervisor shadow stacks: ignored here

    WALK_LENGTH_SHIFT = 3
    AD_BIT = 1 << 6
    SSS_BIT = 1 << 7

    @property
    def tag(self) -> int:
        """EPTP[51:12], the key caches and INVEPT single-context use."""
        return self.pml4_pa >> 12

    def encode(self) -> int:
        v = self.pml4_pa | (int(self.memtype) & 7) | ((self.walk_length - 1) << self.WALK_LENGTH_SHIFT)
        if self.ad_enabled:
            v |= self.AD_BIT
        if self.sss:
            v |= self.SSS_BIT
        return v

    @classmethod
    def decode(cls, value: int, config: EptConfig = EptConfig()) -> "Eptp":
        check_eptp(value, config)
        return cls(pml4_pa=value & frame_mask(config.maxphyaddr),
                   memtype=value & 7,
                   ad_enabled=bool(value & cls.AD_BIT),
                   walk_length=((value >> cls.WALK_LENGTH_SHIFT) & 7) + 1,
                   sss=bool(value & cls.SSS_BIT))


def check_eptp(value: int, config: EptConfig = EptConfig()) -> None:
    """Raise :class:`EptpError` naming the first problem with an EPTP value."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise EptpError(f"EPTP {value!r} is not a 64-bit value")
    mt = value & 7
    if mt not in (MemType.UC, MemType.WB):
        raise EptpError(f"EPTP {value:#x}: paging-structure memory type {mt} is invalid "
                        f"(must be 0 UC or 6 WB)")
    wl = (value >> 3) & 7
    if wl != 3:
        raise EptpError(f"EPTP {value:#x}: walk length field {wl} is unsupported "
                        f"(must be 3, a 4-level walk)")
    if value & (0xF << 8):
        raise EptpError(f"EPTP {value:#x}: reserved bits 11:8 are set")
    high = value >> config.maxphyaddr
    if high:
        raise EptpError(f"EPTP {value:#x}: reserved bits 63:{config.maxphyaddr} are set "
                        f"(MAXPHYADDR {config.maxphyaddr})")


Eptp.check = staticmethod(check_eptp)
__all__.append("check_eptp")
