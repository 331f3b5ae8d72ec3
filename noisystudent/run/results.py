"""results/metrics.csv: every fold model, fold summaries, and the ensembles.

Everything here is recomputed from the saved ``predictions.csv`` files, so the
table can be rebuilt at any time (and is, at the end of every ``kfold`` run):

- one row per fold model (teacher = round 0, students = rounds >= 1) and split;
- ``mean`` and ``variance`` across folds of each (model, round, split);
- ``oof``: all validation parts pooled (each image predicted by the one fold
  model that did not train on it);
- ``ensemble``: the K fold models voting on the outer test set, by majority
  and by soft voting, for the teachers and for the final students (the AUC of
  a majority vote is that of its vote fraction: ``auc_from``);
- ``masked``: each teacher's pseudo-labels against the masked part's hidden
  labels (run/evidence.py), and every row's selection and bias marks.

The ``class`` column says which class a row is about: the positive class of a
two-class run; for more classes ``macro`` and ``weighted`` averages, then one
one-vs-rest row per class. Counts are written as integers.

results/comparison.csv holds the tested comparison of final students and teachers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from noisystudent import atomic, layout
from noisystudent.config.choices import VOTING
from noisystudent.config.run_config import RunConfig
from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.evaluation import metrics
from noisystudent.evaluation.voting import vote
from noisystudent.run import calibration, evidence
from noisystudent.run.tables import read_table

logger = logging.getLogger(__name__)

VOTING_RULES = VOTING  # every rule, for the ensemble rows
ID_COLUMNS = [layout.MODEL_KIND, layout.FOLD_COLUMN, layout.ROUND, layout.EVAL_SPLIT, layout.VOTING, metrics.CLASS_COLUMN]
OOF = "oof"
AGREEMENT = "agreement"  # fraction of the fold models whose vote equals pred
ENSEMBLE = "ensemble"


def read_predictions(path: Path) -> pd.DataFrame:
    """A predictions.csv; the masked part's split of runs made before 0.2 ('unlabelled') reads as 'masked'."""
    table = read_table(path)
    if layout.SPLIT in table.columns:
        table[layout.SPLIT] = table[layout.SPLIT].replace(layout.LEGACY_SPLITS)
    return table


def collect_predictions(run: Path, config: RunConfig) -> dict[tuple[int, int], pd.DataFrame]:
    """{(fold, round): predictions} for every stage that has finished."""
    found = {}
    for fold in range(config.folds):
        for round_ in range(config.rounds + 1):
            path = layout.round_dir(run, fold, round_) / layout.PREDICTIONS
            if path.exists():
                found[(fold, round_)] = read_predictions(path)
    return found


def evaluation_positive(config: RunConfig, classes: list[str]) -> str | None:
    """The positive class for binary metrics; None (macro averages) for more than two classes."""
    if len(classes) != 2:
        return None
    return config.positive_class


