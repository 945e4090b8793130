"""The EPTP register: loads a pointer only if it is architecturally valid.

A load with an invalid value leaves the unit without a context (``valid`` = 0,
``error`` = 1), so nothing is ever walked from it.  The new value is visible
the cycle after ``load``.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .layouts import FRAME_BITS, check_maxphyaddr

__all__ = ["EptpRegister"]


class EptpRegister(wiring.Component):
    """``load``/``value`` in; ``valid``, ``error`` and the decoded fields out.

    Parameters
    ----------
    maxphyaddr : int
        36..52: an EPTP with bits 63:maxphyaddr set is refused.

    Members
    -------
    value : In(64)
    load : In(1)
    value_ok : Out(1)
        Combinational: ``value`` is a valid EPTP (memory type WB or UC, a
        4-level walk, reserved bits clear).
    valid, error : Out(1)
        The last load was valid / refused.
    pml4 : Out(FRAME_BITS)
        EPTP[51:12] of a valid load, else 0.
    ad_enabled : Out(1)
        EPTP[6] of a valid load.

    Timing
    ------
    A load at edge ``t`` shows from cycle ``t+1``.
    """

    value: In(64)
    load: In(1)
    value_ok: Out(1)       # ``value`` is a valid EPTP (combinational: the context lookup)
    valid: Out(1)
    error: Out(1)
    pml4: Out(FRAME_BITS)      # EPTP[51:12]: the PML4 frame, and the cache tag
    ad_enabled: Out(1)

    def __init__(self, *, maxphyaddr=46):
        self.maxphyaddr = check_maxphyaddr(maxphyaddr)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        v = self.value
        ok = self.value_ok
        m.d.comb += ok.eq(((v[0:3] == 0) | (v[0:3] == 6))
                          & (v[3:6] == 3)
                          & (v[8:12] == 0)
                          & (v[self.maxphyaddr:64] == 0))
        with m.If(self.load):
            m.d.sync += [
                self.valid.eq(ok),
                self.error.eq(~ok),
                self.pml4.eq(Mux(ok, v[12:12 + FRAME_BITS], 0)),
                self.ad_enabled.eq(ok & v[6]),
            ]
        return m
