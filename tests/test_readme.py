"""The README is a contract: its commands name real commands and flags, its Python example real names.

Every command is checked against its own ``--help``, and every call of the Python example is bound
to the real signature of the function it calls (nothing trained). Slow tests run the quick start's
commands and the Python example itself (without its main guard) on generated images.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from helpers import invoke_cli, subprocess_env, write_class_folders
from PIL import Image
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


# --- the Python example, run -------------------------------------------------------------------

# What the example names that a test machine lacks, and what stands in for it. Each must appear in
# the README as written: a renamed path or setting there fails the test instead of passing unseen.
STAND_INS = {'"/data/C-NMC_Leukemia"': "DATA", '"/data/other_centre"': "OTHER", '"new_cells/"': "NEW", 'device="cuda"': 'device="cpu"'}
# Tiny settings laid over the example's own (it asks for 10 epochs of the C-NMC protocol); workers=2
# with more than SERIAL_BELOW images makes the cache decode in parallel, the part a script's lack of a
# main guard used to break.
SHIM = """
import noisystudent as ns

DATA, OTHER, NEW = {data!r}, {other!r}, {new!r}
_make_config, _run_experiment = ns.make_config, ns.run_experiment
TINY = dict(patient_regex=r"^(p\\d+)_", positive="malignant", folds=2, rounds=1, epochs=1, image_size=32, batch_size=8,
            weights="none", arch="resnet18", lr=0.003, test_fraction=0.34, workers=2, eval_batch_size=64)
ns.make_config = lambda *args, **settings: _make_config(*args, **{{**settings, **TINY}})
# one seed: every arm runs and the study answers, in a third of the time
ns.run_experiment = lambda config, study, seeds, **kw: _run_experiment(config, study, seeds=seeds[:1], **kw)
"""


def example_without_guard(example: str) -> str:
    """The example as a plain script: the guard's body dedented to the top level."""
    head, body = re.split(r"^if __name__ == \"__main__\":.*\n", example, maxsplit=1, flags=re.M)
    return head + textwrap.dedent(body)


@pytest.mark.slow
def test_python_example_runs_as_a_plain_script(tmp_path):
    """The README's example, saved without its main guard and run with ``python script.py``.

    Before issue 27 it failed twice: ``voting=`` where ``predict`` takes ``rule=``, and worker
    processes that re-imported the script and ran ``run_kfold`` again (BrokenProcessPool).
    """
    example = blocks("python")[0]
    for written, stand_in in STAND_INS.items():
        assert written in example, f"the README's example no longer has {written}: update STAND_INS"
        example = example.replace(written, stand_in)
    data = write_class_folders(tmp_path / "data", patients_per_class=6, images_per_patient=6)
    other = write_class_folders(tmp_path / "other", patients_per_class=1, images_per_patient=3, seed=1)
    new = write_class_folders(tmp_path / "new", patients_per_class=1, images_per_patient=2, seed=2) / "benign"
    script = tmp_path / "example.py"
    script.write_text(SHIM.format(data=str(data), other=str(other), new=str(new)) + example_without_guard(example))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    log = (tmp_path / "runs/cnmc/run.log").read_text()
    assert "decoding images with threads" in log, log[-3000:]  # the fallback, not worker processes, decoded
    assert (tmp_path / "runs/cnmc/results/metrics.csv").is_file() and (tmp_path / "runs/cnmc/report/report.html").is_file()
    assert "vote_fold0" in result.stdout and "balanced_accuracy" in result.stdout, result.stdout[-3000:]


# --- the quick start, run ------------------------------------------------------------------------

# Tiny settings appended to every command that trains (the quick start's own settings first: any
# flag the README gives is kept, a later tiny one wins only where both name the same setting).
TRAINING_FLAGS = ["--patient-regex", r"^(p\d+)_", "--positive", "malignant", "--folds", "2", "--rounds", "1",
                  "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--weights", "none", "--arch", "resnet18",
                  "--device", "cpu", "--workers", "1", "--test-fraction", "0.34", "--quiet"]


def quick_start(tmp_path) -> list[list[str]]:
    """The quick start's commands as argv lists, the README's paths replaced by generated images."""
    data = write_class_folders(tmp_path / "cnmc", patients_per_class=6, images_per_patient=3)
    labelled = write_class_folders(tmp_path / "labelled_test", patients_per_class=1, images_per_patient=2, seed=1)
    new = write_class_folders(tmp_path / "new", patients_per_class=1, images_per_patient=2, seed=2) / "benign"
    (tmp_path / "new_cells").symlink_to(new)
    Image.open(next(new.iterdir())).save(tmp_path / "more.bmp")
    (tmp_path / "list.csv").write_text("path\n" + "\n".join(str(p) for p in sorted(labelled.rglob("*.png"))) + "\n")
    stand_ins = {"/data/C-NMC_Leukemia": str(data), "/data/labelled_test": str(labelled)}
    block = next(b for b in blocks("bash") if "noisystudent kfold /data/C-NMC_Leukemia" in b)
    commands = []
    for line in block.splitlines():
        words = [stand_ins.get(w, w) for w in shlex.split(line.split(" #")[0])]
        assert words[0] == "noisystudent", line
        commands.append(words[1:] + (TRAINING_FLAGS if words[1] in ("kfold", "experiment") else []))
    assert sum(w in stand_ins.values() for c in commands for w in c) == 7, "the quick start's data paths changed"
    return commands


@pytest.mark.slow
def test_quick_start_commands_run_in_order(tmp_path, monkeypatch):
    """Every command of the quick start, in order, on generated images: each ends with exit status 0."""
    monkeypatch.chdir(tmp_path)
    for command in quick_start(tmp_path):
        if ">" in command:  # a shell redirection: the command's standard output becomes the file
            from typer.testing import CliRunner

            from noisystudent.cli import app

            at = command.index(">")
            result = CliRunner().invoke(app, command[:at])
            assert result.exit_code == 0, (command, result.output[-2000:])
            (tmp_path / command[at + 1]).write_text(result.stdout)
            continue
        code, output = invoke_cli(*command)
        assert code == 0, (command, output[-2000:])
    assert (tmp_path / "runs/cnmc/report/report.html").is_file() and (tmp_path / "runs/cnmc-study").is_dir()
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 2 + 1 + 4  # new_cells/, more.bmp, list.csv
    assert (tmp_path / "eval.csv").is_file() and (tmp_path / "ensemble.onnx").stat().st_size > 0
    assert (tmp_path / "runs/cnmc-10/config.yaml").is_file() and (tmp_path / "cnmc-model/config.json").is_file()
    assert (tmp_path / "runs/cnmc-fixmatch").is_dir()
