"""Performance counters: one 48-bit wrapping counter per event.

Each cycle, every counter adds its event input (a count, so several walkers
can report in one cycle).  ``clear`` zeroes them all; events in the same cycle
are dropped.  The counters are registers: a count shows the cycle after its
event.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import PERF_EVENTS, PerfCounters

__all__ = ["PerfCounterBank", "PerfEvents"]

PerfEvents = data.StructLayout({name: 8 for name in PERF_EVENTS})


class PerfCounterBank(wiring.Component):
    events: In(PerfEvents)
    clear: In(1)
    counters: Out(PerfCounters)

    def elaborate(self, platform):
        m = Module()
        for name in PERF_EVENTS:
            counter = self.counters[name]
            with m.If(self.clear):
                m.d.sync += counter.eq(0)
            with m.Elif(self.events[name] != 0):
                m.d.sync += counter.eq(counter + self.events[name])
        return m
