"""The TLB: set-associative arrays for 4K, 2M and 1G translations.

Each page size has its own array (sets and ways are parameters), looked up in
parallel.  Tags and translations live in :class:`~amaranth.lib.memory.Memory`
(one memory per way); the valid bits and context ids live in flip-flops so
that INVEPT clears any set of contexts in one cycle.  Entries are tagged by a
context id, which :class:`~hw.contexts.ContextTable` maps to EPTP[51:12].

Timing: a lookup presents its page number GPA[47:12] and context in cycle
S0 (``lookup_en`` high); the result (``hit``, ``entry``, ``size``) is valid in
cycle S1, the next one, and holds while ``lookup_en`` stays low.  One lookup
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
effect one cycle after S1; a fill is written two cycles after ``fill`` (one
to pick the way, one to write), so a lookup in S0 from the cycle after next
sees it.

An array of one set has no set index; it keeps its ways in registers rather
than in a one-word memory (which would have a 0-bit address).

Replacement: first invalid way, else tree pseudo-LRU, per set.  A hit
refreshes the LRU state; so does a fill.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .layouts import GPA_BITS, PA_BITS, Access, PageSize

__all__ = ["Tlb", "TlbArray", "TlbEntry", "check_geometry", "plru_victim", "plru_touch"]

TlbEntry = data.StructLayout({
    "hpa_page": PA_BITS - 12,    # HPA[51:12]; low bits below the page size are zero
    "perms": 3,                  # R/W/X AND over every entry of the walk
    "memtype": 3,
    "d": 1,                      # the leaf's D is set (or A/D is off): writes may hit
})

_SHIFT = {PageSize.SIZE_4K: 12, PageSize.SIZE_2M: 21, PageSize.SIZE_1G: 30}


def check_geometry(name, sets, ways):
    for what, v in (("sets", sets), ("ways", ways)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1) or v > 1024:
            raise ValueError(f"{name} {what} must be a power of two in 1..1024, not {v!r}")
    if ways > 16:
        raise ValueError(f"{name} ways must be at most 16, not {ways}")


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
    """One page size's set-associative array; see the module docstring."""

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
            "lookup_en": In(1),
            "lookup_page": In(self.page_bits),  # S0: GPA[47:shift]
            "lookup_ctx": In(ctx_bits),         # S0
            "lookup_access": In(Access),        # S0
            "hit": Out(1),                      # S1: some way holds the page
            "ok": Out(1),                       # S1: and allows the access (``entry``)
            "entry": Out(TlbEntry),
            "drop": In(1),                      # S1: invalidate the ways that hit
            "fill": In(1),
            "fill_page": In(self.page_bits),    # GPA[47:shift]
            "fill_ctx": In(ctx_bits),
            "fill_entry": In(TlbEntry),
            "flush": In(contexts),          # invalidate every entry of these contexts
        })

    def elaborate(self, platform):
        m = Module()
        sets, ways = self.sets, self.ways
        entry_layout = data.StructLayout({"tag": self.tag_bits, "data": TlbEntry})

        def index(page):
            return page[:self.index_bits] if self.index_bits else C(0, 1)

        def tag(page):
            return page[self.index_bits:]

        valid = Array(Signal(ways, name=f"valid_{s}") for s in range(sets))
        ctx = Array(Array(Signal.like(self.lookup_ctx, name=f"ctx_{s}_{w}") for w in range(ways))
                    for s in range(sets))
        plru = Array(Signal(max(1, ways - 1), name=f"plru_{s}") for s in range(sets))

        # The lookup's page, held for the S1 compare.  Reset-less, unlike the unit's own S1
        # register that holds the same bits: otherwise yosys merges the two, and that one
        # register then feeds every compare of the unit from one place on the die (its
        # routing was most of the S1 path).  Its value only matters under a valid bit.
        s1_page = Signal(len(self.lookup_page), name="s1_page", reset_less=True)
        with m.If(self.lookup_en):
            m.d.sync += s1_page.eq(self.lookup_page)
        s1_index = index(s1_page)
        # A fill takes two cycles: the first picks the victim way (first invalid, else
        # pseudo-LRU) and registers it, the second writes.  Splitting them keeps the
        # set-indexed victim choice and the write enables off one path.  A second fill
        # into the same set in between may pick the same way; that only loses an entry.
        way_bits = range(ways) if ways > 1 else 1
        pick_index = index(self.fill_page)
        pick_valid = valid[pick_index]
        lru = plru_victim(m, plru[pick_index], ways)
        pick = Signal(way_bits)
        m.d.comb += pick.eq(lru)
        for w in reversed(range(ways)):
            with m.If(~pick_valid[w]):
                m.d.comb += pick.eq(w)
        write = Signal()
        fill_index = Signal(max(1, self.index_bits))
        fill_tag = Signal(self.tag_bits)
        fill_entry = Signal(TlbEntry)
        fill_ctx = Signal.like(self.fill_ctx)
        victim = Signal(way_bits)
        m.d.sync += [
            write.eq(self.fill & ~self.flush.bit_select(self.fill_ctx, 1)),
            fill_index.eq(pick_index), fill_tag.eq(tag(self.fill_page)),
            fill_entry.eq(self.fill_entry), fill_ctx.eq(self.fill_ctx), victim.eq(pick),
        ]
        # The way is written even when the fill's context is being flushed, and is then
        # left invalid: the flush (one register driving the whole unit) reaches valid bits
        # only, not the memories' write enables.
        flushed = Signal()
        m.d.comb += flushed.eq(self.flush.bit_select(fill_ctx, 1))
        written = Signal(ways)       # the way written at this edge
        m.d.comb += written.eq(Mux(write, 1 << victim, 0))
        fill_onehot = Signal(ways)   # ... and live after it
        m.d.comb += fill_onehot.eq(Mux(flushed, 0, written))

        # S0 reads each way of the set (the memories' reads are asynchronous LUT RAM), and
        # compares context and tag and checks the access right away; S1 only chooses among
        # the registered verdicts.  A way written at the lookup's edge is seen as written
        # (a transparent read): its tag, context and data come from the fill.
        index0 = index(self.lookup_page)
        tag0 = tag(self.lookup_page)
        access0 = self.lookup_access
        same_set = fill_index == index0
        fill_word = Cat(fill_tag, fill_entry)
        s0_hit = Signal(ways)        # valid, of the lookup's context, holding its page
        s0_allows = Signal(ways)     # the way's entry allows the lookup's access
        s1_hit = Signal(ways)        # registered s0_hit; a fill into S1's set since clears it
        s1_allows = Signal(ways)
        hits = Signal(ways)
        oks = Signal(ways)
        ok_way = Signal.like(victim)
        for w in range(ways):
            written_now = same_set & written[w]
            filled_now = same_set & fill_onehot[w]
            word = Signal(entry_layout, name=f"way{w}_s0")
            if sets > 1:
                mem = Memory(shape=entry_layout, depth=sets, init=[])
                m.submodules[f"way{w}"] = mem
                wr = mem.write_port()
                rd = mem.read_port(domain="comb")
                m.d.comb += [
                    wr.addr.eq(fill_index),
                    wr.data.tag.eq(fill_tag),
                    wr.data.data.eq(fill_entry),
                    wr.en.eq(written[w]),
                    rd.addr.eq(index0),
                    word.eq(Mux(written_now, fill_word, rd.data.as_value())),
                ]
                # the entry S1 answers with, read with the verdicts (reset-less, like memory)
                entry = Signal(TlbEntry, name=f"way{w}_s1", reset_less=True)
                with m.If(self.lookup_en):
                    m.d.sync += entry.eq(word.data)
            else:
                # One set: the way itself, in registers; S1 reads its entry there.  A way
                # written since the lookup has its s1_hit cleared, so it does not answer.
                # No reset, like the memory: `valid` says what is live.
                stored = Signal(entry_layout, name=f"way{w}", reset_less=True)
                with m.If(written[w]):
                    m.d.sync += [stored.tag.eq(fill_tag), stored.data.eq(fill_entry)]
                m.d.comb += word.eq(Mux(written_now, fill_word, stored.as_value()))
                entry = stored.data
            ctx_match = Mux(filled_now, fill_ctx, ctx[index0][w]) == self.lookup_ctx
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
                m.d.comb += [ok_way.eq(w), self.entry.eq(entry)]
        m.d.comb += [self.hit.eq(hits.any()), self.ok.eq(oks.any())]
        with m.If(self.lookup_en):
            m.d.sync += [s1_hit.eq(s0_hit), s1_allows.eq(s0_allows)]
        with m.Elif(fill_index == s1_index):
            m.d.sync += s1_hit.eq(s1_hit & ~written)

        # A drop and the LRU refresh of a hit land one cycle later, off the compare path.
        # Harmless: until then the entry is still one the reference page allows.  The ways
        # that hit and the drop decision are registered apart, and combined a cycle later.
        pend_hits = Signal(ways)
        pend_drop = Signal()
        pend_touch = Signal()
        pend_set = Signal(len(s1_index))
        pend_way = Signal.like(ok_way)
        m.d.sync += [pend_hits.eq(hits), pend_drop.eq(self.drop), pend_touch.eq(self.ok),
                     pend_set.eq(s1_index), pend_way.eq(ok_way)]

        # order matters: a drop, then a fill, then a flush (which wins)
        with m.If(pend_drop & pend_hits.any()):
            m.d.sync += valid[pend_set].eq(valid[pend_set] & ~pend_hits)
        with m.Elif(pend_touch):
            m.d.sync += plru[pend_set].eq(plru_touch(plru[pend_set], pend_way, ways))
        with m.If(write):
            m.d.sync += [
                valid[fill_index].eq((valid[fill_index] & ~written) | fill_onehot),
                ctx[fill_index][victim].eq(fill_ctx),
                plru[fill_index].eq(plru_touch(plru[fill_index], victim, ways)),
            ]
        with m.If(self.flush.any()):
            for s in range(sets):
                for w in range(ways):
                    # a way filled on this edge holds the new, unflushed context
                    refilled = fill_onehot[w] & (fill_index == s)
                    with m.If(self.flush.bit_select(ctx[s][w], 1) & ~refilled):
                        m.d.sync += valid[s][w].eq(0)
        return m


