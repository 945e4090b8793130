"""Waveforms: one save file for pysim's VCD and Verilator's FST, enum filters,
mismatch markers, the transaction log, and GTKWave itself loading them.

The tests on Verilator's FST are marked slow (its traced build takes
minutes cold): `make test-all` runs them.  GTKWave, Xvfb, xwd and
ImageMagick come from apt (``.ci/run`` installs them);
without them the GTKWave tests skip and say so.  The pure-Python checks
(names, filters, markers, log, VCD/FST agreement) need none of them, except
fst2vcd (part of GTKWave) for reading an FST.
"""

import enum as py_enum
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amaranth.lib import enum as am_enum

import hw
from hw.top import PageWalkUnit
from sim.cosim.run import run_workload
from sim.flows.gtkwave import (PERIOD_PS, WaveNames, dump_names, edge_ps, parse_filter,
                      var_name, vcd_vars)
from sim.cosim.workload import WorkloadOptions

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "wave"


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, **kw)


def flags_of(text: str, trace: str) -> int:
    """The GTKWave display flags in effect for a trace ("@hex" lines carry over)."""
    flags = 0
    for line in text.splitlines():
        if line.startswith("@"):
            flags = int(line[1:], 16)
        elif line == trace:
            return flags
    raise KeyError(trace)


def gtkw_traces(gtkw: Path) -> list[str]:
    return [line.strip() for line in gtkw.read_text().splitlines() if line.startswith("TOP.")]


