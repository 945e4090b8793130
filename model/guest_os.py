"""A guest OS for the 2D walk: the native x86-64 pmap as the guest kernel's pmap,
with its page tables in guest-physical memory.

:class:`GuestPhysicalMemory` is what the guest kernel's direct map gives it: a
memory addressed by GPA whose every load, store, swap and compare-and-swap is
translated through the host's EPT with the reference walk
(:func:`model.walk.translate`, A/D included) and then done at the HPA.  An EPT
violation calls the host's fault handler (``fault(gpa, access)``, which pages
the GPA in with the host's EPT pmap) and the access is retried, so a guest
page-table page the host paged out comes back exactly like guest data.

:class:`GuestKernel` runs processes, each a native :class:`~model.pmap.Pmap`
over that memory with its own CR3 (the GPA of its PML4), and handles guest
page faults by demand-zero paging: the faulting page's region gives the
protection, a guest frame is allocated and ``pmap_enter``-ed with the faulting
access (so A, and D for a write, start set, as NetBSD does).  The guest has
enough RAM for its processes: the memory pressure is the host's.

Not modelled: the guest kernel's own linear mappings (its direct map would sit
in 1G pages that a TLB holds; its accesses are counted, not walked), guest
swapping, fork/COW.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .formats import PAGE_SIZE, Access, EptConfig, Eptp, Outcome
from .physmem import FrameAllocator, MemoryAccessError, PhysicalMemory
from .pmap import (
    PMAP_CANFAIL, VM_PROT_EXECUTE, VM_PROT_READ, VM_PROT_WRITE, PageDB, Pmap, PmapError, Shootdown,
)
from .walk import Translation, translate

__all__ = ["GuestPhysicalMemory", "GuestKernel", "Process", "Region", "GuestFault", "ACCESS_PROT"]

ACCESS_PROT = {Access.READ: VM_PROT_READ, Access.WRITE: VM_PROT_WRITE, Access.FETCH: VM_PROT_EXECUTE}
_GPA_MASK = (1 << 48) - 1


class GuestFault(RuntimeError):
    """A guest access the guest kernel cannot satisfy (outside every region)."""


@dataclass
class GuestMemoryStats:
    accesses: int = 0          # kernel loads/stores/CASes through EPT
    ept_faults: int = 0        # EPT violations they took (host paged the GPA in)
    ept_walk_reads: int = 0    # EPT entries read to translate them


class GuestPhysicalMemory:
    """Guest-physical memory reached through the host's EPT: the accessor of the
    guest kernel's pmap (the PhysicalMemory interface the pmap uses)."""

    def __init__(self, host_memory: PhysicalMemory, eptp: Callable[[], Eptp], config: EptConfig,
                 fault: Callable[[int, Access], None], size: int, max_faults: int = 16):
        self.host = host_memory
        self._eptp = eptp
        self.config = config
        self.fault = fault
        self.maxphyaddr = config.maxphyaddr
        self.limit = size                   # guest RAM: GPAs 0..size-1
        self.max_faults = max_faults
        self.stats = GuestMemoryStats()
        self.translations: list[Translation] = []    # the last access's EPT translations (for figures)

    # -- translation -----------------------------------------------------------
    def hpa(self, gpa: int, access: Access) -> int:
        """The HPA of ``gpa`` for ``access``, faulting it in through the host as needed."""
        if type(gpa) is not int or not 0 <= gpa < self.limit or gpa & 7:
            raise MemoryAccessError(f"guest-physical address {gpa!r} is misaligned or beyond guest RAM "
                                    f"({self.limit:#x})")
        self.stats.accesses += 1
        for _ in range(self.max_faults):
            t = translate(self.host, self._eptp(), gpa & _GPA_MASK, access, self.config)
            self.stats.ept_walk_reads += len(t.steps)
            if t.outcome is Outcome.OK:
                return t.hpa
            if t.outcome is not Outcome.VIOLATION:
                raise MemoryAccessError(f"guest kernel access to GPA {gpa:#x}: EPT {t.outcome.value} "
                                        f"({t.reason})")
            self.stats.ept_faults += 1
            self.fault(gpa, access)
        raise MemoryAccessError(f"guest kernel access to GPA {gpa:#x}: still faulting after "
                                f"{self.max_faults} page-ins")

    # -- the PhysicalMemory interface the pmap uses -------------------------------
    def peek(self, gpa: int) -> int:
        return self.host.peek(self.hpa(gpa, Access.READ))

    def read(self, gpa: int) -> int:
        return self.host.read(self.hpa(gpa, Access.READ))

    def write(self, gpa: int, value: int, source: str = "guest-kernel") -> None:
        self.host.write(self.hpa(gpa, Access.WRITE), value, source=source)

    def swap(self, gpa: int, value: int, source: str = "guest-kernel") -> int:
        return self.host.swap(self.hpa(gpa, Access.WRITE), value, source=source)

    def cas(self, gpa: int, expected: int, new: int, source: str = "guest-kernel") -> tuple[bool, int]:
        # a locked RMW is a write for EPT
        return self.host.cas(self.hpa(gpa, Access.WRITE), expected, new, source=source)

    def zero_frame(self, gpa: int, source: str = "guest-kernel") -> None:
        if gpa % PAGE_SIZE:
            raise MemoryAccessError(f"frame address {gpa:#x} is not 4K-aligned")
        hpa = self.hpa(gpa, Access.WRITE)               # one page: one translation
        self.host.zero_frame(hpa & ~(PAGE_SIZE - 1), source=source)

    def read_frame(self, gpa: int):
        return self.host.read_frame(self.hpa(gpa & ~(PAGE_SIZE - 1), Access.READ))


