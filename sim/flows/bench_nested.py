"""``make bench``'s nested figures: the combined TLB and the 2D walk, measured on the RTL.

A pysim testbench drives :class:`~hw.nested_top.NestedWalkUnit` (guest walkers,
combined TLB, guest paging-structure caches over the page-walk unit) with the
bench's DRAM model (:class:`~sim.cosim.dram.Dram`) on its one memory port.
Every cycle count is the distance between the edge that took a linear request
and the edge that took its answer; every reference count is the DRAM model's
(cross-checked against the unit's counters).  The worlds are hand-built:
guest tables at guest-physical addresses that EPT maps elsewhere in host
memory, and each answer is checked against the mapping the world was built
with, so a figure is never that of a wrong translation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amaranth.sim import Simulator

from hw.layouts import Access as HAccess
from hw.layouts import NESTED_EVENTS, PERF_EVENTS, InvvpidKind, LinearOutcome, MemOp
from hw.guest_walker import GuestWalkerState
from hw.nested_top import NestedWalkUnit
from model.formats import (
    Eptp, Level, MemType, gpa_index, make_leaf_entry as ept_leaf, make_table_entry as ept_table,
)
from model.guest import la_index, make_leaf_entry, make_table_entry
from model.physmem import PhysicalMemory

from sim.cosim.dram import Dram, DramConfig, DramRequest

__all__ = ["NestedWorld", "NestedRig", "nested_timing", "ctlb_sweep", "guest_os_refs", "CTLB_SIZES"]

MAXPHYADDR = 46
LEVELS = (Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE)
VPID = 1
NESTED_NAMES = tuple(NESTED_EVENTS)
UNIT_NAMES = tuple(PERF_EVENTS)


class NestedWorld:
    """Guest 4-level tables and EPT tables in one :class:`PhysicalMemory`.

    ``table_gpa()`` chooses where the next guest table page lives (a GPA); EPT
    maps it (a 4K leaf) to a fresh host frame.  With ``spread`` each guest
    table gets a GPA in its own 512G EPT region, so no EPT paging-structure
    cache entry filled for one helps another: a cold 2D walk then reads all
    (4 + 1) * 4 EPT entries and 4 guest entries.
    """

    def __init__(self, spread: bool = False):
        self.mem = PhysicalMemory(MAXPHYADDR)
        self._host = iter(range(0x0010_0000, 1 << 40, 0x1000))     # host frames, EPT tables too
        self.ept_pml4 = next(self._host)
        self.eptp = Eptp(pml4_pa=self.ept_pml4, memtype=MemType.WB, ad_enabled=False)
        self.spread = spread
        self._tables = 0
        self.hpa: dict[int, tuple[int, int]] = {}         # GPA page base -> (HPA base, size)
        self.gpa: dict[int, tuple[int, int]] = {}         # guest page LA -> (GPA base, size)
        self.cr3 = self.table_gpa()

    # -- EPT ---------------------------------------------------------------------------
    def ept_map(self, gpa: int, hpa: int | None = None, level: Level = Level.PTE) -> int:
        table = self.ept_pml4
        for lv in LEVELS:
            addr = table + gpa_index(gpa, lv) * 8
            if lv == level:
                hpa = next(self._host) if hpa is None else hpa
                self.mem.write(addr, ept_leaf(hpa, level))
                self.hpa[gpa] = (hpa, level.page_size)
                return hpa
            e = self.mem.peek(addr)
            if not e & 7:
                e = ept_table(next(self._host))
                self.mem.write(addr, e)
            table = e & 0x000F_FFFF_FFFF_F000
        raise AssertionError

    def hpa_of(self, gpa: int) -> int:
        return _lookup(self.hpa, gpa)

    def expected_hpa(self, la: int) -> int:
        """What the world maps ``la`` to (the answer a walk must give)."""
        return self.hpa_of(_lookup(self.gpa, la))

    # -- guest ---------------------------------------------------------------------------
    def table_gpa(self) -> int:
        k = self._tables
        self._tables += 1
        gpa = ((k + 1) << 39) + 0x20_0000 if self.spread else 0x0020_0000 + k * 0x1000
        self.ept_map(gpa)
        return gpa

    def guest_map(self, la: int, gpa: int, level: Level = Level.PTE) -> None:
        """Map guest page ``la`` -> ``gpa``, every entry with A set (no CAS on a read)."""
        self.gpa[la & ~(level.page_size - 1)] = (gpa, level.page_size)
        table = self.cr3
        for lv in LEVELS:
            addr = self.hpa_of(table + la_index(la, lv) * 8)
            if lv == level:
                self.mem.write(addr, make_leaf_entry(gpa, lv, accessed=True))
                return
            e = self.mem.peek(addr)
            if not e & 1:
                e = make_table_entry(self.table_gpa(), accessed=True)
                self.mem.write(addr, e)
            table = e & 0x000F_FFFF_FFFF_F000


def _lookup(pages: dict[int, tuple[int, int]], addr: int) -> int:
    for size in (1 << 12, 1 << 21, 1 << 30):
        base = addr & ~(size - 1)
        hit = pages.get(base)
        if hit is not None and hit[1] == size:
            return hit[0] + addr - base
    raise KeyError(f"{addr:#x} is not mapped")


@dataclass
class Answer:
    la: int
    access: HAccess
    taken: int = -1          # the edge (cycle number) that took the request
    answered: int = -1       # the edge that took the answer
    outcome: LinearOutcome | None = None
    hpa: int = 0
    reads: int = 0           # DRAM reads accepted while it was in flight
    states: dict = field(default_factory=dict)     # guest walker 0's state -> cycles in flight

    @property
    def cycles(self) -> int:
        return self.answered - self.taken


class NestedRig:
    """The nested unit in pysim, the DRAM model on its memory port, one linear
    request at a time (the DRAM model's latency gives every figure)."""

    def __init__(self, world: NestedWorld, dram: DramConfig, **unit):
        unit.setdefault("checks", True)        # the protocol Asserts, as every simulation runs
        self.world = world
        self.dut = NestedWalkUnit(maxphyaddr=MAXPHYADDR, execute_only=True, **unit)
        self.dram = Dram(world.mem, dram)
        self.cycle = 0
        self.current: Answer | None = None
        self.strobes: list[tuple[str, object]] = []
        self.ready_for_requests = False
        self.nested: dict[str, int] = {}
        self.unit: dict[str, int] = {}
        self._want_counters = False
        self.sim = Simulator(self.dut)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._world, background=True)

    async def _world(self, ctx):
        dut, dram, w = self.dut, self.dram, self.world
        ctx.set(dut.eptp_value, w.eptp.encode())
        ctx.set(dut.eptp_load, 1)
        ctx.set(dut.cr3_value, w.cr3 >> 12)
        ctx.set(dut.cr3_load, 1)
        ctx.set(dut.vpid_value, VPID)
        ctx.set(dut.vpid_load, 1)
        for name in ("paging", "wp", "nxe"):
            ctx.set(getattr(dut, name), 1)
        ctx.set(dut.linear_resp.ready, 1)
        first = True
        offered = None        # the request on linear_req this cycle
        last_ready = last_resp = last_offer = None
        strobed = False
        cas = MemOp.CAS.value
        gw0_state = dut.guest_walker_units[0].debug.state
        while True:
            ready, resp = dram.drive()
            if ready is not last_ready:
                ctx.set(dut.mem_req.ready, ready)
                last_ready = ready
            if resp is not last_resp:
                ctx.set(dut.mem_resp.valid, resp is not None)
                if resp is not None:
                    ctx.set(dut.mem_resp.payload, {"data": resp.result, "error": resp.error})
                last_resp = resp
            strobe = self.strobes.pop(0) if self.strobes and not first else None
            if strobe is not None or strobed:
                ctx.set(dut.invvpid.valid, strobe is not None and strobe[0] == "invvpid")
                ctx.set(dut.counters_clear, strobe is not None and strobe[0] == "clear")
                if strobe is not None and strobe[0] == "invvpid":
                    ctx.set(dut.invvpid.payload, strobe[1])
                strobed = strobe is not None
            a = self.current
            offer = self.ready_for_requests and a is not None and a.taken < 0 and strobe is None
            if offer and offered is not a:
                ctx.set(dut.linear_req.payload, {"la": a.la, "access": a.access, "user": 0, "tag": 1})
            if offer != last_offer:
                ctx.set(dut.linear_req.valid, offer)
                last_offer = offer
            offered = a if offer else None
            (_, _, mreq_valid, mreq, mresp_ready, lreq_ready, lresp_valid, lresp,
             cr3_valid, vpid_valid, eptp_valid, gw_state) = await ctx.tick().sample(
                dut.mem_req.valid, dut.mem_req.payload, dut.mem_resp.ready, dut.linear_req.ready,
                dut.linear_resp.valid, dut.linear_resp.payload,
                dut.cr3_valid, dut.vpid_valid, dut.eptp_valid, gw0_state)
            self.cycle += 1
            if a is not None and a.taken >= 0 and a.answered < 0:     # where the guest walker spent it
                state = GuestWalkerState(gw_state).name
                a.states[state] = a.states.get(state, 0) + 1
            req = None
            if mreq_valid:
                req = DramRequest("cas" if mreq.op == cas else "read", mreq.addr,
                                  compare=mreq.compare, data=mreq.data)
                if ready and self.current is not None and req.op == "read":
                    self.current.reads += 1
            dram.clock(req, resp is not None and bool(mresp_ready))
            if first:
                for name in ("eptp_load", "cr3_load", "vpid_load"):
                    ctx.set(getattr(dut, name), 0)
                first = False
            elif not self.ready_for_requests:
                if not (cr3_valid and vpid_valid and eptp_valid):
                    raise RuntimeError("the nested unit refused the bench's EPTP, CR3 or VPID")
                self.ready_for_requests = True
            if offer and lreq_ready:
                a.taken = self.cycle
            if lresp_valid and a is not None and a.taken >= 0:
                a.answered = self.cycle
                a.outcome = LinearOutcome(lresp.outcome)
                a.hpa = lresp.hpa
            if self._want_counters:
                nested, unit = ctx.get(dut.nested_counters), ctx.get(dut.counters)
                self.nested = {k: getattr(nested, k) for k in NESTED_NAMES}
                self.unit = {k: getattr(unit, k) for k in UNIT_NAMES}
                self._want_counters = False

    def step(self, n: int = 1) -> None:
        target = self.cycle + n
        while self.cycle < target:
            self.sim.advance()

    def translate(self, la: int, access: HAccess = HAccess.READ, limit: int = 20_000) -> Answer:
        """One linear request, alone in the unit; its answer checked against the world."""
        while not self.ready_for_requests or self.strobes:
            self.step()
        a = self.current = Answer(la, access)
        start = self.cycle
        while a.answered < 0:
            if self.cycle - start > limit:
                raise RuntimeError(f"no answer for LA {la:#x} within {limit} cycles")
            self.step()
        self.current = None
        expect = self.world.expected_hpa(la)
        if a.outcome != LinearOutcome.OK or a.hpa != expect:
            raise RuntimeError(f"the nested unit answered LA {la:#x} with {a.outcome} {a.hpa:#x}, "
                               f"not OK {expect:#x}")
        return a

    def counters(self) -> tuple[dict, dict]:
        """The nested and the unit's counters, settled (they show an event two cycles late)."""
        self.step(3)
        self._want_counters = True
        self.step()
        return dict(self.nested), dict(self.unit)

    def clear_counters(self) -> None:
        self.strobes.append(("clear", None))
        self.step(4)

    def invvpid_all(self) -> None:
        self.strobes.append(("invvpid", {"kind": InvvpidKind.ALL, "vpid": 0, "la": 0}))
        self.step(4)


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def _walk(rig: NestedRig, la: int) -> tuple[Answer, dict, dict]:
    """One translation and what it cost in the counters (nested, unit)."""
    n0, u0 = rig.counters()
    a = rig.translate(la)
    n1, u1 = rig.counters()
    return a, _delta(n1, n0), _delta(u1, u0)


