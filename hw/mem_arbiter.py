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

__all__ = ["MemArbiter"]


class MemArbiter(wiring.Component):
    @staticmethod
    def check(max_outstanding):
        if isinstance(max_outstanding, bool) or not isinstance(max_outstanding, int) \
                or not 1 <= max_outstanding <= 64:
            raise ValueError(f"max_outstanding must be an integer in 1..64, not {max_outstanding!r}")

    def __init__(self, *, ports, max_outstanding=8):
        self.check(max_outstanding)
        self.ports = ports
        self.max_outstanding = max_outstanding
        members = {}
        for i in range(ports):
            members[f"req{i}"] = In(stream.Signature(MemRequest))
            members[f"resp{i}"] = Out(stream.Signature(MemResponse))
        members["mem_req"] = Out(stream.Signature(MemRequest))
        members["mem_resp"] = In(stream.Signature(MemResponse))
        members["read_issued"] = Out(1)     # strobes for the performance counters
        members["cas_issued"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        n = self.ports
        reqs = [getattr(self, f"req{i}") for i in range(n)]
        resps = [getattr(self, f"resp{i}") for i in range(n)]
        id_bits = max(1, ceil_log2(n))
        m.submodules.owners = owners = SyncFIFO(width=id_bits, depth=self.max_outstanding)

        # round-robin: the first requester at or after ``turn``
        turn = Signal(range(n)) if n > 1 else Signal(1)
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
