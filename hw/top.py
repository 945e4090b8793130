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
* **Caching rules** (``ept-reference.md``): only successful translations are
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
from amaranth.hdl import Assert
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .checks import PortChecker
from .contexts import ContextTable
from .entry_check import EntryCheck, EntryVerdict
from .eptp import EptpRegister
from .layouts import (
    GPA_BITS, PA_BITS, TAG_BITS, Access, InveptKind, InveptRequest, Level, MemRequest, MemResponse, Outcome, PageSize,
    PerfCounters, TranslateRequest, TranslateResponse, check_maxphyaddr,
)
from .mem_arbiter import MemArbiter
from .perf import PerfCounterBank
from .psc import PagingStructureCache
from .tlb import Tlb, check_geometry
from .walker import Walker

__all__ = ["PageWalkUnit", "PredecodedPageWalkUnit"]


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")
    return value


class PageWalkUnit(wiring.Component):
    """See the module docstring.  Every parameter is validated with a clear error.

    ``tlb_sets``/``tlb_ways``: the 4K array (default 16 x 4 = 64 entries);
    ``tlb_2m_*``/``tlb_1g_*``: the 2M and 1G arrays; ``pml4e_cache``,
    ``pdpte_cache``, ``pde_cache``: paging-structure cache entries (0 = none);
    ``walkers``: concurrent walks; ``park_slots``: misses waiting behind a
    walk to the same page; ``contexts``: EPTPs cached at once;
    ``max_outstanding``: memory requests in flight; ``checks``: the port
    protocol ``Assert``s of :mod:`hw.checks` (simulation; off for synthesis).
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
        self.walkers = _check_int("walkers", walkers, 1, 16)
        self.park_slots = _check_int("park_slots", park_slots, 1, 32)
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
        self.walker_units = [Walker(maxphyaddr=self.maxphyaddr, execute_only=self.execute_only)
                             for _ in range(self.walkers)]
        self.arbiter = MemArbiter(ports=self.walkers, max_outstanding=max_outstanding)
        self.perf = PerfCounterBank()
        self.checker = PortChecker(history=max(16, 8 * self.walkers),
                                   max_outstanding=max_outstanding) if checks else None
        # the first walker, for tests and waveforms written against one walker
        self.walker = self.walker_units[0]

    def elaborate(self, platform):
        m = Module()
        m.submodules.eptp = eptp = self.eptp_register
        m.submodules.contexts = ctxs = self.context_table
        m.submodules.arbiter = arb = self.arbiter
        m.submodules.perf = perf = self.perf
        for level, psc in self.pscs.items():
            m.submodules[f"psc_{level.name.lower()}"] = psc
        walkers = self.walker_units
        for k, w in enumerate(walkers):
            m.submodules[f"walker{k}"] = w
        n_walk = len(walkers)
        ctx_bits = len(ctxs.cur_id)
        ev = perf.events

        m.d.comb += [
            eptp.value.eq(self.eptp_value),
            eptp.load.eq(self.eptp_load),
            self.eptp_valid.eq(eptp.valid),
            self.eptp_error.eq(eptp.error),
            # the context is looked up while the EPTP loads, so its id is a register
            ctxs.load.eq(self.eptp_load),
            ctxs.load_ok.eq(eptp.value_ok),
            ctxs.load_pml4.eq(self.eptp_value[12:52]),
            ctxs.load_ad.eq(self.eptp_value[6]),
            perf.clear.eq(self.counters_clear),
            self.counters.eq(perf.counters),
        ]
        wiring.connect(m, wiring.flipped(self.invept), ctxs.invept)
        with m.If(self.invept.valid):
            m.d.sync += self.invept_count.eq(self.invept_count + 1)
            m.d.comb += ev.invepts.eq(1)
        flush = ctxs.flush

        def flushed(ctx):
            return flush.bit_select(ctx, 1)

        # -- memory port ---------------------------------------------------------
        verdict = self._mem_verdict(m)
        for k, w in enumerate(walkers):
            wiring.connect(m, w.mem_req, getattr(arb, f"req{k}"))
            wiring.connect(m, getattr(arb, f"resp{k}"), w.mem_resp)
            m.d.comb += w.mem_verdict.eq(verdict)
        wiring.connect(m, arb.mem_req, wiring.flipped(self.mem_req))
        wiring.connect(m, wiring.flipped(self.mem_resp), arb.mem_resp)
        m.d.comb += [ev.mem_reads.eq(arb.read_issued), ev.mem_cas.eq(arb.cas_issued)]

        # -- requests in flight: S1, park slots, walkers -------------------------
        Pending = data.StructLayout({
            "gpa": GPA_BITS, "access": Access, "tag": TAG_BITS, "ctx": ctx_bits,
            "pml4": 40, "ad_enabled": 1, "ctx_valid": 1,
            "stale": 1,          # its context was flushed since it was taken: install nothing
        })
        s0 = Signal(Pending)
        s1 = Signal(Pending)
        s1_valid = Signal()
        n_park = self.park_slots
        park = Array(Signal(Pending, name=f"park{i}") for i in range(n_park))
        park_valid = Signal(n_park)
        park_ready = Signal(n_park)          # its walk has answered: look it up again
        park_wait = Array(Signal(range(n_walk) if n_walk > 1 else 1, name=f"park{i}_walker")
                          for i in range(n_park))
        w_ctx = Array(Signal(ctx_bits, name=f"walker{k}_ctx") for k in range(n_walk))
        w_ad = Signal(n_walk)
        w_stale = Signal(n_walk)
        w_busy = Signal(n_walk)

        # -- S0: a replay, else a new request ---------------------------------------
        # A parked request whose walk has answered moves into the replay register first
        # (chosen in the cycle it wakes, so no later than before), so that S0's mux in front
        # of the TLB read selects between one register and the port.
        rp = Signal(Pending)
        rp_valid = Signal()
        # S0's choice again, for the TLB's and the caches' compares: one register steering
        # every S0 compare of the unit was a long, wide net on ECP5.  The copies must differ
        # from rp_valid and from each other, or yosys merges them back: one holds the
        # complement, the other the complement too but computed from rp_valid (below).
        rp_empty_tlb = Signal(init=1)
        rp_empty_psc = Signal(init=1)
        slot_bits = range(n_park) if n_park > 1 else 1
        # A new context gets its id first.  No new request in the cycle an INVEPT is taken:
        # its flush is registered and acts on the next edge, so every request taken from
        # the INVEPT's edge on is covered.
        new_ok = (~eptp.valid | ctxs.ready) & ~self.invept.valid
        s1_advance = Signal()
        new_req = Signal(Pending)          # a request from the port
        p = self.translate_req.payload
        m.d.comb += [new_req.gpa.eq(p.gpa), new_req.access.eq(p.access), new_req.tag.eq(p.tag),
                     new_req.ctx.eq(ctxs.cur_id), new_req.pml4.eq(eptp.pml4),
                     new_req.ad_enabled.eq(eptp.ad_enabled), new_req.ctx_valid.eq(eptp.valid)]
        m.d.comb += s0.eq(Mux(rp_valid, rp, new_req))
        s0_valid = rp_valid | (self.translate_req.valid & new_ok)
        m.d.comb += self.translate_req.ready.eq(s1_advance & ~rp_valid & new_ok)
        fire = Signal()
        m.d.comb += fire.eq(s1_advance & s0_valid)
        with m.If(fire):
            m.d.sync += [s1.eq(s0), s1.stale.eq(s0.stale | flushed(s0.ctx)), s1_valid.eq(1)]
            m.d.comb += ev.lookups.eq(1)
        with m.Elif(s1_advance):
            m.d.sync += s1_valid.eq(0)
        with m.Else():
            m.d.sync += s1.stale.eq(s1.stale | flushed(s1.ctx))

        # -- S1: compare -----------------------------------------------------------
        tlb_hit = Signal()          # an entry holds the page
        tlb_ok = Signal()           # and allows the access (checked per way, in the TLB)
        tlb_entry = None
        if self.tlb is not None:
            m.submodules.tlb = tlb = self.tlb
            # the TLB holds the page, context and access of S0 itself, as s1 does here
            m.d.comb += [tlb.lookup_en.eq(fire),
                         tlb.lookup_page.eq(Mux(rp_empty_tlb, new_req.gpa[12:], rp.gpa[12:])),
                         tlb.lookup_ctx.eq(Mux(rp_empty_tlb, new_req.ctx, rp.ctx)),
                         tlb.lookup_access.eq(Mux(rp_empty_tlb, new_req.access, rp.access)),
                         tlb.flush.eq(flush),
                         tlb_hit.eq(tlb.hit & ~s1.stale), tlb_ok.eq(tlb.ok & ~s1.stale)]
            tlb_entry = tlb.entry
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
        if self.tlb is not None:
            m.d.comb += tlb.drop.eq(bad_hit)

        # The translation of a hit is built in its own signal (zero for a refused request;
        # gated by the S1 register's EPTP validity rather than by the compare's verdict, which
        # would add a level and a wide fanout to the S1 path: a miss never sends it), and every
        # field of the response is then assigned unconditionally: a hit has no exit
        # qualification and restarted no walk, so those fields are zero.
        hit = Signal(data.StructLayout({"hpa": PA_BITS, "page_size": PageSize,
                                        "memtype": 3, "level": Level}))
        if tlb_entry is not None:
            page = tlb_entry.hpa_page
            with m.If(s1.ctx_valid):
                m.d.comb += [hit.page_size.eq(tlb.size), hit.memtype.eq(tlb_entry.memtype)]
                with m.Switch(tlb.size):
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

        # -- S1 resolves into the response port, the skid register or S2 ----------
        # S1 moves on whenever the skid register and S2 can take its result, whatever
        # the compare says: the compare then only steers data, and stays off the
        # enables of S0/S1 (the unit's critical path).
        skid = Signal(TranslateResponse)
        skid_full = Signal()
        s2 = Signal(Pending)
        s2_valid = Signal()
        s2_dropped = Signal()          # S2 holds a hit that lacked the permission or D
        s2_start = Signal(data.StructLayout({"level": Level, "table": 40, "perms": 3}))
        s2_leaving = Signal()
        # S2 must be empty (not merely leaving): its dispatch logic stays off S1's enables,
        # at the cost of a bubble after each miss
        m.d.comb += s1_advance.eq(~s1_valid | (~skid_full & ~s2_valid))
        s1_resolves = s1_valid & s1_advance
        answer = refuse | good_hit

        # -- the response port: the skid register, then walkers, then S1 ----------
        # An offer not taken is offered again, unchanged (the stream contract): the
        # source is held, so a walker answering meanwhile, or S1's answer moving into
        # the skid register, waits its turn.
        w_resp_any = Signal()
        w_resp_sel = Signal(range(n_walk) if n_walk > 1 else 1)
        for k in reversed(range(n_walk)):
            with m.If(walkers[k].resp.valid):
                m.d.comb += [w_resp_any.eq(1), w_resp_sel.eq(k)]
        held = Signal()                   # last cycle's offer was not taken
        held_skid = Signal()              # ... and came from (or went into) the skid register
        held_walker = Signal.like(w_resp_sel)
        use_skid = Signal()
        use_walker = Signal()
        resp_walker = Signal.like(w_resp_sel)     # the walker on the port, with use_walker
        with m.If(held & held_skid):
            m.d.comb += use_skid.eq(1)
        with m.Elif(held):
            m.d.comb += [use_walker.eq(1), resp_walker.eq(held_walker)]
        with m.Elif(skid_full):
            m.d.comb += use_skid.eq(1)
        with m.Elif(w_resp_any):
            m.d.comb += [use_walker.eq(1), resp_walker.eq(w_resp_sel)]
        w_done = Signal(n_walk)           # walker k's response leaves this cycle
        for k, w in enumerate(walkers):
            m.d.comb += [w.resp.ready.eq(self.translate_resp.ready & use_walker & (resp_walker == k)),
                         w_done[k].eq(w.resp.valid & w.resp.ready)]
        with m.If(use_skid):
            m.d.comb += [self.translate_resp.valid.eq(1), self.translate_resp.payload.eq(skid)]
        with m.Elif(use_walker):
            for k, w in enumerate(walkers):
                with m.If(resp_walker == k):
                    m.d.comb += [self.translate_resp.valid.eq(1),
                                 self.translate_resp.payload.eq(w.resp.payload)]
        with m.Else():
            # only when S1 moves on, or the same answer would leave twice
            m.d.comb += [self.translate_resp.valid.eq(answer & s1_resolves),
                         self.translate_resp.payload.eq(hit_resp)]
        m.d.sync += [held.eq(self.translate_resp.valid & ~self.translate_resp.ready),
                     held_skid.eq(~use_walker),        # S1's answer not taken goes to the skid
                     held_walker.eq(resp_walker)]
        s1_direct = ~use_skid & ~use_walker & self.translate_resp.ready
        with m.If(use_skid & self.translate_resp.ready):
            m.d.sync += skid_full.eq(0)
        # the registers load whenever S1 moves on; only their valid bits follow the compare
        with m.If(s1_resolves & ~s1_direct):
            m.d.sync += [skid.eq(hit_resp), skid_full.eq(answer)]
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
        # up in S1 beside the TLB and registered with S2.  If the caches change in
        # between, S2 may start a full walk (a fill it missed) or from an entry dropped
        # since (a fault from it walks again): both correct.  A flush marks S2 stale.
        start = Signal(s2_start.shape())
        m.d.comb += [start.level.eq(Level.PML4E), start.table.eq(s1.pml4), start.perms.eq(0b111)]
        for level, below in ((Level.PML4E, Level.PDPTE), (Level.PDPTE, Level.PDE), (Level.PDE, Level.PTE)):
            psc = self.pscs[level]
            m.d.comb += [psc.lookup_en.eq(fire),
                         psc.lookup_key.eq(Mux(rp_empty_psc, new_req.gpa, rp.gpa)[psc.lo:]),
                         psc.lookup_ctx.eq(Mux(rp_empty_psc, new_req.ctx, rp.ctx)),
                         psc.flush.eq(flush)]
            use = Signal(name=f"use_{level.name.lower()}_cache")
            m.d.comb += use.eq(psc.hit & ~s1.stale)
            with m.If(use):           # lower levels come later and win
                m.d.comb += [start.level.eq(below), start.table.eq(psc.table), start.perms.eq(psc.perms)]
        # Which walkers walk S1's page, compared here and registered with S2 so that the
        # 36-bit page compare stays off S2's dispatch (and the walker's first read).  No walk
        # starts while S1 resolves (S2 is empty then), so a walker's page and context cannot
        # change before S2 uses this; S2 still checks that the walker is busy and not stale.
        s2_walking = Signal(n_walk)
        with m.If(s1_resolves):
            m.d.sync += [s2.eq(s1), s2.stale.eq(s1.stale | flushed(s1.ctx)), s2_valid.eq(miss),
                         s2_dropped.eq(bad_hit), s2_start.eq(start),
                         s2_walking.eq(Cat((w_ctx[k] == s1.ctx) & (w.page == s1.gpa[12:])
                                           for k, w in enumerate(walkers)))]
        with m.Elif(s2_leaving):
            m.d.sync += s2_valid.eq(0)
        with m.Elif(s2_valid):
            m.d.sync += s2.stale.eq(s2.stale | flushed(s2.ctx))

        # -- S2, a miss: park behind a walk of the same page, or start a walk ------
        same_page = Signal(n_walk)
        for k, w in enumerate(walkers):
            m.d.comb += same_page[k].eq(w_busy[k] & ~w_stale[k] & s2_walking[k])
        merge_walker = Signal.like(w_resp_sel)
        for k in reversed(range(n_walk)):
            with m.If(same_page[k]):
                m.d.comb += merge_walker.eq(k)
        free_park = Signal(slot_bits)
        for i in reversed(range(n_park)):
            with m.If(~park_valid[i]):
                m.d.comb += free_park.eq(i)
        free_walker = Signal.like(w_resp_sel)
        walker_idle = Signal(n_walk)
        for k, w in enumerate(walkers):
            m.d.comb += walker_idle[k].eq(w.req.ready)
        for k in reversed(range(n_walk)):
            with m.If(walker_idle[k]):
                m.d.comb += free_walker.eq(k)

        parked = Signal()
        dispatched = Signal()
        m.d.comb += [
            parked.eq(s2_valid & same_page.any() & ~park_valid.all()),
            dispatched.eq(s2_valid & ~same_page.any() & walker_idle.any()),
            s2_leaving.eq(parked | dispatched),
        ]
        with m.If(s2_leaving):
            m.d.comb += [ev.misses.eq(1), ev.dropped.eq(s2_dropped)]
        with m.If(parked):
            m.d.comb += ev.merged.eq(1)
            m.d.sync += [
                park[free_park].eq(s2),
                park[free_park].stale.eq(s2.stale | flushed(s2.ctx)),
                park_wait[free_park].eq(merge_walker),
                park_valid.bit_select(free_park, 1).eq(1),
                park_ready.bit_select(free_park, 1).eq(0),
            ]

        start_level = s2_start.level
        start_table = s2_start.table
        start_perms = s2_start.perms
        with m.If(dispatched):
            m.d.comb += ev.walks.eq(1)
            with m.Switch(start_level):
                with m.Case(Level.PTE):
                    m.d.comb += ev.psc_hits_pde.eq(1)
                with m.Case(Level.PDE):
                    m.d.comb += ev.psc_hits_pdpte.eq(1)
                with m.Case(Level.PDPTE):
                    m.d.comb += ev.psc_hits_pml4e.eq(1)

        for k, w in enumerate(walkers):
            go = dispatched & (free_walker == k)
            p = w.req.payload
            m.d.comb += [
                w.req.valid.eq(go),
                p.gpa.eq(s2.gpa), p.access.eq(s2.access), p.tag.eq(s2.tag),
                p.pml4.eq(s2.pml4), p.ad_enabled.eq(s2.ad_enabled), p.ctx_valid.eq(1),
                p.start_level.eq(start_level), p.start_table.eq(start_table),
                p.start_perms.eq(start_perms),
            ]
            with m.If(go):
                m.d.sync += [w_busy[k].eq(1), w_ctx[k].eq(s2.ctx), w_ad[k].eq(s2.ad_enabled),
                             w_stale[k].eq(s2.stale | flushed(s2.ctx))]
            with m.Else():
                with m.If(w_done[k]):
                    m.d.sync += w_busy[k].eq(0)
                m.d.sync += w_stale[k].eq(w_stale[k] | flushed(w_ctx[k]))

        # -- a walker answers: fill the caches (a cycle later), wake its park slots -
        fw = Signal(range(n_walk) if n_walk > 1 else 1)
        m.d.comb += fw.eq(resp_walker)
        done_any = w_done.any()
        # the answering walker's own response, not the port's: the port's mux also carries
        # S1's hit, which must not reach the fill registers
        resp = Signal(TranslateResponse)
        Fill = data.StructLayout({
            "page": GPA_BITS - 12, "ctx": ctx_bits, "size": PageSize, "hpa_page": PA_BITS - 12,
            "memtype": 3, "leaf": Level, "perms": 3, "d": 1,
            "walked": len(walkers[0].walked),
            "tables": data.ArrayLayout(40, 3),        # next-table frames, PDE..PML4E
            "table_perms": data.ArrayLayout(3, 3),
        })
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
                             sel.walked.eq(w.walked), sel.ctx.eq(w_ctx[k])]
        leaf = resp.level.as_value()
        m.d.comb += [
            sel.size.eq(resp.page_size), sel.hpa_page.eq(resp.hpa[12:]),
            sel.memtype.eq(resp.memtype), sel.leaf.eq(resp.level),
            sel.perms.eq(sel_perms_at[leaf]),
            # D is set in memory now, or A/D is off and writes need no D
            sel.d.eq(~w_ad.bit_select(fw, 1) | (sel_access == Access.WRITE) | sel_entries[leaf].d),
        ]
        for i in range(3):
            m.d.comb += [sel.tables[i].eq(sel_entries[i + 1].addr),
                         sel.table_perms[i].eq(sel_perms_at[i + 1])]
        # A successful walk of a context not flushed since it started, nor now, installs.
        # The install lands a cycle after the response: a flush in that cycle still wins
        # (the TLB and caches drop a fill of a context being flushed).
        m.d.sync += [
            fill.eq(sel),
            fill_valid.eq(done_any & (resp.outcome == Outcome.OK) & ~w_stale.bit_select(fw, 1)
                          & ~flushed(sel.ctx)),
        ]
        if self.tlb is not None:
            m.d.comb += [
                tlb.fill.eq(fill_valid),
                tlb.fill_size.eq(fill.size),
                tlb.fill_page.eq(fill.page),
                tlb.fill_ctx.eq(fill.ctx),
                tlb.fill_entry.hpa_page.eq(fill.hpa_page),
                tlb.fill_entry.perms.eq(fill.perms),
                tlb.fill_entry.memtype.eq(fill.memtype),
                tlb.fill_entry.d.eq(fill.d),
            ]
        for level, psc in self.pscs.items():
            if not psc.entries:
                continue         # nothing to fill (caches off, or a level without a cache)
            i = level.value
            m.d.comb += [
                psc.fill.eq(fill_valid & fill.walked[i - 1] & (fill.leaf.as_value() < i)),
                psc.fill_key.eq(fill.page[psc.lo - 12:]), psc.fill_ctx.eq(fill.ctx),
                psc.next_fill_sel.eq(fw),
                psc.fill_table.eq(fill.tables[i - 1]), psc.fill_perms.eq(fill.table_perms[i - 1]),
            ]
            for k, w in enumerate(walkers):
                m.d.comb += [psc.next_fill_keys[k].eq(w.page[psc.lo - 12:]),
                             psc.next_fill_ctxs[k].eq(w_ctx[k])]
        with m.If(done_any):
            m.d.comb += ev.walks_completed.eq(1)

        # a fault through a cached entry: forget that entry (first walker if several)
        drop_walker = Signal.like(fw)
        for k in reversed(range(n_walk)):
            with m.If(walkers[k].psc_drop):
                m.d.comb += drop_walker.eq(k)
        for psc in self.pscs.values():
            m.d.comb += psc.drop_ctx.eq(w_ctx[drop_walker])
            for k, w in enumerate(walkers):
                with m.If(drop_walker == k):
                    m.d.comb += [psc.drop.eq(w.psc_drop), psc.drop_key.eq(w.page[psc.lo - 12:])]

        # Park slots wake a cycle after their walker's answer, so that the replay's S0 read
        # comes after the TLB has written the walk's result; a woken slot moves into the
        # replay register as soon as it is free (or being taken by S0), leaving the park.
        w_done_q = Signal(n_walk)
        m.d.sync += w_done_q.eq(w_done)
        waking = Signal(n_park)
        for i in range(n_park):
            m.d.comb += waking[i].eq(park_valid[i] & (park_ready[i]
                                                      | w_done_q.bit_select(park_wait[i], 1)))
            with m.If(park_valid[i] & w_done_q.bit_select(park_wait[i], 1)):
                m.d.sync += park_ready[i].eq(1)
            with m.If(park_valid[i]):
                m.d.sync += park[i].stale.eq(park[i].stale | flushed(park[i].ctx))
        wake_sel = Signal(slot_bits)
        for i in reversed(range(n_park)):
            with m.If(waking[i]):
                m.d.comb += wake_sel.eq(i)
        m.d.sync += rp_empty_psc.eq(Mux(~rp_valid | fire, ~waking.any(), ~rp_valid))
        with m.If(~rp_valid | fire):          # S0 takes the replay register when it has one
            m.d.sync += [rp_valid.eq(waking.any()), rp_empty_tlb.eq(~waking.any())]
            with m.If(waking.any()):
                m.d.sync += [rp.eq(park[wake_sel]),
                             rp.stale.eq(park[wake_sel].stale | flushed(park[wake_sel].ctx)),
                             park_valid.bit_select(wake_sel, 1).eq(0),
                             park_ready.bit_select(wake_sel, 1).eq(0)]
        with m.Else():
            m.d.sync += rp.stale.eq(rp.stale | flushed(rp.ctx))

        m.d.comb += [
            ev.walk_cycles.eq(sum(~walker_idle[k] for k in range(n_walk))),
            ev.cas_retries.eq(sum(w.lost_race for w in walkers)),
        ]
        if self.checker is not None:
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
            covered = Signal(n_walk, name="check_inv_covered")
            global_inv = self.invept.valid & (self.invept.payload.kind == InveptKind.GLOBAL)
            for k, w in enumerate(walkers):
                with m.If(w.req.valid & w.req.ready):
                    m.d.sync += covered[k].eq(global_inv)
                with m.Elif(global_inv):
                    m.d.sync += covered[k].eq(1)
            fill_covered = Signal(name="check_fill_covered")
            m.d.sync += fill_covered.eq(done_any & covered.bit_select(fw, 1))
            m.d.sync += Assert(~(fill_valid & fill_covered),
                               "cache fill from a walk a global INVEPT covered")
        return m

    def _mem_verdict(self, m):
        # every walker judges the response's data with the same check: make it once, here
        m.submodules.entry_check = check = EntryCheck(maxphyaddr=self.maxphyaddr,
                                                      execute_only=self.execute_only)
        m.d.comb += check.entry.eq(self.mem_resp.payload.data)
        return check.verdict


class PredecodedPageWalkUnit(PageWalkUnit):
    """:class:`PageWalkUnit` whose memory adapter checks each entry before registering it.

    ``mem_resp_verdict`` is :class:`~hw.entry_check.EntryCheck`'s verdict on
    ``mem_resp.payload.data``, valid with it (for reads; a CAS answer's is not
    looked at).  The adapter computes it from the bus data on the way into its
    response register, so the walkers' decisions start from a register instead
    of following the check (the unit's critical path on ECP5).  The adapter
    must check with this unit's ``maxphyaddr`` and ``execute_only``.
    Behaviour and timing are :class:`PageWalkUnit`'s.
    """

    mem_resp_verdict: In(EntryVerdict)

    def _mem_verdict(self, m):
        return self.mem_resp_verdict
