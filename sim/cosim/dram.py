"""Cycle-level DRAM model behind the unit's memory port.

The model is a per-cycle state machine over the golden model's sparse
:class:`~model.physmem.PhysicalMemory` (the memory the host pmap writes).  The
simulation harness calls :meth:`Dram.drive` before each clock edge to learn
what to put on the port, and :meth:`Dram.clock` with the handshakes sampled at
the edge.

Timing, per request accepted at the edge ending cycle ``t``:

* the response is valid from cycle ``t + latency``, where latency is
  ``read_latency`` or ``cas_latency`` plus ``row_miss_penalty`` when the access
  misses the open row of its bank (open-row policy, ``banks`` banks of
  ``row_bytes`` rows);
* responses return in request order, at most one per cycle, and wait while
  the port's ``ready`` is low;
* ``ready`` is low while ``max_outstanding`` requests are in flight, and in
  cycles picked by a seeded random stall generator.

The access itself happens when its response first becomes due: a read
returns the word at that moment, a CAS compares and swaps atomically at that
moment, so host stores between cycles are seen or not, never half-seen.
Bus errors are injected by address or with a probability; an errored access
touches nothing.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from hw.params import check_int
from model.formats import EPT_A, EPT_D
from model.physmem import MemoryAccessError, PhysicalMemory

__all__ = ["DramConfig", "Dram", "DramRequest"]


@dataclass
class DramConfig:
    read_latency: int = 8
    cas_latency: int = 12
    row_miss_penalty: int = 6
    row_bytes: int = 8192
    banks: int = 8
    max_outstanding: int = 4
    stall_probability: float = 0.0
    error_probability: float = 0.0
    error_addrs: frozenset = frozenset()
    seed: int = 1

    def validate(self) -> None:
        for name in ("read_latency", "cas_latency"):
            check_int(f"DRAM {name}", getattr(self, name), 1, 10000)
        check_int("DRAM row_miss_penalty", self.row_miss_penalty, 0, 10000)
        check_int("DRAM max_outstanding", self.max_outstanding, 1, 64)
        check_int("DRAM row_bytes", self.row_bytes, 64, power_of_two=True)
        check_int("DRAM banks", self.banks, 1, power_of_two=True)
        for name in ("stall_probability", "error_probability"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"DRAM {name} must be in [0, 1), not {v!r}")


@dataclass
class DramRequest:
    op: str                  # "read" | "cas"
    addr: int
    compare: int = 0
    data: int = 0
    accepted: int = 0        # cycle of acceptance
    due: int = 0             # first cycle the response may be valid
    done: bool = False       # the access has happened
    error: bool = False
    result: int = 0


class Dram:
    """The memory-port model; ``memory`` is shared with the host."""

    def __init__(self, memory: PhysicalMemory, config: DramConfig | None = None):
        self.memory = memory
        self.config = config or DramConfig()
        self.config.validate()
        self.rng = random.Random(self.config.seed)
        self.queue: deque[DramRequest] = deque()
        self.open_rows: dict[int, int] = {}
        self.cycle = 0
        self._ready = True
        # statistics
        self.reads = 0
        self.cases = 0
        self.cas_failures = 0
        self.row_hits = 0
        self.row_misses = 0
        self.errors = 0
        self.stall_cycles = 0
        self.error_log: list[tuple[int, int, str]] = []     # (cycle, addr, op)
        self.corruptions: list[str] = []
        # the bits a walker's CAS may set: EPT A/D, and guest A/D behind the nested unit
        self.ad_bits = EPT_A | EPT_D

    # -- per cycle ----------------------------------------------------------
    def drive(self) -> tuple[bool, DramRequest | None]:
        """What the port shows this cycle: (request ready, response or None)."""
        c = self.config
        self._ready = len(self.queue) < c.max_outstanding and not (
            c.stall_probability and self.rng.random() < c.stall_probability)
        if not self._ready and len(self.queue) < c.max_outstanding:
            self.stall_cycles += 1
        head = self.queue[0] if self.queue else None
        if head is None or self.cycle < head.due:
            return self._ready, None
        if not head.done:
            self._perform(head)
        return self._ready, head

    def clock(self, req: DramRequest | None, resp_taken: bool) -> None:
        """The edge: ``req`` was offered with valid (accepted if we were ready)."""
        if resp_taken:
            self.queue.popleft()
        if req is not None and self._ready:
            req.accepted = self.cycle
            due = self.cycle + self._latency(req)
            if self.queue:
                due = max(due, self.queue[-1].due + 1)
            req.due = due
            self.queue.append(req)
        self.cycle += 1

    @property
    def idle(self) -> bool:
        return not self.queue

    # -- internals ------------------------------------------------------------
    def _latency(self, req: DramRequest) -> int:
        c = self.config
        base = c.read_latency if req.op == "read" else c.cas_latency
        row = req.addr // c.row_bytes
        bank = row % c.banks
        if self.open_rows.get(bank) == row:
            self.row_hits += 1
            return base
        self.row_misses += 1
        self.open_rows[bank] = row
        return base + c.row_miss_penalty

    def _perform(self, req: DramRequest) -> None:
        c = self.config
        req.done = True
        if req.addr in c.error_addrs or (c.error_probability and self.rng.random() < c.error_probability):
            req.error = True
            self.errors += 1
            self.error_log.append((self.cycle, req.addr, req.op))
            return
        try:
            if req.op == "read":
                self.reads += 1
                req.result = self.memory.read(req.addr)
            else:
                self.cases += 1
                ok, req.result = self.memory.cas(req.addr, req.compare, req.data, source="walker")
                if not ok:
                    self.cas_failures += 1
                elif (req.data ^ req.compare) & ~self.ad_bits or req.compare & ~req.data:
                    self.corruptions.append(
                        f"cycle {self.cycle}: walker CAS at {req.addr:#x} changed "
                        f"{req.compare:#x} -> {req.data:#x} (only A/D may be set)")
        except MemoryAccessError:
            # an address outside physical memory: the bus answers with an error
            req.error = True
            self.errors += 1
            self.error_log.append((self.cycle, req.addr, req.op))
