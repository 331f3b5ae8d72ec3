"""Property: whatever value a numeric option gets and whatever kind of file a path argument names,
the command either works or ends with exit status 2 and one sentence, never a traceback or a hang,
and a refused kfold leaves no run folder behind. Which of the two is expected is decided for each
case beforehand (``must_refuse``), so a check that lets a bad value through fails the test.

A seeded generator picks the cases (set NOISYSTUDENT_FUZZ_SEED to explore others; a failure
prints the case). kfold is stopped where training would begin, by a stub for ``run_fold``: exit
130 there means every check passed.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
from helpers import PATIENT_REGEX, tiny_flags, torch_threads, write_class_folders
from typer.testing import CliRunner

from noisystudent.cli import app
from noisystudent.config.run_config import RunConfig
from noisystudent.config.settings import make_config
from noisystudent.ensemble.classifier import MAX_BATCH_SIZE
from noisystudent.errors import ConfigError
from noisystudent.run.folder import write_config

SEED = int(os.environ.get("NOISYSTUDENT_FUZZ_SEED", "13"))
SETTINGS = {"patient_regex": PATIENT_REGEX, "positive": "malignant", "folds": 2, "rounds": 1, "epochs": 1, "image_size": 16,
            "batch_size": 8, "weights": "none", "arch": "resnet18", "device": "cpu", "workers": 1}
FLAGS = [*(part for name, value in SETTINGS.items() for part in ("--" + name.replace("_", "-"), str(value))), "--quiet"]
PATIENTS = 4  # per class in the data: more than the folds that the test set holdout leaves room for
SPECIAL_NUMBERS = ["nan", "inf", "-inf", "0", "-1", "-0.0", "1e308", "12345678901234567890123", "0.5", "1", "2", "abc", ""]
OPTION_TYPES = {f.name: str(f.type) for f in fields(RunConfig) if str(f.type) in ("int", "float")}
NUMERIC_OPTIONS = list(OPTION_TYPES)
# The path arguments that take these kinds of path; every other case must be refused (the run
# given to the ensemble commands has no models, the other kinds are no usable file or folder).
ACCEPTED_PATHS = {("kfold --out", "missing"), ("kfold --out", "empty folder"),
                  ("kfold --cache-dir", "missing"), ("kfold --cache-dir", "empty folder")}
FILE_KINDS = ["missing", "empty file", "text file", "random bytes", "empty folder", "fifo", "dev null", "dangling link"]


def make_path(folder: Path, kind: str, suffix: str) -> Path:
    """A path of the given kind, named with ``suffix`` (.csv, .pt, ...) so that the tool takes it seriously."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"thing{suffix}"
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "text file":
        path.write_text("path,label\nnothing,here\n")
    elif kind == "random bytes":
        path.write_bytes(random.Random(SEED).randbytes(300))
    elif kind == "empty folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev null":
        return Path(os.devnull)
    elif kind == "dangling link":
        path.symlink_to(folder / "nowhere")
    return path


