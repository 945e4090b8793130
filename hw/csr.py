"""The control/status registers: an AXI4-Lite slave (32-bit data).

The register map is :data:`REGISTERS` (byte offsets; every register is one
32-bit word; the low two address bits must be 0).  ``docs/design.md`` holds it
as a table, :func:`register_table`'s text, and ``tests/test_csr_map.py``
checks both that table and every row's access against the block, so the
three cannot drift.  The guest-context section (offsets 0x040..0x074) exists
with ``guest=True`` only (the nested AXI top); without it those offsets are
unmapped.

Counters are the fields of the ``counters`` layout, in field order, each
zero-extended to 64 bits.  Reading a counter's LO word snapshots its HI word;
the next read of that counter's HI word returns the snapshot, so LO-then-HI
is a consistent 64-bit value even while the counter counts.

Errors: a read of an unmapped offset answers SLVERR with data 0; a write to an
unmapped or read-only offset answers SLVERR and changes nothing.  Byte strobes
apply to the RW registers; a write to a loading register (EPTP_HI, CR3_HI,
VPID) or a trigger acts whatever the strobes.

Timing: a read answers (RVALID) the cycle after its AR handshake; a write
answers (BVALID) the cycle after both its AW and W have been taken, and its
effect (register, ``eptp_load`` / ``cr3_load`` / ``vpid_load`` /
``counters_clear`` pulse, ``invept`` / ``invvpid`` valid) is visible in that
same cycle.  ``invept`` and ``invvpid`` are streams: a valid stays up until
ready, and a second trigger write waits (no B) while the first is not taken.
With ``guest=True``, a write to a guest-context register (EPTP_HI, CR3_HI,
GUEST_CTRL, VPID) raises ``context_hold`` once its AW and W are in, so that the
top holds new linear requests back, and acts the cycle after ``context_idle``
is seen high (the walks in flight are done); ``context_hold`` drops the cycle
after it acts.
"""

from typing import NamedTuple

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4LiteSignature, Resp
from .layouts import FRAME_BITS, InveptRequest
from .params import check_int

__all__ = ["CsrBlock", "CSR_ID", "CSR_VERSION", "Reg", "COUNTER_BASE", "REGISTERS", "RegInfo",
           "register_table", "CAPS_GUEST"]

CSR_ID = 0x45505457
CSR_VERSION = 0x0001_0001        # 1.1: CAPS and the guest-context section
COUNTER_BASE = 0x100
CAPS_GUEST = 1 << 0              # CAPS bit 0: the guest-context registers are present
VPID_BITS = 16
INVVPID_KIND_BITS = 2


class Reg:
    """Byte offsets of the registers."""
    ID = 0x000
    VERSION = 0x004
    NUM_COUNTERS = 0x008
    COUNTERS_CLEAR = 0x00C
    EPTP_LO = 0x010
    EPTP_HI = 0x014
    EPTP_STATUS = 0x018
    CAPS = 0x01C
    INVEPT_KIND = 0x020
    INVEPT_TAG_LO = 0x024
    INVEPT_TAG_HI = 0x028
    INVEPT_TRIGGER = 0x02C
    INVEPT_COUNT = 0x030
    # the guest context (guest=True only)
    CR3_LO = 0x040
    CR3_HI = 0x044
    CR3_STATUS = 0x048
    GUEST_CTRL = 0x04C
    GUEST_STATUS = 0x050
    VPID = 0x054
    VPID_STATUS = 0x058
    INVVPID_KIND = 0x060
    INVVPID_VPID = 0x064
    INVVPID_LA_LO = 0x068
    INVVPID_LA_HI = 0x06C
    INVVPID_TRIGGER = 0x070
    INVVPID_STATUS = 0x074

    @staticmethod
    def counter_lo(i):
        return COUNTER_BASE + 8 * i

    @staticmethod
    def counter_hi(i):
        return COUNTER_BASE + 8 * i + 4


