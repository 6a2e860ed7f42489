"""The package layers: ``core`` below everything, ``pruners`` and ``eval`` on ``core`` only,
``runners`` on top; no import cycle between the project's modules (read from the source with
``ast``, top-level and function-level imports alike)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "pruners", "eval", "runners")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    found["run"] = ROOT / "run.py"
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from x import y`` counts ``x.y`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_lower_layers_do_not_import_upper_ones():
    """core imports no other project package; pruners and eval import only core (and themselves)."""
    allowed = {"core": {"core"}, "pruners": {"core", "pruners"}, "eval": {"core", "eval"}}
    bad = [f"{m} imports {t}" for m, targets in _graph().items() for t in targets
           if m.split(".")[0] in allowed and t.split(".")[0] not in allowed[m.split(".")[0]]]
    assert not bad, bad


def test_no_import_cycle():
    """No chain of imports between project modules leads back to where it started."""
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_graph_sees_real_imports():
    """The walker is not vacuous: the engine's known imports are found."""
    graph = _graph()
    assert {"core.walk", "pruners.base"} <= graph["runners.execution.engine"]
    assert "core.walk" in graph["eval.blockwise"]
