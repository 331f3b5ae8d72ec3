"""The public API is documented: docs/api.md is current, every export has Args/Returns/Example, and the examples hold."""

from __future__ import annotations

import ast
import dataclasses
import doctest
import importlib.util
import inspect
from pathlib import Path

import pytest

import noisystudent as ns

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "api_docs.py"

# Examples that are cheap and pure: they must run (not be skipped) and print what the docstring says.
RUN_EXAMPLES = [
    "RunConfig", "make_config", "resume_config", "preset_settings", "create_model", "binary_metrics", "multiclass_metrics",
    "vote", "paired_bootstrap", "mcnemar_exact", "compare_predictions", "UserError", "ConfigError", "DataError",
]


def load_generator():
    spec = importlib.util.spec_from_file_location("api_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


api_docs = load_generator()


def documented_names() -> list[str]:
    """Every exported function and class (PRESETS, a constant, is described by a comment)."""
    return [name for name in ns._EXPORTS if inspect.isclass(getattr(ns, name)) or inspect.isfunction(getattr(ns, name))]


def sections(name: str) -> dict[str, list[str]]:
    return api_docs.docstring_sections(inspect.getdoc(getattr(ns, name)) or "")


def parameters(obj) -> list[inspect.Parameter]:
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return []
    return list(inspect.signature(obj).parameters.values())


def returns_something(obj) -> bool:
    return inspect.isfunction(obj) and inspect.signature(obj).return_annotation not in (inspect.Signature.empty, None, "None")


# --- (a) docs/api.md is current ------------------------------------------------------------


def test_api_page_is_current():
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert page == api_docs.render(), "docs/api.md is out of date; run python scripts/api_docs.py"


def test_check_mode_fails_on_a_stale_page(tmp_path: Path, capsys):
    page = tmp_path / "api.md"
    assert api_docs.main(["--output", str(page)]) == 0
    assert api_docs.main(["--check", "--output", str(page)]) == 0
    page.write_text(page.read_text() + "edited by hand\n")
    assert api_docs.main(["--check", "--output", str(page)]) == 1
    message = capsys.readouterr().out.strip()
    assert "out of date" in message and message.endswith(".") and "\n" not in message  # one sentence


def test_api_page_has_no_addresses_or_paths():
    page = api_docs.render()
    assert " at 0x" not in page and str(ROOT) not in page and "/home/" not in page
    assert [line for line in page.splitlines() if line.startswith("### ")] == [f"### `{n}`" for n in ns._EXPORTS]


# --- (b) every export has the sections ------------------------------------------------------


@pytest.mark.parametrize("name", documented_names())
def test_export_has_args_returns_and_example(name: str):
    obj = getattr(ns, name)
    found = sections(name)
    assert found[""], f"{name} has no summary line"
    assert "Example" in found and any(line.startswith(">>>") for line in found["Example"]), f"{name} has no Example: section"
    if parameters(obj) or issubclass_error(obj):
        assert "Args" in found, f"{name} takes arguments but has no Args: section"
    if returns_something(obj):
        assert found.get("Returns"), f"{name} returns a value but has no Returns: section"


def issubclass_error(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, BaseException)


@pytest.mark.parametrize("name", [n for n in documented_names() if inspect.isfunction(getattr(ns, n))])
def test_args_name_every_parameter(name: str):
    documented = {entry.split(" ")[0] for entry, _ in api_docs.section_entries(sections(name).get("Args", []))}
    for parameter in parameters(getattr(ns, name)):
        star = {parameter.VAR_POSITIONAL: "*", parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
        assert star + parameter.name in documented, f"{name}'s Args: does not describe {star + parameter.name}"


def test_every_run_config_field_has_help():
    missing = [f.name for f in dataclasses.fields(ns.RunConfig) if not f.metadata.get("help")]
    assert not missing, f"RunConfig fields without help text: {missing}"


# --- (c) the examples hold ------------------------------------------------------------------


def examples(name: str) -> list[doctest.Example]:
    tests = doctest.DocTestFinder(recurse=False).find(getattr(ns, name), name, globs={})
    return [example for test in tests for example in test.examples]


def test_pure_examples_run_and_print_what_they_say():
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for name in documented_names():
        for test in finder.find(getattr(ns, name), name, globs={}):
            runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted and not failed, f"{failed} of {attempted} docstring examples failed (output above)"


@pytest.mark.parametrize("name", RUN_EXAMPLES)
def test_pure_examples_are_not_skipped(name: str):
    checked = [e for e in examples(name) if e.want.strip() and not e.options.get(doctest.SKIP)]
    assert checked, f"{name}'s example is cheap and pure, but no line of it with an output runs"


def test_examples_call_exports_with_their_real_signature():
    """Every ns.<name>(...) call in an example, run or skipped, binds to that name's signature."""
    for name in documented_names():
        source = "\n".join(e.source for e in examples(name))
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "ns" and node.func.attr in ns._EXPORTS):
                continue
            target = getattr(ns, node.func.attr)
            if issubclass_error(target) or any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                continue
            signature = inspect.signature(target)
            try:
                signature.bind(*node.args, **{k.arg: k.value for k in node.keywords})
            except TypeError as error:
                pytest.fail(f"{name}'s example calls ns.{node.func.attr} wrongly: {error}")
