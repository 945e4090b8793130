"""Performance counters: one 48-bit wrapping counter per event.

Each cycle, every counter adds its event input (a count, so several walkers
can report in one cycle).  The events are registered first, so that the
logic that raises them (the TLB compare, the dispatch) does not also drive
48-bit adders: a count shows two cycles after its event.  ``clear`` zeroes
every counter; events registered in the same cycle are dropped.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import PERF_EVENTS

__all__ = ["PerfCounterBank", "PerfEvents", "events_layout"]


def events_layout(events):
    """The per-cycle event counts of an event dict (8 bits each)."""
    return data.StructLayout({name: 8 for name in events})


PerfEvents = events_layout(PERF_EVENTS)


class PerfCounterBank(wiring.Component):
    """One 48-bit wrapping counter per event.

    Parameters
    ----------
    events : dict
        Event name -> description (default :data:`~hw.layouts.PERF_EVENTS`, the
        EPT unit's; the nested unit passes :data:`~hw.layouts.NESTED_EVENTS`).

    Members
    -------
    events : In(events_layout(events))
        Per event, a count to add this cycle (8 bits: several walkers may report).
    clear : In(1)
        Zero every counter at this edge.
    counters : Out(StructLayout({name: 48}))

    Timing
    ------
    An event in cycle ``t`` shows on ``counters`` in ``t+2`` (it is
    registered first).  ``clear`` drops the events registered at its cycle.
    """

    def __init__(self, events=PERF_EVENTS):
        self.names = tuple(events)
        super().__init__({
            "events": In(events_layout(events)),
            "clear": In(1),
            "counters": Out(data.StructLayout({name: 48 for name in events})),
        })

    def elaborate(self, platform):
        m = Module()
        events = Signal.like(self.events)
        m.d.sync += events.eq(self.events)
        for name in self.names:
            counter = self.counters[name]
            event = events[name]
            # The add is split at the event's width so that both adders see operands of one
            # width (Amaranth writes a zero-extended operand at its own width, which lint
            # rightly reports): the low bits add the event and give a carry, which the high
            # bits take as an increment.  The result is the 48-bit wrapping sum.
            n = len(event)
            low = Signal(n + 1, name=f"{name}_low")
            m.d.comb += low.eq(counter[:n] + event)
            high = Mux(low[n], counter[n:] + 1, counter[n:])
            with m.If(self.clear):
                m.d.sync += counter.eq(0)
            with m.Elif(event != 0):
                m.d.sync += counter.eq(Cat(low[:n], high))
        return m
