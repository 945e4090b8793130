"""The nested unit: guest page walkers and their caches over the page-walk unit (docs/nested.md).

::

                 +------------------------------- NestedWalkUnit -------------------------------+
  cr3/vpid load >| CR3, VPID registers (refused: bad CR3, VPID 0)      eptp_load, invept ---+     |
  invvpid ------>| INVVPID / MOV CR3 / mode change --inv--> combined TLB, guest PSCs <-flush-+     |
  linear_req --->|-> refused? | combined-TLB hit? --(1 cycle)--> local answer ---------+    |     |
                 |   miss (guest PSC lookup: where to start)                          |    |     |
                 |-> GuestWalker x N --ept_req-> fixed priority -> PageWalkUnit <------+-- -+     |
                 |      |   ^         ept_resp<- tag >= 16-N  <-translate_resp --+ |   |          |
  translate_req >|------|---|------------------------^ (below: the GPA port)     | |   |          |
  translate_resp<|------|---|--------------------------------------- tag < 16-N--+ |   |          |
  linear_resp <--|<- walkers' answers (fill the caches), then the local answer ---------+          |
                 |      +-- mem --> MemArbiter (round robin) <--- mem ------------+               |
                 +-------------------------|----------------------------------------------------+
                                      mem_req / mem_resp

Promises:

* a linear request is refused (``REFUSED``, nothing walked) without a valid
  VPID, or with paging on and no valid CR3.  Otherwise it is looked up, in
  the cycle it is taken, in the **combined TLB** (LA -> HPA, tagged by VPID
  and EPT context id, at the smaller of the guest and EPT page sizes): an
  entry answers only the accesses its filling walk proved (a write fill:
  reads and writes, so a write never hits an entry without guest D and,
  with EPTP[6] = 1, EPT D; a CPL-3 fill also CPL 0), the next cycle;
* a miss goes to an idle :class:`~hw.guest_walker.GuestWalker` (a miss to a
  page a walker is walking waits for it, then looks up again), starting
  below the deepest **guest paging-structure cache** hit (the next guest
  table's GPA and HPA and the permissions above: no EPT translation for the
  levels above).  Each EPT translation goes through the unit's translate
  port (its TLB, paging-structure caches, walkers);
* an OK answer of a walk that no invalidation met fills the combined TLB
  and the guest PSCs of the levels it read (their A is set by then), an
  edge after the answer; a combined-TLB fill answers lookups in that cycle
  already;
* **invalidation** (docs/nested.md, caching): INVVPID address drops the
  combined entries covering the LA in that VPID and all of that VPID's
  guest PSC entries; single drops the VPID's; all drops everything; MOV to
  CR3 (``cr3_load``) drops the current VPID's; a change of CR0.PG/WP or
  EFER.NXE drops everything; INVEPT (and a context id reused for a new
  EPTP) drops the combined and guest PSC entries of its contexts, through
  the unit's context table.  No linear request is taken in such a cycle,
  and a walk in flight then installs nothing.  INVVPID drops no
  guest-physical mapping (the unit's TLB);
* the walkers' EPT requests and the external GPA requests share the
  unit's port by **fixed priority, guest walkers first**; guest walker
  ``k`` uses the unit's tag ``2**TAG_BITS - 1 - k``; external GPA requests
  must use the others.  The unit's responses are routed back by tag;
* the guest walkers' entry reads and A/D CASes and the unit's own memory
  traffic share ``mem_req``/``mem_resp`` through a round-robin
  :class:`~hw.mem_arbiter.MemArbiter` (port 0 the unit, port ``1+k`` guest
  walker ``k``); the memory must answer in request order;
* the context (``cr3_value``, ``paging``, ``wp``, ``nxe``, ``eptp_load``,
  ``vpid_load``) should change only while ``guest_idle`` is high.
"""

import inspect
from types import SimpleNamespace

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .combined_cache import CombinedCache, InvScope
from .guest_walker import GuestWalker
from .layouts import (
    FRAME_BITS, LA_BITS, NESTED_EVENTS, TAG_BITS, VPID_BITS, Access, CombinedEntry, GuestTableEntry,
    InvvpidKind, InvvpidRequest, Level, LinearOutcome, LinearRequest, LinearResponse, MemOp,
    NestedCounters, PageSize, TranslateRequest,
)
from .mem_arbiter import MemArbiter
from .params import check_int
from .perf import PerfCounterBank
from .top import PageWalkUnit

