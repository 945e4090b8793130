"""Reference EPT translation: the golden model of one guest-physical access.

:func:`walk` is a pure 4-level walk over a read function and returns what the
architecture says about the access, without touching memory.
:func:`translate` adds the accessed/dirty update of EPTP bit 6: after a walk
that succeeds, a compare-and-swap per entry that needs a bit, against the
exact value the walk read; a CAS that finds another value restarts the walk.

Order of checks at each level (``shared/docs/ept-reference.md``): not present
(violation, reserved bits not looked at) -> misconfiguration (W without R,
X-only without support, reserved bits, leaf memory type 2/3/7) -> leaf or
descend.  After the leaf, the permission AND over every entry used decides
between success and a violation.

This module is written independently of the RTL in ``hw/``; it must never
import from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Union

from .formats import (
    EPT_A, EPT_D, EPT_R, EPT_RWX, EPT_W, EPT_X, GPA_BITS, VALID_MEMTYPES,
    Access, EptConfig, Eptp, Level, Outcome, entry_is_leaf, entry_memtype,
    frame_mask, gpa_index, reserved_mask,
)
from .physmem import PhysicalMemory

__all__ = ["WalkStep", "Translation", "walk", "translate", "ad_update_plan",
           "WalkLivelock"]

ReadFn = Callable[[int], int]


@dataclass(frozen=True)
class WalkStep:
    """One paging-structure entry read by a walk."""
    level: Level
    addr: int
    entry: int


@dataclass(frozen=True)
class Translation:
    """The architectural result of translating one access.

    ``qual`` is the exit qualification (bits 0-6) for a violation, else None.
    ``steps`` are the entries read, top first; the last one is where the walk
    stopped.  ``reason`` explains a misconfiguration or violation in words.
    """
    gpa: int
    access: Access
    outcome: Outcome
    hpa: int | None = None
    page_size: int | None = None
    memtype: int | None = None
    qual: int | None = None
    steps: tuple[WalkStep, ...] = ()
    reason: str = ""
    retries: int = 0                       # walks restarted by a failed A/D CAS
    ad_writes: tuple[tuple[int, int, int], ...] = ()   # (addr, old, new) CASes that landed

    @property
    def level(self) -> Level | None:
        """The level the walk stopped at."""
        return self.steps[-1].level if self.steps else None

    @property
    def perms(self) -> int:
        """AND of R/W/X over every entry walked."""
        p = EPT_RWX
        for s in self.steps:
            p &= s.entry
        return p & EPT_RWX

    def architectural(self) -> tuple:
        """The fields a checker compares: outcome and its result."""
        return (self.outcome, self.hpa, self.page_size, self.memtype, self.qual)

    def to_json(self) -> dict:
        """The replay contract's translate line (without ``cycles``)."""
        d = {"op": "translate", "gpa": f"{self.gpa:#x}", "access": self.access.name.lower(),
             "outcome": self.outcome.value}
        if self.outcome is Outcome.OK:
            d.update(hpa=f"{self.hpa:#x}", page_size=self.page_size, memtype=self.memtype)
        elif self.outcome is Outcome.VIOLATION:
            d["qual"] = f"{self.qual:#x}"
        return d


def _read_fn(memory: Union[PhysicalMemory, ReadFn]) -> ReadFn:
    return memory.read if isinstance(memory, PhysicalMemory) else memory


def _check_gpa(gpa: int) -> None:
    if isinstance(gpa, bool) or not isinstance(gpa, int) or not 0 <= gpa < 1 << GPA_BITS:
        raise ValueError(f"GPA {gpa!r} is not a {GPA_BITS}-bit guest-physical address")


