"""The pysim harness: the Amaranth unit, the DRAM model and the port drivers.

One testbench process ("world") runs every cycle: it calls the between-cycle
hooks (the host agent acts here, so host stores fall between clock edges),
drives the memory port from :class:`~sim.dram.Dram`, offers queued translate
requests, EPTP loads and INVEPTs, and samples every handshake at the edge.
Callers drive time from outside with :meth:`PysimHarness.step` /
:meth:`run_until`, which is what lets a Python host interleave pmap
operations with walks in flight.

Responses may leave out of order: each request gets a free tag from a pool
of ``2**TAG_BITS`` and its response is matched by tag.  For the scoreboard,
each ticket records ``seq_cache``: the store sequence number of the last
INVEPT covering its context that took effect at or before its request
handshake (translations cached before it may be used).

Cycle numbers: cycle ``n`` is the clock period ending at the ``n``-th edge
counted from 0.  A translation's ``cycles`` is the response handshake cycle
minus the request handshake cycle.
"""

from __future__ import annotations

import random
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from amaranth import ResetInserter, Signal
from amaranth.sim import Simulator

from hw.layouts import (
    PERF_EVENTS, TAG_BITS, InveptKind, InveptRequest, MemOp, MemRequest, MemResponse,
    Outcome as HwOutcome, PageSize, PerfCounters, TranslateRequest, TranslateResponse,
)
from hw.top import PageWalkUnit
from model.formats import Access, Eptp, Outcome
from model.physmem import PhysicalMemory

from .dram import Dram, DramConfig, DramRequest
from .wave import WaveNames, check_wave_path, finish_waveform, normalize_vcd, trace_groups

__all__ = ["Ticket", "PysimHarness", "HangError", "HW_OUTCOME", "run_hooks"]

HW_OUTCOME = {
    HwOutcome.OK: Outcome.OK, HwOutcome.VIOLATION: Outcome.VIOLATION,
    HwOutcome.MISCONFIG: Outcome.MISCONFIG, HwOutcome.BUS_ERROR: Outcome.BUS_ERROR,
    HwOutcome.REFUSED: None,
}
PAGE_SIZES = {PageSize.SIZE_4K: 1 << 12, PageSize.SIZE_2M: 1 << 21, PageSize.SIZE_1G: 1 << 30}
# the same by raw field value: _fill runs on every response, and an Amaranth
# enum call costs more than the rest of it
_OUTCOME_BY_RAW = {o.value: HW_OUTCOME[o] for o in HwOutcome}
_REFUSED_RAW = HwOutcome.REFUSED.value
_PAGE_SIZE_BY_RAW = {p.value: n for p, n in PAGE_SIZES.items()}


_UNSET = object()      # "nothing driven yet": forces the next ctx.set


class _Fields:
    """Bit offsets of a struct layout, to pack and unpack raw integers fast.

    Sampling a ``data.View`` builds a ``data.Const`` every cycle, which costs
    more than the design itself; the harness moves plain integers instead.
    """

    def __init__(self, layout):
        self._f = {name: (f.offset, (1 << f.width) - 1) for name, f in layout}

    def get(self, raw: int, name: str) -> int:
        off, mask = self._f[name]
        return (raw >> off) & mask

    def pack(self, **values) -> int:
        raw = 0
        for name, v in values.items():
            off, mask = self._f[name]
            raw |= (int(v) & mask) << off
        return raw


_MREQ = _Fields(MemRequest)
_MRESP = _Fields(MemResponse)
_TREQ = _Fields(TranslateRequest)
_TRESP = _Fields(TranslateResponse)
_INV = _Fields(InveptRequest)
_PERF = _Fields(PerfCounters)


def run_hooks(hooks: list, wake: dict, cycle: int) -> None:
    """Call the between-cycle hooks that are due.  A hook may return a cycle
    number N: it is not called again before cycle N (so a simulator may run
    the clock without Python until then); any other return value means "call
    me next cycle"."""
    for hook in hooks:
        if wake.get(hook, 0) <= cycle:
            n = hook(cycle)
            wake[hook] = n if type(n) is int else 0


class HangError(RuntimeError):
    """The unit did not answer within the bound."""