class RegInfo(NamedTuple):
    offset: int
    name: str
    access: str         # RO, RW or WO (a WO register reads 0)
    meaning: str
    guest: bool = False  # present with ``guest=True`` only


REGISTERS = (
    RegInfo(Reg.ID, "ID", "RO", '0x45505457 ("EPTW")'),
    RegInfo(Reg.VERSION, "VERSION", "RO", "0x00010001 (major.minor = 1.1)"),
    RegInfo(Reg.NUM_COUNTERS, "NUM_COUNTERS", "RO", "number of counter fields N"),
    RegInfo(Reg.COUNTERS_CLEAR, "COUNTERS_CLEAR", "WO",
            "a write with bit 0 set pulses `counters_clear` (every counter to 0)"),
    RegInfo(Reg.EPTP_LO, "EPTP_LO", "RW", "EPTP[31:0]"),
    RegInfo(Reg.EPTP_HI, "EPTP_HI", "RW",
            "EPTP[63:32]; a write loads the EPTP: `eptp_load` pulses with {HI, LO}"),
    RegInfo(Reg.EPTP_STATUS, "EPTP_STATUS", "RO", "bit 0 EPTP valid, bit 1 EPTP refused"),
    RegInfo(Reg.CAPS, "CAPS", "RO", "bit 0: the guest-context registers (0x040..0x074) are present"),
    RegInfo(Reg.INVEPT_KIND, "INVEPT_KIND", "RW", "bit 0: 0 single-context, 1 global"),
    RegInfo(Reg.INVEPT_TAG_LO, "INVEPT_TAG_LO", "RW", "tag[31:0] (tag = EPTP[51:12])"),
    RegInfo(Reg.INVEPT_TAG_HI, "INVEPT_TAG_HI", "RW", "tag[39:32] in bits 7:0"),
    RegInfo(Reg.INVEPT_TRIGGER, "INVEPT_TRIGGER", "WO", "any write sends one INVEPT {KIND, TAG}"),
    RegInfo(Reg.INVEPT_COUNT, "INVEPT_COUNT", "RO", "INVEPTs taken by the unit"),
    RegInfo(Reg.CR3_LO, "CR3_LO", "RW", "CR3[31:12] in bits 31:12 (bits 11:0 read 0: no PCID)", True),
    RegInfo(Reg.CR3_HI, "CR3_HI", "RW",
            "CR3[51:32] in bits 19:0; a write loads CR3 (`cr3_load`, CR3[51:12])", True),
    RegInfo(Reg.CR3_STATUS, "CR3_STATUS", "RO",
            "bit 0 CR3 valid, bit 1 CR3 refused (bits 51:MAXPHYADDR set)", True),
    RegInfo(Reg.GUEST_CTRL, "GUEST_CTRL", "RW", "bit 0 CR0.PG, bit 1 CR0.WP, bit 2 EFER.NXE", True),
    RegInfo(Reg.GUEST_STATUS, "GUEST_STATUS", "RO", "bit 0: no guest access in flight", True),
    RegInfo(Reg.VPID, "VPID", "RW", "VPID in bits 15:0; a write loads it (`vpid_load`)", True),
    RegInfo(Reg.VPID_STATUS, "VPID_STATUS", "RO", "bit 0 VPID valid, bit 1 VPID refused (0)", True),
    RegInfo(Reg.INVVPID_KIND, "INVVPID_KIND", "RW",
            "bits 1:0: 0 address, 1 single, 2 all, 3 single keeping globals", True),
    RegInfo(Reg.INVVPID_VPID, "INVVPID_VPID", "RW", "the VPID to invalidate, bits 15:0", True),
    RegInfo(Reg.INVVPID_LA_LO, "INVVPID_LA_LO", "RW", "linear address[31:0] (kind 0)", True),
    RegInfo(Reg.INVVPID_LA_HI, "INVVPID_LA_HI", "RW", "linear address[63:32]", True),
    RegInfo(Reg.INVVPID_TRIGGER, "INVVPID_TRIGGER", "WO",
            "any write sends one INVVPID {KIND, VPID, LA}", True),
    RegInfo(Reg.INVVPID_STATUS, "INVVPID_STATUS", "RO",
            "bit 0: the last INVVPID was refused (VPID 0, or a non-canonical address)", True),
)
"""The register map below the counters, in offset order."""


