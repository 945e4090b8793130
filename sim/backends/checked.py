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
from model.physmem import PhysicalMemory
from model.walk import Translation

from sim.backends.base import Backend
from sim.cosim.dram import DramConfig
from sim.cosim.harness import HarnessCore, Ticket
from sim.cosim import scoreboard_process
from sim.cosim.scoreboard import MemoryHistory, Scoreboard

__all__ = ["ScoreboardBackend", "ticket_translation"]


def ticket_translation(t: Ticket) -> Translation:
    if t.outcome is None:
        raise RuntimeError(f"GPA {t.gpa:#x}: the unit refused the translation (no valid EPTP)")
    return Translation(t.gpa, t.access, t.outcome, hpa=t.hpa, page_size=t.page_size,
                       memtype=t.memtype, qual=t.qual, retries=t.retries)


SCOREBOARD_ENV = "EPT_WALKER_SCOREBOARD"


class ScoreboardBackend(Backend):
    """A timed backend: ``harness_class`` drives the unit, the scoreboard checks it.

    ``scoreboard``: ``"inline"`` checks each response as it is answered (its
    verdict is known at once: fuzzing and replay need that); ``"process"``
    checks in a second process fed a log (:mod:`sim.cosim.scoreboard_process`),
    its verdicts joined at :meth:`close` (not with a waveform, whose marker
    notes need this process, nor where fork is missing: inline then).
    ``$EPT_WALKER_SCOREBOARD`` overrides the choice."""
    timed = True
    harness_class: type[HarnessCore]

    def __init__(self, memory: PhysicalMemory, config: EptConfig, *, dram: DramConfig | None = None,
                 wave=None, resp_stall_probability: float = 0.0, seed: int = 1,
                 watchdog: int = 100_000, unit: dict | None = None, scoreboard: str = "inline"):
        super().__init__(memory, config)
        scoreboard = os.environ.get(SCOREBOARD_ENV) or scoreboard
        if scoreboard not in ("inline", "process"):
            raise ValueError(f"scoreboard must be inline or process, not {scoreboard!r}")
        if scoreboard == "process" and wave is None and scoreboard_process.available():
            # one object: the store count (history.seq) and the checks
            self.history = self.scoreboard = scoreboard_process.ScoreboardProcess(memory, config)
        else:
            self.history = MemoryHistory(memory)
            self.scoreboard = Scoreboard(self.history, config)
        self.harness = self.harness_class(memory, dram, maxphyaddr=config.maxphyaddr,
                                          execute_only=config.execute_only,
                                          resp_stall_probability=resp_stall_probability, seed=seed,
                                          wave=wave, store_seq=lambda: self.history.seq, **(unit or {}))
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
        self.tickets += 1
        if self.tickets % 256 == 0:
            h = self.harness
            floor = h.cache_floor(self.eptp.tag) if self.eptp else self.history.seq
            keep_from = min([x.seq_cache for x in h.inflight.values()] + [floor])
            self.history.prune(keep_from)
            self.scoreboard.prune(keep_from)
        return t

    def translate(self, gpa: int, access: Access) -> tuple[Translation, int | None]:
        t = self.translate_ticket(gpa, access)
        return ticket_translation(t), t.cycles

    @property
    def cycle(self) -> int:
        return self.harness.cycle

    @property
    def busy(self) -> bool:
        return bool(self.harness.inflight)

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
    def mismatches(self) -> list[str]:
        return self.scoreboard.mismatches + self.harness.dram.corruptions

    @property
    def failures(self) -> int:
        return self.scoreboard.failed + len(self.harness.dram.corruptions)

    def report(self) -> dict:
        d = self.harness.dram
        return {
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
            self.harness.close(markers=self.scoreboard.failed_cycles)
