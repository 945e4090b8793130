"""A paging-structure cache for one level (PML4E, PDPTE or PDE).

Fully associative, in flip-flops.  An entry maps (context, the GPA bits that
select this level's entry) to the frame of the next table and the AND of the
R/W/X bits from the PML4E down to this entry.  Only present, well-formed
non-leaf entries of a walk that succeeded (so, with A/D on, whose A is set)
are filled, so a walk that starts below it reads exactly what a full walk
would have used (docs/ept.md, caching rules).

Keys are GPA[47:lo], ``lo`` = 12 + 9 * level: the index of this level's
entry and of every entry above it, the bits that name the entry (the parent
slices them off the GPA).  A lookup compares its key in S0 (``lookup.en``)
and answers in S1, the next cycle, holding while ``lookup.en`` is low
(:class:`~hw.signatures.LookupSignature`).  A fill replaces the entry with
the same key, else the first free one, else the next in round-robin order
(the slot with the same key is found a cycle ahead: the key of every walker
that may answer, ``next_fill_keys``, is compared, and ``next_fill_sel``
picks the result).  ``flush`` drops
every entry of the given contexts; ``drop`` drops the entry for one key a
cycle later (a walk that started from it faulted: the reference page wants
the fault decided by memory).
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2

from .layouts import FRAME_BITS, GPA_BITS, Level
from .signatures import FillSignature, LookupSignature
from .params import check_int

__all__ = ["PagingStructureCache", "PscEntry"]

PscEntry = data.StructLayout({
    "table": FRAME_BITS,     # frame of the next-level table
    "perms": 3,              # R/W/X AND from the PML4E down to this entry
})


class PagingStructureCache(wiring.Component):
    """One level's paging-structure cache (see the module docstring).

    Parameters
    ----------
    level : Level
        ``PML4E``, ``PDPTE`` or ``PDE``: keys are GPA[47:lo], ``lo = 12 + 9 * level``.
    entries : int
        Slots, 0..64 (0: no cache; the block is empty and never hits).
    contexts : int
        Context ids the entries are tagged with.
    fillers : int
        Walkers that may fill it (``next_fill_keys`` has one key per walker).

    Members
    -------
    lookup : In(LookupSignature(GPA_BITS - lo, ctx_bits, PscEntry))
    fill : In(FillSignature(GPA_BITS - lo, ctx_bits, PscEntry))
    next_fill_keys : In(ArrayLayout(GPA_BITS - lo, fillers))
    next_fill_ctxs : In(ArrayLayout(ctx_bits, fillers))
        The key and context each walker would fill with in the next cycle.
    next_fill_sel : In(range(fillers))
        Which walker that is (if one fills).
    drop, drop_key, drop_ctx : In(1), In(GPA_BITS - lo), In(ctx_bits)
        Forget the entry for this key.
    flush : In(contexts)
        Forget every entry of these contexts.

    Timing
    ------
    A lookup in S0 answers in S1.  A fill lands at the next edge, and a
    lookup in the fill's own cycle already sees it; ``drop`` lands an edge
    later than that; ``flush`` acts at the next edge (a fill of a flushed
    context at that edge is left invalid).
    """

    @staticmethod
    def check(level, entries):
        if level not in (Level.PML4E, Level.PDPTE, Level.PDE):
            raise ValueError(f"a paging-structure cache holds PML4Es, PDPTEs or PDEs, not {level!r}")
        check_int(f"{level.name.lower()}_cache", entries, 0, 64)

    def __init__(self, level, *, entries, contexts, fillers=1):
        self.check(level, entries)
        self.fillers = check_int("fillers", fillers, 1, 16)
        self.level = level
        self.entries = entries
        self.contexts = contexts
        self.lo = 12 + 9 * level.value        # lowest GPA bit of this level's index
        ctx_bits = max(1, ceil_log2(contexts))
        key_bits = GPA_BITS - self.lo
        super().__init__({
            "lookup": In(LookupSignature(key_bits, ctx_bits, PscEntry)),
            "fill": In(FillSignature(key_bits, ctx_bits, PscEntry)),
            # the keys and contexts the next cycle's fill may carry, one per walker, and
            # which one it carries (if it fills): the search for a slot holding that key is
            # made a cycle ahead, for every walker, and the walker picks the result late
            "next_fill_keys": In(data.ArrayLayout(key_bits, fillers)),
            "next_fill_ctxs": In(data.ArrayLayout(ctx_bits, fillers)),
            "next_fill_sel": In(range(fillers) if fillers > 1 else 1),
            "drop": In(1),
            "drop_key": In(key_bits),
            "drop_ctx": In(ctx_bits),
            "flush": In(contexts),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.entries
        if n == 0:
            return m
        lookup, fill = self.lookup, self.fill
        layout = data.StructLayout({"key": len(lookup.key), "ctx": len(lookup.ctx),
                                    "table": FRAME_BITS, "perms": 3})
        valid = Signal(n)
        slots = Array(Signal(layout, name=f"slot{i}") for i in range(n))
        next_slot = Signal(range(n))

        def matches(key, ctx, name):
            v = Signal(n, name=name)
            m.d.comb += v.eq(Cat(valid[i] & (slots[i].key == key) & (slots[i].ctx == ctx)
                                 for i in range(n)))
            return v

        # The key is compared in S0 and the slots that hold it are registered; S1 reads the
        # table and perms of the slot that hit.  A slot written since the compare no longer
        # answers (missing is always safe: the walk starts higher); a slot dropped or
        # flushed since still does, as a drop lands late anyway and a flush marks the
        # request stale (hw.top).
        # A fill written at the lookup's edge is seen (as S1's compare used to see it).
        written = Signal(n)        # the slot a fill writes at this edge, flushed or not
        filled = Signal(n)         # ... and holds a live entry after it (not flushed)
        hit = Signal(n)
        fill_hits = Signal()
        m.d.comb += fill_hits.eq((fill.key == lookup.key) & (fill.ctx == lookup.ctx))
        with m.If(lookup.en):
            m.d.sync += hit.eq(Mux(fill_hits, filled, 0)
                               | (matches(lookup.key, lookup.ctx, "lookup_hits") & ~written))
        with m.Else():
            m.d.sync += hit.eq(hit & ~written)
        m.d.comb += lookup.hit.eq(hit.any())
        for i in range(n):
            with m.If(hit[i]):
                m.d.comb += [lookup.data.table.eq(slots[i].table),
                             lookup.data.perms.eq(slots[i].perms)]

        # The slot that holds the fill's key, searched a cycle ahead and registered, so that
        # the 27-bit compares stay off the slot write enables.  If that slot changed in
        # between (a drop, a flush, another fill), the fill lands in it anyway; and a fill
        # of the same key in between leaves two slots that translate alike: both harmless.
        # Each walker's key is compared while the response port decides which walker
        # answers; that decision only picks among the results.
        same = Signal(n)
        for c in range(self.fillers):
            found = matches(self.next_fill_keys[c], self.next_fill_ctxs[c], f"filler{c}_hits")
            with m.If(self.next_fill_sel == c):
                m.d.sync += same.eq(found)
        where = Signal(range(n))
        m.d.comb += where.eq(next_slot)
        for i in reversed(range(n)):
            with m.If(~valid[i]):
                m.d.comb += where.eq(i)
        for i in reversed(range(n)):
            with m.If(same[i]):
                m.d.comb += where.eq(i)

        # A drop lands a cycle later, off the walker's entry check: meanwhile a lookup may
        # still start a walk from the entry, and a fault there is walked again as well.
        drop_r = Signal()
        drop_key_r = Signal.like(self.drop_key)
        drop_ctx_r = Signal.like(self.drop_ctx)
        m.d.sync += [drop_r.eq(self.drop), drop_key_r.eq(self.drop_key), drop_ctx_r.eq(self.drop_ctx)]
        dropped = matches(drop_key_r, drop_ctx_r, "drop_hits")
        flushed = Signal(n)
        m.d.comb += flushed.eq(Cat(self.flush.bit_select(slots[i].ctx, 1) for i in range(n)))
        fill_flushed = self.flush.bit_select(fill.ctx, 1)

        # A fill writes its slot even when its context is being flushed, and then leaves
        # the slot invalid: the flush reaches only the valid bits, not the slots' write
        # enables (the flush register drives the whole unit from one place).
        with m.If(fill.valid):
            m.d.comb += written.eq((1 << where)[:n])
            m.d.sync += [
                slots[where].key.eq(fill.key), slots[where].ctx.eq(fill.ctx),
                slots[where].table.eq(fill.data.table), slots[where].perms.eq(fill.data.perms),
            ]
            with m.If(~same.any() & valid.all()):
                m.d.sync += next_slot.eq(Mux(next_slot == n - 1, 0, next_slot + 1))
        m.d.comb += filled.eq(Mux(fill_flushed, 0, written))
        # a fill, then a drop, then a flush: the later one wins
        new_valid = Signal(n)
        m.d.comb += new_valid.eq((valid & ~written) | filled)
        m.d.sync += valid.eq(new_valid & ~Mux(drop_r, dropped & ~filled, 0) & ~(flushed & ~filled))
        return m