def write_results(run: Path, config: RunConfig, classes: list[str]) -> pd.DataFrame:
    """Compute and atomically write results/metrics.csv (and ensemble predictions).

    Everything is recomputed from the saved ``fold-<k>/round-<r>/predictions.csv``
    files of the stages that have finished, so the table can be rebuilt at any
    time; :func:`run_kfold` calls it at the end of every run. Besides
    metrics.csv it writes, under ``run/results/``, the ensembles' predictions
    (``predictions_<teacher|student>_<majority|soft>.csv``),
    pseudo_label_quality.csv, comparison.csv (final students vs teachers) and
    the temperature scaling of run/calibration.py (calibration.json,
    calibration.csv, reliability.csv).

    Args:
        run: A run folder of :func:`run_kfold`.
        config: The run's settings (folds, rounds, positive, binary, select, ...),
            e.g. ``ns.resume_config(json.loads((run / "config.json").read_text()))``.
        classes: The run's class names in the order of the ``prob_<class>``
            columns (sorted names, e.g. ``["all", "hem"]``).

    Returns:
        pandas.DataFrame: The table written to results/metrics.csv: columns
        model, fold, round, split, voting, class, the metrics (accuracy,
        sensitivity, ..., auc, kappa, mcc), counts (tp, fp, tn, fn, n as
        nullable integers), auc_from, pseudo-label quality and the evidence
        marks (selection, selection_biased, ...). Rows as described in
        :func:`run_kfold`.

    Raises:
        ConfigError: ``config.positive`` is not one of ``classes`` (two-class runs).
        DiskFullError: The disk filled up while writing.

    Example:
        >>> import json
        >>> from pathlib import Path
        >>> import noisystudent as ns
        >>> run = Path("runs/demo")
        >>> config = ns.resume_config(json.loads((run / "config.json").read_text()))  # doctest: +SKIP
        >>> table = ns.write_results(run, config, ["all", "hem"])  # doctest: +SKIP
    """
    run = Path(run)
    predictions = collect_predictions(run, config)
    positive = evaluation_positive(config, classes)
    rows = per_model_rows(predictions, classes, positive)
    rows += pooled_oof_rows(predictions, config, classes, positive)
    rows += ensemble_rows(run, predictions, config, classes, positive)
    rows += evidence.masked_rows(run, predictions, config, classes, positive)
    columns = ID_COLUMNS + metrics.METRIC_COLUMNS + metrics.COUNT_COLUMNS + [layout.AUC_FROM] + evidence.QUALITY_COLUMNS
    table = pd.DataFrame(rows, columns=columns)
    table = metrics.summarise_folds(table) if not table.empty else table
    table = metrics.with_integer_counts(_ordered(table))
    table = evidence.mark_rows(table, config) if not table.empty else table.reindex(columns=columns + evidence.MARK_COLUMNS)
    atomic.write_csv(layout.results_dir(run) / layout.METRICS, table, for_people=True)
    atomic.write_csv(layout.results_dir(run) / evidence.PSEUDO_QUALITY, evidence.pseudo_label_quality(predictions, config, classes),
                     for_people=True)
    evidence.write_comparisons(run, evidence.run_comparisons(run, predictions, config, classes, positive), config)
    calibration.write_calibration(run, predictions, config, classes)
    return table


def per_model_rows(predictions, classes, positive) -> list[dict]:
    rows = []
    for (fold, round_), table in sorted(predictions.items()):
        for split in ("validation", "test"):
            part = table[table[layout.SPLIT] == split]
            if not part.empty:
                rows.extend(_rows(layout.model_kind(round_), fold, round_, split, "", part, classes, positive))
    return rows


def pooled_oof_rows(predictions, config, classes, positive) -> list[dict]:
    rows = []
    for round_ in range(config.rounds + 1):
        parts = [t[t[layout.SPLIT] == "validation"] for (f, r), t in predictions.items() if r == round_]
        if len(parts) == config.folds:  # only when every fold has finished
            rows.extend(_rows(layout.model_kind(round_), OOF, round_, "validation", "", pd.concat(parts), classes, positive))
    return rows


def ensemble_rows(run, predictions, config, classes, positive) -> list[dict]:
    """Majority and soft votes of the K teachers and of the K final students on the test set."""
    rows = []
    for round_ in sorted({0, config.rounds}):
        tables = [predictions.get((fold, round_)) for fold in range(config.folds)]
        if any(t is None for t in tables):
            continue
        tests = [t[t[layout.SPLIT] == "test"].sort_values(PATH).reset_index(drop=True) for t in tables]
        if tests[0].empty:
            continue
        for rule in VOTING_RULES:
            table = ensemble_table(tests, classes, rule)
            atomic.write_csv(layout.results_dir(run) / f"predictions_{layout.model_kind(round_)}_{rule}.csv", table, for_people=True)
            scored = vote_fraction_scores(table, classes) if rule == "majority" else table
            source = "vote fraction" if rule == "majority" else "probability"
            for row in _rows(layout.model_kind(round_), ENSEMBLE, round_, "test", rule, scored, classes, positive):
                rows.append({**row, layout.AUC_FROM: source if np.isfinite(row["auc"]) else ""})
    return rows


