"""Every error a user can cause ends in one sentence naming the file or value, exit status 2, no traceback.

Each case builds its bad input in tmp_path and runs `noisystudent kfold`
through Typer's CliRunner; all of them stop before any training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import save_noise, tiny_flags, torch_threads, truncate, write_class_folders, write_csv
from typer.testing import CliRunner

from noisystudent.cli.commands import app

FLAGS = tiny_flags(epochs=1)


def kfold(data, tmp_path: Path, *extra):
    """Run kfold on ``data`` into tmp_path/run; return the result and the output as one line."""
    args = ["kfold", *([str(data)] if data is not None else []), "--out", str(tmp_path / "run"), *FLAGS, *map(str, extra)]
    result = CliRunner().invoke(app, args)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result, " ".join(result.output.split())


def assert_refused(result, line: str, *fragments: str) -> None:
    assert result.exit_code == 2, line
    error = line[line.index("Error:"):]
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in {error!r}"


@pytest.fixture
def data(tmp_path) -> Path:
    """2 classes x 2 patients x 2 images."""
    return write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2)


# --- data sets and images ------------------------------------------------------------------


def test_missing_data_path(tmp_path):
    missing = tmp_path / "no-such-data"
    assert_refused(*kfold(missing, tmp_path), f"The data path {missing} does not exist.")


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(*kfold(tmp_path / "empty", tmp_path), f"The folder {tmp_path / 'empty'} has no class sub-folders.")


def test_class_folder_without_images(data, tmp_path):
    (data / "unknown").mkdir()
    assert_refused(*kfold(data, tmp_path), f"The class folder {data / 'unknown'} contains no images.")


def test_a_file_that_is_not_an_image_despite_its_extension(data, tmp_path):
    fake = data / "benign" / "p01_7.png"
    fake.write_text("patient notes, not pixels")
    assert_refused(*kfold(data, tmp_path), f"The image {fake} cannot be read: it is not an image file")


def test_a_truncated_image(data, tmp_path):
    cut = truncate(save_noise(data / "malignant" / "p03_7.png", size=64), keep=0.5)
    assert_refused(*kfold(data, tmp_path), f"The image {cut} cannot be read")


def test_a_file_name_without_the_patient_pattern(data, tmp_path):
    stray = save_noise(data / "benign" / "scan_0001.png")
    assert_refused(*kfold(data, tmp_path), f"The file name {stray} does not match the patient regex")


def test_a_patient_regex_without_a_group(data, tmp_path):
    assert_refused(*kfold(data, tmp_path, "--patient-regex", r"p\d+"), r"'p\\d+' must have exactly one group")


def test_one_class_only(tmp_path):
    data = write_class_folders(tmp_path / "data", classes=("benign",), patients_per_class=3)
    assert_refused(*kfold(data, tmp_path), "The training data has a single class (benign); at least two are needed.")


def test_fewer_patients_than_folds(data, tmp_path):
    assert_refused(*kfold(data, tmp_path, "--folds", "3"), "Only 2 patients have label 'benign'; 3 folds need at least 3.")


def test_a_positive_class_that_does_not_exist(data, tmp_path):
    assert_refused(*kfold(data, tmp_path, "--positive", "ALL"), "The positive class 'ALL' is not one of the classes benign, malignant")


def test_an_invalid_setting_names_it(data, tmp_path):
    assert_refused(*kfold(data, tmp_path, "--optimizer", "lion"), "optimizer must be one of sgd, adam, adamw; got 'lion'.")


# --- CSV manifests -----------------------------------------------------------------------------


def _csv_rows(data: Path) -> list[dict]:
    return [{"path": str(p.relative_to(data)), "label": p.parent.name, "patient": p.name.split("_")[0]}
            for p in sorted(data.rglob("*.png"))]


def test_csv_with_unknown_columns(data, tmp_path):
    csv = write_csv(data / "images.csv", [{**row, "stain": "MGG"} for row in _csv_rows(data)])
    assert_refused(*kfold(csv, tmp_path), f"The CSV file {csv} has unknown column(s) stain")


def test_csv_with_a_duplicate_row(data, tmp_path):
    rows = _csv_rows(data)
    csv = write_csv(data / "images.csv", rows + [rows[0]])
    assert_refused(*kfold(csv, tmp_path), f"The image {data / rows[0]['path']} is listed twice in {csv}, on lines 2 and {len(rows) + 2}.")


def test_csv_with_a_path_that_does_not_exist(data, tmp_path):
    csv = write_csv(data / "images.csv", _csv_rows(data) + [{"path": "benign/p01_9.png", "label": "benign", "patient": "p01"}])
    assert_refused(*kfold(csv, tmp_path), f"The image {data / 'benign' / 'p01_9.png'} listed on line 10 of {csv} does not exist.")


def test_csv_with_an_unknown_subset(data, tmp_path):
    csv = write_csv(data / "images.csv", [{**row, "subset": "holdout"} for row in _csv_rows(data)])
    assert_refused(*kfold(csv, tmp_path), f"Unknown subset 'holdout' on line 2 of {csv}")


def test_a_test_set_label_that_no_training_image_has(data, tmp_path):
    test_image = save_noise(tmp_path / "test" / "p09_0.png")
    test_csv = write_csv(tmp_path / "test" / "test.csv", [{"path": "p09_0.png", "label": "lymphoma", "patient": "p09"}])
    assert_refused(*kfold(data, tmp_path, "--test", test_csv),
                   f"The test image {test_image} has the label 'lymphoma', which no training image has (training classes: benign, malignant).")


def test_an_unreadable_csv(data, tmp_path):
    csv = data / "images.csv"
    csv.write_bytes(b"path,label\n\xff\xfe\x00broken")
    assert_refused(*kfold(csv, tmp_path), f"The CSV file {csv} cannot be read")


# --- run folders -----------------------------------------------------------------------------


def test_a_run_folder_of_another_configuration(data, tmp_path, monkeypatch):
    from noisystudent.run import pipeline

    monkeypatch.setattr(pipeline, "run_fold", _interrupt)  # config, folds and cache written; no training
    assert kfold(data, tmp_path)[0].exit_code == 130
    run = tmp_path / "run"
    assert_refused(*kfold(data, tmp_path, "--batch-size", "4"), f"The folder {run} already holds a run; pass --resume")
    assert_refused(*kfold(data, tmp_path, "--batch-size", "4", "--seed", "3", "--resume"),
                   f"The run in {run} was made with other settings; differing: seed (0 -> 3), batch_size (8 -> 4).")


def _interrupt(run_ctx, fold):
    raise KeyboardInterrupt


# --- failures during training ------------------------------------------------------------------


def test_no_pseudo_label_passing_the_threshold(tmp_path, monkeypatch):
    from noisystudent.run import pipeline

    data = write_class_folders(tmp_path / "data", patients_per_class=4, images_per_patient=1)
    monkeypatch.setattr(pipeline, "train_model", lambda *args, **kwargs: None)  # no training: predictions are faked
    monkeypatch.setattr(pipeline, "predict_round", _uncertain_predictions)
    assert_refused(*kfold(data, tmp_path, "--pseudo-threshold", "0.99"),
                   "No image of fold 0 passed the pseudo-label threshold 0.99")


def _uncertain_predictions(run_ctx, fold, round_):
    import numpy as np
    import pandas as pd

    from noisystudent import layout
    from noisystudent.inference.tables import prediction_table
    from noisystudent.run.pipeline import SPLIT_OF_ROLE, fold_rows

    frame = pd.concat([fold_rows(run_ctx.fold_table, fold, role).assign(**{layout.SPLIT: split}) for role, split in SPLIT_OF_ROLE.items()],
                      ignore_index=True)
    return prediction_table(frame[["path", "label", "patient", layout.SPLIT]], np.full((len(frame), 2), 0.5), run_ctx.classes)


@pytest.mark.slow
def _unbounded_lr(monkeypatch) -> None:
    """lr is bounded at 10 since a user's 1e308 overflowed; these tests need a divergence for sure."""
    from noisystudent.config import run_config

    monkeypatch.setitem(run_config.RANGES, "lr", run_config.POSITIVE)


