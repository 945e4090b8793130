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
from dataclasses import dataclass, field
from typing import Callable

from model.formats import Access, Eptp, Outcome
from model.guest import PG_A, PG_D, GuestRegs
from model.nested import LaOutcome
from model.physmem import PhysicalMemory

from sim.cosim.dram import Dram, DramConfig
from sim.cosim.ports import ports

# also HW_OUTCOME and PAGE_SIZES (module __getattr__: they import Amaranth)
__all__ = ["Ticket", "LinearTicket", "GuestLoad", "HarnessCore", "HangError", "run_hooks", "Fields",
           "MEM_REQUEST", "MEM_RESPONSE", "TRANSLATE_REQUEST", "TRANSLATE_RESPONSE", "INVEPT_REQUEST",
           "LINEAR_REQUEST", "LINEAR_RESPONSE", "INVVPID_REQUEST", "NESTED_COUNTERS", "NESTED_EVENTS",
           "INVVPID_KINDS", "PERF", "PERF_EVENTS", "TAG_BITS", "INVEPT_SINGLE", "INVEPT_GLOBAL"]

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
# the nested unit's linear port (hw.layouts.LinearOutcome), by raw value
_LA_OUTCOME_BY_RAW = {v: LaOutcome[n] for n, v in _P["enums"]["LinearOutcome"].items()
                      if n in LaOutcome.__members__}
_LA_BUS_ERROR_RAW = _P["enums"]["LinearOutcome"]["BUS_ERROR"]
_LA_REFUSED_RAW = _P["enums"]["LinearOutcome"]["REFUSED"]
NESTED_EVENTS: list[str] = _P.get("NESTED_EVENTS", [])
# INVVPID kinds by replay name (hw.layouts.InvvpidKind); the fallback is the spec's numbering
INVVPID_KINDS: dict[str, int] = {n.lower(): v for n, v in _P["enums"].get(
    "InvvpidKind", {"ADDRESS": 0, "SINGLE": 1, "ALL": 2, "SINGLE_KEEP_GLOBAL": 3}).items()}
_LA_MASK = (1 << 48) - 1
_FRAME_MASK = (1 << 40) - 1


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
LINEAR_REQUEST = Fields("LinearRequest")
LINEAR_RESPONSE = Fields("LinearResponse")
# absent until hw/ has the VPID/INVVPID ports (then None)
INVVPID_REQUEST = Fields("InvvpidRequest") if "InvvpidRequest" in _P["layouts"] else None
NESTED_COUNTERS = Fields("NestedCounters") if "NestedCounters" in _P["layouts"] else None


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


class _Answered:
    """What a ticket of either port says of its timing (``accepted``/``answered`` cycles)."""

    @property
    def done(self) -> bool:
        return self.answered is not None

    @property
    def cycles(self) -> int:
        return self.answered - self.accepted


@dataclass(eq=False)
class Ticket(_Answered):
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


    def architectural(self) -> tuple:
        return (self.outcome, self.hpa, self.page_size, self.memtype, self.qual)


@dataclass(eq=False)
class LinearTicket(_Answered):
    """One guest linear access through the nested unit's ``linear_req``/``linear_resp``.

    ``outcome`` is a :class:`model.nested.LaOutcome`, or None for a bus error
    (``bus_error``) or a refusal (``refused``).  The fields not defined for the
    outcome stay None, so :meth:`architectural` compares with
    :meth:`model.nested.NestedTranslation.architectural`.

    The scoreboard's windows (store sequence numbers): guest paging-structure
    entries may hold any value from ``seq_guest`` to ``seq_end`` (a combined
    TLB or guest paging-structure cache may keep them since the last
    invalidation covering this VPID and LA), EPT entries any value from
    ``seq_cache`` (the last covering INVEPT).  ``inv_addr`` gives, per guest
    page size, the last INVVPID individual-address in the same page of that
    size (a cached mapping of that size covering the LA was dropped then).
    """
    la: int
    access: Access
    user: bool = False
    eptp: Eptp | None = None          # the EPT context when the request was taken
    regs: GuestRegs | None = None     # the guest context then (None: never loaded)
    cr3_valid: bool = False
    vpid_valid: bool = False
    submitted: int = 0
    accepted: int | None = None
    answered: int | None = None
    seq_start: int = 0
    seq_end: int = 0
    seq_cache: int = 0                # EPT entries' window opens here
    seq_guest: int = 0                # guest entries' window opens here
    inv_addr: dict = field(default_factory=dict)   # page size -> seq of the last covering INVVPID address
    tag: int | None = None
    outcome: LaOutcome | None = None
    bus_error: bool = False
    refused: bool = False
    gpa: int | None = None
    hpa: int | None = None
    page_size: int | None = None
    memtype: int | None = None
    pf_error: int | None = None
    qual: int | None = None
    retries: int = 0
    errors_seen: int = 0


    def request_raw(self) -> int:
        """The LinearRequest payload (tag assigned)."""
        return _pack_linear(self.la & _LA_MASK, int(self.access), int(self.user), self.tag)

    def architectural(self) -> tuple:
        return (self.outcome, self.gpa, self.hpa, self.page_size, self.memtype, self.pf_error, self.qual)


