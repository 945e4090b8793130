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
    (["run", "--backend", "rtl", "--wave", "x.fst"], ".vcd"),
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
    # options that mean nothing where they are given are refused, naming the option
    (["run", "--backend", "model", "--bus-error-rate", "0.1"], "--bus-error-rate"),
    (["run", "--backend", "model", "--dram-latency", "3"], "--dram-latency"),
    (["run", "--backend", "model", "--walkers", "3"], "--walkers"),
    (["run", "--backend", "model", "--no-caches"], "--no-caches"),
    (["replay", "{ok}", "--backend", "model", "--resp-stall", "0.5"], "--resp-stall"),
    (["run", "--no-caches", "--tlb-sets", "64"], "--tlb-sets"),
    (["fuzz", "--no-caches", "--pde-cache", "4"], "--pde-cache"),
    # output paths that cannot be written, before any work
    (["run", "--backend", "model", "--summary", "/proc/summary.json"], "/proc/summary.json"),
    (["run", "--backend", "model", "--summary", "no/such/folder/s.json"], "no/such/folder"),
    (["fuzz", "--out", "/proc/fuzz"], "/proc/fuzz"),
    (["races", "--out", "nowhere/r.json"], "nowhere"),
    (["replay", "{dup}"], "twice"),
]


@pytest.mark.parametrize("argv,word", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, word, tmp_path):
    if argv[0] == "replay" and argv[1] == "{bad}":
        bad = tmp_path / "bad.json"
        bad.write_text('{"eptp": "0x101e", "memory": [], "ops": [{"op": "jump"}]}')
        argv = ["replay", str(bad)]
        word = "jump"
    if argv[0] == "replay" and argv[1] in ("{ok}", "{dup}"):
        path = tmp_path / "s.json"
        path.write_text('{"eptp": "0x101e", "memory": [], "ops": []}' if argv[1] == "{ok}" else
                        '{"eptp": "0x101e", "memory": [], "ops": [], "eptp": "0x5e"}')
        argv = ["replay", str(path), *argv[2:]]
    before = set(tmp_path.iterdir())
    res = subprocess.run([sys.executable, "-m", "sim", *argv], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert set(tmp_path.iterdir()) == before          # nothing written, not even build/


def test_usage_errors_name_the_subcommand(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sim", "run", "--backend", "model", "--walkers", "3"],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert res.stderr.startswith("error: python -m sim run: "), res.stderr


def test_replay_reads_standard_input(tmp_path):
    scenario = ('{"eptp": "0x101e", "memory": [], '
                '"ops": [{"op": "translate", "gpa": "0x1000", "access": "read"}]}')
    res = subprocess.run([sys.executable, "-m", "sim", "replay", "-"], input=scenario, capture_output=True,
                         text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert '"outcome": "violation"' in res.stdout


@pytest.mark.parametrize("command", ["replay", "run", "fuzz", "races", "soak", "formal", "wave",
                                     "verilog", "lint", "synth", "bench"])
def test_every_help_has_an_example(command):
    res = subprocess.run([sys.executable, "-m", "sim", command, "--help"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0
    examples = res.stdout.split("examples:\n", 1)[1].splitlines()
    assert examples and all(line.startswith(f"  python -m sim {command}") or "| python -m sim" in line
                            or line.startswith("  python -m sim verilog &&") for line in examples)


def test_stress_options_are_refused_on_guest_os(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sim", "run", "--backend", "model", "--workload", "guest-os",
                          "--locality", "0.5"], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 2 and "--locality" in res.stderr and res.stdout == ""


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["replay", "--help"], ["verilog", "--help"],
                                  ["fuzz", "--help"]])
def test_the_cli_lists_its_options_without_amaranth(argv):
    code = ("import sys\nfrom sim.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('amaranth')))" % (argv,))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-500:]
