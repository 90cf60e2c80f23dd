"""cgctl's import graph, read from the source with ast (every ``import`` statement, at module
level and inside functions): no cycle, and imports point from the entry points down to the
model (docs/architecture.md), never back up."""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(ROOT, "cgctl")

ENTRY_POINTS = ("cli", "service", "hook")
# start/: the applier of one guest start, run by the hook and by the service (both import it)
LAYERS = ("model", "cgroup", "host", "core", "start", *ENTRY_POINTS)  # packages under cgctl/
# what each layer must not import (the top-level modules, consts, errors, config, virt,
# wire..., have no rule here: only the cycle test sees them)
FORBIDDEN = {
    "model": {"cgroup", "host", "core", "start", *ENTRY_POINTS},
    "cgroup": {"core", "start", *ENTRY_POINTS},
    "core": {"start", *ENTRY_POINTS},
    "host": {"start", *ENTRY_POINTS},  # (host -> core: host/udevwatch.py reads profiles)
    "start": set(ENTRY_POINTS),
    "cli": set(),  # it dispatches `cgctl daemon` and `cgctl hook` to the service and the hook
    "service": {"cli", "hook"},
    "hook": {"cli", "service"},
}

# Known exceptions found when this test was written, owned elsewhere : each is
# (importer, imported). Remove a line when its import goes; the test fails on a stale one.
KNOWN_CYCLE_EDGES: Set[Tuple[str, str]] = set()
KNOWN_LAYER_EDGES: Set[Tuple[str, str]] = set()


def modules() -> Dict[str, str]:
    """Dotted module name → file, for every .py under cgctl/ (a package is its __init__)."""
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel.pop()
                out[".".join(rel)] = os.path.join(d, f)
    return out


def imports_of(name: str, path: str, known: Dict[str, str]) -> Set[str]:
    """The cgctl modules ``name`` imports anywhere in its file. ``from P import x`` is the
    module P.x when there is one, else P itself."""
    is_pkg = path.endswith("__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import cgctl.x.y` names a module or its package
                t = t.rpartition(".")[0]
            if t.startswith("cgctl") and t != name:
                out.add(t)
    return out


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(g: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> str:
    """``cgctl.service.daemon`` → ``service``; a top-level module (``cgctl.wire``) → ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


def test_the_graph_is_read():
    g = graph()
    # a module-level and a function-level import, as written today
    assert "cgctl.config" in g["cgctl.service.daemon"]
    assert "cgctl.service.daemon" in g["cgctl.cli.main"]  # inside cmd_daemon
    assert "cgctl.wire" in g["cgctl.cli.fast"] and "cgctl.wire" in g["cgctl.service.cmdserver"]


def test_no_import_cycle():
    g = graph()
    for a, b in KNOWN_CYCLE_EDGES:
        assert b in g[a], f"known exception gone: {a} -> {b}; remove it from the list"
        g[a] = g[a] - {b}
    assert cycles(g) == []


def test_imports_point_down():
    wrong = sorted((a, b) for a, targets in graph().items() for b in targets
                   if layer(b) in FORBIDDEN.get(layer(a), ()))
    for edge in KNOWN_LAYER_EDGES:
        assert edge in wrong, f"known exception gone: {edge}; remove it from the list"
    assert [e for e in wrong if e not in KNOWN_LAYER_EDGES] == []


def test_the_checks_catch_what_they_are_for():
    """The rules themselves: a cycle and an upward import are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("cgctl.service.daemon") == "service" and layer("cgctl.wire") == ""
    assert "cli" in FORBIDDEN["service"] and "service" in FORBIDDEN["core"]
    assert "service" not in FORBIDDEN["cli"] and "hook" not in FORBIDDEN["cli"]
    assert "hook" in FORBIDDEN["start"] and "start" not in FORBIDDEN["service"]
