"""Regressions on Dask (python -m sim sweep): the same figures serially, on an embedded
LocalCluster and on a real scheduler with two workers started here as separate
processes; a planted mismatch leaves its reproducer and the sweep goes on; a hung
job is timed out; a bad spec is one line and exit 2; the Slurm job script carries
the options given."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtl_util import verilator_or_skip

from sim.verify.sweep import comparable
from sim.verify.sweep_spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).parent / "dask"

# small, but every campaign kind, two backends and a parameter grid
SMALL = """
[sweep]
name = "small"
timeout = 300

[[jobs]]
name = "fuzz"
campaign = "fuzz"
seeds = ["1..3"]
walks = 300
faults = true

[[jobs]]
name = "races"
campaign = "races"
backends = ["verilator"]
max_offset = 4

[[jobs]]
name = "soak"
campaign = "soak"
translations = 2000
seeds = [2]

[[jobs]]
name = "run"
campaign = "run"
backends = ["model", "verilator"]
accesses = 200
params = {tlb_sets = [8, 16]}

[[jobs]]
name = "replay"
campaign = "replay"
backend = "verilator"
dir = "scenarios"
"""

# two replay scenarios: a 4K mapping translated twice (a TLB hit) and a GPA it does not map
SCENARIOS = {
    "hit": {"eptp": "0x101e", "memory": [{"addr": "0x1000", "value": "0x2007"},
                                         {"addr": "0x2000", "value": "0x3007"},
                                         {"addr": "0x3000", "value": "0x4007"},
                                         {"addr": "0x4008", "value": "0x5000037"}],
            "ops": [{"op": "translate", "gpa": "0x1123", "access": "read"},
                    {"op": "translate", "gpa": "0x1456", "access": "write"},
                    {"op": "read", "addr": "0x4008"}]},
    "miss": {"eptp": "0x101e", "memory": [],
             "ops": [{"op": "translate", "gpa": "0x9000", "access": "fetch"}]},
}

# a planted bug (the harness lies about one seed's write translations), a hang (another
# seed sleeps) and a crash (a third kills itself), through a sitecustomize on the jobs' PYTHONPATH: a test-only hook
HOOK = """
import sys, time
argv = sys.argv
def seed():
    return argv[argv.index("--seed") + 1] if "--seed" in argv else None
if "fuzz" in argv and seed() == "7":
    from sim.backends.pysim import PysimHarness
    from sim.backends.verilator import VerilatorHarness
    real = VerilatorHarness._fill
    def lying(self, t, raw):
        real(self, t, raw)
        if t.hpa is not None and t.gpa % 7 == 0 and t.access.name == "WRITE":
            t.hpa ^= 0x1000
    VerilatorHarness._fill = lying
    PysimHarness._fill = lying
if "fuzz" in argv and seed() == "8":
    time.sleep(600)
