"""Combinational check of one EPT paging-structure entry, for every level at once.

Given the 64-bit entry, says whether it is present and, for each level it
could have been read at, whether it is a misconfiguration there.  No state,
no latency, and no input but the entry: so the check can be made on the
memory data before it is registered (``hw.axi_master`` registers this
verdict beside the response), and the walker only picks its level's bit.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import EptEntry, Level, PA_BITS, check_maxphyaddr

__all__ = ["EntryCheck", "EntryVerdict", "reserved_masks"]


EntryVerdict = data.StructLayout({
    "present": 1,        # R, W or X set
    # bit k: present and misconfigured if it is the entry at Level(k) (reserved bits of
    # that level and kind, W without R, execute-only without support, a bad leaf memtype)
    "misconfig": 4,
})


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
    """Verdict on one entry at every level; purely combinational.

    A not-present entry is never misconfigured: its other bits are not looked at.
    Bit 7 is the leaf bit of a PDPTE or PDE; a PTE is always a leaf, a PML4E never.

    Parameters
    ----------
    maxphyaddr : int
        36..52: bits 51:maxphyaddr are reserved.
    execute_only : bool
        Execute-only entries are allowed (else misconfigured).

    Members
    -------
    entry : In(EptEntry)
    verdict : Out(EntryVerdict)
        ``present``, and per level whether the entry is misconfigured there.

    Timing
    ------
    Combinational: no latency, no state.
    """

    entry: In(EptEntry)
    verdict: Out(EntryVerdict)

    def __init__(self, *, maxphyaddr=46, execute_only=True):
        self.maxphyaddr = check_maxphyaddr(maxphyaddr)
        self.execute_only = bool(execute_only)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        e = self.entry
        raw = e.as_value()
        masks = reserved_masks(self.maxphyaddr)

        def reserved(name):
            return (raw & masks[name]).any()

        present = e.r | e.w | e.x
        write_no_read = e.w & ~e.r
        exec_only = e.x & ~e.w & ~e.r if not self.execute_only else C(0)
        bad_memtype = (e.memtype == 2) | (e.memtype == 3) | (e.memtype == 7)
        bad_any = write_no_read | exec_only
        leaf_1g = reserved("leaf_1g") | bad_memtype
        leaf_2m = reserved("leaf_2m") | bad_memtype
        by_level = {
            Level.PML4E: bad_any | reserved("pml4e"),
            Level.PDPTE: bad_any | Mux(e.leaf, leaf_1g, reserved("table")),
            Level.PDE: bad_any | Mux(e.leaf, leaf_2m, reserved("table")),
            Level.PTE: bad_any | reserved("pte") | bad_memtype,
        }
        m.d.comb += self.verdict.present.eq(present)
        for level, bad in by_level.items():
            m.d.comb += self.verdict.misconfig[level.value].eq(present & bad)
        return m
