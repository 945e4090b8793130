"""The two-dimensional reference walk: a guest linear address through the
guest's own page tables and EPT.

:func:`translate_la` is the golden model of one guest access with CR0.PG = 1
(or 0): every guest paging-structure entry sits at a guest-physical address
that is translated by the EPT reference walk (:func:`model.walk.translate`,
never re-implemented here) before the entry is read; the entry is checked
(P, reserved bits: guest #PF); the permissions are combined over the levels
(U/S and R/W ANDed, XD ORed); the guest permission check decides #PF; the
final GPA goes through EPT for the access itself; and only then are the
guest A/D flags set, top level first, each with a compare-and-swap at the
entry's host-physical address.  With EPTP[6] = 0 each of those CASes is a
data write checked against EPT W; with EPTP[6] = 1 every guest
paging-structure access is already an EPT write (the EPT leaf mapping each
guest table page gets D), so the CAS goes to the HPA the walk found.

The result carries the EPT-violation exit qualification bits 0-11 (bit 7 is
always 1: the guest-linear address is valid; bit 8 tells a final access from
a paging-structure access or A/D update; bits 9-11 come from the guest walk
for final accesses only).  See ``docs/nested.md``.

This module is pure Python over :class:`~model.physmem.PhysicalMemory`; it
imports nothing from ``hw/`` or ``sim/``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .formats import GPA_BITS, Access, EptConfig, Eptp, Level, Outcome
from .guest import (
    PG_A, PG_D, PG_P, GuestRegs, entry_is_leaf, guest_reserved_mask,
    is_canonical, la_index, leaf_frame, pf_error_code,
)
from .physmem import PhysicalMemory
from .walk import Translation, WalkLivelock, translate

__all__ = [
    "LaOutcome", "Stage", "GuestStep", "GuestAdUpdate", "NestedTranslation", "translate_la",
    "QUAL_GLA_VALID", "QUAL_FINAL", "QUAL_GUEST_USER", "QUAL_GUEST_RW", "QUAL_GUEST_XD",
]

QUAL_RD, QUAL_WR, QUAL_FETCH = 1 << 0, 1 << 1, 1 << 2
QUAL_GLA_VALID = 1 << 7      # the guest-linear-address field is valid
QUAL_FINAL = 1 << 8          # the access is to the translation of the linear address
QUAL_GUEST_USER = 1 << 9     # AND of U/S over the guest entries
QUAL_GUEST_RW = 1 << 10      # AND of R/W
QUAL_GUEST_XD = 1 << 11      # OR of XD

_GPA_MASK = (1 << GPA_BITS) - 1
_DEFAULT_CONFIG = EptConfig()
_LEVELS = (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE)


class LaOutcome(enum.Enum):
    OK = "ok"
    PAGE_FAULT = "page_fault"
    VIOLATION = "violation"
    MISCONFIG = "misconfig"


class Stage(enum.Enum):
    """Which step of the 2D walk an EPT exit came from."""
    WALK = "walk"        # the EPT translation of a guest paging-structure entry
    FINAL = "final"      # the EPT translation of the final GPA
    AD = "ad"            # the EPT check of a guest A/D update (EPTP[6] = 0)


@dataclass(frozen=True)
class GuestStep:
    """One guest paging-structure entry: its GPA, the EPT translation of that
    GPA, and (when EPT let it through) its HPA and the value read."""
    level: Level
    gpa: int
    ept: Translation
    hpa: int | None = None
    entry: int | None = None


@dataclass(frozen=True)
class GuestAdUpdate:
    """A guest A/D compare-and-swap that landed (``ept`` is the EPT write check
    with EPTP[6] = 0, None with EPTP[6] = 1)."""
    level: Level
    gpa: int
    hpa: int
    old: int
    new: int
    ept: Translation | None = None


@dataclass(frozen=True)
class NestedTranslation:
    """The architectural result of one guest linear access.

    ``gpa`` is the final GPA for ``ok``; for a violation or misconfiguration
    it is the GPA whose EPT translation failed (an 8-byte guest entry's
    address for a walk access or A/D update, the full byte address for the
    final access).  ``page_size`` is the guest page size (the EPT leaf's with
    CR0.PG = 0); ``memtype`` that of the EPT leaf mapping the final GPA.
    """
    la: int
    access: Access
    user: bool
    outcome: LaOutcome
    gpa: int | None = None
    hpa: int | None = None
    page_size: int | None = None
    memtype: int | None = None
    pf_error: int | None = None
    qual: int | None = None
    stage: Stage | None = None            # where an EPT exit came from
    guest_steps: tuple[GuestStep, ...] = ()
    final: Translation | None = None       # the EPT translation of the final GPA
    ad_checks: tuple[Translation, ...] = ()    # EPT write checks of A/D updates (EPTP[6] = 0)
    ad_updates: tuple[GuestAdUpdate, ...] = ()   # guest A/D CASes that landed
    perms: tuple[int, int, int] = (1, 1, 0)    # (AND U/S, AND R/W, OR XD) over the guest walk
    reason: str = ""
    retries: int = 0                       # walks restarted by a failed guest A/D CAS

    # -- figures ---------------------------------------------------------
    @property
    def ept_translations(self) -> list[Translation]:
        """Every EPT translation this access made, in order."""
        out = [s.ept for s in self.guest_steps]
        if self.final is not None:
            out.append(self.final)
        out.extend(self.ad_checks)
        return out

    @property
    def guest_refs(self) -> int:
        """Guest paging-structure entries read."""
        return sum(1 for s in self.guest_steps if s.entry is not None)

    @property
    def ept_refs(self) -> int:
        """EPT paging-structure entries read to translate: the guest entries' GPAs
        and the final GPA (the (n+1)(m+1)-1 count, without the A/D write checks)."""
        n = sum(len(s.ept.steps) for s in self.guest_steps)
        return n + (len(self.final.steps) if self.final is not None else 0)

    @property
    def ad_check_refs(self) -> int:
        """EPT entries read by the EPT write checks of guest A/D updates (EPTP[6] = 0)."""
        return sum(len(t.steps) for t in self.ad_checks)

    def architectural(self) -> tuple:
        return (self.outcome, self.gpa, self.hpa, self.page_size, self.memtype, self.pf_error, self.qual)

    def to_json(self) -> dict:
        """The replay contract's translate_la line (without ``cycles``)."""
        d = {"op": "translate_la", "la": f"{self.la:#x}", "access": self.access.name.lower(),
             "user": self.user, "outcome": self.outcome.value}
        if self.outcome is LaOutcome.OK:
            d.update(gpa=f"{self.gpa:#x}", hpa=f"{self.hpa:#x}", page_size=self.page_size,
                     memtype=self.memtype)
        elif self.outcome is LaOutcome.PAGE_FAULT:
            d["pf_error"] = f"{self.pf_error:#x}"
        elif self.outcome is LaOutcome.VIOLATION:
            d.update(gpa=f"{self.gpa:#x}", qual=f"{self.qual:#x}")
        else:
            d["gpa"] = f"{self.gpa:#x}"
        return d


