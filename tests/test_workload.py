"""The pageable-guest workload on the golden model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.formats import EPT_A, Access, Outcome
from sim.cosim.run import run_workload
from sim.cosim.workload import GuestLayout, Host, WorkloadOptions

ROOT = Path(__file__).resolve().parents[1]


def test_default_shape_has_memory_pressure():
    s = run_workload(WorkloadOptions(accesses=6000, seed=3))
    assert s["mismatches"] == 0, s["mismatch_details"]
    assert s["faults"] > s["options"]["host_frames"]          # paging really happened
    assert s["evictions"] > 0 and s["writebacks"] > 0 and s["swapins"] > 0
    assert s["second_chances"] > 0                             # A bits steered the clock
    assert s["outcomes"]["ok"] == 6000
    assert s["outcomes"]["violation"] == s["faults"]
    assert s["outcomes"]["misconfig"] == 0
    assert s["translations"] == 6000 + s["faults"]
    assert s["pmap_resident_count"] == s["resident_pages"] + s["ptp_pages"] + 1    # + the PDP


def test_no_pressure_no_evictions():
    s = run_workload(WorkloadOptions(accesses=3000, guest_pages=64, host_frames=64, hot_pages=8,
                                     race_rate=0))
    assert s["mismatches"] == 0
    assert s["evictions"] == 0 and s["faults"] <= 64


def test_ad_disabled_runs_clean():
    """Without A/D the host cannot see D: it writes back every writable victim."""
    s = run_workload(WorkloadOptions(accesses=2000, ad=False))
    assert s["mismatches"] == 0, s["mismatch_details"]
    assert s["memory_cas"] == 0
    assert s["writebacks"] > 0


def test_wrong_translation_is_caught(monkeypatch):
    """A backend that returns a wrong HPA must produce mismatches (the check can fail)."""
    from dataclasses import replace
    from sim.backends import base as b

    real = b.ModelBackend.translate

    def lying(self, gpa, access):
        t, c = real(self, gpa, access)
        if t.outcome is Outcome.OK and gpa % 7 == 0:
            t = replace(t, hpa=t.hpa ^ 0x1000)
        return t, c

    monkeypatch.setattr(b.ModelBackend, "translate", lying)
    s = run_workload(WorkloadOptions(accesses=1000))
    assert s["mismatches"] > 0


def test_page_daemon_uses_hardware_accessed_bits():
    """A page the walker just referenced survives the next clock sweep."""
    from model.physmem import PhysicalMemory
    from model.walk import translate
    opts = WorkloadOptions(guest_pages=64, host_frames=8, hot_pages=4)
    mem = PhysicalMemory()
    layout = GuestLayout(opts.guest_pages)
    host = Host(mem, layout, opts)
    pages = layout.data_pages[:8]
    for p in pages:
        host.fault(p, Access.READ)
    for p in pages:                       # clear every A, as a first sweep would
        host.pages.clear_reference(host.resident[p])
    t = translate(mem, host.eptp, pages[3], Access.READ)   # hardware sets A again
    assert t.outcome is Outcome.OK and host.pmap.lookup(pages[3]) & EPT_A
    host.hand = 0
    host.page_daemon(target=4)
    assert pages[3] in host.resident
    assert sum(p in host.resident for p in pages) == 4


@pytest.mark.parametrize("backend,accesses", [("model", 3000), ("rtl", 400)])
def test_make_sim_style_cli_writes_summary(tmp_path, backend, accesses):
    out = tmp_path / "summary.json"
    # the stress workload, asked for by name (the default is guest-os)
    res = subprocess.run([sys.executable, "-m", "sim", "run", "--backend", backend, "--workload", "stress",
                          "--accesses", str(accesses), "--quiet", "--summary", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    s = json.loads(out.read_text())
    for key in ("backend", "translations", "mismatches", "cycles", "cas_retries"):
        assert key in s
    assert s["backend"] == backend and s["mismatches"] == 0
    assert "PASS" in res.stdout and s["translations"] >= accesses
    if backend == "rtl":
        assert s["cycles"] > 0 and s["scoreboard_checked"] == s["translations"]
    assert "PASS" in res.stdout and "stress summary (pageable guest" in res.stdout
    assert s["workload"] == "stress"


def test_the_default_workload_is_the_guest_os_on_every_backend(tmp_path):
    out = tmp_path / "summary.json"
    res = subprocess.run([sys.executable, "-m", "sim", "run", "--backend", "rtl", "--accesses", "120",
                          "--quiet", "--summary", str(out)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    s = json.loads(out.read_text())
    assert s["workload"] == "guest-os" and s["backend"] == "rtl" and s["mismatches"] == 0
    assert "guest-os summary" in res.stdout and "combined-TLB hits (the unit's)" in res.stdout
    assert s["unit_counters"]["linear_lookups"] >= 120


@pytest.mark.parametrize("args, words", [
    (["--combined-tlb", "4", "--workload", "stress"], "--combined-tlb is a parameter of the nested unit"),
    (["--combined-tlb", "65"], "combined_tlb must be an integer in 0..64"),
    (["--backend", "model", "--guest-psc-pde", "2"], "--guest-psc-pde is for the rtl and verilator"),
    (["--backend", "verilator", "--wave", "/tmp/never-written.fst"], "waveforms of the nested unit"),
])
def test_nested_unit_options_are_refused_where_they_mean_nothing(args, words):
    res = subprocess.run([sys.executable, "-m", "sim", "run", "--backend", "rtl", *args, "--accesses", "20"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_wave_needs_an_rtl_backend(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sim", "run", "--backend", "model", "--wave",
                          str(tmp_path / "x.vcd")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.vcd").exists()


@pytest.mark.parametrize("flag,path", [("--summary", "/proc/nope/s.json"), ("--wave", "/proc/nope/w.vcd"),
                                       ("--summary", "/")])
def test_unwritable_output_is_one_line_before_any_work(flag, path):
    res = subprocess.run([sys.executable, "-m", "sim", "run", "--accesses", "20", flag, path],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and flag in res.stderr
    assert "Traceback" not in res.stderr


def test_wrong_rtl_answer_is_caught_by_the_scoreboard(monkeypatch):
    """An RTL response with a flipped HPA bit must be reported (the check can fail)."""
    from sim.backends.pysim import PysimHarness
    real = PysimHarness._fill

    def lying(self, t, raw):
        real(self, t, raw)
        if t.hpa is not None and t.gpa % 5 == 0:
            t.hpa ^= 0x1000
    monkeypatch.setattr(PysimHarness, "_fill", lying)
    s = run_workload(WorkloadOptions(accesses=200), "rtl")
    assert s["mismatches"] > 0
    assert any("expected ok hpa=" in m for m in s["mismatch_details"])
