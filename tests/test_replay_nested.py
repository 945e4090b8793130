"""The replay contract's nested extension: round trips through the CLI, the
exact output format, and every new error class."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.formats import EPT_R, Access, EptConfig, Eptp, Level
from model.guest import PG_A, PG_D, GuestRegs
from model.nested import translate_la
from model.physmem import PhysicalMemory
from sim.cosim.scenario import ScenarioError, parse_scenario
from sim.verify.replay import replay

from nested_util import World

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


# EPT maps guest pages 0x10-0x13 (the guest's tables) and 0x20 to HPA 0x400000 + page;
# the guest maps LA 0 -> GPA 0x20000 (RW, user) and LA 0x1000 -> 0x21000 (read-only; not in EPT)
EPT_PT = {i: (0x400000 + i * 0x1000) | 0x37 for i in (0x10, 0x11, 0x12, 0x13, 0x20)}
EXACT = {
    "eptp": "0x10001e",
    "guest": {"cr3": "0x10000"},
    "memory": [{"addr": "0x100000", "value": "0x101007"}, {"addr": "0x101000", "value": "0x102007"},
               {"addr": "0x102000", "value": "0x103007"}]
    + [{"addr": hex(0x103000 + i * 8), "value": hex(v)} for i, v in EPT_PT.items()]
    + [{"addr": "0x410000", "value": "0x11007"}, {"addr": "0x411000", "value": "0x12007"},
       {"addr": "0x412000", "value": "0x13007"}, {"addr": "0x413000", "value": "0x20007"},
       {"addr": "0x413008", "value": "0x21005"}],
    "ops": [{"op": "translate_la", "la": "0x123", "access": "read"},
            {"op": "read", "addr": "0x413000"},
            {"op": "translate_la", "la": "0x1008", "access": "write", "user": True},
            {"op": "translate_la", "la": 4104, "access": "read"},
            {"op": "translate_la", "la": "0x2000", "access": "fetch"},
            {"op": "invvpid", "kind": "address", "la": "0x1000"},
            {"op": "translate_la", "la": "0x10", "access": "write", "user": True},
            {"op": "read", "addr": "0x413000"}],
}


def test_exact_output_format(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(EXACT))
    res = run_cli("replay", str(p), "--backend", "model")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert res.stdout.splitlines() == [
        '{"op": "translate_la", "la": "0x123", "access": "read", "user": false, "outcome": "ok", '
        '"gpa": "0x20123", "hpa": "0x420123", "page_size": 4096, "memtype": 6}',
        '{"op": "read", "addr": "0x413000", "value": "0x20027"}',
        '{"op": "translate_la", "la": "0x1008", "access": "write", "user": true, "outcome": "page_fault", '
        '"pf_error": "0x7"}',
        '{"op": "translate_la", "la": "0x1008", "access": "read", "user": false, "outcome": "violation", '
        '"gpa": "0x21008", "qual": "0x381"}',
        '{"op": "translate_la", "la": "0x2000", "access": "fetch", "user": false, "outcome": "page_fault", '
        '"pf_error": "0x10"}',
        '{"op": "translate_la", "la": "0x10", "access": "write", "user": true, "outcome": "ok", '
        '"gpa": "0x20010", "hpa": "0x420010", "page_size": 4096, "memtype": 6}',
        '{"op": "read", "addr": "0x413000", "value": "0x20067"}',
    ]


def big_scenario():
    """Two guest address spaces built by the test world, A/D on, with several outcomes."""
    w = World(ad=True)
    las = [0x1000, 0x7F00_0020_3000, 0xFFFF_8000_0040_0000, 0x4000_0000]
    w.guest_map(las[0], 0x50_0000)
    w.guest_map(las[1], 0x60_0000, level=Level.PDE, user=False)
    w.guest_map(las[2], 0x8000_0000, level=Level.PDPTE, rw=False)
    w.guest_map(las[3], 0x70_0000, ept=False)                       # final GPA not in EPT
    pml4_a = w.guest_pml4
    w.guest_pml4 = w.guest_table()                                  # a second process
    w.guest_map(las[0], 0x51_0000, xd=True)
    pml4_b = w.guest_pml4
    a = w.ept_leaf_addr(w.guest_entry_gpa(las[0], Level.PTE))
    w.mem.write(a, w.mem.peek(a) & ~0b110)                           # B's guest PT page: R only
    ops = []
    for cr3 in (pml4_a, pml4_b):
        ops.append({"op": "set_cr3", "cr3": hex(cr3)})
        for la in las + [0x2000]:
            for acc in ("read", "write", "fetch"):
                for user in (False, True):
                    ops.append({"op": "translate_la", "la": hex(la), "access": acc, "user": user})
        ops.append({"op": "invvpid", "kind": "single"})
    ops.append({"op": "invept", "kind": "global"})
    ops.append({"op": "invvpid", "kind": "all"})
    memory = [{"addr": hex(a), "value": hex(v)} for a, v in w.mem.nonzero_words()]
    return {"eptp": hex(w.eptp.encode()), "guest": {"cr3": hex(pml4_a), "vpid": 7},
            "memory": memory, "ops": ops}


def test_round_trip_matches_the_reference(tmp_path):
    data = big_scenario()
    p = tmp_path / "s.json"
    p.write_text(json.dumps(data))
    res = run_cli("replay", str(p), "--backend", "model")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    mem = PhysicalMemory()
    for m in data["memory"]:
        mem.write(int(m["addr"], 16), int(m["value"], 16))
    eptp = Eptp.decode(int(data["eptp"], 16))
    regs = GuestRegs(cr3=int(data["guest"]["cr3"], 16), vpid=7)
    want = []
    for op in data["ops"]:
        if op["op"] == "set_cr3":
            regs = regs.with_cr3(int(op["cr3"], 16))
        elif op["op"] == "translate_la":
            want.append(translate_la(mem, eptp, regs, int(op["la"], 16), Access.parse(op["access"]),
                                     op["user"], EptConfig()).to_json())
    assert lines == want
    kinds = {(x["outcome"], x.get("page_size")) for x in lines}
    assert {"ok", "page_fault", "violation"} <= {k for k, _ in kinds}
    assert {4096, 2097152, 1073741824} <= {s for _, s in kinds}


def test_guest_and_ept_ad_visible_to_later_reads():
    w = World(ad=True)
    w.guest_map(0x1000, 0x50_0000)
    pte = w.guest_entry_gpa(0x1000, Level.PTE)
    ept_leaf = w.ept_leaf_addr(pte)
    data = {"eptp": hex(w.eptp.encode()), "guest": {"cr3": hex(w.guest_pml4)},
            "memory": [{"addr": hex(a), "value": hex(v)} for a, v in w.mem.nonzero_words()],
            "ops": [{"op": "translate_la", "la": "0x1000", "access": "write"},
                    {"op": "read", "addr": hex(w.hpa_of(pte))}, {"op": "read", "addr": hex(ept_leaf)}]}
    lines = replay(parse_scenario(data), "model", out=io.StringIO()).lines
    assert int(lines[1]["value"], 16) & (PG_A | PG_D) == PG_A | PG_D
    assert int(lines[2]["value"], 16) & 0x300 == 0x300          # EPT A and D on the guest PT page's leaf


def test_paging_false_and_flags():
    w = World()
    w.ept_map(0x5000, 0x9000, perms=EPT_R)
    data = {"eptp": hex(w.eptp.encode()),
            "guest": {"cr3": 0, "paging": False, "wp": False, "nxe": False, "vpid": "0x10"},
            "memory": [{"addr": hex(a), "value": hex(v)} for a, v in w.mem.nonzero_words()],
            "ops": [{"op": "translate_la", "la": "0x5008", "access": "read"},
                    {"op": "translate_la", "la": "0x5008", "access": "write", "user": True}]}
    lines = replay(parse_scenario(data), "model", out=io.StringIO()).lines
    assert lines[0]["gpa"] == "0x5008" and lines[0]["hpa"] == "0x9008" and lines[0]["page_size"] == 4096
    assert lines[1] == {"op": "translate_la", "la": "0x5008", "access": "write", "user": True,
                        "outcome": "violation", "gpa": "0x5008", "qual": hex(0x2 | 0x8 | 0x780)}


G = {"eptp": "0x10005e", "memory": [], "guest": {"cr3": "0x1000"}, "ops": []}
NO_GUEST = {"eptp": "0x10005e", "memory": [], "ops": []}
BAD = [
    ("guest_not_object", dict(G, guest=5), "guest: expected an object"),
    ("guest_missing_cr3", dict(G, guest={"paging": True}), "missing field 'cr3'"),
    ("guest_bad_cr3_number", dict(G, guest={"cr3": "0xZZ"}), "is not a number"),
    ("guest_cr3_beyond_maxphyaddr", dict(G, guest={"cr3": hex(1 << 47)}), "bad cr3"),
    ("guest_unknown_field", dict(G, guest={"cr3": 0, "pcid": 1}), "unknown field 'pcid'"),
    ("guest_bad_paging", dict(G, guest={"cr3": 0, "paging": 1}), "paging"),
    ("guest_bad_wp", dict(G, guest={"cr3": 0, "wp": "yes"}), "wp"),
    ("guest_vpid_zero", dict(G, guest={"cr3": 0, "vpid": 0}), "vpid"),
    ("guest_vpid_big", dict(G, guest={"cr3": 0, "vpid": 0x10000}), "vpid"),
    ("translate_la_without_guest", dict(NO_GUEST, ops=[{"op": "translate_la", "la": 0, "access": "read"}]),
     "needs a \"guest\""),
    ("set_cr3_without_guest", dict(NO_GUEST, ops=[{"op": "set_cr3", "cr3": 0}]), "needs a \"guest\""),
    ("invvpid_without_guest", dict(NO_GUEST, ops=[{"op": "invvpid", "kind": "all"}]), "needs a \"guest\""),
    ("la_missing", dict(G, ops=[{"op": "translate_la", "access": "read"}]), "missing field 'la'"),
    ("la_not_canonical", dict(G, ops=[{"op": "translate_la", "la": hex(1 << 47), "access": "read"}]),
     "not canonical"),
    ("la_paging_off_too_big", dict(G, guest={"cr3": 0, "paging": False},
                                   ops=[{"op": "translate_la", "la": hex(1 << 48), "access": "read"}]),
     "out of range"),
    ("la_bad_access", dict(G, ops=[{"op": "translate_la", "la": 0, "access": "exec"}]), "access"),
    ("la_bad_user", dict(G, ops=[{"op": "translate_la", "la": 0, "access": "read", "user": 3}]), "user"),
    ("la_unknown_field", dict(G, ops=[{"op": "translate_la", "la": 0, "access": "read", "cpl": 3}]),
     "unknown field 'cpl'"),
    ("set_cr3_bad", dict(G, ops=[{"op": "set_cr3", "cr3": hex(1 << 50)}]), "bad cr3"),
    ("set_cr3_missing", dict(G, ops=[{"op": "set_cr3"}]), "missing field 'cr3'"),
    ("invvpid_bad_kind", dict(G, ops=[{"op": "invvpid", "kind": "global"}]), "kind"),
    ("invvpid_address_without_la", dict(G, ops=[{"op": "invvpid", "kind": "address"}]), "missing field 'la'"),
    ("invvpid_la_not_for_single", dict(G, ops=[{"op": "invvpid", "kind": "single", "la": 0}]),
     "only for invvpid"),
    ("invvpid_la_not_canonical", dict(G, ops=[{"op": "invvpid", "kind": "address", "la": hex(1 << 47)}]),
     "not canonical"),
]


@pytest.mark.parametrize("name,content,needle", BAD, ids=[b[0] for b in BAD])
def test_error_classes_in_process(name, content, needle):
    with pytest.raises(ScenarioError, match=None) as e:
        parse_scenario(content)
    assert needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,content,needle", [BAD[1], BAD[4], BAD[9], BAD[13]], ids=lambda x: str(x)[:30])
def test_error_classes_cli(tmp_path, name, content, needle):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(dict(content, ops=content["ops"] + [{"op": "read", "addr": 0}])))
    res = run_cli("replay", str(p))
    assert res.returncode == 2 and res.stdout == ""
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in res.stderr


def test_a_guest_without_nested_ops_still_runs_everywhere():
    data = dict(EXACT, ops=[{"op": "read", "addr": "0x413000"}])
    assert parse_scenario(data).nested_ops == []
    assert replay(parse_scenario(data), "model", out=io.StringIO()).lines[0]["value"] == "0x20007"


def _without_cycles(lines):
    assert all(isinstance(x["cycles"], int) and x["cycles"] >= 1 for x in lines if x["op"] == "translate_la")
    return [{k: v for k, v in x.items() if k != "cycles"} for x in lines]


def test_rtl_cli_prints_the_models_lines_plus_cycles(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(EXACT))
    model = run_cli("replay", str(p), "--backend", "model")
    rtl = run_cli("replay", str(p), "--backend", "rtl")
    assert rtl.returncode == 0 and rtl.stderr == "", rtl.stderr
    lines = [json.loads(x) for x in rtl.stdout.splitlines()]
    assert [list(x)[:-1] if "cycles" in x else list(x) for x in lines] == \
        [list(json.loads(x)) for x in model.stdout.splitlines()]          # cycles last, the rest in order
    assert _without_cycles(lines) == [json.loads(x) for x in model.stdout.splitlines()]
    assert not any("cycles" in x for x in lines if x["op"] == "read")


NESTED_EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.json")
                         if "guest" in json.loads(p.read_text()))


@pytest.mark.parametrize("name", ["exact", "big"] + [p.name for p in NESTED_EXAMPLES])
def test_model_and_rtl_agree(name):
    if name == "exact":
        data = EXACT
    elif name == "big":
        data = big_scenario()
    else:
        data = json.loads((ROOT / "examples" / name).read_text())
    want = replay(parse_scenario(data), "model", out=io.StringIO()).lines
    got = replay(parse_scenario(data), "rtl", out=io.StringIO())
    assert got.mismatches == []
    assert _without_cycles(got.lines) == want