@pytest.fixture(scope="module")
def pysim_wave(tmp_path_factory):
    out = tmp_path_factory.mktemp("wave") / "ept"
    res = run_cli("wave", "--no-open", "--accesses", "25", "--seed", "3", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def verilator_ready() -> str | None:
    """Why the Verilator waveform cannot be built here, or None."""
    try:
        from sim.backends.base import BackendUnavailable
        from sim.backends.verilator import check_trace_headers as _check_trace_headers, toolchain
        toolchain()
        _check_trace_headers()
    except BackendUnavailable as e:
        return str(e)
    if shutil.which("fst2vcd") is None:
        return "reading an FST needs fst2vcd (apt install gtkwave)"
    return None


@pytest.fixture(scope="module")
def fst_wave(tmp_path_factory):
    why = verilator_ready()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("fst") / "ept"
    res = run_cli("wave", "--no-open", "--backend", "verilator", "--accesses", "25", "--seed", "3",
                  "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


# -- names ------------------------------------------------------------------------------

def test_save_file_names_only_signals_in_the_vcd(pysim_wave):
    gtkw = pysim_wave.with_suffix(".gtkw")
    traced = gtkw_traces(gtkw)
    names = dump_names(pysim_wave.with_suffix(".vcd"))
    assert len(traced) > 80
    assert [t for t in traced if t not in names] == []
    text = gtkw.read_text()
    for group in ("translate port", "EPTP and contexts", "INVEPT", "TLB", "paging-structure caches",
                  "walker 0", "walker 1", "A/D updater 0", "memory port", "counters"):
        assert f"-{group}\n" in text, group
    # addresses in hex (flag 0x2 of "@22"), counters in decimal (0x4)
    assert flags_of(text, "TOP.pwu.translate_req__payload.gpa[47:0]") & 0x2
    assert flags_of(text, "TOP.pwu.mem_req__payload.addr[51:0]") & 0x2
    assert flags_of(text, "TOP.pwu.counters.lookups[47:0]") & 0x4


@pytest.mark.slow          # the traced Verilator build alone takes minutes cold (make test-all)
def test_one_save_file_for_vcd_and_fst(pysim_wave, fst_wave):
    vcd_traces = gtkw_traces(pysim_wave.with_suffix(".gtkw"))
    assert gtkw_traces(fst_wave.with_suffix(".gtkw")) == vcd_traces
    names = dump_names(fst_wave.with_suffix(".fst"))
    assert [t for t in vcd_traces if t not in names] == []


def _values_at_cycle_starts(lines: list[str], wanted: set[str], cycles: int) -> dict:
    """Each wanted var's value (as an int, None for x) at every cycle's start,
    10 ns * n: after the previous edge and the new cycle's inputs."""
    ids = {}
    for _, scope, fields in vcd_vars(lines):
        full = var_name(scope, fields)
        if full in wanted:
            ids.setdefault(fields[2], []).append(full)
    n_header = next(i for i, line in enumerate(lines) if line.startswith("$enddefinitions"))
    cur = {}
    out = {name: [] for name in wanted}
    sample_at = 0

    def sample_until(t):
        nonlocal sample_at
        while sample_at <= t and sample_at // PERIOD_PS < cycles:
            for name in wanted:
                out[name].append(cur.get(name))
            sample_at += PERIOD_PS

    for line in lines[n_header + 1:]:
        if not line:
            continue
        c = line[0]
        if c == "#":
            t = int(line[1:])
            sample_until(t - 1)          # values before this time's changes
            continue
        if c in "01xz":
            v, vid = line[0], line[1:].strip()
        elif c == "b":
            v, vid = line[1:].split()
        else:
            continue
        for name in ids.get(vid, ()):
            cur[name] = None if "x" in v or "z" in v else int(v, 2)
    sample_until(1 << 62)
    return out


@pytest.mark.slow
def test_vcd_and_fst_show_the_same_values(pysim_wave, fst_wave):
    """Every traced signal, at every cycle's start, equal in both dumps."""
    traced = set(gtkw_traces(pysim_wave.with_suffix(".gtkw")))
    vcd_lines = pysim_wave.with_suffix(".vcd").read_text().splitlines()
    fst_lines = subprocess.run(["fst2vcd", "-f", str(fst_wave.with_suffix(".fst"))],
                               capture_output=True, text=True, check=True).stdout.splitlines()
    log = pysim_wave.with_suffix(".txn.log").read_text().splitlines()
    cycles = int(log[-1].split()[1])       # the last response's cycle
    a = _values_at_cycle_starts(vcd_lines, traced, cycles)
    b = _values_at_cycle_starts(fst_lines, traced, cycles)
    assert cycles > 500
    diffs = [(name, k, a[name][k], b[name][k]) for name in sorted(traced)
             for k in range(1, cycles) if a[name][k] != b[name][k]]
    assert diffs[:5] == []
    # and the signals move: a waveform of constants would pass trivially
    assert len(set(a["TOP.pwu.walker0.debug__state[2:0]"])) >= 4


# -- enum filters ----------------------------------------------------------------------------

def _hw_enums():
    found = {}
    for mod in pkgutil.iter_modules(hw.__path__):
        m = importlib.import_module(f"hw.{mod.name}")
        for obj in vars(m).values():
            if isinstance(obj, type) and issubclass(obj, py_enum.Enum) and \
                    isinstance(obj, am_enum.EnumType) and obj.__module__ == m.__name__ and len(obj):
                found[obj.__qualname__] = obj
    return found


def test_filters_map_every_value_of_every_enum_in_the_design(pysim_wave):
    filters = pysim_wave.with_suffix(".filters")
    names = WaveNames(PageWalkUnit())
    enums = names.enums()
    hw_enums = _hw_enums()
    # every enum the unit's signals carry is one of hw's (or an FSM's state
    # names), and has a filter naming each of its values
    fsms = {n for n in enums if n.startswith("fsm_")}
    assert fsms and set(enums) - fsms <= set(hw_enums)
    for required in ("WalkerState", "Outcome", "Access", "ADState", "Level", "PageSize"):
        assert required in enums
    for name, info in enums.items():
        f = parse_filter(filters / f"{name}.txt")
        digits = max(1, (info.width + 3) // 4)
        members = info.variants.items() if name in fsms else ((m.value, m.name) for m in hw_enums[name])
        for value, member in members:
            assert f[f"{value:0{digits}X}"] == member, (name, member)
    assert parse_filter(filters / "ADState.txt")["1"] == "ISSUE"
    # every enum-valued trace in the save file uses its enum's filter
    text = pysim_wave.with_suffix(".gtkw").read_text()
    assert re.search(r"\^\d+ \S*/WalkerState\.txt\nTOP\.pwu\.walker0\.debug__state\[2:0\]", text)
    assert re.search(r"\^\d+ \S*/Outcome\.txt\nTOP\.pwu\.translate_resp__payload\.outcome\[2:0\]", text)


def test_enum_values_in_the_vcd_are_bits_not_strings(pysim_wave):
    text = pysim_wave.with_suffix(".vcd").read_text()
    header, body = text.split("$enddefinitions", 1)
    assert "$var string" not in header        # every string Amaranth wrote was an enum
    assert "$timescale 1 ps $end" in header
    assert not re.search(r"^sIDLE ", body, re.M)


# -- markers, error messages, the transaction log ------------------------------------------------

def test_mismatch_puts_a_marker_and_names_the_file(monkeypatch, tmp_path):
    from sim.backends.pysim import PysimHarness
    real = PysimHarness._fill

    def lying(self, t, raw):
        real(self, t, raw)
        if t.hpa is not None and t.gpa % 3 == 0:
            t.hpa ^= 0x1000
    monkeypatch.setattr(PysimHarness, "_fill", lying)
    wave = tmp_path / "bad.vcd"
    s = run_workload(WorkloadOptions(accesses=40, seed=2), "rtl", wave=str(wave))
    assert s["mismatches"] > 0
    first = s["mismatch_details"][0]
    cycle = int(re.match(r"cycle (\d+):", first).group(1))
    assert f"see {wave.with_suffix('.gtkw')} at {edge_ps(cycle) // 1000} ns (cycle {cycle}" in first
    star = [line for line in wave.with_suffix(".gtkw").read_text().splitlines() if line.startswith("*")][0]
    assert star.split()[1] == str(edge_ps(cycle))        # the primary marker


def test_transaction_log_has_one_line_per_translation(pysim_wave):
    lines = pysim_wave.with_suffix(".txn.log").read_text().splitlines()
    header, rows = lines[0].split(), [line.split() for line in lines[1:]]
    assert header[:6] == ["in", "out", "lat", "tag", "gpa", "access"]
    assert header[-2:] == ["levels", "retries"]
    assert len(rows) >= 25
    for r in rows:
        cin, cout, lat = int(r[0]), int(r[1]), int(r[2])
        assert cout - cin == lat and lat >= 1
        assert r[5] in ("read", "write", "fetch")
        assert r[6] in ("ok", "violation", "misconfig", "bus_error", "refused")
        assert r[7].startswith("hpa=" if r[6] == "ok" else "qual=" if r[6] == "violation" else "-")
    # responses leave in handshake order
    assert [int(r[1]) for r in rows] == sorted(int(r[1]) for r in rows)


def test_wave_cli_errors_are_one_line(tmp_path):
    for args, word in [(("--backend", "model"), "backend"), (("--wave", "x.vcd"), "--out"),
                       ((str(tmp_path / "missing.json"),), "missing.json"),
                       (("--out", "/proc/nope/x"), "--out")]:
        res = run_cli("wave", "--no-open", *args)
        assert res.returncode == 2, args
        assert len(res.stderr.strip().splitlines()) == 1 and word in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    res = run_cli("run", "--backend", "verilator", "--wave", str(tmp_path / "w.vcd"), "--accesses", "5")
    assert res.returncode == 2 and ".fst" in res.stderr and not (tmp_path / "w.vcd").exists()


def test_no_display_prints_the_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    res = run_cli("wave", "--accesses", "5", "--out", str(tmp_path / "w"), env=env)
    assert res.returncode == 0, res.stderr
    assert f"gtkwave {tmp_path / 'w.gtkw'}" in res.stdout


# -- GTKWave itself -------------------------------------------------------------------------------

def _gtkwave_missing() -> str | None:
    for tool, pkg in (("gtkwave", "gtkwave"), ("Xvfb", "xvfb"), ("xwd", "x11-apps"), ("convert", "imagemagick")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt install {pkg}; .ci/run does)"
    return None


@pytest.fixture(scope="module")
def display():
    why = _gtkwave_missing()
    if why:
        pytest.skip(why)
    for n in range(90, 140):
        if not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if Path(f"/tmp/.X11-unix/X{n}").exists():
            break
        time.sleep(0.1)
    yield f":{n}"
    proc.terminate()
    proc.wait()


def _facilities(display: str, dump: Path) -> set[str]:
    """GTKWave's own names for every signal of a dump (its Tcl interface)."""
    script = dump.with_suffix(".list.tcl")
    script.write_text("set n [gtkwave::getNumFacs]\n"
                      "for {set i 0} {$i < $n} {incr i} { puts \"FAC [gtkwave::getFacName $i]\" }\n"
                      "gtkwave::/File/Quit\n")
    res = subprocess.run(["gtkwave", "-S", str(script), str(dump)], capture_output=True, text=True,
                         env=dict(os.environ, DISPLAY=display), timeout=120)
    return {line[4:] for line in res.stdout.splitlines() if line.startswith("FAC ")}


def _screenshot(display: str, dump: Path, gtkw: Path, png: Path) -> str:
    env = dict(os.environ, DISPLAY=display)
    proc = subprocess.Popen(["gtkwave", "-f", str(dump), "-a", str(gtkw)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(6)           # GTKWave loads and draws; nothing to poll for
        assert proc.poll() is None, "GTKWave exited: " + proc.stdout.read()
        xwd = subprocess.run(["xwd", "-root", "-silent"], env=env, capture_output=True, check=True).stdout
        png.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["convert", "xwd:-", str(png)], input=xwd, check=True)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.parametrize("kind", ["vcd", pytest.param("fst", marks=pytest.mark.slow)])
def test_gtkwave_loads_the_save_file_headless(kind, display, request):
    out = request.getfixturevalue("pysim_wave" if kind == "vcd" else "fst_wave")
    dump, gtkw = out.with_suffix(f".{kind}"), out.with_suffix(".gtkw")
    facs = _facilities(display, dump)
    assert len(facs) > 1000
    assert [t for t in gtkw_traces(gtkw) if t not in facs] == []      # GTKWave finds every trace
    png = SHOTS / f"screenshot-{kind}.png"
    log = _screenshot(display, dump, gtkw, png)
    bad = [line for line in log.splitlines() if re.search(r"error|warning|could not|cannot", line, re.I)]
    assert bad == []
    assert png.stat().st_size > 20_000          # a drawn window, not a blank screen


# -- a readable default view ------------------------------------------------------------------

def test_the_pysim_vcd_reads_with_a_standard_vcd_reader(pysim_wave):
    from vcd.reader import TokenKind, tokenize
    names, changes = set(), 0
    with open(pysim_wave.with_suffix(".vcd"), "rb") as f:
        for tok in tokenize(f):
            if tok.kind is TokenKind.VAR:
                names.add(tok.var.reference)
            elif tok.kind in (TokenKind.CHANGE_SCALAR, TokenKind.CHANGE_VECTOR):
                changes += 1
    assert len(names) > 300 and changes > 10_000
    assert not [n for n in names if "$" in n]


def test_save_file_opens_on_the_clock_a_few_walks_and_relative_paths(pysim_wave):
    from sim.flows.gtkwave import PERIOD_PS, VIEW_CYCLES, view_zoom
    gtkw = pysim_wave.with_suffix(".gtkw")
    text = gtkw.read_text()
    assert '[dumpfile] "ept.vcd"' in text and '[savefile] "ept.gtkw"' in text
    assert not re.search(r'^\^\d+ /', text, re.M), "a filter path is absolute"
    assert "$" not in "".join(gtkw_traces(gtkw))
    traces = gtkw_traces(gtkw)
    assert traces[:2] == ["TOP.pwu.clk", "TOP.pwu.cycle[31:0]"]
    # the view: about VIEW_CYCLES cycles across the window, by GTKWave's zoom rule
    zoom = float(re.search(r"^\*(-?[\d.]+) ", text, re.M).group(1))
    assert abs(zoom - view_zoom()) < 1e-6
    assert 0.9 < 2 ** (-zoom - 8) * 1260 / PERIOD_PS / VIEW_CYCLES < 1.1
    # each stream's payload in a group under its valid
    block = text.split("TOP.pwu.translate_req__ready\n", 1)[1]
    assert block.lstrip("@0123456789\n").startswith("-translate_req payload (when valid)")


def test_the_cycle_counter_counts_edges(pysim_wave):
    lines = pysim_wave.with_suffix(".vcd").read_text().splitlines()
    values = _values_at_cycle_starts(lines, {"TOP.pwu.cycle[31:0]"}, 50)["TOP.pwu.cycle[31:0]"]
    assert values[5:50] == list(range(5, 50))
