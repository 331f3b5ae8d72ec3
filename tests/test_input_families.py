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
from noisystudent.spreadsheet import escape_formulas, unescape_formulas

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
    assert unescape_formulas(escape_formulas(table)).equals(table)


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


# --- image files ----------------------------------------------------------------------------------


def _sideways(path: Path) -> None:
    """A photo stored sideways, with an EXIF orientation that viewers apply (issue 27: decoded unturned before)."""
    image = Image.open(path)
    exif = image.getexif()
    exif[0x0112] = 6
    image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)


def _huge_header(path: Path) -> None:
    Image.new("L", (9000, 9000)).save(path, optimize=True)  # 81 M pixels, a small file


IMAGE_CASES = [  # (name, what is done to benign/p01_0.png, fragments of the one sentence; None: accepted)
    ("a truncated image", lambda path: truncate(path, 0.3), ["p01_0.png", "cannot be read"]),
    ("a text file named .png", lambda path: path.write_text("not an image"), ["p01_0.png", "not an image file"]),
    ("an empty file", lambda path: path.write_bytes(b""), ["p01_0.png", "cannot be read"]),
    ("more pixels than MAX_PIXELS", _huge_header, ["p01_0.png", "more than the 50,000,000"]),
    ("an EXIF orientation", _sideways, None),
    ("a renamed copy in another format", lambda path: Image.open(path.parent / "p01_1.png").save(path, format="BMP"), None),
]


@pytest.mark.parametrize("name, change, fragments", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_file_family(tmp_path, stop_before_training, name, change, fragments):
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))
    change(data / "benign" / "p01_0.png")
    run = tmp_path / "run"
    code, line = invoke_cli("kfold", data, "--out", run, *FLAGS)
    if fragments is None:
        assert code == 130, line
        return
    refused(code, line, *fragments)
    assert not run.exists()


# --- file-system objects --------------------------------------------------------------------------


def _replace(path: Path, make) -> None:
    path.unlink()
    make(path)


FILE_SYSTEM_CASES = [  # (name, what a CSV row's image becomes, fragments of the one sentence)
    ("a FIFO", lambda path: _replace(path, os.mkfifo), ["p1_0.png"]),  # never opened: it would block
    ("a dangling link", lambda path: _replace(path, lambda p: p.symlink_to(p.parent / "nowhere.png")), ["p1_0.png"]),
    ("a link to a device", lambda path: _replace(path, lambda p: p.symlink_to(os.devnull)), ["p1_0.png"]),
    ("a folder", lambda path: _replace(path, lambda p: p.mkdir()), ["p1_0.png"]),
    ("a link to /dev/zero", lambda path: _replace(path, lambda p: p.symlink_to("/dev/zero")), ["p1_0.png", "character device"]),
    ("a FIFO, named", lambda path: _replace(path, os.mkfifo), ["p1_0.png", "named pipe"]),
]


@pytest.mark.parametrize("name, change, fragments", FILE_SYSTEM_CASES, ids=[c[0] for c in FILE_SYSTEM_CASES])
def test_file_system_object_family(tmp_path, stop_before_training, name, change, fragments):
    rows = _csv_rows(tmp_path)
    change(Path(rows[2]["path"]))
    csv = write_csv(tmp_path / "data.csv", rows, ["path", "label", "patient"])
    run = tmp_path / "run"
    code, line = invoke_cli("kfold", csv, "--out", run, *tiny_flags(test_fraction=0, positive="benign"))
    refused(code, line, *fragments)
    assert not run.exists()


def test_file_system_objects_in_a_class_folder_are_ignored_by_name(tmp_path, stop_before_training):
    """A FIFO, a dangling link or a folder among the images of a class folder is never opened: it is listed and left out."""
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))
    _replace(data / "benign" / "p01_0.png", os.mkfifo)
    (data / "benign" / "p01_7.png").symlink_to(data / "nowhere.png")
    code, line = invoke_cli("kfold", data, "--out", tmp_path / "run", *tiny_flags(patient_regex=PATIENT_REGEX, test_fraction=0, quiet=False))
    assert code == 130, line
    assert "are not images and are ignored" in line


# --- signals --------------------------------------------------------------------------------------


def test_signal_family_ctrl_c_before_training_is_130_and_resumable(tmp_path, monkeypatch):
    """Ctrl-C where training begins: "Interrupted", exit 130, and a run that --resume continues.
    Ctrl-C while model.pt is being written: tests/test_run_file_checks.py (the previous file kept, exit 130)."""
    from noisystudent.run import pipeline

    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))
    monkeypatch.setattr(pipeline, "run_fold", lambda run_ctx, fold: (_ for _ in ()).throw(KeyboardInterrupt))
    code, line = invoke_cli("kfold", data, "--out", tmp_path / "run", *FLAGS)
    assert code == 130 and "Interrupted" in line, line
    code, line = invoke_cli("kfold", "--out", tmp_path / "run", "--resume", "--quiet")
    assert code == 130 and "Interrupted" in line, line  # resumed past every check, to training again


# --- tampered run files ---------------------------------------------------------------------------


TAMPERED_CASES = [  # (name, what is done to the run folder, fragments of the one sentence)
    ("config.json cut short", lambda run: (run / "config.json").write_text((run / "config.json").read_text()[:40]), ["config.json"]),
    ("config.json not an object", lambda run: (run / "config.json").write_text("[1, 2]"), ["is not a JSON object of settings"]),
    ("config.json removed", lambda run: (run / "config.json").unlink(), ["is not empty and holds no run"]),
    ("an edited result setting", lambda run: (run / "config.json").write_text(
        json.dumps({**json.loads((run / "config.json").read_text()), "lr": 0.5})), ["were edited after the run began"]),
    ("the data changed", None, ["have changed since it began"]),
    ("folds.csv edited", lambda run: (run / "folds.csv").write_text((run / "folds.csv").read_text().replace(",validation\n", ",labelled\n", 1)),
     ["folds.csv was changed after the run wrote it"]),
    ("digests.json removed", lambda run: (run / "digests.json").unlink(), ["folds.csv has no digest in"]),
    ("settings_digest deleted", lambda run: (run / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((run / "config.json").read_text()).items() if k != "settings_digest"})), ["has no settings_digest"]),
    ("results/ a link out of the run", lambda run: (run / "results").symlink_to(run.parent), ["is a symbolic link", "would write outside"]),
    # Trained model files (a model.pt of another fold, a truncated one, a checkpoint of another fold) and
    # overwritten cache pixels need a trained run or a built cache: tests/test_run_file_checks.py.
]


@pytest.mark.parametrize("name, change, fragments", TAMPERED_CASES, ids=[c[0] for c in TAMPERED_CASES])
def test_tampered_run_file_family(tmp_path, stop_before_training, name, change, fragments):
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))
    run = tmp_path / "run"
    assert invoke_cli("kfold", data, "--out", run, *FLAGS)[0] == 130
    if change is None:
        save_cell(data / "benign" / "p01_9.png", 0, seed=77)
    else:
        change(run)
    before = sorted(p.name for p in run.iterdir())
    refused(*invoke_cli("kfold", "--out", run, "--resume", "--quiet"), *fragments)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written into the run
