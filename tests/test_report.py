"""The report: tables, headline and figures from a generated run folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from noisystudent.cli import app
from noisystudent.errors import RunFolderError, UserError
from noisystudent.evaluation.metrics import COUNT_COLUMNS, METRIC_COLUMNS, metrics_from_predictions, summarise_folds
from noisystudent.layout import CONFIG, HISTORY, METRICS, PREDICTIONS, PSEUDO_LABELS, REPORT, results_dir, round_dir
from noisystudent.report import fold_table, headline, summary_table, write_report
from noisystudent.report.plots import plot_curves
from noisystudent.report.run_reader import load_run, read_metrics

CLASSES = ["all", "hem"]
POSITIVE = "all"
IDENTITY = ["model", "fold", "round", "split", "voting"]
FULL_RUN_PNGS = ["curves_fold0.png", "curves_fold1.png", "confusion.png", "confusion_folds.png",
                 "roc.png", "pseudo_confidence.png", "helped.png"]


# --- a fake run folder ---------------------------------------------------------


def _probabilities(rng: np.random.Generator, labels: np.ndarray, round_: int) -> np.ndarray:
    """P(all): students (higher rounds) separate the classes a little better."""
    signal = np.where(labels == "all", 1.0, -1.0) * (0.8 + 0.4 * round_)
    return 1.0 / (1.0 + np.exp(-(signal + rng.normal(0.0, 1.2, len(labels)))))


def _predictions(rng, fold: int, round_: int, test: bool) -> pd.DataFrame:
    parts = [("validation", [f"v{fold}_{i}" for i in range(40)], fold)]
    if test:
        parts.append(("test", [f"t{i}" for i in range(30)], 9))
    parts.append(("pool", [f"p{i}" for i in range(20)], 8))
    frames = []
    for split, paths, patient in parts:
        labels = np.array(["" if split == "pool" else CLASSES[i % 2] for i in range(len(paths))])
        truth = np.where(labels == "", CLASSES[0], labels)
        prob = _probabilities(rng, truth, round_)
        frames.append(pd.DataFrame({"path": paths, "label": labels, "patient": f"P{patient}", "split": split,
                                    "prob_all": prob, "prob_hem": 1 - prob}))
    table = pd.concat(frames, ignore_index=True)
    table["pred"] = np.where(table["prob_all"] >= 0.5, "all", "hem")
    return table


def _history(rng, round_: int) -> pd.DataFrame:
    epochs = np.arange(1, 5)
    loss = 0.7 / epochs ** (0.5 + 0.1 * round_)
    return pd.DataFrame({"epoch": epochs, "lr": 1e-3, "train_loss": loss, "val_loss": loss + rng.uniform(0, 0.1, 4),
                         "val_accuracy": 0.6 + 0.05 * epochs + 0.02 * round_, "val_f1": 0.6 + 0.05 * epochs,
                         "seconds": 1.0, "images_per_s": 100.0, "image_size": 64})


def _pseudo_labels(predictions: pd.DataFrame) -> pd.DataFrame:
    pool = predictions[predictions["split"] == "pool"]
    return pd.DataFrame({"path": pool["path"], "target_all": pool["prob_all"], "target_hem": pool["prob_hem"],
                         "confidence": pool[["prob_all", "prob_hem"]].max(axis=1), "pred": pool["pred"], "copies": 1})


def _metric_row(table: pd.DataFrame, split: str, **identity) -> dict:
    values = metrics_from_predictions(table[table["split"] == split], CLASSES, POSITIVE)
    return {**identity, "split": split, **values}


def _ensemble(tables: list[pd.DataFrame], voting: str) -> pd.DataFrame:
    test = [t[t["split"] == "test"].reset_index(drop=True) for t in tables]
    out = test[0][["path", "label", "patient"]].copy()
    out["prob_all"] = np.mean([t["prob_all"] for t in test], axis=0)
    out["prob_hem"] = 1 - out["prob_all"]
    votes = np.mean([t["pred"] == "all" for t in test], axis=0)
    positive = votes > 0.5 if voting == "majority" else out["prob_all"] >= 0.5
    out["pred"] = np.where(positive, "all", "hem")
    out["agreement"] = np.maximum(votes, 1 - votes)
    for k, t in enumerate(test):
        out[f"vote_fold{k}"] = t["pred"]
    return out


def make_run(root: Path, folds: int = 2, rounds: int = 2, test: bool = True, pseudo: bool = True,
             missing: tuple[tuple[int, int], ...] = ()) -> Path:
    """A run folder as the pipeline leaves it; ``missing`` (fold, round) models were never trained."""
    run = root / "run"
    run.mkdir()
    config = {"folds": folds, "rounds": rounds, "arch": "efficientnet-b0", "epochs": 4, "image_size": 64,
              "positive": POSITIVE, "preset": "tiny", "data": "/data/C-NMC", "voting": "majority",
              "version": "0.1.0", "data_fingerprint": "abc123"}
    (run / CONFIG).write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    rows, by_round = [], {}
    for fold in range(folds):
        for round_ in range(rounds + 1):
            if (fold, round_) in missing:
                continue
            folder = round_dir(run, fold, round_)
            folder.mkdir(parents=True)
            predictions = _predictions(rng, fold, round_, test)
            predictions.to_csv(folder / PREDICTIONS, index=False)
            _history(rng, round_).to_csv(folder / HISTORY, index=False)
            if pseudo and round_ < rounds:
                _pseudo_labels(predictions).to_csv(folder / PSEUDO_LABELS, index=False)
            by_round.setdefault(round_, []).append(predictions)
            model = "teacher" if round_ == 0 else "student"
            for split in ["validation"] + (["test"] if test else []):
                rows.append(_metric_row(predictions, split, model=model, fold=str(fold), round=round_, voting=""))
    results_dir(run).mkdir()
    if test:
        for round_, model in ((0, "teacher"), (rounds, "student")):
            for voting in ("majority", "soft"):
                ensemble = _ensemble(by_round[round_], voting)
                ensemble.to_csv(results_dir(run) / f"predictions_{model}_{voting}.csv", index=False)
                ensemble["split"] = "test"
                rows.append(_metric_row(ensemble, "test", model=model, fold="ensemble", round=round_, voting=voting))
    metrics = summarise_folds(pd.DataFrame(rows)[IDENTITY + COUNT_COLUMNS + METRIC_COLUMNS])
    metrics.to_csv(results_dir(run) / METRICS, index=False)
    return run


def _row(metrics: pd.DataFrame, **identity) -> pd.Series:
    mask = np.logical_and.reduce([metrics[key] == value for key, value in identity.items()])
    assert mask.sum() == 1, identity
    return metrics[mask].iloc[0]


def _expected_comparison(teacher: pd.Series, student: pd.Series) -> str:
    names = {"accuracy": "accuracy", "f1": "F1", "auc": "AUC"}
    return ", ".join(f"{names[m]} {student[m]:.3f} vs {teacher[m]:.3f} ({student[m] - teacher[m]:+.3f})" for m in names)


def _assert_valid_png(path: Path) -> None:
    assert path.exists(), path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 200
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.var() > 0, f"{path.name} is blank"


# --- tests ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("full"))
    write_report(run)
    return run


@pytest.mark.slow
def test_full_report_has_headline_with_right_numbers(full_run):
    metrics = read_metrics(results_dir(full_run) / METRICS)
    teacher = _row(metrics, model="teacher", fold="ensemble", split="test", voting="majority")
    student = _row(metrics, model="student", fold="ensemble", round=2, split="test", voting="majority")
    sentence = headline(metrics)
    assert sentence.startswith("Final students (round 2) vs teachers on the test set (majority vote ensemble): ")
    assert _expected_comparison(teacher, student) in sentence
    assert "helped" not in sentence  # make_run writes no comparison.csv: nothing was tested
    page = (full_run / REPORT / "report.html").read_text()
    assert _expected_comparison(teacher, student) in page


@pytest.mark.slow
def test_full_report_tables_list_every_fold(full_run):
    metrics = read_metrics(results_dir(full_run) / METRICS)
    table_a = fold_table(metrics)
    assert sorted(set(table_a.index.get_level_values("Fold"))) == [0, 1]
    assert list(table_a.index.get_level_values("Model")[:3]) == ["teacher", "student (round 1)", "student (round 2)"]
    assert table_a.loc[(1, "student (round 2)"), "accuracy"] == _row(metrics, model="student", fold="1", round=2, split="test")["accuracy"]
    table_b = summary_table(metrics)
    mean, variance = (_row(metrics, model="teacher", fold=f, split="test", voting="") for f in ("mean", "variance"))
    assert table_b.iloc[0]["accuracy"] == f"{mean['accuracy']:.3f} ± {np.sqrt(variance['accuracy']):.3f}"
    assert list(table_b.columns) == METRIC_COLUMNS
    assert len(table_b) == 6  # mean teacher, mean student, 2 votings x 2 ensembles
    page = (full_run / REPORT / "report.html").read_text()
    assert "Table A" in page and "Table B" in page
    assert f"{_row(metrics, model='teacher', fold='0', split='test')['accuracy']:.3f}" in page
    for setting in ("tiny", "efficientnet-b0", "/data/C-NMC", "0.1.0"):
        assert setting in page


@pytest.mark.slow
def test_full_report_figures_are_valid_pngs(full_run):
    page = (full_run / REPORT / "report.html").read_text()
    for name in FULL_RUN_PNGS:
        _assert_valid_png(full_run / REPORT / name)
        assert f'src="{name}"' in page
    assert "<script" not in page and "http" not in page


@pytest.mark.slow
def test_partial_run_says_what_is_missing(tmp_path):
    run = make_run(tmp_path, test=False, pseudo=False, missing=((1, 1), (1, 2)))
    page = write_report(run).read_text()
    assert "fold-1/round-1: no predictions yet" in page
    assert "No pseudo_labels.csv found" in page
    assert "No test set" in page
    assert headline(read_metrics(results_dir(run) / METRICS)).startswith("No test set: out-of-fold validation used, which is selection-biased")
    for name in ("curves_fold0.png", "curves_fold1.png", "confusion.png", "confusion_folds.png", "roc.png", "helped.png"):
        _assert_valid_png(run / REPORT / name)
    assert not (run / REPORT / "pseudo_confidence.png").exists()


def test_run_without_results_still_gets_a_page(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps({"folds": 2, "rounds": 1, "preset": "tiny"}))
    page = write_report(run).read_text()
    assert "No results yet" in page
    assert "fold-0/round-0: no predictions yet" in page


def test_headline_gives_a_verdict_only_where_the_interval_excludes_zero():
    base = {"model": "teacher", "fold": "ensemble", "round": 0, "split": "test", "voting": "majority"}
    metrics = pd.DataFrame([{**base, "accuracy": 0.8, "f1": 0.8, "auc": 0.9},
                            {**base, "model": "student", "round": 1, "accuracy": 0.85, "f1": 0.81, "auc": 0.9}])
    def tested(low, high, verdict):
        return pd.DataFrame([{"metric": "accuracy", "a_name": "teacher ensemble (majority)", "b_name": "student ensemble (majority, round 1)",
                              "a": 0.8, "b": 0.85, "difference": 0.05, "low": low, "high": high, "unit": "patient", "units": 30,
                              "images": 900, "level": 0.95, "n_resamples": 2000, "mcnemar_p": 0.04, "verdict": verdict}])
    # a comparison.csv of a run made before --primary-metric: its primary endpoint was accuracy
    assert "McNemar exact p = 0.04), helped. This is about these models" in headline(metrics, tested(0.01, 0.09, "better"))
    assert "), hurt. This is about these models" in headline(metrics, tested(-0.09, -0.01, "worse"))
    sentence = headline(metrics, tested(-0.02, 0.12, "no detectable difference"))
    assert "accuracy 0.850 vs 0.800, +0.050 [-0.020, +0.120] (95% percentile interval, paired bootstrap over patients, 2000 resamples" in sentence
    assert "), no detectable difference." in sentence and "noisystudent experiment" in sentence
    untested = headline(metrics)  # a point estimate alone never says "helped"
    assert "accuracy 0.850 vs 0.800 (+0.050)" in untested and "helped" not in untested and "no verdict" in untested


def test_missing_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(RunFolderError):
        write_report(tmp_path / "nope")


def test_unreadable_tables_are_noted_not_fatal(tmp_path):
    run = make_run(tmp_path, folds=2, rounds=1, test=False)
    (results_dir(run) / METRICS).write_text("")
    (round_dir(run, 1, 1) / HISTORY).write_text("epoch,train_loss\n1,0.5\n2,0.4\n")  # no validation columns
    data = load_run(run)
    assert data.metrics is None
    assert any("metrics.csv cannot be read" in note for note in data.notes)
    _assert_valid_png(plot_curves({1: data.histories[(1, 1)]}, 1, tmp_path / "curves.png"))


def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(tmp_path):
    """`report DIR` on any folder used to write DIR/report/ and overwrite DIR/report/report.html."""
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.html").write_text("someone else's page")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"The folder {tmp_path} is not a run folder (it has no config.json)" in " ".join(result.output.split())
    assert (tmp_path / "report" / "report.html").read_text() == "someone else's page"


def test_a_report_path_of_the_wrong_kind_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps({"folds": 2, "rounds": 1}))
    (run / REPORT).write_text("a file where the report folder goes")
    with pytest.raises(UserError, match="is a file, not a folder"):
        write_report(run)


def test_tables_of_selection_biased_rows_say_so():
    """Validation rows whose models were selected on them are marked in the caption; test rows are not."""
    from noisystudent.report.build import bias_mark, bias_sentence

    metrics = pd.DataFrame({"split": ["validation", "validation", "test"], "selection_biased": ["True", "True", "False"]})
    assert bias_mark(metrics, "validation") == " (selection-biased)"
    assert "optimistic" in bias_sentence(metrics, "validation")
    assert bias_mark(metrics, "test") == "" and bias_sentence(metrics, "test") == ""
    assert bias_mark(metrics.drop(columns="selection_biased"), "validation") == ""


def test_pseudo_quality_of_one_round_ticks_only_that_round():
    """One round (0) used to be ticked at -0.04 ... 0.04."""
    from noisystudent.report.evidence import pseudo_quality_figure

    metrics = pd.DataFrame({"split": ["masked", "masked"], "fold": ["0", "1"], "round": [0, 0],
                            "accuracy": [0.8, 0.7], "ece": [0.1, 0.2], "kept": [10, 12]})
    figure = pseudo_quality_figure(metrics)
    for axes in figure.axes:
        assert list(axes.get_xticks()) == [0]
        assert [label.get_text() for label in axes.get_xticklabels()] == ["0"]


def test_headline_without_patient_ids_does_not_count_images_twice():
    """Without patient ids the unit is the image: '(52 images, 52 images)' became '(52 images, no patient ids)'."""
    base = {"model": "teacher", "fold": "ensemble", "round": 0, "split": "test", "voting": "majority"}
    metrics = pd.DataFrame([{**base, "accuracy": 0.8}, {**base, "model": "student", "round": 1, "accuracy": 0.85}])
    row = {"metric": "accuracy", "a_name": "teacher ensemble (majority)", "b_name": "student ensemble (majority, round 1)",
           "a": 0.8, "b": 0.85, "difference": 0.05, "low": -0.02, "high": 0.1, "level": 0.95, "n_resamples": 2000,
           "mcnemar_p": 0.5, "verdict": "no detectable difference"}
    by_image = headline(metrics, pd.DataFrame([{**row, "unit": "image", "units": 52, "images": 52}]))
    assert "on this test set (52 images, no patient ids)" in by_image and "52 images, 52 images" not in by_image
    by_patient = headline(metrics, pd.DataFrame([{**row, "unit": "patient", "units": 7, "images": 52}]))
    assert "on this test set (52 images, 7 patients)" in by_patient
