"""The pageable guest: the workload the seed commit exists for.

A guest touches a working set larger than the frames its host gives it.  An
EPT violation makes the host fault the page in with ``pmap_enter``; when no
frame is free, a page daemon runs the clock algorithm over the guest's frames
using the accessed bits the walker set (``pmap_is_referenced`` /
``pmap_clear_reference``), writes back pages whose dirty bit is set
(``pmap_clear_modify``) and unmaps victims with ``pmap_page_protect(NONE)``,
which shoots the translation down (INVEPT) through the pmap's callback.

Guest data really lives in the simulated DRAM: every guest store writes a
unique word at the translated HPA, and every load checks that the word at the
translated HPA is the last one stored to that GPA, across page-outs and
page-ins.  A wrong translation therefore shows up as a data mismatch, besides
the direct check of each translation against the pmap.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from model.formats import Access, EptConfig, PAGE_SIZE
from model.physmem import FrameAllocator, PhysicalMemory
from model.pmap import (
    PMAP_CANFAIL, VM_PROT_EXECUTE, VM_PROT_NONE, VM_PROT_READ, VM_PROT_WRITE,
    PageDB, Pmap, Shootdown,
)

__all__ = ["WorkloadOptions", "GuestLayout", "Guest", "Host", "HostAgent"]

# the pmap_enter access flag of each guest access (sets A, and D for a write)
ACCESS_PROT = {Access.READ: VM_PROT_READ, Access.WRITE: VM_PROT_WRITE, Access.FETCH: VM_PROT_EXECUTE}
PTP_POOL_BASE = 0x0010_0000
GUEST_FRAMES_BASE = 0x1_0000_0000


@dataclass
class WorkloadOptions:
    accesses: int = 4000
    seed: int = 1
    guest_pages: int = 256         # the guest's working set, in 4K pages
    host_frames: int = 96          # frames the host lends the guest
    mix: tuple[float, float, float] = (0.6, 0.3, 0.1)   # read, write, fetch
    locality: float = 0.8          # share of accesses that go to the hot set
    hot_pages: int = 24
    sequential: float = 0.15       # chance the next access is the next page
    phase: int = 4000              # accesses before the hot set moves
    ad: bool = True                # EPTP bit 6
    ptp_frames: int = 4096
    race_rate: float = 0.02        # chance per cycle (rtl) / per access (model) of a racing pmap op

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)
        need(self.accesses > 0, f"accesses must be positive, not {self.accesses}")
        need(self.guest_pages >= 16, f"guest-pages must be at least 16, not {self.guest_pages}")
        need(self.host_frames >= 4, f"host-frames must be at least 4, not {self.host_frames}")
        need(len(self.mix) == 3 and all(m >= 0 for m in self.mix) and sum(self.mix) > 0,
             f"mix must be three non-negative weights read,write,fetch, not {self.mix}")
        need(0 <= self.locality <= 1, f"locality must be in 0..1, not {self.locality}")
        need(0 <= self.sequential <= 1, f"sequential must be in 0..1, not {self.sequential}")
        need(1 <= self.hot_pages <= self.guest_pages,
             f"hot-pages must be in 1..guest-pages, not {self.hot_pages}")
        need(self.phase > 0, f"phase must be positive, not {self.phase}")
        need(0 <= self.race_rate <= 1, f"race-rate must be in 0..1, not {self.race_rate}")


@dataclass(frozen=True)
class Region:
    base: int
    pages: int
    prot: int

    def page(self, i: int) -> int:
        return self.base + i * PAGE_SIZE


class GuestLayout:
    """Guest-physical regions: code (R+X) and two data regions (R+W).

    The data regions straddle a 1G boundary and sit under a second PML4 entry,
    so walks exercise every level of the tables.
    """

    def __init__(self, guest_pages: int):
        code = max(guest_pages // 8, 1)
        low = (guest_pages - code) // 2
        high = guest_pages - code - low
        self.regions = [
            Region(0x0000_0040_0000, code, VM_PROT_READ | VM_PROT_EXECUTE),
            Region(0x0000_4000_0000 - (low // 2) * PAGE_SIZE, low, VM_PROT_READ | VM_PROT_WRITE),
            Region(0x0080_0000_0000, high, VM_PROT_READ | VM_PROT_WRITE),
        ]
        self.pages = [r.page(i) for r in self.regions for i in range(r.pages)]
        self._prot = {p: r.prot for r in self.regions for p in (r.page(i) for i in range(r.pages))}
        self.code_pages = [p for p in self.pages if self._prot[p] & VM_PROT_EXECUTE]
        self.data_pages = [p for p in self.pages if self._prot[p] & VM_PROT_WRITE]

    def prot(self, gpa: int) -> int:
        return self._prot.get(gpa & ~(PAGE_SIZE - 1), VM_PROT_NONE)


_ACCESSES = (Access.READ, Access.WRITE, Access.FETCH)


class Guest:
    """The access stream: a drifting hot set, sequential runs and uniform noise.

    Reads and writes go to data pages, fetches to code pages, so every access
    is one the guest's own mappings permit.
    """

    def __init__(self, layout: GuestLayout, opts: WorkloadOptions):
        self.layout = layout
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.count = 0
        self._mix = self._cum_mix = None
        self._hot: dict[bool, list[int]] = {}
        self._last: dict[bool, int] = {}     # code? -> index of the last page in its pool
        self._move_hot_set()
        self.stored: dict[int, int] = {}   # GPA word -> last value the guest stored
        self._next_value = 1

    def _move_hot_set(self) -> None:
        for code in (True, False):
            pool = self.layout.code_pages if code else self.layout.data_pages
            n = max(1, min(len(pool), round(self.opts.hot_pages * len(pool) / len(self.layout.pages))))
            start = self.rng.randrange(len(pool))
            self._hot[code] = [(start + i) % len(pool) for i in range(n)]

    def next(self) -> tuple[int, Access]:
        o = self.opts
        if self.count and self.count % o.phase == 0:
            self._move_hot_set()
        self.count += 1
        if self._mix is not o.mix:        # choices(weights=w) is choices(cum_weights=accumulate(w))
            self._mix, self._cum_mix = o.mix, list(accumulate(o.mix))
        access = self.rng.choices(_ACCESSES, cum_weights=self._cum_mix)[0]
        code = access is Access.FETCH
        pool = self.layout.code_pages if code else self.layout.data_pages
        r = self.rng.random()
        if r < o.sequential and code in self._last:
            i = (self._last[code] + 1) % len(pool)
        elif r < o.sequential + (1 - o.sequential) * o.locality:
            i = self.rng.choice(self._hot[code])
        else:
            i = self.rng.randrange(len(pool))
        self._last[code] = i
        page = pool[i]
        return page | (self.rng.randrange(PAGE_SIZE // 8) * 8), access

    def store_value(self, gpa: int) -> int:
        v = (gpa << 16 | self._next_value) & ((1 << 64) - 1)
        self._next_value += 1
        self.stored[gpa & ~7] = v
        return v

    def expected(self, gpa: int) -> int:
        return self.stored.get(gpa & ~7, 0)


@dataclass
class HostStats:
    faults: int = 0
    evictions: int = 0
    writebacks: int = 0
    swapins: int = 0
    clock_scans: int = 0
    second_chances: int = 0
    shootdowns: int = 0


class Host:
    """The hypervisor: an EPT pmap over the DRAM, a frame pool and a page daemon.

    ``invept`` is called for every pmap shootdown; the cosimulation wires it
    to the unit's INVEPT input.
    """

    def __init__(self, memory: PhysicalMemory, layout: GuestLayout, opts: WorkloadOptions,
                 invept=None):
        self.memory = memory
        self.layout = layout
        self.opts = opts
        self.ptp_frames = FrameAllocator(memory, PTP_POOL_BASE, opts.ptp_frames)
        self.frames = FrameAllocator(memory, GUEST_FRAMES_BASE, opts.host_frames)
        self.pages = PageDB(self.frames)
        self.invept = invept
        self.pmap = Pmap(memory, self.ptp_frames, self.pages, tlb_flush=self._shootdown)
        self.pmap.ept_transform(has_ad=opts.ad)
        self.eptp = self.pmap.eptp(config=EptConfig(memory.maxphyaddr))   # A/D as has_ad
        self.stats = HostStats()
        self.resident: dict[int, int] = {}     # GPA page -> frame
        self.owner: dict[int, int] = {}        # frame -> GPA page
        self.clock: list[int] = []             # frames in clock order
        self.hand = 0
        self.swap: dict[int, np.ndarray] = {}  # GPA page -> contents written back

    def _shootdown(self, pmap: Pmap, va: int, why: Shootdown) -> None:
        self.stats.shootdowns += 1
        if self.invept is not None:
            self.invept("single", self.eptp)

    def fault(self, gpa: int, access: Access) -> None:
        """Handle an EPT violation: page the GPA in and map it for ``access``."""
        page = gpa & ~(PAGE_SIZE - 1)
        prot = self.layout.prot(page)
        if prot == VM_PROT_NONE or not prot & (1 << int(access)):
            raise RuntimeError(f"guest access {access.name} to {gpa:#x} outside its layout")
        self.stats.faults += 1
        frame = self.page_in(page)
        err = self.pmap.enter(page, frame, prot, ACCESS_PROT[access] | PMAP_CANFAIL)
        if err:
            raise RuntimeError(f"pmap_enter failed ({err}): out of page-table pages")
        self.pmap.update()      # uvm_fault: pmap_update after pmap_enter (frees pm_gc_ptp)

    def page_in(self, page: int) -> int:
        """The frame holding guest page ``page``: resident, or allocated (the page
        daemon runs when none is free) and filled from swap."""
        frame = self.resident.get(page)
        if frame is None:
            if not self.frames.free_frames:
                self.page_daemon()
            frame = self.frames.alloc(zero=True)
            saved = self.swap.get(page)
            if saved is not None:
                self.stats.swapins += 1
                for i in np.flatnonzero(saved).tolist():
                    self.memory.write(frame + 8 * i, saved.item(i), source="host")
            self.resident[page] = frame
            self.owner[frame] = page
            self.clock.append(frame)
        return frame

    def remap(self, page: int, access: Access) -> int:
        """Map a resident page to a new frame in place (pmap_enter over the old
        mapping, which removes it and shoots it down); returns the new frame."""
        if not self.frames.free_frames:
            self.page_daemon()
        if page not in self.resident:        # the daemon evicted it: a fault maps a new frame
            self.fault(page, access)
            return self.resident[page]
        old = self.resident[page]
        new = self.frames.alloc(zero=True)
        err = self.pmap.enter(page, new, self.layout.prot(page), ACCESS_PROT[access] | PMAP_CANFAIL)
        if err:
            raise RuntimeError(f"pmap_enter failed ({err}): out of page-table pages")
        self.pmap.update()
        self.resident[page] = new
        self.owner.pop(old)
        self.owner[new] = page
        self.clock[self.clock.index(old)] = new
        self.frames.free(old)
        return new

    def page_daemon(self, target: int | None = None) -> None:
        """Free frames with the clock algorithm until ``target`` are free."""
        target = target or max(1, self.opts.host_frames // 16)
        chances = 0      # second chances since the last eviction
        while self.frames.free_frames < target and self.clock:
            self.hand %= len(self.clock)
            frame = self.clock[self.hand]
            self.stats.clock_scans += 1
            # without EPT A/D every page reads as referenced: after a whole
            # revolution of second chances the hand evicts regardless
            if chances < len(self.clock) and self.pages.is_referenced(frame):
                chances += 1
                self.pages.clear_reference(frame)
                self.stats.second_chances += 1
                self.hand += 1
                continue
            self.evict(frame)
            chances = 0

    def save(self, page: int, frame: int) -> None:
        """Write a dirty page back to swap."""
        self.swap[page] = self.memory.read_frame(frame)
        self.stats.writebacks += 1

    def evict(self, frame: int) -> None:
        page = self.owner.pop(frame)
        self.pages.page_protect(frame, VM_PROT_NONE)
        if self.pages.clear_modify(frame):      # always true without EPT A/D
            self.save(page, frame)
        self.pages.page(frame).attrs = 0       # the freed page starts clean
        del self.resident[page]
        self.clock.remove(frame)
        self.frames.free(frame)
        self.stats.evictions += 1


@dataclass
class AgentStats:
    clear_reference: int = 0
    clear_modify: int = 0
    protect: int = 0
    evict: int = 0


class HostAgent:
    """The host acting on its own: pmap operations aimed at the page being walked.

    On the RTL it runs between cycles while a translation is in flight, so its
    CASes and swaps land between the walker's reads and its A/D CASes: this is
    where lost CAS races come from.  Operations: ``clear_reference`` (as a
    page daemon sweep does), ``clear_modify`` (after a write-back),
    ``protect`` to read-only (as for copy-on-write) and eviction
    (``page_protect(NONE)``).
    """

    OPS = (("clear_reference", 0.55), ("clear_modify", 0.2), ("protect", 0.15), ("evict", 0.1))
    _OP_NAMES = [o for o, _ in OPS]
    _OP_CUM = list(accumulate(w for _, w in OPS))     # what choices(weights=) accumulates

    def __init__(self, host: Host, rate: float, seed: int):
        self.host = host
        self.rate = rate
        self.rng = random.Random(seed ^ 0xA6E27)
        self.stats = AgentStats()
        self.next_cycle: int | None = None     # on the RTL: the next cycle it acts at

    def on_cycle(self, cycle: int, busy: bool, gpa: int) -> int:
        """The cosimulation hook: act at the cycles drawn with the per-cycle
        chance ``rate`` while a translation is in flight (``busy``).

        The gap to the next drawn cycle is drawn once (geometric), so the
        harness calls the agent only at those cycles instead of drawing a
        number every cycle; returns the next cycle it wants to be called.
        """
        if not self.rate:
            return 1 << 62
        if self.next_cycle is None:
            self.next_cycle = cycle + self._gap() - 1
        if cycle >= self.next_cycle:
            if busy:
                self.act(gpa)
            self.next_cycle = cycle + self._gap()
        return self.next_cycle

    def _gap(self) -> int:
        if self.rate >= 1:
            return 1
        return 1 + int(math.log(1.0 - self.rng.random()) / math.log(1.0 - self.rate))

    def maybe_act(self, gpa: int) -> None:
        if self.rate and self.rng.random() < self.rate:
            self.act(gpa)

    def act(self, gpa: int) -> None:
        host = self.host
        page = gpa & ~(PAGE_SIZE - 1)
        frame = host.resident.get(page)
        if frame is None:
            return
        op = self.rng.choices(self._OP_NAMES, cum_weights=self._OP_CUM)[0]
        if op == "clear_reference":
            host.pages.clear_reference(frame)
        elif op == "clear_modify":
            if host.pages.clear_modify(frame):
                host.save(page, frame)
        elif op == "protect":
            host.pmap.protect(page, page + PAGE_SIZE, VM_PROT_READ | (host.layout.prot(page) & VM_PROT_EXECUTE))
        else:
            host.evict(frame)
        setattr(self.stats, op, getattr(self.stats, op) + 1)
