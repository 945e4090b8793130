"""The page-walk unit: TLB, paging-structure caches, N walkers, one memory port.

::

                 +------------------------------ PageWalkUnit ------------------------------+
  eptp_load ---->| EptpRegister -> ContextTable (EPTP -> context id) --flush--+              |
  invept ------->|------------------------^                                 v              |
  translate_req >| S0: TLB read, -> S1: tag compare --hit--> port (or skid reg) -> resp mux >|> translate_resp
                 |     ctx compare     |  miss                                   ^          |
                 |   ^ replays         v                                         |          |
                 |   +-- park slots <- S2: same page walking? park : PSC lookup  |          |
                 |                        -> free walker (Walker x N + ADUpdater)+          |
                 |                           -> MemArbiter ------------------------------- |> mem_req / mem_resp
                 +--------------------------------------------------------------------------+

Promises:

* **Hits**: a request taken in cycle ``t`` that hits the TLB is answered in
  cycle ``t+1`` (``cycles`` = 1) if the response port is free, and a new
  request is taken every cycle while hits continue.  If the port is busy the
  answer waits in a skid register, which has the port first, then walker
  responses, then S1 (so walks cannot starve).
* **Pipeline**: S0 reads the TLB set and compares contexts, tags and
  permissions there, and the paging-structure caches compare their keys; S1
  chooses among the registered verdicts.  S1 moves on whenever the skid
  register is empty and S2 can take a miss, whatever its lookup says; the
  lookup only steers data, and stays off the pipeline enables.
* **Walk timing**: with memory latency L (no A/D writes, no row misses) a
  cold 4-level walk answers 4(L+1)+2 cycles after the request: S1 (lookup),
  S2 (dispatch, and the walker's first read leaves in the same cycle), L+1
  per level, then the registered response.  A walk that starts from a
  PDE-cache hit reads only the PTE and answers in (L+1)+2.
* **Ordering**: responses leave **out of order**; each carries the request's
  ``tag``.  A requester must not reuse a tag that is still outstanding.
* **Misses**: a miss goes to a free walker (``walkers``, default 2) with the
  lowest level a paging-structure cache can skip to; hits keep flowing while
  walks run.  A miss to a 4K page another walker is already walking (same
  context) waits in a park slot and is looked up again when that walk
  answers: the two requests cost one walk.  With no walker or park slot free,
  the port stalls.
* **Caching rules** (docs/ept.md): only successful translations are
  cached; a hit lacking the permission the access needs, or a write hit on an
  entry whose D is 0, drops the entry and walks; a walk that starts from a
  paging-structure cache and faults walks again from the PML4E.
* **INVEPT** covers every request taken from the edge that takes it on.  Its
  flush is registered (the context table's 40-bit compares get a cycle of
  their own): the TLB and caches of the covered contexts are cleared on the
  next edge, and no new request is taken in the INVEPT's own cycle
  (``translate_req.ready`` is low then), so no request can use what the
  flush is about to clear.  A walk, request or park slot of a covered context
  in flight at the flush completes, but installs nothing.
* A request with no valid EPTP is answered ``REFUSED``; nothing is walked.
* Performance counters (:data:`~hw.layouts.PERF_EVENTS`) count every cycle;
  a count shows two cycles after its event.  Cache fills land one cycle after
  the walk's response (a flush in that cycle still wins).

With ``caches=False`` the unit has no TLB and no paging-structure caches:
every request walks from the PML4E.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .checks import PortChecker
from .contexts import ContextTable
from .entry_check import EntryCheck, EntryVerdict
from .eptp import EptpRegister
from .layouts import (
    FRAME_BITS, PA_BITS, TAG_BITS, Access, InveptKind, InveptRequest, Level, MemRequest, MemResponse, Outcome,
    PageSize, PerfCounters, TranslateRequest, TranslateResponse, WalkStart, check_maxphyaddr,
    fill_layout, pending_layout,
)
from .mem_arbiter import MemArbiter
from .miss_dispatch import DispatchEvents, MissDispatcher
from .perf import PerfCounterBank
from .psc import PagingStructureCache
from .resp_arbiter import ResponseArbiter
from .tlb import Tlb, check_geometry
from .walker import Walker
from .params import check_int

__all__ = ["PageWalkUnit", "PredecodedPageWalkUnit"]



class PageWalkUnit(wiring.Component):
    """The page-walk unit (see the module docstring for its promises).

    Every parameter is validated before any block is built, with a clear error.

    Parameters
    ----------
    maxphyaddr : int
        36..52: physical address bits (entry reserved bits, EPTP check).
    execute_only : bool
        Execute-only entries (X without R) are allowed, else misconfigured.
    caches : bool
        With a TLB and paging-structure caches (else every request walks).
    tlb_sets, tlb_ways : int
        The 4K array (default 16 x 4 = 64 entries).
    tlb_2m_sets, tlb_2m_ways, tlb_1g_sets, tlb_1g_ways : int
        The 2M and 1G arrays.
    pml4e_cache, pdpte_cache, pde_cache : int
        Paging-structure cache entries per level (0: none).
    walkers : int
        Concurrent walks, 1..16.
    park_slots : int
        Misses that may wait behind a walk to the same page, 1..32.
    contexts : int
        EPTPs cached at once (context ids), 1..64.
    max_outstanding : int
        Memory requests in flight, 1..64.
    checks : bool
        The port protocol ``Assert``\\ s of :mod:`hw.checks` (simulation; off for
        Verilog and synthesis).

    Members
    -------
    translate_req : In(stream.Signature(TranslateRequest))
        Guest-physical address, access and tag; not ready in an INVEPT's cycle.
    translate_resp : Out(stream.Signature(TranslateResponse))
        Out of order; carries the request's tag.
    eptp_value : In(64)
    eptp_load : In(1)
        Load ``eptp_value`` at this edge.
    eptp_valid, eptp_error : Out(1)
        The loaded EPTP is valid / was refused.
    invept : In(stream.Signature(InveptRequest))
        Always ready.
    invept_count : Out(32)
        INVEPTs taken, wrapping.
    counters : Out(PerfCounters)
        The performance counters (:data:`~hw.layouts.PERF_EVENTS`).
    counters_clear : In(1)
    mem_req : Out(stream.Signature(MemRequest))
    mem_resp : In(stream.Signature(MemResponse))
        The memory port; the memory must answer in request order.
    walk_start : Out(Signature({"valid": Out(1), "tag": Out(TAG_BITS)}))
        A walk starts for the request with this tag (at most one per cycle):
        lets a parent count the walks its own requests cause.

    Timing
    ------
    A TLB hit taken in cycle ``t`` answers in ``t+1``; a cold 4-level walk
    with memory latency L answers 4(L+1)+2 cycles after its request.
    Responses leave out of order.  An EPTP load is seen by requests from the
    next cycle (a new context a cycle later); an INVEPT covers every request
    taken from its edge on.  Counters show an event two cycles after it.
    """

    translate_req: In(stream.Signature(TranslateRequest))
    translate_resp: Out(stream.Signature(TranslateResponse))
    eptp_value: In(64)
    eptp_load: In(1)
    eptp_valid: Out(1)
    eptp_error: Out(1)
    invept: In(stream.Signature(InveptRequest))     # always ready
    invept_count: Out(32)
    counters: Out(PerfCounters)
    counters_clear: In(1)
    mem_req: Out(stream.Signature(MemRequest))
    mem_resp: In(stream.Signature(MemResponse))
    walk_start: Out(wiring.Signature({"valid": Out(1), "tag": Out(TAG_BITS)}))

    def __init__(self, *, maxphyaddr=46, execute_only=True, caches=True,
                 tlb_sets=16, tlb_ways=4, tlb_2m_sets=4, tlb_2m_ways=4, tlb_1g_sets=1, tlb_1g_ways=4,
                 pml4e_cache=2, pdpte_cache=4, pde_cache=8,
                 walkers=2, park_slots=4, contexts=4, max_outstanding=8, checks=False):
        self.maxphyaddr = check_maxphyaddr(maxphyaddr)
        for name, value in (("execute_only", execute_only), ("caches", caches), ("checks", checks)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, not {value!r}")
        self.execute_only = execute_only
        self.caches = caches
        self.walkers = check_int("walkers", walkers, 1, 16)
        self.park_slots = check_int("park_slots", park_slots, 1, 32)
        # every parameter is checked before any block exists, so a refused one
        # leaves no half-built design behind
        ContextTable.check(contexts)
        MemArbiter.check(max_outstanding)
        for name, sets, ways in (("4K", tlb_sets, tlb_ways), ("2M", tlb_2m_sets, tlb_2m_ways),
                                 ("1G", tlb_1g_sets, tlb_1g_ways)):
            check_geometry(f"TLB {name}", sets, ways)
        for level, n in ((Level.PML4E, pml4e_cache), (Level.PDPTE, pdpte_cache), (Level.PDE, pde_cache)):
            PagingStructureCache.check(level, n)
        super().__init__()
        self.eptp_register = EptpRegister(maxphyaddr=self.maxphyaddr)
        self.context_table = ContextTable(contexts=contexts)
        self.tlb = Tlb(sets_4k=tlb_sets, ways_4k=tlb_ways, sets_2m=tlb_2m_sets, ways_2m=tlb_2m_ways,
                       sets_1g=tlb_1g_sets, ways_1g=tlb_1g_ways, contexts=contexts) if caches else None
        sizes = (pml4e_cache, pdpte_cache, pde_cache) if caches else (0, 0, 0)
        self.pscs = {level: PagingStructureCache(level, entries=n, contexts=contexts,
                                                 fillers=self.walkers)
                     for level, n in zip((Level.PML4E, Level.PDPTE, Level.PDE), sizes)}
        self.walker_units = [Walker(maxphyaddr=self.maxphyaddr) for _ in range(self.walkers)]
        self.responses = ResponseArbiter(walkers=self.walkers)
        self.dispatch = MissDispatcher(walkers=self.walkers, park_slots=self.park_slots,
                                       contexts=contexts)
        self.arbiter = MemArbiter(ports=self.walkers, max_outstanding=max_outstanding)
        self.perf = PerfCounterBank()
        self.checker = PortChecker(history=max(16, 8 * self.walkers),
                                   max_outstanding=max_outstanding) if checks else None
        self.ctx_bits = len(self.context_table.cur_id)

    def elaborate(self, platform):
        m = Module()
        # The blocks are added in the order the unit had before it was split into blocks
        # (the lookup-and-dispatch logic last): the flattened netlist then keeps the old
        # cell order.  ABC9's mapping and nextpnr's placement follow that order, and the
        # fmax moved by several percent (seed 1, -6: 84.7 against 89.2 MHz) with the TLB and
        # the new blocks added first, for the same logic.
        m.submodules.eptp = self.eptp_register
        m.submodules.contexts = ctxs = self.context_table
        m.submodules.arbiter = self.arbiter
        m.submodules.perf = perf = self.perf
        for level, psc in self.pscs.items():
            m.submodules[f"psc_{level.name.lower()}"] = psc
        for k, w in enumerate(self.walker_units):
            m.submodules[f"walker{k}"] = w
        self._connect_control(m)
        self._connect_memory(m)
        if self.tlb is not None:
            m.submodules.tlb = self.tlb
        m.submodules.responses = responses = self.responses
        m.submodules.dispatch = dispatch = self.dispatch
        for k, w in enumerate(self.walker_units):
            wiring.connect(m, dispatch.walk[k], w.req)
            wiring.connect(m, w.resp, responses.walker[k])
            m.d.comb += dispatch.walker_page[k].eq(w.page)
            with m.If(dispatch.walk[k].valid):
                m.d.comb += [self.walk_start.valid.eq(1), self.walk_start.tag.eq(dispatch.walk[k].payload.tag)]
        wiring.connect(m, responses.resp, wiring.flipped(self.translate_resp))
        m.d.comb += [dispatch.walker_done.eq(responses.done), dispatch.flush.eq(ctxs.flush)]

        # the critical path: S0 looks the TLB and the caches up, S1 chooses and resolves
        s1, s1_valid, s1_advance = self._s0(m)
        self._s1(m, s1, s1_valid, s1_advance)

        fill_valid = self._fill(m)
        self._drop(m)
        ev = perf.events
        for name, _ in DispatchEvents:
            m.d.comb += ev[name].eq(dispatch.events[name])
        m.d.comb += ev.cas_retries.eq(sum(w.lost_race for w in self.walker_units))
        if self.checker is not None:
            self._check(m, fill_valid)
        return m

    def _connect_control(self, m):
        eptp, ctxs, perf = self.eptp_register, self.context_table, self.perf
        m.d.comb += [
            eptp.value.eq(self.eptp_value),
            eptp.load.eq(self.eptp_load),
            self.eptp_valid.eq(eptp.valid),
            self.eptp_error.eq(eptp.error),
            # the context is looked up while the EPTP loads, so its id is a register
            ctxs.load.eq(self.eptp_load),
            ctxs.load_ok.eq(eptp.value_ok),
            ctxs.load_pml4.eq(self.eptp_value[12:12 + FRAME_BITS]),
            ctxs.load_ad.eq(self.eptp_value[6]),
            perf.clear.eq(self.counters_clear),
            self.counters.eq(perf.counters),
        ]
        wiring.connect(m, wiring.flipped(self.invept), ctxs.invept)
        with m.If(self.invept.valid):
            m.d.sync += self.invept_count.eq(self.invept_count + 1)
            m.d.comb += perf.events.invepts.eq(1)

    def _connect_memory(self, m):
        arb, ev = self.arbiter, self.perf.events
        verdict = self._mem_verdict(m)
        for k, w in enumerate(self.walker_units):
            wiring.connect(m, w.mem_req, arb.req[k])
            wiring.connect(m, arb.resp[k], w.mem_resp)
            m.d.comb += w.mem_verdict.eq(verdict)
        wiring.connect(m, arb.mem_req, wiring.flipped(self.mem_req))
        wiring.connect(m, wiring.flipped(self.mem_resp), arb.mem_resp)
        m.d.comb += [ev.mem_reads.eq(arb.read_issued), ev.mem_cas.eq(arb.cas_issued)]

    def _flushed(self, ctx):
        return self.context_table.flush.bit_select(ctx, 1)

    def _s0(self, m):
        """S0: a replay, else a new request, into S1; the TLB and caches compare in S0."""
        eptp, ctxs, dispatch = self.eptp_register, self.context_table, self.dispatch
        flushed = self._flushed
        Pending = pending_layout(self.ctx_bits)
        s0 = Signal(Pending)
        s1 = Signal(Pending)
        s1_valid = Signal()
        # A parked request whose walk has answered moves into the replay register first
        # (chosen in the cycle it wakes, so no later than before), so that S0's mux in front
        # of the TLB read selects between one register and the port.  The TLB's and the
        # caches' compares are steered by copies of the replay register's valid bit.
        rp, rp_valid = dispatch.replay.payload, dispatch.replay.valid
        # A new context gets its id first.  No new request in the cycle an INVEPT is taken:
        # its flush is registered and acts on the next edge, so every request taken from
        # the INVEPT's edge on is covered.
        new_ok = (~eptp.valid | ctxs.ready) & ~self.invept.valid
        s1_advance = Signal()              # driven by S1 (_s1): S1 moves on
        new_req = Signal(Pending)          # a request from the port
        p = self.translate_req.payload
        m.d.comb += [new_req.gpa.eq(p.gpa), new_req.access.eq(p.access), new_req.tag.eq(p.tag),
                     new_req.ctx.eq(ctxs.cur_id), new_req.pml4.eq(eptp.pml4),
                     new_req.ad_enabled.eq(eptp.ad_enabled), new_req.ctx_valid.eq(eptp.valid)]
        m.d.comb += s0.eq(Mux(rp_valid, rp, new_req))
        s0_valid = rp_valid | (self.translate_req.valid & new_ok)
        m.d.comb += self.translate_req.ready.eq(s1_advance & ~rp_valid & new_ok)
        fire = Signal()
        m.d.comb += [fire.eq(s1_advance & s0_valid), dispatch.replay.ready.eq(fire)]
        with m.If(fire):
            m.d.sync += [s1.eq(s0), s1.stale.eq(s0.stale | flushed(s0.ctx)), s1_valid.eq(1)]
            m.d.comb += self.perf.events.lookups.eq(1)
        with m.Elif(s1_advance):
            m.d.sync += s1_valid.eq(0)
        with m.Else():
            m.d.sync += s1.stale.eq(s1.stale | flushed(s1.ctx))

        # the TLB and the caches hold the page, context and access of S0 itself, as s1 does
        empty_tlb, empty_psc = dispatch.replay_empty_tlb, dispatch.replay_empty_psc
        if self.tlb is not None:
            m.d.comb += [self.tlb.lookup.en.eq(fire),
                         self.tlb.lookup.key.eq(Mux(empty_tlb, new_req.gpa[12:], rp.gpa[12:])),
                         self.tlb.lookup.ctx.eq(Mux(empty_tlb, new_req.ctx, rp.ctx)),
                         self.tlb.lookup.access.eq(Mux(empty_tlb, new_req.access, rp.access)),
                         self.tlb.flush.eq(ctxs.flush)]
        for psc in self.pscs.values():
            m.d.comb += [psc.lookup.en.eq(fire),
                         psc.lookup.key.eq(Mux(empty_psc, new_req.gpa, rp.gpa)[psc.lo:]),
                         psc.lookup.ctx.eq(Mux(empty_psc, new_req.ctx, rp.ctx)),
                         psc.flush.eq(ctxs.flush)]
        return s1, s1_valid, s1_advance

    def _s1(self, m, s1, s1_valid, s1_advance):
        """S1: the registered verdicts decide; the answer goes to the port, a miss to S2."""
        tlb, responses, dispatch = self.tlb, self.responses, self.dispatch
        ev = self.perf.events
        tlb_hit = Signal()          # an entry holds the page
        tlb_ok = Signal()           # and allows the access (checked per way, in the TLB)
        if tlb is not None:
            m.d.comb += [tlb_hit.eq(tlb.lookup.hit & ~s1.stale), tlb_ok.eq(tlb.lookup.ok & ~s1.stale)]
        active = s1_valid & s1.ctx_valid
        refuse = Signal()
        good_hit = Signal()
        bad_hit = Signal()
        miss = Signal()
        m.d.comb += [
            refuse.eq(s1_valid & ~s1.ctx_valid),
            good_hit.eq(active & tlb_ok),
            bad_hit.eq(active & tlb_hit & ~tlb_ok),
            miss.eq(active & ~tlb_ok),
        ]
        if tlb is not None:
            m.d.comb += tlb.drop.eq(bad_hit)

        # The translation of a hit is built in its own signal (zero for a refused request;
        # gated by the S1 register's EPTP validity rather than by the compare's verdict, which
        # would add a level and a wide fanout to the S1 path: a miss never sends it), and every
        # field of the response is then assigned unconditionally: a hit has no exit
        # qualification and restarted no walk, so those fields are zero.
        hit = Signal(data.StructLayout({"hpa": PA_BITS, "page_size": PageSize,
                                        "memtype": 3, "level": Level}))
        if tlb is not None:
            size, entry = tlb.lookup.data.size, tlb.lookup.data.entry
            page = entry.hpa_page
            with m.If(s1.ctx_valid):
                m.d.comb += [hit.page_size.eq(size), hit.memtype.eq(entry.memtype)]
                with m.Switch(size):
                    with m.Case(PageSize.SIZE_4K):
                        m.d.comb += [hit.hpa.eq(Cat(s1.gpa[:12], page)), hit.level.eq(Level.PTE)]
                    with m.Case(PageSize.SIZE_2M):
                        m.d.comb += [hit.hpa.eq(Cat(s1.gpa[:21], page[9:])), hit.level.eq(Level.PDE)]
                    with m.Default():
                        m.d.comb += [hit.hpa.eq(Cat(s1.gpa[:30], page[18:])),
                                     hit.level.eq(Level.PDPTE)]
        hit_resp = Signal(TranslateResponse)
        m.d.comb += [
            hit_resp.outcome.eq(Mux(refuse, Outcome.REFUSED, Outcome.OK)),
            hit_resp.hpa.eq(hit.hpa), hit_resp.page_size.eq(hit.page_size),
            hit_resp.memtype.eq(hit.memtype), hit_resp.qual.eq(0), hit_resp.level.eq(hit.level),
            hit_resp.retries.eq(0), hit_resp.tag.eq(s1.tag),
        ]

        # S1 moves on whenever the skid register and S2 can take its result, whatever the
        # compare says: the compare then only steers data, and stays off the enables of
        # S0/S1 (the unit's critical path).
        m.d.comb += s1_advance.eq(~s1_valid | (~responses.skid_full & ~dispatch.s1.full))
        s1_resolves = s1_valid & s1_advance
        m.d.comb += [responses.s1.load.eq(s1_resolves), responses.s1.answer.eq(refuse | good_hit),
                     responses.s1.payload.eq(hit_resp)]
        # by the size of the hit's page (zero unless it is a good hit; so also without a TLB)
        hit_counted = Signal()
        m.d.comb += hit_counted.eq(s1_resolves & good_hit)
        hit_4k = hit.page_size == PageSize.SIZE_4K
        hit_2m = hit.page_size == PageSize.SIZE_2M
        m.d.comb += [
            ev.hits_4k.eq(hit_counted & hit_4k),
            ev.hits_2m.eq(hit_counted & hit_2m),
            ev.hits_1g.eq(hit_counted & ~hit_4k & ~hit_2m),
        ]
        # Where a walk starts: the lowest level a paging-structure cache skips to, looked
        # up beside the TLB and registered with S2.  If the caches change in between, S2
        # may start a full walk (a fill it missed) or from an entry dropped since (a fault
        # from it walks again): both correct.  A flush marks S2 stale.
        start = Signal(WalkStart)
        m.d.comb += [start.level.eq(Level.PML4E), start.table.eq(s1.pml4), start.perms.eq(0b111)]
        for level, below in ((Level.PML4E, Level.PDPTE), (Level.PDPTE, Level.PDE), (Level.PDE, Level.PTE)):
            psc = self.pscs[level]
            use = Signal(name=f"use_{level.name.lower()}_cache")
            m.d.comb += use.eq(psc.lookup.hit & ~s1.stale)
            with m.If(use):           # lower levels come later and win
                m.d.comb += [start.level.eq(below), start.table.eq(psc.lookup.data.table),
                             start.perms.eq(psc.lookup.data.perms)]
        m.d.comb += [dispatch.s1.load.eq(s1_resolves), dispatch.s1.miss.eq(miss),
                     dispatch.s1.dropped.eq(bad_hit), dispatch.s1.req.eq(s1),
                     dispatch.s1.start.eq(start)]

    def _fill(self, m):
        """A walker answers: fill the TLB and the caches with its result, a cycle later."""
        walkers, dispatch = self.walker_units, self.dispatch
        n_walk = len(walkers)
        fw = Signal(range(n_walk) if n_walk > 1 else 1)
        m.d.comb += fw.eq(self.responses.walker_sel)
        done_any = self.responses.done.any()
        # the answering walker's own response, not the port's: the port's mux also carries
        # S1's hit, which must not reach the fill registers
        resp = Signal(TranslateResponse)
        Fill = fill_layout(self.ctx_bits)
        fill = Signal(Fill)
        fill_valid = Signal()
        sel_access = Signal(Access)
        sel_entries = Signal.like(walkers[0].entries)
        sel_perms_at = Signal.like(walkers[0].perms_at)
        sel = Signal(Fill)
        for k, w in enumerate(walkers):
            with m.If(fw == k):
                m.d.comb += [resp.eq(w.resp.payload), sel.page.eq(w.page), sel_access.eq(w.access),
                             sel_entries.eq(w.entries), sel_perms_at.eq(w.perms_at),
                             sel.walked.eq(w.walked), sel.ctx.eq(dispatch.walker_ctx[k])]
        leaf = resp.level.as_value()
        m.d.comb += [
            sel.size.eq(resp.page_size), sel.hpa_page.eq(resp.hpa[12:]),
            sel.memtype.eq(resp.memtype), sel.leaf.eq(resp.level),
            sel.perms.eq(sel_perms_at[leaf]),
            # D is set in memory now, or A/D is off and writes need no D
            sel.d.eq(~dispatch.walker_ad.bit_select(fw, 1) | (sel_access == Access.WRITE)
                     | sel_entries[leaf].d),
        ]
        for i in range(3):
            m.d.comb += [sel.tables[i].eq(sel_entries[i + 1].addr),
                         sel.table_perms[i].eq(sel_perms_at[i + 1])]
        # A successful walk of a context not flushed since it started, nor now, installs.
        # The install lands a cycle after the response: a flush in that cycle still wins
        # (the TLB and caches drop a fill of a context being flushed).
        m.d.sync += [
            fill.eq(sel),
            fill_valid.eq(done_any & (resp.outcome == Outcome.OK)
                          & ~dispatch.walker_stale.bit_select(fw, 1) & ~self._flushed(sel.ctx)),
        ]
        if self.tlb is not None:
            f = self.tlb.fill
            m.d.comb += [
                f.valid.eq(fill_valid), f.key.eq(fill.page), f.ctx.eq(fill.ctx),
                f.data.size.eq(fill.size),
                f.data.entry.hpa_page.eq(fill.hpa_page),
                f.data.entry.perms.eq(fill.perms),
                f.data.entry.memtype.eq(fill.memtype),
                f.data.entry.d.eq(fill.d),
            ]
        for level, psc in self.pscs.items():
            if not psc.entries:
                continue         # nothing to fill (caches off, or a level without a cache)
            i = level.value
            m.d.comb += [
                psc.fill.valid.eq(fill_valid & fill.walked[i - 1] & (fill.leaf.as_value() < i)),
                psc.fill.key.eq(fill.page[psc.lo - 12:]), psc.fill.ctx.eq(fill.ctx),
                psc.next_fill_sel.eq(fw),
                psc.fill.data.table.eq(fill.tables[i - 1]),
                psc.fill.data.perms.eq(fill.table_perms[i - 1]),
            ]
            for k, w in enumerate(walkers):
                m.d.comb += [psc.next_fill_keys[k].eq(w.page[psc.lo - 12:]),
                             psc.next_fill_ctxs[k].eq(dispatch.walker_ctx[k])]
        with m.If(done_any):
            m.d.comb += self.perf.events.walks_completed.eq(1)
        return fill_valid

    def _drop(self, m):
        """A fault through a cached entry: forget that entry (the first walker's if several)."""
        walkers = self.walker_units
        w_ctx = Array(self.dispatch.walker_ctx[k] for k in range(len(walkers)))
        drop_walker = Signal(range(len(walkers)) if len(walkers) > 1 else 1)
        for k in reversed(range(len(walkers))):
            with m.If(walkers[k].psc_drop):
                m.d.comb += drop_walker.eq(k)
        for psc in self.pscs.values():
            m.d.comb += psc.drop_ctx.eq(w_ctx[drop_walker])
            for k, w in enumerate(walkers):
                with m.If(drop_walker == k):
                    m.d.comb += [psc.drop.eq(w.psc_drop), psc.drop_key.eq(w.page[psc.lo - 12:])]

    def _check(self, m, fill_valid):
        """The port protocol Asserts, and one on the fills."""
        m.submodules.checks = c = self.checker
        m.d.comb += [
            c.treq_valid.eq(self.translate_req.valid), c.treq_ready.eq(self.translate_req.ready),
            c.treq_tag.eq(self.translate_req.payload.tag),
            c.tresp_valid.eq(self.translate_resp.valid), c.tresp_ready.eq(self.translate_resp.ready),
            c.tresp.eq(self.translate_resp.payload),
            c.mreq_valid.eq(self.mem_req.valid), c.mreq_ready.eq(self.mem_req.ready),
            c.mreq.eq(self.mem_req.payload),
            c.mresp_valid.eq(self.mem_resp.valid), c.mresp_ready.eq(self.mem_resp.ready),
            c.mresp.eq(self.mem_resp.payload),
        ]
        # No cache fill after INVEPT, tracked apart from the stale bits that
        # implement it: a walk that saw a global INVEPT from its start to the
        # cycle before its answer installs nothing (an INVEPT in the answer's
        # own cycle is the TLB's to drop: the fill lands as the flush does).
        walkers = self.walker_units
        covered = Signal(len(walkers), name="check_inv_covered")
        global_inv = self.invept.valid & (self.invept.payload.kind == InveptKind.GLOBAL)
        for k, w in enumerate(walkers):
            with m.If(w.req.valid & w.req.ready):
                m.d.sync += covered[k].eq(global_inv)
            with m.Elif(global_inv):
                m.d.sync += covered[k].eq(1)
        fill_covered = Signal(name="check_fill_covered")
        m.d.sync += fill_covered.eq(self.responses.done.any()
                                    & covered.bit_select(self.responses.walker_sel, 1))
        m.d.sync += Assert(~(fill_valid & fill_covered),
                           "cache fill from a walk a global INVEPT covered")
        # simulation only (with the checks): the cycle number, so a waveform shows it
        # beside the clock whichever simulator wrote it (cycle n ends at the n-th edge)
        cycle = Signal(32, name="cycle")
        m.d.sync += cycle.eq(cycle + 1)

    def _mem_verdict(self, m):
        # every walker judges the response's data with the same check: make it once, here
        m.submodules.entry_check = check = EntryCheck(maxphyaddr=self.maxphyaddr,
                                                      execute_only=self.execute_only)
        m.d.comb += check.entry.eq(self.mem_resp.payload.data)
        return check.verdict


class PredecodedPageWalkUnit(PageWalkUnit):
    """:class:`PageWalkUnit` whose memory adapter checks each entry before registering it.

    The adapter computes the verdict from the bus data on the way into its
    response register, so the walkers' decisions start from a register instead
    of following the check (the unit's critical path on ECP5).  The adapter
    must check with this unit's ``maxphyaddr`` and ``execute_only``.

    Parameters
    ----------
    **params
        :class:`PageWalkUnit`'s.

    Members
    -------
    mem_resp_verdict : In(EntryVerdict)
        :class:`~hw.entry_check.EntryCheck`'s verdict on
        ``mem_resp.payload.data``, valid with it (for reads; a CAS answer's is
        not looked at).  Every other member is :class:`PageWalkUnit`'s.

    Timing
    ------
    :class:`PageWalkUnit`'s.
    """

    mem_resp_verdict: In(EntryVerdict)

    def _mem_verdict(self, m):
        return self.mem_resp_verdict
