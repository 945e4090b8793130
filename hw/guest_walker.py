"""The guest page walker: one two-dimensional walk at a time (docs/nested.md).

A guest linear address goes through the guest's IA-32e 4-level tables; every
guest entry sits at a GPA that EPT translates first, through the
``ept_req``/``ept_resp`` client port (the EPT unit sits behind it).

Promises:

* for each guest level, top first: the entry's GPA (the CR3 frame or the
  table frame, plus the LA index * 8) goes to EPT as a paging-structure
  access (a read, or a write when EPTP[6] = ``ept_ad`` is 1); an EPT exit
  there ends the walk (qual bit 0 always, bit 7, bit 8 clear, the entry's
  GPA) before the guest entry is looked at; otherwise the entry is read at
  its HPA and judged by :class:`~hw.guest_entry_check.GuestEntryCheck`: not
  present, or a reserved bit, is a #PF and the walk stops;
* U/S and R/W are ANDed, XD ORed (with NXE); after the leaf the guest
  permission check (U/S against ``user``, R/W for user writes and supervisor
  writes with WP, XD for fetches) may #PF; the final GPA then goes to EPT
  for the access (qual bit 8 set, bits 9-11 the guest permissions);
* only when all that succeeded: the guest A/D updates, top level first, each
  a CAS against the value read at the entry's HPA (A where it lacks, D on
  the leaf of a write).  With ``ept_ad`` = 0 each first asks EPT for a write
  to the entry's GPA (a violation: qual bits 0, 1, 7, the entry's GPA) and
  the CAS goes to the HPA that answer gives.  A lost CAS restarts the whole
  2D walk (``retries``, ``lost_race``);
* a walk may start below the PML4E: ``start`` (with the request) names the
  level and the guest table's GPA and HPA frames that a guest
  paging-structure cache held, and the permissions above it; that level's
  entry is then read at its HPA with no EPT translation, and the A/D updates
  start there (the entries above are not read);
* CR0.PG = 0: the LA is the GPA, one EPT translation (qual bits 9-11 =
  1, 1, 0), the EPT leaf's page size;
* a bus error (memory, or EPT's) ends the walk with ``BUS_ERROR``; EPT
  refusing (no EPTP) with ``REFUSED``.

The guest context inputs (``cr3`` ... ``ept_ad``) must hold still while a
walk is in flight.
"""

from types import SimpleNamespace

from amaranth import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .guest_entry_check import GuestEntryCheck
from .layouts import (
    Access, GuestEptRequest, GuestEptResponse, GuestTableEntry, Level, LinearOutcome, LinearRequest,
    LinearResponse, MemOp, MemRequest, MemResponse, Outcome, PageSize,
    FRAME_BITS, GPA_BITS, LA_BITS, PA_BITS, TAG_BITS, check_maxphyaddr,
)

__all__ = ["GuestWalker", "GuestWalkerState", "GuestWalkStart", "WalkInfo"]

QUAL_RD, QUAL_WR, QUAL_GLA, QUAL_FINAL = 1 << 0, 1 << 1, 1 << 7, 1 << 8
PG_A, PG_D = 1 << 5, 1 << 6


GuestWalkStart = data.StructLayout({
    # where a walk starts: from CR3 unless ``cached``; then at ``level``, the level below
    # a guest paging-structure cache hit, with its table and the permissions so far
    "cached": 1,
    "level": Level,
    "table": GuestTableEntry,
})


WalkInfo = data.StructLayout({
    # what a finished walk tells the caches (valid with ``resp``)
    "la": LA_BITS, "access": Access, "user": 1,
    "ept_size": PageSize,          # the EPT leaf mapping the final GPA
    "first_level": Level,          # the highest level read (PML4E unless a cache hit)
    "leaf_level": Level,
    # per level (PDE, PDPTE, PML4E at 1, 2, 3): the next table, as a cache holds it
    "tables": data.ArrayLayout(GuestTableEntry, 4),
})


class GuestWalkerState(enum.Enum, shape=4):
    IDLE = 0
    EPT_WALK = 1         # a guest entry's GPA offered to EPT
    EPT_WALK_WAIT = 2
    READ = 3             # the guest entry's read offered to memory
    READ_WAIT = 4
    EPT_FINAL = 6        # the final GPA offered to EPT
    EPT_FINAL_WAIT = 7
    AD_NEXT = 8          # the entry at ``ad_level`` needs A/D (the others are skipped)
    AD_EPT = 9           # EPTP[6] = 0: the EPT write check of its GPA
    AD_EPT_WAIT = 10
    AD_CAS = 11
    AD_CAS_WAIT = 12
    RESPOND = 13


