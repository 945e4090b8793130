"""The project's layering, read from the import statements with ``ast``.

Every import counts, module-level or inside a function: a cycle hidden
behind a local import is still a cycle.  The rules:

- no import cycle among the project's modules;
- ``model/`` imports nothing from ``hw/`` or ``sim/``; ``hw/`` nothing from
  ``model/`` or ``sim/`` (the golden model and the RTL stay independent);
- a backend (``sim/backends/``) never reaches the CLI or a campaign, not
  even through another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hw", "model", "sim")
# what a backend must never reach: the CLI and its shared options, the campaigns
CLI = ("sim.cli", "sim.__main__", "sim.options")
CAMPAIGNS = ("sim.verify", "sim.cosim.run", "sim.flows.bench")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    files = {module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports pkg.mod when that is a module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                           for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:       # `import a.b.c` of a non-module: its package
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(root: Path = ROOT) -> list[str]:
    graph = import_graph(root)
    found = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for name, deps in sorted(graph.items()):
        for d in sorted(deps):
            if under(name, ("model",)) and under(d, ("hw", "sim")):
                found.append(f"{name} imports {d}: model/ imports nothing of hw/ or sim/")
            if under(name, ("hw",)) and under(d, ("model", "sim")):
                found.append(f"{name} imports {d}: hw/ imports nothing of model/ or sim/")
        if under(name, ("sim.backends",)):
            for d in sorted(reachable(graph, name)):
                if under(d, CLI + CAMPAIGNS):
                    found.append(f"backend {name} reaches {d} (the CLI or a campaign)")
    return found


def test_the_tree_keeps_its_layering():
    assert violations() == []


def test_every_role_has_its_folder():
    graph = import_graph()
    for pkg in ("sim.cosim", "sim.backends", "sim.backends.verilator", "sim.flows", "sim.verify"):
        assert pkg in graph, pkg
    # the flat modules of old are gone: each lives where its role says
    flat = [p.stem for p in (ROOT / "sim").glob("*.py")]
    assert sorted(flat) == ["__init__", "__main__", "cli", "files", "options", "unit_params"]


def test_cycle_finder_finds_a_cycle_hidden_behind_a_local_import(tmp_path):
    (tmp_path / "sim").mkdir()
    for pkg in ("hw", "model"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "sim" / "__init__.py").write_text("")
    (tmp_path / "sim" / "a.py").write_text("from sim.b import x\n")
    (tmp_path / "sim" / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "model" / "m.py").write_text("import hw.top\n")
    (tmp_path / "hw" / "top.py").write_text("")
    found = violations(tmp_path)
    assert "import cycle: sim.a <-> sim.b" in found
    assert "model.m imports hw.top: model/ imports nothing of hw/ or sim/" in found


def test_a_backend_reaching_a_campaign_is_found(tmp_path):
    for d in ("hw", "model", "sim", "sim/backends", "sim/verify"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "sim" / "backends" / "fast.py").write_text("import sim.helper\n")
    (tmp_path / "sim" / "helper.py").write_text("from sim.verify import fuzz\n")
    (tmp_path / "sim" / "verify" / "fuzz.py").write_text("")
    assert violations(tmp_path) == ["backend sim.backends.fast reaches sim.verify.fuzz "
                                    "(the CLI or a campaign)"]