@pytest.mark.slow
def test_a_diverging_training_ends_in_one_sentence(data, tmp_path, monkeypatch):
    _unbounded_lr(monkeypatch)
    with torch_threads(1):
        result = CliRunner().invoke(app, ["kfold", str(data), "--out", str(tmp_path / "run"), *FLAGS, "--lr", "1e30",
                                          "--scheduler", "none", "--batch-size", "2"])
    line = " ".join(result.output.split())
    assert "Traceback" not in result.output and result.exit_code == 2, line
    assert "The training loss became" in line and "lower the learning rate" in line


@pytest.mark.slow
def test_a_model_predicting_nan_is_not_used_for_pseudo_labels(data, tmp_path, monkeypatch):
    """One step per epoch: the loss of the only step is finite, the weights after it are not."""
    _unbounded_lr(monkeypatch)
    with torch_threads(1):
        result, line = kfold(data, tmp_path, "--lr", "1e30", "--scheduler", "none")
    model = tmp_path / "run" / "fold-0" / "round-0" / "model.pt"
    assert_refused(result, line, f"The model {model} predicts non-finite probabilities: its training diverged")
    assert not (model.parent / "predictions.csv").exists()


def test_a_full_disk_outside_the_atomic_writes_is_one_sentence(data, tmp_path, monkeypatch):
    import errno

    from noisystudent.data import folds

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "folds.csv"))

    monkeypatch.setattr(folds, "save_folds_bytes", full)
    assert_refused(*kfold(data, tmp_path),
                   f"No space left on device while writing {tmp_path / 'run' / 'folds.csv'}; free some space and continue with --resume.")