TIMING_LA = 0x0000_1234_5678_9000
TIMING_GPA = (100 << 39) + 0x4000_0000      # in an EPT region of its own (the tables: 1..4)


def nested_timing(latency: int, **unit) -> dict:
    """The combined-TLB hit, the cold 2D walk (24 references) and the warm one (2)."""
    w = NestedWorld(spread=True)
    for k in range(2):                        # two 4K guest pages in one guest PT, one EPT PT
        w.ept_map(TIMING_GPA + k * 0x1000)
        w.guest_map(TIMING_LA + k * 0x1000, TIMING_GPA + k * 0x1000)
    rig = NestedRig(w, DramConfig(read_latency=latency, row_miss_penalty=0), **unit)
    cold, cn, cu = _walk(rig, TIMING_LA)
    warm, wn, wu = _walk(rig, TIMING_LA + 0x1000)
    hit, hn, _ = _walk(rig, TIMING_LA)
    if not (cn["ctlb_misses"] == wn["ctlb_misses"] == hn["ctlb_hits"] == 1):
        raise RuntimeError(f"the timing walks did not miss, miss, hit: {cn}, {wn}, {hn}")
    if not (wn["gpsc_hits_pde"] == 1 and wu["psc_hits_pde"] == 1):
        raise RuntimeError(f"the warm walk hit no guest and EPT PDE cache: {wn}, {wu}")
    cold_refs, warm_refs = cold.reads, warm.reads
    for name, a, n, u in (("cold", cold, cn, cu), ("warm", warm, wn, wu)):
        if a.reads != n["guest_mem_reads"] + u["mem_reads"] or n["guest_mem_cas"] or u["mem_cas"]:
            raise RuntimeError(f"the {name} walk's DRAM reads ({a.reads}) are not the counters' "
                               f"{n['guest_mem_reads']} guest + {u['mem_reads']} EPT (or it CASed)")
    goal = {"hit": 1, "cold": 24 * (latency + 1) + 4, "warm": 2 * (latency + 1) + 4}
    return {
        "nested_tlb_hit_latency_cycles": hit.cycles,
        "nested_tlb_hit_latency_goal_cycles": goal["hit"],
        "nested_tlb_hit_latency_met": hit.cycles <= goal["hit"],
        "nested_cold_walk_cycles": cold.cycles,
        "nested_cold_walk_goal_cycles": goal["cold"],
        "nested_cold_walk_met": cold.cycles <= goal["cold"],
        "nested_cold_walk_mem_refs": cold_refs,
        "nested_cold_walk_detail": {"guest_mem_reads": cn["guest_mem_reads"], "ept_mem_reads": cu["mem_reads"],
                                    "ept_lookups": cn["ept_lookups"], "ept_walks": cn["ept_walks"],
                                    "ept_psc_hits": cu["psc_hits_pml4e"] + cu["psc_hits_pdpte"]
                                    + cu["psc_hits_pde"]},
        # guest walker 0's state in each cycle of the walk (the edge taking the request to
        # the edge taking the answer): where the cycles over the goal go
        "nested_cold_walk_guest_walker_states": cold.states,
        "nested_warm_walk_cycles": warm.cycles,
        "nested_warm_walk_goal_cycles": goal["warm"],
        "nested_warm_walk_met": warm.cycles <= goal["warm"],
        "nested_warm_walk_mem_refs": warm_refs,
        "nested_warm_walk_detail": {"guest_mem_reads": wn["guest_mem_reads"], "ept_mem_reads": wu["mem_reads"],
                                    "ept_lookups": wn["ept_lookups"], "ept_walks": wn["ept_walks"],
                                    "gpsc_hits_pde": wn["gpsc_hits_pde"], "ept_psc_hits_pde": wu["psc_hits_pde"]},
        "nested_warm_walk_guest_walker_states": warm.states,
    }


