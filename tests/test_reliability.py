"""What must keep working when files, disks and processes misbehave.

- images of every mode (grey, RGBA, palette, 16-bit, ...) and of wildly
  different sizes train in a real tiny run;
- a full disk while saving leaves the previous file intact, no temporary file,
  and one sentence; the run then resumes;
- a training stage interrupted after any epoch resumes to exactly the model
  and history of an uninterrupted one (optimizers, schedules, early stopping);
- sessions share a run folder through a short setup lock; a session stopped before config.json
  leaves a folder that can simply be started again.
"""

from __future__ import annotations

import errno
import fcntl
import io
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_FLAGS as RUN_FLAGS
from helpers import torch_threads, write_class_folders
from PIL import Image
from typer.testing import CliRunner

from noisystudent import atomic, layout
from noisystudent.cli.commands import app
from noisystudent.config.run_config import RunConfig
from noisystudent.data.cache import ImageCache
from noisystudent.errors import CheckpointError, DiskFullError
from noisystudent.models import checkpoint
from noisystudent.progress import Progress
from noisystudent.training import trainer
from noisystudent.training.engine import TrainSet
from noisystudent.training.trainer import ModelJob, train_model

CPU = torch.device("cpu")
TIMING = [layout.SECONDS, layout.IMAGES_PER_S]


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _line(output: str) -> str:
    return " ".join(output.split())



@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with torch_threads(1):
        yield

# --- images of any mode and size, and a full disk, in one real run ----------------------

MODES = {  # file name -> (mode, size); p<patient>_<n>: 4 patients per class, 2 images each
    "p01_0.png": ("L", (20, 30)), "p01_1.png": ("RGBA", (400, 90)),
    "p02_0.png": ("P", (33, 33)), "p02_1.png": ("I;16", (90, 400)),
    "p03_0.png": ("LA", (64, 48)), "p03_1.bmp": ("1", (31, 17)),
    "p04_0.jpg": ("CMYK", (50, 70)), "p04_1.tif": ("RGB", (128, 128)),
}


