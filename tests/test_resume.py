"""Resume: a run killed at any moment and resumed ends exactly where an uninterrupted run ends.

The kill test SIGKILLs real `noisystudent kfold` processes at random and at
chosen moments (a checkpoint just written, a checkpoint being written, a
prediction file just written, model.pt being written), resumes each time, and
compares every prediction, pseudo-label and result file byte for byte with an
uninterrupted run (a `python -m noisystudent.cli.commands` subprocess) of the same seed.
The other tests check what --resume refuses, with one sentence and exit code 2.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import TINY_FLAGS, ForkingCli, cli_command, run_files, subprocess_env, torch_threads, write_class_folders
from PIL import Image
from typer.testing import CliRunner

from noisystudent import layout
from noisystudent.cli.commands import app
from noisystudent.run import pipeline

OUTER_TEST = ["--test-fraction", "0.25"]  # with an outer test set: ensembles too
POLL_S = 0.002
T0 = time.monotonic()



@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """32 images: 2 classes x 8 patients x 2 images."""
    return write_class_folders(tmp_path_factory.mktemp("resume") / "data", patients_per_class=8, images_per_patient=2)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data):
    """An uninterrupted run in a real subprocess; started at once, awaited by calling the fixture's value."""
    run = tmp_path_factory.mktemp("reference") / "run"
    process = subprocess.Popen(
        cli_command(data, run, *OUTER_TEST), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    result: dict[str, str] = {}

    def finished() -> Path:
        if "output" not in result:
            result["output"] = process.communicate(timeout=600)[0]
        assert process.returncode == 0, result["output"]
        return run

    yield finished
    if process.poll() is None:
        process.kill()
        process.wait()


# --- killing and resuming ----------------------------------------------------------


def _checkpoints(run: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in run.glob("fold-*/round-*/" + layout.CHECKPOINT) if p.exists()}


def _temps(run: Path, name: str) -> set[str]:
    return {str(p) for p in run.glob(f"fold-*/round-*/.{name}.*.tmp")}


def _predictions(run: Path) -> set[str]:
    return {str(p) for p in run.glob("fold-*/round-*/" + layout.PREDICTIONS)}


def _after(seconds: float):
    """A trigger firing ``seconds`` after the session started."""
    def make(run: Path):
        deadline = time.monotonic() + seconds
        return lambda: time.monotonic() >= deadline
    return f"after {seconds:.2f} s", make


def _new(name: str, snapshot):
    """A trigger firing when ``snapshot(run)`` shows something not there when the session started."""
    def make(run: Path):
        before = snapshot(run)
        return lambda: bool(_changed(before, snapshot(run)))
    return name, make


def _changed(before, now) -> bool:
    if isinstance(now, dict):
        return any(before.get(k) != v for k, v in now.items())
    return bool(now - before)


def _kill_plan(seed: int = 20240607) -> list:
    rng = random.Random(seed)
    return [
        _after(rng.uniform(0.2, 1.0)),  # early: reading the data, building the cache
        _new("a checkpoint was written (training)", _checkpoints),
        _new("checkpoint.pt is being written", lambda run: _temps(run, layout.CHECKPOINT)),
        _new("predictions.csv was written (pseudo-labelling)", _predictions),
        _after(rng.uniform(1.0, 3.0)),
        _new("model.pt is being written", lambda run: _temps(run, layout.MODEL)),
    ]


def _session(server: ForkingCli, argv: list[str], log: Path, run: Path, trigger) -> tuple[int, bool]:
    """Run one session until ``trigger`` fires (then SIGKILL) or it ends; (exit code, killed)."""
    fired = trigger(run)
    pid = server.start(argv, log)
    while True:
        if fired():
            os.kill(pid, signal.SIGKILL)
            return server.wait(pid), True
        code = server.poll(pid)
        if code is not None:
            return code, False
        time.sleep(POLL_S)


def _history(run: Path) -> dict[str, pd.DataFrame]:
    timing = [layout.SECONDS, layout.IMAGES_PER_S]
    return {str(p.relative_to(run)): pd.read_csv(p).drop(columns=timing) for p in sorted(run.glob("fold-*/round-*/" + layout.HISTORY))}


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, data, reference_run):
    run = tmp_path / "run"
    argv = ["kfold", str(data), "--out", str(run), *TINY_FLAGS, *OUTER_TEST]
    server = ForkingCli()
    kills = []
    try:
        for i, (moment, trigger) in enumerate(_kill_plan()):
            log = tmp_path / f"session-{i}.log"
            # like a user: --resume once a session has begun the run (there is nothing to resume before)
            resume = ["--resume"] if (run / layout.LOG).exists() else []
            code, killed = _session(server, argv + resume, log, run, trigger)
            print(f"{time.monotonic() - T0:.1f}s session {i} {moment}: {'killed' if killed else code}")
            if not killed or code == 0:
                assert code == 0, f"session {i} ({moment}) failed:\n{log.read_text()}"
                break
            assert code == -signal.SIGKILL, f"session {i} ({moment}) ended with {code}:\n{log.read_text()}"
            kills.append(moment)
        else:
            log = tmp_path / "session-final.log"
            code, _ = _session(server, argv + ["--resume"], log, run, lambda run: lambda: False)
            assert code == 0, f"the final resume failed:\n{log.read_text()}"
    finally:
        server.close()
    assert len(kills) >= 4, f"only {len(kills)} kills happened before the run finished: {kills}"

    print(f"{time.monotonic() - T0:.1f}s kills done")
    reference = reference_run()
    print(f"{time.monotonic() - T0:.1f}s reference done")
    expected, got = run_files(reference), run_files(run)
    assert sorted(got) == sorted(expected)
    assert len([name for name in got if name.endswith(layout.PREDICTIONS)]) == 4  # 2 folds x (teacher, student)
    for name in expected:
        assert got[name] == expected[name], f"{name} differs after {len(kills)} kills ({', '.join(kills)})"
    assert (run / layout.FOLDS).read_bytes() == (reference / layout.FOLDS).read_bytes()
    mine, theirs = (json.loads((folder / layout.CONFIG).read_text()) for folder in (run, reference))
    assert mine.pop("run_id") != theirs.pop("run_id")  # each run has its own id; every other entry is the same
    assert mine == theirs
    histories = _history(reference)
    for name, table in _history(run).items():
        pd.testing.assert_frame_equal(table, histories[name])
    for model in sorted(reference.glob("fold-*/round-*/" + layout.MODEL)):
        mine = torch.load(run / model.relative_to(reference), map_location="cpu", weights_only=False)["model"]
        theirs = torch.load(model, map_location="cpu", weights_only=False)["model"]
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), model
    assert not [p for p in run.rglob("*.tmp")], "an interrupted write left a temporary file behind"


