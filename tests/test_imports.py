"""No import cycles between k15's packages.

A node is a subpackage (``k15.data``, ``k15.reward``, …) or a top-level module (``k15.policy``);
an edge a ``import``/``from … import`` anywhere in a file (inside functions too: they are
dependencies all the same). Layers read bottom up, so each package can be read, tested and
replaced without the ones above it: a cycle means two packages are one in disguise.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def package_of(module: str, root: Path) -> str:
    """``k15.data.shards`` → ``k15.data``; ``k15.policy`` → ``k15.policy``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if (root / parts[0] / (parts[1] if len(parts) > 1 else "")).is_dir() else module


def import_edges(root: Path, package: str) -> dict[tuple[str, str], str]:
    """(importing node, imported node) → the first ``file:line`` that makes the edge."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted((root / package).rglob("*.py")):
        source = package_of(".".join(path.relative_to(root).with_suffix("").parts), root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from k15 import data` imports the package k15.data
                targets = (
                    [f"{node.module}.{alias.name}" for alias in node.names] if node.module == package else [node.module]
                )
            else:
                continue
            for target in targets:
                if target.split(".")[0] != package or "." not in target:
                    continue
                imported = package_of(target, root)
                if imported != source:
                    edges.setdefault((source, imported), f"{path.relative_to(root)}:{node.lineno}")
    return edges


def cycles(edges: dict[tuple[str, str], str]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(component: list[str], edges: dict[tuple[str, str], str]) -> str:
    inside = [f"{a} → {b} ({where})" for (a, b), where in sorted(edges.items()) if a in component and b in component]
    return "; ".join(inside)


def test_k15_packages_import_each_other_in_one_direction_only():
    edges = import_edges(ROOT, "k15")
    assert ("k15.rollout", "k15.reward") in edges  # the graph is read (the callback scores rewards)
    found = cycles(edges)
    assert not found, "import cycles between packages: " + " | ".join(describe(c, edges) for c in found)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # a planted cycle between two packages, one side inside a function
        (
            {"pkg/a/x.py": "from pkg.b.y import f\n", "pkg/b/y.py": "def f():\n    from pkg.a import x\n"},
            [["pkg.a", "pkg.b"]],
        ),
        # a three-package ring through a top-level module and `from pkg import c`
        (
            {"pkg/a/x.py": "import pkg.top\n", "pkg/top.py": "from pkg import c\n", "pkg/c/z.py": "import pkg.a.x\n"},
            [["pkg.a", "pkg.c", "pkg.top"]],
        ),
        # one direction only, and imports within a package: no cycle
        (
            {
                "pkg/a/x.py": "from pkg.a.w import g\nimport pkg.b.y\n",
                "pkg/a/w.py": "from pkg.a import x\n",
                "pkg/b/y.py": "import os\n",
            },
            [],
        ),
    ],
)
def test_cycle_finder_on_planted_packages(tmp_path, files, expected):
    write(tmp_path, files)
    assert cycles(import_edges(tmp_path, "pkg")) == expected
