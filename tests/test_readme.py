"""The README is a contract: its commands name real commands and flags, its Python example real names.

Nothing is trained: every command is checked against its own ``--help``, and every call of the
Python example is bound to the real signature of the function it calls.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

import noisystudent as ns
from noisystudent.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
SUBCOMMANDS = {"ensemble": {"predict", "evaluate", "export"}, "data": {"inspect", "demo"}, "config": {"show"}}
COMMANDS = {"kfold", "experiment", "report", "compare", "ensemble", "data", "config"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def readme_commands() -> list[str]:
    lines = [line.split(" #")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line.startswith("noisystudent")]


def command_path(words: list[str]) -> list[str]:
    path = []
    if words and words[0] in COMMANDS:
        path.append(words.pop(0))
        if words and words[0] in SUBCOMMANDS.get(path[0], ()):
            path.append(words.pop(0))
    return path


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_and_flag_exists(command):
    words = shlex.split(command)[1:]
    path = command_path(words)
    result = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"}).invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    for flag in (w for w in words if w.startswith("--") and w != "--help"):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.output), f"{flag} is not a flag of {path}"


def test_readme_has_the_two_commands_and_a_python_example():
    bash = "\n".join(blocks("bash"))
    assert "bash scripts/demo.sh" in bash and "bash scripts/test.sh" in bash
    assert len(blocks("python")) == 1


def test_python_example_calls_real_names_with_real_keywords():
    tree = ast.parse(blocks("python")[0])
    guard = [n for n in tree.body if isinstance(n, ast.If)]
    assert guard and "__main__" in ast.unparse(guard[0].test)  # decoding workers re-import the main module
    settings = {f.name for f in dataclasses.fields(ns.RunConfig)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "ns"]
    assert calls
    for call in calls:
        function = getattr(ns, call.func.attr)
        keywords = {k.arg for k in call.keywords}
        inspect.signature(function).bind(*call.args, **dict.fromkeys(keywords))
        if function is ns.make_config:
            assert keywords - {"preset"} <= settings, keywords - settings
        else:  # **options would accept a misspelt keyword and fail later
            assert keywords <= set(inspect.signature(function).parameters), (call.func.attr, keywords)
