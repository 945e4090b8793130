"""The EPT walker: one 4-level walk at a time, with the A/D updater behind it.

Promises (docs/ept.md):

* walks from the PML4 down, one memory read per level; stops at a not-present
  entry (violation), a misconfigured one, or a leaf (PTE, 2M PDE, 1G PDPTE);
* a misconfiguration wins over a permission violation, a not-present entry
  above it wins over both; the permission check is the AND over every level;
* on success with A/D enabled, hands the entries to :class:`ADUpdater`; if a
  CAS loses a race the walk restarts from the PML4 and answers for the new
  tables;
* a bus error on any access ends the walk with ``BUS_ERROR``;
* a request without a valid EPTP is answered ``REFUSED``, nothing walked.

A walk may start below the PML4E (``start_level``/``start_table``/
``start_perms`` from a paging-structure cache hit).  If such a walk ends in a
violation or misconfiguration, it pulses ``psc_drop`` and walks again from
the PML4E, so every fault it reports was decided by memory.

Timing: the first read leaves in the cycle the request is taken (when the
memory port is ready); each level costs the memory latency plus one cycle
(the next read leaves the cycle after the response); the response is
registered.  With memory latency L (response L cycles after the request is
accepted) a cold 4-level walk answers 4(L+1) cycles after the request.  The
walker keeps at most one memory request outstanding.
"""

from types import SimpleNamespace

from amaranth import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .ad_updater import ADStatus, ADUpdater
from .entry_check import EntryVerdict
from .layouts import (
    Access, EptEntry, Level, MemOp, MemRequest, MemResponse, Outcome, PageSize,
    TranslateResponse, FRAME_BITS, GPA_BITS, PA_BITS, TAG_BITS, check_maxphyaddr,
)

__all__ = ["Walker", "WalkerState", "WalkRequest"]

WalkRequest = data.StructLayout({
    "gpa": GPA_BITS,
    "access": Access,
    "tag": TAG_BITS,     # returned with the response
    "pml4": FRAME_BITS,  # EPTP[51:12]
    "ad_enabled": 1,     # EPTP[6]
    "ctx_valid": 1,      # a valid EPTP is loaded
    # where to start: PML4E with the PML4 and perms 0b111 for a full walk, or
    # a lower level from a paging-structure cache hit
    "start_level": Level,
    "start_table": FRAME_BITS,
    "start_perms": 3,
})


class WalkerState(enum.Enum, shape=3):
    IDLE = 0
    READ = 1          # read request on the memory port
    WAIT = 2          # waiting for the entry
    AD_UPDATE = 3     # the A/D updater owns the memory port
    RESPOND = 4


