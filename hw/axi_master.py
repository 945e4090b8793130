"""AXI4 master adapter for the unit's native memory port.

``AxiMemoryMaster`` is the memory seen by a ``PageWalkUnit``: its ``mem_req``
/ ``mem_resp`` streams take the unit's READ and CAS requests and it speaks AXI4
on ``axi`` (64-bit data, every transfer a single beat: LEN=0, SIZE=3, INCR,
all write strobes set).

* **READ** -> AR/R.  Up to ``max_outstanding`` reads are in flight, all with
  the same ARID, so the AXI ordering rule returns them in order.
* **CAS** -> an exclusive read (ARLOCK=1) of the word, after every earlier read
  has drained.  If the word differs from ``compare`` the CAS failed: it is
  answered with the word and nothing is written.  If equal, an exclusive write
  (AWLOCK=1) of ``data`` follows.  BRESP=EXOKAY: swapped, answered with the old
  word (= ``compare``).  BRESP=OKAY: another agent stored to the word between
  the two (the slave's monitor lost the reservation), nothing was written, and
  the adapter **retries from the exclusive read** (``cas_retry`` pulses,
  ``cas_retries`` counts).  A retry re-reads the word, so a CAS that lost to a
  store of a different value is then answered as failed, with that value: this
  is exactly the native CAS contract, which is what keeps the A/D update from
  resurrecting an entry the host cleared.
* An exclusive read answered OKAY means the slave has no exclusive monitor
  (AXI spec A7.2): a CAS could not be atomic there, so it is answered with
  ``error`` = 1 instead of being faked with a plain write.
* SLVERR or DECERR on R or B -> ``error`` = 1, never retried.  On R the
  write was never issued; on B, AXI does not say whether the word changed, so
  the adapter claims nothing (the walker ends the translation with
  BUS_ERROR).
* An address with bits at or above ``addr_width`` set is answered ``error`` = 1
  without a bus transaction (no silent aliasing).

Why exclusives and not AXI5 atomics (AtomicCompare): exclusive accesses are
plain AXI3/AXI4 and pass through the FPGA interconnects and memory controllers
this targets; AXI5 atomics need AXI5/ACE5-Lite support end to end, which most
of them lack.  The price is a retry loop under contention, which is visible
(``cas_retries``) and unbounded in principle, like any LL/SC loop.

Ordering and latency promises:

* responses leave ``mem_resp`` in request order;
* a READ accepted at the edge ending cycle t shows ARVALID in cycle t+1; its
  response is registered: valid the cycle after its R handshake (with a slave
  that takes AR at once and answers L cycles later: L+2 cycles after the
  request handshake);
* a CAS waits until every earlier read has answered on R, then costs an
  exclusive-read round trip, plus, when the compare matches, an AW+W / B round
  trip (per retry), and one cycle more for the registered response;
* ``mem_req`` takes one request per cycle while reads may be issued; it is not
  ready while a CAS is in progress or ``max_outstanding`` reads are in flight;
* ARVALID, AWVALID, WVALID and ``mem_resp.valid`` are registers and never
  depend on a ready; a payload only changes when its channel is idle or
  handshaking.  ``mem_req.ready`` does follow ARREADY combinationally (so a
  read can be taken in the cycle the AR register empties).

With ``rdata_check`` (a combinational component with an ``entry`` input of
64 bits and a ``verdict`` output, e.g. :class:`hw.entry_check.EntryCheck`),
``mem_resp_verdict`` holds its verdict on a read's R data, registered in the
same cycle as the data: a consumer that judges the data starts from a
register.  For a CAS answer it is not meaningful.
"""

from amaranth import *
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AXI4Signature, Burst, Resp
from .layouts import MemOp, MemRequest, MemResponse, PA_BITS
from .params import check_int

__all__ = ["AxiMemoryMaster", "MasterState"]


class MasterState(enum.Enum, shape=3):
    IDLE = 0        # reads flow; a CAS or an out-of-range address moves on
    DRAIN = 1       # a CAS waits for earlier reads to answer
    EX_READ = 2     # exclusive read issued, waiting for R
    EX_WRITE = 3    # exclusive write issued, waiting for B
    RESPOND = 4     # the CAS (or error) answer waits for the response register
    BAD_ADDR = 5    # an address beyond addr_width: answer error after the drain


def _check(name, value, lo, hi):
    return check_int(f"AxiMemoryMaster {name}", value, lo, hi)


