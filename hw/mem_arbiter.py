"""The memory arbiter: N walkers share one memory port.

Requests are granted round-robin, one per cycle, passing straight through
(no added latency).  The memory answers in request order (the DRAM model and
the AXI adapter both promise it), so a FIFO of walker ids, one per request
in flight, routes each response to the walker that asked.  At most
``max_outstanding`` requests are in flight; beyond that, requests wait.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import MemRequest, MemOp, MemResponse
from .params import check_int

__all__ = ["MemArbiter"]


class MemArbiter(wiring.Component):
    """Round-robin arbiter of ``ports`` request/response streams onto one memory port.

    Parameters
    ----------
    ports : int
        Requesters (walkers).
    max_outstanding : int
        Requests in flight at most, 1..64 (the depth of the routing FIFO).

    Members
    -------
    req : In(stream.Signature(MemRequest)).array(ports)
    resp : Out(stream.Signature(MemResponse)).array(ports)
        Requester ``i``'s request and response streams.
    mem_req : Out(stream.Signature(MemRequest))
    mem_resp : In(stream.Signature(MemResponse))
        The memory port; the memory answers in request order.
    read_issued, cas_issued : Out(1)
        A read, a CAS leaves on ``mem_req`` this cycle (performance counters).

    Timing
    ------
    No latency: the granted request passes straight to ``mem_req`` and a
    response straight to its requester, in the same cycle.  The grant goes to
    the first requester at or after the one after the last granted.
    Responses reach each requester in the order it asked.
    """

    @staticmethod
    def check(max_outstanding):
        check_int("max_outstanding", max_outstanding, 1, 64)

    def __init__(self, *, ports, max_outstanding=8):
        self.check(max_outstanding)
        self.ports = ports
        self.max_outstanding = max_outstanding
        super().__init__({
            "req": In(stream.Signature(MemRequest)).array(ports),
            "resp": Out(stream.Signature(MemResponse)).array(ports),
            "mem_req": Out(stream.Signature(MemRequest)),
            "mem_resp": In(stream.Signature(MemResponse)),
            "read_issued": Out(1),      # strobes for the performance counters
            "cas_issued": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.ports
        reqs, resps = self.req, self.resp
        id_bits = max(1, ceil_log2(n))
        m.submodules.owners = owners = SyncFIFO(width=id_bits, depth=self.max_outstanding)

        # round-robin: the first requester at or after ``turn``
        turn = Signal(range(max(n, 2)))      # one bit for one port, as for two
        grant = Signal(id_bits)
        any_req = Signal()
        for offset in reversed(range(n)):
            for i in range(n):
                with m.If((turn == i) & reqs[(i + offset) % n].valid):
                    m.d.comb += [grant.eq((i + offset) % n), any_req.eq(1)]

        for i, r in enumerate(reqs):
            with m.If(grant == i):
                m.d.comb += [self.mem_req.payload.eq(r.payload),
                             r.ready.eq(self.mem_req.ready & owners.w_rdy)]
        m.d.comb += [
            self.mem_req.valid.eq(any_req & owners.w_rdy),
            owners.w_data.eq(grant),
            owners.w_en.eq(self.mem_req.valid & self.mem_req.ready),
        ]
        with m.If(owners.w_en):
            m.d.comb += [self.read_issued.eq(self.mem_req.payload.op == MemOp.READ),
                         self.cas_issued.eq(self.mem_req.payload.op == MemOp.CAS)]
            if n > 1:
                m.d.sync += turn.eq(Mux(grant == n - 1, 0, grant + 1))

        for i, r in enumerate(resps):
            m.d.comb += [r.payload.eq(self.mem_resp.payload),
                         r.valid.eq(self.mem_resp.valid & owners.r_rdy & (owners.r_data == i))]
            with m.If(owners.r_data == i):
                m.d.comb += self.mem_resp.ready.eq(r.ready & owners.r_rdy)
        m.d.comb += owners.r_en.eq(self.mem_resp.valid & self.mem_resp.ready)
        return m
