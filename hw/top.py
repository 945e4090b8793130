"""The page-walk unit: translate port, EPTP/INVEPT control, memory port.

::

                 +-------------------- PageWalkUnit --------------------+
  eptp_load ---->| EptpRegister --(pml4, ad, valid)--+                   |
  invept ------->| (counted; no caches yet)          |                   |
                 |                                   v                   |
  translate_req >|------------------------------> Walker ---> mem_req  >|---> DRAM
  translate_resp<|<------------------------------ (+ADUpdater)<- mem_resp<|<--- DRAM
                 +-------------------------------------------------------+

The translate port and the memory port are ready/valid streams with
backpressure on both sides.  Responses leave in request order (one walk at a
time).  A request arriving with no valid EPTP is answered ``REFUSED``.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .eptp import EptpRegister
from .layouts import (
    InveptRequest, MemRequest, MemResponse, TranslateRequest, TranslateResponse,
    check_maxphyaddr,
)
from .walker import Walker

__all__ = ["PageWalkUnit"]


class PageWalkUnit(wiring.Component):
    """Parameters: ``maxphyaddr`` (36..52, default 46), ``execute_only`` (default on)."""

    translate_req: In(stream.Signature(TranslateRequest))
    translate_resp: Out(stream.Signature(TranslateResponse))
    eptp_value: In(64)
    eptp_load: In(1)
    eptp_valid: Out(1)
    eptp_error: Out(1)
    invept: In(stream.Signature(InveptRequest))     # always ready
    invept_count: Out(32)
    mem_req: Out(stream.Signature(MemRequest))
    mem_resp: In(stream.Signature(MemResponse))

    def __init__(self, *, maxphyaddr=46, execute_only=True):
        self.maxphyaddr = check_maxphyaddr(maxphyaddr)
        if not isinstance(execute_only, bool):
            raise ValueError(f"execute_only must be a bool, not {execute_only!r}")
        self.execute_only = execute_only
        super().__init__()
        self.eptp_register = EptpRegister(maxphyaddr=self.maxphyaddr)
        self.walker = Walker(maxphyaddr=self.maxphyaddr, execute_only=self.execute_only)

    def elaborate(self, platform):
        m = Module()
        m.submodules.eptp = eptp = self.eptp_register
        m.submodules.walker = walker = self.walker
        m.d.comb += [
            eptp.value.eq(self.eptp_value),
            eptp.load.eq(self.eptp_load),
            self.eptp_valid.eq(eptp.valid),
            self.eptp_error.eq(eptp.error),
        ]
        m.d.comb += [
            walker.req.valid.eq(self.translate_req.valid),
            self.translate_req.ready.eq(walker.req.ready),
            walker.req.payload.gpa.eq(self.translate_req.payload.gpa),
            walker.req.payload.access.eq(self.translate_req.payload.access),
            walker.req.payload.pml4.eq(eptp.pml4),
            walker.req.payload.ad_enabled.eq(eptp.ad_enabled),
            walker.req.payload.ctx_valid.eq(eptp.valid),
        ]
        wiring.connect(m, walker.resp, wiring.flipped(self.translate_resp))
        wiring.connect(m, walker.mem_req, wiring.flipped(self.mem_req))
        wiring.connect(m, wiring.flipped(self.mem_resp), walker.mem_resp)
        m.d.comb += self.invept.ready.eq(1)
        with m.If(self.invept.valid):
            m.d.sync += self.invept_count.eq(self.invept_count + 1)
        return m