# --- what --resume refuses and accepts ----------------------------------------------


def _invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _one_line(output: str) -> str:
    """The error sentence, rejoined (Rich may wrap the console width)."""
    return " ".join(output.split())


def _partial_copy(reference: Path, target: Path, keep=(layout.CONFIG, layout.FOLDS, layout.DIGESTS, layout.CACHE)) -> Path:
    """Copy of a run folder's config, folds and cache: a run killed before its first model was done."""
    target.mkdir(parents=True)
    for name in keep:
        source = reference / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target / name)
    return target


def _link_copy(reference: Path, target: Path) -> Path:
    """Full copy of a run folder; the big .pt files are hard links (they are only ever replaced, never edited)."""
    def copy(source, destination):
        return os.link(source, destination) if source.endswith(".pt") else shutil.copy2(source, destination)
    return Path(shutil.copytree(reference, target, copy_function=copy, ignore=shutil.ignore_patterns(layout.CHECKPOINT)))


@pytest.mark.slow
def test_a_new_run_into_a_used_folder_is_refused(data, reference_run):
    run = reference_run()
    before = (run / layout.CONFIG).read_bytes()
    result = _invoke("kfold", data, "--out", run, *TINY_FLAGS, *OUTER_TEST)
    assert result.exit_code == 2
    assert "--resume" in result.output and str(run) in _one_line(result.output)
    assert (run / layout.CONFIG).read_bytes() == before


@pytest.mark.slow
def test_resume_with_a_changed_result_setting_is_refused_naming_it(data, reference_run):
    run = reference_run()
    before = (run / layout.CONFIG).read_bytes()
    result = _invoke("kfold", data, "--out", run, *TINY_FLAGS, *OUTER_TEST, "--lr", "0.01", "--resume")
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert "differing: lr (0.003 -> 0.01)" in line
    assert "epochs" not in line.split("differing:")[1]  # only what differs is listed
    assert (run / layout.CONFIG).read_bytes() == before


