"""The guest OS: the native pmap as a guest kernel pmap over guest-physical memory
reached through EPT, and the guest-os workload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from model.formats import PAGE_SIZE, Access, EptConfig
from model.guest import GuestRegs
from model.guest_os import GuestKernel, GuestPhysicalMemory, Region
from model.nested import LaOutcome, translate_la
from model.physmem import PhysicalMemory
from model.pmap import (
    PMAP_CANFAIL, VM_PROT_ALL, VM_PROT_READ, VM_PROT_WRITE, Pmap, native_mmu_access,
)
from sim.cosim.guest_os import GuestOsOptions, run_guest_os
from sim.cosim.workload import Host, WorkloadOptions

ROOT = Path(__file__).resolve().parents[1]
RAM_PAGES = 256
REGIONS = [Region("a", 0x10_0000, 24, VM_PROT_READ | VM_PROT_WRITE),
           Region("b", 0x80_0000_0000, 24, VM_PROT_READ | VM_PROT_WRITE)]


class System:
    """Host (EPT pmap, page daemon, a VMM native pmap) and a guest kernel with two processes."""

    def __init__(self, host_frames: int = 24, ad: bool = True):
        self.memory = PhysicalMemory()
        self.config = EptConfig(self.memory.maxphyaddr)

        class Ram:
            @staticmethod
            def prot(gpa):
                return VM_PROT_ALL if gpa < RAM_PAGES * PAGE_SIZE else 0
        self.host = Host(self.memory, Ram(), WorkloadOptions(host_frames=host_frames, ad=ad, ptp_frames=512))
        self.vmm = Pmap(self.memory, self.host.ptp_frames, self.host.pages)
        self.view = GuestPhysicalMemory(self.memory, lambda: self.host.eptp, self.config, self.host.fault,
                                        RAM_PAGES * PAGE_SIZE)
        self.kernel = GuestKernel(self.view, RAM_PAGES, reserved_pages=4)
        self.procs = [self.kernel.spawn(f"p{i}", REGIONS) for i in range(2)]

    def access(self, proc, la, access=Access.READ):
        """A guest access as the hardware does it: 2D walk, #PF to the guest kernel,
        EPT violation to the host, until it succeeds."""
        regs = GuestRegs(cr3=proc.cr3)
        for _ in range(16):
            t = translate_la(self.memory, self.host.eptp, regs, la, access, True, self.config)
            if t.outcome is LaOutcome.OK:
                return t
            if t.outcome is LaOutcome.PAGE_FAULT:
                self.kernel.page_fault(proc, la, access, t.pf_error)
            elif t.outcome is LaOutcome.VIOLATION:
                self.host.fault(t.gpa, Access.WRITE if t.qual & 2 else Access.READ)
            else:
                raise AssertionError(t.reason)
        raise AssertionError("no translation")

    def vmm_touch(self, gpa, write):
        va = 0x7000_0000_0000 + (gpa & ~0xFFF)
        if native_mmu_access(self.vmm, va, write) is None:
            frame = self.host.page_in(gpa & ~0xFFF)
            self.vmm.enter(va, frame, VM_PROT_READ | VM_PROT_WRITE,
                           (VM_PROT_WRITE if write else VM_PROT_READ) | PMAP_CANFAIL)
            self.vmm.update()
            assert native_mmu_access(self.vmm, va, write) is not None

    def check_all(self):
        """Every mapped LA of every process translates to what the two pmaps say."""
        for proc in self.procs:
            for la, pte in list(proc.pmap.mappings()):
                gpa = pte & 0x000F_FFFF_FFFF_F000
                t = self.access(proc, la + 0x18)
                assert t.gpa == gpa | 0x18
                assert t.hpa == self.host.pmap.extract(gpa) | 0x18


def test_guest_tables_live_in_guest_physical_memory():
    s = System(host_frames=64)
    p = s.procs[0]
    t = s.access(p, 0x10_0008, Access.WRITE)
    assert t.outcome is LaOutcome.OK
    assert p.cr3 < RAM_PAGES * PAGE_SIZE                      # CR3 is a GPA
    for step in t.guest_steps:
        assert step.gpa < RAM_PAGES * PAGE_SIZE
        assert step.hpa == s.host.pmap.extract(step.gpa & ~0xFFF) | (step.gpa & 0xFFF)
    assert s.kernel.stats.page_faults == 1


def test_paged_out_guest_page_table_faults_back_in_through_the_host():
    s = System(host_frames=64)
    p = s.procs[0]
    s.access(p, 0x10_0000, Access.WRITE)
    pt_gpa = s.access(p, 0x10_0000).guest_steps[-1].gpa & ~0xFFF
    frame = s.host.resident[pt_gpa]
    s.host.evict(frame)                                  # the host pages the guest's PT out
    assert pt_gpa not in s.host.resident
    regs = GuestRegs(cr3=p.cr3)
    t = translate_la(s.memory, s.host.eptp, regs, 0x10_0000, Access.READ, True, s.config)
    assert t.outcome is LaOutcome.VIOLATION and not t.qual & 0x100        # a paging-structure access
    assert t.gpa & ~0xFFF == pt_gpa
    t = s.access(p, 0x10_0000)                          # paged back in from swap
    assert t.outcome is LaOutcome.OK and s.host.stats.swapins == 1


def test_vmm_and_ept_references_combine_for_the_page_daemon():
    """The twisted case: a page referenced only through the VMM's native pmap is
    still referenced for the host page daemon, and a VMM write makes it modified."""
    s = System(host_frames=64)
    io = s.kernel.alloc_frame()                          # a guest frame the guest never maps
    frame = s.host.resident[io]
    s.host.pages.clear_reference(frame)
    s.host.pages.clear_modify(frame)
    assert not s.host.pages.is_referenced(frame) and not s.host.pages.is_modified(frame)
    s.vmm_touch(io, write=True)
    assert s.host.pages.is_referenced(frame) and s.host.pages.is_modified(frame)
    s.host.evict(frame)                                  # both mappings go, the data is written back
    assert io in s.host.swap and s.vmm.extract(0x7000_0000_0000 + io) is None


ops = st.lists(st.one_of(
    st.tuples(st.just("touch"), st.integers(0, 1), st.integers(0, 1), st.integers(0, 23), st.booleans()),
    st.tuples(st.just("evict"), st.integers(0, 10_000)),
    st.tuples(st.just("host_clear_ref"), st.integers(0, 10_000)),
    st.tuples(st.just("guest_clear_ref"), st.integers(0, 1), st.integers(0, 1), st.integers(0, 23)),
    st.tuples(st.just("guest_remove"), st.integers(0, 1), st.integers(0, 1), st.integers(0, 23)),
    st.tuples(st.just("vmm"), st.integers(0, RAM_PAGES - 1), st.booleans()),
    st.tuples(st.just("daemon"),),
), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=ops, ad=st.booleans())
def test_every_mapped_la_translates_to_what_the_pmaps_say(seq, ad):
    s = System(host_frames=24, ad=ad)
    for op in seq:
        kind = op[0]
        if kind == "touch":
            _, pi, ri, page, write = op
            s.access(s.procs[pi], REGIONS[ri].page(page) + 8, Access.WRITE if write else Access.READ)
        elif kind in ("evict", "host_clear_ref") and s.host.clock:
            frame = s.host.clock[op[1] % len(s.host.clock)]
            if kind == "evict":
                s.host.evict(frame)
            else:
                s.host.pages.clear_reference(frame)
        elif kind == "guest_clear_ref":
            _, pi, ri, page = op
            s.kernel.clear_reference(s.procs[pi], REGIONS[ri].page(page))
        elif kind == "guest_remove":
            _, pi, ri, page = op
            proc, la = s.procs[pi], REGIONS[ri].page(page)
            gpa = proc.pmap.extract(la)
            if gpa is not None:
                proc.pmap.remove(la, la + PAGE_SIZE)
                proc.pmap.update()
                s.kernel.frames.free(gpa)
        elif kind == "vmm":
            s.vmm_touch(op[1] * PAGE_SIZE, op[2])
        elif kind == "daemon":
            s.host.page_daemon(target=8)
        s.check_all()


def test_workload_small_run_passes_with_the_2d_figures():
    s = run_guest_os(GuestOsOptions(accesses=8000, host_frames=300, timeslice=1000))
    c = s["counters"]
    assert s["mismatches"] == 0, s["mismatch_details"]
    assert c["guest_walks"] > 0 and c["guest_page_faults"] > 0
    assert s["host"]["evictions"] > 0
    assert c["violations_walk"] + c["violations_final"] > 0
    assert c["guest_a"] > 0 and c["guest_d"] > 0 and c["ept_d_on_guest_tables"] > 0
    assert 20 <= s["refs_per_walk"] <= 24
    assert s["tlb"]["hit_rate"] > 0.5


def test_workload_without_ept_ad_checks_guest_ad_writes():
    s = run_guest_os(GuestOsOptions(accesses=3000, host_frames=300, ad=False))
    assert s["mismatches"] == 0, s["mismatch_details"]
    assert s["counters"]["ad_check_refs"] > 0 and s["counters"]["ept_a"] == 0


def test_cli_default_on_model_is_guest_os(tmp_path):
    out = tmp_path / "s.json"
    res = subprocess.run([sys.executable, "-m", "sim", "run", "--backend", "model", "--accesses", "3000",
                          "--quiet", "--summary", str(out)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "guest-os summary" in res.stdout and "EPT walks per guest walk" in res.stdout
    assert json.loads(out.read_text())["workload"] == "guest-os"
