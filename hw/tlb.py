"""The TLB: set-associative arrays for 4K, 2M and 1G translations.

Each page size has its own array (sets and ways are parameters), looked up in
parallel.  Tags and translations live in :class:`~amaranth.lib.memory.Memory`
(one memory per way); the valid bits and context ids live in flip-flops so
that INVEPT clears any set of contexts in one cycle.  Entries are tagged by a
context id, which :class:`~hw.contexts.ContextTable` maps to EPTP[51:12].

Timing: a lookup presents its page number GPA[47:12] and context in cycle
S0 (``lookup.en`` high); the result (``hit``, ``ok``, ``data``) is valid in
cycle S1, the next one, and holds while ``lookup.en`` stays low
(:class:`~hw.signatures.LookupSignature`).  One lookup
per cycle.  Each array reads its set in S0 (the memories are asynchronous LUT
RAM) and there compares each way's context and tag and checks the access
against its permissions and D; S1 only chooses among those registered
verdicts, so the compare never shares a cycle with the unit's steering.  An
array sees GPA[47:shift] of its page size (set index, then tag).  While a
lookup waits in S1, a fill into its set hides the way it overwrites (the data
read in S0 is then old), so a hit is never built from a stale read; valid
bits cleared after S0 are not looked at again (a flush marks the request
stale in ``hw.top``; a dropped entry was still one the reference page
allowed).  A drop (``drop`` with a hit) and the LRU refresh of a hit take
effect one cycle after S1; a fill is written at the end of the cycle after
``fill.valid`` (one cycle picks the way, the next writes), and a lookup in S0
in that next cycle already sees it (the read is transparent to the write).

An array of one set has no set index; it keeps its ways in registers rather
than in a one-word memory (which would have a 0-bit address).

Replacement: first invalid way, else tree pseudo-LRU, per set.  A hit
refreshes the LRU state; so does a fill.
"""

from types import SimpleNamespace

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2, exact_log2

from .layouts import FRAME_BITS, GPA_BITS, Access, PageSize
from .signatures import FillSignature, LookupSignature
from .params import check_int

__all__ = ["Tlb", "TlbArray", "TlbEntry", "TlbHit", "check_geometry", "plru_victim", "plru_touch"]

TlbEntry = data.StructLayout({
    "hpa_page": FRAME_BITS,      # HPA[51:12]; low bits below the page size are zero
    "perms": 3,                  # R/W/X AND over every entry of the walk
    "memtype": 3,
    "d": 1,                      # the leaf's D is set (or A/D is off): writes may hit
})

_SHIFT = {PageSize.SIZE_4K: 12, PageSize.SIZE_2M: 21, PageSize.SIZE_1G: 30}


def check_geometry(name, sets, ways):
    check_int(f"{name} sets", sets, 1, 1024, power_of_two=True)
    check_int(f"{name} ways", ways, 1, 16, power_of_two=True)


def plru_victim(m, state, ways):
    """Way index chosen by a tree pseudo-LRU ``state`` (``ways - 1`` bits).

    Node ``n`` has children ``2n+1`` and ``2n+2``; its bit says which side
    was used less recently (0: left).
    """
    if ways == 1:
        return C(0, 1)
    bits = exact_log2(ways)
    victim = Signal(bits)
    path = []        # the choices so far, root first: the victim's bits, MSB first
    for depth in range(bits):
        idx = Signal(range(ways), name=f"plru_node{depth}")
        m.d.comb += idx.eq((1 << depth) - 1 + (Cat(*reversed(path)) if path else 0))
        choice = Signal(name=f"plru_choice{depth}")
        m.d.comb += choice.eq(state.bit_select(idx, 1))
        path.append(choice)
    m.d.comb += victim.eq(Cat(*reversed(path)))
    return victim