class GuestWalker(wiring.Component):
    """One 2D walk at a time (see the module docstring).

    Parameters
    ----------
    maxphyaddr : int
        36..52: guest entries' bits 51:maxphyaddr are reserved, frames keep
        the bits below.

    Members
    -------
    req : In(stream.Signature(LinearRequest))
        Ready when idle.
    resp : Out(stream.Signature(LinearResponse))
        Registered; the request's tag.
    cr3 : In(FRAME_BITS)
        CR3[51:12]: the guest PML4's GPA frame.
    paging, wp, nxe : In(1)
        CR0.PG, CR0.WP, EFER.NXE.
    ept_ad : In(1)
        EPTP[6]: guest paging-structure accesses are EPT writes, and guest
        A/D CASes need no EPT write check.
    ept_req : Out(stream.Signature(GuestEptRequest))
    ept_resp : In(stream.Signature(GuestEptResponse))
        The EPT translate client port, one request outstanding.
    mem_req : Out(stream.Signature(MemRequest))
    mem_resp : In(stream.Signature(MemResponse))
        Guest entry reads and A/D CASes at HPAs, one outstanding.
    start : In(GuestWalkStart)
        With ``req``: where the walk starts (from CR3 unless ``cached``).
    info : Out(WalkInfo)
        Valid with ``resp``: what the caches may keep of an OK walk.
    lost_race : Out(1)
        Strobe: a guest A/D CAS lost; walking again from the top.
    debug : Out(Signature({"state": Out(GuestWalkerState), "level": Out(Level)}))
        For waveforms only.

    Timing
    ------
    Each guest level costs one EPT round trip and one memory round trip plus
    a cycle per request issued; the final GPA one EPT round trip; each A/D
    update one CAS round trip (and one EPT round trip with ``ept_ad`` = 0).
    The response is registered.  Requests are served one at a time.
    """

    req: In(stream.Signature(LinearRequest))
    resp: Out(stream.Signature(LinearResponse))
    cr3: In(FRAME_BITS)
    paging: In(1)
    wp: In(1)
    nxe: In(1)
    ept_ad: In(1)
    ept_req: Out(stream.Signature(GuestEptRequest))
    ept_resp: In(stream.Signature(GuestEptResponse))
    mem_req: Out(stream.Signature(MemRequest))
    mem_resp: In(stream.Signature(MemResponse))
    start: In(GuestWalkStart)
    info: Out(WalkInfo)
    lost_race: Out(1)
    debug: Out(wiring.Signature({"state": Out(GuestWalkerState), "level": Out(Level)}))

    def __init__(self, *, maxphyaddr=46):
        self.maxphyaddr = check_maxphyaddr(maxphyaddr)
        super().__init__()
        self.entry_check = GuestEntryCheck(maxphyaddr=self.maxphyaddr)

    def elaborate(self, platform):
        m = Module()
        m.submodules.entry_check = chk = self.entry_check
        r = SimpleNamespace(
            state=Signal(GuestWalkerState), level=Signal(Level), leaf_level=Signal(Level),
            ad_level=Signal(Level), la=Signal(LA_BITS), access=Signal(Access), user=Signal(),
            tag=Signal(TAG_BITS), table=Signal(FRAME_BITS), us=Signal(), rw=Signal(), xd=Signal(),
            entries=Signal(data.ArrayLayout(64, 4)), egpas=Signal(data.ArrayLayout(PA_BITS, 4)),
            ehpas=Signal(data.ArrayLayout(PA_BITS, 4)), gpa=Signal(PA_BITS),
            gsize=Signal(PageSize), cas_hpa=Signal(PA_BITS), retries=Signal(4),
            result=Signal(LinearResponse), first_level=Signal(Level), ept_size=Signal(PageSize),
            accs=Signal(data.ArrayLayout(3, 4)))
        m.d.comb += [self.debug.state.eq(r.state), self.debug.level.eq(r.level),
                     self.resp.payload.eq(r.result), self.resp.payload.tag.eq(r.tag),
                     chk.entry.eq(self.mem_resp.payload.data), chk.level.eq(r.level),
                     chk.nxe.eq(self.nxe)]

        # the current guest entry's GPA: table frame | LA index of this level * 8
        index = Signal(9)
        with m.Switch(r.level):
            for lv in Level:
                with m.Case(lv):
                    lo = 12 + 9 * lv.value
                    m.d.comb += index.eq(r.la[lo:lo + 9])
        r.egpa = Signal(PA_BITS)
        m.d.comb += r.egpa.eq(Cat(C(0, 3), index, r.table))

        # the A/D update of the entry at ad_level: its old value and the one wanted
        r.old = r.entries[r.ad_level.as_value()]
        r.want = Signal(64)
        dirty = (r.ad_level == r.leaf_level) & (r.access == Access.WRITE)
        m.d.comb += r.want.eq(r.old | PG_A | Mux(dirty, PG_D, 0))

        mpa = self.maxphyaddr
        info = self.info
        m.d.comb += [info.la.eq(r.la), info.access.eq(r.access), info.user.eq(r.user),
                     info.ept_size.eq(r.ept_size), info.first_level.eq(r.first_level),
                     info.leaf_level.eq(r.leaf_level)]
        for lv in (1, 2, 3):
            t = info.tables[lv]
            m.d.comb += [t.gpa.eq(r.entries[lv][12:mpa]), t.hpa.eq(r.ehpas[lv - 1][12:]),
                         Cat(t.us, t.rw, t.xd).eq(r.accs[lv])]

        self._ports(m, r)
        self._fsm(m, r, chk.verdict)
        return m

    def _ports(self, m, r):
        """The EPT client port and the memory port, driven from the state."""
        S, ept, mem = GuestWalkerState, self.ept_req.payload, self.mem_req.payload
        with m.Switch(r.state):
            with m.Case(S.EPT_WALK):
                m.d.comb += [self.ept_req.valid.eq(1), ept.gpa.eq(r.egpa[:GPA_BITS]),
                             ept.access.eq(Mux(self.ept_ad, Access.WRITE, Access.READ)),
                             ept.paging.eq(1)]
            with m.Case(S.EPT_FINAL):
                m.d.comb += [self.ept_req.valid.eq(1), ept.gpa.eq(r.gpa[:GPA_BITS]),
                             ept.access.eq(r.access), ept.paging.eq(0)]
            with m.Case(S.AD_EPT):
                m.d.comb += [self.ept_req.valid.eq(1),
                             ept.gpa.eq(r.egpas[r.ad_level.as_value()][:GPA_BITS]),
                             ept.access.eq(Access.WRITE), ept.paging.eq(1)]
            with m.Case(S.EPT_WALK_WAIT, S.EPT_FINAL_WAIT, S.AD_EPT_WAIT):
                m.d.comb += self.ept_resp.ready.eq(1)
            with m.Case(S.READ):
                m.d.comb += [self.mem_req.valid.eq(1), mem.op.eq(MemOp.READ),
                             mem.addr.eq(r.ehpas[r.level.as_value()])]
            with m.Case(S.AD_CAS):
                m.d.comb += [self.mem_req.valid.eq(1), mem.op.eq(MemOp.CAS), mem.addr.eq(r.cas_hpa),
                             mem.compare.eq(r.old), mem.data.eq(r.want)]
            with m.Case(S.READ_WAIT, S.AD_CAS_WAIT):
                m.d.comb += self.mem_resp.ready.eq(1)

    def _fsm(self, m, r, verdict):
        """The walk: request, per level EPT then read, check, final EPT, A/D, response."""
        S, res = GuestWalkerState, r.result
        eresp, mresp = self.ept_resp.payload, self.mem_resp.payload
        lvl, ad_lvl = r.level.as_value(), r.ad_level.as_value()
        write, fetch = r.access == Access.WRITE, r.access == Access.FETCH

        def finish(outcome, **fields):
            m.d.sync += [res.outcome.eq(outcome), res.retries.eq(r.retries), r.state.eq(S.RESPOND)]
            m.d.sync += [getattr(res, k).eq(v) for k, v in fields.items()]

        def page_fault(present, rsvd):
            finish(LinearOutcome.PAGE_FAULT,
                   pf_error=Cat(C(present, 1), write, r.user, C(rsvd, 1), fetch & self.nxe))

        def ept_exit(gpa, qual):
            with m.Switch(eresp.outcome):
                with m.Case(Outcome.VIOLATION):
                    finish(LinearOutcome.VIOLATION, gpa=gpa, qual=eresp.qual | qual)
                with m.Case(Outcome.MISCONFIG):
                    finish(LinearOutcome.MISCONFIG, gpa=gpa)
                with m.Case(Outcome.REFUSED):
                    finish(LinearOutcome.REFUSED)
                with m.Default():
                    finish(LinearOutcome.BUS_ERROR)

        def top():
            return [r.level.eq(Level.PML4E), r.table.eq(self.cr3), r.first_level.eq(Level.PML4E),
                    r.us.eq(1), r.rw.eq(1), r.xd.eq(0), res.eq(0)]

        # the levels whose entry needs A (or D, the leaf of a write), from the first level
        # read down to the leaf: the A/D phase visits only those
        need = Signal(4)
        for lv in range(4):
            e = r.entries[lv]
            # (only the comparisons that are not constant: lint wants none)
            in_range = C(1, 1)
            if lv < 3:
                in_range &= r.leaf_level.as_value() <= lv
            if lv > 0:
                in_range &= r.first_level.as_value() >= lv
            m.d.comb += need[lv].eq(in_range & (~e[5] | ((r.leaf_level.as_value() == lv) & write & ~e[6])))

        def ad_from(mask):
            """To the highest level of ``mask`` that needs an update, or done."""
            target = Signal(Level, name=None)
            for lv in range(4):
                with m.If(mask[lv]):
                    m.d.comb += target.eq(lv)
            with m.If(mask.any()):
                m.d.sync += [r.ad_level.eq(target), r.state.eq(S.AD_NEXT)]
            with m.Else():
                finish(LinearOutcome.OK)

        def ad_advance():
            below = Signal(4, name=None)
            m.d.comb += below.eq(Cat(need[lv] & (ad_lvl > lv) for lv in range(3)))
            ad_from(below)

        with m.Switch(r.state):
            with m.Case(S.IDLE):
                m.d.comb += self.req.ready.eq(1)
                p = self.req.payload
                # the request is captured in every idle cycle, taken or not: only the state
                # waits for ``valid`` (which comes late, from the caches' compares)
                m.d.sync += top() + [r.la.eq(p.la), r.access.eq(p.access), r.user.eq(p.user),
                                     r.tag.eq(p.tag), r.retries.eq(0), r.gpa.eq(p.la)]
                with m.If(self.paging & self.start.cached):
                    self._start_below(m, r, p.la)
                with m.If(self.req.valid):
                    m.d.sync += r.state.eq(Mux(self.paging,
                                               Mux(self.start.cached, S.READ, S.EPT_WALK), S.EPT_FINAL))

            with m.Case(S.EPT_WALK):
                with m.If(self.ept_req.ready):
                    m.d.sync += [r.egpas[lvl].eq(r.egpa), r.state.eq(S.EPT_WALK_WAIT)]

            with m.Case(S.EPT_WALK_WAIT):
                with m.If(self.ept_resp.valid):
                    with m.If(eresp.outcome == Outcome.OK):
                        m.d.sync += [r.ehpas[lvl].eq(eresp.hpa), r.state.eq(S.READ)]
                    with m.Else():
                        ept_exit(r.egpas[lvl], QUAL_RD | QUAL_GLA)

            with m.Case(S.READ):
                with m.If(self.mem_req.ready):
                    m.d.sync += r.state.eq(S.READ_WAIT)

            with m.Case(S.READ_WAIT):
                with m.If(self.mem_resp.valid):
                    self._entry_read(m, r, verdict, finish, page_fault)

            with m.Case(S.EPT_FINAL):
                with m.If(self.ept_req.ready):
                    m.d.sync += r.state.eq(S.EPT_FINAL_WAIT)

            with m.Case(S.EPT_FINAL_WAIT):
                with m.If(self.ept_resp.valid):
                    with m.If(eresp.outcome == Outcome.OK):
                        m.d.sync += [res.gpa.eq(r.gpa), res.hpa.eq(eresp.hpa),
                                     res.memtype.eq(eresp.memtype),
                                     res.page_size.eq(Mux(self.paging, r.gsize, eresp.page_size))]
                        m.d.sync += r.ept_size.eq(eresp.page_size)
                        with m.If(self.paging):
                            ad_from(need)
                        with m.Else():
                            finish(LinearOutcome.OK)
                    with m.Else():
                        ept_exit(r.gpa, Cat(C(QUAL_GLA | QUAL_FINAL, 9), r.us, r.rw, r.xd))

            with m.Case(S.AD_NEXT):
                with m.If(r.want == r.old):
                    ad_advance()
                with m.Elif(self.ept_ad):
                    m.d.sync += [r.cas_hpa.eq(r.ehpas[ad_lvl]), r.state.eq(S.AD_CAS)]
                with m.Else():
                    m.d.sync += r.state.eq(S.AD_EPT)

            with m.Case(S.AD_EPT):
                with m.If(self.ept_req.ready):
                    m.d.sync += r.state.eq(S.AD_EPT_WAIT)

            with m.Case(S.AD_EPT_WAIT):
                with m.If(self.ept_resp.valid):
                    with m.If(eresp.outcome == Outcome.OK):
                        m.d.sync += [r.cas_hpa.eq(eresp.hpa), r.state.eq(S.AD_CAS)]
                    with m.Else():
                        ept_exit(r.egpas[ad_lvl], QUAL_RD | QUAL_GLA)

            with m.Case(S.AD_CAS):
                with m.If(self.mem_req.ready):
                    m.d.sync += r.state.eq(S.AD_CAS_WAIT)

            with m.Case(S.AD_CAS_WAIT):
                with m.If(self.mem_resp.valid):
                    with m.If(mresp.error):
                        finish(LinearOutcome.BUS_ERROR)
                    with m.Elif(mresp.data != r.old):
                        # another agent changed the entry: the whole 2D walk again
                        m.d.comb += self.lost_race.eq(1)
                        m.d.sync += top() + [
                            r.retries.eq(Mux(r.retries == 15, 15, r.retries + 1)),
                            r.state.eq(S.EPT_WALK)]
                    with m.Else():
                        ad_advance()

            with m.Case(S.RESPOND):
                m.d.comb += self.resp.valid.eq(1)
                with m.If(self.resp.ready):
                    m.d.sync += r.state.eq(S.IDLE)

    def _start_below(self, m, r, la):
        """A guest paging-structure cache hit: read the entry of ``start.level`` at its HPA
        (the table's HPA, no EPT translation), with the permissions from above."""
        st = self.start
        index = Signal(9)
        with m.Switch(st.level):
            for lv in (Level.PTE, Level.PDE, Level.PDPTE):
                with m.Case(lv):
                    lo = 12 + 9 * lv.value
                    m.d.comb += index.eq(la[lo:lo + 9])
        lvl = st.level.as_value()
        m.d.sync += [r.level.eq(st.level), r.first_level.eq(st.level), r.table.eq(st.table.gpa),
                     r.egpas[lvl].eq(Cat(C(0, 3), index, st.table.gpa)),
                     r.ehpas[lvl].eq(Cat(C(0, 3), index, st.table.hpa)),
                     r.us.eq(st.table.us), r.rw.eq(st.table.rw), r.xd.eq(st.table.xd)]

    def _entry_read(self, m, r, verdict, finish, page_fault):
        """The guest entry arrived (judged by ``verdict``): fault, descend, or take the leaf."""
        S = GuestWalkerState
        data_ = self.mem_resp.payload.data
        lvl = r.level.as_value()
        mpa = self.maxphyaddr
        m.d.sync += r.entries[lvl].eq(data_)
        with m.If(self.mem_resp.payload.error):
            finish(LinearOutcome.BUS_ERROR)
        with m.Elif(~verdict.present):
            page_fault(0, 0)
        with m.Elif(verdict.reserved):
            page_fault(1, 1)
        with m.Else():
            m.d.sync += [r.us.eq(r.us & verdict.us), r.rw.eq(r.rw & verdict.rw),
                         r.xd.eq(r.xd | verdict.xd),
                         r.accs[lvl].eq(Cat(r.us & verdict.us, r.rw & verdict.rw, r.xd | verdict.xd))]
            with m.If(verdict.leaf):
                # the guest permission check, with the leaf's bits
                us, rw, xd = r.us & verdict.us, r.rw & verdict.rw, r.xd | verdict.xd
                write, fetch = r.access == Access.WRITE, r.access == Access.FETCH
                m.d.sync += r.leaf_level.eq(r.level)
                with m.If((r.user & ~us) | (write & ~rw & (r.user | self.wp)) | (fetch & xd)):
                    page_fault(1, 0)
                with m.Else():
                    m.d.sync += r.state.eq(S.EPT_FINAL)
                with m.Switch(r.level):
                    with m.Case(Level.PTE):
                        m.d.sync += [r.gpa.eq(Cat(r.la[:12], data_[12:mpa])),
                                     r.gsize.eq(PageSize.SIZE_4K)]
                    with m.Case(Level.PDE):
                        m.d.sync += [r.gpa.eq(Cat(r.la[:21], data_[21:mpa])),
                                     r.gsize.eq(PageSize.SIZE_2M)]
                    with m.Default():
                        m.d.sync += [r.gpa.eq(Cat(r.la[:30], data_[30:mpa])),
                                     r.gsize.eq(PageSize.SIZE_1G)]
            with m.Else():
                m.d.sync += [r.table.eq(data_[12:mpa]), r.level.eq(lvl - 1),
                             r.state.eq(S.EPT_WALK)]