def invoke(*args) -> tuple[int, str]:
    """Run the CLI in-process; fail (instead of hanging) after 60 s, e.g. on a FIFO read."""
    def hung(signum, frame):
        raise TimeoutError(f"noisystudent {' '.join(map(str, args))} hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with torch_threads(1):
            result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "Traceback" not in result.output, (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    return result.exit_code, " ".join(result.output.split())


def assert_refused(code: int, line: str, case, naming: str = "") -> None:
    """Exit status 2 and one sentence (ours, "Error: ...", or click's usage box) that contains ``naming``."""
    assert code == 2, (case, code, line)
    assert len(re.findall(r"\bError\b", line)) == 1 and naming in line, (case, line)


def assert_accepted(code: int, line: str, case, stopped: bool = False) -> None:
    """Exit status 0, or 130 where a stub stopped the command where training would begin."""
    assert code == (130 if stopped else 0), (case, code, line)


def parsed_number(name: str, value: str) -> int | float | None:
    """``value`` as the command line reads a number for option ``name``; None where it is not one."""
    if OPTION_TYPES[name] == "int":  # whole numbers, written with an optional .0: '-0.0' is 0, '1e308' is refused
        return int(value.strip().split(".")[0]) if re.fullmatch(r"\s*[+-]?\d+(\.0*)?\s*", value) else None
    try:
        return float(value)
    except ValueError:
        return None


def must_refuse(name: str, value: str) -> bool:
    """kfold must refuse ``value`` for ``name``: not a number, out of its range, or more folds than the data allow."""
    number = parsed_number(name, value)
    if number is None:
        return True
    try:
        config = make_config("data", **{**SETTINGS, name: number})
    except ConfigError:
        return True
    held_out = max(1, math.floor(config.test_fraction * PATIENTS + 0.5)) if config.test_fraction > 0 else 0
    return PATIENTS - held_out < config.folds


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("fuzz") / "data", patients_per_class=PATIENTS, images_per_patient=2, size=(16, 16))


@pytest.fixture(scope="module")
def trained_run(data, tmp_path_factory) -> Path:
    """A run with fold models: 2 folds, teacher and student, one epoch at 16 px."""
    run = tmp_path_factory.mktemp("fuzz-run") / "run"
    code, line = invoke("kfold", data, "--out", run, *tiny_flags(epochs=1, image_size=16))
    assert_accepted(code, line, "training the run for the ensemble")
    return run


@pytest.fixture
def stop_before_training(monkeypatch):
    from noisystudent.run import pipeline

    def stop(run_ctx, fold):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_fold", stop)


def numeric_cases() -> list[tuple[str, str]]:
    rng = random.Random(SEED)
    cases = []
    for name in NUMERIC_OPTIONS:
        drawn = [rng.choice(SPECIAL_NUMBERS), repr(rng.uniform(-3, 3)), str(rng.randint(-5, 3000))]
        cases += [(name, value) for value in rng.sample(drawn, 2)]
    return cases


@pytest.mark.slow
def test_random_values_of_every_numeric_option(tmp_path, data, stop_before_training):
    for i, (name, value) in enumerate(numeric_cases()):
        run = tmp_path / f"run{i}"
        flag = "--" + name.replace("_", "-")
        code, line = invoke("kfold", data, "--out", run, *FLAGS, flag, value)
        if must_refuse(name, value):
            assert_refused(code, line, (flag, value))
            assert not run.exists(), (flag, value, "a refused command left", sorted(p.name for p in run.iterdir()))
        else:
            assert_accepted(code, line, (flag, value), stopped=True)


@pytest.mark.slow
def test_random_numbers_for_the_ensemble_batch_size(tmp_path, data, trained_run):
    for value in SPECIAL_NUMBERS + ["-4", "3", str(MAX_BATCH_SIZE), str(MAX_BATCH_SIZE + 1), "100000000"]:
        out = tmp_path / f"p{value}.csv"
        code, line = invoke("ensemble", "predict", trained_run, data, "--out", out, "--batch-size", value, "--device", "cpu")
        number = int(value) if re.fullmatch(r"-?\d+", value) else None
        if number is None:  # not a whole number: the command line's parser refuses it
            assert_refused(code, line, value, naming="--batch-size")
        elif not 1 <= number <= MAX_BATCH_SIZE:  # a whole number out of range: the batch-size check refuses it
            assert_refused(code, line, value, naming=f"--batch-size must be a whole number between 1 and {MAX_BATCH_SIZE}")
        else:
            assert_accepted(code, line, value)
            assert len(pd.read_csv(out)) == PATIENTS * 2 * 2, value  # every image predicted


def path_cases(data: Path, run: Path) -> list[tuple[str, list, str]]:
    """(name, argv with {} where the path goes and {out} where a new run folder of its own goes, suffix of the path)."""
    kfold = ["kfold", data, "--out", "{}", *FLAGS]
    return [
        ("kfold DATA", ["kfold", "{}", "--out", "{out}", *FLAGS], ".csv"),
        ("kfold --out", kfold, ""),
        ("kfold --test", [*kfold[:3], "{out}", *FLAGS, "--test", "{}"], ".csv"),
        ("kfold --pool-images", [*kfold[:3], "{out}", *FLAGS, "--pool-images", "{}"], ""),
        ("kfold --cache-dir", [*kfold[:3], "{out}", *FLAGS, "--cache-dir", "{}"], ""),
        ("kfold --weights", [*kfold[:3], "{out}", *FLAGS, "--weights", "{}"], "model.pt"),
        ("predict RUN", ["ensemble", "predict", "{}", data, "--out", run.parent / "p.csv", "--device", "cpu"], ""),
        ("predict INPUT", ["ensemble", "predict", run, "{}", "--out", run.parent / "p.csv", "--device", "cpu"], ".csv"),
        ("predict --out", ["ensemble", "predict", run, data, "--out", "{}", "--device", "cpu"], ".csv"),
        ("evaluate DATA", ["ensemble", "evaluate", run, "{}", "--out", run.parent / "m.csv", "--device", "cpu"], ""),
        ("evaluate --out", ["ensemble", "evaluate", run, data, "--out", "{}", "--device", "cpu"], ".csv"),
        ("report RUN", ["report", "{}"], ""),
        ("inspect PATH", ["data", "inspect", "{}"], ".csv"),
        ("demo OUT_DIR", ["data", "demo", "{}"], ""),
    ]


@pytest.mark.slow
def test_every_kind_of_file_at_every_path_argument(tmp_path, data, stop_before_training):
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, RunConfig(data=str(data), folds=2, rounds=1, arch="resnet18", weights="none"), "fingerprint")
    rng = random.Random(SEED)
    for i, (name, argv, suffix) in enumerate(path_cases(data, run)):
        kinds = FILE_KINDS if name != "demo OUT_DIR" else [k for k in FILE_KINDS if k not in ("missing", "empty folder")]
        for kind in rng.sample(kinds, 3):
            case = tmp_path / f"case{i}-{kind.replace(' ', '-')}"
            path = make_path(case, kind, suffix)
            code, line = invoke(*[{"{}": path, "{out}": case / "run"}.get(part, part) for part in argv])
            if (name, kind) in ACCEPTED_PATHS:
                assert_accepted(code, line, (name, kind), stopped=name.startswith("kfold"))
            else:
                assert_refused(code, line, (name, kind))