if "fuzz" in argv and seed() == "9":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
"""


def sweep(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "sim", "sweep", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


def small_spec(tmp_path) -> Path:
    (tmp_path / "scenarios").mkdir(exist_ok=True)
    for name, scenario in SCENARIOS.items():
        (tmp_path / "scenarios" / f"{name}.json").write_text(json.dumps(scenario))
    p = tmp_path / "small.toml"
    p.write_text(SMALL)
    return p


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_spec_expands_to_the_jobs_it_names(tmp_path):
    spec = load_spec(small_spec(tmp_path))
    ids = [j.id for j in spec.jobs]
    assert ids == ["fuzz-verilator-s1", "fuzz-verilator-s2", "fuzz-verilator-s3", "races-verilator",
                   "soak-verilator-s2", "run-model-s1",
                   "run-verilator-tlbsets8-s1", "run-verilator-tlbsets16-s1", "replay-verilator-hit",
                   "replay-verilator-miss"]
    fuzz = spec.jobs[0]
    assert fuzz.command() == ["fuzz", "--backend", "verilator", "--seed", "1", "--walks", "300", "--faults"]
    assert fuzz.argv(Path("/o"))[-4:] == ["--quiet", "--no-reliability", "--out", "/o"]
    assert spec.jobs[-3].command()[-2:] == ["--tlb-sets", "16"]
    assert spec.jobs[-1].command() == ["replay", str(tmp_path / "scenarios" / "miss.json"), "--backend", "verilator"]
    assert spec.unit_sets("verilator") == [{}, {"tlb_sets": 8}, {"tlb_sets": 16}]


def test_the_default_spec_is_the_million_walk_regression():
    spec = load_spec(ROOT / "regress" / "default.toml")
    fuzz = [j for j in spec.jobs if j.campaign == "fuzz" and not j.options.get("nested")]
    # a million on the default unit alone, every job its own seed, every one with faults
    assert sum(j.options["walks"] for j in fuzz if not j.params) >= 1_000_000
    assert all(j.options["faults"] for j in fuzz)
    assert len({(j.seed, json.dumps(j.params)) for j in fuzz}) == len(fuzz)
    races = [j for j in spec.jobs if j.campaign == "races" and not j.options.get("nested")]
    assert {j.backend for j in races} == {"rtl", "verilator"} and all(j.options["max_offset"] == 72 for j in races)
    # and the nested unit's: fuzz --nested over 10 seeds, races --nested
    nested = [j for j in spec.jobs if j.options.get("nested")]
    assert {j.campaign for j in nested} == {"fuzz", "races"}
    assert len({j.seed for j in nested if j.campaign == "fuzz"}) == 10
    assert [j for j in spec.jobs if j.campaign == "soak"]


@pytest.mark.parametrize("text,words", [
    ("jobs = []", "jobs: missing or empty"),
    ("[[jobs]]\ncampaign = 'nope'", "jobs[0].campaign"),
    ("[[jobs]]\ncampaign = 'fuzz'\nwalks = -3", "walks: must be a positive integer"),
    ("[[jobs]]\ncampaign = 'fuzz'\nseeds = ['5..1']", "seeds"),
    ("[[jobs]]\ncampaign = 'fuzz'\nbackend = 'model'", "fuzz runs on rtl or verilator"),
    ("[[jobs]]\ncampaign = 'races'\nseeds = [1]", "takes no seed"),
    ("[[jobs]]\ncampaign = 'fuzz'\nwalkz = 3", "walkz: unknown key"),
    ("[[jobs]]\ncampaign = 'fuzz'\nparams = {walkers = [0]}", "params"),
    ("[[jobs]]\ncampaign = 'fuzz'\nparams = {colour = [1]}", "not a unit parameter"),
    ("[[jobs]]\ncampaign = 'replay'", "replay needs dir"),
    ("[sweep]\ntimeout = 0\n[[jobs]]\ncampaign = 'fuzz'", "sweep.timeout"),
    ("[[jobs]\ncampaign = 'fuzz'", "not valid TOML"),
])
def test_bad_spec_is_one_line_and_exit_2(tmp_path, text, words):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    res = sweep(p, "--out", tmp_path / "out", timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert words in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_bad_json_spec_and_bad_options(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"jobs": [{"campaign": "fuzz", "walks": true}]}')
    with pytest.raises(SpecError, match=r"jobs\[0\] \(fuzz0\)\.walks"):
        load_spec(p)
    p.write_text("{")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(p)
    with pytest.raises(SpecError, match="a spec is a table"):
        parse_spec([1, 2])
    for args, word in ((["--workers", "2", "--serial"], "--serial"), (["--queue", "q"], "--jobqueue"),
                       (["--scheduler", "nowhere"], "--scheduler"), (["--nope"], "--nope")):
        res = sweep(small_spec(tmp_path), *args, timeout=120)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)
        assert word in res.stderr


def test_local_cluster_gives_the_serial_results(tmp_path):
    verilator_or_skip()
    spec = small_spec(tmp_path)
    res = sweep(spec, "--serial", "--out", tmp_path / "serial", "--no-reliability")
    assert res.returncode == 0, res.stdout + res.stderr
    res = sweep(spec, "--workers", "2", "--out", tmp_path / "local", "--no-reliability")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("10 jobs, ") and "0 mismatches, 0 not passed" in res.stdout
    serial, local = report(tmp_path / "serial"), report(tmp_path / "local")
    assert comparable(serial) == comparable(local)
    assert local["totals"]["passed"] == 10 and local["where"] == {"kind": "local", "workers": 2}
    assert {r["worker"] for r in local["jobs"]} <= {"worker-0@" + os.uname().nodename,
                                                    "worker-1@" + os.uname().nodename}
    fuzz = next(r for r in local["jobs"] if r["id"] == "fuzz-verilator-s2")
    assert fuzz["figures"]["walks"] >= 300 and fuzz["seed"] == 2 and fuzz["wall_seconds"] > 0
    assert fuzz["command"] == "python -m sim fuzz --backend verilator --seed 2 --walks 300 --faults"
    hit = next(r for r in local["jobs"] if r["id"] == "replay-verilator-hit")
    assert hit["figures"]["outcomes"] == {"ok": 2} and hit["figures"]["lines"] == 3
    html = (tmp_path / "local" / "report.html").read_text()
    assert "PASS" in html and html.count("data:image/png;base64") == 2
    # the verilator model of each parameter set was built (or found) once, before the jobs
    # ({} and tlb_sets = 16 are the same unit: the defaults filled in)
    # three parameter sets, two designs ({} and tlb_sets=16 are the same unit)
    assert len({b["key"] for b in local["builds"]}) == 2 and all(b["cache_hit"] for b in local["builds"])


def test_real_scheduler_and_two_workers_give_the_same_results(tmp_path):
    verilator_or_skip()
    if not DASK.exists():
        pytest.skip("no dask command in the venv")
    spec = small_spec(tmp_path)
    res = sweep(spec, "--serial", "--out", tmp_path / "serial", "--no-reliability")
    assert res.returncode == 0, res.stdout + res.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    sched_file = tmp_path / "scheduler.json"
    logs = [open(tmp_path / f"{n}.log", "w") for n in ("scheduler", "w1", "w2")]
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", sched_file], cwd=ROOT, env=env, stdout=logs[0],
                              stderr=subprocess.STDOUT)]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for name, log in (("w1", logs[1]), ("w2", logs[2])):
            procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--name", name,
                                           "--no-dashboard", "--local-directory", tmp_path / name],
                                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        from distributed import Client
        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        res = sweep(spec, "--scheduler", address, "--out", tmp_path / "cluster", "--no-reliability")
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
    cluster = report(tmp_path / "cluster")
    assert comparable(cluster) == comparable(report(tmp_path / "serial"))
    assert {r["worker"] for r in cluster["jobs"]} == {"w1", "w2"}
    assert cluster["where"] == {"kind": "scheduler", "address": address}


def test_a_mismatch_keeps_its_reproducer_a_hang_is_timed_out_a_crash_reported(tmp_path):
    verilator_or_skip()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    spec = tmp_path / "planted.toml"
    spec.write_text('[[jobs]]\nname = "f"\ncampaign = "fuzz"\nseeds = [6, 7, 8, 9]\nwalks = 1500\n'
                    'timeout = 25\n')
    env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{ROOT}")
    res = sweep(spec, "--workers", "2", "--out", tmp_path / "out", "--no-reliability", env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("4 jobs, ")
    rep = report(tmp_path / "out")
    jobs = {r["id"]: r for r in rep["jobs"]}
    assert jobs["f-verilator-s6"]["status"] == "passed"
    bad = jobs["f-verilator-s7"]
    assert bad["status"] == "mismatch" and bad["mismatches"] > 0 and bad["reproducers"]
    r = bad["reproducers"][0]
    kept = Path(r["scenario"])
    assert kept.parent == tmp_path / "out" / "repro" and kept.exists() and r["reproduces"]
    assert r["command"].startswith(f"python -m sim replay {kept} --backend verilator")
    hung = jobs["f-verilator-s8"]
    assert hung["status"] == "timeout" and 25 <= hung["wall_seconds"] < 60
    crashed = jobs["f-verilator-s9"]
    assert crashed["status"] == "crashed" and crashed["returncode"] == -9 and "signal 9" in crashed["messages"][0]
    assert rep["totals"]["timeout"] == 1 and rep["totals"]["mismatch"] == 1 and rep["totals"]["passed"] == 1
    assert rep["totals"]["crashed"] == 1
    assert "TIMEOUT: f-verilator-s8" in res.stderr and "reproducer: python -m sim replay" in res.stderr
    # the kept reproducer replayed alone, without the planted bug: the unit is right
    alone = subprocess.run([sys.executable, "-m", "sim", *r["command"].split()[3:]], capture_output=True,
                           text=True, cwd=ROOT, timeout=300)
    assert alone.returncode == 0, alone.stderr


def test_slurm_job_script_carries_the_options(tmp_path):
    pytest.importorskip("dask_jobqueue")
    res = sweep(small_spec(tmp_path), "--jobqueue", "slurm", "--queue", "verif", "--cores", "4",
                "--memory", "16GB", "--walltime", "02:30:00", "--account", "asic-dv",
                "--job-extra=--qos=regress", "--print-job-script", "--out", tmp_path / "out", timeout=120)
    assert res.returncode == 0, res.stderr
    script = res.stdout
    assert script.startswith("#!/usr/bin/env bash")
    for line in ("#SBATCH -p verif", "#SBATCH --cpus-per-task=4", "#SBATCH -t 02:30:00", "#SBATCH -A asic-dv",
                 "#SBATCH --qos=regress", f"cd {ROOT}", f"export PYTHONPATH={ROOT}"):
        assert line in script, line
    assert "--nworkers 4" in script and "--nthreads 1" in script and "#SBATCH --mem=15G" in script
    assert sys.executable in script


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="no Slurm here")
def test_slurm_for_real(tmp_path):       # pragma: no cover - only where a grid is
    res = sweep(small_spec(tmp_path), "--jobqueue", "slurm", "--workers", "2", "--out", tmp_path / "out",
                "--no-reliability", timeout=3600)
    assert res.returncode == 0, res.stderr


def test_ctrl_c_cancels_and_still_writes_the_report(tmp_path):
    verilator_or_skip()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)          # seed 8 hangs
    spec = tmp_path / "int.toml"
    spec.write_text('[[jobs]]\nname = "f"\ncampaign = "fuzz"\nseeds = [8, 1, 2]\nwalks = 300\n')
    env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{ROOT}")
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "sim", "sweep", spec, "--workers", "2", "--out", out,
                          "--no-reliability"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        seen = ""
        while time.monotonic() < deadline and "f-verilator-s2: passed" not in seen:
            seen += p.stderr.readline()
        assert "f-verilator-s1: passed" in seen and "f-verilator-s2: passed" in seen, seen
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stdout + stderr
    rep = report(out)
    assert rep["interrupted"] and not rep["ok"]
    status = {r["id"]: r["status"] for r in rep["jobs"]}
    assert status == {"f-verilator-s8": "cancelled", "f-verilator-s1": "passed", "f-verilator-s2": "passed"}
    # the hung job's process went with the sweep
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in ps and "--seed 8 --walks 300" not in ps


def test_reliability_report_takes_the_regression_figures(tmp_path):
    from sim.verify.sweep import update_reliability

    def job(campaign, seed, backend, figures, walks, **kw):
        return {"id": f"{campaign}-{seed}", "campaign": campaign, "seed": seed, "backend": backend,
                "params": {}, "options": {"faults": True}, "figures": figures, "walks": walks,
                "mismatches": figures.get("mismatches", 0), "wall_seconds": 2.0, **kw}
    fuzz = {"walks": 600, "cases": 10, "mismatches": 0, "faults_injected": 5, "outcomes": {"ok": 400, "violation": 200}}
    rep = {"spec": "s.toml", "where": {"kind": "local", "workers": 2}, "written": {"report": "r.json"},
           "totals": {"jobs": 4, "passed": 4, "walks": 1200 + 5400 + 1000, "mismatches": 0, "wall_seconds": 9.0,
                      "walks_per_second": 800.0, "walks_per_second_per_worker": 400.0},
           "jobs": [job("fuzz", 1, "verilator", fuzz, 600), job("fuzz", 2, "verilator", fuzz, 600),
                    job("races", None, "rtl", {"races": 2160, "translations": 5400, "failures": 0}, 5400),
                    job("soak", 1, "verilator", {"translations": 1000, "mismatches": 0}, 1000,
                        extra={"flat": True, "rss_mb": [[1, 50.0]]})]}
    path = tmp_path / "reliability.json"
    path.write_text(json.dumps({"formal": {"status": "PASS"}}))
    update_reliability(rep, path)
    r = json.loads(path.read_text())
    assert r["formal"] == {"status": "PASS"}             # the sections the sweep does not run stay
    assert r["fuzz"]["walks"] == 1200 and r["fuzz"]["jobs"] == 2 and r["fuzz"]["seeds"] == [1, 2]
    assert r["fuzz"]["outcomes"] == {"ok": 800, "violation": 400} and r["fuzz"]["faults"]
    assert r["races"]["by_backend"]["rtl"]["races"] == 2160 and r["races"]["failures"] == 0
    assert r["soak"]["translations"] == 1000 and r["soak"]["flat"]
    assert r["regress"]["walks"] == 7600 and r["fuzz"]["source"].startswith("python -m sim sweep")
