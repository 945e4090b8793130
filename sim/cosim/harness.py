"""The harness core: what both RTL harnesses (pysim, Verilator) keep the same.

A harness drives the unit's ports from Python: it queues translate requests,
EPTP loads and INVEPTs, matches responses to requests by tag, and keeps the
bookkeeping the scoreboard needs.  :class:`HarnessCore` holds that
bookkeeping and every call that does not touch the clock; a backend's
harness (:class:`sim.backends.pysim.PysimHarness`,
:class:`sim.backends.verilator.VerilatorHarness`) adds the clock: ``step``,
``run_until`` and ``close``, calling :meth:`HarnessCore._accept`,
:meth:`HarnessCore._complete` and :meth:`HarnessCore._invept_taken` at the
edges where the handshakes happen, so the two cannot drift apart.

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
from dataclasses import dataclass
from typing import Callable

from model.formats import Access, Eptp, Outcome
from model.physmem import PhysicalMemory

from sim.cosim.dram import Dram, DramConfig
from sim.cosim.ports import ports

# also HW_OUTCOME and PAGE_SIZES (module __getattr__: they import Amaranth)
__all__ = ["Ticket", "HarnessCore", "HangError", "run_hooks", "Fields",
           "MEM_REQUEST", "MEM_RESPONSE", "TRANSLATE_REQUEST", "TRANSLATE_RESPONSE", "INVEPT_REQUEST",
           "PERF", "PERF_EVENTS", "TAG_BITS", "INVEPT_SINGLE", "INVEPT_GLOBAL"]

# The port layouts as numbers (sim.cosim.ports: no Amaranth import on this path).
_P = ports()
TAG_BITS: int = _P["TAG_BITS"]
PERF_EVENTS: list[str] = _P["PERF_EVENTS"]
INVEPT_SINGLE: int = _P["enums"]["InveptKind"]["SINGLE"]
INVEPT_GLOBAL: int = _P["enums"]["InveptKind"]["GLOBAL"]
_SIZES = {"SIZE_4K": 1 << 12, "SIZE_2M": 1 << 21, "SIZE_1G": 1 << 30}
# by raw field value: _fill runs on every response
_OUTCOME_BY_RAW = {v: (None if n == "REFUSED" else Outcome[n]) for n, v in _P["enums"]["Outcome"].items()}
_REFUSED_RAW = _P["enums"]["Outcome"]["REFUSED"]
_PAGE_SIZE_BY_RAW = {v: _SIZES[n] for n, v in _P["enums"]["PageSize"].items()}


def __getattr__(name: str):
    """HW_OUTCOME and PAGE_SIZES, keyed by hw.layouts' enum members (imports Amaranth)."""
    if name == "HW_OUTCOME":
        from hw.layouts import Outcome as HwOutcome
        return {o: _OUTCOME_BY_RAW[o.value] for o in HwOutcome}
    if name == "PAGE_SIZES":
        from hw.layouts import PageSize
        return {p: _PAGE_SIZE_BY_RAW[p.value] for p in PageSize}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Fields:
    """Bit offsets of a struct layout, to pack and unpack raw integers fast.

    Sampling a ``data.View`` builds a ``data.Const`` every cycle, which costs
    more than the design itself; the harness moves plain integers instead.
    """

    def __init__(self, layout: str):
        """``layout``: the name of a struct layout in hw/layouts.py."""
        self._f = {name: (off, (1 << width) - 1) for name, (off, width) in _P["layouts"][layout].items()}

    def field(self, name: str) -> tuple[int, int]:
        """(bit offset, mask) of one field, for a hot path that packs by hand."""
        return self._f[name]

    def get(self, raw: int, name: str) -> int:
        off, mask = self._f[name]
        return (raw >> off) & mask

    def pack(self, **values) -> int:
        raw = 0
        for name, v in values.items():
            off, mask = self._f[name]
            raw |= (int(v) & mask) << off
        return raw


MEM_REQUEST = Fields("MemRequest")
MEM_RESPONSE = Fields("MemResponse")
TRANSLATE_REQUEST = Fields("TranslateRequest")
TRANSLATE_RESPONSE = Fields("TranslateResponse")
INVEPT_REQUEST = Fields("InveptRequest")
PERF = Fields("PerfCounters")


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


