"""Helpers for RTL tests: a shared harness and hand-built table paths."""

from model.formats import EptConfig, Eptp, Level, gpa_index, make_leaf_entry, make_table_entry
from model.physmem import PhysicalMemory
from sim.cosim.dram import DramConfig
from sim.backends.pysim import PysimHarness
from sim.cosim.scoreboard import MemoryHistory, Scoreboard
from sim.cosim.tables import HandTables


class Rig:
    """A pysim harness over a fresh memory, with a scoreboard and a bump allocator."""

    def __init__(self, dram: DramConfig | None = None, config: EptConfig = EptConfig(), **kw):
        self.memory = PhysicalMemory(config.maxphyaddr)
        self.config = config
        self.history = MemoryHistory(self.memory)
        self.scoreboard = Scoreboard(self.history, config)
        self.harness = PysimHarness(self.memory, dram, maxphyaddr=config.maxphyaddr,
                                    execute_only=config.execute_only,
                                    store_seq=lambda: self.history.seq, **kw)
        self.next_frame = 0x10_0000

    def frame(self) -> int:
        pa = self.next_frame
        self.next_frame += 0x1000
        return pa

    def load(self, eptp: Eptp) -> bool:
        return self.harness.load_eptp(eptp.encode(), eptp)

    def path(self, gpa: int, leaf_level: Level = Level.PTE, leaf: int | None = None,
             table_perms=(0b111, 0b111, 0b111), ad: bool = True, page: int = 0x4000_0000):
        """Tables for one GPA; returns (eptp, {level: entry address})."""
        pml4 = self.frame()
        addrs = {}
        table = pml4
        levels = [Level.PML4E, Level.PDPTE, Level.PDE, Level.PTE]
        for i, level in enumerate(levels):
            addr = table + gpa_index(gpa, level) * 8
            addrs[level] = addr
            if level == leaf_level:
                value = leaf if leaf is not None else make_leaf_entry(page, level)
                self.memory.write(addr, value, source="init")
                break
            nxt = self.frame()
            self.memory.write(addr, make_table_entry(nxt, table_perms[i]), source="init")
            table = nxt
        return Eptp(pml4_pa=pml4, ad_enabled=ad), addrs

    def translate(self, gpa, access, limit=5000):
        t = self.harness.translate(gpa, access, limit=limit)
        assert self.scoreboard.check(t), self.scoreboard.mismatches[-1]
        return t


class Tables(HandTables):
    """Hand-built tables in a rig's memory, with frames from its bump allocator."""

    def __init__(self, rig: Rig, ad: bool = True):
        self.rig = rig
        super().__init__(rig.memory, rig.frame, ad)


def run_all(rig: Rig, requests, limit: int = 20_000):
    """Submit every (gpa, access) at once, run until all answer; scoreboard each."""
    tickets = [rig.harness.submit(gpa, access) for gpa, access in requests]
    rig.harness.run_until(lambda: all(t.done for t in tickets), limit, "responses")
    for t in tickets:
        assert rig.scoreboard.check(t), rig.scoreboard.mismatches[-1]
    return tickets


def verilator_or_skip() -> None:
    """Skip, naming what is missing, if the Verilator backend cannot build here."""
    import pytest
    from sim.backends.base import BackendUnavailable
    try:
        from sim.backends.verilator import toolchain
        toolchain()
    except BackendUnavailable as e:       # pragma: no cover - CI installs it (dev extra)
        pytest.skip(str(e))
