"""The RTL backends' common part: a harness driving the unit, checked by the scoreboard.

Host loads and stores act between cycles on the shared DRAM image; each
translation runs the clock until the unit answers; every answer is checked
against the reference walk of the memory as it stood (see
:mod:`sim.cosim.scoreboard`).  Results come back as
:class:`model.walk.Translation` plus the cycle count from the port
handshakes.  The harness comes from the subclass: pysim
(:mod:`sim.backends.pysim`) or Verilator (:mod:`sim.backends.verilator`).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import asdict

from model.formats import Access, EptConfig, Eptp, EptpError
from model.guest import GuestRegs
from model.nested import QUAL_FINAL, LaOutcome, NestedTranslation, Stage
from model.physmem import PhysicalMemory
from model.walk import Translation

from sim.backends.base import Backend, BackendUnavailable
from sim.cosim.dram import DramConfig
from sim.cosim.harness import HarnessCore, LinearTicket, Ticket
from sim.cosim import scoreboard_process
from sim.cosim.nested_scoreboard import NestedScoreboard
from sim.cosim.scoreboard import MemoryHistory, Scoreboard

__all__ = ["ScoreboardBackend", "ticket_translation", "ticket_la_translation", "LaBusError"]


def ticket_translation(t: Ticket) -> Translation:
    if t.outcome is None:
        raise RuntimeError(f"GPA {t.gpa:#x}: the unit refused the translation (no valid EPTP)")
    return Translation(t.gpa, t.access, t.outcome, hpa=t.hpa, page_size=t.page_size,
                       memtype=t.memtype, qual=t.qual, retries=t.retries)


class LaBusError:
    """A linear answer ``bus_error`` (the model has no such outcome: a DRAM error was injected)."""

    def __init__(self, t: LinearTicket):
        self.la, self.access, self.user, self.retries = t.la, t.access, t.user, t.retries
        self.outcome = None

    def to_json(self) -> dict:
        return {"op": "translate_la", "la": f"{self.la:#x}", "access": self.access.name.lower(),
                "user": self.user, "outcome": "bus_error"}


def ticket_la_translation(t: LinearTicket) -> NestedTranslation | LaBusError:
    """A linear ticket's answer as the model's result type (without the walk's steps; a
    violation's ``stage`` read from its qualification, a misconfiguration's left None)."""
    if t.refused:
        raise RuntimeError(f"LA {t.la:#x}: the unit refused the translation (no valid EPTP, VPID or CR3)")
    if t.bus_error:
        return LaBusError(t)
    stage = None
    if t.outcome is LaOutcome.VIOLATION:      # from the qualification (docs/nested.md's table)
        stage = (Stage.FINAL if t.qual & QUAL_FINAL else
                 Stage.AD if t.qual & 2 and not t.eptp.ad_enabled else Stage.WALK)
    return NestedTranslation(t.la, t.access, t.user, t.outcome, gpa=t.gpa, hpa=t.hpa, page_size=t.page_size,
                             memtype=t.memtype, pf_error=t.pf_error, qual=t.qual, stage=stage, retries=t.retries)


SCOREBOARD_ENV = "EPT_WALKER_SCOREBOARD"


class ScoreboardBackend(Backend):
    """A timed backend: ``harness_class`` drives the unit, the scoreboard checks it.

    ``scoreboard``: ``"inline"`` checks each response as it is answered (its
    verdict is known at once: fuzzing and replay need that); ``"process"``
    checks in a second process fed a log (:mod:`sim.cosim.scoreboard_process`),
    its verdicts joined at :meth:`close` (not with a waveform, whose marker
    notes need this process, nor where fork is missing: inline then).
    ``$EPT_WALKER_SCOREBOARD`` overrides the choice.

    ``nested``: the unit is the nested one (:class:`hw.nested_top.NestedWalkUnit`):
    :meth:`load_guest`, :meth:`set_cr3`, :meth:`invvpid` and :meth:`translate_la`
    work, each linear answer checked by :class:`~sim.cosim.nested_scoreboard.NestedScoreboard`
    (inline; the GPA port's scoreboard too), GPA translations still work
    alongside (tags below the guest walkers'), and :meth:`counters` adds the
    nested unit's (``NESTED_EVENTS`` names).  Without it the unit is
    :class:`hw.top.PageWalkUnit`, as before."""
    timed = True
    nested = False           # the subclass's harness can build the nested unit (see ``nested_unit``)
    harness_class: type[HarnessCore]

    def __init__(self, memory: PhysicalMemory, config: EptConfig, *, dram: DramConfig | None = None,
                 wave=None, resp_stall_probability: float = 0.0, seed: int = 1,
                 watchdog: int = 100_000, unit: dict | None = None, scoreboard: str = "inline",
                 nested: bool = False):
        super().__init__(memory, config)
        if nested and not self.nested:
            raise self.refuse_nested("nested translation")
        self.nested_unit = bool(nested)
        scoreboard = os.environ.get(SCOREBOARD_ENV) or scoreboard
        if scoreboard not in ("inline", "process"):
            raise ValueError(f"scoreboard must be inline or process, not {scoreboard!r}")
        if scoreboard == "process" and wave is None and scoreboard_process.available() and not nested:
            # one object: the store count (history.seq) and the checks
            self.history = self.scoreboard = scoreboard_process.ScoreboardProcess(memory, config)
        else:
            self.history = MemoryHistory(memory)
            self.scoreboard = Scoreboard(self.history, config)
        extra = {"nested": True} if nested else {}      # a harness without nested units takes no such option
        self.harness = self.harness_class(memory, dram, maxphyaddr=config.maxphyaddr,
                                          execute_only=config.execute_only,
                                          resp_stall_probability=resp_stall_probability, seed=seed,
                                          wave=wave, store_seq=lambda: self.history.seq, **extra,
                                          **(unit or {}))
        self.la_scoreboard = NestedScoreboard(self.history, config, needs_vpid=self.harness.has_vpid)
        self.watchdog = watchdog
        self.tickets = 0
        if self.harness.wave is not None:
            from sim.flows.gtkwave import marker_note      # Amaranth: only with a waveform
            self.scoreboard.wave_note = lambda cycle: marker_note(self.harness.wave.with_suffix(".gtkw"), cycle)

    @property
    def dram(self):
        return self.harness.dram

    def load_eptp(self, value: int) -> Eptp:
        decoded = None
        try:
            decoded = Eptp.decode(value, self.config)
        except EptpError:
            pass
        accepted = self.harness.load_eptp(value, decoded)
        if accepted != (decoded is not None):
            raise RuntimeError(f"EPTP {value:#x}: unit {'accepted' if accepted else 'refused'} it, "
                               f"golden model {'accepted' if decoded else 'refused'} it")
        if decoded is None:
            Eptp.decode(value, self.config)     # raises the model's EptpError
        self.eptp = decoded
        return decoded

    def invept(self, kind: str, eptp: Eptp | None = None) -> None:
        e = eptp or self.eptp
        self.harness.invept(kind, e.tag if e else 0)

    def translate_ticket(self, gpa: int, access: Access) -> Ticket:
        t = self.harness.translate(gpa, access, limit=self.watchdog)
        self.scoreboard.check(t)
        self._count_ticket()
        return t

    def _count_ticket(self) -> None:
        self.tickets += 1
        if self.tickets % 256 == 0:
            h = self.harness
            floor = h.cache_floor(self.eptp.tag) if self.eptp else self.history.seq
            floors = [x.seq_cache for x in h.inflight.values()] + [floor]
            if self.nested_unit:
                floors += [min(x.seq_cache, x.seq_guest) for x in h.linear_inflight.values()]
                floors.append(h.linear_floor())
            keep_from = min(floors)
            self.history.prune(keep_from)
            self.scoreboard.prune(keep_from)
            self.la_scoreboard.prune(keep_from)

    # -- nested translation ----------------------------------------------------------
    def _need_nested(self, what: str) -> None:
        if not self.nested_unit:
            raise BackendUnavailable(f"{what}: this {self.name} backend was built without the nested unit "
                                     f"(construct it with nested=True)")

    def load_guest(self, regs: GuestRegs) -> None:
        """Enter the guest: VPID, CR0.PG/WP, EFER.NXE, then CR3 (MOV CR3: the VPID's
        mappings are dropped).  The unit's verdicts on CR3 and VPID must be the model's."""
        self._need_nested("load_guest")
        cr3_valid, vpid_valid = self.harness.load_guest(regs)
        want_cr3 = not regs.cr3 >> self.config.maxphyaddr & ((1 << (52 - self.config.maxphyaddr)) - 1)
        if cr3_valid != want_cr3:
            raise RuntimeError(f"CR3 {regs.cr3:#x}: unit {'accepted' if cr3_valid else 'refused'} it")
        if self.harness.has_vpid and vpid_valid != (regs.vpid != 0):
            raise RuntimeError(f"VPID {regs.vpid:#x}: unit {'accepted' if vpid_valid else 'refused'} it")
        self.guest = regs

    def set_cr3(self, cr3: int) -> None:
        self._need_nested("set_cr3")
        if self.guest is None:
            raise RuntimeError("set_cr3 before a guest was loaded")
        self.harness.set_cr3(cr3)
        self.guest = self.guest.with_cr3(cr3)

    def invvpid(self, kind: str, la: int | None = None) -> None:
        """INVVPID of ``kind`` (address, single, all) for the current VPID."""
        self._need_nested("invvpid")
        if kind not in ("address", "single", "all"):
            raise ValueError(f"INVVPID kind must be address, single or all, not {kind!r}")
        if self.guest is None:
            raise RuntimeError("invvpid before a guest was loaded")
        self.harness.invvpid(kind, self.guest.vpid, la or 0)

    def translate_la_ticket(self, la: int, access: Access, user: bool = False) -> LinearTicket:
        self._need_nested("translate_la")
        if self.guest is None or self.eptp is None:
            raise RuntimeError("translate_la before an EPTP and a guest were loaded")
        t = self.harness.translate_la(la, access, user, limit=self.watchdog)
        self.la_scoreboard.check(t)
        self._count_ticket()
        return t

    def translate_la(self, la: int, access: Access, user: bool = False):
        t = self.translate_la_ticket(la, access, user)
        return ticket_la_translation(t), t.cycles

    def translate(self, gpa: int, access: Access) -> tuple[Translation, int | None]:
        t = self.translate_ticket(gpa, access)
        return ticket_translation(t), t.cycles

    @property
    def cycle(self) -> int:
        return self.harness.cycle

    def add_hook(self, hook) -> bool:
        self.harness.hooks.append(hook)
        return True

    def keep_tickets(self, n: int | None) -> None:
        self.harness.completed = deque(self.harness.completed, maxlen=n)

    def counters(self) -> dict[str, int]:
        return self.harness.counters()

    @property
    def walk_reads(self) -> int:
        return self.harness.dram.reads

    @property
    def walk_cases(self) -> int:
        return self.harness.dram.cases

    @property
    def busy(self) -> bool:
        return bool(self.harness.inflight or self.harness.linear_inflight)

    @property
    def mismatches(self) -> list[str]:
        return self.scoreboard.mismatches + self.la_scoreboard.mismatches + self.harness.dram.corruptions

    @property
    def failures(self) -> int:
        return self.scoreboard.failed + self.la_scoreboard.failed + len(self.harness.dram.corruptions)

    def report(self) -> dict:
        d = self.harness.dram
        nested = {}
        if self.nested_unit:
            la = self.la_scoreboard
            nested = {"nested_scoreboard": {"checked": la.checked, "alternative_states": la.alternatives_used,
                                            "memo_hits": la.memo_hits, "model_runs": la.candidates_run}}
        return nested | {
            "scoreboard_checked": self.scoreboard.checked,
            "scoreboard_alternative_states": self.scoreboard.alternatives_used,
            "dram": {"reads": d.reads, "cases": d.cases, "cas_failures": d.cas_failures,
                     "row_hits": d.row_hits, "row_misses": d.row_misses,
                     "stall_cycles": d.stall_cycles, "bus_errors": d.errors,
                     "config": asdict(d.config) | {"error_addrs": sorted(d.config.error_addrs)}},
        }

    def close(self) -> None:
        join = getattr(self.scoreboard, "join", None)
        try:
            if join is not None:
                join()              # the verdicts, before anything reports
        finally:
            self.harness.close(markers=self.scoreboard.failed_cycles + self.la_scoreboard.failed_cycles)
