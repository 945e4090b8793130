"""Host and guest pmap operations racing 2D walks (``python -m sim races --nested``).

The nested unit (:class:`hw.nested_top.NestedWalkUnit`) walks a guest's page
tables through EPT; two agents change entries between cycles while a walk
is in flight: the guest OS (its pmap: the guest PTE and PDE) and the host
(the EPT pmap: the EPT leaves mapping the guest page-table page and the data
page).  For each operation, each access kind (read, write, fetch; user
mode), a cold start (VPID and EP4TA flushed) and a warm one (translated
once before), and each cycle offset: submit one linear translation, run the
clock that many cycles, run the operation and queue the invalidation it
needs (guest: INVVPID address, or single for a PDE; host: INVEPT single),
finish the translation, then translate the same address again.  Operations:

- ``guest_clear_a`` / ``guest_clear_d``: the guest clears A (D) in its PTE;
- ``guest_protect``: R/W cleared; ``guest_remove``: P cleared;
  ``guest_remap``: the PTE maps another (EPT-mapped) guest frame;
- ``guest_pde``: the PDE points at another page table (the same PTEs but
  this page's, remapped);
- ``ept_table_move``: the host moves the guest page-table page to a new
  host frame (a copy, this page's PTE remapped) and changes the EPT leaf
  mapping it; ``ept_table_protect``: that EPT leaf made read-only;
- ``ept_data_remap``: the EPT leaf of the data page maps a new host frame;
- ``ept_clear_a``: the host clears EPT A in the leaf mapping the guest
  page-table page (with EPTP[6] = 1; D too).

Checked, beyond the nested scoreboard on every answer:

- one answer per request, nothing left in flight;
- **no A/D resurrection**: a guest (EPT) A or D bit the agent cleared is
  back only through a walker CAS made after the clear, on the cleared
  value (a CAS that met the changed entry fails and the walk restarts;
  ``retries`` counts them);
- **no stale translation after the invalidation**: the translation after
  the operation equals :func:`model.nested.translate_la` on memory as it
  then is, independently of the scoreboard's windows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from model.formats import EPT_A, EPT_D, EPT_W, Access, EptConfig, Level
from model.guest import PG_A, PG_D, PG_P, PG_RW, make_leaf_entry, make_table_entry
from model.nested import translate_la
from model.physmem import PhysicalMemory

from sim.backends.base import make_backend
from sim.verify.fuzz_nested import NestedWorld, _Alloc, _ReadOnly

__all__ = ["NESTED_OPS", "run_nested_races"]

NESTED_OPS = ("guest_clear_a", "guest_clear_d", "guest_protect", "guest_remove", "guest_remap", "guest_pde",
              "ept_table_move", "ept_table_protect", "ept_data_remap", "ept_clear_a")

LA_BASE = 0x0000_7F12_3440_0000          # 2M-aligned: the pages share one guest page table
DATA_GPA = 0x1_0000_0000
SPARE_GPA = 0x1_4000_0000                # remap targets
PAGES = 16


class _World:
    """A guest with ``PAGES`` 4K pages under one PT, every guest table page EPT-mapped
    with its own 4K leaf, the data pages with 4K EPT leaves."""

    def __init__(self, opts):
        self.memory = PhysicalMemory()
        self.config = EptConfig(self.memory.maxphyaddr)
        self.backend = make_backend(opts.backend, self.memory, self.config, watchdog=opts.watchdog,
                                    unit=dict(opts.unit), nested=True)
        self.harness = self.backend.harness
        self.alloc = _Alloc(0x100_0000)
        w = self.w = NestedWorld(self.memory, self.alloc, random.Random(7), self.config, ad=opts.ad,
                                 gt_level=Level.PTE)
        self.pt_gpa = None
        for k in range(PAGES):
            la = LA_BASE + k * 4096
            table = w.root
            for lv in (Level.PML4E, Level.PDPTE, Level.PDE):
                addr = table + ((la >> (12 + 9 * (lv - 1))) & 0x1FF) * 8
                e = w.gpeek(addr)
                if not e & PG_P:
                    e = make_table_entry(w.guest_table())
                    w.gwrite(addr, e, lv, la)
                table = e & 0x000F_FFFF_FFFF_F000
            self.pt_gpa = table
            self.pde_gpa = addr
            w.ept_map(DATA_GPA + k * 4096, Level.PTE, self.alloc.frame())
            w.ept_map(SPARE_GPA + k * 4096, Level.PTE, self.alloc.frame())
        self.pt_hpa = w.ept_resolve(self.pt_gpa)
        self.pt_leaf = self._ept_leaf_addr(self.pt_gpa)
        self.pt_leaf_value = self.memory.peek(self.pt_leaf)
        self.pde_hpa = w.ept_resolve(self.pde_gpa)
        self.pde_value = self.memory.peek(self.pde_hpa)
        self.alt_pt_gpa = w.guest_table()               # guest_pde's other page table
        self.move_hpa = self.alloc.frame()               # ept_table_move's new frame
        self.regs = w.regs
        self.stores: list[tuple[int, int, int, int, str]] = []    # (seq, addr, old, new, source)
        self.memory.observe(self._on_store)
        for k in range(PAGES):
            self.reset_page(k)
        self.backend.load_eptp(w.eptp.encode())
        self.backend.invept("single")
        self.backend.load_guest(self.regs)

    def _on_store(self, addr, old, new, source):
        self.stores.append((self.backend.history.seq, addr, old, new, source))

    def _ept_leaf_addr(self, gpa: int) -> int:
        table = self.w.eptp.pml4_pa
        for lv in (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE):
            addr = table + ((gpa >> (12 + 9 * (lv - 1))) & 0x1FF) * 8
            if lv == Level.PTE:
                return addr
            table = self.memory.peek(addr) & 0x000F_FFFF_FFFF_F000
        raise AssertionError

    def pte_hpa(self, k: int) -> int:
        return self.pt_hpa + (((LA_BASE >> 12) + k) & 0x1FF) * 8

    def data_leaf(self, k: int) -> int:
        return self._ept_leaf_addr(DATA_GPA + k * 4096)

    def pte(self, k: int, gpa: int | None = None, accessed=True, dirty=False) -> int:
        return make_leaf_entry(DATA_GPA + k * 4096 if gpa is None else gpa, Level.PTE, rw=True, user=True,
                               accessed=accessed, dirty=dirty)

    def reset_page(self, k: int) -> None:
        """Page ``k`` as the races start from it (writes only what differs)."""
        b, m = self.backend, self.memory
        want = [(self.pte_hpa(k), self.pte(k, accessed=False), PG_A | PG_D),
                (self.pde_hpa, self.pde_value, PG_A | PG_D), (self.pt_leaf, self.pt_leaf_value, EPT_A | EPT_D)]
        for addr, value, ad in want:
            if (m.peek(addr) ^ value) & ~ad:
                b.write(addr, value)
        leaf = self.data_leaf(k)
        if m.peek(leaf) & ~0xFFF != self._data_frame(k):
            b.write(leaf, (m.peek(leaf) & 0xFFF) | self._data_frame(k))

    def _data_frame(self, k: int) -> int:
        if not hasattr(self, "_frames"):
            self._frames = {}
        if k not in self._frames:
            self._frames[k] = self.memory.peek(self.data_leaf(k)) & ~0xFFF & ((1 << 52) - 1)
        return self._frames[k]


@dataclass
class NestedRaceReport:
    races: int = 0
    translations: int = 0
    by_op: dict = field(default_factory=dict)
    overlapped: int = 0          # races whose operation landed while the walk was in flight
    cas_lost: int = 0            # guest A/D CASes that met a changed entry: the walk restarted
    alternatives: int = 0        # answers the scoreboard accepted from an older state
    failures: list = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)


def run_nested_races(opts, progress=None) -> NestedRaceReport:
    w = _World(opts)
    rep = NestedRaceReport()
    n = 0
    try:
        for op in opts.ops:
            for access in opts.accesses:
                for start in opts.starts:
                    for offset in opts.offsets:
                        n += 1
                        _race(w, rep, op, access, start, offset, n % PAGES)
                if progress:
                    progress(f"  {op} {access.name.lower()}: {rep.races} races, {rep.failed} failures")
    finally:
        w.backend.close()
    rep.alternatives = w.backend.la_scoreboard.alternatives_used
    rep.failures += [f"DRAM: {c}" for c in w.backend.dram.corruptions]
    return rep


def _race(w: _World, rep: NestedRaceReport, op: str, access: Access, start: str, offset: int, k: int) -> None:
    b, h, m = w.backend, w.harness, w.memory
    where = f"{op} {access.name.lower()} {start} +{offset}"
    w.reset_page(k)
    la = LA_BASE + k * 4096
    pte = w.pte_hpa(k)
    # the bits the op clears are set first (by a walk: A, and D for a write)
    if op in ("guest_clear_a", "guest_clear_d", "ept_clear_a"):
        b.write(pte, w.pte(k, accessed=True, dirty=op == "guest_clear_d"))
    b.invept("single")
    b.invvpid("single")
    if start == "warm":
        _check(w, rep, h.translate_la(la, access, True, b.watchdog), where + " (warm-up)")
    t = h.submit_la(la | (offset * 8 % 4096), access, True)
    h.step(offset)
    in_flight = not t.done
    seq_before = b.history.seq
    watched = []                      # (addr, bit, name) the op clears
    if op == "guest_clear_a":
        b.write(pte, m.peek(pte) & ~PG_A)
        b.invvpid("address", la)
        watched.append((pte, PG_A, "guest A"))
    elif op == "guest_clear_d":
        b.write(pte, m.peek(pte) & ~PG_D)
        b.invvpid("address", la)
        watched.append((pte, PG_D, "guest D"))
    elif op == "guest_protect":
        b.write(pte, m.peek(pte) & ~PG_RW)
        b.invvpid("address", la)
    elif op == "guest_remove":
        b.write(pte, m.peek(pte) & ~PG_P)
        b.invvpid("address", la)
    elif op == "guest_remap":
        b.write(pte, w.pte(k, gpa=SPARE_GPA + k * 4096, accessed=False))
        b.invvpid("address", la)
    elif op == "guest_pde":
        # the other page table: the same PTEs, this page's remapped
        alt = w.w.ept_resolve(w.alt_pt_gpa)
        for i in range(512):
            v = m.peek(w.pt_hpa + i * 8)
            if m.peek(alt + i * 8) != v:
                b.write(alt + i * 8, v)
        b.write(alt + (pte - w.pt_hpa), w.pte(k, gpa=SPARE_GPA + k * 4096, accessed=False))
        b.write(w.pde_hpa, (w.pde_value & ~0x000F_FFFF_FFFF_F000) | w.alt_pt_gpa)
        b.invvpid("single")
    elif op == "ept_table_move":
        for i in range(512):
            v = m.peek(w.pt_hpa + i * 8)
            if m.peek(w.move_hpa + i * 8) != v:
                b.write(w.move_hpa + i * 8, v)
        b.write(w.move_hpa + (pte - w.pt_hpa), w.pte(k, gpa=SPARE_GPA + k * 4096, accessed=False))
        b.write(w.pt_leaf, (m.peek(w.pt_leaf) & ~0x000F_FFFF_FFFF_F000) | w.move_hpa)
        b.invept("single")
    elif op == "ept_table_protect":
        b.write(w.pt_leaf, m.peek(w.pt_leaf) & ~EPT_W)
        b.invept("single")
    elif op == "ept_data_remap":
        leaf = w.data_leaf(k)
        b.write(leaf, (m.peek(leaf) & 0xFFF) | w.alloc.frame())
        b.invept("single")
    else:                          # ept_clear_a
        b.write(w.pt_leaf, m.peek(w.pt_leaf) & ~(EPT_A | EPT_D))
        b.invept("single")
        watched += [(w.pt_leaf, EPT_A, "EPT A"), (w.pt_leaf, EPT_D, "EPT D")]
    seq_op = b.history.seq
    h.run_until(lambda: t.done, b.watchdog, f"linear response for LA {t.la:#x} ({where})")
    rep.races += 1
    rep.by_op[op] = rep.by_op.get(op, 0) + 1
    rep.overlapped += in_flight
    _check(w, rep, t, where)
    rep.cas_lost += t.retries
    for addr, bit, name in watched:
        if m.peek(addr) & bit:
            by_walker = [s for s in w.stores if s[0] > seq_before and s[1] == addr and s[4] == "walker"
                         and s[3] & bit and not s[2] & bit]
            host_clear = [s for s in w.stores if seq_before < s[0] <= seq_op and s[1] == addr
                          and s[2] & bit and not s[3] & bit]
            if host_clear and not by_walker:
                rep.failures.append(f"{where}: {name} set again at {addr:#x} without a walker CAS "
                                    f"after the clear")
    # after the invalidation: the unit's answer is the model's on memory as it is now
    view = _ReadOnly(m)
    want = translate_la(view, w.w.eptp, b.guest, la, access, True, w.config, ept_memory=view)
    again = h.translate_la(la, access, True, b.watchdog)
    _check(w, rep, again, where + " (after)")
    if not again.refused and not again.bus_error and again.architectural() != want.architectural():
        from sim.cosim.nested_scoreboard import format_la_result
        rep.failures.append(f"{where}: stale translation after the invalidation: unit "
                            f"{format_la_result(*again.architectural())}, model "
                            f"{format_la_result(*want.architectural())}")
    if h.linear_inflight or h.linear_pending:
        rep.failures.append(f"{where}: {len(h.linear_inflight) + len(h.linear_pending)} linear requests "
                            f"still in flight after the answers")
    del w.stores[:]


def _check(w: _World, rep: NestedRaceReport, t, where: str) -> None:
    rep.translations += 1
    sb = w.backend.la_scoreboard
    before = sb.failed
    if not t.done:
        rep.failures.append(f"{where}: request never answered")
        return
    sb.check(t)
    w.backend._count_ticket()
    if sb.failed > before:
        rep.failures.append(f"{where}: {sb.mismatches[-1] if sb.mismatches else 'scoreboard mismatch'}")
