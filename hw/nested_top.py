"""The nested unit: guest page walkers over the page-walk unit (docs/nested.md).

::

                 +------------------------------ NestedWalkUnit ------------------------------+
  cr3_value/load>| Cr3 check -> cr3 frame, cr3_valid/error        eptp_load, invept ----+      |
  linear_req --->|-> refused? (no valid CR3) --------------------------+              |      |
                 |-> GuestWalker x N --ept_req-> fixed priority -> PageWalkUnit <------+      |
                 |      |   ^         ept_resp<- tag >= 16-N  <-translate_resp --+ |         |
  translate_req >|------|---|------------------------^ (below: the GPA port)     | |         |
  translate_resp<|------|---|--------------------------------------- tag < 16-N--+ |         |
  linear_resp <--|<- refusal first, then the walkers' responses                    |         |
                 |      +-- mem --> MemArbiter (round robin) <--- mem ------------+          |
                 +-------------------------|-----------------------------------------------+
                                      mem_req / mem_resp

Promises:

* every guest access is walked by a :class:`~hw.guest_walker.GuestWalker`;
  each of its EPT translations goes through the unit's own translate port
  (TLB, paging-structure caches, walkers), so it is cached like any other;
* the walker's EPT requests and the external GPA requests (``translate_req``)
  share the unit's port by **fixed priority, guest walkers first** (walker 0
  before walker 1 ...); a grant shown and not yet taken is held, so the unit
  sees a stable payload.  A guest walker has one EPT request outstanding at
  most and waits for its answer, so the GPA port is never starved;
* **tags**: guest walker ``k`` uses the unit's tag ``2**TAG_BITS - 1 - k``
  (15 for the only one by default).  External GPA requests must use the
  others (0 .. ``2**TAG_BITS - 1 - guest_walkers``); the unit's responses are
  routed back by tag;
* the guest walkers' entry reads and A/D CASes and the unit's own memory
  traffic share ``mem_req``/``mem_resp`` through a round-robin
  :class:`~hw.mem_arbiter.MemArbiter` (port 0 the unit, port ``1+k`` guest
  walker ``k``); the memory must answer in request order;
* the guest context: ``cr3_load`` loads ``cr3_value`` (CR3[51:12]) at the
  edge if CR3[51:MAXPHYADDR] are clear (``cr3_valid``), else refuses it
  (``cr3_error``, no CR3).  With paging on and no valid CR3 a linear request
  is answered ``REFUSED`` and nothing is walked.  ``paging``, ``wp``,
  ``nxe`` are used as they are; EPTP[6] comes from the loaded EPTP.  The
  context (``cr3_load``, ``paging``, ``wp``, ``nxe``, ``eptp_load``) must
  not change while ``guest_idle`` is low;
* guest walker state is not cached: no combined TLB, no guest
  paging-structure caches, no INVVPID.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .guest_walker import GuestWalker
from .layouts import (
    FRAME_BITS, TAG_BITS, LinearOutcome, LinearRequest, LinearResponse, TranslateRequest,
)
from .mem_arbiter import MemArbiter
from .params import check_int
from .top import PageWalkUnit

__all__ = ["NestedWalkUnit", "guest_tag"]

# the members of the unit the nested unit passes through unchanged
UNIT_PORTS = ("translate_req", "translate_resp", "eptp_value", "eptp_load", "eptp_valid",
              "eptp_error", "invept", "invept_count", "counters", "counters_clear",
              "mem_req", "mem_resp")


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
    """``guest_walkers`` guest walkers over ``PageWalkUnit(**params)`` (see the module docstring).

    Parameters
    ----------
    guest_walkers : int
        Concurrent 2D walks, 1..8 (default 1); each reserves one translate tag.
    **params
        Everything else goes to :class:`~hw.top.PageWalkUnit` untouched
        (``max_outstanding`` also bounds the shared memory port).

    Members
    -------
    linear_req : In(stream.Signature(LinearRequest))
        A guest linear access; ready when a guest walker is idle (for a
        request to be refused: when every guest walker is idle).
    linear_resp : Out(stream.Signature(LinearResponse))
        The request's tag.  In request order with one guest walker; out of
        order (by tag) with several.
    cr3_value : In(FRAME_BITS)
        CR3[51:12] (the other bits are ignored: no PCID, PWT/PCD unused).
    cr3_load : In(1)
        Load ``cr3_value`` as CR3[51:12] at this edge.
    cr3_valid, cr3_error : Out(1)
        The last CR3 load was valid / refused (bits 51:MAXPHYADDR set).
    paging, wp, nxe : In(1)
        CR0.PG, CR0.WP, EFER.NXE.
    guest_idle : Out(1)
        No guest access in flight: the guest context and the EPTP may change.
    lost_race : Out(1)
        Strobe: a guest A/D CAS lost; that walker walks again from the top.
    translate_req : In(stream.Signature(TranslateRequest))
    translate_resp : Out(stream.Signature(TranslateResponse))
        The unit's GPA port for hypervisor-side users; tags below
        ``2**TAG_BITS - guest_walkers`` only.  Out of order.
    eptp_value, eptp_load, eptp_valid, eptp_error, invept, invept_count, counters, counters_clear
        The unit's (its counters count the guest walkers' EPT translations
        as lookups, but not their guest entry reads or CASes).
    mem_req : Out(stream.Signature(MemRequest))
    mem_resp : In(stream.Signature(MemResponse))
        The one memory port; the memory must answer in request order.

    Timing
    ------
    A linear request is taken the cycle it is offered to an idle walker;
    each guest level costs an EPT translation through the unit (a TLB hit: 2
    cycles with the arbiter; a cold walk 4(L+1)+2) and a memory round trip,
    the final GPA one more EPT translation.  A GPA request waits for a
    cycle in which no guest walker offers one.  Refusals answer the cycle
    after they are taken.  With one guest walker, linear responses leave in
    request order (no tag reordering is needed or done).
    """

    forwards_params_to = PageWalkUnit      # ``**params`` go to the unit unchanged

    def __init__(self, *, guest_walkers=1, **params):
        self.n_guest = check_int("guest_walkers", guest_walkers, 1, 8)
        self.unit = PageWalkUnit(**params)
        self.maxphyaddr = self.unit.maxphyaddr
        self.guest_walker_units = [GuestWalker(maxphyaddr=self.maxphyaddr)
                                   for _ in range(self.n_guest)]
        self.mem_arbiter = MemArbiter(ports=1 + self.n_guest,
                                      max_outstanding=self.unit.arbiter.max_outstanding)
        members = {name: self.unit.signature.members[name] for name in UNIT_PORTS}
        members.update({
            "linear_req": In(stream.Signature(LinearRequest)),
            "linear_resp": Out(stream.Signature(LinearResponse)),
            "cr3_value": In(FRAME_BITS), "cr3_load": In(1), "cr3_valid": Out(1), "cr3_error": Out(1),
            "paging": In(1), "wp": In(1), "nxe": In(1),
            "guest_idle": Out(1), "lost_race": Out(1),
        })
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.unit
        m.submodules.mem_arbiter = arb = self.mem_arbiter
        for k, gw in enumerate(self.guest_walker_units):
            m.submodules[f"guest_walker{k}"] = gw
        for name in ("eptp_value", "eptp_load", "counters_clear"):
            m.d.comb += getattr(unit, name).eq(getattr(self, name))
        for name in ("eptp_valid", "eptp_error", "invept_count", "counters"):
            m.d.comb += getattr(self, name).eq(getattr(unit, name))
        wiring.connect(m, wiring.flipped(self.invept), unit.invept)

        wiring.connect(m, unit.mem_req, arb.req[0])
        wiring.connect(m, arb.resp[0], unit.mem_resp)
        for k, gw in enumerate(self.guest_walker_units):
            wiring.connect(m, gw.mem_req, arb.req[1 + k])
            wiring.connect(m, arb.resp[1 + k], gw.mem_resp)
        wiring.connect(m, arb.mem_req, wiring.flipped(self.mem_req))
        wiring.connect(m, wiring.flipped(self.mem_resp), arb.mem_resp)

        self._connect_translate(m)
        self._connect_linear(m)
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

    def _connect_linear(self, m):
        """The guest context, the linear request dispatch, refusals and the responses."""
        gws = self.guest_walker_units
        cr3 = Signal(FRAME_BITS)
        ept_ad = self.unit.eptp_register.ad_enabled
        v = self.cr3_value
        cr3_ok = v[self.maxphyaddr - 12:] == 0         # CR3[51:MAXPHYADDR]
        with m.If(self.cr3_load):
            m.d.sync += [self.cr3_valid.eq(cr3_ok), self.cr3_error.eq(~cr3_ok),
                         cr3.eq(Mux(cr3_ok, v, 0))]
        for gw in gws:
            m.d.comb += [gw.cr3.eq(cr3), gw.paging.eq(self.paging), gw.wp.eq(self.wp),
                         gw.nxe.eq(self.nxe), gw.ept_ad.eq(ept_ad)]

        # a refusal: registered, answered before any walker's response
        refused = Signal(LinearResponse)
        refused_valid = Signal()
        all_idle = Signal()
        m.d.comb += all_idle.eq(Cat(gw.req.ready for gw in gws).all())
        m.d.comb += self.guest_idle.eq(all_idle & ~refused_valid)
        refuse = self.paging & ~self.cr3_valid
        req = self.linear_req
        with m.If(refuse):
            m.d.comb += req.ready.eq(all_idle & ~refused_valid)
            with m.If(req.valid & req.ready):
                m.d.sync += [refused_valid.eq(1), refused.outcome.eq(LinearOutcome.REFUSED),
                             refused.tag.eq(req.payload.tag)]
        with m.Else():
            # the first idle walker takes it
            for k in reversed(range(len(gws))):
                with m.If(gws[k].req.ready):
                    m.d.comb += [gws[k].req.valid.eq(req.valid & ~refused_valid),
                                 req.ready.eq(~refused_valid)]
                    for j in range(k + 1, len(gws)):    # those after it stay out
                        m.d.comb += gws[j].req.valid.eq(0)
        for gw in gws:
            m.d.comb += gw.req.payload.eq(req.payload)

        taken = Signal()
        sources = [(refused_valid, refused, taken)]
        sources += [(gw.resp.valid, gw.resp.payload, gw.resp.ready) for gw in gws]
        _priority(m, "linear", sources, self.linear_resp)
        with m.If(taken & refused_valid):
            m.d.sync += refused_valid.eq(0)
        m.d.comb += self.lost_race.eq(Cat(gw.lost_race for gw in gws).any())
