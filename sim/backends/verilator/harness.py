"""The Verilated unit behind the harness API, with the same results as pysim.

The C++ side owns the DRAM model's timing and runs the clock on its
own.  It performs a due plain read itself, on PhysicalMemory's frames (a
table of their numpy storage, kept current through
``PhysicalMemory.watch_frames``; the read counters are brought up to date
whenever control returns to Python), unless bus errors are injected; it calls
back into Python to perform a CAS (it stores, and the scoreboard's history
observes stores) or any access while errors are injected, and to run the
between-cycle hooks when one is due; it returns to Python after a response
(taken from the shared Status: no callback), and when Python's inputs would
change (a new request, an EPTP load or INVEPT, a counter read, also when
queued by a hook).  A request taken is noted in the Status, not called back:
Python does its bookkeeping first thing when it next runs (a callback or the
return), so per translation the loop costs one call and one return, plus
the hooks and CASes it meets.
:class:`VerilatorHarness` runs those cycles, and every cycle when a per-cycle
random draw is needed, with the same steps and in the same order as
:class:`~sim.backends.pysim.PysimHarness`, so both give the same results cycle for
cycle on the same seeds.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum
from pathlib import Path
from typing import Callable

from model.physmem import PhysicalMemory

from sim.backends.checked import ScoreboardBackend
from sim.backends.verilator.build import build_model
from sim.cosim.dram import Dram, DramConfig, DramRequest
from sim.cosim.harness import (
    INVEPT_REQUEST, INVEPT_SINGLE, INVVPID_REQUEST, TAG_BITS, TRANSLATE_REQUEST, GuestLoad, HangError,
    HarnessCore, LinearTicket, Ticket, run_hooks,
)

__all__ = ["VerilatorHarness", "VerilatorBackend"]

_UNSET = object()
NEVER = (1 << 64) - 1


class Stop(IntEnum):
    """Why ``sim_run`` returned (driver.cpp's ``enum Stop``, name for name)."""
    UNTIL = 0               # reached ``until``
    PYTHON_CYCLE = 1        # Python must run this cycle itself
    CALLBACK_RAISED = 2
    HANDSHAKE = 3           # right after an edge whose handshake Python must look at
    HOOKS_RAN = 4           # as PYTHON_CYCLE, with this cycle's hooks already run
    ASSERTION = 5           # an assertion failed at the edge


class Flag(IntEnum):
    """Indices into ``Status.flags`` (driver.cpp's ``enum Flag``): sampled at the last edge."""
    TREQ_READY = 0
    TRESP_VALID = 1
    EPTP_VALID = 2
    EPTP_ERROR = 3
    MRESP_READY = 4
    RESP_TAKEN = 5
    RESP_ERROR_TAKEN = 6
    EPTP_VALID_BEFORE = 7   # eptp_valid sampled at the edge before
    # the nested top's (0 in a native build)
    LREQ_READY = 8
    LRESP_VALID = 9
    CR3_VALID = 10
    CR3_ERROR = 11
    VPID_VALID = 12
    VPID_ERROR = 13
    INVVPID_ERROR = 14
    GUEST_IDLE = 15
    LOST_RACE = 16


# the hot paths compare plain ints (an IntEnum member costs a lookup and a call)
_UNTIL, _HANDSHAKE = int(Stop.UNTIL), int(Stop.HANDSHAKE)
_HOOKS_RAN, _ASSERTION, _RAISED = int(Stop.HOOKS_RAN), int(Stop.ASSERTION), int(Stop.CALLBACK_RAISED)
_F_EPTP_VALID, _F_EPTP_ERROR = int(Flag.EPTP_VALID), int(Flag.EPTP_ERROR)
_F_GUEST_IDLE, _F_INVVPID_ERROR = int(Flag.GUEST_IDLE), int(Flag.INVVPID_ERROR)
# The inputs tuple: the 7 of the GPA side (translate_req valid and payload, response ready,
# eptp_load and value, invept valid and payload), then, for the nested top, 11 more
# (linear_req valid and payload, cr3_load and value, paging, wp, nxe, vpid_load and value,
# invvpid valid and payload)
_IVP_VALID = 16        # the INVVPID strobe's index


def _strobes_dropped(inputs: tuple) -> tuple:
    """The inputs tuple without its INVEPT and INVVPID strobes (one cycle each)."""
    inputs = inputs[:5] + (False, 0) + inputs[7:]
    if len(inputs) > _IVP_VALID:
        inputs = inputs[:_IVP_VALID] + (False, 0)
    return inputs


def _words(w) -> int:
    """A wide port's value from its 32-bit words, least significant first."""
    return sum(v << (32 * i) for i, v in enumerate(w))


def _request_packer():
    """TRANSLATE_REQUEST.pack(gpa=, access=, tag=) with the offsets looked up once (every request)."""
    (g_off, g_mask), (a_off, a_mask), (t_off, t_mask) = (TRANSLATE_REQUEST.field(n)
                                                         for n in ("gpa", "access", "tag"))

    def pack(gpa: int, access: int, tag: int) -> int:
        return (gpa & g_mask) << g_off | (access & a_mask) << a_off | (tag & t_mask) << t_off
    return pack


_pack_request = _request_packer()




# driver.cpp's word counts of the wide ports
COUNTER_WORDS, NESTED_COUNTER_WORDS, LRESP_WORDS, INVVPID_WORDS = 26, 23, 5, 3


class Status(ctypes.Structure):
    """driver.cpp's Status, shared: reading it, and setting the inputs in it,
    costs no call into C."""
    _fields_ = [("cycle", ctypes.c_uint64), ("hook_wake", ctypes.c_uint64),
                ("flags", ctypes.c_uint8 * len(Flag)), ("tresp", ctypes.c_uint32 * 3),
                ("queue_len", ctypes.c_uint32), ("direct_reads", ctypes.c_uint64),
                ("head_due", ctypes.c_uint64),
                ("in_treq_payload", ctypes.c_uint64), ("in_eptp_value", ctypes.c_uint64),
                ("in_invept_payload", ctypes.c_uint64),
                ("in_dirty", ctypes.c_uint8), ("in_treq_valid", ctypes.c_uint8),
                ("in_tresp_ready", ctypes.c_uint8), ("in_eptp_load", ctypes.c_uint8),
                ("in_invept_valid", ctypes.c_uint8), ("stall", ctypes.c_uint8),
                ("staged", ctypes.c_uint8),
                ("staged_from", ctypes.c_uint64), ("staged_payload", ctypes.c_uint64),
                ("accept_cycle", ctypes.c_uint64), ("accept_pending", ctypes.c_uint8),
                ("accept_eptp_valid", ctypes.c_uint8), ("accept_stop", ctypes.c_uint8),
                ("responded", ctypes.c_uint8),
                # the nested top's
                ("in_lreq_payload", ctypes.c_uint64), ("in_cr3_value", ctypes.c_uint64),
                ("in_invvpid_payload", ctypes.c_uint32 * INVVPID_WORDS), ("in_vpid_value", ctypes.c_uint16),
                ("in_lreq_valid", ctypes.c_uint8), ("in_lresp_ready", ctypes.c_uint8),
                ("in_cr3_load", ctypes.c_uint8), ("in_paging", ctypes.c_uint8), ("in_wp", ctypes.c_uint8),
                ("in_nxe", ctypes.c_uint8), ("in_vpid_load", ctypes.c_uint8),
                ("in_invvpid_valid", ctypes.c_uint8),
                ("lstaged", ctypes.c_uint8), ("lstaged_from", ctypes.c_uint64),
                ("lstaged_payload", ctypes.c_uint64),
                ("lresp", ctypes.c_uint32 * LRESP_WORDS),
                ("laccept_cycle", ctypes.c_uint64), ("laccept_pending", ctypes.c_uint8),
                ("laccept_stop", ctypes.c_uint8), ("lresponded", ctypes.c_uint8),
                ("laccept_flags", ctypes.c_uint8 * len(Flag))]


_LIBS: dict[str, ctypes.CDLL] = {}
PERFORM_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                              ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64))
HOOKS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint64)