def _misconfig_reason(entry: int, level: Level, leaf: bool, config: EptConfig) -> str | None:
    rwx = entry & EPT_RWX
    if rwx & EPT_W and not rwx & EPT_R:
        return f"{level.name}: write without read"
    if rwx == EPT_X and not config.execute_only:
        return f"{level.name}: execute-only without execute-only support"
    reserved = entry & reserved_mask(level, leaf, config.maxphyaddr)
    if reserved:
        return f"{level.name}: reserved bits {reserved:#x} set"
    if leaf and entry_memtype(entry) not in VALID_MEMTYPES:
        return f"{level.name}: invalid memory type {entry_memtype(entry)}"
    return None


def walk(memory: Union[PhysicalMemory, ReadFn], eptp: Eptp, gpa: int, access: Access,
         config: EptConfig = EptConfig()) -> Translation:
    """Walk the tables of ``eptp`` for ``gpa`` without writing anything."""
    _check_gpa(gpa)
    if type(access) is not Access:        # the enum call costs as much as a level walked
        access = Access(access)
    read = _read_fn(memory)
    fmask = frame_mask(config.maxphyaddr)
    table = eptp.pml4_pa
    steps: list[WalkStep] = []
    perms = EPT_RWX
    for level in (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE):
        addr = table + gpa_index(gpa, level) * 8
        entry = read(addr)
        steps.append(WalkStep(level, addr, entry))
        perms &= entry
        if entry & EPT_RWX == 0:
            return Translation(gpa, access, Outcome.VIOLATION, qual=access.qual_bit,
                               steps=tuple(steps), reason=f"{level.name} not present")
        leaf = entry_is_leaf(entry, level)
        why = _misconfig_reason(entry, level, leaf, config)
        if why:
            return Translation(gpa, access, Outcome.MISCONFIG, steps=tuple(steps), reason=why)
        if leaf:
            break
        table = entry & fmask
    perms &= EPT_RWX
    if not perms & access.perm_bit:
        return Translation(gpa, access, Outcome.VIOLATION,
                           qual=access.qual_bit | (perms << 3), steps=tuple(steps),
                           reason=f"{access.name.lower()} not permitted (R/W/X AND {perms:03b})")
    page_size = level.page_size
    hpa = (entry & fmask & ~(page_size - 1)) | (gpa & (page_size - 1))
    return Translation(gpa, access, Outcome.OK, hpa=hpa, page_size=page_size,
                       memtype=entry_memtype(entry), steps=tuple(steps))


def ad_update_plan(t: Translation) -> list[tuple[int, int, int]]:
    """The CASes an A/D update owes for a successful walk: ``(addr, old, new)``.

    A on every entry used, D on the leaf for a write; entries that already
    hold the bits need no write.
    """
    plan = []
    last = len(t.steps) - 1
    for i, s in enumerate(t.steps):
        want = s.entry | EPT_A
        if i == last and t.access is Access.WRITE:
            want |= EPT_D
        if want != s.entry:
            plan.append((s.addr, s.entry, want))
    return plan


class WalkLivelock(RuntimeError):
    """The A/D update kept losing its CAS race."""


def translate(memory: PhysicalMemory, eptp: Eptp, gpa: int, access: Access,
              config: EptConfig = EptConfig(), max_retries: int = 1000) -> Translation:
    """Translate one access and, with EPTP A/D enabled, set A/D atomically.

    Nothing is written for an access that faults.  Each CAS compares against
    the exact value the walk read; if one fails, the walk restarts from the
    PML4 and the result is that of the new tables.
    """
    retries = 0
    landed = []
    while True:
        t = walk(memory, eptp, gpa, access, config)
        if t.outcome is not Outcome.OK or not eptp.ad_enabled:
            return replace(t, retries=retries, ad_writes=tuple(landed))
        for addr, old, new in ad_update_plan(t):
            ok, _ = memory.cas(addr, old, new, source="walker")
            if not ok:
                break
            landed.append((addr, old, new))
        else:
            return replace(t, retries=retries, ad_writes=tuple(landed))
        retries += 1
        if retries > max_retries:
            raise WalkLivelock(f"A/D update for GPA {gpa:#x} failed {retries} times")