class Walker(wiring.Component):
    """One walk at a time, from the level its request names (see the module docstring).

    Parameters
    ----------
    maxphyaddr : int
        36..52: the next table's frame keeps bits below it (the entry check
        on ``mem_verdict`` must use the same value).

    Members
    -------
    req : In(stream.Signature(WalkRequest))
        Ready when idle; the first read leaves in the cycle it is taken.
    resp : Out(stream.Signature(TranslateResponse))
        Registered; the request's tag.
    mem_req : Out(stream.Signature(MemRequest))
    mem_resp : In(stream.Signature(MemResponse))
        Reads, and the A/D updater's CASes; at most one outstanding.
    mem_verdict : In(EntryVerdict)
        :class:`~hw.entry_check.EntryCheck`'s verdict on ``mem_resp``'s data.
    page : Out(GPA_BITS - 12)
    access : Out(Access)
    entries : Out(ArrayLayout(EptEntry, 4))
    perms_at : Out(ArrayLayout(3, 4))
    walked : Out(3)
        What the walk used: for the same-page check and the cache fills,
        valid while the response is offered.
    psc_drop, lost_race : Out(1)
        Strobes: a walk from a cached entry faulted, an A/D CAS lost; in both
        cases the walker walks again from the PML4E.
    debug : Out(Signature({"state": Out(WalkerState), "level": Out(Level)}))
        For waveforms only.

    Timing
    ------
    With memory latency L a walk answers (L+1) cycles per level read after
    the cycle its request is taken; each CAS adds its round trip.  Requests
    are served one at a time, in order.
    """

    req: In(stream.Signature(WalkRequest))
    resp: Out(stream.Signature(TranslateResponse))
    mem_req: Out(stream.Signature(MemRequest))
    mem_resp: In(stream.Signature(MemResponse))
    # :class:`~hw.entry_check.EntryCheck`'s verdict on ``mem_resp``'s data, valid with it: the
    # unit checks each response once for all walkers, or its memory adapter before registering it
    mem_verdict: In(EntryVerdict)
    page: Out(GPA_BITS - 12)      # GPA[47:12] of the walk: the parent's same-page check, cache fills
    access: Out(Access)
    # what the walk used, for filling the caches when the response leaves
    entries: Out(data.ArrayLayout(EptEntry, 4))    # indexed by Level
    perms_at: Out(data.ArrayLayout(3, 4))          # R/W/X AND from the PML4E to each level
    # levels above the PTE read from memory in this walk, bit i-1 for level i: the ones a
    # paging-structure cache can hold, and the ones whose A matters when the leaf is below
    walked: Out(3)
    psc_drop: Out(1)       # strobe: a walk started from a cache faulted; walking again
    lost_race: Out(1)      # strobe: an A/D CAS lost; walking again
    # for waveforms only: nothing in the unit reads these
    debug: Out(wiring.Signature({"state": Out(WalkerState), "level": Out(Level)}))

    def __init__(self, *, maxphyaddr=46):
        self.maxphyaddr = check_maxphyaddr(maxphyaddr)
        super().__init__()
        self.ad_updater = ADUpdater()

    def elaborate(self, platform):
        m = Module()
        m.submodules.ad = self.ad_updater
        state = Signal(WalkerState)
        level = Signal(Level)                  # of the entry being read
        m.d.comb += [self.debug.state.eq(state), self.debug.level.eq(level)]

        gpa = Signal(GPA_BITS)
        m.d.comb += self.page.eq(gpa[12:])
        pml4 = Signal(FRAME_BITS)
        ad_enabled = Signal()
        table = Signal(FRAME_BITS)             # frame of the table being read
        perms = Signal(3)                  # R/W/X AND over the entries so far
        skipped = Signal()                 # this walk started below the PML4E
        addrs = Signal(data.ArrayLayout(PA_BITS, 4))
        retries = Signal(4)
        result = Signal(TranslateResponse)

        tag = Signal(TAG_BITS)
        m.d.comb += [self.resp.payload.eq(result), self.resp.payload.tag.eq(tag)]

        # entry address: table base + 9-bit GPA index of this level * 8
        # In IDLE the first read leaves in the cycle the request is taken, so the
        # address comes from the request; afterwards from the walk's registers.
        idle = state == WalkerState.IDLE
        req = self.req.payload
        cur_level = Signal(Level)
        cur_page = Signal(GPA_BITS - 12)         # GPA[47:12]: what the entry index uses
        cur_table = Signal(FRAME_BITS)
        m.d.comb += [
            cur_level.eq(Mux(idle, req.start_level, level)),
            cur_page.eq(Mux(idle, req.gpa[12:], gpa[12:])),
            cur_table.eq(Mux(idle, req.start_table, table)),
        ]
        index = Signal(9)
        with m.Switch(cur_level):
            for lv in Level:
                with m.Case(lv):
                    lo = 9 * lv.value
                    m.d.comb += index.eq(cur_page[lo:lo + 9])
        entry_addr = Signal(PA_BITS)
        m.d.comb += entry_addr.eq(Cat(C(0, 3), index, cur_table))

        r = SimpleNamespace(state=state, level=level, gpa=gpa, pml4=pml4, ad_enabled=ad_enabled,
                            table=table, perms=perms, skipped=skipped, addrs=addrs,
                            retries=retries, result=result, tag=tag)
        j = self._judge(m, r)
        self._memory_port(m, r, entry_addr, j.pending)
        self._fsm(m, r, j, entry_addr)
        return m

    def _judge(self, m, r):
        """The entry on the memory port, judged for the walk's level (combinational)."""
        level, perms, entries = r.level, r.perms, self.entries
        lvl = level.as_value()
        # the entry arriving from memory, judged already: pick this level's verdict
        entry = EptEntry(self.mem_resp.payload.data)
        present = self.mem_verdict.present
        misconfig = self.mem_verdict.misconfig.bit_select(lvl, 1)
        leaf = Signal()
        with m.Switch(level):
            with m.Case(Level.PTE):
                m.d.comb += leaf.eq(1)
            with m.Case(Level.PDE, Level.PDPTE):
                m.d.comb += leaf.eq(entry.leaf)
        perms_next = Signal(3)
        m.d.comb += perms_next.eq(perms & entry.as_value()[0:3])
        allowed = perms_next.bit_select(self.access.as_value(), 1)
        qual = Signal(7)
        m.d.comb += qual.eq(Cat((1 << self.access.as_value())[:3], perms_next))
        frame_bits = self.maxphyaddr - 12
        next_table = entry.addr[:frame_bits]

        # levels whose entry lacks A, and the leaf of a write lacking D
        pending = Signal(4)
        for lv in Level:
            i = lv.value
            here = lvl == i
            leaf_needs = ~entry.a | ((self.access == Access.WRITE) & ~entry.d)
            if i == 0:
                # the PTE is never above the leaf
                m.d.comb += pending[i].eq(here & leaf_needs)
            else:
                above = (lvl < i) & self.walked[i - 1]      # levels skipped via a cache have A set
                m.d.comb += pending[i].eq((above & ~entries[i].a) | (here & leaf_needs))

        return SimpleNamespace(entry=entry, present=present, misconfig=misconfig, leaf=leaf,
                               perms_next=perms_next, allowed=allowed, qual=qual,
                               next_table=next_table, pending=pending)

    def _memory_port(self, m, r, entry_addr, pending):
        """The A/D updater's inputs, and the memory port: the walk's reads or the updater's CASes."""
        ad, state = self.ad_updater, r.state
        idle = state == WalkerState.IDLE
        req = self.req.payload
        m.d.comb += [
            ad.entries.eq(self.entries),
            ad.addrs.eq(r.addrs),
            ad.leaf_level.eq(r.level),
            ad.dirty.eq(self.access == Access.WRITE),
            ad.pending.eq(pending),
        ]

        # memory port: the walker's reads, or the updater's CASes
        with m.If(state == WalkerState.AD_UPDATE):
            m.d.comb += [
                self.mem_req.valid.eq(ad.mem_req.valid),
                self.mem_req.payload.eq(ad.mem_req.payload),
                ad.mem_req.ready.eq(self.mem_req.ready),
                ad.mem_resp.valid.eq(self.mem_resp.valid),
                ad.mem_resp.payload.eq(self.mem_resp.payload),
                self.mem_resp.ready.eq(ad.mem_resp.ready),
            ]
        with m.Else():
            m.d.comb += [
                self.mem_req.payload.op.eq(MemOp.READ),
                self.mem_req.payload.addr.eq(entry_addr),
                self.mem_req.valid.eq((state == WalkerState.READ)
                                      | (idle & self.req.valid & req.ctx_valid)),
                self.mem_resp.ready.eq(state == WalkerState.WAIT),
            ]

    def _fsm(self, m, r, j, entry_addr):
        """The walk's state machine: request, a read per level, A/D update, response."""
        ad = self.ad_updater
        state, level, gpa, pml4, ad_enabled = r.state, r.level, r.gpa, r.pml4, r.ad_enabled
        table, perms, skipped, addrs, retries, result, tag = \
            r.table, r.perms, r.skipped, r.addrs, r.retries, r.result, r.tag
        entries, lvl = self.entries, level.as_value()
        entry, present, misconfig, leaf = j.entry, j.present, j.misconfig, j.leaf
        perms_next, allowed, qual, next_table, pending = \
            j.perms_next, j.allowed, j.qual, j.next_table, j.pending

        def restart():
            return [level.eq(Level.PML4E), table.eq(pml4), perms.eq(0b111), result.eq(0),
                    self.walked.eq(0), skipped.eq(0), state.eq(WalkerState.READ)]

        def fault(outcome, **fields):
            # a fault seen through a cached upper entry is decided by memory: walk again
            with m.If(skipped):
                m.d.comb += self.psc_drop.eq(1)
                m.d.sync += restart()
            with m.Else():
                m.d.sync += finish(outcome, **fields)

        def finish(outcome, **fields):
            stmts = [result.outcome.eq(outcome), result.level.eq(level),
                     result.retries.eq(retries), state.eq(WalkerState.RESPOND)]
            for k, v in fields.items():
                stmts.append(getattr(result, k).eq(v))
            return stmts

        with m.Switch(state):
            with m.Case(WalkerState.IDLE):
                m.d.comb += self.req.ready.eq(1)
                # An idle walker loads the offered request every cycle, taken or not: nothing
                # reads these registers while it is idle, and so only the state waits for
                # ``valid`` (the dispatch decision then drives a few flip-flops, not hundreds).
                p = self.req.payload
                m.d.sync += [
                    gpa.eq(p.gpa), self.access.eq(p.access), pml4.eq(p.pml4),
                    ad_enabled.eq(p.ad_enabled), retries.eq(0), result.eq(0),
                    tag.eq(p.tag),
                    level.eq(p.start_level), table.eq(p.start_table),
                    perms.eq(p.start_perms), self.walked.eq(0),
                    skipped.eq(p.start_level != Level.PML4E),
                    addrs[p.start_level.as_value()].eq(entry_addr),
                ]
                with m.If(self.req.valid):
                    with m.If(p.ctx_valid & self.mem_req.ready):
                        m.d.sync += state.eq(WalkerState.WAIT)
                    with m.Elif(p.ctx_valid):
                        m.d.sync += state.eq(WalkerState.READ)
                    with m.Else():
                        m.d.sync += [result.outcome.eq(Outcome.REFUSED),
                                     state.eq(WalkerState.RESPOND)]

            with m.Case(WalkerState.READ):
                with m.If(self.mem_req.ready):
                    m.d.sync += [addrs[lvl].eq(entry_addr), state.eq(WalkerState.WAIT)]

            with m.Case(WalkerState.WAIT):
                # The level's entry and permissions are loaded every cycle of the wait (the
                # last load is the answer's): nothing reads them at this level before the
                # answer, and the wide loads then do not wait for the response's valid.
                m.d.sync += [entries[lvl].eq(entry), self.perms_at[lvl].eq(perms_next)]
                with m.If(self.mem_resp.valid):
                    m.d.sync += [perms.eq(perms_next),
                                 self.walked.eq(self.walked | (1 << lvl)[1:4])]
                    with m.If(self.mem_resp.payload.error):
                        m.d.sync += finish(Outcome.BUS_ERROR)
                    with m.Elif(~present):
                        fault(Outcome.VIOLATION, qual=qual)
                    with m.Elif(misconfig):
                        fault(Outcome.MISCONFIG)
                    with m.Elif(leaf):
                        with m.If(~allowed):
                            fault(Outcome.VIOLATION, qual=qual)
                        with m.Else():
                            # the successful result, kept while A/D is set
                            with m.Switch(level):
                                with m.Case(Level.PTE):
                                    m.d.sync += [result.hpa.eq(Cat(gpa[:12], entry.addr)),
                                                 result.page_size.eq(PageSize.SIZE_4K)]
                                with m.Case(Level.PDE):
                                    m.d.sync += [result.hpa.eq(Cat(gpa[:21], entry.addr[9:])),
                                                 result.page_size.eq(PageSize.SIZE_2M)]
                                with m.Default():
                                    m.d.sync += [result.hpa.eq(Cat(gpa[:30], entry.addr[18:])),
                                                 result.page_size.eq(PageSize.SIZE_1G)]
                            m.d.sync += [result.memtype.eq(entry.memtype), result.qual.eq(0)]
                            with m.If(ad_enabled & (pending != 0)):
                                m.d.comb += ad.start.eq(1)
                                m.d.sync += state.eq(WalkerState.AD_UPDATE)
                            with m.Else():
                                m.d.sync += finish(Outcome.OK)
                    with m.Else():
                        m.d.sync += [
                            table.eq(next_table),
                            level.eq(lvl - 1),
                            state.eq(WalkerState.READ),
                        ]

            with m.Case(WalkerState.AD_UPDATE):
                with m.If(ad.done):
                    with m.Switch(ad.status):
                        with m.Case(ADStatus.DONE):
                            m.d.sync += finish(Outcome.OK)
                        with m.Case(ADStatus.BUS_ERROR):
                            m.d.sync += finish(Outcome.BUS_ERROR)
                        with m.Case(ADStatus.LOST_RACE):
                            m.d.comb += self.lost_race.eq(1)
                            m.d.sync += restart() + [
                                retries.eq(Mux(retries == 15, 15, retries + 1)),
                            ]

            with m.Case(WalkerState.RESPOND):
                m.d.comb += self.resp.valid.eq(1)
                with m.If(self.resp.ready):
                    m.d.sync += state.eq(WalkerState.IDLE)
