"""One table of hostile inputs per family (CSV, image files, file-system objects, signals, tampered
run files, numeric flags): each row is refused in one sentence with exit status 2 (or accepted, where
the row says so), never a traceback, and a refused kfold leaves no run folder.

The rows are the kinds that the hostile rounds of issues 19 and 27 tried; a new kind of input gets a
row here. Numeric flags have their table in test_input_checks.py (BAD_SETTINGS) and their property
test in test_fuzz_inputs.py. kfold is stopped where training would begin (a stub for ``run_fold``
raises KeyboardInterrupt: exit 130 means every check passed), so no row trains.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import PATIENT_REGEX, invoke_cli, save_cell, tiny_flags, truncate, write_class_folders, write_csv
from PIL import Image

from noisystudent.atomic import write_csv as write_table
from noisystudent.layout import RESULTS
from noisystudent.run.tables import read_table

FLAGS = tiny_flags(patient_regex=PATIENT_REGEX, test_fraction=0)
CLASSES = ("benign", "malignant")


@pytest.fixture
def stop_before_training(monkeypatch):
    from noisystudent.run import pipeline

    def stop(run_ctx, fold):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_fold", stop)


def refused(code: int, line: str, *fragments: str) -> None:
    assert code == 2, line
    assert line.count("Error:") == 1, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"


# --- CSV ------------------------------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://example.org","click")', "+1", "-1", "-", "@SUM(A1)", "\tx", "\rx", "'=x", "''+y",
            "plain", "it's", "'quoted", ""]  # the first nine are escaped


def test_formula_like_text_is_escaped_for_spreadsheets_and_read_back_unchanged(tmp_path):
    """Labels such as =HYPERLINK(...) were written as they are, live formulas in a spreadsheet."""
    table = pd.DataFrame({"label": FORMULAS, "prob": np.linspace(-0.5, 0.5, len(FORMULAS))})
    path = tmp_path / RESULTS / "predictions_student_majority.csv"
    path.parent.mkdir()
    write_table(path, table, for_people=True)
    cells = pd.read_csv(path, dtype=str, keep_default_na=False)["label"].tolist()
    assert cells[:9] == ["'" + f for f in FORMULAS[:9]]  # what a spreadsheet shows as text
    assert cells[9:] == FORMULAS[9:]
    assert pd.read_csv(path)["prob"].iloc[0] == -0.5  # numbers are never escaped
    back = read_table(path)
    assert back["label"].tolist() == FORMULAS and np.allclose(back["prob"], table["prob"])


def _csv_rows(root: Path) -> list[dict]:
    return [{"path": str(save_cell(root / "img" / f"p{p}_{i}.png", p % 2, seed=p * 10 + i)), "label": CLASSES[p % 2],
             "patient": f"p{p}"} for p in range(4) for i in range(2)]


def _copy_in_test(rows: list[dict], root: Path) -> list[dict]:
    copy = root / "img" / "renamed.bmp"
    Image.open(rows[0]["path"]).save(copy)
    return rows + [{"path": str(copy), "label": rows[0]["label"], "patient": "p9", "subset": "test"}]


# (name, how the rows are changed, fragments of the one sentence; None: accepted)
CSV_CASES = [
    ("a missing file", lambda rows, root: rows + [{"path": str(root / "gone.png"), "label": "benign", "patient": "p1"}], ["gone.png"]),
    ("an unknown subset", lambda rows, root: [{**rows[0], "subset": "trian"}] + rows[1:], ["trian"]),
    ("a row listed twice", lambda rows, root: rows + rows[:1], ["p0_0.png"]),
    ("no label column", lambda rows, root: [{"path": r["path"]} for r in rows], ["label"]),
    ("a copy of a training image, renamed, in the test subset", _copy_in_test, ["have the same pixels"]),  # issue 27
    ("a label that looks like a formula", lambda rows, root: [{**r, "label": {"benign": "=1+1"}.get(r["label"], r["label"])}
                                                               for r in rows], None),
]


@pytest.mark.parametrize("name, change, fragments", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_family(tmp_path, stop_before_training, name, change, fragments):
    rows = change(_csv_rows(tmp_path), tmp_path)
    csv = write_csv(tmp_path / "data.csv", rows, sorted({key for row in rows for key in row}, key=["path", "label", "patient", "subset"].index))
    run = tmp_path / "run"
    code, line = invoke_cli("kfold", csv, "--out", run, *tiny_flags(test_fraction=0, positive="=1+1" if fragments is None else "benign"))
    if fragments is None:
        assert code == 130, line
        return
    refused(code, line, *fragments)
    assert not run.exists()