def ensemble_table(fold_tables: list[pd.DataFrame], classes: list[str], rule: str) -> pd.DataFrame:
    """Combine per-fold prediction tables of the same images (same order) by ``rule``."""
    prob_columns = [layout.prob_column(c) for c in classes]
    stacked = np.stack([t[prob_columns].to_numpy(dtype=np.float64) for t in fold_tables])
    return vote_table(fold_tables[0][[PATH, LABEL, PATIENT]], stacked, classes, rule)


def vote_table(images: pd.DataFrame, probs: np.ndarray, classes: list[str], rule: str) -> pd.DataFrame:
    """``images`` (one row per image) plus the ensemble's prob_<class>, pred, agreement and
    each model's vote_fold<k>, from probabilities shaped (models, images, classes)."""
    prob_columns = [layout.prob_column(c) for c in classes]
    result = vote(probs, rule)
    names = np.asarray(classes, dtype=object)
    table = images.reset_index(drop=True).copy()
    for i, column in enumerate(prob_columns):
        table[column] = result.probs[:, i]
    table[layout.PRED] = names[result.pred]
    table[AGREEMENT] = result.agreement
    for k, votes in enumerate(result.votes):
        table[vote_column(k)] = names[votes]
    return table


def vote_column(fold: int) -> str:
    return f"{layout.VOTE_PREFIX}{fold}"


def vote_fraction_scores(table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """``table`` with each prob_<class> replaced by the share of fold models voting for that class.

    A majority vote's own score is its vote count; ranking its images by the mean
    probability would give the soft vote's AUC under the majority vote's name.
    """
    votes = table[[c for c in table.columns if str(c).startswith(layout.VOTE_PREFIX)]].astype(str)
    return table.assign(**{layout.prob_column(c): (votes == c).mean(axis=1) for c in classes})


def _rows(kind, fold, round_, split, voting, table, classes, positive) -> list[dict]:
    """One row per CLASS_COLUMN value (one for two classes; macro, weighted and each class otherwise)."""
    ident = {layout.MODEL_KIND: kind, layout.FOLD_COLUMN: fold, layout.ROUND: round_, layout.EVAL_SPLIT: split, layout.VOTING: voting}
    rows = []
    for values in metrics.metric_rows_from_predictions(table, classes, positive):
        auc_from = "probability" if np.isfinite(values.get("auc", np.nan)) else ""
        rows.append({**ident, **values, layout.AUC_FROM: auc_from})
    return rows


SUMMARY_ORDER = ["mean", "variance", OOF, ENSEMBLE]  # after the numbered folds
KIND_ORDER = {"teacher": 0, "student": 1}


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Validation before test; teacher, then students by round; folds, then summaries and ensembles."""
    keys = [_sort_key(row) for _, row in table.iterrows()]
    order = sorted(range(len(table)), key=keys.__getitem__)
    return table.iloc[order].reset_index(drop=True)


def _sort_key(row: pd.Series) -> tuple:
    fold = str(row[layout.FOLD_COLUMN])
    fold_key = (0, int(fold)) if fold.lstrip("-").isdigit() else (1, SUMMARY_ORDER.index(fold) if fold in SUMMARY_ORDER else 9)
    return (row[layout.EVAL_SPLIT] != "validation", KIND_ORDER.get(row[layout.MODEL_KIND], 2), row[layout.ROUND], fold_key, row[layout.VOTING],
            _class_rank(row.get(metrics.CLASS_COLUMN, "")))


def _class_rank(name: str) -> int:
    """macro, then weighted, then the classes in the order they were written (a stable sort keeps it)."""
    return {metrics.MACRO: 0, metrics.WEIGHTED: 1}.get(str(name), 2)
