"""The ``rtl`` backend: the Amaranth unit in pysim, checked by the scoreboard.

Host loads and stores act between cycles on the shared DRAM image; each
translation runs the clock until the unit answers; every answer is checked
against the reference walk of the memory as it stood (see
:mod:`sim.scoreboard`).  Results come back as :class:`model.walk.Translation`
plus the cycle count from the port handshakes.
"""

from __future__ import annotations

from model.formats import Access, EptConfig, Eptp, EptpError, Outcome
from model.physmem import PhysicalMemory
from model.walk import Translation

from .backend import Backend
from .dram import DramConfig
from .harness import PysimHarness, Ticket
from .scoreboard import MemoryHistory, Scoreboard
from .wave import marker_note

__all__ = ["RtlBackend", "ticket_translation"]


def ticket_translation(t: Ticket) -> Translation:
    if t.outcome is None:
        raise RuntimeError(f"GPA {t.gpa:#x}: the unit refused the translation (no valid EPTP)")
    return Translation(t.gpa, t.access, t.outcome, hpa=t.hpa, page_size=t.page_size,
                       memtype=t.memtype, qual=t.qual, retries=t.retries)


class RtlBackend(Backend):
    name = "rtl"
    harness_class = PysimHarness     # the Verilator backend swaps in its own harness

    def __init__(self, memory: PhysicalMemory, config: EptConfig, *, dram: DramConfig | None = None,
                 wave=None, resp_stall_probability: float = 0.0, seed: int = 1,
                 watchdog: int = 100_000, unit: dict | None = None):
        super().__init__(memory, config)
        self.history = MemoryHistory(memory)
        self.scoreboard = Scoreboard(self.history, config)
        self.harness = self.harness_class(memory, dram, maxphyaddr=config.maxphyaddr,
                                          execute_only=config.execute_only,
                                          resp_stall_probability=resp_stall_probability, seed=seed,
                                          wave=wave, store_seq=lambda: self.history.seq, **(unit or {}))
        self.watchdog = watchdog
        self.tickets = 0
        if self.harness.wave is not None:
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
    def walk_reads(self) -> int:
        return self.harness.dram.reads

    @property
    def walk_cases(self) -> int:
        return self.harness.dram.cases

    @property
    def mismatches(self) -> list[str]:
        return self.scoreboard.mismatches + self.harness.dram.corruptions

    def close(self) -> None:
        self.harness.close(markers=self.scoreboard.failed_cycles)
