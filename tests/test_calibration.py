"""Temperature scaling: fitted on validation only, lowering its NLL on an over-confident model; the results files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from noisystudent import layout
from noisystudent.config.run_config import RunConfig
from noisystudent.evaluation import calibration as calib
from noisystudent.report import calibration_section
from noisystudent.run import calibration as run_calibration

CLASSES = ["all", "hem"]


def over_confident(n: int, seed: int, sharpen: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) probabilities of a model whose logits are ``sharpen`` x the calibrated ones, and labels drawn from the calibrated."""
    rng = np.random.default_rng(seed)
    true_p = rng.uniform(0.05, 0.95, n)  # the calibrated probability of class 1
    labels = (rng.uniform(size=n) < true_p).astype(int)
    calibrated = np.stack([1 - true_p, true_p], axis=1)
    return calib.scaled(calibrated, 1 / sharpen), labels


def test_temperature_softens_an_over_confident_model_and_lowers_its_nll():
    probs, labels = over_confident(4000, seed=0)
    temperature = calib.fit_temperature(probs, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)  # undoes the sharpening
    assert calib.nll(calib.scaled(probs, temperature), labels) < calib.nll(probs, labels) - 0.1
    before = calib.calibration_summary(probs, labels)
    after = calib.calibration_summary(calib.scaled(probs, temperature), labels)
    assert after["ece"] < before["ece"] / 3 and after["brier"] < before["brier"]


def test_scaling_keeps_the_most_probable_class_and_t1_changes_nothing():
    probs = np.random.default_rng(1).dirichlet([1, 1, 1], size=50)
    np.testing.assert_allclose(calib.scaled(probs, 1.0), probs, atol=1e-12)
    np.testing.assert_array_equal(calib.scaled(probs, 3.0).argmax(axis=1), probs.argmax(axis=1))
    np.testing.assert_allclose(calib.scaled(probs, 0.5).sum(axis=1), 1.0)


def test_brier_and_reliability_bins_by_hand():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 0, 1])
    # (0.1² + 0.1²) + (0.8² + 0.8²) + (0.6² + 0.6²), over 3
    assert calib.brier_score(probs, labels) == pytest.approx((0.02 + 1.28 + 0.72) / 3)
    bins = calib.reliability_bins(probs, labels)
    assert [(b["bin"], b["count"], b["accuracy"]) for b in bins] == [(8, 1, 0.0), (11, 1, 0.0), (13, 1, 1.0)]


def _predictions(split_probs: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    frames = []
    for split, (probs, labels) in split_probs.items():
        frames.append(pd.DataFrame({"path": [f"{split}/{i}.png" for i in range(len(labels))], "label": np.array(CLASSES)[labels],
                                    "patient": "", "split": split, "prob_all": probs[:, 0], "prob_hem": probs[:, 1]}))
    return pd.concat(frames, ignore_index=True)


def _run_predictions(test_sharpen: float) -> dict[tuple[int, int], pd.DataFrame]:
    """Two folds of a teacher-only run: over-confident validation parts, a shared test set sharpened by ``test_sharpen``."""
    test = over_confident(600, seed=9, sharpen=test_sharpen)
    return {(fold, 0): _predictions({"validation": over_confident(500, seed=fold), "test": test}) for fold in range(2)}


def test_the_temperature_is_fitted_on_validation_only():
    config = RunConfig(folds=2, rounds=0)
    fitted = run_calibration.fit_run(_run_predictions(test_sharpen=4.0), config, CLASSES)["models"]["teacher"]
    # a test set that wants a very different temperature changes nothing
    other = run_calibration.fit_run(_run_predictions(test_sharpen=0.5), config, CLASSES)["models"]["teacher"]
    assert fitted == other
    validation = [run_calibration.labelled_probs(t[t.split == "validation"], CLASSES) for t in _run_predictions(4.0).values()]
    pooled = np.concatenate([p for p, _ in validation]), np.concatenate([y for _, y in validation])
    assert fitted["temperature"] == pytest.approx(calib.fit_temperature(*pooled))
    assert fitted["validation_images"] == 1000
    assert fitted["validation_nll_after"] < fitted["validation_nll_before"]
    assert fitted["folds"]["1"] == pytest.approx(calib.fit_temperature(*validation[1]))


def test_results_files_score_the_test_set_before_and_after(tmp_path):
    config = RunConfig(folds=2, rounds=0)
    table = run_calibration.write_calibration(tmp_path, _run_predictions(test_sharpen=4.0), config, CLASSES)
    assert json.loads((tmp_path / "results" / layout.CALIBRATION).read_text())["models"]["teacher"]["round"] == 0
    written = pd.read_csv(tmp_path / "results" / layout.CALIBRATION_TABLE)
    assert list(written.fold.astype(str)) == ["0", "0", "1", "1", "ensemble", "ensemble"]
    assert set(written.split) == {"test"} and list(written.n) == [600] * 6
    ensemble = table[table.fold == "ensemble"].set_index("calibration")
    assert ensemble.loc["temperature", "ece"] < ensemble.loc["none", "ece"] / 2
    assert ensemble.loc["none", "temperature"] == 1.0
    points = pd.read_csv(tmp_path / "results" / layout.RELIABILITY)
    ensemble_after = points[(points.fold == "ensemble") & (points.calibration == "temperature")]
    assert ensemble_after["count"].sum() == 600


def test_report_section_draws_reliability_and_tabulates_before_and_after(tmp_path):
    run_calibration.write_calibration(tmp_path, _run_predictions(test_sharpen=4.0), RunConfig(folds=2, rounds=0), CLASSES)
    (tables,) = calibration_section.calibration_tables(tmp_path)
    frame = tables.frame.set_index("fold")
    assert list(frame.index) == ["0", "1", "ensemble"] and (frame["images"] == 600).all()
    assert frame.loc["ensemble", "ECE after"] < frame.loc["ensemble", "ECE before"]
    (figure,) = calibration_section.calibration_figures(tmp_path, tmp_path)
    with Image.open(tmp_path / figure.name) as image:
        assert image.format == "PNG" and image.width > 300
        assert np.asarray(image.convert("L"), dtype=float).var() > 0
    assert calibration_section.calibration_tables(tmp_path / "no-run") == []