@pytest.mark.slow
def test_resume_accepts_changed_execution_settings_and_keeps_the_results(tmp_path, reference_run):
    reference = reference_run()
    run = _link_copy(reference, tmp_path / "run")
    result = _invoke("kfold", "--out", run, "--resume", "--eval-batch-size", "5", "--workers", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert run_files(run) == run_files(reference)
    saved = json.loads((run / layout.CONFIG).read_text())
    assert saved["eval_batch_size"] == 5 and saved["workers"] == 2


@pytest.mark.slow
def test_a_run_that_recorded_no_machine_resumes_and_its_log_says_where(tmp_path, reference_run):
    reference = reference_run()
    assert json.loads((reference / layout.CONFIG).read_text())["machine"]["cpu_count"] >= 1
    run = _link_copy(reference, tmp_path / "run")
    older = {k: v for k, v in json.loads((run / layout.CONFIG).read_text()).items() if k != "machine"}
    (run / layout.CONFIG).write_text(json.dumps(older))  # config.json of a version before the entry
    sessions = (run / layout.LOG).read_text().count("Session machine: CPU ")
    result = _invoke("kfold", "--out", run, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert run_files(run) == run_files(reference)
    assert json.loads((run / layout.CONFIG).read_text())["machine"] is None  # not made up afterwards
    assert sessions == 1 and (run / layout.LOG).read_text().count("Session machine: CPU ") == 2


def test_resume_in_an_empty_or_missing_folder_says_there_is_nothing_to_resume(tmp_path, data):
    (tmp_path / "empty").mkdir()
    for run in (tmp_path / "empty", tmp_path / "missing"):
        result = _invoke("kfold", data, "--out", run, *TINY_FLAGS, "--resume")
        assert result.exit_code == 2
        assert f"There is no run to resume in {run}" in _one_line(result.output)
        assert "drop --resume" in result.output


@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_not_silently_restarted(tmp_path, data, reference_run):
    run = _partial_copy(reference_run(), tmp_path / "run")
    checkpoint = layout.round_dir(run, 0, 0) / layout.CHECKPOINT
    checkpoint.parent.mkdir(parents=True)
    whole = (layout.round_dir(reference_run(), 0, 0) / layout.CHECKPOINT).read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    result = _invoke("kfold", data, "--out", run, *TINY_FLAGS, *OUTER_TEST, "--resume")
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert f"The checkpoint {checkpoint} is truncated or corrupt" in line
    assert "delete it" in line
    assert checkpoint.read_bytes() == whole[: len(whole) // 2]  # left in place, as it was
    assert not (layout.round_dir(run, 0, 0) / layout.MODEL).exists()


def test_changed_images_are_refused_on_resume(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2)
    run = tmp_path / "run"

    def interrupt(run_ctx, fold):
        raise KeyboardInterrupt  # Ctrl-C once config, folds and cache are written

    monkeypatch.setattr(pipeline, "run_fold", interrupt)
    result = _invoke("kfold", data, "--out", run, *TINY_FLAGS)
    assert result.exit_code == 130 and "continue with --resume" in result.output
    assert (run / layout.CONFIG).exists() and (run / layout.FOLDS).exists()

    assert _invoke("kfold", "--out", run, "--resume").exit_code == 130  # unchanged data: resumes
    added = data / "benign" / "p01_9.png"
    shutil.copy2(data / "benign" / "p01_0.png", added)
    _assert_changed_data_refused(run)
    added.unlink()
    assert _invoke("kfold", "--out", run, "--resume").exit_code == 130
    Image.new("RGB", (30, 30), (10, 200, 10)).save(data / "malignant" / "p03_1.png")  # other content, size, time
    _assert_changed_data_refused(run)


def _assert_changed_data_refused(run: Path) -> None:
    before = (run / layout.CONFIG).read_bytes()
    result = _invoke("kfold", "--out", run, "--resume")
    assert result.exit_code == 2
    assert f"The images of the run in {run} have changed since it began" in _one_line(result.output)
    assert (run / layout.CONFIG).read_bytes() == before
