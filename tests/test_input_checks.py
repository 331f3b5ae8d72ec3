"""Every setting and path is checked before anything is written; a refused command leaves no trace.

Each case runs the real CLI in-process (CliRunner) and asserts exit status 2,
one ``Error:`` sentence naming the value, no traceback, and that the run
folder (or output file) does not exist afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
from helpers import PATIENT_REGEX, assert_one_sentence, write_class_folders
from helpers import invoke_cli as invoke

from noisystudent.config.run_config import RunConfig
from noisystudent.errors import os_error_sentence
from noisystudent.run.folder import write_config

FLAGS = [
    "--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--rounds", "1", "--epochs", "1",
    "--image-size", "32", "--batch-size", "8", "--weights", "none", "--arch", "resnet18", "--device", "cpu",
    "--workers", "1", "--test-fraction", "0", "--quiet",  # 2 patients per class: no outer test set
]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))


# --- kfold settings ------------------------------------------------------------------------

BAD_SETTINGS = [
    (["--lr", "nan"], "lr must be a finite number > 0 and <= 10.0; got nan."),
    (["--lr", "inf"], "lr must be a finite number > 0 and <= 10.0; got inf."),
    (["--momentum", "nan"], "momentum must be a finite number >= 0 and < 1; got nan."),
    (["--weight-decay", "inf"], "weight_decay must be a finite number >= 0 and <= 1.0; got inf."),
    (["--gamma", "nan"], "gamma must be a finite number > 0 and <= 1; got nan."),
    (["--pseudo-temperature", "nan"], "pseudo_temperature must be a finite number > 0; got nan."),
    (["--student-dropout", "1.5"], "student_dropout must be a finite number >= 0 and < 1; got 1.5."),
    (["--eval-batch-size", "0"], "eval_batch_size must be a whole number >= 1; got 0."),
    (["--step-size", "0"], "step_size must be a whole number >= 1; got 0."),
    (["--label-smoothing", "1.5"], "label_smoothing must be a finite number >= 0 and < 1; got 1.5."),
    (["--seed", "12345678901234567890123"], "seed must be a whole number"),
    (["--device", "cuda:abc"], "device must be auto, cpu, mps, cuda or cuda:N"),
    (["--image-size", "100000"], "image_size must be a whole number >= 8 and <= 1024; got 100000."),
    (["--test-fraction", "nan"], "test_fraction must be a finite number >= 0 and <= 0.9; got nan."),
    (["--split-ratio", "2:nan:1"], "split_ratio must be three non-negative numbers"),
    (["--rounds", "21"], "rounds must be a whole number >= 0 and <= 20; got 21."),  # --rounds 1000000 wrote 23 GB
    (["--epochs", "1000000000000"], "epochs must be a whole number >= 1 and <= 100000"),  # was a MemoryError
    (["--lr", "1e308"], "lr must be a finite number > 0 and <= 10"),  # was an overflow
    (["--pseudo-per-class", "100000000000000000"], "pseudo_per_class must be a whole number >= 0 and <= 10000000"),
    (["--concurrent", "0"], "concurrent must be a whole number >= 1 and <= 64; got 0."),
]


@pytest.mark.parametrize("flags, message", BAD_SETTINGS, ids=[" ".join(f) for f, _ in BAD_SETTINGS])
def test_a_bad_setting_is_refused_before_the_run_folder_exists(tmp_path, data, flags, message):
    run = tmp_path / "runs" / "x"
    assert_one_sentence(*invoke("kfold", data, "--out", run, *FLAGS, *flags), message)
    assert not run.exists() and not (tmp_path / "runs").exists()


def test_a_mistyped_weights_path_is_refused_before_the_run_folder_exists(tmp_path, data):
    run = tmp_path / "run"
    assert_one_sentence(*invoke("kfold", data, "--out", run, *FLAGS, "--weights", tmp_path / "modle.pt"),
                        f"The weights file {tmp_path / 'modle.pt'} does not exist")
    assert not run.exists()


def test_a_cache_dir_that_is_a_file_is_refused(tmp_path, data):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    assert_one_sentence(*invoke("kfold", data, "--out", tmp_path / "run", *FLAGS, "--cache-dir", cache),
                        f"{cache} is a file, not a folder; choose a folder with --cache-dir.")
    assert not (tmp_path / "run").exists()


def test_a_run_folder_inside_the_data_is_refused(tmp_path, data):
    assert_one_sentence(*invoke("kfold", data, "--out", data / "run", *FLAGS),
                        f"The folder {data / 'run'} lies inside the input {data}")
    assert not (data / "run").exists()


def test_a_data_error_leaves_no_run_folder(tmp_path, data):
    (data / "unknown").mkdir()
    assert_one_sentence(*invoke("kfold", data, "--out", tmp_path / "run", *FLAGS), "contains no images")
    assert not (tmp_path / "run").exists()


def test_a_refused_setting_does_not_block_the_corrected_command(tmp_path, data, monkeypatch):
    from noisystudent.run import pipeline

    run = tmp_path / "run"
    assert invoke("kfold", data, "--out", run, *FLAGS, "--gamma", "nan")[0] == 2
    monkeypatch.setattr(pipeline, "run_fold", _interrupt)
    assert invoke("kfold", data, "--out", run, *FLAGS, "--gamma", "0.5")[0] == 130  # started, then interrupted
    assert json.loads((run / "config.json").read_text())["gamma"] == 0.5


def _interrupt(run_ctx, fold):
    raise KeyboardInterrupt


# --- run folders whose files are of the wrong kind -------------------------------------------


@pytest.fixture
def started_run(tmp_path, data, monkeypatch) -> Path:
    from noisystudent.run import pipeline

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "run_fold", _interrupt)
        assert invoke("kfold", data, "--out", run, *FLAGS)[0] == 130
    return run


@pytest.mark.parametrize("name, make", [(".lock", "folder"), ("run.log", "folder"), ("results", "file"), (".lock", "fifo")])
def test_a_run_folder_entry_of_the_wrong_kind_is_refused(started_run, name, make):
    path = started_run / name
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    {"folder": path.mkdir, "file": lambda: path.write_text("x"), "fifo": lambda: os.mkfifo(path)}[make]()
    assert_one_sentence(*invoke("kfold", "--out", started_run, "--resume"), f"{path} is", "not a usable run folder")


@pytest.mark.parametrize("key, value, message", [
    ("lr", "fast", "lr must be a number; got 'fast'."),
    ("epochs", 2.5, "epochs must be a whole number of at most 18 digits or"[:43]),
    ("folds", None, "folds must be a whole number"),
    ("bogus", 1, "Unknown setting 'bogus'"),
])
def test_a_hand_edited_config_json_with_wrong_types_is_named(started_run, key, value, message):
    path = started_run / "config.json"
    document = json.loads(path.read_text())
    document[key] = value
    path.write_text(json.dumps(document))
    assert_one_sentence(*invoke("kfold", "--out", started_run, "--resume"),
                        f"The run configuration {path} holds an unusable setting", message)


def test_a_config_json_that_is_not_an_object_is_named(started_run):
    (started_run / "config.json").write_text("[1, 2]")
    assert_one_sentence(*invoke("kfold", "--out", started_run, "--resume"), "is not a JSON object of settings")


# --- ensemble outputs ------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path, data) -> Path:
    """A run folder with config.json only: every output check happens before a model is loaded."""
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, RunConfig(data=str(data), folds=2, rounds=1, arch="resnet18", weights="none"), "fingerprint")
    return run


def _predict(run: Path, *inputs_and_flags) -> tuple[int, str]:
    return invoke("ensemble", "predict", run, *inputs_and_flags, "--device", "cpu")


def test_a_device_node_is_never_an_output(run, data):
    for command in (["ensemble", "predict", run, data], ["ensemble", "evaluate", run, data]):
        assert_one_sentence(*invoke(*command, "--out", "/dev/null"), "The output /dev/null is a character device, not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not Path("/dev/null_patients.csv").exists() and not Path("/dev/null_predictions.csv").exists()


def test_a_fifo_is_never_an_output(run, data, tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert_one_sentence(*_predict(run, data, "--out", fifo), f"The output {fifo} is a named pipe (FIFO)")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_an_input_list_is_never_overwritten(run, data, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + str(next(data.rglob("*.png"))) + "\n")
    before = listing.read_bytes()
    assert_one_sentence(*_predict(run, listing, "--out", listing), f"The output {listing} is also an input of this command")
    assert listing.read_bytes() == before


def test_an_output_inside_the_data_or_the_run_is_refused(run, data):
    assert_one_sentence(*_predict(run, data, "--out", data / "preds.csv"), f"lies inside {data}, which this command only reads")
    assert_one_sentence(*_predict(run, data, "--out", run / "preds.csv"), "lies inside the run folder")
    assert not (data / "preds.csv").exists() and not (run / "preds.csv").exists()


def test_an_output_that_is_a_folder_is_refused(run, data, tmp_path):
    (tmp_path / "out").mkdir()
    assert_one_sentence(*_predict(run, data, "--out", tmp_path / "out"), f"The output {tmp_path / 'out'} is a folder")


def test_a_negative_batch_size_or_unknown_device_is_refused(run, data, tmp_path):
    assert_one_sentence(*_predict(run, data, "--out", tmp_path / "p.csv", "--batch-size", "-4"),
                        "--batch-size must be a whole number between 1 and")
    assert_one_sentence(*invoke("ensemble", "predict", run, data, "--out", tmp_path / "p.csv", "--device", "cuda:abc"),
                        "Device 'cuda:abc' is not a device name")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_output_folder_is_one_sentence(run, data, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert_one_sentence(*_predict(run, data, "--out", folder / "p.csv"), "Permission denied")
    finally:
        folder.chmod(0o700)


def test_permission_and_folder_errors_become_one_sentence():
    assert os_error_sentence(PermissionError(errno.EACCES, "Permission denied", "/ro/p.csv")) == (
        "Permission denied for /ro/p.csv (Permission denied); fix its permissions or choose another path.")
    assert os_error_sentence(IsADirectoryError(errno.EISDIR, "Is a directory", "/x")).startswith("/x is a folder")
    assert os_error_sentence(OSError(errno.EIO, "I/O error", "/x")) is None  # not the user's to fix: a traceback


# --- a hand-edited config.json -----------------------------------------------------------------


def test_a_hand_edited_result_setting_is_refused_on_resume_naming_it(started_run):
    path = started_run / "config.json"
    document = json.loads(path.read_text())
    document.update(lr=0.5, epochs=7)
    path.write_text(json.dumps(document))
    assert_one_sentence(*invoke("kfold", "--out", started_run, "--resume"),
                        f"The settings epochs, lr in {path} were edited after the run began")


def test_a_hand_edited_execution_setting_is_accepted_on_resume(started_run, monkeypatch):
    from noisystudent.run import pipeline

    path = started_run / "config.json"
    document = json.loads(path.read_text())
    document.update(workers=3, eval_batch_size=5)
    path.write_text(json.dumps(document))
    monkeypatch.setattr(pipeline, "run_fold", _interrupt)
    assert invoke("kfold", "--out", started_run, "--resume")[0] == 130  # got past every check


# --- labels that differ only in case -------------------------------------------------------------


@pytest.fixture
def case_data(tmp_path) -> Path:
    """ALL/ all/ Hem/ hem/: two classes spelled two ways each, 2 patients per folder."""
    root = write_class_folders(tmp_path / "cased", classes=("ALL", "all", "Hem", "hem"), patients_per_class=2,
                               images_per_patient=2, size=(16, 16))
    return root


def test_labels_differing_only_in_case_are_reported_by_inspect(case_data):
    code, line = invoke("data", "inspect", case_data, "--patient-regex", PATIENT_REGEX)
    assert code == 0
    assert "Some labels differ only in case or surrounding spaces ('ALL', 'all'; 'Hem', 'hem')" in line
    assert "No problems found" not in line


def test_labels_differing_only_in_case_are_refused_by_kfold(case_data, tmp_path):
    flags = [f for f in FLAGS if f not in ("--positive", "malignant")]
    assert_one_sentence(*invoke("kfold", case_data, "--out", tmp_path / "run", *flags, "--positive", "all"),
                        "Some labels differ only in case", "--label-map 'ALL=all,Hem=hem'")
    assert not (tmp_path / "run").exists()


def test_a_label_map_merges_them(case_data, tmp_path, monkeypatch):
    from noisystudent.run import pipeline

    monkeypatch.setattr(pipeline, "run_fold", _interrupt)
    flags = [f for f in FLAGS if f not in ("--positive", "malignant")]
    code, line = invoke("kfold", case_data, "--out", tmp_path / "run", *flags, "--positive", "all", "--label-map", "ALL=all,Hem=hem")
    assert code == 130, line
    folds = (tmp_path / "run" / "folds.csv").read_text()
    assert ",ALL," not in folds and ",Hem," not in folds and ",all," in folds and ",hem," in folds


def test_a_label_map_naming_an_unknown_label_is_refused(data, tmp_path):
    assert_one_sentence(*invoke("kfold", data, "--out", tmp_path / "run", *FLAGS, "--label-map", "Benign=benign"),
                        "--label-map renames 'Benign', which no image has as its label.")
    assert_one_sentence(*invoke("kfold", data, "--out", tmp_path / "run", *FLAGS, "--label-map", "benign"),
                        "label_map must look like 'ALL=all,Hem=hem'; got 'benign'.")


def test_every_numeric_setting_has_a_range():
    from dataclasses import fields

    from noisystudent.config.run_config import RANGES

    numeric = {f.name for f in fields(RunConfig) if str(f.type) in ("int", "float")}
    assert numeric == set(RANGES)