LA_REGION = 0x7f00_0000_0000       # the guest LAs the patterns touch (bench._pattern's layout)
GPA_4K = 0x1_0000_0000             # the 1024 4K guest pages' GPAs (4K EPT leaves)
GPA_2M = 0x2_0000_0000             # the 32 2M guest pages' GPAs (2M EPT leaves)
HPA_2M = 0x80_0000_0000
CTLB_SIZES = (4, 8, 16, 32, 64)


def pattern_world() -> NestedWorld:
    """1024 4K guest pages over 4K EPT pages from LA_REGION, 32 2M guest pages over 2M
    EPT pages from LA_REGION + 1G: the layout of :func:`sim.flows.bench._pattern`."""
    w = NestedWorld()
    for i in range(1024):
        w.ept_map(GPA_4K + i * 0x1000)
        w.guest_map(LA_REGION + i * 0x1000, GPA_4K + i * 0x1000)
    for i in range(32):
        w.ept_map(GPA_2M + (i << 21), HPA_2M + (i << 21), Level.PDE)
        w.guest_map(LA_REGION + (1 << 30) + (i << 21), GPA_2M + (i << 21), Level.PDE)
    return w


def ctlb_sweep(patterns: dict[str, list], latency: int, sizes=CTLB_SIZES, **unit) -> dict:
    """Per pattern (name -> its (la, access) list, over :func:`pattern_world`'s pages),
    per combined-TLB size: the hit rate from the RTL's counters (``ctlb_hits /
    linear_lookups``), the mean cycles per translation and the references per miss,
    each pattern from a combined TLB emptied by INVVPID all (one request at a time)."""
    out: dict[str, list] = {name: [] for name in patterns}
    world = pattern_world()
    for size in sizes:
        rig = NestedRig(world, DramConfig(read_latency=latency), combined_tlb=size, **unit)
        for name, requests in patterns.items():
            n = len(requests)
            rig.invvpid_all()
            rig.clear_counters()
            answers = [rig.translate(la, HAccess(int(a))) for la, a in requests]
            c, u = rig.counters()
            if c["linear_lookups"] != n or c["ctlb_hits"] + c["ctlb_misses"] != n:
                raise RuntimeError(f"{name}, {size} entries: {n} requests but counters {c}")
            misses = max(c["ctlb_misses"], 1)
            out[name].append({
                "combined_tlb_entries": size,
                "hit_rate": round(c["ctlb_hits"] / c["linear_lookups"], 4),
                "cycles_per_translation": round(sum(a.cycles for a in answers) / n, 2),
                "mem_refs_per_miss": round((c["guest_mem_reads"] + u["mem_reads"]) / misses, 3),
            })
    return out


