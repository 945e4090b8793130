"""The context table: maps the loaded EPTP to a small context id.

The TLB and paging-structure caches tag entries with a context id instead of
the 40-bit EPTP[51:12], so that one cycle is enough to invalidate a context
(the ids and valid bits are flip-flops).  A slot holds EPTP[51:12] and the
A/D-enable bit: the same tables walked with and without A/D cache
differently (a write may hit an entry without D only when A/D is off).

Every decision is registered, so the 40-bit compares never drive the TLB's
valid bits or the request pipeline in the same cycle (they were the unit's
critical path when the flush was combinational):

* The EPTP being loaded (``load`` with ``load_pml4``/``load_ad``, the cycle
  before :class:`~hw.eptp.EptpRegister` shows it) is compared with the slots
  in that cycle.  A slot holding it: ``ready`` and ``cur_id`` are good from
  the edge that loads the EPTP.  No slot: that edge allocates one (a free one,
  else round-robin), ``flush`` clears whatever that id cached during the
  next cycle, and ``ready`` rises a cycle later.  (The same cycles as when the
  compare was made after the load.)
* INVEPT single-context flushes the slots whose EPTP[51:12] equals the tag;
  INVEPT global flushes every slot.  ``flush`` is registered: it is high in
  the cycle *after* the one that takes the INVEPT, and so acts on the edge
  after it.  The unit takes no translate request in the INVEPT's own cycle
  (``hw.top``), so every request it takes from the INVEPT's edge on is
  covered, as if the flush had acted on that edge.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import FRAME_BITS, InveptKind, InveptRequest
from .params import check_int

__all__ = ["ContextTable"]


class ContextTable(wiring.Component):
    """EPTP[51:12] and A/D-enable to a context id, and the flushes that go with it.

    Parameters
    ----------
    contexts : int
        Slots (context ids), 1..64.

    Members
    -------
    load : In(1)
        An EPTP is loaded at this edge (``load_ok``: it is valid).
    load_ok : In(1)
    load_pml4 : In(FRAME_BITS)
    load_ad : In(1)
    ready : Out(1)
        The loaded EPTP has a slot: ``cur_id`` is good.
    cur_id : Out(range(contexts))
    invept : In(stream.Signature(InveptRequest))
        Always ready.
    flush : Out(contexts)
        Registered: the contexts whose cached entries are cleared at the next edge.

    Timing
    ------
    A known EPTP is ready with its id from the edge that loads it; a new one
    gets a slot at that edge, ``flush`` names the slot in the next cycle, and
    ``ready`` rises the cycle after that.  An INVEPT taken in cycle ``t``
    shows on ``flush`` in ``t+1``.  A full table replaces round robin.
    """

    @staticmethod
    def check(contexts):
        check_int("contexts", contexts, 1, 64)

    def __init__(self, *, contexts=4):
        self.check(contexts)
        self.contexts = contexts
        super().__init__({
            "load": In(1),                    # an EPTP is loaded at this edge
            "load_ok": In(1),                 # it is architecturally valid
            "load_pml4": In(FRAME_BITS),          # its EPTP[51:12]
            "load_ad": In(1),                 # its EPTP[6]
            "ready": Out(1),                  # the loaded EPTP has a slot: cur_id is good
            "cur_id": Out(max(1, ceil_log2(contexts))),
            "invept": In(stream.Signature(InveptRequest)),   # always ready
            "flush": Out(contexts),           # registered: see the module docstring
        })

    def elaborate(self, platform):
        m = Module()
        n = self.contexts
        valid = Signal(n)
        pml4 = Array(Signal(FRAME_BITS, name=f"pml4_{i}") for i in range(n))
        ad = Signal(n)
        rr = Signal(range(n))

        match = Signal(n)
        m.d.comb += match.eq(Cat(valid[i] & (pml4[i] == self.load_pml4) & (ad[i] == self.load_ad)
                                 for i in range(n)))
        hit_id = Signal.like(self.cur_id)
        for i in range(n):
            with m.If(match[i]):
                m.d.comb += hit_id.eq(i)

        victim = Signal(range(n))
        m.d.comb += victim.eq(rr)
        for i in reversed(range(n)):
            with m.If(~valid[i]):
                m.d.comb += victim.eq(i)

        # a slot allocated at the last edge: its old contents are flushed now, then ready
        allocated = Signal()
        m.d.sync += allocated.eq(0)
        with m.If(allocated):
            m.d.sync += self.ready.eq(1)
        alloc = Signal(n)
        with m.If(self.load):
            with m.If(self.load_ok & match.any()):
                m.d.sync += [self.ready.eq(1), self.cur_id.eq(hit_id)]
            with m.Elif(self.load_ok):
                m.d.comb += alloc.eq((1 << victim)[:n])
                m.d.sync += [
                    self.ready.eq(0), self.cur_id.eq(victim), allocated.eq(1),
                    valid.eq(valid | alloc), pml4[victim].eq(self.load_pml4),
                    ad.bit_select(victim, 1).eq(self.load_ad),
                ]
                with m.If(valid.all()):
                    m.d.sync += rr.eq(Mux(rr == n - 1, 0, rr + 1))
            with m.Else():
                m.d.sync += self.ready.eq(0)

        m.d.comb += self.invept.ready.eq(1)
        by_invept = Signal(n)
        with m.If(self.invept.valid):
            with m.If(self.invept.payload.kind == InveptKind.GLOBAL):
                m.d.comb += by_invept.eq(~0)
            with m.Else():
                m.d.comb += by_invept.eq(Cat(valid[i] & (pml4[i] == self.invept.payload.tag)
                                             for i in range(n)))
        m.d.sync += self.flush.eq(by_invept | alloc)
        return m
