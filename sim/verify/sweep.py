"""Regressions as Dask jobs (``python -m sim sweep SPEC``, ``make regress``).

A sweep spec (:mod:`sim.verify.sweep_spec`) expands to jobs — campaign x
backend x unit parameters x seed — and each job is a Dask task that runs one
``python -m sim CAMPAIGN ...`` in a process of its own (crash isolation, a
per-job timeout, Verilator in its own address space), with its outputs in a
private temporary directory, and returns its figures: the report the
campaign wrote, its reproducers' text, the worker that ran it and its wall
time.  Nothing but the task's result travels back, so workers need the
checkout (or a copy of it) but no shared build directory.

Where the tasks run:

- by default an embedded :class:`distributed.LocalCluster`, one
  single-threaded worker per core (threads: each job is a subprocess, the
  worker only waits for it);
- ``--scheduler tcp://HOST:PORT``: a running Dask cluster (``dask
  scheduler`` and ``dask worker`` started in the checkout);
- ``--jobqueue slurm|lsf|pbs|sge``: workers started as batch jobs through
  ``dask-jobqueue`` (``--print-job-script`` shows the script and stops);
- ``--serial``: no Dask, one job after another in this process (the
  reference the tests compare the others with).

Seeds decide everything: the same spec gives the same figures wherever it
runs.  Before dispatching, the Verilator model of every parameter set the
verilator jobs use is built once here, so the workers find it in the build
cache.  The sweep writes ``OUT/report.json`` (every job), ``OUT/report.html``
(a summary with plots), ``OUT/repro/*.json`` (the reproducers of jobs that
found a mismatch) and, unless ``--no-reliability``, the fuzz, races and soak
sections of ``build/reliability/report.json`` from the regression's figures.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sim.files import write_atomic, write_json
from sim.options import PROG, UsageError, positive
from sim.verify.sweep_spec import Job, Spec, SpecError, load_spec

__all__ = ["Where", "run_job", "run_sweep", "comparable", "jobqueue_cluster", "ROOT"]

ROOT = Path(__file__).resolve().parents[2]          # the checkout the jobs run in
STATUSES = ("passed", "mismatch", "failed", "crashed", "timeout", "cancelled", "error")
_TAIL = 2000                                          # characters of a failed job's output kept


# -- one job (runs on a worker) -------------------------------------------------------------

def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _kill(proc: subprocess.Popen) -> None:
    """Stop the job's whole process group: TERM, then KILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _cancel_flag(name: str | None):
    """A callable telling whether the sweep was cancelled (a Dask Event), or None."""
    if not name:
        return None
    try:
        from distributed import Event, get_worker
        get_worker()
        ev = Event(name)
    except (ImportError, ValueError):
        return None

    def is_set() -> bool:
        try:
            return ev.is_set()
        except Exception:       # the scheduler going away is the end of the sweep anyway
            return True
    return is_set