__all__ = ["NestedWalkUnit", "guest_tag"]

# the members of the unit the nested unit passes through unchanged
UNIT_PORTS = ("translate_req", "translate_resp", "eptp_value", "eptp_load", "eptp_valid",
              "eptp_error", "invept", "invept_count", "counters", "counters_clear",
              "mem_req", "mem_resp")

# the guest paging-structure caches: the level whose entries they hold -> the level a hit
# starts the walk at
GPSC_LEVELS = {Level.PML4E: Level.PDPTE, Level.PDPTE: Level.PDE, Level.PDE: Level.PTE}


def guest_tag(k):
    """The unit's translate tag reserved for guest walker ``k``."""
    return (1 << TAG_BITS) - 1 - k


def _priority(m, name, sources, sink):
    """Fixed-priority arbiter of ``sources`` ((valid, payload, ready) triples, first
    wins) onto the ``sink`` stream; a grant offered and not taken is held."""
    n = len(sources)
    grant = Signal(range(max(n, 2)), name=f"{name}_grant")
    held = Signal.like(grant, name=f"{name}_held")
    locked = Signal(name=f"{name}_locked")
    with m.If(locked):
        m.d.comb += grant.eq(held)
    with m.Else():
        for i in reversed(range(n)):
            with m.If(sources[i][0]):
                m.d.comb += grant.eq(i)
    for i, (valid, payload, ready) in enumerate(sources):
        with m.If(grant == i):
            m.d.comb += [sink.valid.eq(valid), sink.payload.eq(payload)]
        m.d.comb += ready.eq(sink.ready & (grant == i))
    m.d.sync += [locked.eq(sink.valid & ~sink.ready), held.eq(grant)]


