"""Combinational check of one EPT paging-structure entry.

Given the 64-bit entry and its level, says whether it is present, whether it
is a leaf, and whether it is a misconfiguration (and why).  No state, no
latency: the walker registers the verdict with the memory response.
"""

from amaranth import *
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from .layouts import EptEntry, Level, PA_BITS, check_maxphyaddr

__all__ = ["EntryCheck", "MisconfigCause", "reserved_masks"]


class MisconfigCause(enum.Enum, shape=3):
    NONE = 0
    WRITE_NO_READ = 1
    EXEC_ONLY = 2
    RESERVED = 3
    MEMTYPE = 4


def _bits(hi, lo):
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def reserved_masks(maxphyaddr):
    """Reserved-bit masks: (PML4E, non-leaf PDPTE/PDE, 1G leaf, 2M leaf, PTE)."""
    high = _bits(PA_BITS - 1, maxphyaddr) if maxphyaddr < PA_BITS else 0
    return {
        "pml4e": high | _bits(7, 3),
        "table": high | _bits(6, 3),
        "leaf_1g": high | _bits(29, 12),
        "leaf_2m": high | _bits(20, 12),
        "pte": high,
    }


class EntryCheck(wiring.Component):
    """Verdict on one entry; purely combinational.

    ``misconfig`` is only meaningful when ``present``: the reserved bits of a
    not-present entry are never looked at.
    """

    entry: In(EptEntry)
    level: In(Level)
    present: Out(1)
    leaf: Out(1)
    misconfig: Out(1)
    cause: Out(MisconfigCause)

    def __init__(self, *, maxphyaddr=46, execute_only=True):
        self.maxphyaddr = check_maxphyaddr(maxphyaddr)
        self.execute_only = bool(execute_only)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        e = self.entry
        raw = e.as_value()
        masks = reserved_masks(self.maxphyaddr)

        m.d.comb += self.present.eq(e.r | e.w | e.x)
        with m.Switch(self.level):
            with m.Case(Level.PTE):
                m.d.comb += self.leaf.eq(1)
            with m.Case(Level.PDE, Level.PDPTE):
                m.d.comb += self.leaf.eq(e.leaf)
            with m.Case(Level.PML4E):
                m.d.comb += self.leaf.eq(0)

        mask = Signal(64)
        with m.Switch(self.level):
            with m.Case(Level.PML4E):
                m.d.comb += mask.eq(masks["pml4e"])
            with m.Case(Level.PDPTE):
                m.d.comb += mask.eq(Mux(e.leaf, masks["leaf_1g"], masks["table"]))
            with m.Case(Level.PDE):
                m.d.comb += mask.eq(Mux(e.leaf, masks["leaf_2m"], masks["table"]))
            with m.Case(Level.PTE):
                m.d.comb += mask.eq(masks["pte"])

        write_no_read = e.w & ~e.r
        exec_only = e.x & ~e.w & ~e.r if not self.execute_only else C(0)
        reserved = (raw & mask).any()
        bad_memtype = self.leaf & ((e.memtype == 2) | (e.memtype == 3) | (e.memtype == 7))

        with m.If(~self.present):
            m.d.comb += self.cause.eq(MisconfigCause.NONE)
        with m.Elif(write_no_read):
            m.d.comb += self.cause.eq(MisconfigCause.WRITE_NO_READ)
        with m.Elif(exec_only):
            m.d.comb += self.cause.eq(MisconfigCause.EXEC_ONLY)
        with m.Elif(reserved):
            m.d.comb += self.cause.eq(MisconfigCause.RESERVED)
        with m.Elif(bad_memtype):
            m.d.comb += self.cause.eq(MisconfigCause.MEMTYPE)
        m.d.comb += self.misconfig.eq(self.cause != MisconfigCause.NONE)
        return m