class HarnessCore:
    """The bookkeeping of the unit's ports, shared by both RTL harnesses.

    Subclasses set ``caches`` (whether the unit caches translations) and
    provide ``step(n)``, ``run_until(predicate, limit, what)`` and
    ``close(markers)``; at each edge they call :meth:`_accept` for a request
    taken, :meth:`_complete` for a response taken and :meth:`_invept_taken`
    for an INVEPT strobe, and they sample the counters when
    ``_want_counters`` is set.
    """

    caches = True

    def __init__(self, memory: PhysicalMemory, dram: DramConfig | None, *,
                 resp_stall_probability: float, seed: int,
                 store_seq: Callable[[], int] | None):
        if not 0 <= resp_stall_probability < 1:
            raise ValueError(f"response stall probability must be in [0, 1), "
                             f"not {resp_stall_probability}")
        self.memory = memory
        self._dram = Dram(memory, dram)
        self.rng = random.Random(seed ^ 0x5EED)
        self.resp_stall_probability = resp_stall_probability
        self.store_seq = store_seq or (lambda: 0)
        self.cycle = 0
        self.hooks: list[Callable[[int], int | None]] = []
        self._hook_wake: dict = {}       # hook -> first cycle it wants to be called again
        self._want_counters = False
        self._counters_raw = 0
        self.completed: deque[Ticket] = deque()
        self.eptp_error = False
        self._eptp_loads: deque[tuple[int, Eptp | None]] = deque()
        self.eptp_loads_seen = 0       # loads whose result has been sampled
        self._invepts: deque[tuple[int, int, int]] = deque()   # (kind, tag, store seq)
        self.invepts_sent = 0
        self._inv_global = 0                 # store seq of the last INVEPT, global / per tag
        self._inv_by_tag: dict[int, int] = {}
        self._drop_requests()

    def _drop_requests(self) -> None:
        """Forget every request and the context: at construction and at a reset."""
        self.pending: deque[Ticket] = deque()     # not yet taken by the port
        self.inflight: dict[int, Ticket] = {}     # taken, not yet answered, by tag
        self.free_tags: deque[int] = deque(range(1 << TAG_BITS))
        self.eptp: Eptp | None = None
        self.eptp_valid = False

    @property
    def dram(self) -> Dram:
        """The DRAM model: its configuration and statistics."""
        return self._dram

    # -- the edges' bookkeeping -----------------------------------------------------
    def _accept(self, tk: Ticket) -> None:
        """The port took ``tk`` at this cycle's edge."""
        self.pending.popleft()
        self.free_tags.popleft()
        tk.accepted = self.cycle
        tk.eptp = self.eptp if self.eptp_valid else None
        tk.seq_start = self.store_seq()
        tk.seq_cache = self.cache_floor(tk.eptp.tag) if tk.eptp and self.caches else tk.seq_start
        self.inflight[tk.tag] = tk

    def _complete(self, raw: int) -> None:
        """The response ``raw`` (a TranslateResponse) was taken at this cycle's edge."""
        done = self.inflight.pop((raw >> _TAG_OFF) & _TAG_MASK)
        self.free_tags.append(done.tag)
        self._fill(done, raw)
        done.seq_end = self.store_seq()
        self.completed.append(done)

    def _invept_taken(self, inv: tuple[int, int, int]) -> None:
        """An INVEPT takes effect at this cycle's edge (before a request taken at it)."""
        if inv[0] == INVEPT_GLOBAL:
            self._inv_global = inv[2]
        else:
            self._inv_by_tag[inv[1]] = inv[2]

    def _fill(self, t: Ticket, raw: int) -> None:
        f = TRANSLATE_RESPONSE.get
        code = f(raw, "outcome")
        if code not in _OUTCOME_BY_RAW:
            raise ValueError(f"{code} is not a valid Outcome")
        t.answered = self.cycle
        t.retries = f(raw, "retries")
        t.level = f(raw, "level") + 1
        t.outcome = _OUTCOME_BY_RAW[code]
        t.refused = code == _REFUSED_RAW
        if t.outcome is Outcome.OK:
            size = f(raw, "page_size")
            if size not in _PAGE_SIZE_BY_RAW:
                raise ValueError(f"{size} is not a valid PageSize")
            t.hpa, t.page_size, t.memtype = f(raw, "hpa"), _PAGE_SIZE_BY_RAW[size], f(raw, "memtype")
        elif t.outcome is Outcome.VIOLATION:
            t.qual = f(raw, "qual")

    # -- operations (they queue; the clock carries them out) ------------------------
    def load_eptp(self, value: int, decoded: Eptp | None) -> bool:
        """Pulse eptp_load; returns whether the unit accepted the pointer."""
        target = self.eptp_loads_seen + len(self._eptp_loads) + 1
        self._eptp_loads.append((value, decoded))
        self.run_until(lambda: self.eptp_loads_seen >= target, 16, "EPTP load")
        return self.eptp_valid

    def invept(self, kind: str, tag: int = 0) -> None:
        """Queue an INVEPT; it takes effect at the next edge.  Stores made
        before this call are covered by it."""
        kind_value = INVEPT_GLOBAL if kind == "global" else INVEPT_SINGLE
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
        return {name: PERF.get(self._counters_raw, name) for name in PERF_EVENTS}

    def submit(self, gpa: int, access: Access) -> Ticket:
        t = Ticket(gpa, access if type(access) is Access else Access(access), submitted=self.cycle)
        self.pending.append(t)
        return t

    def translate(self, gpa: int, access: Access, limit: int = 100_000) -> Ticket:
        t = self.submit(gpa, access)
        self.run_until(lambda: t.done, limit, f"response for GPA {gpa:#x}")
        return t

    # -- the clock, the subclass's ------------------------------------------------------
    def step(self, n: int = 1) -> None:
        raise NotImplementedError

    def run_until(self, predicate: Callable[[], bool], limit: int, what: str = "condition") -> None:
        raise NotImplementedError

    def close(self, markers=()):
        raise NotImplementedError


_TAG_OFF, _TAG_MASK = TRANSLATE_RESPONSE.field("tag")
