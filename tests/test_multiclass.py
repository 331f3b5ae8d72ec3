"""Multi-class runs (issue 16): per-class rows, averages named, no-information rate, settings in force, the report.

Everything runs on a generated 4-class data set: predictions tables of a fake
run folder (no model is trained) and, for the checks at start, class folders.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import write_class_folders
from rich.console import Console
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from typer.testing import CliRunner

from noisystudent.cli.commands import app
from noisystudent.cli.tables import print_results
from noisystudent.config.provenance import GIVEN, PRESET, banner, help_default, origin
from noisystudent.config.settings import make_config
from noisystudent.data import folds as folds_module
from noisystudent.data.run_images import load_run_images
from noisystudent.errors import ConfigError
from noisystudent.evaluation.baseline import no_information_warnings
from noisystudent.evaluation.metrics import CLASS_COLUMN, MACRO, WEIGHTED, metric_rows_from_predictions
from noisystudent.layout import CONFIG, FOLDS, METRICS, PREDICTIONS, results_dir, round_dir
from noisystudent.report import write_report
from noisystudent.report.class_tables import patient_calls
from noisystudent.run.results import write_results

CLASSES = ["Benign", "Early", "Pre", "Pro"]
SHARES = [0.1, 0.6, 0.2, 0.1]  # imbalanced: always answering Early is right 60 % of the time


# --- a generated 4-class run folder -------------------------------------------------


def _labels(rng, n: int) -> np.ndarray:
    return rng.choice(CLASSES, size=n, p=SHARES)


def _predictions(rng, fold: int, round_: int, skill: float) -> pd.DataFrame:
    """Validation (40 images, 8 patients) and test (50 images, 10 patients) predictions of one fold model."""
    frames = []
    for split, n, prefix in (("validation", 40, f"v{fold}"), ("test", 50, "t")):
        rng_split = np.random.default_rng(7) if split == "test" else rng  # the same test images in every fold
        labels = _labels(rng_split, n)
        logits = rng.normal(0, 1, (n, 4)) + skill * (labels[:, None] == np.array(CLASSES))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frame = pd.DataFrame({"path": [f"{prefix}_{i}.png" for i in range(n)], "label": labels,
                              "patient": [f"{prefix}P{i // 5}" for i in range(n)], "split": split})
        for c, name in enumerate(CLASSES):
            frame[f"prob_{name}"] = probs[:, c]
        frame["pred"] = np.asarray(CLASSES)[probs.argmax(axis=1)]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _folds_csv(run: Path) -> None:
    rows = []
    for fold in range(2):
        for role, n in (("labelled", 30), ("masked", 30), ("validation", 40)):
            rows += [{"path": f"{role}{fold}_{i}.png", "label": CLASSES[i % 4], "patient": f"P{fold}{role[0]}{i // 5}",
                      "subset": "train", "fold": fold, "role": role} for i in range(n)]
    rows += [{"path": f"t_{i}.png", "label": CLASSES[i % 4], "patient": f"tP{i // 5}", "subset": "test", "fold": -1, "role": "test"}
             for i in range(50)]
    pd.DataFrame(rows).to_csv(run / FOLDS, index=False)


def make_multiclass_run(root: Path, skill: float = 2.5) -> Path:
    """A finished 2-fold, 1-round run on 4 classes; metrics.csv written by the real results code."""
    run = root / "run"
    run.mkdir(parents=True)
    config = make_config(str(root), preset="smoke", folds=2, rounds=1, optimizer="adamw", pseudo_mode="hard", test_fraction=0.25)
    (run / CONFIG).write_text(json.dumps({**config.to_dict(), "version": "0.1.0", "data_fingerprint": "abc"}))
    rng = np.random.default_rng(0)
    for fold in range(2):
        for round_ in range(2):
            round_dir(run, fold, round_).mkdir(parents=True)
            _predictions(rng, fold, round_, skill).to_csv(round_dir(run, fold, round_) / PREDICTIONS, index=False)
    _folds_csv(run)
    write_results(run, config, CLASSES)
    return run


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> Path:
    return make_multiclass_run(tmp_path_factory.mktemp("four"))


# --- 1. per-class, macro and weighted rows ----------------------------------------------


def test_rows_are_macro_weighted_then_each_class_against_the_rest():
    table = _predictions(np.random.default_rng(1), 0, 0, 1.0)
    test = table[table["split"] == "test"]
    rows = metric_rows_from_predictions(test, CLASSES, None)
    assert [r[CLASS_COLUMN] for r in rows] == [MACRO, WEIGHTED, *CLASSES]
    probs = test[[f"prob_{c}" for c in CLASSES]].to_numpy()
    macro, weighted = rows[0], rows[1]
    assert macro["auc"] == pytest.approx(roc_auc_score(test["label"], probs, multi_class="ovr", average="macro"))
    assert weighted["auc"] == pytest.approx(roc_auc_score(test["label"], probs, multi_class="ovr", average="weighted"))
    assert weighted["sensitivity"] == pytest.approx(macro["accuracy"])  # support-weighted recall is accuracy
    assert macro["kappa"] == pytest.approx(cohen_kappa_score(test["label"], test["pred"]))
    assert macro["no_information_rate"] == pytest.approx(test["label"].value_counts(normalize=True).max())
    early = rows[2 + CLASSES.index("Early")]
    truth, guess = test["label"] == "Early", test["pred"] == "Early"
    assert early["sensitivity"] == pytest.approx((truth & guess).sum() / truth.sum())
    assert early["auc"] == pytest.approx(roc_auc_score(truth, test["prob_Early"]))


def test_metrics_csv_has_a_class_column_and_integer_counts(run4):
    text = (results_dir(run4) / METRICS).read_text()
    table = pd.read_csv(results_dir(run4) / METRICS, keep_default_na=False)
    assert set(table[CLASS_COLUMN]) == {MACRO, WEIGHTED, *CLASSES}
    ensemble = table[(table["fold"] == "ensemble") & (table["model"] == "student") & (table["voting"] == "soft")]
    assert list(ensemble[CLASS_COLUMN]) == [MACRO, WEIGHTED, *CLASSES]
    assert "n," in text.splitlines()[0] or text.splitlines()[0].endswith(",n")
    for column in ("tp", "fp", "tn", "fn", "n"):
        assert all(re.fullmatch(r"\d*", str(v)) for v in table[column]), column
    mean = table[(table["fold"] == "mean") & (table["split"] == "test") & (table["model"] == "teacher") & (table[CLASS_COLUMN] == MACRO)]
    assert int(mean["n"].iloc[0]) == 100  # the mean row counts the images of both folds


def test_console_names_the_averages_shows_nir_and_kappa_and_each_class(run4):
    table = pd.read_csv(results_dir(run4) / METRICS, dtype={"fold": str})
    table["voting"] = table["voting"].fillna("")
    console = Console(record=True, width=200)
    print_results(None, table, run4, console=console)
    out = console.export_text()
    assert "macro averages" in out and "NIR" in out and "kappa" in out
    assert "Each class against the rest" in out
    for name in CLASSES:
        assert name in out


# --- 2. no-information rate ---------------------------------------------------------------


@pytest.mark.slow
def test_an_ensemble_below_the_no_information_rate_is_named(tmp_path):
    run = make_multiclass_run(tmp_path, skill=0.0)  # guessing: accuracy near 0.25, NIR about 0.6
    table = pd.read_csv(results_dir(run) / METRICS, keep_default_na=False)
    warnings = no_information_warnings(table)
    assert len(warnings) == 4  # teacher and student ensembles, majority and soft
    assert "does not beat the no-information rate" in warnings[0]
    good = pd.read_csv(results_dir(make_multiclass_run(tmp_path / "good", skill=6.0)) / METRICS, keep_default_na=False)
    assert no_information_warnings(good) == []


# --- 1. --positive at start ------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_folders(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("data") / "cells", classes=tuple(CLASSES), patients_per_class=2,
                               images_per_patient=2, size=(16, 16))


def test_positive_is_optional_for_four_classes_but_must_be_one_of_them(four_folders, tmp_path):
    assert load_run_images(make_config(four_folders, preset="smoke"), tmp_path).classes == CLASSES
    assert load_run_images(make_config(four_folders, preset="smoke", positive="Pre"), tmp_path).classes == CLASSES
    with pytest.raises(ConfigError, match=r"^--positive 'FOO' is not one of the classes Benign, Early, Pre, Pro; [^.]*\.$"):
        load_run_images(make_config(four_folders, preset="smoke", positive="FOO"), tmp_path)


# --- 3. settings in force ----------------------------------------------------------------------


def test_banner_shows_values_in_force_and_marks_overrides():
    config = make_config("/data", folds=3, optimizer="adamw", epochs=4, rounds=1)
    line = banner(config)
    assert "folds 3*" in line and "optimizer adamw*" in line and "epochs 4*" in line and "rounds 1*" in line
    assert "pseudo_mode hard," in line  # cnmc-study's own value, not marked
    assert "50 epochs" not in line
    assert origin(make_config(None).to_dict(), "pseudo_mode") == PRESET
    assert origin(make_config(None, pseudo_mode="hard").to_dict(), "pseudo_mode") == GIVEN


def test_help_shows_what_each_preset_puts_in_force():
    assert help_default("pseudo_mode") == "(default, cnmc-study: hard; presets noisy-student, demo, smoke: soft)"
    result = CliRunner().invoke(app, ["kfold", "--help"], env={"COLUMNS": "250"})
    assert "presets noisy-student, demo, smoke: both" in " ".join(result.output.split())


def test_split_ratio_warning_only_when_the_user_set_it(four_folders, caplog):
    manifest = load_run_images(make_config(four_folders, preset="smoke"), four_folders.parent).manifest
    for given, expected in ((False, 0), (True, 1)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="noisystudent.data.folds"):
            folds_module.assign_folds(manifest, 2, (2, 2, 1), 0.0, 0, ratio_given=given)
        assert sum("split_ratio gives validation" in r.getMessage() for r in caplog.records) == expected
    assert origin(make_config(None, folds=3).to_dict(), "split_ratio") != GIVEN
    assert origin(make_config(None, split_ratio="1:1:1").to_dict(), "split_ratio") == GIVEN


# --- 3 and 4. the report -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def page4(run4) -> str:
    return write_report(run4).read_text()


@pytest.mark.slow
def test_report_settings_and_data_sections(page4):
    assert '<a href="../config.json">config.json</a>' in page4
    given = re.findall(r'<tr class="given"><td><code>(--[a-z-]+)</code>', page4)
    assert {"--optimizer", "--pseudo-mode", "--test-fraction"} <= set(given)
    assert "--folds" not in given  # 2 folds is what the smoke preset chose
    assert "<h2>Data</h2>" in page4 and "masked (labels hidden, pseudo-labelled)" in page4
    assert "<td>outer test set</td>\n      <td>50</td>\n      <td>10</td>" in page4  # images, patients


@pytest.mark.slow
def test_report_tables_name_their_class_scope_and_show_nir_and_kappa(page4):
    assert not re.search(r"positive class:? all", page4, flags=re.I)  # no caption claims the default 'all' for 4 classes
    assert "(positive)" not in page4
    assert "macro averages" in page4 and "Table C. Each class against the rest" in page4
    assert "<th>no-information rate</th>" in page4 and "<th>Cohen's kappa</th>" in page4
    results = re.sub(r"<h2>Settings</h2>.*?(?=<h2>)", "", page4, flags=re.S)  # setting values (--primary-metric) are code names
    assert "f1_weighted" not in results and "balanced_accuracy" not in results
    for header in re.findall(r"<thead>.*?</thead>", page4, flags=re.S):
        assert header.count("<tr") == 1  # one header row
    assert "Table D. Patient-level results" in page4


def test_patient_call_is_the_commonest_class_then_the_highest_mean_probability():
    images = pd.DataFrame({"patient": ["a", "a", "b", "b"], "label": ["Pre", "Pre", "Pro", "Pro"], "pred": ["Pre", "Pro", "Pro", "Pro"],
                           **{f"prob_{c}": [0.1, 0.1, 0.1, 0.1] for c in CLASSES}})
    images.loc[0, "prob_Pre"], images.loc[1, "prob_Pro"] = 0.7, 0.6
    calls = patient_calls(images, CLASSES).set_index("patient")
    assert calls.loc["a", "pred"] == "Pre" and calls.loc["b", "pred"] == "Pro"