@dataclass(frozen=True)
class Region:
    """A process's mapped range: ``pages`` 4K pages from ``base`` with ``prot``."""
    name: str
    base: int
    pages: int
    prot: int

    def __contains__(self, la: int) -> bool:
        return self.base <= la < self.base + self.pages * PAGE_SIZE

    def page(self, i: int) -> int:
        return self.base + i * PAGE_SIZE


@dataclass(eq=False)
class Process:
    pid: int
    name: str
    pmap: Pmap
    regions: list[Region] = field(default_factory=list)
    faults: int = 0

    @property
    def cr3(self) -> int:
        """CR3: the guest-physical address of the PML4 (no PCID)."""
        return self.pmap.pdir_pa

    def region(self, la: int) -> Region | None:
        for r in self.regions:
            if la in r:
                return r
        return None


@dataclass
class GuestKernelStats:
    page_faults: int = 0            # guest #PFs handled (demand-zero fills)
    shootdowns: int = 0             # guest pmap shootdowns (INVLPG / INVVPID address)
    frames_allocated: int = 0


class GuestKernel:
    """The guest kernel: guest RAM, a page allocator, processes and their pmaps.

    ``invlpg(process, la)`` is called for every shootdown a guest pmap asks for
    (NetBSD's ``pmap_tlb_shootdown``); the workload wires it to its TLB.
    """

    def __init__(self, memory: GuestPhysicalMemory, ram_pages: int, reserved_pages: int = 16,
                 invlpg: Callable[[Process, int], None] | None = None):
        self.memory = memory
        # guest RAM above the first pages (the guest's own kernel image, not modelled)
        self.frames = FrameAllocator(memory, reserved_pages * PAGE_SIZE, ram_pages - reserved_pages)
        self.pages = PageDB(self.frames)
        self.invlpg = invlpg
        self.processes: list[Process] = []
        self.stats = GuestKernelStats()
        self._by_pmap: dict[int, Process] = {}

    def _shootdown(self, pmap: Pmap, va: int, why: Shootdown) -> None:
        self.stats.shootdowns += 1
        proc = self._by_pmap.get(id(pmap))
        if self.invlpg is not None and proc is not None:
            self.invlpg(proc, va)

    def spawn(self, name: str, regions: list[Region]) -> Process:
        pmap = Pmap(self.memory, self.frames, self.pages, tlb_flush=self._shootdown)
        proc = Process(len(self.processes), name, pmap, list(regions))
        self.processes.append(proc)
        self._by_pmap[id(pmap)] = proc
        return proc

    def alloc_frame(self) -> int:
        self.stats.frames_allocated += 1
        return self.frames.alloc(zero=True)

    def page_fault(self, proc: Process, la: int, access: Access, pf_error: int) -> None:
        """Handle a guest #PF: demand-zero fill of the faulting page (uvm_fault)."""
        region = proc.region(la)
        if region is None or not region.prot & ACCESS_PROT[access]:
            raise GuestFault(f"{proc.name}: {access.name.lower()} at {la:#x} (#PF {pf_error:#x}) is "
                             f"outside its regions: SIGSEGV")
        if pf_error & 1:
            raise GuestFault(f"{proc.name}: protection #PF {pf_error:#x} at {la:#x} in region "
                             f"{region.name} (the guest pmap should allow it)")
        self.stats.page_faults += 1
        proc.faults += 1
        frame = self.alloc_frame()
        err = proc.pmap.enter(la & ~(PAGE_SIZE - 1), frame, region.prot, ACCESS_PROT[access] | PMAP_CANFAIL)
        if err:
            raise PmapError(f"guest pmap_enter failed ({err})")
        proc.pmap.update()

    def clear_reference(self, proc: Process, la: int) -> bool:
        """One step of a guest working-set scan: pmap_clear_reference on the page ``la`` maps."""
        pa = proc.pmap.extract(la & ~(PAGE_SIZE - 1))
        if pa is None:
            return False
        return self.pages.clear_reference(pa & ~(PAGE_SIZE - 1))

    def extract(self, proc: Process, la: int) -> int | None:
        """The GPA the guest pmap maps ``la`` to (pmap_extract), or None."""
        return proc.pmap.extract(la)
