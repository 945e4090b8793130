"""The replay contract: round trips through the CLI, and every error class."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.formats import EPT_A, EPT_D, Access, Eptp, Level, MemType, make_leaf_entry, make_table_entry
from model.physmem import FrameAllocator, PhysicalMemory
from model.pmap import VM_PROT_READ, VM_PROT_WRITE, VM_PROT_EXECUTE, PMAP_NOCACHE, PageDB, Pmap
from model.walk import translate
from sim.verify.replay import replay
from sim.cosim.scenario import ScenarioError, parse_scenario

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


def pmap_scenario():
    """Tables built by the pmap model (4K pages), plus hand-made 2M and 1G leaves."""
    mem = PhysicalMemory()
    ptp = FrameAllocator(mem, 0x100000, 32)
    guest = FrameAllocator(mem, 0x4000000, 32)
    pm = Pmap(mem, ptp, PageDB(guest))
    pm.ept_transform()
    frames = [guest.alloc() for _ in range(4)]
    pm.enter(0x1000, frames[0], VM_PROT_READ | VM_PROT_WRITE)
    pm.enter(0x2000, frames[1], VM_PROT_READ | VM_PROT_EXECUTE, PMAP_NOCACHE)
    pm.enter(0x40000000, frames[2], VM_PROT_READ)
    # a 2M leaf under a fresh PDPTE and a 1G leaf, written by hand
    pd = ptp.alloc()
    pdpt_of_low = pm._get_tree(0x1000)[1] & ~0xFFF    # PDPTE addr's table = PDPT
    mem.write(pdpt_of_low + 2 * 8, make_table_entry(pd))                  # GPA 0x80000000
    mem.write(pd + 1 * 8, make_leaf_entry(0x60000000, Level.PDE, memtype=MemType.WT))
    mem.write(pdpt_of_low + 3 * 8, make_leaf_entry(0x80000000, Level.PDPTE, perms=0b101))
    eptp = pm.eptp(ad_enabled=True).encode()
    memory = [{"addr": hex(a), "value": hex(v)} for a, v in mem.nonzero_words()]
    ops = []
    for gpa in (0x1008, 0x2010, 0x40000123, 0x80212345, 0xC1234567, 0x3000, 0x7FFF_FFFF_F000):
        for acc in ("read", "write", "fetch"):
            ops.append({"op": "translate", "gpa": hex(gpa), "access": acc})
    ops.append({"op": "read", "addr": hex(pm._get_tree(0x1000)[2])})     # PML4E: A set
    return {"eptp": hex(eptp), "memory": memory, "ops": ops}, mem, pm


def test_replay_matches_reference_walk(tmp_path):
    data, _, _ = pmap_scenario()
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    res = run_cli("replay", str(path), "--backend", "model")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    lines = [json.loads(l) for l in res.stdout.splitlines()]
    assert len(lines) == len(data["ops"])
    # recompute independently on a fresh memory
    mem = PhysicalMemory()
    for m in data["memory"]:
        mem.write(int(m["addr"], 16), int(m["value"], 16))
    eptp = Eptp.decode(int(data["eptp"], 16))
    for op, line in zip(data["ops"], lines):
        if op["op"] == "translate":
            t = translate(mem, eptp, int(op["gpa"], 16), Access.parse(op["access"]))
            assert line == t.to_json()
        else:
            assert line == {"op": "read", "addr": op["addr"], "value": hex(mem.read(int(op["addr"], 16)))}
    outcomes = {l["outcome"] for l in lines if l["op"] == "translate"}
    assert outcomes == {"ok", "violation"}
    sizes = {l["page_size"] for l in lines if l.get("outcome") == "ok"}
    assert sizes == {4096, 2097152, 1073741824}
    assert int(lines[-1]["value"], 16) & EPT_A


EXACT = {"eptp": "0x10005e", "memory": [
        {"addr": "0x100000", "value": "0x101007"}, {"addr": "0x101000", "value": "0x102007"},
        {"addr": "0x102000", "value": "0x103007"}, {"addr": "0x103008", "value": "0x200077"}],
        "ops": [{"op": "translate", "gpa": "0x1234", "access": "write"},
                {"op": "read", "addr": "0x103008"},
                {"op": "translate", "gpa": 20480, "access": "read"},
                {"op": "write", "addr": "0x103008", "value": "0x200071"},
                {"op": "invept", "kind": "global"},
                {"op": "translate", "gpa": "4660", "access": "write"}]}


def test_replay_exact_output_format(tmp_path):
    data = EXACT
    p = tmp_path / "s.json"
    p.write_text(json.dumps(data))
    res = run_cli("replay", str(p))
    assert res.returncode == 0
    assert res.stdout.splitlines() == [
        '{"op": "translate", "gpa": "0x1234", "access": "write", "outcome": "ok", "hpa": "0x200234", '
        '"page_size": 4096, "memtype": 6}',
        '{"op": "read", "addr": "0x103008", "value": "0x200377"}',
        '{"op": "translate", "gpa": "0x5000", "access": "read", "outcome": "violation", "qual": "0x1"}',
        '{"op": "translate", "gpa": "0x1234", "access": "write", "outcome": "violation", "qual": "0xa"}',
    ]


AD_UPDATES = {"eptp": "0x10005e", "memory": [
        {"addr": "0x100000", "value": "0x101007"}, {"addr": "0x101000", "value": "0x102007"},
        {"addr": "0x102000", "value": "0x103007"}, {"addr": "0x103000", "value": "0x200077"}],
        "ops": [{"op": "translate", "gpa": "0x10", "access": "read"},
                {"op": "read", "addr": "0x103000"},
                {"op": "translate", "gpa": "0x10", "access": "write"},
                {"op": "read", "addr": "0x103000"}, {"op": "read", "addr": "0x100000"}]}


def test_ad_updates_visible_to_later_reads():
    data = AD_UPDATES
    import io
    lines = replay(parse_scenario(data), "model", out=io.StringIO()).lines
    assert int(lines[1]["value"], 16) == 0x200077 | EPT_A
    assert int(lines[3]["value"], 16) == 0x200077 | EPT_A | EPT_D
    assert int(lines[4]["value"], 16) == 0x101007 | EPT_A


CONFIG_BASE = {"eptp": "0x10001e", "memory": [
        {"addr": "0x100000", "value": "0x101007"}, {"addr": "0x101000", "value": "0x102007"},
        {"addr": "0x102000", "value": "0x103007"}, {"addr": "0x103000", "value": "0x200034"}],
        "ops": [{"op": "translate", "gpa": "0x0", "access": "fetch"}]}
CONFIG_NO_XO = dict(CONFIG_BASE, config={"execute_only": False})
# bit 40 in the address: fine with MAXPHYADDR 46, reserved with 39
CONFIG_HI = dict(CONFIG_BASE, memory=CONFIG_BASE["memory"][:3]
                 + [{"addr": "0x103000", "value": hex((1 << 40) | 0x200034)}])
CONFIG_SMALL = dict(CONFIG_HI, config={"maxphyaddr": 39})


def test_config_maxphyaddr_and_execute_only():
    base, no_xo, hi, small = CONFIG_BASE, CONFIG_NO_XO, CONFIG_HI, CONFIG_SMALL
    import io
    assert replay(parse_scenario(base), out=io.StringIO()).lines[0]["outcome"] == "ok"
    assert replay(parse_scenario(no_xo), out=io.StringIO()).lines[0]["outcome"] == "misconfig"
    assert replay(parse_scenario(hi), out=io.StringIO()).lines[0]["hpa"] == hex((1 << 40) | 0x200000)
    assert replay(parse_scenario(small), out=io.StringIO()).lines[0]["outcome"] == "misconfig"


GOOD = {"eptp": "0x10005e", "memory": [], "ops": []}

BAD = [
    ("bad_json", "{", "bad JSON"),
    ("not_object", "[]", "expected an object"),
    ("missing_eptp", {"memory": [], "ops": []}, "missing field 'eptp'"),
    ("missing_ops", {"eptp": "0x10005e", "memory": []}, "missing field 'ops'"),
    ("missing_memory", {"eptp": "0x10005e", "ops": []}, "missing field 'memory'"),
    ("unknown_top", dict(GOOD, extra=1), "unknown field 'extra'"),
    ("unknown_config", dict(GOOD, config={"mpa": 46}), "unknown field 'mpa'"),
    ("bad_config_value", dict(GOOD, config={"maxphyaddr": 99}), "maxphyaddr"),
    ("bad_execute_only", dict(GOOD, config={"execute_only": "yes"}), "execute_only"),
    ("bad_number_string", dict(GOOD, eptp="0xZZ"), "is not a number"),
    ("bad_number_float", dict(GOOD, eptp=1.5), "is not a number"),
    ("bad_number_bool", dict(GOOD, eptp=True), "is not a number"),
    ("negative", dict(GOOD, memory=[{"addr": -8, "value": 0}]), "negative"),
    ("value_too_big", dict(GOOD, memory=[{"addr": 0, "value": 1 << 64}]), "out of range"),
    ("misaligned_memory", dict(GOOD, memory=[{"addr": "0x1004", "value": 0}]), "not 8-byte aligned"),
    ("misaligned_op", dict(GOOD, ops=[{"op": "read", "addr": 9}]), "not 8-byte aligned"),
    ("beyond_maxphyaddr", dict(GOOD, ops=[{"op": "read", "addr": hex(1 << 46)}]), "MAXPHYADDR"),
    ("gpa_too_big", dict(GOOD, ops=[{"op": "translate", "gpa": hex(1 << 48), "access": "read"}]), "out of range"),
    ("missing_op_field", dict(GOOD, ops=[{"op": "write", "addr": 0}]), "missing field 'value'"),
    ("unknown_op_field", dict(GOOD, ops=[{"op": "read", "addr": 0, "x": 1}]), "unknown field 'x'"),
    ("unknown_op", dict(GOOD, ops=[{"op": "flush"}]), "unknown op"),
    ("bad_access", dict(GOOD, ops=[{"op": "translate", "gpa": 0, "access": "exec"}]), "access"),
    ("bad_invept_kind", dict(GOOD, ops=[{"op": "invept", "kind": "all"}]), "kind"),
    ("invalid_eptp_memtype", dict(GOOD, eptp="0x10005b"), "invalid EPTP"),
    ("invalid_eptp_walklen", dict(GOOD, eptp="0x100046"), "invalid EPTP"),
    ("invalid_eptp_reserved", dict(GOOD, eptp="0x10015e"), "invalid EPTP"),
    ("invalid_eptp_high", dict(GOOD, eptp=hex((1 << 46) | 0x10005e)), "invalid EPTP"),
]


@pytest.mark.parametrize("name,content,needle", BAD, ids=[b[0] for b in BAD])
def test_replay_error_classes(tmp_path, name, content, needle):
    p = tmp_path / f"{name}.json"
    # a later valid op must not run: errors are found before anything executes
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    res = run_cli("replay", str(p))
    assert res.returncode == 2
    assert res.stdout == ""
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert needle in err[0]
    assert "Traceback" not in res.stderr


def test_error_found_before_any_output(tmp_path):
    data = dict(GOOD, ops=[{"op": "read", "addr": 0}, {"op": "read", "addr": 4}])
    p = tmp_path / "late.json"
    p.write_text(json.dumps(data))
    res = run_cli("replay", str(p))
    assert res.returncode == 2 and res.stdout == ""
    assert "ops[1].addr" in res.stderr


def test_missing_file(tmp_path):
    for backend in ("model", "rtl"):
        res = run_cli("replay", str(tmp_path / "nope.json"), "--backend", backend)
        assert res.returncode == 2 and "cannot read" in res.stderr and res.stdout == ""
        assert len(res.stderr.strip().splitlines()) == 1


def test_unknown_backend_is_one_line(tmp_path):
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(GOOD))
    res = run_cli("replay", str(p), "--backend", "nosuch")
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "backend" in res.stderr


def test_parse_numbers_all_forms():
    s = parse_scenario({"eptp": 0x10005E, "memory": [{"addr": "4096", "value": "0xFFFFFFFFFFFFFFFF"},
                                                      {"addr": 8, "value": " 12 "}], "ops": []})
    assert s.memory == [(4096, (1 << 64) - 1), (8, 12)]
    with pytest.raises(ScenarioError, match="memory"):
        parse_scenario({"eptp": 0x10005E, "memory": {}, "ops": []})


def test_cli_usage_errors_are_one_line():
    for args in (["bogus"], ["run", "--mix", "1,2"], ["run", "--accesses", "0"],
                 ["run", "--locality", "2"], ["run", "--guest-pages", "8"]):
        res = run_cli(*args)
        assert res.returncode == 2, args
        assert len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_help_is_useful():
    res = run_cli("--help")
    assert res.returncode == 0 and "replay" in res.stdout and "run" in res.stdout
    res = run_cli("run", "--help")
    assert "--host-frames" in res.stdout and "--mix" in res.stdout


def _valid_scenarios():
    """Every valid scenario this file runs, by name."""
    return {"pmap": pmap_scenario()[0], "exact": EXACT, "ad_updates": AD_UPDATES,
            "config_base": CONFIG_BASE, "config_no_xo": CONFIG_NO_XO, "config_hi": CONFIG_HI,
            "config_small": CONFIG_SMALL, "empty": GOOD}


@pytest.mark.parametrize("name", list(_valid_scenarios()))
def test_rtl_backend_agrees_with_model(name):
    """`replay --backend rtl` prints what `--backend model` prints, plus cycles."""
    import io
    scenario = parse_scenario(_valid_scenarios()[name])
    model = replay(scenario, "model", out=io.StringIO())
    rtl = replay(scenario, "rtl", out=io.StringIO())
    assert rtl.mismatches == []
    assert len(rtl.lines) == len(model.lines)
    for m, r in zip(model.lines, rtl.lines):
        if r["op"] == "translate":
            assert isinstance(r.pop("cycles"), int) and "cycles" not in m
        assert r == m


def test_rtl_replay_cli_prints_cycles(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(EXACT))
    res = run_cli("replay", str(p), "--backend", "rtl", "--dram-latency", "5")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(l) for l in res.stdout.splitlines()]
    assert [l["op"] for l in lines] == ["translate", "read", "translate", "translate"]
    # a cold 4-level walk costs at least four DRAM round trips
    assert all(l["cycles"] >= 4 * 5 for l in lines if l["op"] == "translate")
