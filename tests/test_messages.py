"""Messages that must say what is true: patient counts, what a new run logs, the advice of each command."""

from __future__ import annotations

import logging

import pytest
from helpers import invoke_cli, write_class_folders

from noisystudent.config.run_config import RunConfig
from noisystudent.data.folds import assign_folds
from noisystudent.data.manifest import LABEL, PATH, PATIENT, make_manifest
from noisystudent.errors import DataError
from noisystudent.run.folder import check_run_folder


def test_too_few_majority_patients_counts_all_patients_with_that_label():
    """7 patients have hem images, only 1 mostly hem: before, "Only 1 patients have label 'hem'"."""
    rows = [{PATH: f"/d/a{p}_{i}.png", LABEL: "all", PATIENT: f"P{p}", "subset": "train"} for p in range(10) for i in range(4)]
    rows += [{PATH: f"/d/h{p}_0.png", LABEL: "hem", PATIENT: f"P{p}", "subset": "train"} for p in range(6)]  # a minority
    rows += [{PATH: f"/d/h9{i}.png", LABEL: "hem", PATIENT: "P99", "subset": "train"} for i in range(3)]  # mostly hem
    with pytest.raises(DataError) as refused:
        assign_folds(make_manifest(rows), n_folds=2, test_fraction=0.2)
    assert str(refused.value) == (
        "Only 1 of the 7 patients with 'hem' images has it as the majority label (which decides the class a patient "
        "is split by); holding out 1 for the test set leaves fewer than the 2 that 2 folds need.")


def test_a_new_run_does_not_report_an_earlier_session(tmp_path, caplog):
    """Under its lock a new run sees its own run.log: before, "The session before stopped before saving config.json"."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.log").write_text("this session's first line\n")
    (run / ".lock").touch()
    with caplog.at_level(logging.INFO, logger="noisystudent.run.folder"):
        check_run_folder(run, RunConfig(), resume=False, before_writing=False)
    assert "session before" not in caplog.text
    with caplog.at_level(logging.INFO, logger="noisystudent.run.folder"):
        check_run_folder(run, RunConfig(), resume=False)  # found before this session wrote anything: an earlier one's
    assert "The session before stopped before saving config.json" in caplog.text


def kfold_on_csv(tmp_path, listed: str) -> tuple[int, str]:
    """``kfold`` on a CSV whose first row lists ``listed`` and whose other rows are fine images."""
    data = write_class_folders(tmp_path / "data", patients_per_class=3, images_per_patient=2)
    rows = [f"{p},{p.parent.name},{p.name[:3]}" for p in sorted(data.rglob("*.png"))]
    rows[0] = f"{listed},benign,p01"
    (tmp_path / "data.csv").write_text("path,label,patient\n" + "\n".join(rows) + "\n")
    return invoke_cli("kfold", tmp_path / "data.csv", "--out", tmp_path / "run", "--preset", "smoke", "--positive", "malignant")


def test_a_listed_device_is_named_as_one(tmp_path):
    code, output = kfold_on_csv(tmp_path, "/dev/zero")
    assert code == 2 and f"Error: The image /dev/zero listed on line 2 of {tmp_path / 'data.csv'} is a character device, not a regular file." in output
    assert not (tmp_path / "run").exists()


def test_a_file_name_over_255_bytes_is_one_sentence_and_leaves_no_run_folder(tmp_path):
    """Before: OSError [Errno 36] File name too long, a traceback, and the run folder left behind."""
    code, output = kfold_on_csv(tmp_path, "x" * 300 + ".png")
    assert code == 2 and "cannot be opened: File name too long." in output and "xxx...xxx" in output, output
    assert not (tmp_path / "run").exists()