class NestedWalkUnit(wiring.Component):
    """``guest_walkers`` guest walkers and their caches over ``PageWalkUnit(**params)``
    (see the module docstring).

    Parameters
    ----------
    guest_walkers : int
        Concurrent 2D walks, 1..8; each reserves one translate tag.
    combined_tlb : int
        Combined-TLB entries (LA -> HPA), 0..64 (0: no combined TLB).
    guest_psc_pml4e, guest_psc_pdpte, guest_psc_pde : int
        Guest paging-structure cache entries of that level, 0..64.
    **params
        Everything else goes to :class:`~hw.top.PageWalkUnit` untouched
        (``max_outstanding`` also bounds the shared memory port).

    Members
    -------
    linear_req : In(stream.Signature(LinearRequest))
        A guest linear access.  Not ready in a cycle that takes an invalidation
        or changes the context, nor while a miss waits for a walker.
    linear_resp : Out(stream.Signature(LinearResponse))
        The request's tag; out of order (hits pass walks in flight).
    cr3_value : In(FRAME_BITS)
        CR3[51:12] (the other bits are ignored: no PCID, PWT/PCD unused).
    cr3_load : In(1)
        MOV to CR3: load ``cr3_value`` at this edge and drop the current VPID's
        combined mappings and guest paging-structure cache entries.
    cr3_valid, cr3_error : Out(1)
        The last CR3 load was valid / refused (bits 51:MAXPHYADDR set).
    vpid_value : In(VPID_BITS)
    vpid_load : In(1)
        Load ``vpid_value`` at this edge (0 is refused).
    vpid_valid, vpid_error : Out(1)
        The last VPID load was valid / refused.
    paging, wp, nxe : In(1)
        CR0.PG, CR0.WP, EFER.NXE.  A change drops every combined mapping.
    invvpid : In(stream.Signature(InvvpidRequest))
        Always ready.
    invvpid_error : Out(1)
        The last INVVPID was refused (VPID 0 for an ADDRESS or SINGLE kind, or a
        non-canonical LA): it dropped nothing.
    guest_idle : Out(1)
        No guest access in flight: the guest context and the EPTP may change.
    lost_race : Out(1)
        Strobe: a guest A/D CAS lost; that walker walks again from the top.
    nested_counters : Out(NestedCounters)
        :data:`~hw.layouts.NESTED_EVENTS`, cleared with ``counters`` by
        ``counters_clear``.
    translate_req : In(stream.Signature(TranslateRequest))
    translate_resp : Out(stream.Signature(TranslateResponse))
        The unit's GPA port for hypervisor-side users; tags below
        ``2**TAG_BITS - guest_walkers`` only.  Out of order.
    eptp_value, eptp_load, eptp_valid, eptp_error, invept, invept_count, counters, counters_clear
        The unit's.  An INVEPT also drops the combined mappings and guest
        paging-structure cache entries of the contexts it covers.
    mem_req : Out(stream.Signature(MemRequest))
    mem_resp : In(stream.Signature(MemResponse))
        The one memory port; the memory must answer in request order.

    Timing
    ------
    A combined-TLB hit taken in cycle ``t`` answers in ``t+1``.  A miss goes
    to an idle guest walker in the cycle it is taken; each guest level costs
    an EPT translation through the unit (a TLB hit: 2 cycles with the
    arbiter; a cold walk 4(L+1)+2) and a memory round trip, unless a guest
    paging-structure cache hit skips the levels above; the final GPA one
    more EPT translation.  An invalidation or context change covers every
    request taken from its edge on; walks in flight then install nothing.
    Counters show an event two cycles after it.
    """

    forwards_params_to = PageWalkUnit      # ``**params`` go to the unit unchanged
    LINEAR_CACHES = ("combined_tlb", "guest_psc_pml4e", "guest_psc_pdpte", "guest_psc_pde")

    @classmethod
    def caches_linear(cls, params):
        """Whether ``NestedWalkUnit(**params)`` keeps any combined mapping (a combined
        TLB or a guest paging-structure cache with entries)."""
        defaults = inspect.signature(cls.__init__).parameters
        return any(params.get(name, defaults[name].default) for name in cls.LINEAR_CACHES)

    def __init__(self, *, guest_walkers=1, combined_tlb=16, guest_psc_pml4e=2,
                 guest_psc_pdpte=4, guest_psc_pde=8, **params):
        self.n_guest = check_int("guest_walkers", guest_walkers, 1, 8)
        self.unit = PageWalkUnit(**params)
        self.maxphyaddr = self.unit.maxphyaddr
        contexts = self.unit.context_table.contexts
        self.guest_walker_units = [GuestWalker(maxphyaddr=self.maxphyaddr)
                                   for _ in range(self.n_guest)]
        self.mem_arbiter = MemArbiter(ports=1 + self.n_guest,
                                      max_outstanding=self.unit.arbiter.max_outstanding)
        self.ctlb = CombinedCache(entries=combined_tlb, key_bits=LA_BITS - 12, data=CombinedEntry,
                                  contexts=contexts, sized=True, inv_size_field="gsize",
                                  name="combined_tlb")
        sizes = {Level.PML4E: guest_psc_pml4e, Level.PDPTE: guest_psc_pdpte, Level.PDE: guest_psc_pde}
        self.gpscs = {level: CombinedCache(entries=n, key_bits=LA_BITS - 12 - 9 * level.value,
                                           data=GuestTableEntry, contexts=contexts,
                                           name=f"guest_psc_{level.name.lower()}")
                      for level, n in sizes.items()}
        self.perf = PerfCounterBank(NESTED_EVENTS)
        members = {name: self.unit.signature.members[name] for name in UNIT_PORTS}
        members.update({
            "linear_req": In(stream.Signature(LinearRequest)),
            "linear_resp": Out(stream.Signature(LinearResponse)),
            "cr3_value": In(FRAME_BITS), "cr3_load": In(1), "cr3_valid": Out(1), "cr3_error": Out(1),
            "vpid_value": In(VPID_BITS), "vpid_load": In(1), "vpid_valid": Out(1), "vpid_error": Out(1),
            "paging": In(1), "wp": In(1), "nxe": In(1),
            "invvpid": In(stream.Signature(InvvpidRequest)), "invvpid_error": Out(1),
            "guest_idle": Out(1), "lost_race": Out(1),
            "nested_counters": Out(NestedCounters),
        })
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.unit
        m.submodules.mem_arbiter = arb = self.mem_arbiter
        for k, gw in enumerate(self.guest_walker_units):
            m.submodules[f"guest_walker{k}"] = gw
        m.submodules.ctlb = self.ctlb
        for level, c in self.gpscs.items():
            m.submodules[f"guest_psc_{level.name.lower()}"] = c
        m.submodules.perf = self.perf
        for name in ("eptp_value", "eptp_load", "counters_clear"):
            m.d.comb += getattr(unit, name).eq(getattr(self, name))
        for name in ("eptp_valid", "eptp_error", "invept_count", "counters"):
            m.d.comb += getattr(self, name).eq(getattr(unit, name))
        wiring.connect(m, wiring.flipped(self.invept), unit.invept)
        m.d.comb += [self.perf.clear.eq(self.counters_clear),
                     self.nested_counters.eq(self.perf.counters)]

        wiring.connect(m, unit.mem_req, arb.req[0])
        wiring.connect(m, arb.resp[0], unit.mem_resp)
        for k, gw in enumerate(self.guest_walker_units):
            wiring.connect(m, gw.mem_req, arb.req[1 + k])
            wiring.connect(m, arb.resp[1 + k], gw.mem_resp)
        wiring.connect(m, arb.mem_req, wiring.flipped(self.mem_req))
        wiring.connect(m, wiring.flipped(self.mem_resp), arb.mem_resp)

        self._connect_translate(m)
        ctx = self._context(m)
        inval = self._invalidations(m, ctx)
        self._linear(m, ctx, inval)
        self._walker_events(m)
        return m

    def _connect_translate(self, m):
        """The guest walkers' EPT requests and the GPA port onto the unit's translate port."""
        unit, gws = self.unit, self.guest_walker_units
        sources = []
        for k, gw in enumerate(gws):
            req = Signal(TranslateRequest, name=f"guest{k}_ept_req")
            m.d.comb += [req.gpa.eq(gw.ept_req.payload.gpa), req.access.eq(gw.ept_req.payload.access),
                         req.tag.eq(guest_tag(k))]
            sources.append((gw.ept_req.valid, req, gw.ept_req.ready))
        ext = self.translate_req
        sources.append((ext.valid, ext.payload, ext.ready))
        _priority(m, "translate", sources, unit.translate_req)

        # responses back by tag
        resp = unit.translate_resp
        ours = Signal()
        for k, gw in enumerate(gws):
            mine = resp.payload.tag == guest_tag(k)
            p = gw.ept_resp.payload
            m.d.comb += [gw.ept_resp.valid.eq(resp.valid & mine),
                         p.outcome.eq(resp.payload.outcome), p.hpa.eq(resp.payload.hpa),
                         p.page_size.eq(resp.payload.page_size), p.memtype.eq(resp.payload.memtype),
                         p.qual.eq(resp.payload.qual)]
            with m.If(mine):
                m.d.comb += [ours.eq(1), resp.ready.eq(gw.ept_resp.ready)]
        m.d.comb += [self.translate_resp.payload.eq(resp.payload),
                     self.translate_resp.valid.eq(resp.valid & ~ours)]
        with m.If(~ours):
            m.d.comb += resp.ready.eq(self.translate_resp.ready)

    def _context(self, m):
        """CR3 and VPID registers; the EPT context the caches are tagged with."""
        ctx = SimpleNamespace(cr3=Signal(FRAME_BITS), vpid=Signal(VPID_BITS))
        v = self.cr3_value
        cr3_ok = v[self.maxphyaddr - 12:] == 0         # CR3[51:MAXPHYADDR]
        with m.If(self.cr3_load):
            m.d.sync += [self.cr3_valid.eq(cr3_ok), self.cr3_error.eq(~cr3_ok),
                         ctx.cr3.eq(Mux(cr3_ok, v, 0))]
        vpid_ok = self.vpid_value != 0
        with m.If(self.vpid_load):
            m.d.sync += [self.vpid_valid.eq(vpid_ok), self.vpid_error.eq(~vpid_ok),
                         ctx.vpid.eq(Mux(vpid_ok, self.vpid_value, 0))]
        ept_ad = self.unit.eptp_register.ad_enabled
        for gw in self.guest_walker_units:
            m.d.comb += [gw.cr3.eq(ctx.cr3), gw.paging.eq(self.paging), gw.wp.eq(self.wp),
                         gw.nxe.eq(self.nxe), gw.ept_ad.eq(ept_ad)]
        ctxs = self.unit.context_table
        ctx.id = ctxs.cur_id
        ctx.flush = ctxs.flush
        ctx.ok = Signal()          # the EPT context id is good: caches may be used
        m.d.comb += ctx.ok.eq(ctxs.ready & self.unit.eptp_valid)
        return ctx

    def _invalidations(self, m, ctx):
        """INVVPID, MOV to CR3 and mode changes onto the caches' ``inv`` ports; the
        context table's flushes (INVEPT, a reused context id) onto ``flush_ctx``."""
        inv = SimpleNamespace(scope=Signal(InvScope), gpsc_scope=Signal(InvScope),
                              key=Signal(LA_BITS - 12), vpid=Signal(VPID_BITS), any=Signal())
        modes = Cat(self.paging, self.wp, self.nxe)
        modes_r = Signal.like(modes)
        m.d.sync += modes_r.eq(modes)
        mode_change = Signal()
        m.d.comb += mode_change.eq(modes != modes_r)

        r = self.invvpid.payload
        m.d.comb += self.invvpid.ready.eq(1)
        la_hi = r.la[LA_BITS - 1:]
        bad = Signal()
        m.d.comb += bad.eq(((r.kind != InvvpidKind.ALL) & (r.vpid == 0))
                           | ((r.kind == InvvpidKind.ADDRESS) & (la_hi != 0) & ~la_hi.all()))
        taken = self.invvpid.valid & ~bad
        with m.If(self.invvpid.valid):
            m.d.sync += self.invvpid_error.eq(bad)

        # at most one scope per cycle: two at once (a rare coincidence) drop everything
        m.d.comb += [inv.key.eq(r.la[12:LA_BITS]), inv.vpid.eq(r.vpid)]
        with m.If(mode_change | (taken & self.cr3_load) | (taken & (r.kind == InvvpidKind.ALL))):
            m.d.comb += [inv.scope.eq(InvScope.ALL), inv.gpsc_scope.eq(InvScope.ALL)]
        with m.Elif(taken & (r.kind == InvvpidKind.ADDRESS)):
            # guest paging-structure entries are not per page: all of the VPID's go
            m.d.comb += [inv.scope.eq(InvScope.ADDRESS), inv.gpsc_scope.eq(InvScope.VPID)]
        with m.Elif(taken | self.cr3_load):
            m.d.comb += [inv.scope.eq(InvScope.VPID), inv.gpsc_scope.eq(InvScope.VPID)]
            with m.If(self.cr3_load):
                m.d.comb += inv.vpid.eq(ctx.vpid)
        m.d.comb += inv.any.eq(self.invvpid.valid | self.cr3_load | self.vpid_load | mode_change
                               | self.invept.valid | self.eptp_load)

        caches = [(self.ctlb, inv.scope)] + [(c, inv.gpsc_scope) for c in self.gpscs.values()]
        for cache, scope in caches:
            m.d.comb += [cache.inv.scope.eq(scope), cache.inv.vpid.eq(inv.vpid),
                         cache.inv.key.eq(inv.key[len(inv.key) - cache.key_bits:]),
                         cache.flush_ctx.eq(ctx.flush)]
        return inv

    def _linear(self, m, ctx, inval):
        """The linear request: refusal, combined-TLB hit, or a walk; the responses and fills."""
        gws = self.guest_walker_units
        req, p = self.linear_req, self.linear_req.payload
        page = p.la[12:LA_BITS]
        ev = self.perf.events

        # the combined TLB and the guest paging-structure caches, looked up in the request's cycle
        lk = self.ctlb.lookup[0]
        m.d.comb += [lk.key.eq(page), lk.vpid.eq(ctx.vpid), lk.ctx.eq(ctx.id)]
        # the fill registered this cycle answers as if installed (it lands at the edge)
        fills = self._fill_registers(m)
        pf = SimpleNamespace(**fills[self.ctlb])
        span = Mux(pf.data.size == PageSize.SIZE_1G, 18, Mux(pf.data.size == PageSize.SIZE_2M, 9, 0))
        pending = Signal()
        m.d.comb += pending.eq(pf.valid & ((pf.key ^ page) >> span == 0) & (pf.vpid == ctx.vpid)
                               & (pf.ctx == ctx.id) & ~ctx.flush.bit_select(pf.ctx, 1))
        e = Signal(CombinedEntry)
        m.d.comb += e.eq(Mux(pending, pf.data, lk.data))
        allowed = Mux(p.access == Access.WRITE, e.write,
                      Mux(p.access == Access.FETCH, e.fetch, e.read)) & (e.user | ~p.user)
        hit = Signal()
        m.d.comb += hit.eq((lk.hit | pending) & allowed & ctx.ok)
        start = Signal.like(gws[0].start)
        for level in (Level.PML4E, Level.PDPTE, Level.PDE):        # the deepest hit wins
            c = self.gpscs[level].lookup[0]
            m.d.comb += [c.key.eq(p.la[12 + 9 * level.value:LA_BITS]), c.vpid.eq(ctx.vpid),
                         c.ctx.eq(ctx.id)]
            with m.If(c.hit & ctx.ok):
                m.d.comb += [start.cached.eq(1), start.level.eq(GPSC_LEVELS[level]),
                             start.table.eq(c.data)]

        refuse = ~self.vpid_valid | (self.paging & ~self.cr3_valid)
        local = Signal(LinearResponse)            # a refusal or a hit, answered next cycle
        local_valid = Signal()
        local_taken = Signal()
        local_free = ~local_valid | local_taken

        # walkers: which is free, which walks the request's page (a miss there waits)
        busy = Cat(~gw.req.ready for gw in gws)
        w_page = [Signal(LA_BITS - 12, name=f"guest{k}_page") for k in range(len(gws))]
        w_ctx = [Signal.like(ctx.id, name=f"guest{k}_ctx") for k in range(len(gws))]
        w_stale = [Signal(name=f"guest{k}_stale") for k in range(len(gws))]
        # a miss to a page being walked waits for it
        same_page = Cat(busy[k] & (w_page[k] == page) for k in range(len(gws))).any()
        free = Signal(range(max(len(gws), 2)))
        for k in reversed(range(len(gws))):
            with m.If(~busy[k]):
                m.d.comb += free.eq(k)
        walk = Signal()
        m.d.comb += walk.eq(req.valid & ~inval.any & ~refuse & ~hit & ~same_page & ~busy.all())
        with m.If(~inval.any):
            with m.If(refuse | hit):
                m.d.comb += req.ready.eq(local_free)
            with m.Else():
                m.d.comb += req.ready.eq(~same_page & ~busy.all())
        for k, gw in enumerate(gws):
            m.d.comb += [gw.req.payload.eq(p), gw.start.eq(start),
                         gw.req.valid.eq(walk & (free == k))]
            # captured in every idle cycle (the walk's own once it is taken)
            with m.If(~busy[k]):
                m.d.sync += [w_page[k].eq(page), w_ctx[k].eq(ctx.id), w_stale[k].eq(~ctx.ok)]
            with m.Else():
                m.d.sync += w_stale[k].eq(w_stale[k] | inval.any | ctx.flush.bit_select(w_ctx[k], 1))

        with m.If(local_taken):
            m.d.sync += local_valid.eq(0)
        with m.If(req.valid & req.ready & (refuse | hit)):
            m.d.sync += local_valid.eq(1)
        # the answer is captured whenever the register is free, taken or not: only
        # ``local_valid`` waits for the handshake (which comes late, from the compares)
        with m.If(local_free):
            m.d.sync += [local.eq(0), local.tag.eq(p.tag)]
            with m.If(refuse):
                m.d.sync += local.outcome.eq(LinearOutcome.REFUSED)
            with m.Else():
                m.d.sync += [local.outcome.eq(LinearOutcome.OK),
                             local.gpa.eq(self._at_offset(e.gpa, p.la, e.size)),
                             local.hpa.eq(self._at_offset(e.hpa, p.la, e.size)),
                             local.page_size.eq(e.gsize), local.memtype.eq(e.memtype)]
        with m.If(req.valid & req.ready & ~refuse):
            m.d.comb += [ev.linear_lookups.eq(1), ev.ctlb_hits.eq(hit), ev.ctlb_misses.eq(~hit)]
        with m.If(walk):
            m.d.comb += ev.guest_walks.eq(1)
            with m.If(start.cached):
                for level, below in GPSC_LEVELS.items():
                    with m.If(start.level == below):
                        m.d.comb += ev[f"gpsc_hits_{level.name.lower()}"].eq(1)
        m.d.comb += self.guest_idle.eq(~busy.any() & ~local_valid)

        sources = [(gw.resp.valid, gw.resp.payload, gw.resp.ready) for gw in gws]
        sources.append((local_valid, local, local_taken))
        _priority(m, "linear", sources, self.linear_resp)
        self._fills(m, ctx, inval, w_ctx, w_stale, fills)

    @staticmethod
    def _at_offset(frame, la, size):
        """The byte address in ``frame``'s page of ``size`` at ``la``'s offset."""
        return Cat(la[:12], Mux(size == PageSize.SIZE_1G, Cat(la[12:30], frame[18:]),
                                Mux(size == PageSize.SIZE_2M, Cat(la[12:21], frame[9:]), frame)))

    def _fill_registers(self, m):
        """Per cache, a register for each member of its ``fill`` port, driving it: a fill is
        installed an edge after the answer it comes from, so the answer's handshake (the
        response port's ready, an input) does not reach the slots' write enables."""
        regs = {}
        for name, cache in [("ctlb", self.ctlb)] + [(f"gpsc_{lv.name.lower()}", c)
                                                    for lv, c in self.gpscs.items()]:
            r = {}
            for member in ("valid", "key", "vpid", "ctx", "data"):
                port = getattr(cache.fill, member)
                r[member] = Signal.like(port, name=f"{name}_fill_{member}")
                m.d.comb += port.eq(r[member])
            m.d.sync += r["valid"].eq(0)
            regs[cache] = r
        return regs

    def _fills(self, m, ctx, inval, w_ctx, w_stale, fills):
        """An OK answer of a walk not invalidated since it started fills (an edge later) the
        combined TLB and the guest paging-structure caches of the levels it read."""
        gws = self.guest_walker_units
        ev = self.perf.events
        f = SimpleNamespace(**fills[self.ctlb])
        for k, gw in enumerate(gws):
            res, info = gw.resp.payload, gw.info
            go = Signal(name=f"guest{k}_done")
            m.d.comb += go.eq(gw.resp.valid & gw.resp.ready & (res.outcome == LinearOutcome.OK))
            with m.If(go):
                m.d.comb += ev.guest_walks_completed.eq(1)
            with m.If(go & ~w_stale[k] & ~inval.any):
                size = Mux(res.page_size.as_value() < info.ept_size.as_value(),
                           res.page_size, info.ept_size)
                write = info.access == Access.WRITE
                m.d.sync += [f.valid.eq(1), f.key.eq(info.la[12:LA_BITS]), f.vpid.eq(ctx.vpid),
                             f.ctx.eq(w_ctx[k]),
                             f.data.size.eq(size), f.data.gsize.eq(res.page_size),
                             f.data.hpa.eq(res.hpa[12:]), f.data.gpa.eq(res.gpa[12:]),
                             f.data.memtype.eq(res.memtype),
                             f.data.read.eq(write | (info.access == Access.READ)),
                             f.data.write.eq(write), f.data.fetch.eq(info.access == Access.FETCH),
                             f.data.user.eq(info.user)]
                with m.If(self.paging):
                    for level, c in self.gpscs.items():
                        lv = level.value
                        g = fills[c]
                        with m.If((info.leaf_level.as_value() < lv) & (info.first_level.as_value() >= lv)):
                            m.d.sync += [g["valid"].eq(1), g["key"].eq(info.la[12 + 9 * lv:LA_BITS]),
                                         g["vpid"].eq(ctx.vpid), g["ctx"].eq(w_ctx[k]),
                                         g["data"].eq(info.tables[lv])]

    def _walker_events(self, m):
        ev, gws = self.perf.events, self.guest_walker_units
        reads = [gw.mem_req.valid & gw.mem_req.ready & (gw.mem_req.payload.op == MemOp.READ) for gw in gws]
        cases = [gw.mem_req.valid & gw.mem_req.ready & (gw.mem_req.payload.op == MemOp.CAS) for gw in gws]
        lookups = [gw.ept_req.valid & gw.ept_req.ready for gw in gws]
        m.d.comb += [ev.guest_mem_reads.eq(sum(reads)), ev.guest_mem_cas.eq(sum(cases)),
                     ev.ept_lookups.eq(sum(lookups)),
                     ev.guest_cas_retries.eq(sum(gw.lost_race for gw in gws)),
                     ev.ept_walks.eq(self.unit.walk_start.valid
                                     & (self.unit.walk_start.tag >= guest_tag(len(gws) - 1))),
                     ev.invvpids.eq(self.invvpid.valid), ev.cr3_loads.eq(self.cr3_load),
                     self.lost_race.eq(Cat(gw.lost_race for gw in gws).any())]
