"""What a waveform run leaves behind: one run's files, never a mix of two runs,
and nothing half-written after Ctrl-C."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from sim.flows.gtkwave import check_wave_path, wave_outputs

ROOT = Path(__file__).resolve().parents[1]


def test_a_new_dump_removes_the_old_run_of_either_format(tmp_path):
    stale = [tmp_path / "w.fst", tmp_path / "w.gtkw", tmp_path / "w.txn.log", tmp_path / "w.vcd"]
    for p in stale:
        p.write_text("from an earlier run")
    keep = tmp_path / "other.vcd"
    keep.write_text("another name")
    assert check_wave_path(tmp_path / "w.vcd", ".vcd") == tmp_path / "w.vcd"
    assert not any(p.exists() for p in stale)
    assert keep.exists()


def test_ctrl_c_during_a_waveform_run_removes_the_partial_dump(tmp_path):
    wave = tmp_path / "run.vcd"
    proc = subprocess.Popen([sys.executable, "-m", "sim", "run", "--backend", "rtl", "--workload", "stress",
                             "--accesses", "100000",
                             "--quiet", "--wave", str(wave), "--summary", str(tmp_path / "s.json")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    raw = wave_outputs(wave)[-1]
    deadline = time.monotonic() + 120
    while not (raw.exists() and raw.stat().st_size > 10_000) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert raw.exists(), "the dump never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted: the partial waveform {wave} was removed"
    assert not any(p.exists() for p in wave_outputs(wave))
