"""The accessed/dirty updater: one compare-and-swap per entry that needs a bit.

After a walk succeeds with EPTP bit 6 set, the walker hands over the entries
it read and a mask of the levels whose entry lacks A (or, for the leaf of a
write, D).  The updater issues a CAS for each, top level first, comparing
against the exact value the walk read and setting only A/D.  It never issues
a plain write.  ``done`` pulses once with a status: DONE, LOST_RACE (a CAS
found another value and wrote nothing: the walker must walk again) or
BUS_ERROR.

Timing: one memory request per pending level, each issued the cycle after
the previous response; ``done`` is registered.
"""

from amaranth import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import EptEntry, Level, MemOp, MemRequest, MemResponse, PA_BITS

__all__ = ["ADUpdater", "ADStatus", "ADState"]


class ADStatus(enum.Enum, shape=2):
    DONE = 0
    LOST_RACE = 1
    BUS_ERROR = 2


class ADState(enum.Enum, shape=2):
    IDLE = 0
    ISSUE = 1
    WAIT = 2


class ADUpdater(wiring.Component):
    """The CASes that set A (and D) in the entries of a successful walk.

    Parameters
    ----------
    None.

    Members
    -------
    start : In(1)
        Take ``pending`` now (the other inputs are held by the walker until ``done``).
    pending : In(4)
        Bit ``i``: the entry at ``Level(i)`` needs a CAS.
    entries : In(ArrayLayout(EptEntry, 4))
        The values the walk read, indexed by Level: each CAS compares against them.
    addrs : In(ArrayLayout(PA_BITS, 4))
        Where the walk read them.
    leaf_level : In(Level)
    dirty : In(1)
        The access is a write: the leaf's CAS sets D too.
    done : Out(1)
        Pulses once per ``start``, with ``status``.
    status : Out(ADStatus)
    mem_req : Out(stream.Signature(MemRequest))
    mem_resp : In(stream.Signature(MemResponse))
        CASes only, one outstanding.
    debug : Out(Signature({"state": Out(ADState)}))
        For waveforms only.

    Timing
    ------
    The first CAS is offered the cycle after ``start``, each further one the
    cycle after the previous answer, highest level first; ``done`` rises the
    cycle after the last answer (the cycle after ``start`` if nothing is
    pending).  A lost race or a bus error ends the update at that entry.
    """

    start: In(1)
    pending: In(4)                           # bit i: the entry at Level(i) needs a CAS
    entries: In(data.ArrayLayout(EptEntry, 4))   # indexed by Level; held by the walker
    addrs: In(data.ArrayLayout(PA_BITS, 4))
    leaf_level: In(Level)
    dirty: In(1)                             # the access is a write: set D in the leaf
    done: Out(1)
    status: Out(ADStatus)
    mem_req: Out(stream.Signature(MemRequest))
    mem_resp: In(stream.Signature(MemResponse))
    # for waveforms only: the state of the FSM by name
    debug: Out(wiring.Signature({"state": Out(ADState)}))

    def elaborate(self, platform):
        m = Module()
        pend = Signal(4)
        cur = Signal(Level)            # level of the CAS in flight or about to go

        # highest pending level first: the walk order
        with m.If(pend[3]):
            m.d.comb += cur.eq(Level.PML4E)
        with m.Elif(pend[2]):
            m.d.comb += cur.eq(Level.PDPTE)
        with m.Elif(pend[1]):
            m.d.comb += cur.eq(Level.PDE)
        with m.Else():
            m.d.comb += cur.eq(Level.PTE)

        old = self.entries[cur.as_value()]
        new = Signal(EptEntry)
        m.d.comb += [
            new.eq(old),
            new.a.eq(1),
            new.d.eq(old.d | ((cur == self.leaf_level) & self.dirty)),
        ]
        m.d.comb += [
            self.mem_req.payload.op.eq(MemOp.CAS),
            self.mem_req.payload.addr.eq(self.addrs[cur.as_value()]),
            self.mem_req.payload.compare.eq(old),
            self.mem_req.payload.data.eq(new),
        ]

        # The CAS in flight, kept from its issue: its response is judged against
        # these registers rather than against `old` recomputed through the
        # priority encoder and the 4:1 entry mux, which was the unit's critical
        # path on ECP5 (sim/synth.py).  Same values (pend and the walker's
        # entries do not change between issue and response), same timing.
        sent_level = Signal(Level)
        sent_old = Signal(64)

        m.d.sync += self.done.eq(0)
        with m.FSM(name="ad_fsm"):
            with m.State("IDLE"):
                m.d.comb += self.debug.state.eq(ADState.IDLE)
                with m.If(self.start):
                    m.d.sync += pend.eq(self.pending)
                    with m.If(self.pending != 0):
                        m.next = "ISSUE"
                    with m.Else():
                        m.d.sync += [self.done.eq(1), self.status.eq(ADStatus.DONE)]
            with m.State("ISSUE"):
                m.d.comb += [self.debug.state.eq(ADState.ISSUE), self.mem_req.valid.eq(1)]
                with m.If(self.mem_req.ready):
                    m.d.sync += [sent_level.eq(cur), sent_old.eq(old)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += [self.debug.state.eq(ADState.WAIT), self.mem_resp.ready.eq(1)]
                with m.If(self.mem_resp.valid):
                    rest = Signal(4)
                    m.d.comb += rest.eq(pend & ~(1 << sent_level.as_value())[:4])
                    with m.If(self.mem_resp.payload.error):
                        m.d.sync += [self.done.eq(1), self.status.eq(ADStatus.BUS_ERROR)]
                        m.next = "IDLE"
                    with m.Elif(self.mem_resp.payload.data != sent_old):
                        m.d.sync += [self.done.eq(1), self.status.eq(ADStatus.LOST_RACE)]
                        m.next = "IDLE"
                    with m.Elif(rest == 0):
                        m.d.sync += [pend.eq(0), self.done.eq(1), self.status.eq(ADStatus.DONE)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += pend.eq(rest)
                        m.next = "ISSUE"
        return m
