"""Property: whatever value a numeric option gets and whatever kind of file a path argument names,
the command either works or ends with exit status 2 and one sentence, never a traceback or a hang,
and a refused kfold leaves no run folder behind.

A seeded generator picks the cases (set NOISYSTUDENT_FUZZ_SEED to explore others; a failure
prints the case). kfold is stopped where training would begin, by a stub for ``run_fold``: exit
130 there means every check passed.
"""

from __future__ import annotations

import os
import random
import re
import signal
from dataclasses import fields
from pathlib import Path

import pytest
from helpers import PATIENT_REGEX, torch_threads, write_class_folders
from typer.testing import CliRunner

from noisystudent.cli import app
from noisystudent.config.run_config import RunConfig
from noisystudent.run.folder import write_config

SEED = int(os.environ.get("NOISYSTUDENT_FUZZ_SEED", "13"))
FLAGS = [
    "--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--rounds", "1", "--epochs", "1",
    "--image-size", "16", "--batch-size", "8", "--weights", "none", "--arch", "resnet18", "--device", "cpu",
    "--workers", "1", "--quiet",
]
SPECIAL_NUMBERS = ["nan", "inf", "-inf", "0", "-1", "-0.0", "1e308", "12345678901234567890123", "0.5", "1", "2", "abc", ""]
NUMERIC_OPTIONS = [f.name for f in fields(RunConfig) if str(f.type) in ("int", "float")]
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


def assert_sentence_or_success(code: int, line: str, case) -> None:
    assert code in (0, 2, 130), (case, code, line)
    if code == 2:
        assert len(re.findall(r"\bError\b", line)) == 1, (case, line)  # ours ("Error: ...") or click's usage box


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("fuzz") / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))


@pytest.fixture
def stop_before_training(monkeypatch):
    from noisystudent.run import pipeline

    def stop(ctx, fold):
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
        assert_sentence_or_success(code, line, (flag, value))
        if code == 2:
            assert not run.exists(), (flag, value, "a refused command left", sorted(p.name for p in run.iterdir()))


def test_random_numbers_for_the_ensemble_batch_size(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, RunConfig(data=str(data), folds=2, rounds=1, arch="resnet18", weights="none"), "fingerprint")
    for value in SPECIAL_NUMBERS + ["-4", "100000000"]:
        code, line = invoke("ensemble", "predict", run, data, "--out", tmp_path / "p.csv", "--batch-size", value, "--device", "cpu")
        assert code == 2 and len(re.findall(r"\bError\b", line)) == 1, (value, line)  # every value is refused: there is no model


def path_cases(data: Path, run: Path) -> list[tuple[str, list, str]]:
    """(name, argv with {} where the path goes, suffix of the path)."""
    kfold = ["kfold", data, "--out", "{}", *FLAGS]
    return [
        ("kfold DATA", ["kfold", "{}", "--out", run.parent / "new-run", *FLAGS], ".csv"),
        ("kfold --out", kfold, ""),
        ("kfold --test", [*kfold[:3], run.parent / "r-test", *FLAGS, "--test", "{}"], ".csv"),
        ("kfold --pool-images", [*kfold[:3], run.parent / "r-unl", *FLAGS, "--pool-images", "{}"], ""),
        ("kfold --cache-dir", [*kfold[:3], run.parent / "r-cache", *FLAGS, "--cache-dir", "{}"], ""),
        ("kfold --weights", [*kfold[:3], run.parent / "r-weights", *FLAGS, "--weights", "{}"], "model.pt"),
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
            path = make_path(tmp_path / f"case{i}-{kind.replace(' ', '-')}", kind, suffix)
            code, line = invoke(*[path if part == "{}" else part for part in argv])
            assert_sentence_or_success(code, line, (name, kind))
