"""The package's import graph: no circles between modules or sub-packages, and only the CLI reaches commands."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "transferkit").rglob("*.py"):
        name = ".".join(p.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path) -> set[str]:
    """Every ``transferkit`` module named by an import anywhere in the file (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n == "transferkit" or n.startswith("transferkit.")}


def _graph(unit) -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        src = unit(name)
        for target in _imports(path):
            while target not in mods and "." in target:  # `from pkg.mod import name`: the module
                target = target.rpartition(".")[0]
            dst = unit(target)
            if target in mods and dst != src and not src.startswith(dst + "."):
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_between_modules():
    assert _cycles(_graph(lambda m: m)) == []


def test_no_import_circles_between_subpackages():
    assert _cycles(_graph(lambda m: ".".join(m.split(".")[:2]))) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_cli_imports_commands():
    offenders = [
        name
        for name, path in _modules().items()
        if not name.startswith(("transferkit.commands", "transferkit.cli"))
        and any(t.startswith("transferkit.commands") for t in _imports(path))
    ]
    assert offenders == []


def test_no_module_outside_backbones_imports_an_adapter():
    """Callers use the Backbone interface; which adapter a backbone is stays inside transferkit.backbones."""
    adapters = (
        "transferkit.backbones.hf_vision",
        "transferkit.backbones.language",
        "transferkit.backbones.timm_vision",
    )
    offenders = [
        name
        for name, path in _modules().items()
        if not name.startswith("transferkit.backbones")
        and any(t.startswith(adapters) for t in _imports(path))
    ]
    assert offenders == []


def test_the_openmp_wait_policy_is_passive_before_torch_loads_unless_the_user_chose():
    import subprocess
    import sys

    code = (
        "import os, sys; import transferkit; "
        "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules); "
        "import transferkit.cli; print('torch' in sys.modules)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["PASSIVE", "False", "False"]  # set before torch is imported
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.split()[0] == "ACTIVE"
