"""The guest-OS workload: processes of a paging guest on a host that pages it.

The host is the hypervisor of the stress workload (:class:`~sim.cosim.workload.Host`:
an EPT pmap over the DRAM, a frame pool smaller than what the guest touches,
a clock page daemon using the A/D bits), plus the VMM process that maps all
of guest RAM through a native pmap, as NVMM's VMM does, and touches guest
pages for device emulation.  The guest is :class:`~model.guest_os.GuestKernel`:
the native pmap as the guest kernel's pmap, its page tables in guest-physical
memory that the host may page out.

Each guest access goes through a TLB of combined mappings (LA -> HPA; a dTLB
and an iTLB, LRU, the rules of docs/nested.md: MOV to CR3 and INVEPT drop
them, a guest shootdown drops one, a write needs an entry filled by a write).
A miss is a 2D walk on the backend (``translate_la``); a guest #PF goes to the
guest kernel, an EPT violation to the host.  Every translation, hit or walk,
is checked against the two pmaps (guest ``pmap_extract`` then host
``pmap_extract``), and guest data really lives in DRAM: stores write unique
words, loads check them, across host page-outs.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

from model.formats import EPT_A, EPT_D, PAGE_SIZE, Access, EptConfig
from model.guest import GuestRegs
from model.guest_os import GuestKernel, GuestPhysicalMemory, Process, Region
from model.nested import LaOutcome, NestedTranslation, Stage
from model.physmem import PhysicalMemory
from model.pmap import (
    PG_FRAME, PG_V, PMAP_CANFAIL, VM_PROT_ALL, VM_PROT_EXECUTE, VM_PROT_READ, VM_PROT_WRITE, Pmap,
    native_mmu_access,
)

from sim.backends.base import backend_class, make_backend
from sim.cosim.workload import Host
from sim.cosim.tabulate import format_rows

__all__ = ["GuestOsOptions", "run_guest_os", "format_guest_os_summary", "PATTERNS"]

CODE, DATA = VM_PROT_READ | VM_PROT_EXECUTE, VM_PROT_READ | VM_PROT_WRITE
VMM_BASE = 0x0000_7000_0000_0000          # guest RAM in the VMM's address space
PATTERNS = ("hot", "stream", "gups", "chase")


@dataclass
class GuestOsOptions:
    accesses: int = 40000
    seed: int = 1
    guest_ram_pages: int = 2048         # 8 MiB of guest RAM
    host_frames: int = 896              # what the host lends: less than the guest touches
    ad: bool = True                     # EPTP[6]
    timeslice: int = 4000               # accesses between context switches (MOV to CR3)
    fetch_share: float = 0.15           # share of accesses that are instruction fetches
    dtlb_entries: int = 1536
    itlb_entries: int = 128
    vmm_period: int = 200               # accesses between two device-emulation bursts
    scan_period: int = 500              # accesses between guest working-set scan steps
    ptp_frames: int = 4096

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)
        need(self.accesses > 0, f"accesses must be positive, not {self.accesses}")
        need(self.host_frames >= 64, f"host-frames must be at least 64 for the guest OS, not {self.host_frames}")
        need(self.guest_ram_pages >= 1600, "guest-ram-pages must be at least 1600 (the processes need it)")
        need(self.timeslice > 0 and self.vmm_period > 0 and self.scan_period > 0, "periods must be positive")
        need(0 <= self.fetch_share < 1, f"fetch share must be in 0..1, not {self.fetch_share}")
        need(self.dtlb_entries > 0 and self.itlb_entries > 0, "TLB sizes must be positive")


# -- the processes' access patterns -----------------------------------------------------------
class Pattern:
    """A process's access stream: ``next()`` gives (la, access); data loads may
    feed it (``loaded``), as pointer chasing needs."""

    def __init__(self, name: str, rng: random.Random, regions: dict[str, Region], fetch_share: float):
        self.name, self.rng, self.r, self.fetch_share = name, rng, regions, fetch_share
        self.pc = 0                # instruction pointer within the code region
        self.pending: list[tuple[int, Access]] = []

    def fetch(self) -> tuple[int, Access]:
        code = self.r["code"]
        if self.rng.random() < 0.05:                       # a call or branch elsewhere
            self.pc = self.rng.randrange(code.pages * PAGE_SIZE // 64) * 64
        else:
            self.pc = (self.pc + 64) % (code.pages * PAGE_SIZE)
        return code.base + self.pc, Access.FETCH

    def next(self) -> tuple[int, Access]:
        if self.pending:
            return self.pending.pop(0)
        if self.rng.random() < self.fetch_share:
            return self.fetch()
        return self.data()

    def data(self) -> tuple[int, Access]:
        raise NotImplementedError

    def loaded(self, la: int, value: int) -> None:
        pass


class HotSet(Pattern):
    """A key-value server: 90 % of accesses to a hot set of 16 pages that drifts,
    the rest anywhere in the heap; 70 % reads."""

    def __init__(self, *a):
        super().__init__(*a)
        self.hot = self._draw()
        self.count = 0

    def _draw(self):
        heap = self.r["heap"]
        start = self.rng.randrange(heap.pages)
        return [(start + i) % heap.pages for i in range(16)]

    def data(self):
        heap = self.r["heap"]
        self.count += 1
        if self.count % 3000 == 0:
            self.hot = self._draw()
        i = self.rng.choice(self.hot) if self.rng.random() < 0.9 else self.rng.randrange(heap.pages)
        la = heap.page(i) + self.rng.randrange(PAGE_SIZE // 8) * 8
        return la, (Access.READ if self.rng.random() < 0.7 else Access.WRITE)


class Stream(Pattern):
    """memcpy-like streaming: read a word of src, write it to dst, 64-byte stride."""

    def __init__(self, *a):
        super().__init__(*a)
        self.off = 0

    def data(self):
        src, dst = self.r["src"], self.r["dst"]
        off = self.off
        self.off = (self.off + 64) % (src.pages * PAGE_SIZE)
        self.pending.append((dst.base + off, Access.WRITE))
        return src.base + off, Access.READ


class Gups(Pattern):
    """GUPS: random read-modify-write updates over a large table."""

    def data(self):
        t = self.r["table"]
        la = t.base + self.rng.randrange(t.pages * PAGE_SIZE // 8) * 8
        self.pending.append((la, Access.WRITE))
        return la, Access.READ


class Chase(Pattern):
    """Pointer chasing over a linked list spread over the region: one pass
    writes the list (each node holds the next node's LA), then the process
    follows the pointers it loads."""

    def __init__(self, *a):
        super().__init__(*a)
        lst = self.r["list"]
        nodes = [lst.page(p) + 64 * k for p in range(lst.pages) for k in (0, 17, 41)]
        self.rng.shuffle(nodes)
        self.build = [(n, Access.WRITE) for n in nodes]
        self.next_of = {n: nodes[(i + 1) % len(nodes)] for i, n in enumerate(nodes)}
        self.cur = nodes[0]

    def store_value(self, la: int) -> int | None:
        return self.next_of.get(la) if self.build is not None else None

    def data(self):
        if self.build:
            return self.build.pop(0)
        self.build = None
        return self.cur, Access.READ

    def loaded(self, la, value):
        if la == self.cur:
            self.cur = value


def layout(pid: int, kind: str) -> dict[str, Region]:
    base = (pid + 1) << 32                         # each process its own PML4/PDPT subtree
    code = Region("code", 0x40_0000, 8, CODE)
    regs = {"code": code}
    if kind == "hot":
        regs["heap"] = Region("heap", base, 128, DATA)
    elif kind == "stream":
        regs["src"] = Region("src", base, 160, DATA)
        regs["dst"] = Region("dst", base + 0x4000_0000, 160, DATA)      # another 1G: another PD
    elif kind == "gups":
        regs["table"] = Region("table", base, 384, DATA)
    else:
        regs["list"] = Region("list", base + 0x20_0000, 256, DATA)
    return regs


PATTERN_CLASS = {"hot": HotSet, "stream": Stream, "gups": Gups, "chase": Chase}


# -- the TLB the figures count hits in -------------------------------------------------------------
class ComboTlb:
    """Combined mappings (VPID, LA page) -> (HPA page, filled by a write), LRU.

    One instance per kind (dTLB, iTLB); the workload runs one VPID and no PCID,
    so MOV to CR3 drops everything, as INVEPT does.
    """

    def __init__(self, entries: int):
        self.entries = entries
        self.map: OrderedDict[int, tuple[int, bool]] = OrderedDict()
        self.hits = self.misses = self.flushes = 0

    def lookup(self, la: int, write: bool) -> int | None:
        e = self.map.get(la >> 12)
        if e is None or (write and not e[1]):
            self.misses += 1
            return None
        self.map.move_to_end(la >> 12)
        self.hits += 1
        return e[0] | (la & 0xFFF)

    def fill(self, la: int, hpa: int, write: bool) -> None:
        self.map[la >> 12] = (hpa & ~0xFFF, write)
        self.map.move_to_end(la >> 12)
        if len(self.map) > self.entries:
            self.map.popitem(last=False)

    def flush(self) -> None:
        self.flushes += 1
        self.map.clear()

    def invlpg(self, la: int) -> None:
        self.map.pop(la >> 12, None)


@dataclass
class Counters:
    accesses: int = 0
    tlb_hits: int = 0
    guest_walks: int = 0
    walks_ok: int = 0
    ept_walks: int = 0              # EPT translations made by the 2D walks (A/D checks included)
    guest_refs: int = 0             # guest entries read by the 2D walks
    ept_refs: int = 0               # EPT entries read to translate (guest entries' GPAs + final)
    ad_check_refs: int = 0          # EPT entries read by guest A/D write checks (EPTP[6] = 0)
    guest_page_faults: int = 0
    violations_walk: int = 0        # EPT violation on a guest paging-structure access
    violations_ad: int = 0          # ... on a guest A/D update (EPTP[6] = 0)
    violations_final: int = 0       # ... on the final GPA
    misconfigs: int = 0
    guest_a: int = 0                # guest A flags set by the walker
    guest_d: int = 0
    ept_a: int = 0                  # EPT A flags set by 2D walks
    ept_d: int = 0
    ept_d_on_guest_tables: int = 0  # ... of which D on the leaf mapping a guest table page
    context_switches: int = 0
    walk_retries: int = 0
    vmm_touches: int = 0
    vmm_faults: int = 0
    io_checks: int = 0
    guest_scans: int = 0


def run_guest_os(opts: GuestOsOptions, backend_name: str = "model", progress=None, **backend_kw) -> dict:
    """Run the guest OS to completion; return the summary dict."""
    opts.validate()
    memory = PhysicalMemory()
    config = EptConfig(memory.maxphyaddr)
    if backend_class(backend_name).timed and backend_class(backend_name).nested:
        backend_kw = dict(backend_kw, nested=True)      # an RTL backend: the nested unit
    backend = make_backend(backend_name, memory, config, **backend_kw)
    if not backend.nested:
        backend.close()
        raise backend.refuse_nested("the guest-os workload")
    rng = random.Random(opts.seed)
    # An RTL backend caches combined mappings itself (its combined TLB and guest
    # paging-structure caches): every access goes to it, and the guest's INVLPG is an
    # INVVPID of that address.  The model has no caches: the workload's TLB stands in.
    hw_tlb = backend.timed
    dtlb, itlb = ComboTlb(opts.dtlb_entries), ComboTlb(opts.itlb_entries)

    def flush_all():
        dtlb.flush()
        itlb.flush()

    class Ram:                       # the host's view of guest RAM: every page RWX, as NVMM maps it
        @staticmethod
        def prot(gpa: int) -> int:
            return VM_PROT_ALL if gpa < opts.guest_ram_pages * PAGE_SIZE else 0

    def on_invept(kind, eptp=None):
        backend.invept(kind, eptp)
        flush_all()                  # INVEPT drops the combined mappings of that EP4TA

    from sim.cosim.workload import WorkloadOptions
    host = Host(memory, Ram(), WorkloadOptions(host_frames=opts.host_frames, ad=opts.ad,
                                               ptp_frames=opts.ptp_frames), invept=on_invept)
    backend.load_eptp(host.eptp.encode())
    vmm = Pmap(memory, host.ptp_frames, host.pages, tlb_flush=lambda *a: None)

    view = GuestPhysicalMemory(memory, lambda: host.eptp, config, host.fault,
                               opts.guest_ram_pages * PAGE_SIZE)
    current: dict = {"proc": None}

    def invlpg(proc: Process, la: int):
        if proc is current["proc"]:
            if hw_tlb:
                backend.invvpid("address", la)
            dtlb.invlpg(la)
            itlb.invlpg(la)
    kernel = GuestKernel(view, opts.guest_ram_pages, invlpg=invlpg)
    procs, patterns = [], {}
    for kind in PATTERNS:
        regions = layout(len(procs), kind)
        p = kernel.spawn(kind, list(regions.values()))
        procs.append(p)
        patterns[p.pid] = PATTERN_CLASS[kind](kind, random.Random(rng.random()), regions, opts.fetch_share)
    # device-emulation buffers: guest frames the guest kernel gives the (virtual) device
    io_frames = [kernel.alloc_frame() for _ in range(8)]
    io_expected: dict[int, int] = {}

    c = Counters()
    stored: dict[tuple[int, int], int] = {}
    mismatches: list[str] = []
    next_value = [1]

    def switch(proc: Process):
        current["proc"] = proc
        c.context_switches += 1
        regs = GuestRegs(cr3=proc.cr3, paging=True, wp=True, nxe=True, vpid=1)
        if backend.guest is None:
            backend.load_guest(regs)
        else:
            backend.set_cr3(proc.cr3)
        flush_all()                  # MOV to CR3 without PCID: the VPID's combined mappings go

    def gpa_peek(gpa: int) -> int:
        """A guest-physical word as the host holds it (resident frame or swap),
        without translating: the checker must not set A/D nor fault pages in."""
        page = gpa & ~(PAGE_SIZE - 1)
        frame = host.resident.get(page)
        if frame is not None:
            return memory.peek(frame | (gpa & (PAGE_SIZE - 1)))
        saved = host.swap.get(page)
        return 0 if saved is None else saved.item((gpa & (PAGE_SIZE - 1)) >> 3)

    def expected_hpa(proc: Process, la: int) -> int | None:
        """What the two pmaps say: the guest pmap's tables (read as the host holds
        them) give the GPA, the host's EPT pmap (pmap_extract) the HPA."""
        table = proc.cr3
        for level in (4, 3, 2, 1):
            pte = gpa_peek(table + ((la >> (12 + 9 * (level - 1))) & 0x1FF) * 8)
            if not pte & PG_V:
                return None
            table = pte & PG_FRAME
        hpa = host.pmap.extract(table)
        return None if hpa is None else hpa | (la & (PAGE_SIZE - 1))

    def count_walk(t: NestedTranslation):
        c.guest_walks += 1
        c.guest_refs += t.guest_refs
        c.ept_refs += t.ept_refs
        c.ad_check_refs += t.ad_check_refs
        c.ept_walks += len(t.ept_translations)
        c.walk_retries += t.retries
        for u in t.ad_updates:
            c.guest_a += bool(u.new & ~u.old & 0x20)
            c.guest_d += bool(u.new & ~u.old & 0x40)
        table_leaves = {s.ept.steps[-1].addr for s in t.guest_steps if s.ept.steps}
        for et in t.ept_translations:
            for addr, old, new in et.ad_writes:
                c.ept_a += bool(new & ~old & EPT_A)
                if new & ~old & EPT_D:
                    c.ept_d += 1
                    c.ept_d_on_guest_tables += addr in table_leaves

    def count_ad(old: int, new: int) -> None:
        """An A/D CAS of the RTL, told apart by its bits: a guest entry's A/D are bits
        5-6 (EPT memory type and IPAT there, which no walker changes), an EPT
        entry's bits 8-9 (guest G and an ignored bit)."""
        set_ = new & ~old
        c.guest_a += bool(set_ & 0x20)
        c.guest_d += bool(set_ & 0x40)
        c.ept_a += bool(set_ & EPT_A)
        c.ept_d += bool(set_ & EPT_D)

    def translate(proc: Process, la: int, access: Access) -> int | None:
        tlb = itlb if access is Access.FETCH else dtlb
        write = access is Access.WRITE
        hpa = None if hw_tlb else tlb.lookup(la, write)
        if hpa is not None:
            c.tlb_hits += 1
            return hpa
        for _attempt in range(24):
            t, _cycles = backend.translate_la(la, access, True)
            if not hw_tlb:          # the RTL's own counters say what it walked
                count_walk(t)
            if t.outcome is LaOutcome.OK:
                c.walks_ok += not hw_tlb
                tlb.fill(la, t.hpa, write)
                return t.hpa
            if t.outcome is LaOutcome.PAGE_FAULT:
                c.guest_page_faults += 1
                kernel.page_fault(proc, la, access, t.pf_error)
            elif t.outcome is LaOutcome.VIOLATION:
                if t.stage is Stage.WALK:
                    c.violations_walk += 1
                elif t.stage is Stage.AD:
                    c.violations_ad += 1
                else:
                    c.violations_final += 1
                kind = Access.WRITE if t.qual & 2 else Access.FETCH if t.qual & 4 else Access.READ
                host.fault(t.gpa, kind)
            else:
                c.misconfigs += 1
                mismatches.append(f"{proc.name} LA {la:#x}: EPT misconfiguration ({t.reason}) on "
                                  f"tables the pmaps built")
                return None
        mismatches.append(f"{proc.name} LA {la:#x} {access.name.lower()}: no translation after 24 tries")
        return None

    def vmm_io():
        """Device emulation: the VMM DMAs into a guest buffer through its own mapping
        of guest RAM (native pmap: PG_M), the guest kernel reads it back (through EPT)."""
        gpa = rng.choice(io_frames) + rng.randrange(PAGE_SIZE // 8) * 8
        va = VMM_BASE + gpa
        value = (0xD3A << 48) | next_value[0]
        next_value[0] += 1
        c.vmm_touches += 1
        pa = native_mmu_access(vmm, va, True)
        if pa is None:
            c.vmm_faults += 1
            frame = host.page_in(gpa & ~(PAGE_SIZE - 1))
            vmm.enter(va & ~(PAGE_SIZE - 1), frame, VM_PROT_READ | VM_PROT_WRITE,
                      VM_PROT_WRITE | PMAP_CANFAIL)
            vmm.update()
            pa = native_mmu_access(vmm, va, True)
        memory.write(pa, value, source="vmm")
        io_expected[gpa] = value
        # the guest driver consumes an earlier buffer word (a load through EPT)
        g = rng.choice(list(io_expected))
        got = view.read(g)
        c.io_checks += 1
        if got != io_expected[g]:
            mismatches.append(f"I/O buffer GPA {g:#x}: guest kernel read {got:#x}, VMM wrote "
                              f"{io_expected[g]:#x}")

    if hw_tlb:
        memory.observe(lambda addr, old, new, source: source == "walker" and count_ad(old, new))

    started = time.monotonic()
    step = max(opts.accesses // 10, 1)
    order = list(procs)
    try:
        switch(order[0])
        for n in range(opts.accesses):
            if n and n % opts.timeslice == 0:
                switch(order[(n // opts.timeslice) % len(order)])
            if n and n % opts.vmm_period == 0:
                vmm_io()
            proc = current["proc"]
            pat = patterns[proc.pid]
            if n and n % opts.scan_period == 0:
                # the guest's working-set scan: clear A on one of its pages (shoots the TLB entry down)
                r = rng.choice([r for r in proc.regions if r.name != "code"])
                c.guest_scans += 1
                kernel.clear_reference(proc, r.page(rng.randrange(r.pages)))
            la, access = pat.next()
            c.accesses += 1
            hpa = translate(proc, la, access)
            if hpa is None:
                continue
            want = expected_hpa(proc, la)
            if hpa != want:
                mismatches.append(f"{proc.name} LA {la:#x} {access.name.lower()}: HPA {hpa:#x}, the guest "
                                  f"and host pmaps give {want and hex(want)}")
                continue
            word = hpa & ~7
            key = (proc.pid, la & ~7)
            if access is Access.WRITE:
                v = pat.store_value(la) if isinstance(pat, Chase) else None
                if v is None:
                    v = (proc.pid << 56) | next_value[0]
                    next_value[0] += 1
                memory.write(word, v, source="guest")
                stored[key] = v
            elif access is Access.READ:
                got = memory.peek(word)
                if got != stored.get(key, 0):
                    mismatches.append(f"{proc.name} LA {la:#x}: loaded {got:#x} at HPA {word:#x}, "
                                      f"stored {stored.get(key, 0):#x}")
                pat.loaded(la, got)
            if progress and (n + 1) % step == 0 and n + 1 < opts.accesses:
                walks = backend.counters()["guest_walks"] if hw_tlb else c.guest_walks
                progress(f"  [{100 * (n + 1) // opts.accesses:3d}%] {n + 1}/{opts.accesses} accesses, "
                         f"{walks} walks, {host.stats.evictions} evictions, "
                         f"{len(mismatches)} mismatches")
        unit_counters = backend.counters()          # an RTL backend's (the unit's); None on the model
        if hw_tlb:
            u = unit_counters
            c.tlb_hits = u["ctlb_hits"]
            c.guest_walks = u["guest_walks"]
            c.walks_ok = u["guest_walks_completed"]
            c.ept_walks = u["ept_lookups"]
            c.guest_refs = u["guest_mem_reads"] + u["guest_mem_cas"]
            c.ept_refs = u["mem_reads"] + u["mem_cas"]
            c.walk_retries = u["guest_cas_retries"]
    finally:
        backend.close()
    failures = len(mismatches) + backend.failures   # with an RTL backend, its scoreboards' verdicts too
    mismatches.extend(backend.mismatches)
    elapsed = time.monotonic() - started
    s = host.stats
    walks = max(c.guest_walks, 1)
    touched = sum(1 for f in kernel.frames.allocated())
    summary = {
        "workload": "guest-os",
        "backend": backend_name,
        "accesses": c.accesses,
        "processes": {p.name: {"cr3": hex(p.cr3), "guest_page_faults": p.faults,
                               "resident_pages": p.pmap.resident_count} for p in procs},
        "tlb": {"dtlb_hits": dtlb.hits, "dtlb_misses": dtlb.misses, "itlb_hits": itlb.hits,
                "itlb_misses": itlb.misses, "flushes": dtlb.flushes,
                "hit_rate": round(c.tlb_hits / max(c.accesses, 1), 4)},
        "counters": asdict(c),
        "ept_walks_per_guest_walk": round(c.ept_walks / walks, 2),
        "guest_refs_per_walk": round(c.guest_refs / walks, 2),
        "ept_refs_per_walk": round(c.ept_refs / walks, 2),
        "refs_per_walk": round((c.guest_refs + c.ept_refs) / walks, 2),
        "guest_frames_touched": touched,
        "host_frames": opts.host_frames,
        "host": asdict(s),
        "evictions_per_1000_accesses": round(1000 * s.evictions / max(c.accesses, 1), 2),
        "guest_kernel": asdict(kernel.stats),
        "guest_kernel_memory": asdict(view.stats),
        "vmm_resident_count": vmm.resident_count,
        "host_resident_pages": len(host.resident),
        "mismatches": failures,
        "mismatch_details": mismatches[:20],
        "elapsed_seconds": round(elapsed, 3),
        "options": asdict(opts),
    }
    if unit_counters is not None:
        summary["unit_counters"] = unit_counters
    summary.update(backend.report())
    return summary


def format_guest_os_summary(s: dict) -> str:
    c = s["counters"]
    t = s["tlb"]
    h = s["host"]
    u = s.get("unit_counters")      # an RTL backend: its own combined TLB and counters
    pct = lambda a, b: f"{100 * a / max(b, 1):.1f} %"     # noqa: E731
    rows = [
        ("backend", s["backend"]),
        ("guest accesses (4 processes, CPL 3)", s["accesses"]),
        ("  processes (guest #PFs)", ", ".join(f"{k} ({v['guest_page_faults']})"
                                             for k, v in s["processes"].items())),
        *((("combined-TLB hits (the unit's)", f"{c['tlb_hits']} = {pct(c['tlb_hits'], s['accesses'])}"),
           ("INVVPIDs / MOV CR3 / INVEPTs", f"{u['invvpids']} / {u['cr3_loads']} / {u['invepts']}"),
           ("guest PSC hits (PML4E / PDPTE / PDE)",
            f"{u['gpsc_hits_pml4e']} / {u['gpsc_hits_pdpte']} / {u['gpsc_hits_pde']}"),
           ("EPT TLB misses that walked (of EPT lookups)", f"{u['ept_walks']} (of {u['ept_lookups']})"))
          if u else
          (("TLB hits (dTLB / iTLB)", f"{c['tlb_hits']} = {pct(c['tlb_hits'], s['accesses'])} "
                                      f"({t['dtlb_hits']} / {t['itlb_hits']})"),
           ("TLB flushes (MOV CR3 + INVEPT)", t["flushes"]))),
        ("guest walks (2D)", f"{c['guest_walks']} = {pct(c['guest_walks'], s['accesses'])} of accesses "
                             f"({c['walks_ok']} ok)"),
        ("EPT walks per guest walk", s["ept_walks_per_guest_walk"]),
        ("memory refs per walk (guest + EPT)",
         f"{s['refs_per_walk']} ({s['guest_refs_per_walk']} + {s['ept_refs_per_walk']}; 24 for a full 4K walk)"),
        *(() if u else (("EPT refs of guest A/D write checks", c["ad_check_refs"]),)),
        ("guest page faults", c["guest_page_faults"]),
        ("EPT violations: paging structure / A/D update / final",
         f"{c['violations_walk']} / {c['violations_ad']} / {c['violations_final']}"),
        ("EPT misconfigurations", c["misconfigs"]),
        ("guest A / D set by the walker", f"{c['guest_a']} / {c['guest_d']}"),
        ("EPT A / D set by 2D walks", f"{c['ept_a']} / {c['ept_d']}" + ("" if u else
                                      f" ({c['ept_d_on_guest_tables']} D on guest-table leaves)")),
        ("context switches (MOV CR3)", c["context_switches"]),
        ("guest frames in use / host frames", f"{s['guest_frames_touched']} / {s['host_frames']}"),
        ("host EPT faults (pmap_enter)", h["faults"]),
        ("host evictions (page daemon)", f"{h['evictions']} ({s['evictions_per_1000_accesses']} per 1000 "
                                         f"accesses)"),
        ("  write-backs / page-ins / second chances",
         f"{h['writebacks']} / {h['swapins']} / {h['second_chances']}"),
        ("host shootdowns (INVEPT)", h["shootdowns"]),
        ("guest kernel loads/stores through EPT (faults)",
         f"{s['guest_kernel_memory']['accesses']} ({s['guest_kernel_memory']['ept_faults']})"),
        ("VMM device-emulation writes (VMM faults)", f"{c['vmm_touches']} ({c['vmm_faults']})"),
        ("mismatches", s["mismatches"]),
    ]
    lines = format_rows("guest-os summary", rows, pad=30)
    lines.append(explain(s))
    for m in s["mismatch_details"]:
        lines.append(f"MISMATCH: {m}")
    lines.append(f"{'PASS' if s['mismatches'] == 0 else 'FAIL'}: {s['accesses']} accesses, "
                 f"{c['guest_walks']} 2D walks, {s['mismatches']} mismatches in {s['elapsed_seconds']:.1f} s")
    return "\n".join(lines)


def explain(s: dict) -> str:
    """The evictions, in words: the guest touches more frames than the host lends."""
    h, c = s["host"], s["counters"]
    batch = max(1, s["host_frames"] // 16)
    short = s["guest_frames_touched"] + 16 - s["host_frames"]
    return (f"Why: the guest uses {s['guest_frames_touched']} guest frames plus 16 reserved pages and the "
            f"host lends {s['host_frames']} ({'%d frames short' % short if short > 0 else 'no pressure'}). "
            f"When no frame is free the page daemon frees {batch} at a time (clock over the EPT A and "
            f"native PG_U bits): {h['evictions']} evictions for {h['faults']} host faults. Every eviction "
            f"and every A bit it clears is an INVEPT ({h['shootdowns']}), which empties the TLB; with the "
            f"{c['context_switches']} context switches and {c['guest_page_faults']} first touches, that is "
            f"where the {c['guest_walks']} walks come from.")
