"""Protocol checks on the unit's ports, as Amaranth ``Assert``s.

Watches the translate and memory ports only (it drives nothing), so any
simulation of the unit checks, every cycle:

- **handshakes**: a response or memory request offered and not taken is
  offered again the next cycle, unchanged (valid may not drop, the payload
  may not change until ``ready``);
- **one response per request**: a translate response carries the tag of a
  request in flight, which frees it; a request never reuses a tag in flight
  (the driver's side of the contract);
- **CAS only to an entry the walk read**: every compare-and-swap targets an
  address a walker read and compares against the very value that read
  returned (the last ``history`` read responses are kept); the swap only sets
  A (bit 8) and D (bit 9).

The assertions sit in the sync domain: they judge the values at the clock
edge, not the deltas of a testbench setting one port after another.  pysim
raises on a failed ``Assert``; the Verilator backend builds with
``--assert``.  ``PageWalkUnit(checks=False)``, the default for Verilog and
synthesis, leaves the block out.
"""

from amaranth import Module, Mux, Signal
from amaranth.hdl import Assert, Array
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from .layouts import PA_BITS, TAG_BITS, MemOp, MemRequest, MemResponse, TranslateResponse
from .params import check_int

__all__ = ["PortChecker"]

A_D = (1 << 8) | (1 << 9)


class PortChecker(wiring.Component):
    """The port protocol ``Assert``\\ s (see the module docstring); it drives nothing.

    Parameters
    ----------
    history : int
        Read responses remembered for the CAS check (at least 4).
    max_outstanding : int
        Memory requests the unit keeps in flight (sizes the FIFO of reads in flight).

    Members
    -------
    treq_valid, treq_ready, treq_tag : In
        The translate request handshake and its tag.
    tresp_valid, tresp_ready : In(1)
    tresp : In(TranslateResponse)
    mreq_valid, mreq_ready : In(1)
    mreq : In(MemRequest)
    mresp_valid, mresp_ready : In(1)
    mresp : In(MemResponse)

    Timing
    ------
    Each ``Assert`` judges the values at a clock edge, in the sync domain.
    """

    treq_valid: In(1)
    treq_ready: In(1)
    treq_tag: In(TAG_BITS)
    tresp_valid: In(1)
    tresp_ready: In(1)
    tresp: In(TranslateResponse)
    mreq_valid: In(1)
    mreq_ready: In(1)
    mreq: In(MemRequest)
    mresp_valid: In(1)
    mresp_ready: In(1)
    mresp: In(MemResponse)

    def __init__(self, history: int = 16, max_outstanding: int = 8):
        """``history``: read responses remembered for the CAS check (a walk's
        four reads plus what the other walkers read meanwhile);
        ``max_outstanding``: memory requests the unit keeps in flight."""
        self.history = check_int("history", history, 4)
        self.depth = 1 << max(1, (max_outstanding - 1).bit_length())   # a power of two: wraps
        super().__init__()

    def elaborate(self, platform):
        m = Module()

        # -- handshakes: held until taken, unchanged ---------------------------------
        for name, valid, ready, payload in (("translate_resp", self.tresp_valid, self.tresp_ready, self.tresp),
                                            ("mem_req", self.mreq_valid, self.mreq_ready, self.mreq)):
            stalled = Signal(name=f"{name}_stalled")
            held = Signal.like(payload.as_value(), name=f"{name}_held")
            m.d.sync += [stalled.eq(valid & ~ready), held.eq(payload.as_value())]
            with m.If(stalled):
                m.d.sync += Assert(valid, f"{name}: valid dropped before ready")
                m.d.sync += Assert(payload.as_value() == held, f"{name}: payload changed before ready")

        # -- one response per request ------------------------------------------------
        busy = Signal(1 << TAG_BITS)
        accept = self.treq_valid & self.treq_ready
        answer = self.tresp_valid & self.tresp_ready
        with m.If(accept):
            m.d.sync += Assert(~busy.bit_select(self.treq_tag, 1), "translate_req: tag reused while in flight")
        with m.If(answer):
            m.d.sync += Assert(busy.bit_select(self.tresp.tag, 1),
                               "translate_resp: tag not in flight (lost or duplicated response)")
        set_mask = Signal.like(busy)
        clr_mask = Signal.like(busy)
        m.d.comb += [set_mask.eq(accept << self.treq_tag), clr_mask.eq(answer << self.tresp.tag)]
        m.d.sync += busy.eq((busy & ~clr_mask) | set_mask)

        # -- CAS only to an entry read, against the value read -------------------------
        # memory responses come back in request order: a FIFO of the reads in flight
        depth = self.depth
        fifo = Array(Signal(PA_BITS + 1, name=f"inflight{i}") for i in range(depth))   # addr, is_read
        head = Signal(range(depth))
        tail = Signal(range(depth))
        issue = self.mreq_valid & self.mreq_ready
        retire = self.mresp_valid & self.mresp_ready
        with m.If(issue):
            m.d.sync += [fifo[tail].eq(self.mreq.addr | ((self.mreq.op == MemOp.READ) << PA_BITS)),
                         tail.eq(tail + 1)]
        with m.If(retire):
            m.d.sync += head.eq(head + 1)

        seen_addr = Array(Signal(PA_BITS, name=f"read{i}_addr") for i in range(self.history))
        seen_data = Array(Signal(64, name=f"read{i}_data") for i in range(self.history))
        seen_valid = Signal(self.history)
        slot = Signal(range(self.history))
        done = fifo[head]
        with m.If(retire & done[PA_BITS] & ~self.mresp.error):
            m.d.sync += [seen_addr[slot].eq(done[:PA_BITS]), seen_data[slot].eq(self.mresp.data),
                         seen_valid.eq(seen_valid | (1 << slot)),
                         slot.eq(Mux(slot == self.history - 1, 0, slot + 1))]

        with m.If(self.mreq_valid & (self.mreq.op == MemOp.CAS)):
            match = Signal(self.history)
            for i in range(self.history):
                m.d.comb += match[i].eq(seen_valid[i] & (seen_addr[i] == self.mreq.addr) &
                                        (seen_data[i] == self.mreq.compare))
            m.d.sync += Assert(match.any(), "mem_req: CAS to an entry no walk read, or against "
                                            "another value than the one read")
            m.d.sync += Assert((self.mreq.compare ^ self.mreq.data) & ~A_D == 0,
                               "mem_req: CAS changes more than A/D")
            m.d.sync += Assert((self.mreq.compare & ~self.mreq.data) == 0,
                               "mem_req: CAS clears a bit")
        return m
