"""Every call goes down: promptkit's modules import one another without a cycle, counting the
imports made inside functions (imports for type checking only aside), and each wing imports
only the wings below it."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "promptkit"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The promptkit modules that ``name`` (at ``path``) imports, anywhere in its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


# The wings from the bottom up; a wing imports its own level and the levels below, and the
# wings of one level (text and vision) do not import each other.
LEVELS = [
    {"errors"},
    {"core", "backbone", "tasks", "catalog"},
    {"text", "vision"},
    {"modalities"},
    {"serving"},
    {"runs"},
    {"api", "cli", "__main__", ""},
]
SIDE_BY_SIDE = {"text", "vision"}


def import_graph() -> nx.DiGraph:
    modules = module_names()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in imported(path, name, modules))
    return graph


def level(module: str) -> int:
    wing = module.split(".")[1] if "." in module else ""
    return next(number for number, wings in enumerate(LEVELS) if wing in wings)


def test_no_module_imports_its_way_back_to_itself():
    graph = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_each_wing_imports_only_the_wings_below_it():
    def upward(source: str, target: str) -> bool:
        wings = {source.split(".")[1], target.split(".")[1]}
        return level(target) > level(source) or (len(wings) == 2 and wings <= SIDE_BY_SIDE)

    wrong = sorted(f"{a} -> {b}" for a, b in import_graph().edges if upward(a, b))
    assert not wrong, f"imports that go up or sideways: {wrong}"
