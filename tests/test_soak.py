"""The soak: the pageable guest over many translations, every one checked,
resident memory flat.  The million-translation run is marked slow
(`make test-all`, `make soak`); a shorter one runs in `make test`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtl_util import verilator_or_skip

from sim.verify.soak import run_soak

ROOT = Path(__file__).resolve().parents[1]




def test_short_soak_is_clean_and_flat():
    verilator_or_skip()
    rep = run_soak(25_000, "verilator", seed=2, flat_mb=8.0)
    assert rep.mismatches == 0 and rep.translations >= 25_000
    assert rep.flat, rep.rss_mb
    assert len(rep.rss_mb) >= 10


@pytest.mark.slow
def test_million_translation_soak(tmp_path):
    verilator_or_skip()
    res = subprocess.run([sys.executable, "-m", "sim", "soak", "--quiet"], capture_output=True,
                         text=True, cwd=ROOT, timeout=3600)
    assert res.returncode == 0, res.stdout + res.stderr
    last = res.stdout.strip().splitlines()[-1]
    n, m = (int(w) for w in last.replace(",", "").split()[::2][:2])
    assert n >= 1_000_000 and m == 0
    soak = json.loads((ROOT / "build" / "reliability" / "report.json").read_text())["soak"]
    assert soak["flat"] and soak["mismatches"] == 0