def _load(path: Path) -> ctypes.CDLL:
    lib = _LIBS.get(str(path))
    if lib is None:
        lib = ctypes.CDLL(str(path))
        P, U64, INT = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int
        sig = {
            "sim_new": ([INT, INT, INT, U64, U64, INT], P),
            "sim_free": ([P], None),
            "sim_status": ([P], ctypes.POINTER(Status)),
            "sim_perform_due": ([P], INT),
            "sim_head": ([P, ctypes.POINTER(U64)], None),
            "sim_perform": ([P, U64, INT], None),
            "sim_edge": ([P], None),
            "sim_counters": ([P, ctypes.POINTER(ctypes.c_uint32)], None),
            "sim_nested_counters": ([P, ctypes.POINTER(ctypes.c_uint32)], None),
            "sim_top": ([], INT),
            "sim_status_layout": ([ctypes.POINTER(U64)], None),
            "sim_dram_stats": ([P, ctypes.POINTER(U64)], None),
            "sim_run": ([P, U64, U64], INT),
            "sim_set_callbacks": ([P, PERFORM_FN, HOOKS_FN], None),
            "sim_map_frame": ([P, U64, P], None),
            "sim_set_direct": ([P, INT, U64], None),
            "sim_trace_open": ([P, ctypes.c_char_p], INT),
            "sim_got_error": ([P], INT),
            "sim_trace_close": ([P], None),
            "sim_bare": ([P, ctypes.POINTER(U64), U64, U64, U64, U64, ctypes.POINTER(U64)], U64),
        }
        for name, (args, res) in sig.items():
            f = getattr(lib, name)
            f.argtypes, f.restype = args, res
        layout = (U64 * 4)()
        lib.sim_status_layout(layout)
        want = (ctypes.sizeof(Status), Status.in_lreq_payload.offset, Status.lresp.offset,
                Status.laccept_flags.offset)
        if tuple(layout) != want:       # driver.cpp and this file disagree: a silent misreading
            raise RuntimeError(f"{path}: driver.cpp's Status layout {tuple(layout)} is not "
                               f"harness.py's {want}")
        _LIBS[str(path)] = lib
    return lib


