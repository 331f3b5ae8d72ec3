"""``torchrun --nproc-per-node 2 -m noisystudent kfold`` on CPU (Gloo): same files as one process, close numbers.

The configuration trains the classifier head on a frozen backbone without
noise (no augmentation, dropout or drop-connect). Then the only difference
between two ranks and one process is the order in which floating-point
gradients are summed (DDP averages two half-batch gradients instead of one
process summing the whole batch), so probabilities agree to about 1e-7 (measured: at most 6e-8),
not bit for bit. With a trainable backbone BatchNorm would also differ: Gloo
has no SyncBatchNorm, so each rank normalises over its own half batch
(training/distributed.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO, save_cell, subprocess_env, tiny_flags, write_class_folders

from noisystudent import layout
from noisystudent.models import checkpoint
from noisystudent.run import claims

TOLERANCE = 1e-6  # on probabilities and metrics; see the module docstring
FLAGS = tiny_flags(
    epochs=1, image_size=16, test_fraction=0.25, freeze="backbone", teacher_augment="none", student_augment="none",
    teacher_dropout=0, student_dropout=0, teacher_drop_connect=0, student_drop_connect=0,
)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "noisystudent"]

pytestmark = pytest.mark.slow  # every test here trains (in subprocesses)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The labelled data; beside it a pool (pool.csv written by rank 0, predicted in slices by both ranks).

    8 pool images + 4 masked ones make a student's epoch of 12: global batches of 8 and 4, each split
    2 + 2 or more. (A last global batch of 3 would be split 2 + 1 and skipped under torchrun, where
    one process trains on it: training/distributed.py.)
    """
    root = tmp_path_factory.mktemp("torchrun")
    for i in range(8):
        save_cell(root / "pool" / f"cell-{i}.png", i % 2, seed=100 + i, size=(16, 16))
    return write_class_folders(root / "data", patients_per_class=6, images_per_patient=2, size=(16, 16))


def _kfold(data: Path, run: Path) -> list[str]:
    return ["kfold", str(data), "--out", str(run), "--pool-images", str(data.parent / "pool"), *FLAGS]


@pytest.fixture(scope="module")
def single(tmp_path_factory, data) -> Path:
    run = tmp_path_factory.mktemp("single") / "run"
    done = subprocess.run([sys.executable, "-m", "noisystudent", *_kfold(data, run)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    return run


def _torchrun(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*TORCHRUN, *args], env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO)


def _output(process: subprocess.Popen, timeout: float = 600) -> str:
    """The output of ``process`` once it ends; killed (with its ranks) if it runs past ``timeout``."""
    try:
        return process.communicate(timeout=timeout)[0]
    finally:
        if process.poll() is None:
            process.terminate()  # torchrun passes SIGTERM on to its ranks
            process.wait(timeout=60)


def _files(run: Path) -> list[str]:
    """The run's files; a TensorBoard event file by its folder (its name holds the time, host and pid of its writer)."""
    def name(p: Path) -> str:
        relative = p.relative_to(run)
        return str(relative.parent / "events.*") if relative.parts[0] == layout.TENSORBOARD else str(relative)

    return sorted({name(p) for p in run.rglob("*") if p.is_file() and layout.CACHE not in p.relative_to(run).parts})


def _assert_close_to(run: Path, reference: Path) -> None:
    assert _files(run) == _files(reference)
    for path in sorted(reference.glob("fold-*/round-*/" + layout.PREDICTIONS)):
        mine, theirs = pd.read_csv(run / path.relative_to(reference)), pd.read_csv(path)
        assert mine.drop(columns=[c for c in mine if c.startswith(layout.PROB_PREFIX)]).equals(
            theirs.drop(columns=[c for c in theirs if c.startswith(layout.PROB_PREFIX)]))  # same rows, order, predictions
        probs = [c for c in theirs if c.startswith(layout.PROB_PREFIX)]
        np.testing.assert_allclose(mine[probs].to_numpy(), theirs[probs].to_numpy(), rtol=0, atol=TOLERANCE)
    mine, theirs = (pd.read_csv(r / layout.RESULTS / layout.METRICS) for r in (run, reference))
    numbers = theirs.select_dtypes("number").columns
    np.testing.assert_allclose(mine[numbers].to_numpy(float), theirs[numbers].to_numpy(float), rtol=0, atol=TOLERANCE)


def test_two_gloo_ranks_write_the_files_of_one_process(tmp_path, data, single):
    process = _torchrun(*_kfold(data, tmp_path / "run"))
    output = _output(process)
    assert process.returncode == 0, output
    _assert_close_to(tmp_path / "run", single)
    assert (tmp_path / "run" / layout.POOL).read_bytes() == (single / layout.POOL).read_bytes()


def _rank_pid(launcher: int, rank: int) -> int | None:
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(child)
    return None


def test_a_killed_rank_stops_the_job_and_resume_under_torchrun_finishes_it(tmp_path, data, single):
    run = tmp_path / "run"
    process = _torchrun(*_kfold(data, run))
    deadline = time.monotonic() + 300
    while not (layout.round_dir(run, 0, 0) / layout.MODEL).exists():  # mid-run: the first model is saved
        assert process.poll() is None and time.monotonic() < deadline, _output(process, 60)
        time.sleep(0.05)
    os.kill(_rank_pid(process.pid, 1), signal.SIGKILL)
    output = _output(process, 300)
    assert process.returncode != 0, output  # torchrun stops every rank when one dies
    assert not (run / layout.RESULTS / layout.METRICS).exists()
    # Rank 0 either dies on torchrun's SIGTERM with its claim in place (stale), or sees the lost peer first as an
    # error and releases its claim on the way out; which one happens first is a race, and both must resume.
    stale = claims.read_claim(run, 0) is not None

    resumed = _torchrun("kfold", "--out", str(run), "--resume")
    output = _output(resumed)
    assert resumed.returncode == 0, output
    if stale:
        assert "which is no longer running; this process" in " ".join(output.split())
    _assert_close_to(run, single)


def test_fixmatch_under_two_ranks_writes_the_same_files_and_shares_flexmatchs_record(tmp_path, data):
    """Each rank draws its own views, so numbers differ from one process; the files and FlexMatch's record do not."""
    flags = ["--method", "fixmatch", "--fixmatch-flex", "--fixmatch-mu", "2", "--fixmatch-threshold", "0.5"]  # 2 classes: all learnt
    alone = subprocess.run([sys.executable, "-m", "noisystudent", *_kfold(data, tmp_path / "single"), *flags],
                           env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    process = _torchrun(*_kfold(data, tmp_path / "run"), *flags)
    output = _output(process)
    assert process.returncode == 0, output
    assert _files(tmp_path / "run") == _files(tmp_path / "single")
    for fold in (0, 1):
        records = [checkpoint.load(layout.round_dir(r, fold, 1) / layout.CHECKPOINT)["train_state"]["learned"]
                   for r in (tmp_path / "single", tmp_path / "run")]
        assert (records[0] >= 0).sum() > 0
        assert torch.equal(records[0] >= 0, records[1] >= 0)  # rank 0 recorded rank 1's images too
