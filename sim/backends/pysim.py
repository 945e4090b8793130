"""The ``rtl`` backend: the Amaranth unit in pysim, checked by the scoreboard.

One testbench process ("world") runs every cycle: it calls the between-cycle
hooks (the host agent acts here, so host stores fall between clock edges),
drives the memory port from :class:`~sim.cosim.dram.Dram`, offers queued
translate requests, EPTP loads and INVEPTs, and samples every handshake at
the edge.  Callers drive time from outside with :meth:`PysimHarness.step` /
:meth:`PysimHarness.run_until`, which is what lets a Python host interleave
pmap operations with walks in flight.  pysim is the debugging backend: its
waveforms see every signal the Python side names.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from amaranth import ResetInserter, Signal
from amaranth.sim import Simulator

from hw.layouts import MemOp
from hw.top import PageWalkUnit
from model.physmem import PhysicalMemory

from sim.backends.checked import ScoreboardBackend
from sim.cosim.dram import DramConfig, DramRequest
from sim.cosim.harness import (
    INVEPT_REQUEST, INVVPID_REQUEST, MEM_REQUEST, MEM_RESPONSE, TRANSLATE_REQUEST, HangError, HarnessCore,
    run_hooks,
)
from sim.flows.gtkwave import WaveNames, check_wave_path, finish_waveform, normalize_vcd, trace_groups

__all__ = ["PysimHarness", "PysimBackend"]

_UNSET = object()      # "nothing driven yet": forces the next ctx.set


class PysimHarness(HarnessCore):
    """Simulate :class:`~hw.top.PageWalkUnit` against the DRAM model in pysim.

    With ``nested`` the unit is :class:`~hw.nested_top.NestedWalkUnit` (the
    guest walkers over the page-walk unit; ``unit_params`` may then include
    ``guest_walkers``), and the linear port, the guest context and INVVPID
    are driven too (see :class:`~sim.cosim.harness.HarnessCore`).
    """

    def __init__(self, memory: PhysicalMemory, dram: DramConfig | None = None, *,
                 maxphyaddr: int = 46, execute_only: bool = True,
                 resp_stall_probability: float = 0.0, seed: int = 1,
                 wave: str | Path | None = None, nested: bool = False,
                 store_seq: Callable[[], int] | None = None, **unit_params):
        # the port protocol Asserts (hw/checks.py) on in every simulation
        unit_params.setdefault("checks", True)
        if nested:
            if wave is not None:
                from sim.backends.base import BackendUnavailable
                raise BackendUnavailable("the rtl backend cannot write waveforms of the nested unit yet "
                                         "(a scenario with a guest, or guest-os): drop --wave")
            from hw.nested_top import NestedWalkUnit
            self.dut = NestedWalkUnit(maxphyaddr=maxphyaddr, execute_only=execute_only, **unit_params)
            self.nested = True
            self.has_vpid = True            # the VPID, INVVPID and nested_counters ports
            self.gpa_tags = (1 << 4) - self.dut.n_guest
            caches = self.dut.unit.caches
            self.linear_caches = NestedWalkUnit.caches_linear(unit_params)
        else:
            self.dut = PageWalkUnit(maxphyaddr=maxphyaddr, execute_only=execute_only, **unit_params)
            caches = self.dut.caches
        super().__init__(memory, dram, resp_stall_probability=resp_stall_probability, seed=seed,
                         store_seq=store_seq)
        self.caches = caches
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
        dram = self._dram
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
        nested, has_vpid = self.nested, self.has_vpid
        samples = [dut.mem_req.valid, mreq_payload, dut.mem_resp.ready,
                   dut.translate_req.ready, dut.translate_resp.valid, tresp_payload,
                   dut.eptp_valid, dut.eptp_error]
        last_lreq = _UNSET
        gstrobes = False        # cr3_load / vpid_load / invvpid.valid high last cycle
        gloaded = False         # a guest-context load last cycle: sample its result now
        if nested:
            lreq_payload = dut.linear_req.payload.as_value()
            lresp_payload = dut.linear_resp.payload.as_value()
            samples += [dut.linear_req.ready, dut.linear_resp.valid, lresp_payload, dut.guest_idle,
                        dut.cr3_valid]
            if has_vpid:
                ivp_payload = dut.invvpid.payload.as_value()
                samples += [dut.vpid_valid, dut.invvpid_error]
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
                    ctx.set(mresp_payload, MEM_RESPONSE.pack(data=resp.result, error=resp.error))
                last_resp = resp

            tk = self.pending[0] if self.pending and self.free_tags else None
            if tk is not last_req:
                ctx.set(dut.translate_req.valid, tk is not None)
                if tk is not None:
                    tk.tag = self.free_tags[0]
                    ctx.set(treq_payload, TRANSLATE_REQUEST.pack(gpa=tk.gpa, access=int(tk.access), tag=tk.tag))
                last_req = tk
            resp_ready = not (self.resp_stall_probability and
                              self.rng.random() < self.resp_stall_probability)
            if resp_ready is not last_resp_ready:
                ctx.set(dut.translate_resp.ready, resp_ready)
                if nested:
                    ctx.set(dut.linear_resp.ready, resp_ready)
                last_resp_ready = resp_ready

            lt = g = ivp = None
            if nested:
                lt = self._next_linear()
                if lt is not last_lreq:
                    ctx.set(dut.linear_req.valid, lt is not None)
                    if lt is not None:
                        ctx.set(lreq_payload, lt.request_raw())
                    last_lreq = lt
                g = self._guest_loads.popleft() if self._guest_loads else None
                ivp = self._invvpids.popleft() if self._invvpids else None
                if gstrobes or g is not None or ivp is not None:
                    ctx.set(dut.cr3_load, g is not None and g.cr3_frame is not None)
                    if g is not None:
                        if g.cr3_frame is not None:
                            ctx.set(dut.cr3_value, g.cr3_frame)
                        ctx.set(dut.paging, g.paging)
                        ctx.set(dut.wp, g.wp)
                        ctx.set(dut.nxe, g.nxe)
                    if has_vpid:
                        ctx.set(dut.vpid_load, g is not None and g.vpid is not None)
                        if g is not None and g.vpid is not None:
                            ctx.set(dut.vpid_value, g.vpid)
                        ctx.set(dut.invvpid.valid, ivp is not None)
                        if ivp is not None:
                            ctx.set(ivp_payload, INVVPID_REQUEST.pack(kind=ivp[0], vpid=ivp[1], la=ivp[2]))
                    gstrobes = g is not None or ivp is not None

            load = self._eptp_loads.popleft() if self._eptp_loads else None
            inv = self._invepts.popleft() if self._invepts else None
            if strobes or load is not None or inv is not None:
                ctx.set(dut.eptp_load, load is not None)
                if load is not None:
                    ctx.set(dut.eptp_value, load[0])
                ctx.set(dut.invept.valid, inv is not None)
                if inv is not None:
                    ctx.set(inv_payload, INVEPT_REQUEST.pack(kind=inv[0], tag=inv[1]))
                    self.invepts_sent += 1
                strobes = load is not None or inv is not None

            sampled = await ctx.tick().sample(*samples)
            (mreq_valid, mreq, mresp_ready, treq_ready, tresp_valid, tresp,
             eptp_valid, eptp_error) = sampled[2:10]

            offered = None
            if mreq_valid:
                f = MEM_REQUEST.get
                offered = DramRequest("cas" if f(mreq, "op") == cas_op else "read", f(mreq, "addr"),
                                      compare=f(mreq, "compare"), data=f(mreq, "data"))
            dram.clock(offered, bool(resp is not None and mresp_ready))
            if resp is not None and resp.error and mresp_ready:
                for t in self.inflight.values():
                    t.errors_seen += 1
                for t in self.linear_inflight.values():
                    t.errors_seen += 1

            if nested:
                if g is not None:
                    self._guest_taken(g)
                if ivp is not None:
                    self._invvpid_taken(ivp)
            if inv is not None:       # it took effect at this edge
                self._invept_taken(inv)
            if tk is not None and treq_ready:
                self._accept(tk)
                last_req = _UNSET    # re-drive next cycle
            if tresp_valid and resp_ready:
                self._complete(tresp)
            if nested:
                lreq_ready, lresp_valid, lresp, guest_idle, cr3_valid = sampled[10:15]
                if lt is not None and lreq_ready:
                    self._accept_linear(lt)
                    last_lreq = _UNSET
                if lresp_valid and resp_ready:
                    self._complete_linear(lresp)
                self.guest_idle = bool(guest_idle)
                vpid_valid = True
                if has_vpid:
                    vpid_valid, self.invvpid_error = sampled[15], bool(sampled[16])
                if gloaded:
                    self._guest_sampled(cr3_valid, vpid_valid)
                gloaded = g is not None
            if self._want_counters:
                self._counters_raw = ctx.get(dut.counters.as_value())
                if has_vpid:
                    self._nested_counters_raw = ctx.get(dut.nested_counters.as_value())
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
                self._drop_requests()
                loaded = gloaded = False
                last_req = last_resp = last_lreq = _UNSET
            self.cycle += 1

    def reset(self) -> None:
        """Pulse the unit's reset for one cycle, mid-walk or not: requests in
        flight are dropped unanswered, the DRAM model's queue with them, and
        the EPTP must be loaded again."""
        done = self.resets
        self._reset_requested = True
        self.run_until(lambda: self.resets > done, 4, "reset")

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


class PysimBackend(ScoreboardBackend):
    """The scoreboard-checked backend on the pysim harness (``nested=True``: the nested unit)."""
    name = "rtl"
    nested = True
    harness_class = PysimHarness
