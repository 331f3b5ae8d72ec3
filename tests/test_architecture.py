"""The package's imports point down the stack of stages, and no module imports itself in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "noisystudent"

# Bottom to top. A module may import from its own stage and from stages below it, never above.
STAGES = ["foundation", "config", "data", "models", "evaluation", "inference", "training", "run", "ensemble", "report", "cli"]
FOUNDATION = {"errors", "atomic", "layout", "progress", "device", "safe_paths"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("__main__", "convert"):
        return None  # the lazy public face and the entry points (python -m noisystudent[.convert]) sit above everything
    return "foundation" if parts[1] in FOUNDATION else parts[1]


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every noisystudent module ``path`` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("noisystudent"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("noisystudent"))
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def test_every_module_belongs_to_a_known_stage():
    unknown = {m for m in import_graph() if stage_of(m) not in (None, *STAGES)}
    assert not unknown, f"modules outside the known stages: {sorted(unknown)}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    upward = []
    for module, targets in graph.items():
        source = stage_of(module)
        for target in targets:
            if source is None or stage_of(target) is None:
                continue
            if STAGES.index(stage_of(target)) > STAGES.index(source):
                upward.append(f"{module} -> {target}")
    return sorted(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Cycles between modules; a sub-package __init__ re-exporting its own modules is not counted."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state and nxt in graph:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return [c for c in cycles if not any(_is_package_init(part) for part in c.split(" -> "))]


def _is_package_init(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def test_imports_point_down_the_stack():
    upward = upward_imports(import_graph())
    assert not upward, "imports that point up the stack:\n" + "\n".join(upward)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_catch_what_they_look_for():
    graph = import_graph()
    assert "noisystudent.config.run_config" in graph["noisystudent.training.trainer"]  # real imports are seen
    assert upward_imports({"noisystudent.data.cache": {"noisystudent.run.pipeline"}}) == ["noisystudent.data.cache -> noisystudent.run.pipeline"]
    assert find_cycles({"noisystudent.x.a": {"noisystudent.x.b"}, "noisystudent.x.b": {"noisystudent.x.a"}}) == [
        "noisystudent.x.a -> noisystudent.x.b -> noisystudent.x.a"]
