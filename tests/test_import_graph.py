"""The import graph of the ``dissect`` package has no cycle, counting every import: top-level,
inside functions and under ``if TYPE_CHECKING:`` (a name imported for typing tends to become a
runtime import later). Built from the source with ``ast``, independently of importing anything.

Edges: ``import a.b.c`` / ``from a.b.c import name`` give an edge to ``a.b.c`` (or to the
submodule ``a.b.c.name`` when ``name`` is one), and to every package ``__init__`` on the way
(``a``, ``a.b``) that is not one of the importing module's own packages: Python runs those
``__init__`` files, so a package that re-exports its submodules takes part in cycles; a
module's own parent packages are always initialised before it, which is not a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dissect"


def modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` of every module of the package."""
    out = {}
    for f in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _resolve(name: str, mods: dict) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, (f, is_pkg) in mods.items():
        base = m if is_pkg else m.rpartition(".")[0]
        own = {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = node.module or ""
                if node.level:  # relative import
                    pkg = base
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    src = f"{pkg}.{node.module}" if node.module else pkg
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src
                           for a in node.names]
            for t in targets:
                if t.split(".")[0] != PACKAGE:
                    continue
                r = _resolve(t, mods)
                if r is None:
                    continue
                parts = r.split(".")
                for dep in [r] + [".".join(parts[:i]) for i in range(1, len(parts))]:
                    if dep != m and dep not in own and dep in mods:
                        graph[m].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_cycles():
    """The checker itself, on hand-made graphs: a 2-cycle, a 3-cycle beside an acyclic part."""
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_every_kind_of_import():
    """Function-level and TYPE_CHECKING imports count: capture → backbones is typing-only,
    popout stage → models.base is inside a function, and a package import goes to the package."""
    g = import_graph()
    assert "dissect.backbones" in g["dissect.capture"]  # under TYPE_CHECKING
    assert "dissect.models.base" in g["dissect.stages.popout"]  # inside run_popout
    assert "dissect.models" in g["dissect.stages.popout"]  # the package __init__ runs too
    assert "dissect.stages" not in g["dissect.stages.popout"]  # its own package: no edge
    assert "dissect.preprocess" in g["dissect.backbones"]


def test_dissect_has_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "import cycles among dissect modules: " + "; ".join(
        " ↔ ".join(c) for c in found)


def test_the_models_package_imports_nothing_eagerly():
    """``dissect.models`` is a namespace for the model families: importing one submodule must
    not pull in the others (OpenCV of the classical models, torch of the readout)."""
    g = import_graph()
    assert g["dissect.models"] == set()
