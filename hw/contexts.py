"""The context table: maps the loaded EPTP to a small context id.

The TLB and paging-structure caches tag entries with a context id instead of
the 40-bit EPTP[51:12], so that one cycle is enough to invalidate a context
(the ids and valid bits are flip-flops).  A slot holds EPTP[51:12] and the
A/D-enable bit: the same tables walked with and without A/D cache
differently (a write may hit an entry without D only when A/D is off).

* When a valid EPTP is loaded that no slot holds, the next cycle allocates a
  slot (a free one, else round-robin) and flushes whatever that id cached;
  ``ready`` is low during that cycle.
* INVEPT single-context flushes the slots whose EPTP[51:12] equals the tag;
  INVEPT global flushes every slot.  ``flush`` is combinational: it acts on
  the edge that takes the INVEPT.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import InveptKind, InveptRequest

__all__ = ["ContextTable"]


class ContextTable(wiring.Component):
    @staticmethod
    def check(contexts):
        if isinstance(contexts, bool) or not isinstance(contexts, int) or not 1 <= contexts <= 64:
            raise ValueError(f"contexts must be an integer in 1..64, not {contexts!r}")

    def __init__(self, *, contexts=4):
        self.check(contexts)
        self.contexts = contexts
        super().__init__({
            "eptp_valid": In(1),
            "pml4": In(40),
            "ad_enabled": In(1),
            "ready": Out(1),                  # the loaded EPTP has a slot: cur_id is good
            "cur_id": Out(max(1, ceil_log2(contexts))),
            "invept": In(stream.Signature(InveptRequest)),   # always ready
            "flush": Out(contexts),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.contexts
        valid = Signal(n)
        pml4 = Array(Signal(40, name=f"pml4_{i}") for i in range(n))
        ad = Signal(n)
        rr = Signal(range(n))

        match = Signal(n)
        m.d.comb += match.eq(Cat(valid[i] & (pml4[i] == self.pml4) & (ad[i] == self.ad_enabled)
                                 for i in range(n)))
        m.d.comb += self.ready.eq(self.eptp_valid & match.any())
        for i in range(n):
            with m.If(match[i]):
                m.d.comb += self.cur_id.eq(i)

        victim = Signal(range(n))
        m.d.comb += victim.eq(rr)
        for i in reversed(range(n)):
            with m.If(~valid[i]):
                m.d.comb += victim.eq(i)
        reuse = Signal(n)
        with m.If(self.eptp_valid & ~match.any()):
            m.d.comb += reuse.eq((1 << victim)[:n])
            m.d.sync += [valid.eq(valid | reuse), pml4[victim].eq(self.pml4),
                         ad.bit_select(victim, 1).eq(self.ad_enabled)]
            with m.If(valid.all()):
                m.d.sync += rr.eq(Mux(rr == n - 1, 0, rr + 1))

        m.d.comb += self.invept.ready.eq(1)
        by_invept = Signal(n)
        with m.If(self.invept.valid):
            with m.If(self.invept.payload.kind == InveptKind.GLOBAL):
                m.d.comb += by_invept.eq(~0)
            with m.Else():
                m.d.comb += by_invept.eq(Cat(valid[i] & (pml4[i] == self.invept.payload.tag)
                                             for i in range(n)))
        m.d.comb += self.flush.eq(by_invept | reuse)
        return m
