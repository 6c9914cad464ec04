"""The package's shape: stage subpackages import downwards only (no cycle, counting the
imports inside functions), and no module reaches into another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys

from ssae_steps.files import PACKAGE_DIR, imported_modules, module_file


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name in modules():
        source = module_file(name)
        assert source is not None
        # A package's own __init__ is imported by each of its modules; that is not a cycle.
        graph[name] = {m for m in imported_modules(name, source, PACKAGE_DIR) if not name.startswith(m + ".")}
        graph[name].discard(name)
    return graph


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40
    assert find_cycle(graph) is None, find_cycle(graph)


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = import_graph()
    graph["ssae_steps.config"] = {*graph["ssae_steps.config"], "ssae_steps.sae.train"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]


def test_no_private_name_is_imported_across_modules() -> None:
    private = []
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssae_steps"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []


def test_config_modules_import_without_torch() -> None:
    """What the Snakefile imports must load with torch unavailable."""
    configs = [f"ssae_steps.{c.parent.name}.config" for c in sorted(PACKAGE_DIR.glob("*/config.py"))]
    assert len(configs) == 7
    code = "import sys; sys.modules['torch'] = None\n" + "".join(f"import {c}\n" for c in configs)
    code += "import ssae_steps.model, ssae_steps.sae.runs\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