def register_table() -> str:
    """:data:`REGISTERS` and the counters as a Markdown table (the one in docs/design.md)."""
    rows = ["| offset | register | access | meaning |", "|---|---|---|---|"]
    for r in REGISTERS:
        meaning = r.meaning + (" *(nested top only)*" if r.guest else "")
        rows.append(f"| `0x{r.offset:03X}` | {r.name} | {r.access} | {meaning} |")
    rows.append(f"| `0x{COUNTER_BASE:03X}` + 8i | COUNTER[i]_LO | RO | counter field i, bits 31:0 "
                f"(a read snapshots its HI word) |")
    rows.append(f"| `0x{COUNTER_BASE + 4:03X}` + 8i | COUNTER[i]_HI | RO | counter field i, bits 63:32 |")
    return "\n".join(rows)


def _merge(old, new, strb):
    """Byte-strobed write of ``new`` over ``old`` (any width up to 32 bits)."""
    width = len(old)
    merged = Cat(Mux(strb[b], new[8 * b:8 * b + 8], old[8 * b:8 * b + 8]) for b in range(4))
    return merged[:width]


class CsrBlock(wiring.Component):
    """AXI4-Lite register block (the register map is :data:`REGISTERS`).

    Parameters
    ----------
    counters : data.StructLayout or None
        The counter fields readable at ``COUNTER_BASE``, each 1..64 bits.
    addr_width : int
        8..32 (default 12); must leave room for every counter.
    guest : bool
        With the guest-context registers (default False).
    invvpid_layout : data.StructLayout or None
        With ``guest``: the INVVPID request's layout (fields ``kind``,
        ``vpid``, ``la``), the nested unit's.

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
    cr3_value : Out(FRAME_BITS)
        With ``guest``: CR3[51:12].
    cr3_load : Out(1)
        Pulses for one cycle when CR3_HI is written.
    cr3_valid, cr3_error : In(1)
    paging, wp, nxe : Out(1)
        GUEST_CTRL bits 0, 1, 2.
    context_idle : In(1)
        No guest access in flight: a context write may act (the next cycle).
    context_hold : Out(1)
        A context write is in (AW and W) and has not acted: hold new guest
        accesses back.  Driven by registers only.
    vpid_value : Out(16)
    vpid_load : Out(1)
        Pulses for one cycle when VPID is written.
    vpid_valid, vpid_error : In(1)
    invvpid : Out(stream.Signature(invvpid_layout))
        One request per INVVPID_TRIGGER write, held until taken.
    invvpid_error : In(1)

    Timing
    ------
    A read answers the cycle after its AR handshake; a write answers the
    cycle after both AW and W are taken (a context write: at the earliest the
    cycle after ``context_idle`` is seen high with ``context_hold``), and acts
    in that same cycle.
    """

    def __init__(self, counters=None, *, addr_width=12, guest=False, invvpid_layout=None):
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
        self.guest = bool(guest)
        members = {
            "bus": In(AXI4LiteSignature(addr_width, 32)),
            "eptp_value": Out(64),
            "eptp_load": Out(1),
            "eptp_valid": In(1),
            "eptp_error": In(1),
            "invept": Out(stream.Signature(InveptRequest)),
            "invept_count": In(32),
            "counters": In(counters),
            "counters_clear": Out(1),     # one-cycle pulse
        }
        if self.guest:
            if invvpid_layout is None:
                raise ValueError("CsrBlock with guest=True needs the INVVPID request layout")
            layout = data.Layout.cast(invvpid_layout)
            fields = {name: f.width for name, f in layout}
            if set(fields) != {"kind", "vpid", "la"} or fields["vpid"] != VPID_BITS \
                    or fields["kind"] != INVVPID_KIND_BITS or fields["la"] != 64:
                raise ValueError(f"CsrBlock invvpid_layout must have kind (2 bits), vpid (16) and "
                                 f"la (64), not {fields}")
            self.invvpid_layout = layout
            members.update({
                "cr3_value": Out(FRAME_BITS), "cr3_load": Out(1),
                "cr3_valid": In(1), "cr3_error": In(1),
                "paging": Out(1), "wp": Out(1), "nxe": Out(1),
                "context_idle": In(1), "context_hold": Out(1),
                "vpid_value": Out(VPID_BITS), "vpid_load": Out(1),
                "vpid_valid": In(1), "vpid_error": In(1),
                "invvpid": Out(stream.Signature(layout)),
                "invvpid_error": In(1),
            })
        elif invvpid_layout is not None:
            raise ValueError("CsrBlock invvpid_layout means nothing without guest=True")
        super().__init__(members)

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

        reads = {Reg.ID: CSR_ID, Reg.VERSION: CSR_VERSION, Reg.NUM_COUNTERS: n_counters,
                 Reg.COUNTERS_CLEAR: 0, Reg.EPTP_LO: eptp_lo, Reg.EPTP_HI: eptp_hi,
                 Reg.EPTP_STATUS: Cat(self.eptp_valid, self.eptp_error),
                 Reg.CAPS: CAPS_GUEST if self.guest else 0,
                 Reg.INVEPT_KIND: inv_kind, Reg.INVEPT_TAG_LO: inv_tag_lo,
                 Reg.INVEPT_TAG_HI: inv_tag_hi, Reg.INVEPT_TRIGGER: 0,
                 Reg.INVEPT_COUNT: self.invept_count}

        if self.guest:
            cr3_lo = Signal(20)                     # CR3[31:12]
            cr3_hi = Signal(FRAME_BITS - 20)        # CR3[51:32]
            ctrl = Signal(3)                        # PG, WP, NXE
            vpid = Signal(VPID_BITS)
            iv_kind = Signal(INVVPID_KIND_BITS)
            iv_vpid = Signal(VPID_BITS)
            iv_la_lo = Signal(32)
            iv_la_hi = Signal(32)
            m.d.comb += [
                self.cr3_value.eq(Cat(cr3_lo, cr3_hi)),
                Cat(self.paging, self.wp, self.nxe).eq(ctrl),
                self.vpid_value.eq(vpid),
            ]
            reads.update({
                Reg.CR3_LO: Cat(C(0, 12), cr3_lo), Reg.CR3_HI: cr3_hi,
                Reg.CR3_STATUS: Cat(self.cr3_valid, self.cr3_error),
                Reg.GUEST_CTRL: ctrl, Reg.GUEST_STATUS: self.context_idle,
                Reg.VPID: vpid, Reg.VPID_STATUS: Cat(self.vpid_valid, self.vpid_error),
                Reg.INVVPID_KIND: iv_kind, Reg.INVVPID_VPID: iv_vpid,
                Reg.INVVPID_LA_LO: iv_la_lo, Reg.INVVPID_LA_HI: iv_la_hi,
                Reg.INVVPID_TRIGGER: 0, Reg.INVVPID_STATUS: self.invvpid_error,
            })

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
                    for off, value in reads.items():
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
        aw_context = Signal()        # the address taken is a guest-context register's
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr[2:]),
                         aw_misaligned.eq(bus.awaddr[:2] != 0)]
            if self.guest:
                m.d.sync += aw_context.eq((bus.awaddr[:2] == 0) & (
                    (bus.awaddr[2:] == Reg.EPTP_HI >> 2) | (bus.awaddr[2:] == Reg.CR3_HI >> 2)
                    | (bus.awaddr[2:] == Reg.GUEST_CTRL >> 2) | (bus.awaddr[2:] == Reg.VPID >> 2)))
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        m.d.sync += [self.eptp_load.eq(0), self.counters_clear.eq(0)]
        with m.If(self.invept.ready):
            m.d.sync += self.invept.valid.eq(0)

        # a trigger waits while the previous INVEPT is not taken: backpressure via B
        busy = (aw_addr == Reg.INVEPT_TRIGGER >> 2) & self.invept.valid
        if self.guest:
            m.d.sync += [self.cr3_load.eq(0), self.vpid_load.eq(0)]
            with m.If(self.invvpid.ready):
                m.d.sync += self.invvpid.valid.eq(0)
            # a context write waits until no guest access is in flight (the nested unit's rule);
            # meanwhile the top holds new linear requests back (``context_hold``, from registers
            # only).  ``idle_held``: idle in the last cycle, with requests held then, so still
            # idle now (nothing can have entered): the write needs no path from the walkers'
            # state into its enables.
            idle_held = Signal()
            m.d.comb += self.context_hold.eq(aw_full & w_full & aw_context)
            m.d.sync += idle_held.eq(self.context_idle & self.context_hold)
            busy = busy | ((aw_addr == Reg.INVVPID_TRIGGER >> 2) & self.invvpid.valid) \
                | (self.context_hold & ~idle_held)
        with m.If(aw_full & w_full & (~bus.bvalid | bus.bready) & ~busy):
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
                    if self.guest:
                        self._guest_writes(m, w_data, w_strb, cr3_lo, cr3_hi, ctrl, vpid,
                                           iv_kind, iv_vpid, iv_la_lo, iv_la_hi)
                    with m.Default():
                        m.d.sync += bus.bresp.eq(Resp.SLVERR)
        return m

    def _guest_writes(self, m, w_data, w_strb, cr3_lo, cr3_hi, ctrl, vpid, iv_kind, iv_vpid,
                      iv_la_lo, iv_la_hi):
        """The guest section's cases of the write decode (inside its Switch)."""
        with m.Case(Reg.CR3_LO >> 2):
            m.d.sync += cr3_lo.eq(_merge(Cat(C(0, 12), cr3_lo), w_data, w_strb)[12:])
        with m.Case(Reg.CR3_HI >> 2):
            m.d.sync += [cr3_hi.eq(_merge(cr3_hi, w_data, w_strb)), self.cr3_load.eq(1)]
        with m.Case(Reg.GUEST_CTRL >> 2):
            m.d.sync += ctrl.eq(_merge(ctrl, w_data, w_strb))
        with m.Case(Reg.VPID >> 2):
            m.d.sync += [vpid.eq(_merge(vpid, w_data, w_strb)), self.vpid_load.eq(1)]
        with m.Case(Reg.INVVPID_KIND >> 2):
            m.d.sync += iv_kind.eq(_merge(iv_kind, w_data, w_strb))
        with m.Case(Reg.INVVPID_VPID >> 2):
            m.d.sync += iv_vpid.eq(_merge(iv_vpid, w_data, w_strb))
        with m.Case(Reg.INVVPID_LA_LO >> 2):
            m.d.sync += iv_la_lo.eq(_merge(iv_la_lo, w_data, w_strb))
        with m.Case(Reg.INVVPID_LA_HI >> 2):
            m.d.sync += iv_la_hi.eq(_merge(iv_la_hi, w_data, w_strb))
        with m.Case(Reg.INVVPID_TRIGGER >> 2):
            p = self.invvpid.payload
            m.d.sync += [self.invvpid.valid.eq(1), p.kind.eq(iv_kind), p.vpid.eq(iv_vpid),
                         p.la.eq(Cat(iv_la_lo, iv_la_hi))]