class AxiMemoryMaster(wiring.Component):
    """Native ``mem_req``/``mem_resp`` in, AXI4 master out (see module docstring).

    Parameters
    ----------
    addr_width : int
        32..64 (default 52).
    id_width : int
        1..16 (default 4).
    axi_id : int
        The ID of every transaction (default 0).
    max_outstanding : int
        Reads in flight, 1..64 (default 4).
    cache : int
        AxCACHE (default 0b0011: normal, non-cacheable, bufferable).
    prot : int
        AxPROT (default 0b000 here; the AXI top passes 0b011: privileged, non-secure, data).
    rdata_check : Component or None
        A combinational check with ``entry`` and ``verdict`` members, applied
        to the R data on the way into the response register.

    Members
    -------
    mem_req : In(stream.Signature(MemRequest))
    mem_resp : Out(stream.Signature(MemResponse))
        The unit's memory port, answered in request order.
    mem_resp_verdict : Out(verdict shape)
        Only with ``rdata_check``: its verdict on ``mem_resp``'s data.
    axi : Out(AXI4Signature(addr_width, 64, id_width))
    state : Out(MasterState)
    outstanding : Out(range(max_outstanding + 1))
        Reads in flight (for tests and waveforms).
    cas_retry : Out(1)
        Pulses when an exclusive write failed and is retried.
    cas_retries : Out(32)
        Retries, wrapping.
    cas_retries_clear : In(1)
        Zeroes ``cas_retries`` (a retry in the same cycle is lost).

    Timing
    ------
    See the module docstring's ordering and latency promises: responses in
    request order; a read's response L+2 cycles after its request with a
    slave answering L cycles after AR; a CAS after the reads before it.
    """

    def __init__(self, *, addr_width=52, id_width=4, axi_id=0, max_outstanding=4,
                 cache=0b0011, prot=0b000, rdata_check=None):
        self.addr_width = _check("addr_width", addr_width, 32, 64)
        self.id_width = _check("id_width", id_width, 1, 16)
        self.axi_id = _check("axi_id", axi_id, 0, (1 << self.id_width) - 1)
        self.max_outstanding = _check("max_outstanding", max_outstanding, 1, 64)
        self.cache = _check("cache", cache, 0, 15)
        self.prot = _check("prot", prot, 0, 7)
        self.rdata_check = rdata_check
        verdict = {}
        if rdata_check is not None:
            sig = getattr(rdata_check, "signature", None)
            members = sig.members if isinstance(sig, wiring.Signature) else {}
            if "entry" not in members or "verdict" not in members:
                raise ValueError(f"AxiMemoryMaster rdata_check must have 'entry' and 'verdict' "
                                 f"members, not {rdata_check!r}")
            verdict["mem_resp_verdict"] = Out(members["verdict"].shape)
        super().__init__({
            **verdict,
            "mem_req": In(stream.Signature(MemRequest)),
            "mem_resp": Out(stream.Signature(MemResponse)),
            "axi": Out(AXI4Signature(self.addr_width, 64, self.id_width)),
            "state": Out(MasterState),
            "outstanding": Out(range(self.max_outstanding + 1)),   # reads in flight
            "cas_retry": Out(1),          # pulses when an exclusive write failed and is retried
            "cas_retries": Out(32),       # wraps
            "cas_retries_clear": In(1),   # zeroes cas_retries (a retry in the same cycle is lost)
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        req = self.mem_req
        resp = self.mem_resp
        state = self.state

        # constant attributes of every transfer: one 8-byte beat
        m.d.comb += [
            axi.arid.eq(self.axi_id), axi.arlen.eq(0), axi.arsize.eq(3),
            axi.arburst.eq(Burst.INCR), axi.arcache.eq(self.cache), axi.arprot.eq(self.prot),
            axi.awid.eq(self.axi_id), axi.awlen.eq(0), axi.awsize.eq(3),
            axi.awburst.eq(Burst.INCR), axi.awcache.eq(self.cache), axi.awprot.eq(self.prot),
            axi.wstrb.eq(0xFF), axi.wlast.eq(1),
        ]

        # the CAS being worked on
        cas_addr = Signal(PA_BITS)
        cas_compare = Signal(64)
        cas_data = Signal(64)
        # the answer to a CAS or a refused address, waiting for the response register
        ans_data = Signal(64)
        ans_error = Signal()

        ar_free = ~axi.arvalid | axi.arready
        resp_free = ~resp.valid | resp.ready
        out_of_range = Signal()
        if self.addr_width < PA_BITS:
            m.d.comb += out_of_range.eq(req.payload.addr[self.addr_width:] != 0)

        ar_hs = axi.arvalid & axi.arready
        r_hs = axi.rvalid & axi.rready
        with m.If(ar_hs):
            m.d.sync += axi.arvalid.eq(0)
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += axi.awvalid.eq(0)
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += axi.wvalid.eq(0)
        with m.If(resp.ready):
            m.d.sync += resp.valid.eq(0)

        def issue_exclusive_read():
            m.d.sync += [axi.arvalid.eq(1), axi.araddr.eq(cas_addr), axi.arlock.eq(1)]

        def answer(data, error):
            m.d.sync += [ans_data.eq(data), ans_error.eq(error)]
            m.d.sync += state.eq(MasterState.RESPOND)

        # plain reads: their R beats go straight into the response register
        reading = (state == MasterState.IDLE) | (state == MasterState.DRAIN) | (
            state == MasterState.BAD_ADDR)
        read_issue = Signal()
        read_done = Signal()
        m.d.comb += read_done.eq(reading & r_hs)
        if self.rdata_check is not None:
            m.submodules.rdata_check = check = self.rdata_check
            m.d.comb += check.entry.eq(axi.rdata)
            with m.If(read_done):
                m.d.sync += self.mem_resp_verdict.eq(check.verdict)
        with m.If(read_done):
            m.d.sync += [
                resp.valid.eq(1),
                resp.payload.data.eq(axi.rdata),
                # SLVERR/DECERR both have bit 1 set
                resp.payload.error.eq(axi.rresp.as_value()[1]),
            ]
        m.d.sync += self.outstanding.eq(self.outstanding + read_issue - read_done)

        m.d.sync += self.cas_retry.eq(0)
        m.d.comb += axi.bready.eq(state == MasterState.EX_WRITE)

        with m.Switch(state):
            with m.Case(MasterState.IDLE):
                m.d.comb += [
                    req.ready.eq(ar_free & (self.outstanding < self.max_outstanding)),
                    axi.rready.eq(resp_free),
                ]
                # The payload registers follow the offered request whenever they may change
                # (AR idle or handshaking; the CAS registers are read only after IDLE), so
                # that only the valid bits and the state wait for the handshake: the
                # request's valid comes a long way (dispatch, walker, arbiter).
                with m.If(ar_free):
                    m.d.sync += [axi.arlock.eq(0), axi.araddr.eq(req.payload.addr)]
                m.d.sync += [cas_addr.eq(req.payload.addr), cas_compare.eq(req.payload.compare),
                             cas_data.eq(req.payload.data)]
                with m.If(req.valid & req.ready):
                    with m.If(out_of_range):
                        m.d.sync += state.eq(MasterState.BAD_ADDR)
                    with m.Elif(req.payload.op == MemOp.READ):
                        m.d.comb += read_issue.eq(1)
                        m.d.sync += axi.arvalid.eq(1)
                    with m.Else():
                        m.d.sync += state.eq(MasterState.DRAIN)

            with m.Case(MasterState.DRAIN):
                m.d.comb += axi.rready.eq(resp_free)
                # outstanding counts the AR register too: zero means AR is idle
                with m.If(self.outstanding == 0):
                    issue_exclusive_read()
                    m.d.sync += state.eq(MasterState.EX_READ)

            with m.Case(MasterState.BAD_ADDR):
                m.d.comb += axi.rready.eq(resp_free)
                with m.If(self.outstanding == 0):
                    answer(0, 1)

            with m.Case(MasterState.EX_READ):
                m.d.comb += axi.rready.eq(1)
                with m.If(r_hs):
                    with m.If(axi.rresp.as_value()[1]):
                        answer(0, 1)
                    with m.Elif(axi.rdata != cas_compare):
                        answer(axi.rdata, 0)
                    with m.Elif(axi.rresp != Resp.EXOKAY):
                        answer(0, 1)          # no exclusive monitor: atomicity impossible
                    with m.Else():
                        m.d.sync += [
                            axi.awvalid.eq(1), axi.awaddr.eq(cas_addr), axi.awlock.eq(1),
                            axi.wvalid.eq(1), axi.wdata.eq(cas_data),
                            state.eq(MasterState.EX_WRITE),
                        ]

            with m.Case(MasterState.EX_WRITE):
                # the slave answers B only after both AW and W handshakes
                with m.If(axi.bvalid):
                    with m.Switch(axi.bresp):
                        with m.Case(Resp.EXOKAY):
                            answer(cas_compare, 0)
                        with m.Case(Resp.OKAY):
                            issue_exclusive_read()
                            m.d.sync += [
                                state.eq(MasterState.EX_READ),
                                self.cas_retry.eq(1),
                                self.cas_retries.eq(self.cas_retries + 1),
                            ]
                        with m.Default():
                            answer(0, 1)

            with m.Case(MasterState.RESPOND):
                with m.If(resp_free):
                    m.d.sync += [
                        resp.valid.eq(1),
                        resp.payload.data.eq(ans_data),
                        resp.payload.error.eq(ans_error),
                        state.eq(MasterState.IDLE),
                    ]

        with m.If(self.cas_retries_clear):
            m.d.sync += self.cas_retries.eq(0)
        return m
