"""Bad input everywhere: every command's error classes give one clear line
on stderr, exit status 2, no traceback, and write nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    # (argv, a word the message must name)
    (["nonsense"], "nonsense"),
    (["replay", "/nonexistent/s.json"], "s.json"),
    (["replay", "{bad}"], "bad"),
    (["run", "--accesses", "0"], "--accesses"),
    (["run", "--mix", "1,2"], "--mix"),
    (["run", "--dram-latency", "0"], "--dram-latency"),
    (["run", "--walkers", "0"], "walkers"),
    (["run", "--tlb-ways", "3"], "ways"),
    (["run", "--race-rate", "2"], "--race-rate"),
    (["run", "--wave", "x.fst"], ".vcd"),
    (["run", "--backend", "model", "--wave", "x.vcd"], "--wave"),
    (["fuzz", "--walks", "-5"], "--walks"),
    (["fuzz", "--cases-per-round", "0"], "--cases-per-round"),
    (["races", "--max-offset", "0"], "--max-offset"),
    (["races", "--pde-cache", "-1"], "--pde-cache"),
    (["soak", "--translations", "0"], "--translations"),
    (["soak", "--backend", "model"], "--backend"),
    (["formal", "--depth", "0"], "--depth"),
    (["wave", "--accesses", "x"], "--accesses"),
    (["verilog", "--tlb-ways", "3"], "ways"),
    (["synth", "--target", "nope"], "--target"),
]


@pytest.mark.parametrize("argv,word", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, word, tmp_path):
    if argv[0] == "replay" and argv[1] == "{bad}":
        bad = tmp_path / "bad.json"
        bad.write_text('{"eptp": "0x101e", "memory": [], "ops": [{"op": "jump"}]}')
        argv = ["replay", str(bad)]
        word = "jump"
    before = set(tmp_path.iterdir())
    res = subprocess.run([sys.executable, "-m", "sim", *argv], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert set(tmp_path.iterdir()) == before          # nothing written, not even build/
