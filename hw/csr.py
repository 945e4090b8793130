"""The control/status registers: an AXI4-Lite slave (32-bit data).

Register map (byte offsets; every register is one 32-bit word; the low two
address bits are ignored):

======  ===============  ====  ==================================================
offset  name             acc   meaning
======  ===============  ====  ==================================================
0x000   ID               RO    0x45505457 ("EPTW")
0x004   VERSION          RO    0x00010000 (major.minor = 1.0)
0x008   NUM_COUNTERS     RO    number of counter fields N
0x00C   COUNTERS_CLEAR   WO    a write with bit 0 set pulses ``counters_clear``; reads 0
0x010   EPTP_LO          RW    EPTP[31:0]
0x014   EPTP_HI          RW    EPTP[63:32]; a write loads the EPTP: ``eptp_load``
                               pulses for one cycle with ``eptp_value`` = {HI, LO}
0x018   EPTP_STATUS      RO    bit 0 ``eptp_valid``, bit 1 ``eptp_error`` (inputs)
0x020   INVEPT_KIND      RW    bit 0: 0 single-context, 1 global
0x024   INVEPT_TAG_LO    RW    tag[31:0] (tag = EPTP[51:12])
0x028   INVEPT_TAG_HI    RW    tag[39:32] in bits 7:0
0x02C   INVEPT_TRIGGER   WO    any write sends one ``invept`` request {KIND, TAG}; reads 0
0x030   INVEPT_COUNT     RO    the ``invept_count`` input
0x100   COUNTER[i]_LO    RO    at 0x100 + 8*i: bits 31:0 of counter field i
0x104   COUNTER[i]_HI    RO    at 0x104 + 8*i: bits 63:32 of counter field i
======  ===============  ====  ==================================================

Counters are the fields of the ``counters`` layout, in field order, each
zero-extended to 64 bits.  Reading a counter's LO word snapshots its HI word;
the next read of that counter's HI word returns the snapshot, so LO-then-HI
is a consistent 64-bit value even while the counter counts.

Errors: a read of an unmapped offset answers SLVERR with data 0; a write to an
unmapped or read-only offset answers SLVERR and changes nothing.  Byte strobes
apply to the RW registers; a write to EPTP_HI or INVEPT_TRIGGER acts whatever
the strobes.

Timing: a read answers (RVALID) the cycle after its AR handshake; a write
answers (BVALID) the cycle after both its AW and W have been taken, and its
effect (register, ``eptp_load`` / ``counters_clear`` pulse, ``invept`` valid)
is visible in that same cycle.  ``invept`` is a stream: its valid stays up until ready, and a
second trigger write waits (no B) while the first is not taken.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature, Resp
from .layouts import FRAME_BITS, InveptRequest
from .params import check_int

__all__ = ["CsrBlock", "CSR_ID", "CSR_VERSION", "Reg", "COUNTER_BASE"]

CSR_ID = 0x45505457
CSR_VERSION = 0x0001_0000
COUNTER_BASE = 0x100


class Reg:
    """Byte offsets of the registers."""
    ID = 0x000
    VERSION = 0x004
    NUM_COUNTERS = 0x008
    COUNTERS_CLEAR = 0x00C
    EPTP_LO = 0x010
    EPTP_HI = 0x014
    EPTP_STATUS = 0x018
    INVEPT_KIND = 0x020
    INVEPT_TAG_LO = 0x024
    INVEPT_TAG_HI = 0x028
    INVEPT_TRIGGER = 0x02C
    INVEPT_COUNT = 0x030

    @staticmethod
    def counter_lo(i):
        return COUNTER_BASE + 8 * i

    @staticmethod
    def counter_hi(i):
        return COUNTER_BASE + 8 * i + 4


def _merge(old, new, strb):
    return Cat(Mux(strb[b], new[8 * b:8 * b + 8], old[8 * b:8 * b + 8]) for b in range(4))


class CsrBlock(wiring.Component):
    """AXI4-Lite register block (the register map is in the module docstring).

    Parameters
    ----------
    counters : data.StructLayout or None
        The counter fields readable at ``COUNTER_BASE``, each 1..64 bits.
    addr_width : int
        8..32 (default 12); must leave room for every counter.

    Members
    -------
    bus : In(AXI4LiteSignature(addr_width, 32))
    eptp_value : Out(64)
    eptp_load : Out(1)
        Pulses for one cycle when EPTP_HI is written.
    eptp_valid, eptp_error : In(1)
    invept : Out(stream.Signature(InveptRequest))
        One request per INVEPT_TRIGGER write, held until taken.
    invept_count : In(32)
    counters : In(counters)
    counters_clear : Out(1)
        Pulses for one cycle on a COUNTERS_CLEAR write with bit 0 set.

    Timing
    ------
    A read answers the cycle after its AR handshake; a write answers the
    cycle after both AW and W are taken, and acts in that same cycle.
    """

    def __init__(self, counters=None, *, addr_width=12):
        if counters is None:
            counters = data.StructLayout({})
        if not isinstance(counters, data.StructLayout):
            raise ValueError(f"CsrBlock counters must be a data.StructLayout, not {counters!r}")
        for name, f in counters:
            if not 1 <= f.width <= 64:
                raise ValueError(f"CsrBlock counter {name!r} is {f.width} bits wide; "
                                 f"counters must be 1..64 bits")
        check_int("CsrBlock addr_width", addr_width, 8, 32)
        n = len(list(counters))
        if COUNTER_BASE + 8 * n > 1 << addr_width:
            raise ValueError(f"CsrBlock addr_width {addr_width} is too narrow for {n} counters "
                             f"(they end at {COUNTER_BASE + 8 * n:#x})")
        self.counter_layout = counters
        self.counter_names = [name for name, _ in counters]
        self.addr_width = addr_width
        super().__init__({
            "bus": In(AXI4LiteSignature(addr_width, 32)),
            "eptp_value": Out(64),
            "eptp_load": Out(1),
            "eptp_valid": In(1),
            "eptp_error": In(1),
            "invept": Out(stream.Signature(InveptRequest)),
            "invept_count": In(32),
            "counters": In(counters),
            "counters_clear": Out(1),     # one-cycle pulse
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        n_counters = len(self.counter_names)

        eptp_lo = Signal(32)
        eptp_hi = Signal(32)
        inv_kind = Signal(1)
        inv_tag_lo = Signal(32)
        inv_tag_hi = Signal(FRAME_BITS - 32)        # the tag above its low word
        m.d.comb += self.eptp_value.eq(Cat(eptp_lo, eptp_hi))

        raw = self.counters.as_value()
        counter_words = []
        for name, f in self.counter_layout:
            v = raw[f.offset:f.offset + f.width].as_unsigned()
            wide = Signal(64, name=f"counter_{name}")
            m.d.comb += wide.eq(v)
            counter_words.append(wide)

        # --- reads: one at a time, answered the cycle after AR ----------------------------
        snap_hi = Signal(32)          # HI word captured by the last LO read
        snap_idx = Signal(range(max(n_counters, 1)))
        snap_valid = Signal()
        m.d.comb += bus.arready.eq(~bus.rvalid)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(0), bus.rresp.eq(Resp.OKAY)]
            # registers are aligned 32-bit words: any other address is an error
            with m.If(bus.araddr[:2] != 0):
                m.d.sync += bus.rresp.eq(Resp.SLVERR)
            with m.Else():
                with m.Switch(bus.araddr[2:]):
                    for off, value in ((Reg.ID, CSR_ID), (Reg.VERSION, CSR_VERSION),
                                       (Reg.NUM_COUNTERS, n_counters), (Reg.COUNTERS_CLEAR, 0),
                                       (Reg.EPTP_LO, eptp_lo), (Reg.EPTP_HI, eptp_hi),
                                       (Reg.EPTP_STATUS, Cat(self.eptp_valid, self.eptp_error)),
                                       (Reg.INVEPT_KIND, inv_kind), (Reg.INVEPT_TAG_LO, inv_tag_lo),
                                       (Reg.INVEPT_TAG_HI, inv_tag_hi), (Reg.INVEPT_TRIGGER, 0),
                                       (Reg.INVEPT_COUNT, self.invept_count)):
                        with m.Case(off >> 2):
                            m.d.sync += bus.rdata.eq(value)
                    for i, word in enumerate(counter_words):
                        with m.Case(Reg.counter_lo(i) >> 2):
                            m.d.sync += [bus.rdata.eq(word[:32]), snap_hi.eq(word[32:]),
                                         snap_idx.eq(i), snap_valid.eq(1)]
                        with m.Case(Reg.counter_hi(i) >> 2):
                            m.d.sync += bus.rdata.eq(Mux(snap_valid & (snap_idx == i),
                                                         snap_hi, word[32:]))
                            m.d.sync += snap_valid.eq(0)
                    with m.Default():
                        m.d.sync += bus.rresp.eq(Resp.SLVERR)

        # --- writes: AW and W taken independently, performed when both are in -------------
        aw_full = Signal()
        aw_addr = Signal(self.addr_width - 2)
        aw_misaligned = Signal()
        w_full = Signal()
        w_data = Signal(32)
        w_strb = Signal(4)
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr[2:]),
                         aw_misaligned.eq(bus.awaddr[:2] != 0)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        m.d.sync += [self.eptp_load.eq(0), self.counters_clear.eq(0)]
        with m.If(self.invept.ready):
            m.d.sync += self.invept.valid.eq(0)

        # a trigger waits while the previous INVEPT is not taken: backpressure via B
        trigger_busy = (aw_addr == Reg.INVEPT_TRIGGER >> 2) & self.invept.valid
        with m.If(aw_full & w_full & (~bus.bvalid | bus.bready) & ~trigger_busy):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1), bus.bresp.eq(Resp.OKAY)]
            with m.If(aw_misaligned):              # registers are aligned 32-bit words
                m.d.sync += bus.bresp.eq(Resp.SLVERR)
            with m.Else():
                with m.Switch(aw_addr):
                    with m.Case(Reg.COUNTERS_CLEAR >> 2):
                        m.d.sync += self.counters_clear.eq(w_data[0])
                    with m.Case(Reg.EPTP_LO >> 2):
                        m.d.sync += eptp_lo.eq(_merge(eptp_lo, w_data, w_strb))
                    with m.Case(Reg.EPTP_HI >> 2):
                        m.d.sync += [eptp_hi.eq(_merge(eptp_hi, w_data, w_strb)), self.eptp_load.eq(1)]
                    with m.Case(Reg.INVEPT_KIND >> 2):
                        with m.If(w_strb[0]):
                            m.d.sync += inv_kind.eq(w_data[0])
                    with m.Case(Reg.INVEPT_TAG_LO >> 2):
                        m.d.sync += inv_tag_lo.eq(_merge(inv_tag_lo, w_data, w_strb))
                    with m.Case(Reg.INVEPT_TAG_HI >> 2):
                        with m.If(w_strb[0]):
                            m.d.sync += inv_tag_hi.eq(w_data[:FRAME_BITS - 32])
                    with m.Case(Reg.INVEPT_TRIGGER >> 2):
                        m.d.sync += [
                            self.invept.valid.eq(1),
                            self.invept.payload.kind.eq(inv_kind),
                            self.invept.payload.tag.eq(Cat(inv_tag_lo, inv_tag_hi)),
                        ]
                    with m.Default():
                        m.d.sync += bus.bresp.eq(Resp.SLVERR)
        return m