@dataclass
class _Walk:
    """Mutable state of one attempt."""
    steps: list[GuestStep] = field(default_factory=list)
    checks: list[Translation] = field(default_factory=list)
    landed: list[GuestAdUpdate] = field(default_factory=list)


def _ept(memory: PhysicalMemory, eptp: Eptp, gpa: int, access: Access, config: EptConfig) -> Translation:
    # A 4-level EPT walk uses bits 47:0 of the GPA (SDM 29.3.2); wider GPAs
    # only arise with MAXPHYADDR > 48.
    return translate(memory, eptp, gpa & _GPA_MASK, access, config)


def _exit(la, access, user, t: Translation, gpa: int, qual_extra: int, stage: Stage, w: _Walk,
          final: Translation | None, perms, retries) -> NestedTranslation:
    """An EPT violation or misconfiguration of one step of the 2D walk."""
    if t.outcome is Outcome.MISCONFIG:
        return NestedTranslation(la, access, user, LaOutcome.MISCONFIG, gpa=gpa, stage=stage,
                                 guest_steps=tuple(w.steps), final=final, ad_checks=tuple(w.checks),
                                 ad_updates=tuple(w.landed), perms=perms,
                                 reason=f"{stage.value}: {t.reason}", retries=retries)
    return NestedTranslation(la, access, user, LaOutcome.VIOLATION, gpa=gpa,
                             qual=t.qual | QUAL_GLA_VALID | qual_extra, stage=stage,
                             guest_steps=tuple(w.steps), final=final, ad_checks=tuple(w.checks),
                             ad_updates=tuple(w.landed), perms=perms,
                             reason=f"{stage.value}: {t.reason}", retries=retries)


def translate_la(memory: PhysicalMemory, eptp: Eptp, regs: GuestRegs, la: int, access: Access,
                 user: bool = False, config: EptConfig = _DEFAULT_CONFIG,
                 max_retries: int = 1000, *, ept_memory=None) -> NestedTranslation:
    """Translate one guest access at linear address ``la`` (CPL 3 if ``user``).

    EPT A/D (EPTP[6]) are set by each EPT translation that completes, and
    kept even if a later step faults; guest A/D are set only when the whole
    translation succeeded (and each update's own EPT check passed).  A guest
    A/D CAS that finds another value restarts the whole walk.

    ``ept_memory``: where the EPT translations read their entries and set
    EPT A/D (anything :func:`model.walk.translate` takes: a
    :class:`PhysicalMemory`, or a read function with a ``cas`` method);
    ``memory`` (the default) is then used only for the guest entries and
    their A/D.  A checker uses it to give the two kinds of entry different
    histories; the walk itself is the same.
    """
    if type(access) is not Access:
        access = Access(access)
    user = bool(user)
    if ept_memory is None:
        ept_memory = memory
    if not regs.paging:
        if not 0 <= la < 1 << GPA_BITS:
            raise ValueError(f"linear address {la:#x} is not a {GPA_BITS}-bit GPA (CR0.PG = 0)")
        t = _ept(ept_memory, eptp, la, access, config)
        perms = (1, 1, 0)
        if t.outcome is not Outcome.OK:
            return _exit(la, access, user, t, la, QUAL_FINAL | QUAL_GUEST_USER | QUAL_GUEST_RW,
                         Stage.FINAL, _Walk(), t, perms, 0)
        return NestedTranslation(la, access, user, LaOutcome.OK, gpa=la, hpa=t.hpa,
                                 page_size=t.page_size, memtype=t.memtype, final=t, perms=perms)
    if not is_canonical(la):
        raise ValueError(f"linear address {la:#x} is not canonical")
    retries = 0
    while True:
        r = _attempt(memory, ept_memory, eptp, regs, la, access, user, config, retries)
        if r is not None:
            return r
        retries += 1
        if retries > max_retries:
            raise WalkLivelock(f"guest A/D update for LA {la:#x} failed {retries} times")


