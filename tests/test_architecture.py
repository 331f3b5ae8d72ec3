"""The package's imports point down the stack of stages, and no module imports itself in a circle.

A lower stage that reads attributes of an untyped argument depends on whoever
passes it, without an import this test could see; so in the lower stages every
parameter carries a type annotation, and the annotation's type is imported like
any other name (under ``if TYPE_CHECKING:`` too) and checked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "noisystudent"

# Bottom to top. A module may import from its own stage and from stages below it, never above.
STAGES = ["foundation", "config", "data", "models", "evaluation", "inference", "training", "run", "ensemble", "report", "experiment", "cli"]
FOUNDATION = {"errors", "atomic", "processes", "termination", "layout", "progress", "eta", "device", "safe_paths", "environment", "spreadsheet"}
# Stages whose every parameter is annotated, so that no object of a higher stage reaches them unseen.
TYPED_STAGES = ("foundation", "config", "data", "models", "evaluation", "inference", "training")


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


def unannotated_parameters(sources: dict[str, str]) -> list[str]:
    """``module.function(parameter)`` for each parameter without a type annotation in a module of TYPED_STAGES.

    ``sources`` maps module names to their code; self and cls need none.
    """
    missing = []
    for module, source in sources.items():
        if stage_of(module) not in TYPED_STAGES:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                    if arg is not None and arg.annotation is None and arg.arg not in ("self", "cls"):
                        missing.append(f"{module}.{node.name}({arg.arg})")
    return sorted(missing)


def test_imports_point_down_the_stack():
    upward = upward_imports(import_graph())
    assert not upward, "imports that point up the stack:\n" + "\n".join(upward)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_lower_stages_annotate_every_parameter():
    sources = {module_name(p): p.read_text() for p in PACKAGE.rglob("*.py")}
    missing = unannotated_parameters(sources)
    assert not missing, "parameters without a type annotation (a hidden dependency):\n" + "\n".join(missing)


def test_docs_architecture_lists_every_module():
    """docs/architecture.md's module map names each module under its package's heading."""
    import re

    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        folder = "/".join(path.relative_to(PACKAGE.parent).parts[:-1]) + "/"
        section = re.search(r"### `" + re.escape(folder) + r"`\n\n((?:- .*\n)+)", doc)
        if section is None or f"- `{path.name}`:" not in section.group(1):
            missing.append(f"{folder}{path.name}")
    assert not missing, "modules docs/architecture.md does not list: " + ", ".join(missing)


def test_the_checks_catch_what_they_look_for(tmp_path):
    graph = import_graph()
    assert "noisystudent.config.run_config" in graph["noisystudent.training.trainer"]  # real imports are seen
    assert upward_imports({"noisystudent.data.cache": {"noisystudent.run.pipeline"}}) == ["noisystudent.data.cache -> noisystudent.run.pipeline"]
    assert find_cycles({"noisystudent.x.a": {"noisystudent.x.b"}, "noisystudent.x.b": {"noisystudent.x.a"}}) == [
        "noisystudent.x.a -> noisystudent.x.b -> noisystudent.x.a"]
    # duck typing: an untyped argument in a lower stage is reported, a typed one is not, a higher stage is not checked
    duck_typed = "def ensemble_predictor(ensemble, tta_mode: str):\n    return ensemble.members\n"
    assert unannotated_parameters({"noisystudent.inference.backends": duck_typed}) == [
        "noisystudent.inference.backends.ensemble_predictor(ensemble)"]
    assert unannotated_parameters({"noisystudent.inference.backends": "def f(self, *args: int, x: str, **kw: int): ..."}) == []
    assert unannotated_parameters({"noisystudent.cli.commands": duck_typed}) == []
    # an annotation's type imported only for type checkers is still an import, and upward
    typed = tmp_path / "backends.py"
    typed.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from noisystudent.ensemble.classifier import Ensemble\n")
    seen = imported_modules(typed, {"noisystudent.ensemble.classifier"})
    assert seen == {"noisystudent.ensemble.classifier"}
    assert upward_imports({"noisystudent.inference.backends": seen}) == [
        "noisystudent.inference.backends -> noisystudent.ensemble.classifier"]
