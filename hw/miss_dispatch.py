"""The miss dispatcher: S2, the park slots and the replay register.

A TLB miss leaves S1 into S2.  There it either starts a walk on a free walker
(from the level a paging-structure cache let it skip to), or, if another
walker is already walking the same 4K page in the same context, waits in a
park slot: when that walk answers, the parked request is looked up again
(replayed through S0), and finds the walk's result in the TLB.  Two requests
for one page then cost one walk.

The dispatcher also keeps what the unit must know of each walk in flight: its
context (cache fills and drops are tagged with it), whether A/D is on, and
whether an INVEPT covered it (a stale walk installs nothing).
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import GPA_BITS, Level, WalkStart, pending_layout
from .walker import WalkRequest

__all__ = ["MissDispatcher", "MissSignature", "DispatchEvents"]

DispatchEvents = data.StructLayout({
    # named as the fields of hw.layouts.PerfCounters they count
    "misses": 1, "dropped": 1, "merged": 1, "walks": 1,
    "psc_hits_pml4e": 1, "psc_hits_pdpte": 1, "psc_hits_pde": 1,
    "walk_cycles": 5,       # walkers busy this cycle (up to 16)
})


class MissSignature(wiring.Signature):
    """S1 resolving into S2, seen from S1.

    Parameters
    ----------
    ctx_bits : int
        Width of the context id in ``req``.

    Members
    -------
    load : Out(1)
        S1 moves on: S2's registers load (whatever the lookup found).
    miss : Out(1)
        ... and the request missed: S2 holds it after this edge.
    dropped : Out(1)
        The miss is a hit that lacked the permission or D (counted apart).
    req : Out(pending_layout(ctx_bits))
    start : Out(WalkStart)
        Where its walk starts (the paging-structure caches' answer).
    full : In(1)
        S2 holds a miss: S1 must not move on (S2 must be empty, not merely
        leaving, so that the dispatch logic stays off S1's enables).
    """

    def __init__(self, ctx_bits):
        super().__init__({
            "load": Out(1), "miss": Out(1), "dropped": Out(1),
            "req": Out(pending_layout(ctx_bits)), "start": Out(WalkStart),
            "full": In(1),
        })


class MissDispatcher(wiring.Component):
    """S2: a miss parks behind a walk of the same page, or starts a walk.

    Parameters
    ----------
    walkers : int
        Walkers (``walk`` has one stream per walker).
    park_slots : int
        Misses that may wait behind a walk to the same page.
    contexts : int
        Context ids (``flush`` is one bit per id).

    Members
    -------
    s1 : In(MissSignature(ctx_bits))
        S1's result.
    flush : In(contexts)
        Contexts being flushed: requests and walks of theirs in flight become
        stale (they complete, but install nothing).
    walk : Out(stream.Signature(WalkRequest)).array(walkers)
        A walk for walker ``k``; ``ready`` is its being idle.
    walker_page : In(ArrayLayout(GPA_BITS - 12, walkers))
        The page each walker walks (the same-page check).
    walker_done : In(walkers)
        Bit ``k``: walker ``k``'s response leaves this cycle.
    walker_ctx : Out(ArrayLayout(ctx_bits, walkers))
    walker_ad : Out(walkers)
    walker_stale : Out(walkers)
        Of each walk started: its context, whether A/D is on, whether a flush
        of its context came since it started (the current cycle's excluded).
    replay : Out(stream.Signature(pending_layout(ctx_bits)))
        A parked request whose walk has answered, to be looked up again; S0
        takes it before a new request.  ``ready`` may depend on ``valid``.
    replay_empty_tlb, replay_empty_psc : Out(1)
        Both ``~replay.valid``, each in a register of its own: S0 steers the
        TLB's and the caches' compares with them (one register steering
        every S0 compare was a long, wide net on ECP5).
    events : Out(DispatchEvents)
        For the performance counters.

    Timing
    ------
    S2 loads at the edge S1 moves on.  In a cycle S2 holds a miss, it
    dispatches it to the lowest-numbered idle walker (the walker's first
    read leaves in that same cycle) unless a busy, not stale walker walks
    its page (same context), in which case it parks, if a slot is free;
    else it waits.  A park slot wakes the cycle after its walker's response
    leaves (so that the replay's S0 read comes after the TLB has written
    the walk's result), and moves into the replay register when that is
    free or being taken: lowest slot first.
    """

    def __init__(self, *, walkers, park_slots, contexts):
        self.walkers = walkers
        self.park_slots = park_slots
        self.contexts = contexts
        ctx_bits = max(1, ceil_log2(contexts))
        Pending = pending_layout(ctx_bits)
        super().__init__({
            "s1": In(MissSignature(ctx_bits)),
            "flush": In(contexts),
            "walk": Out(stream.Signature(WalkRequest)).array(walkers),
            "walker_page": In(data.ArrayLayout(GPA_BITS - 12, walkers)),
            "walker_done": In(walkers),
            "walker_ctx": Out(data.ArrayLayout(ctx_bits, walkers)),
            "walker_ad": Out(walkers),
            "walker_stale": Out(walkers),
            "replay": Out(stream.Signature(Pending)),
            # The copies must differ from replay.valid and from each other, or yosys merges
            # them back: one holds the complement, the other the complement too but computed
            # from replay.valid (below).
            "replay_empty_tlb": Out(1, init=1),
            "replay_empty_psc": Out(1, init=1),
            "events": Out(DispatchEvents),
        })

    def _flushed(self, ctx):
        return self.flush.bit_select(ctx, 1)

    def elaborate(self, platform):
        m = Module()
        n_walk = self.walkers
        walker_bits = range(n_walk) if n_walk > 1 else 1
        Pending = self.s1.req.shape()
        flushed = self._flushed
        # Arrays rather than the ports' views where an index is a signal: a mux, not a shift
        w_ctx = Array(self.walker_ctx[k] for k in range(n_walk))
        w_ad, w_stale = self.walker_ad, self.walker_stale
        w_busy = Signal(n_walk)
        ev = self.events

        # -- S2: loads whenever S1 moves on; only its valid bit follows the compare -----
        s1 = self.s1.req
        s2 = Signal(Pending)
        s2_valid = Signal()
        s2_dropped = Signal()          # S2 holds a hit that lacked the permission or D
        s2_start = Signal(WalkStart)
        s2_leaving = Signal()
        m.d.comb += self.s1.full.eq(s2_valid)
        # Which walkers walk S1's page, compared here and registered with S2 so that the
        # 36-bit page compare stays off S2's dispatch (and the walker's first read).  No walk
        # starts while S1 resolves (S2 is empty then), so a walker's page and context cannot
        # change before S2 uses this; S2 still checks that the walker is busy and not stale.
        s2_walking = Signal(n_walk)
        with m.If(self.s1.load):
            m.d.sync += [s2.eq(s1), s2.stale.eq(s1.stale | flushed(s1.ctx)), s2_valid.eq(self.s1.miss),
                         s2_dropped.eq(self.s1.dropped), s2_start.eq(self.s1.start),
                         s2_walking.eq(Cat((w_ctx[k] == s1.ctx) & (self.walker_page[k] == s1.gpa[12:])
                                           for k in range(n_walk)))]
        with m.Elif(s2_leaving):
            m.d.sync += s2_valid.eq(0)
        with m.Elif(s2_valid):
            m.d.sync += s2.stale.eq(s2.stale | flushed(s2.ctx))

        # -- S2, a miss: park behind a walk of the same page, or start a walk ------
        same_page = Signal(n_walk)
        for k in range(n_walk):
            m.d.comb += same_page[k].eq(w_busy[k] & ~w_stale[k] & s2_walking[k])
        merge_walker = Signal(walker_bits)
        for k in reversed(range(n_walk)):
            with m.If(same_page[k]):
                m.d.comb += merge_walker.eq(k)
        free_walker = Signal(walker_bits)
        walker_idle = Signal(n_walk)
        for k, walk in enumerate(self.walk):
            m.d.comb += walker_idle[k].eq(walk.ready)
        for k in reversed(range(n_walk)):
            with m.If(walker_idle[k]):
                m.d.comb += free_walker.eq(k)

        park = _ParkSlots(self, Pending, walker_bits)
        parked = Signal()
        dispatched = Signal()
        m.d.comb += [
            parked.eq(s2_valid & same_page.any() & ~park.valid.all()),
            dispatched.eq(s2_valid & ~same_page.any() & walker_idle.any()),
            s2_leaving.eq(parked | dispatched),
        ]
        with m.If(s2_leaving):
            m.d.comb += [ev.misses.eq(1), ev.dropped.eq(s2_dropped)]
        with m.If(parked):
            m.d.comb += ev.merged.eq(1)
        park.build(m, parked, s2, merge_walker)

        with m.If(dispatched):
            m.d.comb += ev.walks.eq(1)
            with m.Switch(s2_start.level):
                with m.Case(Level.PTE):
                    m.d.comb += ev.psc_hits_pde.eq(1)
                with m.Case(Level.PDE):
                    m.d.comb += ev.psc_hits_pdpte.eq(1)
                with m.Case(Level.PDPTE):
                    m.d.comb += ev.psc_hits_pml4e.eq(1)

        for k, walk in enumerate(self.walk):
            go = dispatched & (free_walker == k)
            p = walk.payload
            m.d.comb += [
                walk.valid.eq(go),
                p.gpa.eq(s2.gpa), p.access.eq(s2.access), p.tag.eq(s2.tag),
                p.pml4.eq(s2.pml4), p.ad_enabled.eq(s2.ad_enabled), p.ctx_valid.eq(1),
                p.start_level.eq(s2_start.level), p.start_table.eq(s2_start.table),
                p.start_perms.eq(s2_start.perms),
            ]
            with m.If(go):
                m.d.sync += [w_busy[k].eq(1), w_ctx[k].eq(s2.ctx), w_ad[k].eq(s2.ad_enabled),
                             w_stale[k].eq(s2.stale | flushed(s2.ctx))]
            with m.Else():
                with m.If(self.walker_done[k]):
                    m.d.sync += w_busy[k].eq(0)
                m.d.sync += w_stale[k].eq(w_stale[k] | flushed(w_ctx[k]))
        m.d.comb += ev.walk_cycles.eq(sum(~walker_idle[k] for k in range(n_walk)))
        return m


class _ParkSlots:
    """The park slots and the replay register (a part of :class:`MissDispatcher`)."""

    def __init__(self, dispatcher, layout, walker_bits):
        n_park = dispatcher.park_slots
        self.d = dispatcher
        self.n = n_park
        self.slots = Array(Signal(layout, name=f"park{i}") for i in range(n_park))
        self.valid = Signal(n_park, name="park_valid")
        self.ready = Signal(n_park, name="park_ready")     # its walk has answered: look it up again
        self.wait = Array(Signal(walker_bits, name=f"park{i}_walker") for i in range(n_park))

    def build(self, m, parked, s2, merge_walker):
        d, n_park = self.d, self.n
        park, park_valid, park_ready, park_wait = self.slots, self.valid, self.ready, self.wait
        flushed = d._flushed
        slot_bits = range(n_park) if n_park > 1 else 1
        free_park = Signal(slot_bits)
        for i in reversed(range(n_park)):
            with m.If(~park_valid[i]):
                m.d.comb += free_park.eq(i)
        with m.If(parked):
            m.d.sync += [
                park[free_park].eq(s2),
                park[free_park].stale.eq(s2.stale | flushed(s2.ctx)),
                park_wait[free_park].eq(merge_walker),
                park_valid.bit_select(free_park, 1).eq(1),
                park_ready.bit_select(free_park, 1).eq(0),
            ]

        # Park slots wake a cycle after their walker's answer, so that the replay's S0 read
        # comes after the TLB has written the walk's result; a woken slot moves into the
        # replay register as soon as it is free (or being taken by S0), leaving the park.
        w_done_q = Signal(len(d.walker_done))
        m.d.sync += w_done_q.eq(d.walker_done)
        waking = Signal(n_park)
        for i in range(n_park):
            m.d.comb += waking[i].eq(park_valid[i] & (park_ready[i]
                                                      | w_done_q.bit_select(park_wait[i], 1)))
            with m.If(park_valid[i] & w_done_q.bit_select(park_wait[i], 1)):
                m.d.sync += park_ready[i].eq(1)
            with m.If(park_valid[i]):
                m.d.sync += park[i].stale.eq(park[i].stale | flushed(park[i].ctx))
        wake_sel = Signal(slot_bits)
        for i in reversed(range(n_park)):
            with m.If(waking[i]):
                m.d.comb += wake_sel.eq(i)
        rp, rp_valid = d.replay.payload, d.replay.valid
        # S0 takes the replay register when it has one (ready, with valid)
        free = ~rp_valid | d.replay.ready
        m.d.sync += d.replay_empty_psc.eq(Mux(free, ~waking.any(), ~rp_valid))
        with m.If(free):
            m.d.sync += [rp_valid.eq(waking.any()), d.replay_empty_tlb.eq(~waking.any())]
            with m.If(waking.any()):
                m.d.sync += [rp.eq(park[wake_sel]),
                             rp.stale.eq(park[wake_sel].stale | flushed(park[wake_sel].ctx)),
                             park_valid.bit_select(wake_sel, 1).eq(0),
                             park_ready.bit_select(wake_sel, 1).eq(0)]
        with m.Else():
            m.d.sync += rp.stale.eq(rp.stale | flushed(rp.ctx))
