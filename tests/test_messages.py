"""Messages that must say what is true: patient counts, what a new run logs, the advice of each command."""

from __future__ import annotations

import logging

import pytest
from helpers import write_class_folders

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