def run_job(job: Job, root: str | None = None, cancel_event: str | None = None) -> dict:
    """Run ``job`` as ``python -m sim ...`` in its own process; return its result.

    The result is plain data (a dict): status, figures, the walks it checked,
    its mismatches, its reproducers' text, where and how long it ran.
    """
    # the driver's checkout, or this worker's own where that path does not exist here
    root = Path(root) if root and Path(root).is_dir() else ROOT
    try:
        from distributed import get_worker
        w = get_worker()
        # a LocalCluster's workers are named 0, 1, ...; `dask worker` names itself by --name or address
        worker = f"worker-{w.name}@{socket.gethostname()}" if str(w.name).isdigit() else str(w.name)
        worker_addr = w.address
    except (ImportError, ValueError):
        worker = worker_addr = f"serial:{os.getpid()}"
    res = {"id": job.id, "worker": worker, "worker_address": worker_addr, "host": socket.gethostname(),
           "command": "python -m sim " + shlex.join(job.command()),
           "status": "error", "returncode": None, "figures": {}, "extra": {}, "walks": 0,
           "mismatches": 0, "messages": [], "reproducers": []}
    cancelled = _cancel_flag(cancel_event)
    tmp = Path(tempfile.mkdtemp(prefix=f"sweep-{job.id[:40]}-"))
    res["started"] = time.time()
    started = time.monotonic()
    try:
        out = tmp / "out"
        out.mkdir()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
            SIM_SWEEP_JOB=job.id)
        cmd = [sys.executable, "-m", "sim.verify.sweep_job", *job.argv(out)]
        with open(tmp / "stdout", "wb") as so, open(tmp / "stderr", "wb") as se:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=so, stderr=se, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                last_poll = time.monotonic()
                while True:
                    # wait4, not wait: the job's own CPU time (beside its wall time, it shows
                    # how long the job waited for a core)
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        res["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)
                        break
                    time.sleep(0.2)
                    now = time.monotonic()
                    if now - started > job.timeout:
                        _kill(proc)
                        res["status"] = "timeout"
                        break
                    if cancelled and now - last_poll > 2:
                        last_poll = now
                        if cancelled():
                            _kill(proc)
                            res["status"] = "cancelled"
                            break
            finally:
                if proc.poll() is None:         # interrupted (serial Ctrl-C): leave nothing behind
                    _kill(proc)
        res["returncode"] = proc.returncode
        stdout = (tmp / "stdout").read_text(errors="replace")
        if res["status"] in ("timeout", "cancelled"):
            res["messages"] = [f"{res['status']} after {time.monotonic() - started:.1f} s "
                               f"(limit {job.timeout:g} s)" if res["status"] == "timeout" else "cancelled"]
            res["stderr_tail"] = _tail(tmp / "stderr")
        else:
            _collect(job, res, out, stdout, tmp / "stderr")
    finally:
        res["wall_seconds"] = round(time.monotonic() - started, 3)
        res["finished"] = time.time()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _last_line(stdout: str) -> str:
    lines = stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _collect(job: Job, res: dict, out: Path, stdout: str, stderr_path: Path) -> None:
    """Read what the campaign wrote into ``res``: figures, walks, mismatches, status."""
    rc, c = res["returncode"], job.campaign
    stderr = _tail(stderr_path)
    figures = None
    if c == "fuzz":
        data = _load(out / "report.json")
        if data is not None:
            figures = {k: v for k, v in data.items() if k not in ("options", "reports", "reproducers")}
            res["walks"], res["mismatches"] = data["walks"], data["mismatches"]
            res["messages"] = data.get("reports", [])[:10]
            for r in data.get("reproducers", []):
                p = Path(r["scenario"])
                try:
                    text = p.read_text()
                except OSError:
                    continue
                res["reproducers"].append({"name": p.name, "scenario_text": text,
                                           "command": r["command"], "reproduces": r["reproduces"],
                                           "ops": r["ops"], "words": r["words"]})
    elif c == "races":
        data = _load(out / "races.json")
        if data is not None:
            figures = {k: v for k, v in data.items() if k not in ("options", "failures")}
            words = _last_line(stdout).replace(",", "").split()
            failures = int(words[2]) if len(words) == 4 and words[3] == "failures" else len(data["failures"])
            figures["failures"] = failures
            res["walks"], res["mismatches"] = data["translations"], failures
            res["messages"] = data["failures"][:10]
    elif c == "soak":
        data = _load(out / "soak.json")
        if data is not None:
            res["extra"] = {k: data[k] for k in ("seconds", "rss_mb", "growth_mb", "flat") if k in data}
            figures = {k: data[k] for k in ("translations", "accesses", "cycles", "mismatches", "backend")}
            res["walks"], res["mismatches"] = data["translations"], data["mismatches"]
            if rc == 1 and not data["mismatches"] and not data.get("flat", True):
                res["messages"] = [f"resident memory grew {data.get('growth_mb')} MiB after warm-up"]
    elif c == "run":
        data = _load(out / "summary.json")
        if data is not None:
            volatile = ("elapsed_seconds", "cycles_per_second", "options", "mismatch_details",
                        "created", "git_revision", "tool_version")    # when and from what, not results
            figures = {k: v for k, v in data.items() if k not in volatile and not k.endswith("_seconds")}
            res["extra"] = {"elapsed_seconds": data.get("elapsed_seconds")}
            # the stress workload counts translations, guest-os its guest accesses
            res["walks"] = data.get("translations", data.get("accesses"))
            res["mismatches"] = data["mismatches"]
            res["messages"] = data.get("mismatch_details", [])[:10]
    else:       # replay: its JSON Lines are the figures
        lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
        translations = [x for x in lines if "outcome" in x]
        outcomes: dict[str, int] = {}
        for t in translations:
            outcomes[t["outcome"]] = outcomes.get(t["outcome"], 0) + 1
        found = [x[len("MISMATCH: "):] for x in stderr.splitlines() if x.startswith("MISMATCH: ")]
        if rc in (0, 1):
            figures = {"translations": len(translations), "lines": len(lines), "outcomes": outcomes,
                       "digest": hashlib.sha256(stdout.encode()).hexdigest()[:16],
                       "mismatches": len(found) if rc else 0}
            res["walks"], res["mismatches"] = len(translations), figures["mismatches"]
            res["messages"] = found[:10]
            if rc == 1:
                res["reproducers"].append({"name": Path(job.scenario).name,
                                           "scenario_text": Path(job.scenario).read_text(),
                                           "command": res["command"], "reproduces": True})
    if figures is None:
        res["status"] = "crashed"
        res["messages"] = [f"exit status {rc}" + (f" (signal {-rc})" if rc is not None and rc < 0 else "")
                           + ("; " + stderr.strip().splitlines()[-1] if stderr.strip() else "")]
        res["stderr_tail"] = stderr
        return
    res["figures"] = figures
    if rc == 0 and not res["mismatches"]:
        res["status"] = "passed"
    elif res["mismatches"]:
        res["status"] = "mismatch"
    else:
        res["status"] = "failed"
        res["stderr_tail"] = stderr
        if not res["messages"]:
            res["messages"] = [f"exit status {rc}"]


# -- where the jobs run ---------------------------------------------------------------------

@dataclass
class Where:
    kind: str = "local"                 # serial | local | scheduler | jobqueue
    workers: int = 0                    # local: workers (0: one per core); jobqueue: batch jobs
    address: str | None = None          # scheduler
    jobqueue: dict = field(default_factory=dict)

    def describe(self) -> dict:
        d = {"kind": self.kind}
        if self.kind == "local":
            d["workers"] = self.workers
        if self.kind == "scheduler":
            d["address"] = self.address
        if self.kind == "jobqueue":
            d.update({k: v for k, v in self.jobqueue.items() if k != "log_directory"}, jobs=self.workers)
        return d


def jobqueue_cluster(system: str, *, queue=None, cores=1, memory="2GiB", walltime="01:00:00",
                     account=None, job_extra=(), interface=None, log_directory=None,
                     root: Path = ROOT, python: str = sys.executable):
    """A dask-jobqueue cluster whose workers run in ``root`` with one thread per core."""
    import dask_jobqueue as jq
    cls = {"slurm": jq.SLURMCluster, "lsf": jq.LSFCluster, "pbs": jq.PBSCluster, "sge": jq.SGECluster}[system]
    kw = dict(queue=queue, cores=cores, processes=cores, memory=memory, walltime=walltime, python=python,
              job_name="sim-sweep", interface=interface, job_extra_directives=list(job_extra),
              job_script_prologue=[f"cd {shlex.quote(str(root))}",
                                   f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}"],
              scheduler_options={"dashboard_address": None}
              | ({"interface": interface} if interface else {}))
    if log_directory:
        kw["log_directory"] = str(log_directory)
    if account:
        kw["account" if system in ("slurm", "pbs") else "project"] = account
    if system == "sge":
        kw["resource_spec"] = f"h_vmem={memory}"
    return cls(**kw)


class _Session:
    """A Dask client on the chosen cluster (closed on exit), or nothing for --serial."""

    def __init__(self, where: Where):
        self.where = where
        self.client = self.cluster = None

    def __enter__(self):
        w = self.where
        if w.kind == "serial":
            return self
        import logging
        for name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.nanny",
                     "distributed.core", "distributed.comm"):
            logging.getLogger(name).setLevel(logging.ERROR)
        import dask
        from distributed import Client, LocalCluster
        # a worker holds only the jobs it runs (none queued on it), so `processing` is `running`
        dask.config.set({"distributed.scheduler.worker-saturation": 1.0})
        if w.kind == "local":
            self.cluster = LocalCluster(n_workers=w.workers, threads_per_worker=1, processes=False,
                                        dashboard_address=None)
            self.client = Client(self.cluster)
        elif w.kind == "scheduler":
            try:
                self.client = Client(w.address, timeout="15s")
            except OSError as e:
                raise UsageError(f"{PROG} sweep: --scheduler {w.address}: cannot connect ({e})") from None
        else:
            self.cluster = jobqueue_cluster(**w.jobqueue)
            self.cluster.scale(jobs=w.workers)
            self.client = Client(self.cluster)
        return self

    def __exit__(self, *exc):
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:       # closing a cluster that is going away anyway
                    pass
        return False