def plru_touch(state, way, ways):
    """The PLRU state after ``way`` is used: every node on its path points away."""
    if ways == 1:
        return state
    bits = exact_log2(ways)
    new = [state[i] for i in range(ways - 1)]
    for depth in range(bits):
        # node on the path of ``way`` at this depth: the way's top ``depth`` bits
        for prefix in range(1 << depth):
            node = (1 << depth) - 1 + prefix
            on_path = (way >> (bits - depth)) == prefix if depth else C(1, 1)
            went = way[bits - 1 - depth]
            new[node] = Mux(on_path, ~went, new[node])
    return Cat(*new)
class TlbArray(wiring.Component):
    """One page size's set-associative array (see the module docstring).

    Parameters
    ----------
    page_size : PageSize
        The size of the pages it holds: its key is GPA[47:shift], 12, 21 or 30.
    sets, ways : int
        Geometry: powers of two, ``sets`` in 1..1024, ``ways`` in 1..16.
    contexts : int
        Context ids the entries are tagged with (``flush`` is one bit per id).

    Members
    -------
    lookup : In(LookupSignature(GPA_BITS - shift, ctx_bits, TlbEntry, access=True))
        ``hit``: some way holds the page; ``ok``: and allows the access, its
        entry on ``data``.
    drop : In(1)
        S1: invalidate the ways that hit (they did not allow the access).
    fill : In(FillSignature(GPA_BITS - shift, ctx_bits, TlbEntry))
    flush : In(contexts)
        Invalidate every entry of these contexts at the next edge.

    Timing
    ------
    A lookup in S0 answers in S1 (one per cycle).  A fill is written two
    edges after ``fill.valid`` (one to pick the way, one to write); a lookup
    in S0 from the cycle after ``fill.valid`` on sees it (the read is
    transparent to the write), one in its own cycle does not.  ``drop`` and the LRU refresh of
    a hit land one edge after S1; ``flush`` clears valid bits at the next
    edge, and wins over a fill landing then.
    """

    def __init__(self, page_size, *, sets, ways, contexts):
        check_geometry(f"TLB {page_size.name[5:]}", sets, ways)
        self.page_size = page_size
        self.sets, self.ways, self.contexts = sets, ways, contexts
        self.shift = _SHIFT[page_size]
        self.index_bits = exact_log2(sets)
        self.page_bits = GPA_BITS - self.shift
        self.tag_bits = self.page_bits - self.index_bits
        ctx_bits = max(1, ceil_log2(contexts))
        super().__init__({
            "lookup": In(LookupSignature(self.page_bits, ctx_bits, TlbEntry, access=True)),
            "drop": In(1),
            "fill": In(FillSignature(self.page_bits, ctx_bits, TlbEntry)),
            "flush": In(contexts),
        })

    def _index(self, page):
        return page[:self.index_bits] if self.index_bits else C(0, 1)

    def _tag(self, page):
        return page[self.index_bits:]

    def elaborate(self, platform):
        m = Module()
        sets, ways = self.sets, self.ways
        valid = Array(Signal(ways, name=f"valid_{s}") for s in range(sets))
        ctx = Array(Array(Signal.like(self.lookup.ctx, name=f"ctx_{s}_{w}") for w in range(ways))
                    for s in range(sets))
        plru = Array(Signal(max(1, ways - 1), name=f"plru_{s}") for s in range(sets))

        # The lookup's page, held for the S1 compare.  Reset-less, unlike the unit's own S1
        # register that holds the same bits: otherwise yosys merges the two, and that one
        # register then feeds every compare of the unit from one place on the die (its
        # routing was most of the S1 path).  Its value only matters under a valid bit.
        s1_page = Signal(len(self.lookup.key), name="s1_page", reset_less=True)
        with m.If(self.lookup.en):
            m.d.sync += s1_page.eq(self.lookup.key)
        s1_index = self._index(s1_page)
        fill = self._fill_stage(m, valid, plru)
        hits, ok_way = self._lookup_ways(m, valid, ctx, fill, s1_index)
        self._update(m, valid, ctx, plru, fill, hits, ok_way, s1_index)
        return m

    def _fill_stage(self, m, valid, plru):
        # A fill takes two cycles: the first picks the victim way (first invalid, else
        # pseudo-LRU) and registers it, the second writes.  Splitting them keeps the
        # set-indexed victim choice and the write enables off one path.  A second fill
        # into the same set in between may pick the same way; that only loses an entry.
        ways = self.ways
        way_bits = range(ways) if ways > 1 else 1
        pick_index = self._index(self.fill.key)
        pick_valid = valid[pick_index]
        lru = plru_victim(m, plru[pick_index], ways)
        pick = Signal(way_bits)
        m.d.comb += pick.eq(lru)
        for w in reversed(range(ways)):
            with m.If(~pick_valid[w]):
                m.d.comb += pick.eq(w)
        f = SimpleNamespace(
            write=Signal(name="write"),
            index=Signal(max(1, self.index_bits), name="fill_index"),
            tag=Signal(self.tag_bits, name="fill_tag"),
            entry=Signal(TlbEntry, name="fill_entry"),
            ctx=Signal.like(self.fill.ctx, name="fill_ctx"),
            victim=Signal(way_bits, name="victim"),
            written=Signal(ways, name="written"),        # the way written at this edge
            onehot=Signal(ways, name="fill_onehot"),     # ... and live after it
        )
        m.d.sync += [
            f.write.eq(self.fill.valid & ~self.flush.bit_select(self.fill.ctx, 1)),
            f.index.eq(pick_index), f.tag.eq(self._tag(self.fill.key)),
            f.entry.eq(self.fill.data), f.ctx.eq(self.fill.ctx), f.victim.eq(pick),
        ]
        # The way is written even when the fill's context is being flushed, and is then
        # left invalid: the flush (one register driving the whole unit) reaches valid bits
        # only, not the memories' write enables.
        flushed = Signal()
        m.d.comb += flushed.eq(self.flush.bit_select(f.ctx, 1))
        m.d.comb += f.written.eq(Mux(f.write, 1 << f.victim, 0))
        m.d.comb += f.onehot.eq(Mux(flushed, 0, f.written))
        return f

    def _lookup_ways(self, m, valid, ctx, fill, s1_index):
        # S0 reads each way of the set (the memories' reads are asynchronous LUT RAM), and
        # compares context and tag and checks the access right away; S1 only chooses among
        # the registered verdicts.  A way written at the lookup's edge is seen as written
        # (a transparent read): its tag, context and data come from the fill.
        sets, ways = self.sets, self.ways
        lookup = self.lookup
        entry_layout = data.StructLayout({"tag": self.tag_bits, "data": TlbEntry})
        index0 = self._index(lookup.key)
        tag0 = self._tag(lookup.key)
        access0 = lookup.access
        same_set = fill.index == index0
        fill_word = Cat(fill.tag, fill.entry)
        s0_hit = Signal(ways)        # valid, of the lookup's context, holding its page
        s0_allows = Signal(ways)     # the way's entry allows the lookup's access
        s1_hit = Signal(ways)        # registered s0_hit; a fill into S1's set since clears it
        s1_allows = Signal(ways)
        hits = Signal(ways)
        oks = Signal(ways)
        ok_way = Signal.like(fill.victim, name="ok_way")
        for w in range(ways):
            written_now = same_set & fill.written[w]
            filled_now = same_set & fill.onehot[w]
            word = Signal(entry_layout, name=f"way{w}_s0")
            if sets > 1:
                mem = Memory(shape=entry_layout, depth=sets, init=[])
                m.submodules[f"way{w}"] = mem
                wr = mem.write_port()
                rd = mem.read_port(domain="comb")
                m.d.comb += [
                    wr.addr.eq(fill.index),
                    wr.data.tag.eq(fill.tag),
                    wr.data.data.eq(fill.entry),
                    wr.en.eq(fill.written[w]),
                    rd.addr.eq(index0),
                    word.eq(Mux(written_now, fill_word, rd.data.as_value())),
                ]
                # the entry S1 answers with, read with the verdicts (reset-less, like memory)
                entry = Signal(TlbEntry, name=f"way{w}_s1", reset_less=True)
                with m.If(lookup.en):
                    m.d.sync += entry.eq(word.data)
            else:
                # One set: the way itself, in registers; S1 reads its entry there.  A way
                # written since the lookup has its s1_hit cleared, so it does not answer.
                # No reset, like the memory: `valid` says what is live.
                stored = Signal(entry_layout, name=f"way{w}", reset_less=True)
                with m.If(fill.written[w]):
                    m.d.sync += [stored.tag.eq(fill.tag), stored.data.eq(fill.entry)]
                m.d.comb += word.eq(Mux(written_now, fill_word, stored.as_value()))
                entry = stored.data
            ctx_match = Mux(filled_now, fill.ctx, ctx[index0][w]) == lookup.ctx
            live = Mux(written_now, filled_now, valid[index0][w]) & ctx_match
            m.d.comb += [
                s0_hit[w].eq(live & (word.tag == tag0)),
                s0_allows[w].eq(word.data.perms.bit_select(access0.as_value(), 1)
                                & ((access0 != Access.WRITE) | word.data.d)),
            ]
            # S1 chooses among the S0 verdicts.  Valid bits cleared since S0 are not looked
            # at again: a flush since then marks the request stale (hw.top), and a dropped
            # entry was still one the reference page allowed.
            m.d.comb += [hits[w].eq(s1_hit[w]),
                         oks[w].eq(hits[w] & s1_allows[w])]
            with m.If(oks[w]):
                m.d.comb += [ok_way.eq(w), lookup.data.eq(entry)]
        m.d.comb += [lookup.hit.eq(hits.any()), lookup.ok.eq(oks.any())]
        with m.If(lookup.en):
            m.d.sync += [s1_hit.eq(s0_hit), s1_allows.eq(s0_allows)]
        with m.Elif(fill.index == s1_index):
            m.d.sync += s1_hit.eq(s1_hit & ~fill.written)
        return hits, ok_way

    def _update(self, m, valid, ctx, plru, fill, hits, ok_way, s1_index):
        # A drop and the LRU refresh of a hit land one cycle later, off the compare path.
        # Harmless: until then the entry is still one the reference page allows.  The ways
        # that hit and the drop decision are registered apart, and combined a cycle later.
        sets, ways = self.sets, self.ways
        pend_hits = Signal(ways)
        pend_drop = Signal()
        pend_touch = Signal()
        pend_set = Signal(len(s1_index))
        pend_way = Signal.like(ok_way)
        m.d.sync += [pend_hits.eq(hits), pend_drop.eq(self.drop), pend_touch.eq(self.lookup.ok),
                     pend_set.eq(s1_index), pend_way.eq(ok_way)]

        # order matters: a drop, then a fill, then a flush (which wins)
        with m.If(pend_drop & pend_hits.any()):
            m.d.sync += valid[pend_set].eq(valid[pend_set] & ~pend_hits)
        with m.Elif(pend_touch):
            m.d.sync += plru[pend_set].eq(plru_touch(plru[pend_set], pend_way, ways))
        with m.If(fill.write):
            m.d.sync += [
                valid[fill.index].eq((valid[fill.index] & ~fill.written) | fill.onehot),
                ctx[fill.index][fill.victim].eq(fill.ctx),
                plru[fill.index].eq(plru_touch(plru[fill.index], fill.victim, ways)),
            ]
        with m.If(self.flush.any()):
            for s in range(sets):
                for w in range(ways):
                    # a way filled on this edge holds the new, unflushed context
                    refilled = fill.onehot[w] & (fill.index == s)
                    with m.If(self.flush.bit_select(ctx[s][w], 1) & ~refilled):
                        m.d.sync += valid[s][w].eq(0)