def _write_image(path, mode: str, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = rgb.convert(mode)
    image.save(path)


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed") / "data"
    for c, label in enumerate(("benign", "malignant")):
        (root / label).mkdir(parents=True)
        for i, (name, (mode, size)) in enumerate(MODES.items()):
            patient, rest = name.split("_")
            _write_image(root / label / f"p{int(patient[1:]) + 4 * c:02d}_{rest}", mode, size, seed=10 * c + i)
    return root


@pytest.fixture(scope="module")
def disk_full_run(tmp_path_factory, mixed_data):
    """A run on mixed_data whose disk fills up while the second checkpoint is saved, then resumed."""
    run = tmp_path_factory.mktemp("disk-full") / "run"
    saves, kept = [], {}

    class FullDisk(io.FileIO):
        def write(self, data) -> int:
            super().write(bytes(data)[: len(data) // 2])  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    def fill_the_disk(path, mode="r"):  # checkpoint.py opens each .pt file it saves once, for writing
        saves.append(path)
        if len(saves) < 2:
            return open(path, mode)
        kept["before"] = (layout.round_dir(run, 0, 0) / layout.CHECKPOINT).read_bytes()
        return FullDisk(path, "wb")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "open", fill_the_disk, raising=False)
        full = _invoke("kfold", mixed_data, "--out", run, *RUN_FLAGS)
    target = layout.round_dir(run, 0, 0) / layout.CHECKPOINT
    after_full = {"kept": kept["before"], "now": target.read_bytes(), "next_epoch": checkpoint.load(target)["next_epoch"],
                  "files": sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())}
    resumed = _invoke("kfold", "--out", run, "--resume")
    return run, full, after_full, resumed


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_is_one_sentence_and_keeps_the_previous_one(disk_full_run):
    run, full, after_full, _ = disk_full_run
    target = layout.round_dir(run, 0, 0) / layout.CHECKPOINT
    assert full.exit_code == 2, full.output
    assert f"No space left on device while writing {target}; the previous version of {target} is intact." in _line(full.output)
    assert after_full["now"] == after_full["kept"]  # byte-identical to the epoch-1 checkpoint
    assert not [name for name in after_full["files"] if name.endswith(".tmp")]
    assert after_full["next_epoch"] == 1


@pytest.mark.slow
def test_the_run_resumes_after_the_disk_is_freed(disk_full_run):
    run, _, _, resumed = disk_full_run
    assert resumed.exit_code == 0, resumed.output
    history = pd.read_csv(layout.round_dir(run, 0, 0) / layout.HISTORY)
    assert history[layout.EPOCH].tolist() == [1, 2]
    assert (layout.results_dir(run) / layout.METRICS).exists()


@pytest.mark.slow
def test_grey_rgba_palette_16_bit_and_odd_sized_images_all_train(disk_full_run, mixed_data):
    run, _, _, resumed = disk_full_run
    assert resumed.exit_code == 0, resumed.output
    paths = sorted(str(p) for p in mixed_data.rglob("p*"))
    cache = ImageCache.open(next((run / layout.CACHE).glob("images-*.npy")))
    assert sorted(cache.paths) == paths
    assert cache.array.shape == (16, 3, 32, 32)
    predicted = pd.concat(pd.read_csv(p) for p in run.glob("fold-*/round-1/" + layout.PREDICTIONS))
    assert set(predicted["path"]) == set(paths)  # every image was predicted in its validation fold
    metrics = pd.read_csv(layout.results_dir(run) / layout.METRICS, dtype={layout.FOLD_COLUMN: str})
    counted = metrics[metrics[layout.FOLD_COLUMN] != "variance"]  # a variance row has no image count
    assert len(counted) and counted["n"].notna().all()


# --- atomic writes on a full disk ---------------------------------------------------------


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "table.csv"
    atomic.write_text(target, "old contents\n")

    def half_then_full(temp):
        temp.write_text("new con")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(DiskFullError) as raised:
        atomic.atomic_write(target, half_then_full)
    assert str(raised.value) == (
        f"No space left on device while writing {target}; the previous version of {target} is intact. "
        "Free some space and continue with --resume."
    )
    assert target.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_first_write_on_a_full_disk_says_nothing_was_written(tmp_path):
    target = tmp_path / "new.json"

    def full(temp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"{target} was not written"):
        atomic.atomic_write(target, full)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_not_disguised(tmp_path):
    def denied(temp):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        atomic.atomic_write(tmp_path / "x.txt", denied)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path):
    stage = tmp_path / "fold-0" / "round-0"
    stage.mkdir(parents=True)
    stale = [stage / ".checkpoint.pt.k2j3h4.tmp", tmp_path / ".folds.csv.abc.tmp"]
    kept = [stage / "checkpoint.pt", stage / "notes.tmp", tmp_path / ".lock"]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(atomic.remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


# --- a training stage resumes exactly -------------------------------------------------------


class Tiny(torch.nn.Module):
    """A small deterministic classifier with BatchNorm and dropout (state beyond the weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.dropout = torch.nn.Dropout(0.3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.dropout(self.norm(self.conv(x)).relu().mean(dim=(2, 3))))


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setattr(trainer, "build_model", lambda job, config, device: Tiny())


def _job(out, n_train=12, n_val=6):
    images = torch.randint(0, 256, (n_train + n_val, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = np.arange(n_train + n_val) % 2
    out.mkdir(parents=True)
    job = ModelJob(
        name="test", out_dir=out, arch="efficientnet-b0", weights="none", dropout=0.3, drop_connect=0.0,
        augment_level="strong", train_set=TrainSet(torch.arange(n_train), torch.eye(2)[labels[:n_train]]),
        val_rows=torch.arange(n_train, n_train + n_val), val_labels=labels[n_train:], classes=["all", "hem"], seed=7,
    )
    return job, lambda rows: images[rows]


class EpochLog(Progress):
    """Records the epochs train_model finishes; raises KeyboardInterrupt after epoch ``stop_after`` (1-based).

    An epoch is reported finished right after its checkpoint is saved.
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after, self.finished = stop_after, []

    def update(self, key, completed=None, description=None, **info):
        if key == "epoch" and "loss" in info:  # the report after an epoch, not the one at the (re)start
            self.finished.append(completed)
            if completed == self.stop_after:
                raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("settings", [
    dict(optimizer="sgd", scheduler="step", step_size=2, sampler="oversample"),
    dict(optimizer="adamw", scheduler="cosine", label_smoothing=0.1, class_weights="balanced"),
    dict(optimizer="adam", scheduler="plateau", weight_decay=0.01, sampler="undersample"),
    dict(optimizer="sgd", scheduler="none", lr=1e-9, early_stopping=1),  # stops after epoch 2
], ids=["sgd-step", "adamw-cosine", "adam-plateau", "early-stop"])
@pytest.mark.parametrize("stop_after", [1, 2])
def test_a_stage_resumed_after_any_epoch_equals_an_uninterrupted_one(tmp_path, tiny_models, settings, stop_after):
    config = RunConfig(**{"epochs": 4, "batch_size": 4, "image_size": 16, "weights": "none", "eval_batch_size": 8,
                          "lr": 0.05, **settings})
    whole, load_batch = _job(tmp_path / "whole")
    train_model(whole, config, load_batch, CPU)

    parted, load_batch = _job(tmp_path / "parted")
    with pytest.raises(KeyboardInterrupt):
        train_model(parted, config, load_batch, CPU, EpochLog(stop_after=stop_after))
    assert not (parted.out_dir / layout.MODEL).exists()
    assert checkpoint.load(parted.out_dir / layout.CHECKPOINT)["next_epoch"] == stop_after
    resumed = EpochLog()
    train_model(parted, config, load_batch, CPU, resumed)

    expected = checkpoint.load(whole.out_dir / layout.MODEL)
    got = checkpoint.load(parted.out_dir / layout.MODEL)
    assert got["selection"] == expected["selection"]
    assert all(torch.equal(got["model"][k], expected["model"][k]) for k in expected["model"])
    pd.testing.assert_frame_equal(pd.read_csv(parted.out_dir / layout.HISTORY).drop(columns=TIMING),
                                  pd.read_csv(whole.out_dir / layout.HISTORY).drop(columns=TIMING))
    n_epochs = len(pd.read_csv(whole.out_dir / layout.HISTORY))
    assert resumed.finished == list(range(stop_after + 1, n_epochs + 1))  # no epoch trained twice, none past an early stop


def test_a_checkpoint_of_another_stage_is_refused_with_its_name(tmp_path, tiny_models):
    job, load_batch = _job(tmp_path / "stage")
    config = RunConfig(epochs=2, batch_size=4, image_size=16, weights="none", eval_batch_size=8)
    checkpoint.save(job.out_dir / layout.CHECKPOINT, {"model": {"unrelated.weight": torch.zeros(1)}})
    with pytest.raises(CheckpointError) as raised:
        train_model(job, config, load_batch, CPU)
    assert f"The checkpoint {job.out_dir / layout.CHECKPOINT} does not fit this training stage" in str(raised.value)


# --- the run folder: one session at a time, restartable before config.json -----------------


@pytest.mark.slow
def test_a_second_session_waits_for_the_setup_lock_naming_its_holder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()  # no class folders: the session stops with a data error once it has the lock
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process preparing the run
        held.write("otherhost:4242\n")
        held.flush()
        outcome = {}
        waiting = threading.Thread(target=lambda: outcome.setdefault("result", _invoke("kfold", data, "--out", run, *RUN_FLAGS)))
        waiting.start()
        waiting.join(timeout=3)
        assert waiting.is_alive()  # it waits, it does not fail
    waiting.join(timeout=60)
    result = outcome["result"]
    assert "Waiting for otherhost:4242" in _line(result.output)
    assert result.exit_code == 2 and "has no class sub-folders" in result.output


def test_a_session_stopped_before_config_json_leaves_a_restartable_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "run"
    first = _invoke("kfold", data, "--out", run, *RUN_FLAGS)  # no class folders yet
    assert first.exit_code == 2 and "has no class sub-folders" in first.output
    assert not run.exists()  # a refused session removes the folder it created
    run.mkdir()  # what a session killed while it wrote config.json leaves behind:
    (run / layout.LOG).write_text("2026-01-01 INFO noisystudent kfold into run (new run)\n")
    (run / ".config.json.x1y2z3.tmp").write_text("{")
    for resume in ([], ["--resume"]):
        again = _invoke("kfold", data, "--out", run, *RUN_FLAGS, *resume)
        assert again.exit_code == 2 and "has no class sub-folders" in again.output, again.output  # not a folder error
    assert not (run / ".config.json.x1y2z3.tmp").exists()


def test_a_folder_holding_other_files_is_not_used_as_a_run_folder(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=1)
    run = tmp_path / "thesis"
    run.mkdir()
    (run / "chapter1.tex").write_text("...")
    result = _invoke("kfold", data, "--out", run, *RUN_FLAGS)
    assert result.exit_code == 2
    assert f"The folder {run} is not empty and holds no run; choose another --out." in _line(result.output)
    assert sorted(p.name for p in run.iterdir()) == ["chapter1.tex"]


def test_a_file_given_as_run_folder_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=1)
    run = tmp_path / "results.txt"
    run.write_text("mine")
    result = _invoke("kfold", data, "--out", run, *RUN_FLAGS)
    assert result.exit_code == 2
    assert f"{run} is a file" in _line(result.output)
    assert run.read_text() == "mine"