@dataclass(eq=False)
class Ticket:
    """One translation through the port: request, timing and response."""
    gpa: int
    access: Access
    eptp: Eptp | None = None          # the context loaded when the request was taken
    submitted: int = 0
    accepted: int | None = None       # cycle of the request handshake
    answered: int | None = None       # cycle of the response handshake
    seq_start: int = 0                # memory store sequence numbers bracketing it
    seq_end: int = 0
    seq_cache: int = 0                # the last covering INVEPT's sequence number
    tag: int | None = None
    outcome: Outcome | None = None    # None: REFUSED (no valid EPTP)
    refused: bool = False
    hpa: int | None = None
    page_size: int | None = None
    memtype: int | None = None
    qual: int | None = None
    level: int | None = None
    retries: int = 0
    errors_seen: int = 0              # DRAM bus errors injected while it was in flight

    @property
    def done(self) -> bool:
        return self.answered is not None

    @property
    def cycles(self) -> int:
        return self.answered - self.accepted

    def architectural(self) -> tuple:
        return (self.outcome, self.hpa, self.page_size, self.memtype, self.qual)


class PysimHarness:
    """Simulate :class:`~hw.top.PageWalkUnit` against the DRAM model in pysim."""

    def __init__(self, memory: PhysicalMemory, dram: DramConfig | None = None, *,
                 maxphyaddr: int = 46, execute_only: bool = True,
                 resp_stall_probability: float = 0.0, seed: int = 1,
                 wave: str | Path | None = None,
                 store_seq: Callable[[], int] | None = None, **unit_params):
        if not 0 <= resp_stall_probability < 1:
            raise ValueError(f"response stall probability must be in [0, 1), "
                             f"not {resp_stall_probability}")
        self.memory = memory
        # the port protocol Asserts (hw/checks.py) on in every simulation
        unit_params.setdefault("checks", True)
        self.dut = PageWalkUnit(maxphyaddr=maxphyaddr, execute_only=execute_only, **unit_params)
        self.dram = Dram(memory, dram)
        self.rng = random.Random(seed ^ 0x5EED)
        self.resp_stall_probability = resp_stall_probability
        self.store_seq = store_seq or (lambda: 0)
        self.cycle = 0
        self.pending: deque[Ticket] = deque()     # not yet taken by the port
        self.inflight: dict[int, Ticket] = {}     # taken, not yet answered, by tag
        self.free_tags: deque[int] = deque(range(1 << TAG_BITS))
        self.completed: deque[Ticket] = deque()
        self.hooks: list[Callable[[int], int | None]] = []
        self._hook_wake: dict = {}       # hook -> first cycle it wants to be called again
        self.eptp: Eptp | None = None
        self.eptp_valid = False
        self.eptp_error = False
        self._eptp_loads: deque[tuple[int, Eptp | None]] = deque()
        self.eptp_loads_seen = 0       # loads whose result has been sampled
        self._invepts: deque[tuple[int, int, int]] = deque()   # (kind, tag, store seq)
        self.invepts_sent = 0
        self._inv_global = 0                 # store seq of the last INVEPT, global / per tag
        self._inv_by_tag: dict[int, int] = {}
        self._want_counters = False
        self._counters_raw = 0
        self._stack = ExitStack()

        # the unit's reset, driven by reset(): a ResetInserter keeps the design's names
        self._reset = Signal(name="harness_reset")
        self._reset_requested = False
        self.resets = 0
        self.sim = Simulator(ResetInserter(self._reset)(self.dut))
        self.sim.add_clock(1e-8)        # 100 MHz: 10 ns per cycle in waveforms
        self.sim.add_testbench(self._world, background=True)
        self.wave = check_wave_path(wave, ".vcd") if wave is not None else None
        if self.wave is not None:
            # Amaranth's own VCD, renamed to the FST's naming when the run ends
            self._wave_raw = self.wave.with_name(self.wave.name + ".amaranth.tmp")
            self._stack.enter_context(self.sim.write_vcd(str(self._wave_raw)))

    def trace_groups(self) -> dict:
        """Signals for the GTKWave save file, grouped by block."""
        return trace_groups(self.dut)

    # -- the per-cycle process ----------------------------------------------------
    async def _world(self, ctx):
        dut = self.dut
        dram = self.dram
        last_req = last_resp = _UNSET
        last_resp_ready = None
        strobes = False     # eptp_load / invept.valid high last cycle
        loaded = False      # eptp_load was high last cycle: sample its result now
        mreq_payload = dut.mem_req.payload.as_value()
        mresp_payload = dut.mem_resp.payload.as_value()
        treq_payload = dut.translate_req.payload.as_value()
        tresp_payload = dut.translate_resp.payload.as_value()
        inv_payload = dut.invept.payload.as_value()
        cas_op = MemOp.CAS.value
        while True:
            run_hooks(self.hooks, self._hook_wake, self.cycle)
            resetting = self._reset_requested
            if resetting:
                ctx.set(self._reset, 1)

            ready, resp = dram.drive()
            ctx.set(dut.mem_req.ready, ready)
            if resp is not last_resp:
                if resp is None:
                    ctx.set(dut.mem_resp.valid, 0)
                else:
                    ctx.set(dut.mem_resp.valid, 1)
                    ctx.set(mresp_payload, _MRESP.pack(data=resp.result, error=resp.error))
                last_resp = resp

            tk = self.pending[0] if self.pending and self.free_tags else None
            if tk is not last_req:
                ctx.set(dut.translate_req.valid, tk is not None)
                if tk is not None:
                    tk.tag = self.free_tags[0]
                    ctx.set(treq_payload, _TREQ.pack(gpa=tk.gpa, access=int(tk.access), tag=tk.tag))
                last_req = tk
            resp_ready = not (self.resp_stall_probability and
                              self.rng.random() < self.resp_stall_probability)
            if resp_ready is not last_resp_ready:
                ctx.set(dut.translate_resp.ready, resp_ready)
                last_resp_ready = resp_ready

            load = self._eptp_loads.popleft() if self._eptp_loads else None
            inv = self._invepts.popleft() if self._invepts else None
            if strobes or load is not None or inv is not None:
                ctx.set(dut.eptp_load, load is not None)
                if load is not None:
                    ctx.set(dut.eptp_value, load[0])
                ctx.set(dut.invept.valid, inv is not None)
                if inv is not None:
                    ctx.set(inv_payload, _INV.pack(kind=inv[0], tag=inv[1]))
                    self.invepts_sent += 1
                strobes = load is not None or inv is not None

            (_, _, mreq_valid, mreq, mresp_ready, treq_ready, tresp_valid, tresp,
             eptp_valid, eptp_error) = await ctx.tick().sample(
                dut.mem_req.valid, mreq_payload, dut.mem_resp.ready,
                dut.translate_req.ready, dut.translate_resp.valid, tresp_payload,
                dut.eptp_valid, dut.eptp_error)

            offered = None
            if mreq_valid:
                f = _MREQ.get
                offered = DramRequest("cas" if f(mreq, "op") == cas_op else "read", f(mreq, "addr"),
                                      compare=f(mreq, "compare"), data=f(mreq, "data"))
            dram.clock(offered, bool(resp is not None and mresp_ready))
            if resp is not None and resp.error and mresp_ready:
                for t in self.inflight.values():
                    t.errors_seen += 1

            if inv is not None:       # it took effect at this edge
                if inv[0] == InveptKind.GLOBAL.value:
                    self._inv_global = inv[2]
                else:
                    self._inv_by_tag[inv[1]] = inv[2]
            if tk is not None and treq_ready:
                self.pending.popleft()
                self.free_tags.popleft()
                tk.accepted = self.cycle
                tk.eptp = self.eptp if self.eptp_valid else None
                tk.seq_start = self.store_seq()
                tk.seq_cache = self.cache_floor(tk.eptp.tag) if tk.eptp and self.dut.caches else tk.seq_start
                self.inflight[tk.tag] = tk
                last_req = _UNSET    # re-drive next cycle
            if tresp_valid and resp_ready:
                done = self.inflight.pop(_TRESP.get(tresp, "tag"))
                self.free_tags.append(done.tag)
                self._fill(done, tresp)
                done.seq_end = self.store_seq()
                self.completed.append(done)
            if self._want_counters:
                self._counters_raw = ctx.get(dut.counters.as_value())
                self._want_counters = False

            if load is not None:
                self.eptp = load[1]
            self.eptp_valid = bool(eptp_valid)
            self.eptp_error = bool(eptp_error)
            if loaded:
                self.eptp_loads_seen += 1
            loaded = load is not None
            if resetting:
                # the memory interface is reset with the unit: what it had not
                # answered is dropped (a CAS it performed stays: it was atomic)
                ctx.set(self._reset, 0)
                self._reset_requested = False
                self.resets += 1
                dram.queue.clear()
                self.inflight.clear()
                self.pending.clear()
                self.free_tags = deque(range(1 << TAG_BITS))
                self.eptp, self.eptp_valid, loaded = None, False, False
                last_req = last_resp = _UNSET
            self.cycle += 1

    def reset(self) -> None:
        """Pulse the unit's reset for one cycle, mid-walk or not: requests in
        flight are dropped unanswered, the DRAM model's queue with them, and
        the EPTP must be loaded again."""
        done = self.resets
        self._reset_requested = True
        self.run_until(lambda: self.resets > done, 4, "reset")

    def _fill(self, t: Ticket, raw: int) -> None:
        f = _TRESP.get
        code = f(raw, "outcome")
        if code not in _OUTCOME_BY_RAW:
            HwOutcome(code)         # raises, naming the value
        t.answered = self.cycle
        t.retries = f(raw, "retries")
        t.level = f(raw, "level") + 1
        t.outcome = _OUTCOME_BY_RAW[code]
        t.refused = code == _REFUSED_RAW
        if t.outcome is Outcome.OK:
            size = f(raw, "page_size")
            if size not in _PAGE_SIZE_BY_RAW:
                PageSize(size)      # raises, naming the value
            t.hpa, t.page_size, t.memtype = f(raw, "hpa"), _PAGE_SIZE_BY_RAW[size], f(raw, "memtype")
        elif t.outcome is Outcome.VIOLATION:
            t.qual = f(raw, "qual")

    # -- driving time -------------------------------------------------------------
    def step(self, n: int = 1) -> None:
        target = self.cycle + n
        while self.cycle < target:
            self.sim.advance()

    def run_until(self, predicate: Callable[[], bool], limit: int, what: str = "condition") -> None:
        deadline = self.cycle + limit
        while not predicate():
            if self.cycle >= deadline:
                raise HangError(f"no {what} within {limit} cycles (cycle {self.cycle})")
            self.sim.advance()

    # -- operations -----------------------------------------------------------------
    def load_eptp(self, value: int, decoded: Eptp | None) -> bool:
        """Pulse eptp_load; returns whether the unit accepted the pointer."""
        target = self.eptp_loads_seen + len(self._eptp_loads) + 1
        self._eptp_loads.append((value, decoded))
        self.run_until(lambda: self.eptp_loads_seen >= target, 16, "EPTP load")
        return self.eptp_valid

    def invept(self, kind: str, tag: int = 0) -> None:
        """Queue an INVEPT; it takes effect at the next edge.  Stores made
        before this call are covered by it."""
        kind_value = InveptKind.GLOBAL.value if kind == "global" else InveptKind.SINGLE.value
        self._invepts.append((kind_value, tag, self.store_seq()))

    def cache_floor(self, tag: int) -> int:
        """The store sequence number after which a translation cached for
        EPTP tag ``tag`` may have been made (the last covering INVEPT)."""
        return max(self._inv_global, self._inv_by_tag.get(tag, 0))

    def counters(self) -> dict[str, int]:
        """The unit's performance counters, read through the port (one cycle)."""
        self.step(2)                  # events reach the counters two cycles later
        self._want_counters = True
        self.step(1)
        return {name: _PERF.get(self._counters_raw, name) for name in PERF_EVENTS}

    def submit(self, gpa: int, access: Access) -> Ticket:
        t = Ticket(gpa, access if type(access) is Access else Access(access), submitted=self.cycle)
        self.pending.append(t)
        return t

    def translate(self, gpa: int, access: Access, limit: int = 100_000) -> Ticket:
        t = self.submit(gpa, access)
        self.run_until(lambda: t.done, limit, f"response for GPA {gpa:#x}")
        return t

    def close(self, markers=()) -> Path | None:
        """End the run; with a waveform, finish it (the cycles in ``markers``
        get GTKWave markers) and return the save file's path."""
        self._stack.close()
        self._stack = ExitStack()
        if self.wave is None or not self._wave_raw.exists():
            return None
        try:
            normalize_vcd(self._wave_raw, self.wave, WaveNames(self.dut))
        finally:
            self._wave_raw.unlink(missing_ok=True)
        return finish_waveform(self.wave, self.dut, self.completed, markers)