# -- the driver -----------------------------------------------------------------------------

def _unit_for(job: Job) -> dict:
    """The unit parameters the campaign itself will pass to the backend: those its
    spec entry gives (the campaigns pass only the options given, as
    :func:`sim.options.unit_kwargs` makes them; the spec has checked the unit)."""
    return dict(job.params)


def prebuild(spec: Spec, jobs: list[Job], progress=None) -> list[dict]:
    """Build the Verilator model of each parameter set once, before any job needs it."""
    verilated = [j for j in jobs if j.backend == "verilator"]
    if not verilated:
        return []
    from model.formats import EptConfig
    from sim.backends.verilator.build import build_model
    config = EptConfig()
    done: list[dict] = []
    out = []
    for j in verilated:
        unit = _unit_for(j)
        if unit in done:
            continue
        done.append(unit)
        # as the harness asks for it: with the protocol checks every simulation runs
        r = build_model(dict(maxphyaddr=config.maxphyaddr, execute_only=config.execute_only, **unit,
                             checks=True))
        out.append({"unit": unit, "key": r.key, "cache_hit": r.cache_hit, "seconds": round(r.seconds, 1)})
        if progress:
            progress(f"verilator model {r.key} for {unit}: "
                     f"{'in the cache' if r.cache_hit else f'built in {r.seconds:.0f} s'}")
    return out


