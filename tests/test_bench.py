"""`make bench` smoke test: the quick run writes every required key and the plots,
and the timing goals of the TLB issue hold on the RTL."""

import json

from sim.flows.bench import run_bench

KEYS = ("tlb_hit_latency_cycles", "tlb_hit_throughput_per_cycle", "cold_walk_cycles",
        "dram_latency_cycles", "psc_pde_hit_walk_cycles", "miss_throughput_speedup_4_walkers")


def test_quick_bench(tmp_path):
    r = run_bench(tmp_path, quick=True, progress=lambda s: None)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == r
    for k in KEYS:
        assert k in r, k
    L = r["dram_latency_cycles"]
    assert r["tlb_hit_latency_cycles"] == 1
    assert r["tlb_hit_throughput_per_cycle"] == 1.0
    assert r["cold_walk_cycles"] <= 4 * (L + 1) + 2
    assert r["psc_pde_hit_walk_cycles"] <= (L + 1) + 2
    assert r["miss_throughput_speedup_4_walkers"] >= 3.0     # 16 misses in quick mode
    for name in ("sequential", "random", "strided", "huge"):
        assert len(r["patterns"][name]) == 3
    assert all(row["mismatches"] == 0 for row in r["workload"]["pageable_guest"])
    for png in r["plots"]:
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_bare_model_and_the_cosimulation_against_it():
    import pytest
    from sim.backends.base import BackendUnavailable
    from sim.flows.bench import cosim_vs_bare
    try:
        from sim.backends.verilator import toolchain
        toolchain()
    except (ImportError, BackendUnavailable) as e:      # pragma: no cover - CI installs it
        pytest.skip(f"verilator toolchain unavailable: {e}")
    r = cosim_vs_bare(accesses=100, repeat=1, cold=False)
    for k in ("verilator_bare_cycles_per_second", "cosim_loop_vs_bare", "cosim_process_vs_bare",
              "cosim_loop_vs_bare_cpu", "verilator_cold_build_seconds"):
        assert k in r, k
    assert r["verilator_bare_translations"] == 100 and r["verilator_bare_cycles"] > 1000
    assert 0 < r["cosim_process_vs_bare"] < r["cosim_loop_vs_bare"] < 1.5
