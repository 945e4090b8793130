"""Translation backends behind one interface, so replay and workloads run on any.

A backend owns the DRAM image (:class:`~model.physmem.PhysicalMemory`) and
answers host loads/stores, INVEPT and translations.  ``model`` is the golden
model itself; the RTL backends (``rtl``: pysim, ``verilator``) implement the
same calls and add time: cycles, between-cycle hooks and the unit's counters.
Backends are found by name in :data:`BACKENDS`; an RTL backend's module is
imported only when it is asked for (Amaranth, Verilator).
"""

from __future__ import annotations

import importlib
from typing import Callable

from model.formats import Access, EptConfig, Eptp
from model.guest import GuestRegs
from model.nested import NestedTranslation, translate_la
from model.physmem import PhysicalMemory
from model.walk import Translation, translate

__all__ = ["Backend", "ModelBackend", "BackendUnavailable", "make_backend", "backend_class", "BACKENDS"]


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (not built yet, tool missing)."""


class Backend:
    """Host and translate operations on one DRAM image.

    ``timed`` backends run a clock: they report ``cycle``, call hooks
    between cycles and read the unit's counters.  An untimed backend runs a
    hook's work when the caller asks (see :meth:`add_hook`).
    """
    name = "abstract"
    timed = False
    nested = False       # walks guest page tables (translate_la, set_cr3, invvpid)

    def __init__(self, memory: PhysicalMemory, config: EptConfig):
        self.memory = memory
        self.config = config
        self.eptp: Eptp | None = None
        self.guest: GuestRegs | None = None

    def load_eptp(self, value: int) -> Eptp:
        """Load the EPT pointer; an invalid one raises EptpError, never walked."""
        self.eptp = Eptp.decode(value, self.config)
        return self.eptp

    def write(self, addr: int, value: int) -> None:
        self.memory.write(addr, value, source="host")

    def read(self, addr: int) -> int:
        return self.memory.read(addr)

    def invept(self, kind: str, eptp: Eptp | None = None) -> None:
        raise NotImplementedError

    def translate(self, gpa: int, access: Access) -> tuple[Translation, int | None]:
        """Translate one access; returns (result, cycles or None)."""
        raise NotImplementedError

    # -- nested translation (a guest with its own page tables) -----------------------
    @classmethod
    def refuse_nested(cls, what: str, alternative: str = "") -> BackendUnavailable:
        """The one-line refusal of a backend that cannot walk guest page tables yet."""
        return BackendUnavailable(f"the {cls.name} backend cannot run {what} yet (nested "
                                  f"translation is in the golden model only): use --backend model"
                                  f"{alternative}")

    def load_guest(self, regs: GuestRegs) -> None:
        """Enter the guest: its CR3, CR0.PG/WP, EFER.NXE and VPID."""
        if not self.nested:
            raise self.refuse_nested("a guest")
        self.guest = regs

    def set_cr3(self, cr3: int) -> None:
        """MOV to CR3: the new guest table root; drops the VPID's combined mappings."""
        if not self.nested:
            raise self.refuse_nested("set_cr3")
        self.guest = self.guest.with_cr3(cr3)

    def invvpid(self, kind: str, la: int | None = None) -> None:
        if not self.nested:
            raise self.refuse_nested("invvpid")
        if kind not in ("address", "single", "all"):
            raise ValueError(f"INVVPID kind must be address, single or all, not {kind!r}")

    def translate_la(self, la: int, access: Access, user: bool = False
                     ) -> tuple[NestedTranslation, int | None]:
        """One guest access at linear address ``la``; returns (result, cycles or None)."""
        raise self.refuse_nested("translate_la")

    # -- what a workload run reads back (an untimed backend has no clock) ----------
    @property
    def cycle(self) -> int | None:
        """The current cycle, or None without a clock."""
        return None

    @property
    def busy(self) -> bool:
        """A translation is in flight (always False without a clock)."""
        return False

    def add_hook(self, hook: Callable[[int], int | None]) -> bool:
        """Call ``hook(cycle)`` between cycles (see :func:`sim.cosim.harness.run_hooks`);
        False if the backend has no cycles to call it between."""
        return False

    def keep_tickets(self, n: int | None) -> None:
        """Keep at most ``n`` answered translations for a transaction log (None: all)."""

    def counters(self) -> dict[str, int] | None:
        """The unit's performance counters, or None without a unit."""
        return None

    @property
    def mismatches(self) -> list[str]:
        """What the backend's own checks found wrong, one line each."""
        return []

    @property
    def failures(self) -> int:
        """How many checks failed (may exceed ``len(mismatches)``, which is capped)."""
        return len(self.mismatches)

    @property
    def walk_reads(self) -> int:
        """Memory reads made by walks."""
        raise NotImplementedError

    @property
    def walk_cases(self) -> int:
        """Compare-and-swaps (A/D updates) made by walks."""
        raise NotImplementedError

    def report(self) -> dict:
        """Extra summary fields of this backend (DRAM, scoreboard); empty for the model."""
        return {}

    def close(self) -> None:
        pass


class ModelBackend(Backend):
    """The golden model: reference walk with atomic A/D; no caches, no time."""
    name = "model"
    nested = True

    def __init__(self, memory: PhysicalMemory, config: EptConfig):
        super().__init__(memory, config)
        self.invepts = 0
        self._walk_reads = 0
        self._walk_cases = 0

    def invept(self, kind: str, eptp: Eptp | None = None) -> None:
        if kind not in ("single", "global"):
            raise ValueError(f"INVEPT kind must be single or global, not {kind!r}")
        self.invepts += 1       # nothing is cached, so nothing to drop

    def translate(self, gpa: int, access: Access) -> tuple[Translation, int | None]:
        if self.eptp is None:
            raise RuntimeError("translate before an EPTP was loaded")
        reads, cases = self.memory.reads, self.memory.cases
        t = translate(self.memory, self.eptp, gpa, access, self.config)
        self._walk_reads += self.memory.reads - reads
        self._walk_cases += self.memory.cases - cases
        return t, None

    def invvpid(self, kind: str, la: int | None = None) -> None:
        super().invvpid(kind, la)      # nothing is cached, so nothing to drop

    def translate_la(self, la: int, access: Access, user: bool = False
                     ) -> tuple[NestedTranslation, int | None]:
        if self.eptp is None or self.guest is None:
            raise RuntimeError("translate_la before an EPTP and a guest were loaded")
        reads, cases = self.memory.reads, self.memory.cases
        t = translate_la(self.memory, self.eptp, self.guest, la, access, user, self.config)
        self._walk_reads += self.memory.reads - reads
        self._walk_cases += self.memory.cases - cases
        return t, None

    @property
    def walk_reads(self) -> int:
        return self._walk_reads

    @property
    def walk_cases(self) -> int:
        return self._walk_cases


# name -> "module:class"; the RTL backends import Amaranth or Verilator, so only when asked for
BACKENDS = {
    "model": "sim.backends.base:ModelBackend",
    "rtl": "sim.backends.pysim:PysimBackend",
    "verilator": "sim.backends.verilator:VerilatorBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``."""
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})") from None
    return getattr(importlib.import_module(module), cls)


def make_backend(name: str, memory: PhysicalMemory, config: EptConfig, **kw) -> Backend:
    return backend_class(name)(memory, config, **kw)