class _Progress:
    """The live line: jobs done / failed / running, walks per second, ETA.  On a terminal
    one line redrawn every second; otherwise a line per finished job."""

    def __init__(self, jobs: list[Job], stream=sys.stderr, quiet=False):
        self.total = len(jobs)
        self.weight = {j.id: j.weight for j in jobs}
        self.left = sum(self.weight.values())
        self.spent = 0.0
        self.done = self.failed = self.walks = 0
        self.running = 0
        self.started = time.monotonic()
        self.stream, self.quiet = stream, quiet
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last = 0.0
        self.lock = threading.Lock()

    def finished(self, res: dict) -> None:
        with self.lock:
            self.done += 1
            self.failed += res["status"] != "passed"
            self.walks += res.get("walks", 0)
            w = self.weight.get(res["id"], 0)
            self.left -= w
            self.spent += w
            self.running = min(self.running, self.total - self.done)
        if self.quiet:
            return
        if self.tty:
            self.show(force=True)
        else:
            self.stream.write(f"{self.line()} | {res['id']}: {res['status']}, {res.get('walks', 0):,} walks, "
                              f"{res.get('mismatches', 0)} mismatches, {res.get('wall_seconds') or 0:.1f} s "
                              f"on {res.get('worker')}\n")
            self.stream.flush()

    def line(self) -> str:
        el = time.monotonic() - self.started
        rate = self.walks / el if el > 0 else 0.0
        if self.done == self.total:
            eta = "done"
        elif self.spent > 0:
            eta = _hms(self.left * el / self.spent)
        else:
            eta = "?"
        return (f"[{_hms(el)}] jobs {self.done}/{self.total} done, {self.failed} failed, "
                f"{min(self.running, self.total - self.done)} running; {self.walks:,} walks, "
                f"{rate:,.0f} walks/s; ETA {eta}")

    def show(self, force=False) -> None:
        """Redraw the line (a terminal only: a log gets a line per job)."""
        if self.quiet or not self.tty:
            return
        with self.lock:
            now = time.monotonic()
            if not force and now - self.last < 1.0:
                return
            self.last = now
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def run_sweep(spec: Spec, where: Where, out: Path = Path("build/regress"), only: list[str] | None = None,
              quiet: bool = False, stream=sys.stderr, reliability: Path | None = None) -> dict:
    """Run the spec's jobs where ``where`` says; write and return the report."""
    jobs = [j for j in spec.jobs if not only or any(fnmatch.fnmatchcase(j.id, p) for p in only)]
    if not jobs:
        raise UsageError(f"{PROG} sweep: --only {' '.join(only or [])}: no job of {spec.path} matches")
    say = (lambda line: None) if quiet else (lambda line: print(line, file=stream, flush=True))
    if where.kind == "local" and not where.workers:
        where.workers = os.cpu_count() or 1
    say(f"sweep {spec.name}: {len(jobs)} jobs on {_where_text(where)}")
    wall0, t0 = time.time(), time.monotonic()
    builds = prebuild(spec, jobs, say)
    build_seconds = time.monotonic() - t0
    results: dict[str, dict] = {}
    interrupted = False
    prog = _Progress(jobs, stream, quiet)
    order = sorted(jobs, key=lambda j: -j.weight)          # the longest first: the tail is short
    try:
        if where.kind == "serial":
            for j in order:
                prog.running = 1
                prog.show(force=True)
                results[j.id] = run_job(j, str(ROOT))
                prog.running = 0
                prog.finished(results[j.id])
        else:
            interrupted = _dispatch(where, order, results, prog)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        prog.close()
    wall = time.monotonic() - t0
    report = _report(spec, where, jobs, results, builds, wall0, wall, build_seconds, interrupted)
    report["written"] = paths = {"report": str(out / "report.json"), "html": str(out / "report.html")}
    if reliability is not None and results:
        paths["reliability"] = str(reliability)
        update_reliability(report, reliability)
    write_outputs(report, out)
    return report


def _where_text(w: Where) -> str:
    if w.kind == "serial":
        return "this process, one job at a time (--serial)"
    if w.kind == "local":
        return f"an embedded LocalCluster of {w.workers} workers"
    if w.kind == "scheduler":
        return f"the Dask cluster at {w.address}"
    return f"{w.workers} {w.jobqueue['system']} jobs of {w.jobqueue['cores']} cores (dask-jobqueue)"


def _dispatch(where: Where, order: list[Job], results: dict, prog: _Progress) -> bool:
    """Submit every job as a Dask task, gather results as they come; True if interrupted."""
    from distributed import Event, as_completed
    with _Session(where) as s:
        client = s.client
        token = f"sim-sweep-cancel-{os.getpid()}-{time.time_ns()}"
        cancel = Event(token, client=client)
        n = len(order)
        futures = {client.submit(run_job, j, str(ROOT), token, key=f"sweep-{j.id}-{token[-8:]}",
                                 priority=n - i, pure=False, retries=0): j
                   for i, j in enumerate(order)}
        pending = set(futures)
        done_flag = threading.Event()

        def ticker():
            while not done_flag.wait(1.0):
                try:
                    threads = sum(client.nthreads().values())
                    prog.running = min(threads, sum(len(v) for v in client.processing().values()))
                except Exception:       # the client closing under us
                    return
                prog.show()
        t = threading.Thread(target=ticker, daemon=True)
        t.start()
        try:
            for fut in as_completed(list(futures)):
                j = futures[fut]
                pending.discard(fut)
                try:
                    res = fut.result()
                except Exception as e:          # KilledWorker, a lost worker, a pickling error
                    res = {"id": j.id, "status": "error", "worker": None, "figures": {}, "walks": 0,
                           "mismatches": 0, "messages": [f"{type(e).__name__}: {e}"[:500]],
                           "reproducers": [], "wall_seconds": None,
                           "command": "python -m sim " + shlex.join(j.command())}
                results[j.id] = res
                prog.finished(res)
            return False
        except KeyboardInterrupt:
            # stop the running jobs (each polls the event), drop the queued ones
            try:
                cancel.set()
                client.cancel(list(pending))
            except Exception:        # the cluster already going
                pass
            return True
        finally:
            done_flag.set()


# -- the report -----------------------------------------------------------------------------

