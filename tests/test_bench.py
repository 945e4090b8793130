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