REFS_GOAL = 3


def guest_os_refs(accesses: int | None = None) -> dict:
    """Memory references (guest-entry and EPT-entry reads and A/D CASes) per combined-TLB miss of the
    default guest-OS workload (the first ``accesses`` of it; None: all) run on the RTL backend's nested unit,
    from the unit's counters; null, with the reason, where that backend cannot run it."""
    from sim.backends.base import BackendUnavailable, backend_class
    from sim.cosim.guest_os import GuestOsOptions, run_guest_os
    key = "nested_refs_per_walk_guest_os"
    out = {key: None, f"{key}_goal": REFS_GOAL, f"{key}_met": None}
    rtl = backend_class("rtl")
    if not rtl.nested:          # asked before a harness is built for nothing
        return out | {f"{key}_reason": f"not measured: {rtl.refuse_nested('the guest-os workload')}"}
    try:
        opts = GuestOsOptions() if accesses is None else GuestOsOptions(accesses=accesses)
        s = run_guest_os(opts, "rtl")
    except BackendUnavailable as e:
        return out | {f"{key}_reason": f"not measured: {e}"}
    c = s.get("unit_counters") or {}
    if "ctlb_misses" not in c:
        return out | {f"{key}_reason": "not measured: the rtl backend's guest-os summary has no "
                                       "nested counters (unit_counters.ctlb_misses)"}
    if s["mismatches"]:
        raise RuntimeError(f"the guest-os workload on rtl had {s['mismatches']} mismatches")
    # every guest-entry and EPT-entry access, A/D CASes included (the workload's own
    # refs_per_walk counts the same); the reads alone (the reference's 24 for a cold
    # 4K walk) in the detail
    refs = c["guest_mem_reads"] + c["guest_mem_cas"] + c["mem_reads"] + c["mem_cas"]
    misses = max(c["ctlb_misses"], 1)
    value = round(refs / misses, 3)
    return out | {key: value, f"{key}_met": value <= REFS_GOAL, f"{key}_detail": {
        "accesses": opts.accesses, "linear_lookups": c["linear_lookups"], "ctlb_hits": c["ctlb_hits"],
        "ctlb_misses": c["ctlb_misses"], "guest_walks": c["guest_walks"],
        "guest_mem_reads": c["guest_mem_reads"], "guest_mem_cas": c["guest_mem_cas"],
        "ept_mem_reads": c["mem_reads"], "ept_mem_cas": c["mem_cas"],
        "read_refs_per_miss": round((c["guest_mem_reads"] + c["mem_reads"]) / misses, 3),
        "workload_refs_per_walk": s.get("refs_per_walk"),
        # EPT lookups not asked by the guest walkers (the GPA port): their reads are in
        # ept_mem_reads too
        "other_ept_lookups": c["lookups"] - c["ept_lookups"]}}
