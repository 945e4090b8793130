"""Replay scenarios: strict parsing of the JSON contract into checked objects.

A scenario is validated completely before anything runs, so a bad one is
refused with a single :class:`ScenarioError` line and never half-executed.
See README "Replay contract" for the format.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.formats import GPA_BITS, Access, EptConfig, Eptp, EptpError
from model.guest import GuestRegs, GuestRegsError, is_canonical

__all__ = ["ScenarioError", "Scenario", "Op", "NESTED_OPS", "parse_number", "load_scenario", "parse_scenario"]

U64_MAX = (1 << 64) - 1


class ScenarioError(ValueError):
    """A malformed scenario; the message names the file, field and value."""


@dataclass(frozen=True)
class Op:
    kind: str                    # write | read | invept | translate | translate_la | set_cr3 | invvpid
    addr: int | None = None
    value: int | None = None
    gpa: int | None = None
    access: Access | None = None
    invept: str | None = None    # single | global
    la: int | None = None        # translate_la, invvpid "address"
    user: bool = False           # translate_la: CPL 3
    cr3: int | None = None       # set_cr3
    invvpid: str | None = None   # address | single | all


# the ops of the nested extension: they need a "guest" (and a backend that walks guest tables)
NESTED_OPS = ("translate_la", "set_cr3", "invvpid")


@dataclass
class Scenario:
    eptp: int
    config: EptConfig
    memory: list[tuple[int, int]] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    guest: GuestRegs | None = None

    @property
    def nested_ops(self) -> list[Op]:
        """The ops of the nested extension (an RTL backend refuses them, for now)."""
        return [op for op in self.ops if op.kind in NESTED_OPS]

    @property
    def eptp_fields(self) -> Eptp:
        return Eptp.decode(self.eptp, self.config)


def parse_number(v: Any, where: str, limit: int = U64_MAX) -> int:
    """A JSON integer or a string "0x..."/decimal, in 0..limit."""
    if isinstance(v, bool):
        raise ScenarioError(f"{where}: {json.dumps(v)} is not a number")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str):
        text = v.strip()
        try:
            if text.lower().startswith("0x"):
                if not text[2:] or not all(c in "0123456789abcdefABCDEF_" for c in text[2:]):
                    raise ValueError
                n = int(text, 16)
            else:
                if not text.isdigit():
                    raise ValueError
                n = int(text, 10)
        except ValueError:
            raise ScenarioError(f"{where}: {json.dumps(v)} is not a number "
                                f"(use an integer, \"0x...\" or a decimal string)") from None
    else:
        raise ScenarioError(f"{where}: {json.dumps(v)} is not a number")
    if n < 0:
        raise ScenarioError(f"{where}: {n} is negative")
    if n > limit:
        raise ScenarioError(f"{where}: {n:#x} is out of range (maximum {limit:#x})")
    return n


def _obj(v: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(v, dict):
        raise ScenarioError(f"{where}: expected an object, got {type(v).__name__}")
    for k in v:
        if k not in required and k not in optional:
            raise ScenarioError(f"{where}: unknown field {k!r}")
    for k in sorted(required):
        if k not in v:
            raise ScenarioError(f"{where}: missing field {k!r}")
    return v


def _addr(v: Any, where: str, config: EptConfig) -> int:
    a = parse_number(v, where)
    if a >= 1 << config.maxphyaddr:
        raise ScenarioError(f"{where}: address {a:#x} is beyond MAXPHYADDR {config.maxphyaddr}")
    if a & 7:
        raise ScenarioError(f"{where}: address {a:#x} is not 8-byte aligned")
    return a


_OP_FIELDS = {
    "write": {"op", "addr", "value"},
    "read": {"op", "addr"},
    "invept": {"op", "kind"},
    "translate": {"op", "gpa", "access"},
    "translate_la": {"op", "la", "access"},
    "set_cr3": {"op", "cr3"},
    "invvpid": {"op", "kind"},
}
_OP_OPTIONAL = {"translate_la": {"user"}, "invvpid": {"la"}}


def _access(v: Any, where: str) -> Access:
    if v not in ("read", "write", "fetch"):
        raise ScenarioError(f"{where}: {json.dumps(v)} is not \"read\", \"write\" or \"fetch\"")
    return Access.parse(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ScenarioError(f"{where}: {json.dumps(v)} is not true or false")
    return v


def _cr3(v: Any, where: str, config: EptConfig) -> int:
    cr3 = parse_number(v, where)
    try:
        GuestRegs(cr3=cr3).check(config.maxphyaddr)
    except GuestRegsError as e:
        raise ScenarioError(f"{where}: bad cr3: {e}") from None
    return cr3


def _la(v: Any, where: str, guest: GuestRegs) -> int:
    la = parse_number(v, where)
    if guest.paging and not is_canonical(la):
        raise ScenarioError(f"{where}: linear address {la:#x} is not canonical (bits 63:47 must be equal)")
    if not guest.paging and la >= 1 << GPA_BITS:
        raise ScenarioError(f"{where}: linear address {la:#x} is out of range: with paging false it is "
                            f"the GPA (maximum {(1 << GPA_BITS) - 1:#x})")
    return la


def _guest(v: Any, where: str, config: EptConfig) -> GuestRegs:
    g = _obj(v, where, {"cr3"}, {"paging", "wp", "nxe", "vpid"})
    cr3 = _cr3(g["cr3"], f"{where}.cr3", config)
    flags = {k: _bool(g[k], f"{where}.{k}") for k in ("paging", "wp", "nxe") if k in g}
    vpid = parse_number(g.get("vpid", 1), f"{where}.vpid", 0xFFFF)
    if vpid == 0:
        raise ScenarioError(f"{where}.vpid: 0 is the host's VPID (use 1..0xffff)")
    return GuestRegs(cr3=cr3, vpid=vpid, **flags)


def _op(v: Any, where: str, config: EptConfig, guest: GuestRegs | None = None) -> Op:
    if not isinstance(v, dict):
        raise ScenarioError(f"{where}: expected an object, got {type(v).__name__}")
    if "op" not in v:
        raise ScenarioError(f"{where}: missing field 'op'")
    kind = v["op"]
    if kind not in _OP_FIELDS:
        raise ScenarioError(f"{where}.op: unknown op {json.dumps(kind)} "
                            f"(expected one of {', '.join(_OP_FIELDS)})")
    _obj(v, where, _OP_FIELDS[kind], _OP_OPTIONAL.get(kind, set()))
    if kind in NESTED_OPS:
        if guest is None:
            raise ScenarioError(f"{where}: op {kind!r} needs a \"guest\" in the scenario (none given)")
        if kind == "translate_la":
            user = _bool(v["user"], f"{where}.user") if "user" in v else False
            return Op(kind, la=_la(v["la"], f"{where}.la", guest),
                      access=_access(v["access"], f"{where}.access"), user=user)
        if kind == "set_cr3":
            return Op(kind, cr3=_cr3(v["cr3"], f"{where}.cr3", config))
        if v["kind"] not in ("address", "single", "all"):
            raise ScenarioError(f"{where}.kind: {json.dumps(v['kind'])} is not \"address\", "
                                f"\"single\" or \"all\"")
        if v["kind"] == "address":
            if "la" not in v:
                raise ScenarioError(f"{where}: missing field 'la' (invvpid \"address\" needs one)")
            la = parse_number(v["la"], f"{where}.la")
            if not is_canonical(la):
                raise ScenarioError(f"{where}.la: linear address {la:#x} is not canonical")
            return Op(kind, invvpid="address", la=la)
        if "la" in v:
            raise ScenarioError(f"{where}: field 'la' is only for invvpid \"address\"")
        return Op(kind, invvpid=v["kind"])
    if kind == "write":
        return Op(kind, addr=_addr(v["addr"], f"{where}.addr", config),
                  value=parse_number(v["value"], f"{where}.value"))
    if kind == "read":
        return Op(kind, addr=_addr(v["addr"], f"{where}.addr", config))
    if kind == "invept":
        if v["kind"] not in ("single", "global"):
            raise ScenarioError(f"{where}.kind: {json.dumps(v['kind'])} is not \"single\" or \"global\"")
        return Op(kind, invept=v["kind"])
    gpa = parse_number(v["gpa"], f"{where}.gpa", (1 << GPA_BITS) - 1)
    if v["access"] not in ("read", "write", "fetch"):
        raise ScenarioError(f"{where}.access: {json.dumps(v['access'])} is not "
                            f"\"read\", \"write\" or \"fetch\"")
    return Op(kind, gpa=gpa, access=Access.parse(v["access"]))


def parse_scenario(data: Any, name: str = "scenario") -> Scenario:
    top = _obj(data, name, {"eptp", "memory", "ops"}, {"config", "guest"})
    cfg = _obj(top.get("config", {}), f"{name}: config", set(), {"maxphyaddr", "execute_only"})
    mpa = cfg.get("maxphyaddr", 46)
    if isinstance(mpa, bool) or not isinstance(mpa, int):
        raise ScenarioError(f"{name}: config.maxphyaddr: {json.dumps(mpa)} is not an integer")
    xo = cfg.get("execute_only", True)
    if not isinstance(xo, bool):
        raise ScenarioError(f"{name}: config.execute_only: {json.dumps(xo)} is not true or false")
    try:
        config = EptConfig(maxphyaddr=mpa, execute_only=xo)
    except ValueError as e:
        raise ScenarioError(f"{name}: config: {e}") from None
    eptp = parse_number(top["eptp"], f"{name}: eptp")
    try:
        Eptp.decode(eptp, config)
    except EptpError as e:
        raise ScenarioError(f"{name}: eptp: invalid EPTP refused: {e}") from None
    if not isinstance(top["memory"], list):
        raise ScenarioError(f"{name}: memory: expected a list, got {type(top['memory']).__name__}")
    memory = []
    for i, m in enumerate(top["memory"]):
        where = f"{name}: memory[{i}]"
        _obj(m, where, {"addr", "value"})
        memory.append((_addr(m["addr"], f"{where}.addr", config),
                       parse_number(m["value"], f"{where}.value")))
    guest = _guest(top["guest"], f"{name}: guest", config) if "guest" in top else None
    if not isinstance(top["ops"], list):
        raise ScenarioError(f"{name}: ops: expected a list, got {type(top['ops']).__name__}")
    ops = [_op(o, f"{name}: ops[{i}]", config, guest) for i, o in enumerate(top["ops"])]
    return Scenario(eptp=eptp, config=config, memory=memory, ops=ops, guest=guest)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are unique (json.loads keeps the last of a repeated key silently)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; ``-`` reads standard input."""
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    except OSError as e:
        raise ScenarioError(f"{name}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{name}: not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise ScenarioError(f"{name}: key {e} appears twice in one object") from None
    except json.JSONDecodeError as e:
        raise ScenarioError(f"{name}: bad JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return parse_scenario(data, name)
