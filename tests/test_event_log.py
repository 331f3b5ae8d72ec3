"""TensorBoard event files: written per model and per fold's pseudo-labels, readable, and never doubled by a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_flags, write_class_folders
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from noisystudent import layout
from noisystudent.cli.commands import app
from noisystudent.training import event_log


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (an earlier session's purged points dropped)."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _row(epoch: int, loss: float) -> dict:
    return {layout.EPOCH: epoch, layout.LR: 0.1, layout.TRAIN_LOSS: loss, layout.VAL_LOSS: loss + 1,
            "val_accuracy": 0.5, layout.SECONDS: 2.0, layout.IMAGES_PER_S: 30.0, layout.IMAGE_SIZE: 16}


def test_a_resumed_model_neither_duplicates_nor_loses_points(tmp_path):
    folder = event_log.model_folder(tmp_path, 0, 1)
    first = event_log.open_event_log(folder, first_epoch=1)
    for epoch in (1, 2, 3):  # killed after epoch 3's point, before its checkpoint: the checkpoint says 2 epochs done
        first.epoch(_row(epoch, loss=10.0 + epoch))
    first.close()
    resumed = event_log.open_event_log(folder, first_epoch=3)
    for epoch in (3, 4):
        resumed.epoch(_row(epoch, loss=20.0 + epoch))
    resumed.close()
    shown = _scalars(folder)
    assert shown["loss/train"] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    assert [step for step, _ in shown["validation/accuracy"]] == [1, 2, 3, 4]
    assert {"loss/validation", "learning_rate", "speed/images_per_s", "speed/epoch_seconds"} <= set(shown)
    assert "image_size" not in " ".join(shown)


def test_pseudo_label_accuracy_is_one_point_per_round(tmp_path):
    for round_, accuracy in ((0, 0.75), (1, 0.8), (1, 0.8)):  # round 1 written twice: a kill before pseudo_labels.csv
        event_log.write_pseudo_label_accuracy(tmp_path, 2, round_, accuracy)
    shown = _scalars(tmp_path / layout.TENSORBOARD / "fold-2" / event_log.PSEUDO_LABELS_RUN)
    assert [(step, round(value, 6)) for step, value in shown["pseudo_labels/accuracy"]] == [(0, 0.75), (1, 0.8)]


def test_no_event_log_without_a_folder_or_the_package(tmp_path, monkeypatch):
    assert isinstance(event_log.open_event_log(None, 1), event_log.NoEventLog)
    monkeypatch.setattr(event_log, "available", lambda: False)
    log = event_log.open_event_log(tmp_path / "tb", 1)
    log.epoch(_row(1, 1.0))
    log.close()
    event_log.write_pseudo_label_accuracy(tmp_path, 0, 0, 0.5)
    assert not list(tmp_path.rglob("*"))


@pytest.mark.slow
def test_a_run_writes_one_event_folder_per_model_and_no_tensorboard_writes_none(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=4, images_per_patient=2, size=(16, 16))
    flags = tiny_flags(epochs=2, image_size=16, test_fraction=0)
    assert CliRunner().invoke(app, ["kfold", str(data), "--out", str(tmp_path / "run"), *flags]).exit_code == 0
    board = tmp_path / "run" / layout.TENSORBOARD
    models = sorted(str(p.relative_to(board)) for p in board.glob("fold-*/round-*"))
    assert models == ["fold-0/round-0", "fold-0/round-1", "fold-1/round-0", "fold-1/round-1"]
    teacher = _scalars(board / "fold-0" / "round-0")
    assert [step for step, _ in teacher["loss/train"]] == [1, 2]
    assert "validation/balanced_accuracy" in teacher
    assert [step for step, _ in _scalars(board / "fold-1" / event_log.PSEUDO_LABELS_RUN)["pseudo_labels/accuracy"]] == [0]
    off = CliRunner().invoke(app, ["kfold", str(data), "--out", str(tmp_path / "off"), *flags, "--no-tensorboard"])
    assert off.exit_code == 0 and not (tmp_path / "off" / layout.TENSORBOARD).exists()
