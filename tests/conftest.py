"""Shared helpers for the block-level tests (one hw/ block simulated alone).

Plain async functions for ``amaranth.sim`` testbenches, importable as
``from conftest import ...`` (pytest puts this directory on ``sys.path``):

* :func:`run` builds a :class:`~amaranth.sim.Simulator` around a block with a
  clock, adds testbenches and processes, and runs it with a cycle limit;
* :func:`send` offers one payload on a ready/valid stream and waits until
  it is taken; :func:`receive` takes one;
* :class:`Memory` is a behavioural memory (reads and compare-and-swaps, in
  order, with a fixed latency) run as a simulator process on a
  ``mem_req``/``mem_resp`` stream pair.
"""

from collections import deque

from amaranth.sim import Simulator

from hw.layouts import MemOp

__all__ = ["run", "send", "receive", "ticks", "Memory"]


def run(dut, *testbenches, processes=(), deadline_cycles=10_000):
    """Simulate ``dut`` (a 1 ns clock if it has a sync domain) until every testbench returns.

    A testbench still running after ``deadline_cycles`` fails the test."""
    sim = Simulator(dut)
    try:
        sim.add_clock(1e-9)
    except NameError:            # no sync domain: nothing to tick, nothing to time out
        pass
    else:
        async def watchdog(ctx):
            await ticks(ctx, deadline_cycles)
            raise AssertionError(f"testbenches still running after {deadline_cycles} cycles")
        sim.add_testbench(watchdog, background=True)
    for tb in testbenches:
        sim.add_testbench(tb)
    for p in processes:
        sim.add_process(p)
    sim.run()


async def ticks(ctx, n=1):
    for _ in range(n):
        await ctx.tick()


async def send(ctx, stream, payload, *, timeout=1000):
    """Offer ``payload`` on ``stream`` from now until it is taken; returns the cycles waited."""
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    for waited in range(timeout):
        _, _, ready = await ctx.tick().sample(stream.ready)
        if ready:
            ctx.set(stream.valid, 0)
            return waited
    raise AssertionError(f"stream not ready within {timeout} cycles")


async def receive(ctx, stream, *, timeout=1000):
    """Take one payload from ``stream``; returns (payload, cycles waited)."""
    ctx.set(stream.ready, 1)
    for waited in range(timeout):
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid:
            ctx.set(stream.ready, 0)
            return payload, waited
    raise AssertionError(f"no valid payload within {timeout} cycles")


class Memory:
    """A memory on a ``mem_req``/``mem_resp`` pair, answering in request order.

    ``words``: address -> 64-bit value (absent words read 0).  A response
    is valid ``latency`` cycles after its request was taken (at least 1) and
    held until taken.  ``errors``: addresses answered with ``error`` set.
    ``log`` records each request taken as (cycle, op, addr, compare, data);
    ``race`` maps an address to a value written there just before a CAS to
    it is performed (another agent winning the race).
    """

    def __init__(self, mem_req, mem_resp, words=None, *, latency=1, errors=()):
        assert latency >= 1
        self.mem_req, self.mem_resp = mem_req, mem_resp
        self.words = dict(words or {})
        self.latency = latency
        self.errors = set(errors)
        self.race = {}
        self.log = []

    def _perform(self, op, addr, compare, data):
        if addr in self.errors:
            return 0, 1
        if op == MemOp.READ:
            return self.words.get(addr, 0), 0
        if addr in self.race:
            self.words[addr] = self.race.pop(addr)
        old = self.words.get(addr, 0)
        if old == compare:
            self.words[addr] = data
        return old, 0

    async def process(self, ctx):
        req, resp = self.mem_req, self.mem_resp
        queue = deque()          # (cycle due, data, error)
        cycle = 0
        ctx.set(req.ready, 1)
        async for _, _, valid, payload, resp_valid, resp_ready in ctx.tick().sample(
                req.valid, req.payload, resp.valid, resp.ready):
            cycle += 1
            if resp_valid and resp_ready:
                queue.popleft()
            if valid:
                op = MemOp(payload.op)
                self.log.append((cycle, op, payload.addr, payload.compare, payload.data))
                data, error = self._perform(op, payload.addr, payload.compare, payload.data)
                queue.append((cycle + self.latency - 1, data, error))
            if queue and queue[0][0] <= cycle:
                _, data, error = queue[0]
                ctx.set(resp.payload, {"data": data, "error": error})
                ctx.set(resp.valid, 1)
            else:
                ctx.set(resp.valid, 0)

    def reads(self):
        return [addr for _, op, addr, _, _ in self.log if op == MemOp.READ]

    def cases(self):
        return [(addr, compare, data) for _, op, addr, compare, data in self.log if op == MemOp.CAS]

