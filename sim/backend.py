"""Translation backends behind one interface, so replay and workloads run on any.

A backend owns the DRAM image (:class:`~model.physmem.PhysicalMemory`) and
answers host loads/stores, INVEPT and translations.  ``model`` is the golden
model itself; the RTL backends (pysim, Verilator) implement the same calls.
"""

from __future__ import annotations

from model.formats import Access, EptConfig, Eptp, Outcome
from model.physmem import PhysicalMemory
from model.walk import Translation, translate

__all__ = ["Backend", "ModelBackend", "BackendUnavailable", "make_backend", "BACKENDS"]


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (not built yet, tool missing)."""


class Backend:
    """Host and translate operations on one DRAM image."""
    name = "abstract"

    def __init__(self, memory: PhysicalMemory, config: EptConfig):
        self.memory = memory
        self.config = config
        self.eptp: Eptp | None = None

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

    def close(self) -> None:
        pass


class ModelBackend(Backend):
    """The golden model: reference walk with atomic A/D; no caches, no time."""
    name = "model"

    def __init__(self, memory: PhysicalMemory, config: EptConfig):
        super().__init__(memory, config)
        self.invepts = 0
        self.walk_reads = 0
        self.walk_cases = 0

    def invept(self, kind: str, eptp: Eptp | None = None) -> None:
        if kind not in ("single", "global"):
            raise ValueError(f"INVEPT kind must be single or global, not {kind!r}")
        self.invepts += 1       # nothing is cached, so nothing to drop

    def translate(self, gpa: int, access: Access) -> tuple[Translation, int | None]:
        if self.eptp is None:
            raise RuntimeError("translate before an EPTP was loaded")
        reads, cases = self.memory.reads, self.memory.cases
        t = translate(self.memory, self.eptp, gpa, access, self.config)
        self.walk_reads += self.memory.reads - reads
        self.walk_cases += self.memory.cases - cases
        return t, None


def _rtl_backend(memory, config, **kw):
    from .rtl_backend import RtlBackend     # imports Amaranth only when asked for
    return RtlBackend(memory, config, **kw)


def _verilator_backend(memory, config, **kw):
    from .verilator_backend import VerilatorBackend
    return VerilatorBackend(memory, config, **kw)


BACKENDS = {"model": ModelBackend, "rtl": _rtl_backend, "verilator": _verilator_backend}


def make_backend(name: str, memory: PhysicalMemory, config: EptConfig, **kw) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})") from None
    return factory(memory, config, **kw)