TlbHit = data.StructLayout({"size": PageSize, "entry": TlbEntry})


class Tlb(wiring.Component):
    """The three arrays behind one lookup/fill/flush interface.

    Each way checks the access against its permissions and D next to its tag
    compare, so "hit and allowed" (``ok``) is a wide OR, not a compare followed
    by a mux.  When entries of two sizes both allow the access (the host
    remapped a region without INVEPT), the smaller page wins; both are
    translations the reference page allows until the next INVEPT.  A drop
    removes every entry that held the page (none allowed the access).

    Parameters
    ----------
    sets_4k, ways_4k, sets_2m, ways_2m, sets_1g, ways_1g : int
        Each array's geometry (see :class:`TlbArray`).
    contexts : int
        Context ids the entries are tagged with.

    Members
    -------
    lookup : In(LookupSignature(GPA_BITS - 12, ctx_bits, TlbHit, access=True))
        Keyed by GPA[47:12]; ``data`` is the size and entry of the page that
        allows the access (with ``ok``).
    drop : In(1)
        S1: drop every entry that hit.
    fill : In(FillSignature(GPA_BITS - 12, ctx_bits, TlbHit))
        ``data.size`` chooses the array.
    flush : In(contexts)

    Timing
    ------
    :class:`TlbArray`'s: a lookup answers in the next cycle, a fill is seen
    by lookups from the cycle after it, a flush acts at the next edge.
    """

    def __init__(self, *, sets_4k=16, ways_4k=4, sets_2m=4, ways_2m=4, sets_1g=1, ways_1g=4,
                 contexts=4):
        geometry = {PageSize.SIZE_4K: (sets_4k, ways_4k), PageSize.SIZE_2M: (sets_2m, ways_2m),
                    PageSize.SIZE_1G: (sets_1g, ways_1g)}
        self.arrays = {size: TlbArray(size, sets=s, ways=w, contexts=contexts)
                       for size, (s, w) in geometry.items()}
        ctx_bits = max(1, ceil_log2(contexts))
        super().__init__({
            "lookup": In(LookupSignature(GPA_BITS - 12, ctx_bits, TlbHit, access=True)),
            "drop": In(1),
            "fill": In(FillSignature(GPA_BITS - 12, ctx_bits, TlbHit)),
            "flush": In(contexts),
        })

    @property
    def entries(self):
        return sum(a.sets * a.ways for a in self.arrays.values())

    def elaborate(self, platform):
        m = Module()
        lookup, fill = self.lookup, self.fill
        for size, arr in self.arrays.items():
            m.submodules[f"tlb_{size.name[5:].lower()}"] = arr
            low = arr.shift - 12          # the array's page number starts at GPA[shift]
            m.d.comb += [
                arr.lookup.en.eq(lookup.en), arr.lookup.key.eq(lookup.key[low:]),
                arr.lookup.ctx.eq(lookup.ctx), arr.lookup.access.eq(lookup.access),
                arr.fill.valid.eq(fill.valid & (fill.data.size == size)),
                arr.fill.key.eq(fill.key[low:]), arr.fill.ctx.eq(fill.ctx),
                arr.fill.data.eq(fill.data.entry), arr.flush.eq(self.flush),
            ]
        # priority 1G < 2M < 4K among entries that allow the access: the last assignment wins
        for size in (PageSize.SIZE_1G, PageSize.SIZE_2M, PageSize.SIZE_4K):
            arr = self.arrays[size]
            with m.If(arr.lookup.ok):
                m.d.comb += [lookup.ok.eq(1), lookup.data.size.eq(size),
                             lookup.data.entry.eq(arr.lookup.data)]
        m.d.comb += lookup.hit.eq(Cat(arr.lookup.hit for arr in self.arrays.values()).any())
        for arr in self.arrays.values():
            m.d.comb += arr.drop.eq(self.drop)
        return m