def _report(spec: Spec, where: Where, jobs: list[Job], results: dict, builds: list, wall0: float,
            wall: float, build_seconds: float, interrupted: bool) -> dict:
    rows = []
    for j in jobs:
        r = results.get(j.id)
        row = j.describe()
        if r is None:
            row.update(status="cancelled" if interrupted else "error", figures={}, walks=0, mismatches=0,
                       command="python -m sim " + shlex.join(j.command()), worker=None, wall_seconds=None,
                       messages=["cancelled: the sweep was interrupted before it finished" if interrupted
                                 else "no result"])
        else:
            row.update({k: v for k, v in r.items() if k != "id"})
            if row.get("started") is not None:
                row["start_offset"] = round(row["started"] - wall0, 3)
                row["end_offset"] = round(row["finished"] - wall0, 3)
        rows.append(row)
    by_status = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    walks = sum(r["walks"] for r in rows)
    per_worker: dict[str, dict] = {}
    for r in rows:
        if r.get("worker") is None:
            continue
        w = per_worker.setdefault(r["worker"], {"jobs": 0, "walks": 0, "busy_seconds": 0.0,
                                                "host": r.get("host")})
        w["jobs"] += 1
        w["walks"] += r["walks"]
        w["busy_seconds"] += r.get("wall_seconds") or 0
        w["cpu_seconds"] = round(w.get("cpu_seconds", 0.0) + (r.get("cpu_seconds") or 0), 3)
    for w in per_worker.values():
        w["busy_seconds"] = round(w["busy_seconds"], 1)
        w["cpu_seconds"] = round(w["cpu_seconds"], 1)
        # below 1: the worker's jobs waited for a core (more workers than free cores)
        w["cpu_share"] = round(w["cpu_seconds"] / w["busy_seconds"], 2) if w["busy_seconds"] else None
        w["walks_per_second"] = round(w["walks"] / w["busy_seconds"], 1) if w["busy_seconds"] else None
    by_campaign: dict[str, dict] = {}
    for r in rows:
        c = by_campaign.setdefault(r["campaign"], {"jobs": 0, "walks": 0, "mismatches": 0, "failed": 0,
                                                   "busy_seconds": 0.0})
        c["jobs"] += 1
        c["walks"] += r["walks"]
        c["mismatches"] += r["mismatches"]
        c["failed"] += r["status"] != "passed"
        c["busy_seconds"] = round(c["busy_seconds"] + (r.get("wall_seconds") or 0), 1)
    for c in by_campaign.values():
        # one worker's throughput on this campaign: walks per second of a worker busy with it
        c["walks_per_busy_second"] = round(c["walks"] / c["busy_seconds"], 1) if c["busy_seconds"] else None
    run = wall - build_seconds          # from the first job submitted to the last result
    totals = {"jobs": len(rows), **by_status, "walks": walks, "mismatches": sum(r["mismatches"] for r in rows),
              "wall_seconds": round(wall, 1), "build_seconds": round(build_seconds, 1),
              "run_seconds": round(run, 1), "walks_per_second": round(walks / run, 1) if run > 0 else None,
              "workers": len(per_worker),
              "walks_per_second_per_worker": round(walks / run / len(per_worker), 1)
              if run > 0 and per_worker else None}
    return {"spec": spec.path, "name": spec.name, "description": spec.description,
            "where": where.describe(),
            "host": {"name": socket.gethostname(), "cpus": os.cpu_count(),
                     "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall0)),
            "interrupted": interrupted, "ok": not interrupted and by_status["passed"] == len(rows),
            "totals": totals, "by_campaign": by_campaign, "workers": per_worker, "builds": builds,
            "jobs": rows}


def write_outputs(report: dict, out: Path) -> None:
    """report.json, report.html and repro/*.json under ``out``."""
    out = Path(out)
    repro_dir = out / "repro"
    for row in report["jobs"]:
        for r in row.get("reproducers", []):
            text = r.pop("scenario_text", None)
            if text is None:
                continue
            path = repro_dir / f"{row['id']}--{r['name']}"
            write_atomic(path, text)
            r["scenario"] = str(path)
            # the job's command named its private copy (fuzz) or the spec's file (replay):
            # point it at the kept one
            words = shlex.split(r["command"])
            if len(words) > 4 and words[3] == "replay":
                words[4] = str(path)
            r["command"] = shlex.join(words)
    write_json(out / "report.json", report, indent=1)
    write_atomic(out / "report.html", render_html(report))


def comparable(report: dict) -> dict:
    """What must not depend on where a sweep ran: each job's status, figures and mismatches."""
    return {r["id"]: {"status": r["status"], "figures": r["figures"], "walks": r["walks"],
                      "mismatches": r["mismatches"], "reproducers": sorted(
                          x["name"] for x in r.get("reproducers", []))}
            for r in report["jobs"]}


def update_reliability(report: dict, path: Path) -> None:
    """The fuzz, races and soak sections of the reliability report, from the regression."""
    from sim.verify.reliability import update_report
    src = {"source": f"python -m sim sweep {report['spec']}", "regress_report": report["written"]["report"]
           if "written" in report else None}
    rows = [r for r in report["jobs"] if r.get("figures")]
    for nested in (False, True):
        _fuzz_section([r for r in rows if r["campaign"] == "fuzz" and bool(r["options"].get("nested")) == nested],
                      "fuzz_nested" if nested else "fuzz", src, path)
    for nested in (False, True):
        races = [r for r in rows if r["campaign"] == "races" and bool(r["options"].get("nested")) == nested]
        if races:
            sec = {r["backend"] + ("" if not r["params"] else f" {r['params']}"): r["figures"] for r in races}
            update_report("races_nested" if nested else "races",
                          {"by_backend": sec, "races": sum(r["figures"]["races"] for r in races),
                           "failures": sum(r["mismatches"] for r in races)} | src, path)
    soak = [r for r in rows if r["campaign"] == "soak"]
    if soak:
        r = max(soak, key=lambda r: r["walks"])
        update_report("soak", dict(r["figures"], **r.get("extra", {}), seed=r["seed"]) | src, path)
    t = report["totals"]
    update_report("regress", {"spec": report["spec"], "where": report["where"], "jobs": t["jobs"],
                              "passed": t["passed"], "walks": t["walks"], "mismatches": t["mismatches"],
                              "wall_seconds": t["wall_seconds"], "walks_per_second": t["walks_per_second"],
                              "walks_per_second_per_worker": t["walks_per_second_per_worker"]} | src, path)


def _fuzz_section(fuzz: list, section: str, src: dict, path: Path) -> None:
    """One fuzz section of the reliability report (the EPT fuzzer's, or the nested one's)."""
    from sim.verify.reliability import update_report
    if fuzz:
        agg: dict = {"jobs": len(fuzz), "seeds": sorted({r["seed"] for r in fuzz}),
                     "backends": sorted({r["backend"] for r in fuzz}),
                     "faults": all(r["options"]["faults"] for r in fuzz), "outcomes": {}}
        for k in ("walks", "cases", "rounds", "sweep_cases", "invalid_eptps", "host_writes", "invepts",
                  "faults_injected", "stall_cycles", "hangs", "corruptions", "mismatches", "guests",
                  "paging_off", "guest_writes", "unsynced_writes", "cr3_loads", "bursts"):
            agg[k] = sum(r["figures"].get(k, 0) for r in fuzz)
        if section == "fuzz":
            for k in ("guests", "paging_off", "guest_writes", "unsynced_writes", "cr3_loads", "bursts"):
                del agg[k]
        for r in fuzz:
            for k, v in r["figures"].get("outcomes", {}).items():
                agg["outcomes"][k] = agg["outcomes"].get(k, 0) + v
        agg["reproducers"] = [x["command"] for r in fuzz for x in r.get("reproducers", [])]
        agg["busy_seconds"] = round(sum(r.get("wall_seconds") or 0 for r in fuzz), 1)
        update_report(section, agg | src, path)


# -- the HTML summary -----------------------------------------------------------------------

def _plots(report: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) of the summary's plots; none without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    import base64
    import io
    out = []

    def png(fig) -> str:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode()

    camps = report["by_campaign"]
    names = list(camps)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.bar(names, [camps[n]["walks"] for n in names], color="#4878a8")
    a.set_title("walks (translations checked) per campaign")
    a.set_yscale("log")
    b.bar(names, [camps[n]["mismatches"] for n in names], color="#c04040")
    b.bar(names, [camps[n]["failed"] for n in names], color="#e0a040", alpha=0.6,
          bottom=[camps[n]["mismatches"] for n in names])
    b.set_title("mismatches (red) and failed jobs (orange)")
    b.set_ylim(bottom=0, top=max([1] + [camps[n]["mismatches"] + camps[n]["failed"] for n in names]) * 1.2)
    out.append(("Walks and mismatches per campaign", png(fig)))
    done = sorted((r for r in report["jobs"] if r.get("end_offset") is not None), key=lambda r: r["end_offset"])
    if done:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
        xs, ys, total = [0.0], [0], 0
        for r in done:
            total += r["walks"]
            xs.append(r["end_offset"])
            ys.append(total)
        a.step(xs, ys, where="post", label="all workers")
        for w in sorted({r["worker"] for r in done}):
            xw, yw, tw = [0.0], [0], 0
            for r in done:
                if r["worker"] == w:
                    tw += r["walks"]
                    xw.append(r["end_offset"])
                    yw.append(tw)
            a.step(xw, yw, where="post", label=str(w)[-24:], alpha=0.7)
        a.set_xlabel("seconds since the sweep started")
        a.set_title("walks done over time")
        a.legend(fontsize=7)
        workers = sorted({r["worker"] for r in done})
        for i, w in enumerate(workers):
            for r in done:
                if r["worker"] == w:
                    b.barh(i, r["end_offset"] - r["start_offset"], left=r["start_offset"],
                           color="#4878a8" if r["status"] == "passed" else "#c04040", edgecolor="white")
        b.set_yticks(range(len(workers)), [str(w)[-24:] for w in workers], fontsize=7)
        b.set_xlabel("seconds since the sweep started")
        b.set_title("jobs on each worker (red: not passed)")
        out.append(("Throughput over time", png(fig)))
    return out


def render_html(report: dict) -> str:
    from html import escape as e
    t = report["totals"]
    verdict = "INTERRUPTED" if report["interrupted"] else ("PASS" if report["ok"] else "FAIL")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sweep {e(report['name'])}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td.l,th.l{text-align:left}"
             ".passed{color:#262}.bad{color:#a00;font-weight:bold}code{font-size:90%}</style></head><body>",
             f"<h1>Regression {e(report['name'])}: <span class='{'passed' if report['ok'] else 'bad'}'>"
             f"{verdict}</span></h1>",
             f"<p>{e(report['spec'])} — {e(report['description'])}<br>started {e(report['started'])} on "
             f"{e(json.dumps(report['where']))}; {t['jobs']} jobs, {t['walks']:,} walks, "
             f"{t['mismatches']} mismatches in {t['wall_seconds']} s: {t['walks_per_second']} walks/s, "
             f"{t['walks_per_second_per_worker']} per worker.</p>",
             "<table><tr>" + "".join(f"<th>{s}</th>" for s in STATUSES) + "</tr><tr>"
             + "".join(f"<td>{t[s]}</td>" for s in STATUSES) + "</tr></table>"]
    for title, img in _plots(report):
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{img}'>")
    parts.append("<h2>Campaigns</h2><table><tr><th class='l'>campaign</th><th>jobs</th><th>walks</th>"
                 "<th>mismatches</th><th>not passed</th><th>busy s</th></tr>")
    for name, c in report["by_campaign"].items():
        parts.append(f"<tr><td class='l'>{e(name)}</td><td>{c['jobs']}</td><td>{c['walks']:,}</td>"
                     f"<td>{c['mismatches']}</td><td>{c['failed']}</td><td>{c['busy_seconds']}</td></tr>")
    parts.append("</table><h2>Workers</h2><table><tr><th class='l'>worker</th><th class='l'>host</th>"
                 "<th>jobs</th><th>walks</th><th>busy s</th><th>walks/s</th></tr>")
    for name, w in report["workers"].items():
        parts.append(f"<tr><td class='l'>{e(name)}</td><td class='l'>{e(str(w['host']))}</td><td>{w['jobs']}</td>"
                     f"<td>{w['walks']:,}</td><td>{w['busy_seconds']}</td><td>{w['walks_per_second']}</td></tr>")
    parts.append("</table>")
    bad = [r for r in report["jobs"] if r["status"] != "passed"]
    if bad:
        parts.append("<h2 class='bad'>Jobs that did not pass</h2><table><tr><th class='l'>job</th>"
                     "<th class='l'>status</th><th class='l'>what</th><th class='l'>replay alone</th></tr>")
        for r in bad:
            cmds = [x["command"] for x in r.get("reproducers", [])] or [r["command"]]
            parts.append(f"<tr><td class='l'>{e(r['id'])}</td><td class='l bad'>{e(r['status'])}</td>"
                         f"<td class='l'>{'<br>'.join(e(str(m)) for m in r.get('messages', [])[:3])}</td>"
                         f"<td class='l'>{'<br>'.join('<code>' + e(c) + '</code>' for c in cmds)}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Every job</h2><table><tr><th class='l'>job</th><th class='l'>status</th><th>walks</th>"
                 "<th>mismatches</th><th>s</th><th class='l'>worker</th></tr>")
    for r in report["jobs"]:
        cls = "passed" if r["status"] == "passed" else "bad"
        parts.append(f"<tr><td class='l'>{e(r['id'])}</td><td class='l {cls}'>{e(r['status'])}</td>"
                     f"<td>{r['walks']:,}</td><td>{r['mismatches']}</td><td>{r.get('wall_seconds')}</td>"
                     f"<td class='l'>{e(str(r.get('worker')))}</td></tr>")
    parts.append("</table></body></html>\n")
    return "\n".join(parts)


