"""Imports point down: from a stage to what it needs, never back up into config.py's composition."""

from __future__ import annotations

import ast
from pathlib import Path

import med42_ray

PACKAGE = Path(med42_ray.__file__).resolve().parent
# The command line composes the config and hands it to the stages: only it may import config.py.
MAY_IMPORT_CONFIG = {"med42_ray.cli"} | {f"med42_ray.{p.parent.name}.cli" for p in PACKAGE.glob("*/cli.py")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _runtime_imports(tree: ast.AST) -> set[str]:
    """Every med42_ray module imported outside `if TYPE_CHECKING:`, at any depth (late imports too)."""
    found, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("med42_ray")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("med42_ray"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
        stack.extend(ast.iter_child_nodes(node))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _runtime_imports(ast.parse(path.read_text())) if m in modules and m != name}
            for name, path in modules.items()}


def test_only_the_command_line_imports_the_config_composition():
    importers = {name for name, deps in _graph().items() if "med42_ray.config" in deps}
    assert importers <= MAY_IMPORT_CONFIG, sorted(importers - MAY_IMPORT_CONFIG)


def test_nothing_config_imports_leads_back_to_it():
    graph = _graph()
    seen, stack = set(), list(graph["med42_ray.config"])
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(graph.get(name, ()))
    assert "med42_ray.config" not in seen
    assert {"med42_ray.errors", "med42_ray.paths"} <= seen  # the leaves it shares with the stages


def test_the_leaves_import_nothing_of_the_package():
    graph = _graph()
    assert graph["med42_ray.errors"] == graph["med42_ray.paths"] == set()