class Tlb(wiring.Component):
    """The three arrays behind one lookup/fill/flush interface.

    Each way checks the access against its permissions and D next to its tag
    compare, so "hit and allowed" (``ok``) is a wide OR, not a compare followed
    by a mux.  When entries of two sizes both allow the access (the host
    remapped a region without INVEPT), the smaller page wins; both are
    translations the reference page allows until the next INVEPT.  A drop
    removes every entry that held the page (none allowed the access).
    """

    def __init__(self, *, sets_4k=16, ways_4k=4, sets_2m=4, ways_2m=4, sets_1g=1, ways_1g=4,
                 contexts=4):
        geometry = {PageSize.SIZE_4K: (sets_4k, ways_4k), PageSize.SIZE_2M: (sets_2m, ways_2m),
                    PageSize.SIZE_1G: (sets_1g, ways_1g)}
        self.arrays = {size: TlbArray(size, sets=s, ways=w, contexts=contexts)
                       for size, (s, w) in geometry.items()}
        ctx_bits = max(1, ceil_log2(contexts))
        super().__init__({
            "lookup_en": In(1),
            "lookup_page": In(GPA_BITS - 12),   # S0: GPA[47:12]
            "lookup_ctx": In(ctx_bits),         # S0
            "lookup_access": In(Access),        # S0
            "hit": Out(1),                      # S1: an entry holds the page
            "ok": Out(1),                       # S1: one allows the access: ``size``, ``entry``
            "size": Out(PageSize),
            "entry": Out(TlbEntry),
            "drop": In(1),                      # S1: drop every entry that hit
            "fill": In(1),
            "fill_size": In(PageSize),
            "fill_page": In(GPA_BITS - 12),     # GPA[47:12]
            "fill_ctx": In(ctx_bits),
            "fill_entry": In(TlbEntry),
            "flush": In(contexts),
        })

    @property
    def entries(self):
        return sum(a.sets * a.ways for a in self.arrays.values())

    def elaborate(self, platform):
        m = Module()
        for size, arr in self.arrays.items():
            m.submodules[f"tlb_{size.name[5:].lower()}"] = arr
            low = arr.shift - 12          # the array's page number starts at GPA[shift]
            m.d.comb += [
                arr.lookup_en.eq(self.lookup_en), arr.lookup_page.eq(self.lookup_page[low:]),
                arr.lookup_ctx.eq(self.lookup_ctx), arr.lookup_access.eq(self.lookup_access),
                arr.fill.eq(self.fill & (self.fill_size == size)),
                arr.fill_page.eq(self.fill_page[low:]), arr.fill_ctx.eq(self.fill_ctx),
                arr.fill_entry.eq(self.fill_entry), arr.flush.eq(self.flush),
            ]
        # priority 1G < 2M < 4K among entries that allow the access: the last assignment wins
        for size in (PageSize.SIZE_1G, PageSize.SIZE_2M, PageSize.SIZE_4K):
            arr = self.arrays[size]
            with m.If(arr.ok):
                m.d.comb += [self.ok.eq(1), self.size.eq(size), self.entry.eq(arr.entry)]
        m.d.comb += self.hit.eq(Cat(arr.hit for arr in self.arrays.values()).any())
        for arr in self.arrays.values():
            m.d.comb += arr.drop.eq(self.drop)
        return m
