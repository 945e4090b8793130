"""Combinational judge of one guest (IA-32e 4-level) paging-structure entry.

Given the 64-bit entry, the level it was read at and EFER.NXE, says whether
it is present, whether a reserved bit is set (a #PF with P and RSVD), whether
it is a leaf, and the permission bits it contributes (U/S, R/W, XD with NXE).
No state, no latency.  Reserved bits of a present entry (docs/nested.md):
51:MAXPHYADDR everywhere; PS in a PML4E; 29:13 of a 1G leaf, 20:13 of a 2M
leaf; XD when NXE = 0.  Bits 62:52 and G are ignored.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import GuestEntry, Level, PA_BITS, check_maxphyaddr

__all__ = ["GuestEntryCheck", "GuestVerdict", "guest_reserved_masks"]


GuestVerdict = data.StructLayout({
    "present": 1,       # P
    "reserved": 1,      # present and a reserved bit is set at this level
    "leaf": 1,          # a PTE, or a PDPTE/PDE with PS
    "us": 1,            # U/S
    "rw": 1,            # R/W
    "xd": 1,            # XD, counted only with NXE (else it is reserved)
})


def _bits(hi, lo):
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def guest_reserved_masks(maxphyaddr):
    """Reserved-bit masks without XD: (any entry, PML4E, 1G leaf, 2M leaf)."""
    high = _bits(PA_BITS - 1, maxphyaddr) if maxphyaddr < PA_BITS else 0
    return {
        "any": high,
        "pml4e": high | (1 << 7),
        "leaf_1g": high | _bits(29, 13),
        "leaf_2m": high | _bits(20, 13),
    }


class GuestEntryCheck(wiring.Component):
    """Verdict on one guest entry at one level; purely combinational.

    Parameters
    ----------
    maxphyaddr : int
        36..52: bits 51:maxphyaddr of a present entry are reserved.

    Members
    -------
    entry : In(GuestEntry)
    level : In(Level)
        Where the entry was read (PML4E never a leaf, PTE always).
    nxe : In(1)
        EFER.NXE: XD is a permission bit, else a reserved bit.
    verdict : Out(GuestVerdict)

    Timing
    ------
    Combinational: no latency, no state.
    """

    entry: In(GuestEntry)
    level: In(Level)
    nxe: In(1)
    verdict: Out(GuestVerdict)

    def __init__(self, *, maxphyaddr=46):
        self.maxphyaddr = check_maxphyaddr(maxphyaddr)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        e, v = self.entry, self.verdict
        raw = e.as_value()
        masks = guest_reserved_masks(self.maxphyaddr)

        def reserved(name):
            return (raw & masks[name]).any()

        leaf = Signal()
        bad = Signal()
        with m.Switch(self.level):
            with m.Case(Level.PML4E):
                m.d.comb += [leaf.eq(0), bad.eq(reserved("pml4e"))]
            with m.Case(Level.PDPTE):
                m.d.comb += [leaf.eq(e.ps), bad.eq(Mux(e.ps, reserved("leaf_1g"), reserved("any")))]
            with m.Case(Level.PDE):
                m.d.comb += [leaf.eq(e.ps), bad.eq(Mux(e.ps, reserved("leaf_2m"), reserved("any")))]
            with m.Case(Level.PTE):
                m.d.comb += [leaf.eq(1), bad.eq(reserved("any"))]
        m.d.comb += [
            v.present.eq(e.p),
            v.reserved.eq(e.p & (bad | (e.xd & ~self.nxe))),
            v.leaf.eq(leaf),
            v.us.eq(e.us),
            v.rw.eq(e.rw),
            v.xd.eq(e.xd & self.nxe),
        ]
        return m