@dataclass(frozen=True)
class GuestLoad:
    """One cycle's guest-context strobes: ``cr3_frame`` (CR3[51:12]) pulses
    ``cr3_load`` unless None, ``vpid`` pulses ``vpid_load`` unless None;
    ``paging``/``wp``/``nxe`` are levels, driven from this cycle on."""
    cr3_frame: int | None
    vpid: int | None
    paging: bool
    wp: bool
    nxe: bool
    cr3: int | None = None            # the whole CR3 (bookkeeping)


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
    nested = False         # the DUT is hw.nested_top.NestedWalkUnit (linear port, guest context)
    has_vpid = False       # ... with vpid/invvpid/nested_counters ports
    linear_caches = False  # ... with a combined TLB and guest paging-structure caches
    gpa_tags = 1 << TAG_BITS     # tags the GPA port may use (the nested unit keeps the top ones)

    def __init__(self, memory: PhysicalMemory, dram: DramConfig | None, *,
                 resp_stall_probability: float, seed: int,
                 store_seq: Callable[[], int] | None):
        if not 0 <= resp_stall_probability < 1:
            raise ValueError(f"response stall probability must be in [0, 1), "
                             f"not {resp_stall_probability}")
        self.memory = memory
        self._dram = Dram(memory, dram)
        if self.nested:
            self._dram.ad_bits |= PG_A | PG_D    # the guest walkers' A/D CASes
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
        # the nested unit's guest context and invalidations
        self._guest_loads: deque[GuestLoad] = deque()
        self.guest_loads_seen = 0
        self._invvpids: deque[tuple[int, int, int, int]] = deque()   # (kind, vpid, la, store seq)
        self.invvpids_sent = 0
        self.invvpid_error = False
        self.guest_idle = True
        self._nested_counters_raw = 0
        self._gfloor_vpid: dict[int, int] = {}    # vpid -> seq of its last MOV CR3 / INVVPID single
        self._gfloor_all = 0                      # seq of the last INVVPID all-context
        self._gfloor_addr: dict[tuple[int, int, int], int] = {}   # (page shift, vpid, la >> shift)
        self._drop_requests()

    def _drop_requests(self) -> None:
        """Forget every request and the context: at construction and at a reset."""
        self.pending: deque[Ticket] = deque()     # not yet taken by the port
        self.inflight: dict[int, Ticket] = {}     # taken, not yet answered, by tag
        self.free_tags: deque[int] = deque(range(self.gpa_tags))
        self.eptp: Eptp | None = None
        self.eptp_valid = False
        self.linear_pending: deque[LinearTicket] = deque()
        self.linear_inflight: dict[int, LinearTicket] = {}
        self.linear_free_tags: deque[int] = deque(range(1 << TAG_BITS))
        self.regs: GuestRegs | None = None      # the guest context as loaded (vpid as asked)
        self._levels = (False, False, False)    # paging, wp, nxe as driven
        self.cr3_valid = False
        self.vpid_valid = False
        self._gfloor_ctx = 0

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

    # -- the nested unit's edges -------------------------------------------------------
    def _next_linear(self) -> LinearTicket | None:
        """The linear request to offer this cycle (its tag assigned), or None.
        No new request is offered while a guest-context or INVVPID strobe is
        queued or an INVEPT is (so none is taken at the edge an invalidation
        is); one offered and not yet taken stays offered (a stream's valid is
        held until ready), and if an invalidation is then taken at the same
        edge, the request counts as taken after it."""
        if not self.linear_pending or not self.linear_free_tags:
            return None
        lt = self.linear_pending[0]
        if lt.tag is None and (self._guest_loads or self._invvpids or self._invepts):
            return None
        lt.tag = self.linear_free_tags[0]
        return lt

    def _accept_linear(self, lt: LinearTicket) -> None:
        """The unit took the linear request ``lt`` at this cycle's edge."""
        self.linear_pending.popleft()
        self.linear_free_tags.popleft()
        lt.accepted = self.cycle
        lt.eptp = self.eptp if self.eptp_valid else None
        lt.regs = self.regs
        lt.cr3_valid, lt.vpid_valid = self.cr3_valid, self.vpid_valid
        lt.seq_start = seq = self.store_seq()
        lt.seq_cache = self.cache_floor(lt.eptp.tag) if lt.eptp and self.caches else seq
        if self.linear_caches and self.regs is not None:
            vpid, la = self.regs.vpid, lt.la & _LA_MASK
            base = max(self._gfloor_ctx, self._gfloor_vpid.get(vpid, 0), self._gfloor_all, lt.seq_cache)
            a = self._gfloor_addr
            lt.inv_addr = {1 << s: max(base, a.get((s, vpid, la >> s), 0)) for s in (12, 21, 30)}
            lt.seq_guest = lt.inv_addr[1 << 12]
        else:
            lt.seq_guest = seq
            lt.inv_addr = {1 << s: seq for s in (12, 21, 30)}
        self.linear_inflight[lt.tag] = lt

    def _complete_linear(self, raw: int) -> None:
        """The LinearResponse ``raw`` was taken at this cycle's edge."""
        lt = self.linear_inflight.pop((raw >> _LTAG_OFF) & _LTAG_MASK)
        self.linear_free_tags.append(lt.tag)
        f = LINEAR_RESPONSE.get
        code = f(raw, "outcome")
        lt.answered = self.cycle
        lt.retries = f(raw, "retries")
        if code == _LA_REFUSED_RAW:
            lt.refused = True
        elif code == _LA_BUS_ERROR_RAW:
            lt.bus_error = True
        elif code not in _LA_OUTCOME_BY_RAW:
            raise ValueError(f"{code} is not a valid LinearOutcome")
        else:
            o = lt.outcome = _LA_OUTCOME_BY_RAW[code]
            if o is LaOutcome.OK:
                size = f(raw, "page_size")
                if size not in _PAGE_SIZE_BY_RAW:
                    raise ValueError(f"{size} is not a valid PageSize")
                lt.gpa, lt.hpa, lt.page_size, lt.memtype = (f(raw, "gpa"), f(raw, "hpa"),
                                                            _PAGE_SIZE_BY_RAW[size], f(raw, "memtype"))
            elif o is LaOutcome.PAGE_FAULT:
                lt.pf_error = f(raw, "pf_error")
            elif o is LaOutcome.VIOLATION:
                lt.gpa, lt.qual = f(raw, "gpa"), f(raw, "qual")
            else:
                lt.gpa = f(raw, "gpa")
        lt.seq_end = self.store_seq()
        self.completed.append(lt)

    def _guest_taken(self, g: GuestLoad) -> None:
        """The strobes of ``g`` were driven at this cycle's edge (before a request taken at it)."""
        self._levels = (g.paging, g.wp, g.nxe)
        seq = self.store_seq()
        if g.vpid is not None:
            base = self.regs or GuestRegs()
            self.regs = GuestRegs(cr3=base.cr3, paging=g.paging, wp=g.wp, nxe=g.nxe, vpid=g.vpid)
            self._gfloor_ctx = seq
        if g.cr3_frame is not None:
            base = self.regs or GuestRegs(vpid=0)
            self.regs = GuestRegs(cr3=g.cr3, paging=g.paging, wp=g.wp, nxe=g.nxe, vpid=base.vpid)
            self._gfloor_vpid[self.regs.vpid] = seq      # MOV CR3 drops the current VPID's
            self._gfloor_ctx = seq

    def _guest_sampled(self, cr3_valid: bool, vpid_valid: bool) -> None:
        """The cycle after a GuestLoad's edge: its results (sampled at this edge)."""
        self.cr3_valid = bool(cr3_valid)
        self.vpid_valid = bool(vpid_valid) if self.has_vpid else True
        self.guest_loads_seen += 1

    def _invvpid_taken(self, inv: tuple[int, int, int, int]) -> None:
        """An INVVPID (kind, vpid, la, seq) takes effect at this cycle's edge."""
        kind, vpid, la, seq = inv
        self.invvpids_sent += 1
        if kind == INVVPID_KINDS["all"]:
            self._gfloor_all = seq
        elif vpid == 0:
            return                               # refused by the unit: nothing dropped
        elif kind == INVVPID_KINDS["address"]:
            if (la >> 47) not in (0, (1 << 17) - 1):
                return                           # non-canonical: refused
            la &= _LA_MASK
            for s in (12, 21, 30):
                self._gfloor_addr[(s, vpid, la >> s)] = seq
        else:                                    # single (and single keeping globals: none here)
            self._gfloor_vpid[vpid] = seq

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
        """The unit's performance counters, read through the port (one cycle);
        with the nested unit's ``nested_counters`` also those, by their
        ``NESTED_EVENTS`` names (no name is in both)."""
        self.step(2)                  # events reach the counters two cycles later
        self._want_counters = True
        self.step(1)
        out = {name: PERF.get(self._counters_raw, name) for name in PERF_EVENTS}
        if self.has_vpid and NESTED_COUNTERS is not None:
            out.update({name: NESTED_COUNTERS.get(self._nested_counters_raw, name)
                        for name in NESTED_EVENTS})
        return out

    def submit(self, gpa: int, access: Access) -> Ticket:
        t = Ticket(gpa, access if type(access) is Access else Access(access), submitted=self.cycle)
        self.pending.append(t)
        return t

    def translate(self, gpa: int, access: Access, limit: int = 100_000) -> Ticket:
        t = self.submit(gpa, access)
        self.run_until(lambda: t.done, limit, f"response for GPA {gpa:#x}")
        return t

    # -- the nested unit's operations ------------------------------------------------
    def _require_nested(self, what: str) -> None:
        if not self.nested:
            raise RuntimeError(f"{what}: the harness was built without the nested unit (nested=False)")

    def linear_floor(self) -> int:
        """The earliest store a linear request taken now may see (the guest
        window of any LA in the current context); the store count without caches."""
        seq = self.store_seq()
        if not self.linear_caches or self.regs is None:
            return seq
        ept = self.cache_floor(self.eptp.tag) if self.eptp and self.eptp_valid else seq
        return max(self._gfloor_ctx, self._gfloor_vpid.get(self.regs.vpid, 0), self._gfloor_all, ept)

    def wait_linear_idle(self, limit: int = 100_000) -> None:
        """Run until no linear request is queued or in flight and ``guest_idle``."""
        self.run_until(lambda: not self.linear_pending and not self.linear_inflight and self.guest_idle,
                       limit, "linear requests to drain")

    def _load(self, loads: list[GuestLoad]) -> None:
        self.wait_linear_idle()
        target = self.guest_loads_seen + len(self._guest_loads) + len(loads)
        self._guest_loads.extend(loads)
        self.run_until(lambda: self.guest_loads_seen >= target, 16, "guest context load")

    def load_guest(self, regs: GuestRegs) -> tuple[bool, bool]:
        """Enter the guest context ``regs``: one cycle pulses ``vpid_load``
        (with ``paging``/``wp``/``nxe``), the next ``cr3_load`` (so MOV CR3
        drops the new VPID's mappings); waits for the linear port to drain
        first.  Returns (cr3_valid, vpid_valid)."""
        self._require_nested("load_guest")
        lv = (bool(regs.paging), bool(regs.wp), bool(regs.nxe))
        self._load([GuestLoad(None, regs.vpid, *lv),
                    GuestLoad((regs.cr3 >> 12) & _FRAME_MASK, None, *lv, cr3=regs.cr3)])
        return self.cr3_valid, self.vpid_valid

    def set_cr3(self, cr3: int) -> bool:
        """MOV to CR3 (drops the current VPID's mappings); returns cr3_valid."""
        self._require_nested("set_cr3")
        self._load([GuestLoad((cr3 >> 12) & _FRAME_MASK, None, *self._levels, cr3=cr3)])
        return self.cr3_valid

    def invvpid(self, kind: str, vpid: int, la: int = 0) -> None:
        """Queue an INVVPID (``kind``: address, single, all, single_keep_global);
        it takes effect at the next edge, covering the stores made before this call."""
        self._require_nested("invvpid")
        if kind not in INVVPID_KINDS:
            raise ValueError(f"INVVPID kind must be one of {', '.join(INVVPID_KINDS)}, not {kind!r}")
        self._invvpids.append((INVVPID_KINDS[kind], vpid, la, self.store_seq()))

    def submit_la(self, la: int, access: Access, user: bool = False) -> LinearTicket:
        self._require_nested("submit_la")
        t = LinearTicket(la, access if type(access) is Access else Access(access), bool(user),
                         submitted=self.cycle)
        self.linear_pending.append(t)
        return t

    def translate_la(self, la: int, access: Access, user: bool = False,
                     limit: int = 100_000) -> LinearTicket:
        t = self.submit_la(la, access, user)
        self.run_until(lambda: t.done, limit, f"linear response for LA {la:#x}")
        return t

    # -- the clock, the subclass's ------------------------------------------------------
    def step(self, n: int = 1) -> None:
        raise NotImplementedError

    def run_until(self, predicate: Callable[[], bool], limit: int, what: str = "condition") -> None:
        raise NotImplementedError

    def close(self, markers=()):
        raise NotImplementedError


_TAG_OFF, _TAG_MASK = TRANSLATE_RESPONSE.field("tag")
_LTAG_OFF, _LTAG_MASK = LINEAR_RESPONSE.field("tag")


def _linear_packer():
    (l_off, l_mask), (a_off, a_mask), (u_off, u_mask), (t_off, t_mask) = (
        LINEAR_REQUEST.field(n) for n in ("la", "access", "user", "tag"))

    def pack(la: int, access: int, user: int, tag: int) -> int:
        return ((la & l_mask) << l_off | (access & a_mask) << a_off | (user & u_mask) << u_off
                | (tag & t_mask) << t_off)
    return pack


_pack_linear = _linear_packer()