# -- the harness --------------------------------------------------------------------------
class VerilatorHarness(HarnessCore):
    """:class:`~sim.backends.pysim.PysimHarness`'s API and behaviour on the Verilated unit.

    Public calls that do not touch the clock are :class:`HarnessCore`'s, as
    in pysim, so the two cannot drift apart.
    ``run_until`` evaluates its predicate after every cycle Python runs and
    every translate response, but not after the other cycles the compiled
    side runs alone (a request taken or a hook call is a callback, not a
    stop, unless the hook queued something Python must drive): wait for
    responses or EPTP loads, and use :meth:`step` for a number of cycles.

    With ``nested`` the unit is :class:`hw.nested_top.NestedWalkUnit` (built
    as its own library; ``unit_params`` may include ``guest_walkers``), and
    the linear port, the guest context and INVVPID are driven as
    :class:`~sim.backends.pysim.PysimHarness` drives them; the compiled loop
    also returns after an edge at which ``guest_idle`` rose (what
    ``wait_linear_idle`` waits for).
    """

    def __init__(self, memory: PhysicalMemory, dram: DramConfig | None = None, *,
                 maxphyaddr: int = 46, execute_only: bool = True,
                 resp_stall_probability: float = 0.0, seed: int = 1,
                 wave=None, nested: bool = False, store_seq: Callable[[], int] | None = None,
                 build_dir: Path | None = None, **unit_params):
        if wave is not None:
            if nested:
                from sim.backends.base import BackendUnavailable
                raise BackendUnavailable("the verilator backend cannot write waveforms of the nested unit "
                                         "yet (a scenario with a guest, or guest-os): drop --wave")
            from sim.flows.gtkwave import check_wave_path      # Amaranth: only for a waveform
            wave = check_wave_path(wave, ".fst")
        self.wave = wave
        top = "nested" if nested else "native"
        if nested:
            from hw.params import check_int     # no Amaranth: the tags are needed before the build
            self.nested = True
            self.gpa_tags = (1 << TAG_BITS) - check_int("guest_walkers", unit_params.get("guest_walkers", 1), 1, 8)
        super().__init__(memory, dram, resp_stall_probability=resp_stall_probability, seed=seed,
                         store_seq=store_seq)
        # the port protocol Asserts (hw/checks.py), as in pysim
        params = dict(maxphyaddr=maxphyaddr, execute_only=execute_only, **unit_params)
        params.setdefault("checks", True)
        self.params = params
        # bad parameters raise ValueError here
        self.build = build_model(params, build_dir, trace=self.wave is not None, top=top)
        self.caches = params.get("caches", True)
        self._lib = lib = _load(self.build.library)
        kind = lib.sim_top()
        if (kind != 0) != nested:
            raise RuntimeError(f"{self.build.library} is not a build of the {top} top")
        if nested:
            self.has_vpid = True            # the VPID, INVVPID and nested_counters ports
            from hw.nested_top import NestedWalkUnit
            self.linear_caches = NestedWalkUnit.caches_linear(params)
        c = self._dram.config
        self._h = lib.sim_new(c.read_latency, c.cas_latency, c.row_miss_penalty, c.row_bytes,
                              c.banks, c.max_outstanding)
        # the world's state between the two halves of a cycle
        self._started = False           # the first cycle's first half has run
        self._driven_req = None         # the ticket on translate_req (identity)
        self._req_raw = 0
        self._cur = (None, True, None, None, None, None, None)
        # ^ this cycle: ticket, resp ready, load, INVEPT, linear ticket, GuestLoad, INVVPID
        self._loaded = False
        self._driven_lreq = None        # the linear ticket on linear_req (identity)
        self._lreq_raw = 0
        self._levels_driven = (False, False, False)     # paging, wp, nxe as driven (held)
        self._gloaded = False           # a GuestLoad last cycle: sample its results now
        self._ivp_taken = False         # this cycle's INVVPID already booked (before a compiled edge)
        self._lstaged_ticket = None     # (ticket, cycle): a linear request staged from that cycle on
        self._event = False
        self._status = lib.sim_status(self._h).contents
        # views of the shared Status's arrays (they read its memory, no copy)
        self._flags, self._tresp = self._status.flags, self._status.tresp
        self._sim_run = lib.sim_run
        self._inputs = None             # the last inputs set, to skip setting them again
        self._head = (ctypes.c_uint64 * 4)()
        self.python_cycles = 0          # edges Python ran itself (the rest ran compiled)
        self._callback_error: BaseException | None = None
        self._hooks_ran = -1            # the cycle whose hooks the compiled loop had run
        self._callbacks = (PERFORM_FN(self._perform_in_run),
                           HOOKS_FN(self._hooks_in_run))        # kept alive with the harness
        lib.sim_set_callbacks(self._h, *self._callbacks)
        if self.wave is not None and lib.sim_trace_open(self._h, str(self.wave).encode()):
            raise OSError(f"cannot write the waveform {self.wave}")
        # plain reads are performed by the compiled side on the frames' own storage
        self._direct = None
        self._direct_synced = 0         # direct reads already added to the read counters
        self._frame_watch = self._map_frame
        memory.watch_frames(self._frame_watch)

    def _map_frame(self, frame: int, words) -> None:
        # the storage's address (as words.ctypes.data, at a third of its cost)
        addr = None if words is None else ctypes.addressof(ctypes.c_char.from_buffer(words))
        self._lib.sim_map_frame(self._h, frame, addr)

    def _update_direct(self) -> None:
        """Let the compiled side perform plain reads unless a bus error may be
        injected (as Dram._perform: by address or with a probability)."""
        c = self._dram.config
        direct = not (c.error_probability or c.error_addrs)
        if direct is not self._direct:
            self._lib.sim_set_direct(self._h, direct, self.memory.limit)
            self._direct = direct

    def _sync_reads(self) -> None:
        """Count the reads the compiled side performed, as Dram._perform would have."""
        n = self._status.direct_reads - self._direct_synced
        if n:
            self._direct_synced += n
            self._dram.reads += n
            self.memory.reads += n

    @property
    def dram(self) -> Dram:
        """The DRAM model: stats and config; its timing state lives in C++."""
        d = self._dram
        if self._h:
            s = (ctypes.c_uint64 * 4)()
            self._lib.sim_dram_stats(self._h, s)
            # the C++ side counts a stall at the edge; pysim's Dram.drive when it draws it, in
            # the first half Python has already run for this cycle
            d.row_hits, d.row_misses = s[0], s[1]
            d.stall_cycles = s[2] + (self._status.stall if self._started else 0)
            self._sync_reads()
            d.cycle = self.cycle
        return d

    # -- one cycle in Python: the two halves of PysimHarness._world's loop ------------------
    def _first_half(self) -> None:
        lib, h = self._lib, self._h
        self._ivp_taken = False
        if self._lstaged_ticket is not None:
            lt, first = self._lstaged_ticket
            self._lstaged_ticket = None
            if self.cycle == first:     # staged for this cycle, not driven yet: pysim offers it now
                lt.tag = None
        if self._hooks_ran != self.cycle:
            run_hooks(self.hooks, self._hook_wake, self.cycle)
        d = self._dram
        p = d.config.stall_probability
        st = self._status
        if p:
            # as Dram.drive: a stall is drawn only while the queue has room
            st.stall = st.queue_len < d.config.max_outstanding and d.rng.random() < p
        if st.head_due <= self.cycle:       # Dram.drive performs the due access now
            self._update_direct()
            if lib.sim_perform_due(h):      # not a read the compiled side may do
                lib.sim_head(h, self._head)
                req = self._perform(*self._head, self.cycle)
                lib.sim_perform(h, req.result, req.error)
            self._sync_reads()
        tk = self.pending[0] if self.pending and self.free_tags else None
        if tk is not self._driven_req:
            if tk is not None:
                tk.tag = self.free_tags[0]
                self._req_raw = _pack_request(tk.gpa, int(tk.access), tk.tag)
            self._driven_req = tk
        resp_ready = not (self.resp_stall_probability and
                          self.rng.random() < self.resp_stall_probability)
        lt = g = ivp = None
        guest = ()
        if self.nested:                 # pysim's order: before the EPTP load and INVEPT are taken
            lt = self._next_linear()
            if lt is not self._driven_lreq:
                if lt is not None:
                    self._lreq_raw = lt.request_raw()
                self._driven_lreq = lt
            g = self._guest_loads.popleft() if self._guest_loads else None
            ivp = self._invvpids.popleft() if self._invvpids else None
            guest = self._guest_inputs(lt, g, ivp)
        load = self._eptp_loads.popleft() if self._eptp_loads else None
        inv = self._invepts.popleft() if self._invepts else None
        if inv is not None:
            self.invepts_sent += 1
        # the payload stays when valid drops, as pysim leaves it
        inputs = (tk is not None, self._req_raw, resp_ready,
                  load is not None, load[0] if load else 0,
                  inv is not None, INVEPT_REQUEST.pack(kind=inv[0], tag=inv[1]) if inv else 0) + guest
        if inputs != self._inputs:
            self._set_inputs(inputs)
        self._cur = (tk, resp_ready, load, inv, lt, g, ivp)

    def _guest_inputs(self, lt: LinearTicket | None, g: GuestLoad | None, ivp: tuple | None) -> tuple:
        """The nested top's 11 inputs this cycle (after the GPA side's 7); the levels are held."""
        if g is not None:
            self._levels_driven = (g.paging, g.wp, g.nxe)
        cr3 = g is not None and g.cr3_frame is not None
        vpid = g is not None and g.vpid is not None and self.has_vpid
        ivp_raw = 0
        if ivp is not None and self.has_vpid:
            ivp_raw = INVVPID_REQUEST.pack(kind=ivp[0], vpid=ivp[1], la=ivp[2])
        return (lt is not None, self._lreq_raw, cr3, g.cr3_frame if cr3 else 0, *self._levels_driven,
                vpid, g.vpid if vpid else 0, ivp is not None and self.has_vpid, ivp_raw)

    def _set_inputs(self, inputs: tuple) -> None:
        """Drive the unit's inputs from the next settle on (shared memory, no call)."""
        st = self._status
        (st.in_treq_valid, st.in_treq_payload, st.in_tresp_ready, st.in_eptp_load,
         st.in_eptp_value, st.in_invept_valid, st.in_invept_payload) = inputs[:7]
        if self.nested:
            st.in_lresp_ready = inputs[2]       # linear_resp.ready is translate_resp.ready
            (st.in_lreq_valid, st.in_lreq_payload, st.in_cr3_load, st.in_cr3_value, st.in_paging,
             st.in_wp, st.in_nxe, st.in_vpid_load, st.in_vpid_value, st.in_invvpid_valid, ivp) = inputs[7:]
            words = st.in_invvpid_payload
            for i in range(len(words)):
                words[i] = ivp >> (32 * i) & 0xFFFF_FFFF
            st.lstaged = 0
        st.staged = 0
        st.in_dirty = 1
        self._inputs = inputs

    def _perform(self, op: int, addr: int, compare: int, data: int, cycle: int) -> DramRequest:
        """The access itself, on the memory contents, exactly as pysim's DRAM does it."""
        req = DramRequest("cas" if op else "read", addr, compare=compare, data=data)
        d = self._dram
        d.cycle = cycle
        d._perform(req)
        return req

    # The callbacks from the compiled loop; an exception must not die inside C.
    def _perform_in_run(self, op, addr, compare, data, cycle, out) -> int:
        try:
            self._catch_up()
            req = self._perform(op, addr, compare, data, cycle)
        except BaseException as e:
            self._callback_error = e
            return 1
        out[0] = req.result
        out[1] = req.error
        return 0

    def _catch_up(self) -> None:
        """The bookkeeping of the requests the compiled loop took, in pysim's
        order at an edge (GPA, then linear), first thing whenever Python runs."""
        st = self._status
        if st.accept_pending:
            self._accepted_in_run()
        if st.laccept_pending:
            self._laccepted_in_run()

    def _laccepted_in_run(self) -> None:
        """As :meth:`_accepted_in_run`, for a linear request (Status.laccept_*)."""
        st = self._status
        st.laccept_pending = 0
        self.cycle = st.laccept_cycle
        self.eptp_valid = bool(st.laccept_flags[_F_EPTP_VALID])
        self._accept_linear(self._driven_lreq)
        self._inputs = None             # the loop dropped linear_req.valid itself
        if self._linear_offer() is None:
            self._driven_lreq = None

    def _linear_offer(self) -> LinearTicket | None:
        """What ``_next_linear`` would offer now, without its side effect: a
        ticket it tags counts as offered from then on (HarnessCore's rule), and
        pysim calls it once per first half, so a look ahead must not tag one."""
        lt = self.linear_pending[0] if self.linear_pending else None
        tag = lt.tag if lt is not None else None
        offer = self._next_linear()
        if lt is not None:
            lt.tag = tag
        return offer

    def _accept_linear(self, lt: LinearTicket) -> None:
        super()._accept_linear(lt)
        self._driven_lreq = _UNSET

    def _accepted_in_run(self) -> None:
        """The bookkeeping of a request the compiled loop took (Status.accept_*),
        first thing whenever Python runs again: as if done at that edge."""
        st = self._status
        st.accept_pending = 0
        self.cycle = st.accept_cycle
        # as pysim: the EPTP validity sampled at the edge before this one
        self.eptp_valid = bool(st.accept_eptp_valid)
        self._accept(self._driven_req)
        self._inputs = None             # the loop dropped translate_req.valid itself
        if not (self.pending and self.free_tags):
            self._driven_req = None     # the loop drops valid, as Python would

    def _hooks_in_run(self, cycle) -> int:
        """The first step of this cycle's first half, from the compiled loop."""
        try:
            self._catch_up()
            self.cycle = cycle
            self._sample_levels()               # as Python knows them after the last edge
            run_hooks(self.hooks, self._hook_wake, cycle)
            if not self._quiet():
                return 1                        # Python runs the rest of this first half
            self._status.hook_wake = self._next_hook_wake()
            return 0
        except BaseException as e:
            self._callback_error = e
            return 2

    def _sample_levels(self) -> None:
        """The outputs Python keeps as they were sampled at the last edge."""
        flags = self._flags
        self.eptp_valid, self.eptp_error = bool(flags[_F_EPTP_VALID]), bool(flags[_F_EPTP_ERROR])
        if self.nested:
            self.guest_idle = bool(flags[_F_GUEST_IDLE])
            if self.has_vpid:
                self.invvpid_error = bool(flags[_F_INVVPID_ERROR])

    def _next_hook_wake(self) -> int:
        hooks, wake = self.hooks, self._hook_wake
        if len(hooks) == 1:                     # the usual case: the host agent
            return wake.get(hooks[0], 0)
        return min([wake.get(k, 0) for k in hooks], default=NEVER)

    def _accept(self, tk: Ticket) -> None:
        super()._accept(tk)
        self._driven_req = _UNSET

    def _second_half(self) -> None:
        lib, h = self._lib, self._h
        tk, resp_ready, load, inv, lt, g, ivp = self._cur
        lib.sim_edge(h)
        if lib.sim_got_error(h):
            raise AssertionError(f"cycle {self.cycle}: the unit's protocol checks (hw/checks.py) "
                                 f"failed; Verilator printed which above")
        f = self._flags
        treq_ready, tresp_valid = f[Flag.TREQ_READY], f[Flag.TRESP_VALID]
        eptp_valid, eptp_error = f[Flag.EPTP_VALID], f[Flag.EPTP_ERROR]
        error_taken = f[Flag.RESP_ERROR_TAKEN]
        event = bool(load or inv or self._loaded or self._want_counters or g or ivp or self._gloaded)
        if error_taken:
            for t in self.inflight.values():
                t.errors_seen += 1
            for t in self.linear_inflight.values():
                t.errors_seen += 1
            event = True
        if g is not None:
            self._guest_taken(g)
        if ivp is not None and not self._ivp_taken:
            self._invvpid_taken(ivp)
        if inv is not None:
            self._invept_taken(inv)
        if (inv is not None or ivp is not None) and self._inputs is not None:
            self._set_inputs(_strobes_dropped(self._inputs))     # one-cycle strobes
        if tk is not None and treq_ready:
            self._accept(tk)
            event = True
        if tresp_valid and resp_ready:
            t = self._tresp
            self._complete(t[0] | t[1] << 32 | t[2] << 64)
            event = True
        if self.nested:
            if lt is not None and f[Flag.LREQ_READY]:
                self._accept_linear(lt)
                event = True
            if f[Flag.LRESP_VALID] and resp_ready:
                self._complete_linear(_words(self._status.lresp))
                event = True
            self.guest_idle = bool(f[Flag.GUEST_IDLE])
            vpid_valid = True
            if self.has_vpid:
                vpid_valid, self.invvpid_error = f[Flag.VPID_VALID], bool(f[Flag.INVVPID_ERROR])
            if self._gloaded:
                self._guest_sampled(f[Flag.CR3_VALID], vpid_valid)
            self._gloaded = g is not None
        if self._want_counters:
            w = (ctypes.c_uint32 * COUNTER_WORDS)()
            lib.sim_counters(h, w)
            self._counters_raw = _words(w)
            if self.has_vpid:
                w = (ctypes.c_uint32 * NESTED_COUNTER_WORDS)()
                lib.sim_nested_counters(h, w)
                self._nested_counters_raw = _words(w)
            self._want_counters = False
        if load is not None:
            self.eptp = load[1]
        self.eptp_valid = bool(eptp_valid)
        self.eptp_error = bool(eptp_error)
        if self._loaded:
            self.eptp_loads_seen += 1
        self._loaded = load is not None
        self.cycle += 1
        self.python_cycles += 1
        self._event = event

    def _quiet(self) -> bool:
        """Would Python's next first half leave every input as it is and draw nothing?"""
        tk = self.pending[0] if self.pending and self.free_tags else None
        if not (tk is self._driven_req and self._plain() and not self._eptp_loads
                and not self._invepts):
            return False
        return not self.nested or (self._linear_offer() is self._driven_lreq and not self._guest_loads
                                   and not self._invvpids)

    def _plain(self) -> bool:
        """May the compiled loop run this cycle's edge (its first half done by Python)?
        Not with an EPTP load strobe, a load's result to sample, the counters
        to read, or a per-cycle random draw; nor with a guest-context load
        strobe or its results to sample.  An INVEPT or INVVPID strobe it may:
        the loop drops it after the edge, as Python's next first half would."""
        return (self._cur[2] is None and not self._loaded and self._cur[5] is None and not self._gloaded
                and not self._want_counters and not self.resp_stall_probability
                and not self._dram.config.stall_probability)

    def _stage_request(self) -> None:
        """A request submitted while nothing is driven: Python's next first
        half would only start driving it, so hand it to the compiled loop to
        drive from the next cycle on (the tag is the one pysim gives it then:
        the pool's head cannot change before, since no request can be taken)."""
        if self._eptp_loads or self._invepts or (self.nested and (self._guest_loads or self._invvpids)):
            return
        st = self._status
        if self._driven_req is None and self.pending and self.free_tags:
            tk = self.pending[0]
            tk.tag = self.free_tags[0]
            self._req_raw = _pack_request(tk.gpa, int(tk.access), tk.tag)
            self._driven_req = tk
            self._inputs = (True, self._req_raw) + self._inputs[2:]
            st.staged_from = self.cycle + 1
            st.staged_payload = self._req_raw
            st.staged = 1
        if self.nested and self._driven_lreq is None:
            lt = self._next_linear()
            if lt is not None:
                # tagged now as pysim tags it in that cycle's first half; if Python
                # runs that first half itself, it is not offered yet (see _first_half)
                self._lstaged_ticket = (lt, self.cycle + 1)
                self._lreq_raw = lt.request_raw()
                self._driven_lreq = lt
                self._inputs = self._inputs[:7] + (True, self._lreq_raw) + self._inputs[9:]
                st.lstaged_from = self.cycle + 1
                st.lstaged_payload = self._lreq_raw
                st.lstaged = 1

    def _run_compiled(self, until: int, first_half_done: int) -> None:
        st = self._status
        st.hook_wake = self._next_hook_wake()
        # return right after the request is taken if another then waits to be driven
        st.accept_stop = len(self.pending) > 1 and len(self.free_tags) > 1
        if self.nested:
            st.laccept_stop = len(self.linear_pending) > 1 and len(self.linear_free_tags) > 1
        self._update_direct()
        stopped = self._sim_run(self._h, until, first_half_done)
        # pysim's order at an edge: GPA request, GPA response, linear request, linear response
        if st.accept_pending:
            self._accepted_in_run()
        if st.responded:                # taken at the last edge: as pysim, at that cycle
            st.responded = 0
            self.cycle = st.cycle - 1
            t = self._tresp
            self._complete(t[0] | t[1] << 32 | t[2] << 64)
        if st.laccept_pending:
            self._laccepted_in_run()
        if st.lresponded:
            st.lresponded = 0
            self.cycle = st.cycle - 1
            self._complete_linear(_words(st.lresp))
        self._sync_reads()
        self.cycle = st.cycle
        if stopped != _HANDSHAKE and stopped != _UNTIL:
            if stopped == _HOOKS_RAN:
                self._hooks_ran = self.cycle
            elif stopped == _ASSERTION:
                raise AssertionError(f"cycle {self.cycle - 1}: the unit's protocol checks (hw/checks.py) "
                                     f"failed; Verilator printed which above")
            elif stopped == _RAISED:
                e, self._callback_error = self._callback_error, None
                raise e
        self._sample_levels()

    def _advance(self, until: int, stop_on_event: bool) -> None:
        """One pysim ``advance``: the edge of this cycle, then as many cycles as
        the compiled side can run alone, then the first half of the next cycle
        (pysim runs it right after the edge, before control returns)."""
        if not self._started:
            self._started = True
            self._first_half()
            return
        c = self.cycle
        if self._plain():
            # this edge and the quiet cycles after it run compiled; stop after
            # this edge if Python's next first half would change an input
            inv, ivp = self._cur[3], self._cur[6]
            if inv is not None:
                self._invept_taken(inv)
            if ivp is not None:
                self._invvpid_taken(ivp)
                self._ivp_taken = True
            if inv is not None or ivp is not None:
                self._inputs = _strobes_dropped(self._inputs)  # the loop drops the strobes
            self._stage_request()
            self._run_compiled(until if self._quiet() else c + 1, c)
            if self.cycle == c:          # not even this edge (a bus error to count)
                self._second_half()
        else:
            self._second_half()
            if self.cycle < until and not (stop_on_event and self._event) and self._quiet():
                self._run_compiled(until, NEVER)
        self._first_half()

    # -- driving time -------------------------------------------------------------
    def step(self, n: int = 1) -> None:
        target = self.cycle + n
        while self.cycle < target:
            self._advance(target, False)

    def run_until(self, predicate: Callable[[], bool], limit: int, what: str = "condition") -> None:
        deadline = self.cycle + limit
        while not predicate():
            if self.cycle >= deadline:
                raise HangError(f"no {what} within {limit} cycles (cycle {self.cycle})")
            self._advance(deadline, True)

    def run_bare(self, requests, invept_every: int = 0, limit: int = 1 << 40) -> tuple[int, int, float]:
        """The bare model: translate ``requests`` ((gpa, access) pairs) one at a
        time in C++ alone (no Python, no scoreboard, CASes straight into the
        frames), with a single-context INVEPT before every ``invept_every``-th.
        Returns (cycles, translations answered, seconds); its CPU time in
        ``bare_cpu_seconds``.  For measurement: the
        harness's own bookkeeping does not follow (use a fresh harness)."""
        import time
        self._update_direct()
        self._sync_reads()
        raw = (ctypes.c_uint64 * len(requests))(*(_pack_request(g, int(a), 0) for g, a in requests))
        tag = self.eptp.tag if self.eptp is not None else 0
        inv = INVEPT_REQUEST.pack(kind=INVEPT_SINGLE, tag=tag)
        done = ctypes.c_uint64()
        started, cpu = time.perf_counter(), time.process_time()
        cycles = self._lib.sim_bare(self._h, raw, len(requests), inv, invept_every, limit,
                                    ctypes.byref(done))
        seconds, self.bare_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        if self._lib.sim_got_error(self._h):
            raise AssertionError("the unit's protocol checks failed in the bare model")
        self.cycle = self._status.cycle
        self._started = False
        return cycles, done.value, seconds

    def close(self, markers=()) -> Path | None:
        """End the run; with a waveform, finish it (as PysimHarness.close does)."""
        if not self._h:
            return None
        _ = self.dram    # keep the final statistics
        self.memory.unwatch_frames(self._frame_watch)
        self._lib.sim_free(self._h)      # closes the FST
        self._h = None
        if self.wave is None:
            return None
        from hw.top import PageWalkUnit
        from sim.flows.gtkwave import finish_waveform
        # the names come from an elaboration with the same parameters as the Verilog's
        return finish_waveform(self.wave, PageWalkUnit(**self.params), self.completed, markers)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class VerilatorBackend(ScoreboardBackend):
    """The scoreboard-checked backend on the Verilated unit (``nested=True``: the nested unit)."""
    name = "verilator"
    nested = True
    harness_class = VerilatorHarness


