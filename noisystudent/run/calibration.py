"""Temperature scaling of a run's models, fitted on validation and scored on the outer test set.

Fitting (never on the test set): for each kind of model (teachers, final
students), one temperature for the ensemble on the pooled out-of-fold
validation predictions (each validation image predicted by the one fold model
that did not train on it: the only held-out predictions a k-fold run has), and
one per fold model on its own validation part. Calibrating the ensemble after
its models are pooled (Rahaman & Thiery 2021) is what ``ensemble predict``
applies: ``softmax(log(mean p) / T)``.

Scoring, on the outer test set, before (``calibration=none``) and after
(``temperature``): ECE (15 bins), Brier score and NLL of every fold model (its
own temperature) and of the ensemble's mean probability (the ensemble's).

Files under ``results/``: calibration.json (the temperatures, what they were
fitted on, validation NLL before and after), calibration.csv (the test rows)
and reliability.csv (the points of each reliability diagram).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noisystudent import atomic, layout
from noisystudent.config.run_config import RunConfig
from noisystudent.data.manifest import LABEL, PATH
from noisystudent.errors import RunFolderError
from noisystudent.evaluation import calibration as calib

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
NONE, TEMPERATURE = "none", "temperature"
FITTED_ON = "validation (out-of-fold, pooled over the folds)"
TABLE_COLUMNS = [layout.MODEL_KIND, layout.FOLD_COLUMN, layout.ROUND, layout.EVAL_SPLIT, layout.CALIBRATION_COLUMN,
                 layout.TEMPERATURE, "ece", "brier", "nll", "n"]


def labelled_probs(table: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) probabilities and (N,) class indices of the rows whose label is one of ``classes``."""
    known = table[table[LABEL].astype(str).isin(classes)]
    probs = known[[layout.prob_column(c) for c in classes]].to_numpy(dtype=np.float64)
    return probs, known[LABEL].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)


def _split(table: pd.DataFrame, split: str) -> pd.DataFrame:
    return table[table[layout.SPLIT] == split]


def fit_kind(predictions: dict[tuple[int, int], pd.DataFrame], round_: int, folds: int, classes: list[str]) -> dict[str, Any] | None:
    """The temperatures of the K models of ``round_`` from their validation parts; None until every fold has finished."""
    tables = [predictions.get((fold, round_)) for fold in range(folds)]
    if any(t is None for t in tables):
        return None
    parts = [labelled_probs(_split(t, layout.SPLIT_VALIDATION), classes) for t in tables]
    probs, labels = np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts])
    temperature = calib.fit_temperature(probs, labels)
    return {
        "round": round_, "temperature": temperature, "fitted_on": FITTED_ON, "validation_images": int(len(labels)),
        "validation_nll_before": calib.nll(probs, labels), "validation_nll_after": calib.nll(calib.scaled(probs, temperature), labels),
        "folds": {str(fold): calib.fit_temperature(*part) for fold, part in enumerate(parts)},
    }


def fit_run(predictions: dict[tuple[int, int], pd.DataFrame], config: RunConfig, classes: list[str]) -> dict[str, Any]:
    """{teacher|student: fit_kind(...)} for the teachers and the final students that have finished."""
    fitted = {}
    for round_ in sorted({0, config.rounds}):
        found = fit_kind(predictions, round_, config.folds, classes)
        if found is not None:
            fitted[layout.model_kind(round_)] = found
    return {"method": TEMPERATURE, "bins": calib.ECE_BINS, "classes": list(classes), "models": fitted}


def test_rows(predictions: dict[tuple[int, int], pd.DataFrame], fitted: dict[str, Any], folds: int,
              classes: list[str]) -> tuple[list[dict], list[dict]]:
    """(calibration.csv rows, reliability.csv rows) on the outer test set, before and after, per fold model and ensemble."""
    rows, points = [], []
    for kind, fit in fitted["models"].items():
        round_ = fit["round"]
        tests = [_split(predictions[(fold, round_)], layout.SPLIT_TEST).sort_values(PATH) for fold in range(folds)]
        scored = [(fold, *labelled_probs(t, classes), fit["folds"][str(fold)]) for fold, t in enumerate(tests)]
        if scored and len(scored[0][2]):
            mean = np.mean([p for _, p, _, _ in scored], axis=0)
            scored.append((ENSEMBLE, mean, scored[0][2], fit["temperature"]))
        for fold, probs, labels, temperature in scored:
            for mode, t in ((NONE, 1.0), (TEMPERATURE, temperature)):
                ident = {layout.MODEL_KIND: kind, layout.FOLD_COLUMN: fold, layout.ROUND: round_,
                         layout.EVAL_SPLIT: layout.SPLIT_TEST, layout.CALIBRATION_COLUMN: mode}
                probs_t = calib.scaled(probs, t) if mode == TEMPERATURE else probs
                rows.append({**ident, layout.TEMPERATURE: t, **calib.calibration_summary(probs_t, labels)})
                points += [{**ident, **point} for point in calib.reliability_bins(probs_t, labels)]
    return rows, points


def write_calibration(run: Path, predictions: dict[tuple[int, int], pd.DataFrame], config: RunConfig,
                      classes: list[str]) -> pd.DataFrame:
    """Fit, score and write results/calibration.json, calibration.csv and reliability.csv; return the csv's table."""
    fitted = fit_run(predictions, config, classes)
    rows, points = test_rows(predictions, fitted, config.folds, classes)
    results = layout.results_dir(run)
    atomic.write_text(results / layout.CALIBRATION, json.dumps(fitted, indent=2, sort_keys=True) + "\n")
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    atomic.write_csv(results / layout.CALIBRATION_TABLE, table)
    atomic.write_csv(results / layout.RELIABILITY, pd.DataFrame(points))
    for kind, fit in fitted["models"].items():
        logger.info("calibration: %ss' temperature %.3f (validation NLL %.4f -> %.4f)", kind, fit["temperature"],
                    fit["validation_nll_before"], fit["validation_nll_after"])
    return table


def read_calibration(run: Path) -> dict[str, Any] | None:
    """results/calibration.json of ``run``, or None when the run has none (made before it existed, or unfinished)."""
    path = layout.results_dir(run) / layout.CALIBRATION
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"The calibration file {path} is unreadable ({error}); rebuild it with noisystudent kfold --out RUN --resume.") from None
