"""noisystudent compare RUN_A RUN_B: the same paired bootstrap across two runs with one outer test set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from noisystudent.cli.commands import app
from noisystudent.evaluation.statistics import mcnemar_exact


def _run(folder, right, seed):
    """A finished run's student majority ensemble on 40 test images of 20 patients; ``right`` images called correctly."""
    rng = np.random.default_rng(seed)
    labels = np.array(["all", "hem"] * 20)
    pred = np.where(np.arange(40) < right, labels, np.where(labels == "all", "hem", "all"))
    (folder / "results").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"positive": "all", "binary": None, "voting": "majority"}))
    table = pd.DataFrame({"path": [f"/t/{i:02d}.png" for i in range(40)], "label": labels, "patient": [f"P{i // 2}" for i in range(40)],
                          "prob_all": rng.random(40), "pred": pred})
    table["prob_hem"] = 1 - table["prob_all"]
    for k in range(3):
        table[f"vote_fold{k}"] = pred
    table.sample(frac=1, random_state=seed).to_csv(folder / "results" / "predictions_student_majority.csv", index=False)  # any row order
    return folder, labels, pred


def test_compare_prints_interval_mcnemar_and_verdict_and_writes_the_table(tmp_path):
    a, labels, pred_a = _run(tmp_path / "a", right=20, seed=0)
    b, _, pred_b = _run(tmp_path / "b", right=40, seed=1)
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "cmp.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "cmp.csv").set_index("metric")
    assert table.loc["accuracy", "difference"] == 0.5 and table.loc["accuracy", "low"] > 0
    assert (table["unit"] == "patient").all() and (table["units"] == 20).all()
    expected_p = mcnemar_exact(labels, pred_a, pred_b).p_value
    assert f"McNemar exact p = {expected_p:.3g}" in " ".join(result.output.split())
    assert "Verdict on the primary metric, accuracy: better." in " ".join(result.output.split())  # run A made before --primary-metric


def test_compare_refuses_runs_with_different_test_sets(tmp_path):
    a, *_ = _run(tmp_path / "a", right=20, seed=0)
    b, *_ = _run(tmp_path / "b", right=20, seed=1)
    path = b / "results" / "predictions_student_majority.csv"
    pd.read_csv(path).iloc[:30].to_csv(path, index=False)
    result = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 2 and "not evaluated on the same test images" in result.output


def test_compare_with_an_empty_predictions_file_is_one_sentence(tmp_path):
    """A 0-byte results/predictions_*.csv: before, pandas' EmptyDataError and a traceback."""
    a, *_ = _run(tmp_path / "a", right=20, seed=0)
    b, *_ = _run(tmp_path / "b", right=20, seed=1)
    path = b / "results" / "predictions_student_majority.csv"
    path.write_bytes(b"")
    result = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == (f"Error: The file {path} cannot be read (it is empty); noisystudent kfold --out {b} "
                                               "--resume writes it again from the fold predictions.")
