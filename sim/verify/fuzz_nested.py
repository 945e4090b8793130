"""Differential fuzzing of the nested unit (``python -m sim fuzz --nested``).

Each *case* is a random guest (its own IA-32e page tables) over a random EPT
table set, both in one host memory, run on the nested unit
(:class:`hw.nested_top.NestedWalkUnit`, through the rtl backend, or any
backend whose class has ``nested``) with every linear answer checked by the
nested scoreboard (:mod:`sim.cosim.nested_scoreboard`) against
:func:`model.nested.translate_la`.  Cases run in rounds that share one unit:
its combined TLB, guest paging-structure caches, EPT TLB and caches carry
over between cases (each case has its own EP4TA and, often, a VPID an
earlier case used).

A case draws:

- guest pages of 4K, 2M and 1G, each over EPT leaves of 4K, 2M or 1G (the
  data page and, separately, the page holding the guest tables: the guest
  tables live in one GPA region EPT maps with 4K leaves, one 2M or one 1G
  leaf); several linear addresses in one guest page and under one table;
- guest entries present or not, with reserved bits (bits 51:MAXPHYADDR, PS
  in a PML4E, 1G/2M leaf bits, XD with EFER.NXE = 0), U/S, R/W, XD, A and D
  at random; EPT leaves with random permissions and memory types (some
  misconfigured); EPTP[6] on or off; CR0.WP and EFER.NXE on or off; CR0.PG
  off for some cases (the LA is the GPA);
- a sequence of ``translate_la`` (alone, or two to four in flight at once),
  MOV to CR3 (to the same root or to a second one), INVVPID (address,
  single, all), INVEPT (single, global), guest-entry stores and EPT-entry
  stores.  Each store is followed by the invalidation the caching rules
  require before the next access that could see it (docs/nested.md: a
  guest leaf: INVVPID address at an LA in its page; another guest entry:
  INVVPID single or all, or MOV CR3; an EPT entry: INVEPT) -- or, for
  ``unsynced`` of them, by none, so the unit may answer from the old or the
  new value and the scoreboard must accept both (its windows).

Before the random cases, interleaved with them, a deterministic sweep sets
every reserved bit of every guest entry kind alone (bit 63 with NXE off).

On a mismatch the case is cut down (the ops after the failing translation
dropped; then, while it still fails alone on a fresh unit, single ops and
then memory words the model's walks never read) and written as a replay
scenario with a guest, with the ``python -m sim replay`` command that
reproduces it.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from model.formats import (
    EPT_A, EPT_D, EPT_LEAF, EPT_R, EPT_RWX, EPT_W, EPT_X, Access, EptConfig, Eptp, Level,
    frame_mask, gpa_index, make_leaf_entry as ept_leaf, make_table_entry as ept_table,
)
from model.guest import (
    PG_A, PG_D, PG_P, PG_PS, PG_RW, PG_US, PG_XD, GuestRegs, guest_reserved_mask, la_index,
    make_leaf_entry, make_table_entry,
)
from model.nested import LaOutcome, translate_la
from model.physmem import PhysicalMemory

from sim.backends.base import make_backend
from sim.cosim.harness import HangError
from sim.files import write_json

__all__ = ["NestedWorld", "guest_sweep_cases", "run_nested_fuzz"]

LEVELS = (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE)
SIZES = (Level.PTE, Level.PDE, Level.PDPTE)          # leaf levels: 4K, 2M, 1G
_GFRAME = 0x000F_FFFF_FFFF_F000


def _pick(rng: random.Random, weighted: list[tuple[float, object]]):
    x = rng.random() * sum(w for w, _ in weighted)
    for w, v in weighted:
        x -= w
        if x < 0:
            return v
    return weighted[-1][1]


def _canonical(la48: int) -> int:
    return la48 | (((1 << 16) - 1) << 48) if la48 >> 47 & 1 else la48


def guest_sweep_cases(maxphyaddr: int) -> list[tuple[Level, bool, int, bool]]:
    """Every (level, leaf, reserved bit, nxe) that breaks a guest entry alone
    (XD only with NXE off; every other bit with NXE on)."""
    out = []
    for level in LEVELS:
        for leaf in ((False,) if level == Level.PML4E else (True,) if level == Level.PTE else (False, True)):
            mask = guest_reserved_mask(level, leaf, maxphyaddr, True)
            out += [(level, leaf, bit, True) for bit in range(64) if mask >> bit & 1]
            out.append((level, leaf, 63, False))
    return out


class _Alloc:
    """Host frames for tables, going up from ``next``."""

    def __init__(self, base: int):
        self.next = base

    def aligned(self, size: int) -> int:
        pa = -(-self.next // size) * size
        self.next = pa + size
        return pa

    def frame(self) -> int:
        return self.aligned(4096)


@dataclass
class GuestEntry:
    hpa: int            # where the entry is (host memory)
    level: Level
    la: int             # an LA it translates (its page at this level covers the entry's reach)


class NestedWorld:
    """One case's EPT tables and guest tables, written into ``memory``.

    ``words``: every word written (for the reproducer); ``ept_entries`` the
    addresses of EPT entries, ``gt_leaves`` those of the EPT leaves mapping
    guest table pages; ``guest_entries`` the guest entries; ``las`` the
    linear addresses the case accesses (GPAs with paging off)."""

    def __init__(self, memory: PhysicalMemory, alloc: _Alloc, rng: random.Random, config: EptConfig, *,
                 ad: bool, paging: bool = True, wp: bool = True, nxe: bool = True, vpid: int = 1,
                 gt_level: Level | None = None):
        self.memory, self.alloc, self.rng, self.config = memory, alloc, rng, config
        self.fmask = frame_mask(config.maxphyaddr)
        self.words: dict[int, int] = {}
        self.ept_entries: list[int] = []
        self.gt_leaves: list[int] = []
        self.guest_entries: list[GuestEntry] = []
        self.las: list[int] = []
        self.eptp = Eptp(pml4_pa=alloc.frame(), ad_enabled=ad)
        self._gt_next = 0
        self._gt_level = gt_level or _pick(rng, [(0.5, Level.PTE), (0.3, Level.PDE), (0.2, Level.PDPTE)])
        self.gt_base = rng.randrange(1, 1 << (config.maxphyaddr - 31)) << 30     # 1G-aligned GPA
        if self._gt_level != Level.PTE:
            hregion = alloc.aligned(self._gt_level.page_size)
            self.ept_map(self.gt_base, self._gt_level, hregion, EPT_RWX, gt=True)
        self.root = self.guest_table() if paging else 0
        self.alt_root = None
        self.regs = GuestRegs(cr3=self.root, paging=paging, wp=wp, nxe=nxe, vpid=vpid)

    # -- memory -----------------------------------------------------------------------
    def write(self, addr: int, value: int) -> None:
        self.memory.write(addr, value, source="host")
        self.words[addr] = value

    def peek(self, addr: int) -> int:
        return self.memory.peek(addr)

    # -- EPT --------------------------------------------------------------------------
    def ept_map(self, gpa: int, level: Level, hpa: int, perms: int = EPT_RWX, memtype: int = 6, *,
                gt: bool = False) -> bool:
        """An EPT leaf at ``level`` for ``gpa`` (False: something already maps it)."""
        table = self.eptp.pml4_pa
        for lv in LEVELS:
            addr = table + gpa_index(gpa, lv) * 8
            e = self.peek(addr)
            if lv == level:
                if e & 7:
                    return False
                size = lv.page_size
                self.write(addr, ept_leaf(hpa & ~(size - 1) & self.fmask, lv, perms & EPT_RWX, memtype & 7))
                self.ept_entries.append(addr)
                if gt:
                    self.gt_leaves.append(addr)
                return True
            if e & 7:
                if lv != Level.PML4E and e & EPT_LEAF:
                    return False
                table = e & self.fmask
            else:
                t = self.alloc.frame()
                self.write(addr, ept_table(t))
                self.ept_entries.append(addr)
                table = t
        raise AssertionError

    def ept_resolve(self, gpa: int) -> int | None:
        """The HPA the EPT tables (as built, permissions ignored) map ``gpa`` to."""
        table = self.eptp.pml4_pa
        for lv in LEVELS:
            e = self.peek(table + gpa_index(gpa, lv) * 8)
            if not e & 7:
                return None
            if lv == Level.PTE or (lv != Level.PML4E and e & EPT_LEAF):
                size = lv.page_size
                return (e & self.fmask & ~(size - 1)) | (gpa & (size - 1))
            table = e & self.fmask
        raise AssertionError

    # -- guest tables -----------------------------------------------------------------
    def guest_table(self) -> int:
        """A new guest table page (GPA), EPT-mapped (4K leaves: one per page)."""
        limit = 512 if self._gt_level == Level.PTE else self._gt_level.page_size // 4096
        if self._gt_next >= limit:
            raise _Full
        gpa = self.gt_base + self._gt_next * 4096
        self._gt_next += 1
        if self._gt_level == Level.PTE:
            self.ept_map(gpa, Level.PTE, self.alloc.frame(), EPT_RWX, gt=True)
        return gpa

    def gwrite(self, gpa: int, value: int, level: Level, la: int) -> None:
        hpa = self.ept_resolve(gpa)
        self.write(hpa, value)
        if not any(g.hpa == hpa for g in self.guest_entries):
            self.guest_entries.append(GuestEntry(hpa, level, la))

    def gpeek(self, gpa: int) -> int:
        return self.peek(self.ept_resolve(gpa))

    def _flags(self, leaf: bool) -> dict:
        r = self.rng
        d = dict(rw=r.random() < 0.85, user=r.random() < 0.85, xd=r.random() < 0.1,
                 accessed=r.random() < 0.5)
        if leaf:
            d["dirty"] = r.random() < 0.3
        else:
            d.update(rw=r.random() < 0.97, user=r.random() < 0.97, xd=r.random() < 0.03)
        return d

    def map_la(self, la: int, size: Level, data_gpa: int, *, ept_level: Level | None = None,
               perms: int | None = None, memtype: int | None = None) -> int | None:
        """Guest mapping ``la`` -> ``data_gpa`` with a leaf of ``size``; the data page
        EPT-mapped at ``ept_level``.  Returns the LA to access (None: could not map)."""
        r = self.rng
        off = r.randrange(0, size.page_size, 4096) | r.randrange(0, 4096, 8)
        gpa = data_gpa + off
        if self.regs.paging:
            table = self.root
            for lv in LEVELS:
                addr = table + la_index(la, lv) * 8
                e = self.gpeek(addr)
                if lv == size:
                    if not e & PG_P:
                        self.gwrite(addr, make_leaf_entry(data_gpa, lv, **self._flags(True)), lv, la)
                    else:
                        gpa = None
                    break
                if not e & PG_P:
                    try:
                        e = make_table_entry(self.guest_table(), **self._flags(False))
                    except _Full:
                        return None
                    self.gwrite(addr, e, lv, la)
                elif lv != Level.PML4E and e & PG_PS:
                    gpa = None       # a larger leaf is there already: use it
                    break
                table = e & _GFRAME
            if gpa is None:
                self.las.append(la + off)
                return la + off
        el = ept_level or _pick(r, [(0.5, Level.PTE), (0.3, Level.PDE), (0.2, Level.PDPTE)])
        if perms is None:
            perms = EPT_RWX if r.random() < 0.7 else r.randrange(8)
        if memtype is None:
            memtype = _pick(r, [(0.85, 6), (0.05, 0), (0.05, 4), (0.05, r.choice([2, 3, 7]))])
        hpa = r.randrange(0, 1 << self.config.maxphyaddr) & ~(el.page_size - 1)
        self.ept_map(gpa, el, hpa, perms, memtype)
        target = la + off if self.regs.paging else gpa
        self.las.append(target)
        return target

    def make_alt_root(self) -> None:
        """A second PML4 with the same entries (a second address space sharing the tables)."""
        try:
            alt = self.guest_table()
        except _Full:
            return
        for i in range(512):
            e = self.gpeek(self.root + i * 8)
            if e:
                self.gwrite(alt + i * 8, e, Level.PML4E, _canonical(i << 39))
        self.alt_root = alt


class _Full(Exception):
    """The guest-table region is full."""


def build_world(memory, alloc, rng, config, *, sweep=None, vpid=1) -> NestedWorld:
    """A random world (or, with ``sweep`` = (level, leaf, bit, nxe), one LA whose
    entry at ``level`` has that reserved bit set and is otherwise valid)."""
    r = rng
    if sweep is not None:
        level, leaf, bit, nxe = sweep
        w = NestedWorld(memory, alloc, r, config, ad=r.random() < 0.5, paging=True, wp=r.random() < 0.5,
                        nxe=nxe, vpid=vpid)
        size = level if leaf else r.choice([s for s in SIZES if s.value < level.value])
        la = _canonical(r.getrandbits(48)) & ~(size.page_size - 1)
        data = r.randrange(1 << 32, 1 << 40) & ~(size.page_size - 1)
        w.map_la(la, size, data, perms=EPT_RWX, memtype=6)
        g = next(g for g in w.guest_entries if g.level == level)
        w.write(g.hpa, w.peek(g.hpa) | (1 << bit))
        return w
    paging = r.random() < 0.88
    w = NestedWorld(memory, alloc, r, config, ad=r.random() < 0.5, paging=paging, wp=r.random() < 0.6,
                    nxe=r.random() < 0.7, vpid=vpid)
    prev: list[tuple[int, Level]] = []
    for _ in range(r.randrange(2, 7)):
        size = _pick(r, [(0.5, Level.PTE), (0.3, Level.PDE), (0.2, Level.PDPTE)])
        if prev and r.random() < 0.4:        # a neighbour: same guest page, or same table
            la0, s0 = r.choice(prev)
            la = (la0 & ~(s0.page_size - 1)) + r.randrange(0, 512) * size.page_size
            la &= (1 << 48) - 1
            la = _canonical(la & ~(size.page_size - 1))
        else:
            la = _canonical(r.getrandbits(48) & ~(size.page_size - 1))
        data = r.randrange(0, 1 << min(config.maxphyaddr, 40)) & ~(size.page_size - 1)
        if not paging:
            data &= (1 << 48) - 1
        if w.map_la(la, size, data) is not None:
            prev.append((la, size))
    if paging and r.random() < 0.4:
        w.make_alt_root()
    # hostile tweaks: a guest entry not present or with a reserved bit, an EPT leaf of a table page
    for _ in range(r.choice([0, 0, 1, 1, 2])):
        if w.guest_entries and r.random() < 0.6:
            g = r.choice(w.guest_entries)
            w.write(g.hpa, _guest_tweak(r, w.peek(g.hpa), g.level, config.maxphyaddr, w.regs.nxe))
        elif w.gt_leaves:
            a = r.choice(w.gt_leaves)
            w.write(a, w.peek(a) & ~r.choice([EPT_W, EPT_R | EPT_W, EPT_RWX]) if r.random() < 0.8
                    else (w.peek(a) & ~EPT_RWX) | EPT_W)           # W without R: misconfigured
    return w


def _guest_tweak(r: random.Random, e: int, level: Level, mpa: int, nxe: bool) -> int:
    leaf = level == Level.PTE or (level != Level.PML4E and e & PG_PS)
    how = r.choice(["p", "rw", "us", "xd", "a", "d", "ps", "rsvd", "frame"])
    if how == "p":
        return e ^ PG_P
    if how == "rw":
        return e ^ PG_RW
    if how == "us":
        return e ^ PG_US
    if how == "xd":
        return e ^ PG_XD
    if how == "a":
        return e ^ PG_A
    if how == "d":
        return e ^ PG_D
    if how == "ps" and level in (Level.PDPTE, Level.PDE):
        return e ^ PG_PS
    if how == "rsvd":
        mask = guest_reserved_mask(level, bool(leaf), mpa, nxe)
        bits = [b for b in range(64) if mask >> b & 1]
        return e | (1 << r.choice(bits))
    return e ^ (1 << r.randrange(12, mpa))


def _ept_tweak(r: random.Random, e: int, mpa: int) -> int:
    how = r.choice(["r", "w", "x", "a", "d", "leaf", "memtype", "frame", "clear"])
    if how == "r":
        return e ^ EPT_R
    if how == "w":
        return e ^ EPT_W
    if how == "x":
        return e ^ EPT_X
    if how == "a":
        return e ^ EPT_A
    if how == "d":
        return e ^ EPT_D
    if how == "leaf":
        return e ^ EPT_LEAF
    if how == "memtype":
        return e ^ (r.randrange(1, 8) << 3)
    if how == "frame":
        return e ^ (1 << r.randrange(12, mpa))
    return e & ~EPT_RWX


# -- the campaign -------------------------------------------------------------------------

@dataclass
class _Case:
    index: int
    world: NestedWorld
    eptp: int
    guest: GuestRegs
    dram: object
    initial_words: dict
    ops: list = field(default_factory=list)


class NestedFuzzer:
    """The nested campaign for :func:`sim.verify.fuzz.run_fuzz` (``opts.nested``)."""

    def __init__(self, opts, report, dram_for, dram_flags, progress=None):
        self.opts = opts
        self.report = report
        self.dram_for = dram_for          # (rng, round_no) -> DramConfig
        self.dram_flags = dram_flags      # (DramConfig, opts) -> the replay options that rebuild it
        self.progress = progress or (lambda line: None)
        self.config = EptConfig()
        self.sweep = guest_sweep_cases(self.config.maxphyaddr)
        self.case_no = 0
        self.unsynced = opts.unsynced

    def run(self):
        o, rep = self.opts, self.report
        round_no = 0
        while rep.walks < o.walks:
            self._round(round_no)
            round_no += 1
            self.progress(f"  round {round_no}: {rep.walks}/{o.walks} walks, {rep.cases} cases, "
                          f"{rep.mismatches} mismatches")
        return rep

    def _round(self, round_no: int) -> None:
        o, rep = self.opts, self.report
        rng = random.Random(o.seed * 1_000_003 + round_no + 0x4E57)
        memory = PhysicalMemory(self.config.maxphyaddr)
        dram = self.dram_for(rng, round_no)
        backend = make_backend(o.backend, memory, self.config, dram=dram, seed=rng.getrandbits(16),
                               watchdog=o.watchdog, unit=dict(o.unit), nested=True)
        rep.rounds += 1
        # every walker store: an A/D CAS on an entry the host wrote, only setting A/D
        host_words: set[int] = set()
        bad: list[str] = []
        ad = PG_A | PG_D | EPT_A | EPT_D

        def on_store(addr, old, new, source):
            if source != "walker":
                host_words.add(addr)
            elif addr not in host_words:
                bad.append(f"walker stored {new:#x} at {addr:#x}, an entry no table holds")
            elif (old ^ new) & ~ad or old & ~new:
                bad.append(f"walker changed {old:#x} -> {new:#x} at {addr:#x} (only A/D may be set)")
        memory.observe(on_store)
        self._bad_stores = bad
        alloc = _Alloc(0x100_0000)
        vpids = []
        try:
            for _ in range(o.cases_per_round):
                if rep.walks >= o.walks:
                    break
                vpid = rng.choice(vpids) if vpids and rng.random() < 0.4 else rng.randrange(1, 1 << 16)
                vpids.append(vpid)
                self._case(backend, memory, rng, alloc, dram, vpid)
        except HangError:
            pass            # reported; the unit is wedged: the next round starts afresh
        finally:
            backend.close()
            rep.faults_injected += backend.dram.errors
            rep.stall_cycles += backend.dram.stall_cycles
        if bad:
            rep.corruptions += len(bad)
            rep.mismatches += len(bad)
            rep.reports += bad[:5]

    def _case(self, backend, memory, rng, alloc, dram, vpid) -> None:
        o, rep = self.opts, self.report
        k = self.case_no
        self.case_no += 1
        crng = random.Random(rng.getrandbits(64))
        sweep = self.sweep[k // 2] if k % 2 == 0 and k // 2 < len(self.sweep) else None
        w = build_world(memory, alloc, crng, self.config, sweep=sweep, vpid=vpid)
        if sweep is not None:
            rep.sweep_cases += 1
        if not w.las:
            return
        rep.cases += 1
        if o.faults and dram.error_probability and w.words:
            backend.dram.config.error_addrs = frozenset(crng.sample(sorted(w.words), k=min(2, len(w.words))))
        case = _Case(k, w, w.eptp.encode(), w.regs, dram, dict(memory.nonzero_words()))
        backend.load_eptp(case.eptp)
        backend.invept("single")          # a fresh EP4TA: its windows open now
        backend.load_guest(w.regs)
        rep.guests += 1
        rep.paging_off += not w.regs.paging
        n = 2 if sweep is not None else crng.randrange(6, 30)
        for _ in range(n):
            if rep.walks >= o.walks:
                break
            if self._op(backend, crng, case):
                break

    # -- one op -----------------------------------------------------------------------
    def _op(self, backend, r, case) -> bool:
        """Run one random op; True when a mismatch ended the case."""
        w, rep = case.world, self.report
        x = r.random()
        if x < 0.12 and w.guest_entries and w.regs.paging:
            g = r.choice(w.guest_entries)
            old = w.peek(g.hpa)
            new = _guest_tweak(r, old, g.level, self.config.maxphyaddr, w.regs.nxe)
            self._write(backend, case, g.hpa, new)
            rep.guest_writes += 1
            if r.random() >= self.unsynced:
                self._sync_guest(backend, r, case, g, old, new)
            else:
                rep.unsynced_writes += 1
            return False
        if x < 0.20 and w.ept_entries:
            a = r.choice(w.gt_leaves) if w.gt_leaves and r.random() < 0.4 else r.choice(w.ept_entries)
            self._write(backend, case, a, _ept_tweak(r, w.peek(a), self.config.maxphyaddr))
            rep.host_writes += 1
            if r.random() >= self.unsynced:
                self._invept(backend, case, r.choice(["single", "single", "global"]))
            else:
                rep.unsynced_writes += 1
            return False
        if x < 0.25:
            kind = r.choice(["address", "single", "all"])
            self._invvpid(backend, case, kind, r.choice(w.las) ^ r.randrange(0, 1 << 21, 4096)
                          if w.regs.paging else r.choice(w.las))
            return False
        if x < 0.28:
            self._invept(backend, case, r.choice(["single", "global"]))
            return False
        if x < 0.32 and w.regs.paging:
            self._set_cr3(backend, case, r.choice([w.root, w.alt_root or w.root]))
            return False
        n = 1 if r.random() < 0.8 else r.randrange(2, 5)
        n = min(n, self.opts.walks - rep.walks)        # exactly the walks asked for, never more
        reqs = []
        for _ in range(n):
            la = r.choice(w.las)
            if r.random() < 0.3:
                la = la & ~0xFFF | r.randrange(0, 4096)
            access, user = r.choice(list(Access)), r.random() < 0.4
            if r.random() < 0.5:
                # most random accesses fault: half the time ask for one the tables allow
                ok = [(a, u) for a in Access for u in (False, True)
                      if self._model(backend, case, la, a, u).outcome is LaOutcome.OK]
                access, user = r.choice(ok) if ok else (access, user)
            reqs.append((la, access, user))
        return self._translate(backend, case, reqs)

    def _model(self, backend, case, la, access, user):
        """The model's answer in the memory as it is now (nothing written)."""
        view = _ReadOnly(backend.memory)
        return translate_la(view, case.world.eptp, backend.guest, la, access, user, self.config,
                            ept_memory=view)

    def _write(self, backend, case, addr, value):
        backend.write(addr, value)
        case.world.words[addr] = value
        case.ops.append({"op": "write", "addr": hex(addr), "value": hex(value)})

    def _invept(self, backend, case, kind):
        backend.invept(kind)
        case.ops.append({"op": "invept", "kind": kind})
        self.report.invepts += 1

    def _invvpid(self, backend, case, kind, la):
        backend.invvpid(kind, la if kind == "address" else None)
        op = {"op": "invvpid", "kind": kind}
        if kind == "address":
            op["la"] = hex(la)
        case.ops.append(op)
        self.report.invvpids[kind] = self.report.invvpids.get(kind, 0) + 1

    def _set_cr3(self, backend, case, cr3):
        backend.set_cr3(cr3)
        case.ops.append({"op": "set_cr3", "cr3": hex(cr3)})
        self.report.cr3_loads += 1

    def _sync_guest(self, backend, r, case, g: GuestEntry, old: int, new: int) -> None:
        """The invalidation a guest-entry change needs (docs/nested.md, caching)."""
        def leafish(e):
            return not e & PG_P or g.level == Level.PTE or (g.level != Level.PML4E and e & PG_PS)
        if leafish(old) and leafish(new) and r.random() < 0.7:
            size = g.level.page_size
            la = (g.la & ~(size - 1)) | r.randrange(0, size, 4096)      # any LA of the page
            self._invvpid(backend, case, "address", _canonical(la & ((1 << 48) - 1)))
        else:
            how = r.choice(["single", "all", "cr3"])
            if how == "cr3":
                self._set_cr3(backend, case, backend.guest.cr3)
            else:
                self._invvpid(backend, case, how, None)

    def _translate(self, backend, case, reqs) -> bool:
        o, rep = self.opts, self.report
        h, sb = backend.harness, backend.la_scoreboard
        failed, corrupt, stores = sb.failed, len(backend.dram.corruptions), len(self._bad_stores)
        for la, access, user in reqs:
            case.ops.append({"op": "translate_la", "la": hex(la), "access": access.name.lower(), "user": user})
        tickets = [h.submit_la(la, access, user) for la, access, user in reqs]
        try:
            h.run_until(lambda: all(t.done for t in tickets), o.watchdog * len(tickets),
                        f"linear responses for {len(tickets)} requests")
        except HangError as e:
            rep.hangs += 1
            self._mismatch(case, f"hang: {e}")
            raise
        for t in tickets:
            sb.check(t)
            backend._count_ticket()
            rep.walks += 1
            name = "refused" if t.refused else "bus_error" if t.bus_error else t.outcome.value
            rep.outcomes[name] = rep.outcomes.get(name, 0) + 1
        rep.bursts += len(tickets) > 1
        if sb.failed > failed or len(backend.dram.corruptions) > corrupt or len(self._bad_stores) > stores:
            msgs = sb.mismatches[failed:] + backend.dram.corruptions[corrupt:] + self._bad_stores[stores:]
            del self._bad_stores[stores:]          # counted here, not again at the round's end
            self._mismatch(case, msgs[0] if msgs else "mismatch")
            return True
        return False

    # -- reproducers ----------------------------------------------------------------------
    def _mismatch(self, case: _Case, message: str) -> None:
        rep = self.report
        rep.mismatches += 1
        if len(rep.reports) < 20:
            rep.reports.append(f"case {case.index}: {message}")
        if len(rep.reproducers) >= 5 or not self.opts.shrink:
            return
        rep.reproducers.append(self._write_reproducer(case))

    def _scenario(self, case: _Case, ops: list, words: dict) -> dict:
        g = case.guest
        return {"eptp": hex(case.eptp),
                "config": {"maxphyaddr": self.config.maxphyaddr, "execute_only": self.config.execute_only},
                "guest": {"cr3": hex(g.cr3), "paging": g.paging, "wp": g.wp, "nxe": g.nxe, "vpid": g.vpid},
                "memory": [{"addr": hex(a), "value": hex(v)} for a, v in sorted(words.items()) if v],
                "ops": ops}

    def _write_reproducer(self, case: _Case) -> dict:
        deadline = time.monotonic() + self.opts.shrink_seconds
        words = case.initial_words
        ops = list(case.ops)
        # drop the ops after the last translate_la (the failing one)
        last = max(i for i, op in enumerate(ops) if op["op"] == "translate_la")
        ops = ops[:last + 1]
        kw = dict(dram=case.dram, seed=case.dram.seed, unit=dict(self.opts.unit))
        tries = 0

        def fails(o, wd):
            nonlocal tries
            tries += 1
            return _replay_fails(self._scenario(case, o, wd), self.opts.backend, kw)

        reproduces = fails(ops, words)
        if reproduces:
            # chunks of the ops before the failing translation, halves first (ddmin)
            head, tail = ops[:-1], ops[-1:]
            chunk = max(1, len(head) // 2)
            while head and time.monotonic() < deadline:
                i, removed = 0, False
                while i < len(head) and time.monotonic() < deadline:
                    cand = head[:i] + head[i + chunk:]
                    if fails(cand + tail, words):
                        head, removed = cand, True
                    else:
                        i += chunk
                if chunk == 1 and not removed:
                    break
                chunk = max(1, chunk // 2) if not removed or chunk > 1 else 1
            ops = head + tail
            # memory words the model's walks never read nor the ops wrote
            needed = _words_read(case, ops, words, self.config)
            cand = {a: v for a, v in words.items() if a in needed}
            if len(cand) < len(words) and time.monotonic() < deadline and fails(ops, cand):
                words = cand
        path = Path(self.opts.out) / f"repro-nested-seed{self.opts.seed}-case{case.index}.json"
        write_json(path, self._scenario(case, ops, words), indent=1)
        flags = self.dram_flags(case.dram, self.opts)
        return {"scenario": str(path), "reproduces": reproduces, "ops": len(ops), "words": len(words),
                "replays": tries, "command": f"python -m sim replay {path} --backend {self.opts.backend}{flags}"}


class _ReadOnly:
    """Memory as the model sees it, its compare-and-swaps absorbed."""

    def __init__(self, memory: PhysicalMemory):
        self.memory = memory

    def __call__(self, addr: int) -> int:
        return self.memory.peek(addr)

    def read(self, addr: int) -> int:
        return self.memory.peek(addr)

    def cas(self, addr: int, expected: int, new: int, source: str = "walker") -> tuple[bool, int]:
        return True, expected


def _words_read(case: _Case, ops: list, words: dict, config: EptConfig) -> set[int]:
    """The words the golden model reads or the ops write, running ``ops`` from ``words``."""
    memory = PhysicalMemory(config.maxphyaddr)
    for a, v in words.items():
        memory.write(a, v, source="init")
    eptp = Eptp.decode(case.eptp, config)
    regs = case.guest
    needed: set[int] = set()
    for op in ops:
        if op["op"] == "write":
            memory.write(int(op["addr"], 16), int(op["value"], 16))
            needed.add(int(op["addr"], 16))
        elif op["op"] == "set_cr3":
            regs = regs.with_cr3(int(op["cr3"], 16))
        elif op["op"] == "translate_la":
            t = translate_la(memory, eptp, regs, int(op["la"], 16), Access[op["access"].upper()],
                             op["user"], config)
            for s in t.guest_steps:
                needed.update(x.addr for x in s.ept.steps)
                if s.hpa is not None:
                    needed.add(s.hpa)
            for x in t.ept_translations:
                needed.update(st.addr for st in x.steps)
    return needed


def _replay_fails(scenario: dict, backend: str, kw: dict) -> bool:
    """Does replaying ``scenario`` alone on a fresh unit give a mismatch?"""
    from sim.verify.replay import replay
    from sim.cosim.scenario import parse_scenario
    with open(os.devnull, "w") as sink:
        try:
            result = replay(parse_scenario(scenario), backend, out=sink, **kw)
        except HangError:
            return True
    return bool(result.mismatches)


def run_nested_fuzz(opts, report, dram_for, dram_flags, progress=None):
    """Run the nested campaign of ``opts`` (a :class:`sim.verify.fuzz.FuzzOptions`) into ``report``."""
    return NestedFuzzer(opts, report, dram_for, dram_flags, progress).run()
