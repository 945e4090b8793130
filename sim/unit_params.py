"""The unit's parameters, read from its constructors' source (no Amaranth import).

The command-line options for the unit's parameters are not written out
anywhere: they are the keyword-only parameters with an integer or boolean
default of the hardware classes' ``__init__`` (``hw.top.PageWalkUnit`` and,
for Verilog and synthesis, ``hw.axi_top.EptWalkerAxi``), with the first
sentence of each one's entry in the class docstring's numpydoc "Parameters"
section as its help.  Reading them with :mod:`ast` instead of importing the
classes keeps ``python -m sim --help`` and a run on a cached Verilator build
from loading Amaranth; the constructor stays the one place that checks the
values (:func:`check`).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Param", "UNIT", "AXI_TOP", "NATIVE_TOP", "parameters", "defaults", "check", "check_instance",
           "CACHE_GEOMETRY"]

HW = Path(__file__).resolve().parents[1] / "hw"

# (module in hw/, class): the native-port unit and the AXI top
UNIT = ("top", "PageWalkUnit")
NATIVE_TOP = ("top", "PageWalkUnit")
AXI_TOP = ("axi_top", "EptWalkerAxi")


@dataclass(frozen=True)
class Param:
    name: str               # the constructor's keyword
    default: int | bool
    help: str = ""
    owner: str = ""         # the class that declares it

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def kind(self) -> type:
        # bool before int: True is an int too
        return bool if isinstance(self.default, bool) else int


def CACHE_GEOMETRY(name: str) -> bool:
    """The parameters that size a cache: meaningless with ``caches=False``."""
    return name.startswith("tlb_") or name.endswith("_cache")


@functools.cache
def _module(name: str) -> ast.Module:
    path = HW / f"{name}.py"
    return ast.parse(path.read_text(), str(path))


def _class(module: str, cls: str) -> ast.ClassDef:
    for node in _module(module).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return node
    raise LookupError(f"hw/{module}.py has no class {cls}")


def _resolve(module: str, name: str) -> tuple[str, str]:
    """Where the class ``name`` used in hw/``module`` is defined (same module or ``from .x import``)."""
    for node in _module(module).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, name
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for a in node.names:
                if (a.asname or a.name) == name:
                    return node.module, a.name
    raise LookupError(f"hw/{module}.py: cannot find class {name}")


def _doc_params(cls: ast.ClassDef) -> dict[str, str]:
    """name -> the first sentence of its numpydoc entry ("name : type", then indented text)."""
    lines = (ast.get_docstring(cls) or "").splitlines()
    out: dict[str, list[str]] = {}
    names: list[str] = []
    inside = False
    for i, line in enumerate(lines):
        title = i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"} and line.strip()
        if title:
            inside = line.strip() == "Parameters"
            continue
        if not inside or set(line.strip()) == {"-"}:
            continue
        if line and not line[0].isspace():
            names = [n.strip() for n in line.split(":")[0].split(",")]
            for n in names:
                out[n] = []
        elif line.strip():
            for n in names:
                out[n].append(line.strip())
    return {n: " ".join(t).split(". ")[0].rstrip(".") for n, t in out.items()}


def _init(cls: ast.ClassDef) -> ast.FunctionDef | None:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return node
    return None


@functools.cache
def parameters(module: str, cls: str) -> tuple[Param, ...]:
    """Keyword-only constructor parameters with an int or bool default, in order.

    A class without its own ``__init__`` has its first base's; a ``**params``
    that a class passes on says to whom with ``forwards_params_to = Class``.
    """
    node = _class(module, cls)
    init = _init(node)
    if init is None:
        base = node.bases[0]
        if not isinstance(base, ast.Name):
            raise LookupError(f"hw/{module}.py: {cls} has no __init__ and no plain base")
        return parameters(*_resolve(module, base.id))
    docs = _doc_params(node)
    out = []
    for arg, default in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True):
        if isinstance(default, ast.Constant) and isinstance(default.value, (bool, int)):
            out.append(Param(arg.arg, default.value, docs.get(arg.arg, ""), cls))
    if init.args.kwarg is not None:
        for stmt in node.body:
            if (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Name)
                    and any(isinstance(t, ast.Name) and t.id == "forwards_params_to" for t in stmt.targets)):
                out += parameters(*_resolve(module, stmt.value.id))
    return tuple(out)


def defaults(module: str = UNIT[0], cls: str = UNIT[1]) -> dict:
    """Every parameter with its default value."""
    return {q.name: q.default for q in parameters(module, cls)}


def check(params: dict, module: str = UNIT[0], cls: str = UNIT[1]) -> None:
    """Let the constructor judge ``params``: its ValueError, unchanged (this imports Amaranth)."""
    import importlib
    check_instance(getattr(importlib.import_module(f"hw.{module}"), cls), params)


def check_instance(cls, params: dict):
    """``cls(**params)``, built only to be checked or inspected: neither it nor the
    blocks its constructor made will be elaborated, so Amaranth is told not to
    warn about them (once per block) when they are collected."""
    from amaranth.hdl import Elaboratable
    top = cls(**params)
    todo, seen = [top], set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Elaboratable):
            obj._MustUse__silence = True
            todo += list(vars(obj).values())
        elif isinstance(obj, (list, tuple)):
            todo += obj
        elif isinstance(obj, dict):
            todo += obj.values()
    return top