# -- the `sweep` command --------------------------------------------------------------------
ABOUT = dict(help="a regression: a spec's campaigns x seeds x backends x parameters as Dask jobs",
             description="Expand SPEC (TOML or JSON: campaigns fuzz/races/soak/run/replay, seeds, "
                         "backends, unit parameter grids) into jobs and run each as a Dask task in a "
                         "process of its own: on an embedded LocalCluster (default, one worker per core), "
                         "a running cluster (--scheduler) or a batch grid (--jobqueue). Writes "
                         "OUT/report.json, OUT/report.html and OUT/repro/. The last line is "
                         "'N jobs, W walks, M mismatches, F not passed'; exit 1 unless every job passed.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="the sweep spec (.toml, else JSON), e.g. regress/default.toml")
    p.add_argument("--out", default="build/regress", metavar="DIR",
                   help="report.json, report.html and repro/ (default build/regress)")
    g = p.add_argument_group("where the jobs run (default: an embedded LocalCluster)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="a running Dask scheduler")
    x.add_argument("--jobqueue", choices=["slurm", "lsf", "pbs", "sge"],
                   help="start the workers as batch jobs through dask-jobqueue")
    x.add_argument("--serial", action="store_true", help="no Dask: the jobs one after another here")
    g.add_argument("--workers", type=positive, metavar="N",
                   help="embedded cluster: workers (default one per core); --jobqueue: batch jobs (default 2)")
    q = p.add_argument_group("--jobqueue options")
    q.add_argument("--queue", help="the queue (Slurm partition)")
    q.add_argument("--cores", type=positive, default=1, help="cores per batch job: one worker each (default 1)")
    q.add_argument("--memory", default=None, help="memory per batch job (default 2GiB per core)")
    q.add_argument("--walltime", default="01:00:00", help="batch job walltime (default 01:00:00)")
    q.add_argument("--account", help="the account (Slurm, PBS) or project (LSF, SGE) to charge")
    q.add_argument("--job-extra", action="append", default=[], metavar="DIRECTIVE",
                   help="an extra scheduler directive, e.g. '--qos=short' (repeatable)")
    q.add_argument("--interface", help="the network interface the scheduler and workers use (e.g. ib0)")
    q.add_argument("--print-job-script", action="store_true",
                   help="print the batch script the workers would be started with, and stop")
    p.add_argument("--timeout", type=positive, metavar="SECONDS", help="per-job time limit (overrides the spec)")
    p.add_argument("--only", action="append", metavar="GLOB", help="only the jobs whose id matches (repeatable)")
    p.add_argument("--list", action="store_true", help="list the jobs the spec expands to, and stop")
    p.add_argument("--no-reliability", action="store_true",
                   help="do not write the fuzz/races/soak sections of build/reliability/report.json")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _where(args) -> Where:
    jq_only = [f for f, v in (("--queue", args.queue), ("--memory", args.memory), ("--account", args.account),
                              ("--job-extra", args.job_extra), ("--interface", args.interface),
                              ("--print-job-script", args.print_job_script)) if v]
    if jq_only and not args.jobqueue:
        raise UsageError(f"{PROG} sweep: {jq_only[0]} needs --jobqueue")
    if args.serial:
        if args.workers:
            raise UsageError(f"{PROG} sweep: --workers and --serial do not go together")
        return Where("serial")
    if args.scheduler:
        if args.workers:
            raise UsageError(f"{PROG} sweep: --workers: the cluster at --scheduler has the workers it has")
        if "://" not in args.scheduler and ":" not in args.scheduler:
            raise UsageError(f"{PROG} sweep: --scheduler {args.scheduler}: not an address (tcp://HOST:PORT)")
        return Where("scheduler", address=args.scheduler)
    if args.jobqueue:
        try:
            import dask_jobqueue  # noqa: F401
        except ImportError:
            raise UsageError(f"{PROG} sweep: --jobqueue needs dask-jobqueue (pip install dask-jobqueue)") from None
        memory = args.memory or f"{2 * args.cores}GiB"
        return Where("jobqueue", workers=args.workers or 2, jobqueue=dict(
            system=args.jobqueue, queue=args.queue, cores=args.cores, memory=memory, walltime=args.walltime,
            account=args.account, job_extra=tuple(args.job_extra), interface=args.interface,
            log_directory=str(Path(args.out).resolve() / "jobqueue-logs")))
    return Where("local", workers=args.workers or 0)


def main(args) -> int:
    try:
        spec = load_spec(args.spec, timeout=args.timeout)
    except SpecError as e:
        raise UsageError(f"{PROG} sweep: {e}") from None
    where = _where(args)
    if args.list:
        for j in spec.jobs:
            print(f"{j.id}: python -m sim {shlex.join(j.command())}")
        print(f"{len(spec.jobs)} jobs")
        return 0
    if where.kind == "jobqueue" and args.print_job_script:
        cluster = jobqueue_cluster(**where.jobqueue)
        try:
            print(cluster.job_script())
        finally:
            cluster.close()
        return 0
    if where.kind != "serial":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UsageError(f"{PROG} sweep: needs dask.distributed (pip install 'dask[distributed]'), "
                             "or --serial") from None
    from sim.options import output_dir
    output_dir("--out", args.out)
    from sim.verify.reliability import REPORT
    reliability = None if args.no_reliability else REPORT
    report = run_sweep(spec, where, Path(args.out), only=args.only, quiet=args.quiet, reliability=reliability)
    t = report["totals"]
    for r in report["jobs"]:
        if r["status"] != "passed":
            print(f"{r['status'].upper()}: {r['id']}: {'; '.join(str(m) for m in r.get('messages', [])[:2])}",
                  file=sys.stderr)
            for x in r.get("reproducers", []):
                print(f"  reproducer: {x['command']}", file=sys.stderr)
            if not r.get("reproducers"):
                print(f"  alone: {r['command']}", file=sys.stderr)
    for name, w in report["workers"].items():
        print(f"worker {name}: {w['jobs']} jobs, {w['walks']:,} walks in {w['busy_seconds']} s busy "
              f"({w['walks_per_second']} walks/s; its jobs had a core {100 * (w['cpu_share'] or 0):.0f} % "
              "of the time)")
    print(f"load average at the end {report['host']['load_average_at_end']} on {report['host']['cpus']} cores")
    print(f"{t['walks']:,} walks in {t['run_seconds']} s (+{t['build_seconds']} s building): "
          f"{t['walks_per_second']} walks/s, {t['walks_per_second_per_worker']} per worker "
          f"({t['workers']} workers)")
    print(f"report written to {report['written']['report']} and {report['written']['html']}")
    if report["interrupted"]:
        print("interrupted: the report holds the jobs that finished", file=sys.stderr)
    not_passed = t["jobs"] - t["passed"]
    print(f"{t['jobs']} jobs, {t['walks']} walks, {t['mismatches']} mismatches, {not_passed} not passed")
    if report["interrupted"]:
        return 130
    return 0 if report["ok"] else 1