def _attempt(memory, ept_memory, eptp, regs, la, access, user, config, retries) -> NestedTranslation | None:
    mpa = config.maxphyaddr
    write = access is Access.WRITE
    fetch = access is Access.FETCH
    # every guest paging-structure access is an EPT read, or an EPT write with EPTP[6] = 1
    ps_access = Access.WRITE if eptp.ad_enabled else Access.READ
    w = _Walk()
    us, rw, xd = 1, 1, 0
    table = regs.pml4_gpa

    def pf(present: bool, rsvd: bool, why: str) -> NestedTranslation:
        code = pf_error_code(present=present, write=write, user=user, rsvd=rsvd, fetch=fetch, nxe=regs.nxe)
        return NestedTranslation(la, access, user, LaOutcome.PAGE_FAULT, pf_error=code,
                                 guest_steps=tuple(w.steps), perms=(us, rw, xd), reason=why,
                                 retries=retries)

    for level in _LEVELS:
        egpa = table | (la_index(la, level) << 3)
        t = _ept(ept_memory, eptp, egpa, ps_access, config)
        if t.outcome is not Outcome.OK:
            w.steps.append(GuestStep(level, egpa, t))
            # a paging-structure access: bit 0 always, bit 1 with EPTP[6] = 1, never bit 2 or 8
            return _exit(la, access, user, t, egpa, QUAL_RD, Stage.WALK, w, None, (us, rw, xd), retries)
        e = memory.read(t.hpa)
        w.steps.append(GuestStep(level, egpa, t, t.hpa, e))
        if not e & PG_P:
            return pf(False, False, f"guest {level.name} not present")
        leaf = entry_is_leaf(e, level)
        bad = e & guest_reserved_mask(level, leaf, mpa, regs.nxe)
        if bad:
            return pf(True, True, f"guest {level.name}: reserved bits {bad:#x} set")
        us &= (e >> 2) & 1
        rw &= (e >> 1) & 1
        if regs.nxe:
            xd |= e >> 63
        if leaf:
            break
        table = leaf_frame(e, Level.PTE, mpa)
    page_size = level.page_size
    gpa = leaf_frame(e, level, mpa) | (la & (page_size - 1))
    perms = (us, rw, xd)

    # the guest permission check (no SMEP/SMAP: supervisor may read and fetch user pages)
    if user and not us:
        return pf(True, False, "user access to a supervisor page")
    if write and not rw and (user or regs.wp):
        return pf(True, False, "write to a read-only page" + ("" if user else " with CR0.WP = 1"))
    if fetch and xd:
        return pf(True, False, "fetch from an execute-disable page")

    final = _ept(ept_memory, eptp, gpa, access, config)
    guest_bits = QUAL_FINAL | (us << 9) | (rw << 10) | (xd << 11)
    if final.outcome is not Outcome.OK:
        return _exit(la, access, user, final, gpa, guest_bits, Stage.FINAL, w, final, perms, retries)

    # guest A/D, top level first: A wherever it lacks, D in the leaf on a write
    last = len(w.steps) - 1
    for i, s in enumerate(w.steps):
        want = s.entry | PG_A
        if i == last and write:
            want |= PG_D
        if want == s.entry:
            continue
        hpa = s.hpa
        check = None
        if not eptp.ad_enabled:
            # the CAS is a data write: EPT must allow W on the entry's page (RMW: bits 0 and 1)
            check = _ept(ept_memory, eptp, s.gpa, Access.WRITE, config)
            w.checks.append(check)
            if check.outcome is not Outcome.OK:
                return _exit(la, access, user, check, s.gpa, QUAL_RD, Stage.AD, w, final, perms, retries)
            hpa = check.hpa
        ok, _ = memory.cas(hpa, s.entry, want, source="walker")
        if not ok:
            return None                     # another agent changed the entry: walk again
        w.landed.append(GuestAdUpdate(s.level, s.gpa, hpa, s.entry, want, check))

    return NestedTranslation(la, access, user, LaOutcome.OK, gpa=gpa, hpa=final.hpa,
                             page_size=page_size, memtype=final.memtype, guest_steps=tuple(w.steps),
                             final=final, ad_checks=tuple(w.checks), ad_updates=tuple(w.landed),
                             perms=perms, retries=retries)

