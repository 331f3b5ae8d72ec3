"""The report's Cells section: gallery CSVs, their order, the thumbnail cap, escaping, a missing cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from noisystudent.layout import CACHE, CONFIG, PREDICTIONS, results_dir, round_dir
from noisystudent.report import write_report
from noisystudent.report.galleries import PATIENTS, PSEUDO_CHANGED, PSEUDO_WRONG, TEST_ERRORS, THUMBNAILS

SIZE = 8  # working resolution of the fake cache
EVIL = '<b>"x"&</b>'  # a patient id that is also HTML


def _table(paths, labels, probs_all, split=None, patients=None) -> pd.DataFrame:
    probs_all = np.asarray(probs_all, dtype=float)
    frame = pd.DataFrame({"path": paths, "label": labels, "patient": patients or ["P1"] * len(paths)})
    if split:
        frame["split"] = split
    frame["prob_all"], frame["prob_hem"] = probs_all, 1 - probs_all
    frame["pred"] = np.where(probs_all >= 0.5, "all", "hem")
    return frame


def _write_cache(run: Path, paths: list[str]) -> None:
    """A cache as build_cache leaves it: images-<fp>.npy (N x 3 x S x S uint8) and its JSON sidecar."""
    folder = run / CACHE
    folder.mkdir()
    np.save(folder / "images-abc.npy", np.full((len(paths), 3, SIZE, SIZE), 128, np.uint8))
    (folder / "images-abc.json").write_text(json.dumps({"version": 1, "fingerprint": "abc", "paths": paths}))


def make_run(root: Path, test_cells: int = 40) -> Path:
    """One fold, two rounds; which cells are wrong, and how confidently, is set by hand."""
    run = root / "run"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps({"folds": 1, "rounds": 1, "positive": "all", "voting": "majority"}))
    masked = [f"m{i}.png" for i in range(4)]
    # round 0: m0 wrong at 0.9, m1 wrong at 0.7, m2 right, m3 right
    round0 = _table(masked, ["hem", "hem", "all", "all"], [0.9, 0.7, 0.8, 0.6], split="masked")
    # round 1: m0 still wrong at 0.6, m1 now right (hem at 0.8), m3 now wrong (hem at 0.95)
    round1 = _table(masked, ["hem", "hem", "all", "all"], [0.6, 0.2, 0.8, 0.05], split="masked")
    for round_, table in enumerate((round0, round1)):
        round_dir(run, 0, round_).mkdir(parents=True)
        table.to_csv(round_dir(run, 0, round_) / PREDICTIONS, index=False)
    # test: every 'hem' cell is called all with confidence rising with i; the 'all' cells are right
    paths = [f"<t{i}>.png" for i in range(test_cells)]
    labels = ["hem" if i % 2 else "all" for i in range(test_cells)]
    probs = [0.5 + 0.01 * i if i % 2 else 0.99 for i in range(test_cells)]
    patients = [EVIL if i % 4 < 2 else "P2" for i in range(test_cells)]
    results_dir(run).mkdir()
    _table(paths, labels, probs, patients=patients).to_csv(results_dir(run) / "predictions_student_majority.csv", index=False)
    _write_cache(run, masked + paths)
    return run


def test_gallery_csvs_hold_the_wrong_cells_most_confident_first(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    errors = pd.read_csv(results_dir(run) / TEST_ERRORS, keep_default_na=False)
    wrong = [i for i in range(40) if i % 2]
    assert errors["path"].tolist() == [f"<t{i}>.png" for i in reversed(wrong)]
    assert np.allclose(errors["confidence"], [0.5 + 0.01 * i for i in reversed(wrong)])
    assert set(errors["label"]) == {"hem"} and set(errors["call"]) == {"all"}
    pseudo = pd.read_csv(results_dir(run) / PSEUDO_WRONG)
    assert pseudo[["path", "round"]].values.tolist() == [["m3.png", 1], ["m0.png", 0], ["m1.png", 0], ["m0.png", 1]]
    assert np.allclose(pseudo["confidence"], [0.95, 0.9, 0.7, 0.6])
    changed = pd.read_csv(results_dir(run) / PSEUDO_CHANGED)
    assert changed[["path", "previous_call", "call"]].values.tolist() == [["m3.png", "all", "hem"], ["m1.png", "all", "hem"]]
    assert np.allclose(changed["confidence"], [0.95, 0.8])
    patients = pd.read_csv(results_dir(run) / PATIENTS, keep_default_na=False).set_index("patient")
    assert patients.loc[EVIL, "cells"] == 20 and patients.loc["P2", "cells"] == 20
    assert patients.loc[EVIL, "called_all"] == 1.0  # its hem cells are all called all too


def test_grids_are_capped_and_captions_escaped(tmp_path):
    run = make_run(tmp_path, test_cells=2 * THUMBNAILS + 20)
    page = write_report(run).read_text()
    section = page[page.index('<h2 id="cells">Cells</h2>'):]
    first = section[section.index("<h3>"):section.index("</div>")]
    assert first.count('<figure class="cell"') == THUMBNAILS
    assert first.count("data:image/png;base64,") == THUMBNAILS
    assert EVIL not in page and "&lt;b&gt;&quot;x&quot;&amp;&lt;/b&gt;" in page
    assert "<t67>" not in page and "&lt;t67&gt;.png" in page  # the most confident wrong cell
    assert "&lt;t1&gt;.png" not in page  # the least confident: beyond the cap


def test_a_run_without_its_cache_still_reports(tmp_path):
    run = make_run(tmp_path)
    shutil.rmtree(run / CACHE)
    page = write_report(run).read_text()
    assert "The image cache is missing" in page
    assert "data:image/png" not in page and "no image in the cache" in page
    assert (results_dir(run) / TEST_ERRORS).is_file()


def test_a_run_without_any_gallery_tables_still_reports(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps({"folds": 1, "rounds": 1}))
    page = write_report(run).read_text()
    assert "there are no cells to show" in page
    assert not list(run.glob("results/gallery_*.csv"))


def test_a_cache_of_another_resolution_is_not_shown(tmp_path):
    run = make_run(tmp_path)
    (run / CONFIG).write_text(json.dumps({"folds": 1, "rounds": 1, "voting": "majority", "image_size": 2 * SIZE}))
    page = write_report(run).read_text()
    assert "The image cache is missing" in page and "data:image/png" not in page
