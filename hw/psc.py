"""A paging-structure cache for one level (PML4E, PDPTE or PDE).

Fully associative, in flip-flops.  An entry maps (context, the GPA bits that
select this level's entry) to the frame of the next table and the AND of the
R/W/X bits from the PML4E down to this entry.  Only present, well-formed
non-leaf entries of a walk that succeeded (so, with A/D on, whose A is set)
are filled, so a walk that starts below it reads exactly what a full walk
would have used (``ept-reference.md``, caching rules).

Keys are GPA[47:lo], ``lo`` = 12 + 9 * level: the index of this level's
entry and of every entry above it, the bits that name the entry (the parent
slices them off the GPA).  A lookup compares its key in S0 (``lookup_en``)
and answers in S1, the next cycle, holding while ``lookup_en`` is low.  A fill replaces the entry with the same key, else
the first free one, else the next in round-robin order (the slot with the
same key is found a cycle ahead: the key of every walker that may answer,
``next_fill_keys``, is compared, and ``next_fill_sel`` picks the result).  ``flush`` drops
every entry of the given contexts; ``drop`` drops the entry for one key a
cycle later (a walk that started from it faulted: the reference page wants
the fault decided by memory).
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import GPA_BITS, Level

__all__ = ["PagingStructureCache"]


class PagingStructureCache(wiring.Component):
    @staticmethod
    def check(level, entries):
        if level not in (Level.PML4E, Level.PDPTE, Level.PDE):
            raise ValueError(f"a paging-structure cache holds PML4Es, PDPTEs or PDEs, not {level!r}")
        if isinstance(entries, bool) or not isinstance(entries, int) or not 0 <= entries <= 64:
            raise ValueError(f"{level.name} cache entries must be in 0..64, not {entries!r}")

    def __init__(self, level, *, entries, contexts, fillers=1):
        self.check(level, entries)
        if isinstance(fillers, bool) or not isinstance(fillers, int) or not 1 <= fillers <= 16:
            raise ValueError(f"fillers must be an integer in 1..16, not {fillers!r}")
        self.fillers = fillers
        self.level = level
        self.entries = entries
        self.contexts = contexts
        self.lo = 12 + 9 * level.value        # lowest GPA bit of this level's index
        ctx_bits = max(1, ceil_log2(contexts))
        key_bits = GPA_BITS - self.lo
        super().__init__({
            "lookup_en": In(1),
            "lookup_key": In(key_bits),      # S0: GPA[47:lo]
            "lookup_ctx": In(ctx_bits),      # S0
            "hit": Out(1),                   # S1, as table and perms
            "table": Out(40),      # frame of the next-level table
            "perms": Out(3),
            "fill": In(1),
            "fill_key": In(key_bits),
            "fill_ctx": In(ctx_bits),
            # the keys and contexts the next cycle's fill may carry, one per walker, and
            # which one it carries (if it fills): the search for a slot holding that key is
            # made a cycle ahead, for every walker, and the walker picks the result late
            "next_fill_keys": In(data.ArrayLayout(key_bits, fillers)),
            "next_fill_ctxs": In(data.ArrayLayout(ctx_bits, fillers)),
            "next_fill_sel": In(range(fillers) if fillers > 1 else 1),
            "fill_table": In(40),
            "fill_perms": In(3),
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
        layout = data.StructLayout({"key": len(self.lookup_key), "ctx": len(self.lookup_ctx),
                                    "table": 40, "perms": 3})
        valid = Signal(n)
        slots = Array(Signal(layout, name=f"slot{i}") for i in range(n))
        next_slot = Signal(range(n))

        def matches(key, ctx):
            v = Signal(n)
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
        m.d.comb += fill_hits.eq((self.fill_key == self.lookup_key) & (self.fill_ctx == self.lookup_ctx))
        with m.If(self.lookup_en):
            m.d.sync += hit.eq(Mux(fill_hits, filled, 0)
                               | (matches(self.lookup_key, self.lookup_ctx) & ~written))
        with m.Else():
            m.d.sync += hit.eq(hit & ~written)
        m.d.comb += self.hit.eq(hit.any())
        for i in range(n):
            with m.If(hit[i]):
                m.d.comb += [self.table.eq(slots[i].table), self.perms.eq(slots[i].perms)]

        # The slot that holds the fill's key, searched a cycle ahead and registered, so that
        # the 27-bit compares stay off the slot write enables.  If that slot changed in
        # between (a drop, a flush, another fill), the fill lands in it anyway; and a fill
        # of the same key in between leaves two slots that translate alike: both harmless.
        # Each walker's key is compared while the response port decides which walker
        # answers; that decision only picks among the results.
        same = Signal(n)
        for c in range(self.fillers):
            found = matches(self.next_fill_keys[c], self.next_fill_ctxs[c])
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
        drop = Signal()
        drop_key = Signal.like(self.drop_key)
        drop_ctx = Signal.like(self.drop_ctx)
        m.d.sync += [drop.eq(self.drop), drop_key.eq(self.drop_key), drop_ctx.eq(self.drop_ctx)]
        dropped = matches(drop_key, drop_ctx)
        flushed = Signal(n)
        m.d.comb += flushed.eq(Cat(self.flush.bit_select(slots[i].ctx, 1) for i in range(n)))
        fill_flushed = self.flush.bit_select(self.fill_ctx, 1)

        # A fill writes its slot even when its context is being flushed, and then leaves
        # the slot invalid: the flush reaches only the valid bits, not the slots' write
        # enables (the flush register drives the whole unit from one place).
        with m.If(self.fill):
            m.d.comb += written.eq((1 << where)[:n])
            m.d.sync += [
                slots[where].key.eq(self.fill_key), slots[where].ctx.eq(self.fill_ctx),
                slots[where].table.eq(self.fill_table), slots[where].perms.eq(self.fill_perms),
            ]
            with m.If(~same.any() & valid.all()):
                m.d.sync += next_slot.eq(Mux(next_slot == n - 1, 0, next_slot + 1))
        m.d.comb += filled.eq(Mux(fill_flushed, 0, written))
        # a fill, then a drop, then a flush: the later one wins
        new_valid = Signal(n)
        m.d.comb += new_valid.eq((valid & ~written) | filled)
        m.d.sync += valid.eq(new_valid & ~Mux(drop, dropped & ~filled, 0) & ~(flushed & ~filled))
        return m
