"""What a run's numbers are worth: selection bias marks, pseudo-label quality, and the tested comparison.

- Every metrics.csv row says how its models were selected (``selection``) and
  whether that selection looked at the row's own images (``selection_biased``:
  validation rows under ``--select best``).
- ``split=masked`` rows score each teacher's pseudo-labels against the masked
  part's hidden labels (which only evaluation reads: students learn from
  pseudo_labels.csv). results/pseudo_label_quality.csv has them per class.
- results/comparison.csv: final students vs teachers on the outer test set by
  a paired bootstrap over patients (evaluation.comparison); the same code
  compares two runs (``noisystudent compare``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from noisystudent import atomic, layout
from noisystudent.config.run_config import RunConfig, load_config_json, positive_class_of
from noisystudent.data.labels import as_labels
from noisystudent.data.manifest import LABEL, PATH, ROLE, ROLE_TEST, SUBSET, SUBSET_TEST
from noisystudent.errors import ConfigError, RunFolderError
from noisystudent.evaluation import metrics
from noisystudent.evaluation.calibration import expected_calibration_error
from noisystudent.evaluation.comparison import Comparison, compare_predictions, comparison_table, verdict
from noisystudent.evaluation.statistics import MIN_RESAMPLES
from noisystudent.run.tables import TABLE_CHUNK, read_table, read_table_chunks

logger = logging.getLogger(__name__)

SELECTION_WORDS = {"best": "best epoch", "last": "last epoch"}
QUALITY_COLUMNS = ["ece", "kept", "kept_copies", "kept_accuracy"]
EVIDENCE_COLUMNS = [layout.SELECTION, layout.SELECTION_BIASED, layout.FOLDS_AVERAGED, layout.AUC_FROM]
COMPARISON = "comparison.csv"
PSEUDO_QUALITY = "pseudo_label_quality.csv"


def announce_test_set(folds: pd.DataFrame, config: RunConfig, data_has_test: bool) -> None:
    """Say at the start where the unbiased numbers will come from (or that there are none)."""
    test = folds[folds[ROLE] == ROLE_TEST]
    if data_has_test:
        logger.info("Outer test set: the %d images given as test data; headline numbers come only from them.", len(test))
    elif len(test):
        logger.warning("No outer test set was given: %d images of %.0f%% of the patients (per class) are held out as one; "
                       "headline numbers come only from them (--test-fraction 0 turns this off).", len(test), 100 * config.test_fraction)
    else:
        logger.warning("--test-fraction 0 and no test data: there is no outer test set, and every validation and "
                       "out-of-fold number is selection-biased%s.", " (best epoch chosen on it)" if config.select == "best" else "")


def data_has_test(images: pd.DataFrame) -> bool:
    return bool((images[SUBSET] == SUBSET_TEST).any())


def mark_rows(table: pd.DataFrame, config: RunConfig) -> pd.DataFrame:
    """Add selection, selection_biased and folds_averaged to a metrics table."""
    table = table.copy()
    table[layout.SELECTION] = SELECTION_WORDS[config.select]
    table[layout.SELECTION_BIASED] = (table[layout.EVAL_SPLIT] == "validation") & (config.select == "best")
    folds = pd.to_numeric(table[layout.FOLD_COLUMN], errors="coerce").notna()
    keys = [layout.MODEL_KIND, layout.ROUND, layout.EVAL_SPLIT, layout.VOTING]
    counts = table[folds].groupby(keys, dropna=False).size()
    summary = table[layout.FOLD_COLUMN].astype(str).isin([metrics.MEAN_ROW, metrics.VARIANCE_ROW])
    table[layout.FOLDS_AVERAGED] = [counts.get(tuple(row[keys]), 0) if is_summary else np.nan
                                    for (_, row), is_summary in zip(table.iterrows(), summary)]
    return table


# --- pseudo-label quality -------------------------------------------------------


def masked_rows(run: Path, predictions: dict, config: RunConfig, classes: list[str], positive: str | None) -> list[dict]:
    """One split=masked row per teacher of a round: its pseudo-labels against the hidden labels."""
    rows = []
    for (fold, round_), table in sorted(predictions.items()):
        masked = table[table[layout.SPLIT] == layout.SPLIT_MASKED]
        if round_ >= config.rounds or masked.empty:
            continue
        values = metrics.metrics_from_predictions(masked, classes, positive)
        kept = _kept(run, fold, round_, masked)
        rows.append({layout.MODEL_KIND: layout.model_kind(round_), layout.FOLD_COLUMN: fold, layout.ROUND: round_,
                     layout.EVAL_SPLIT: layout.SPLIT_MASKED, layout.VOTING: "", **values,
                     layout.AUC_FROM: "probability" if np.isfinite(values.get("auc", np.nan)) else "",
                     "ece": _ece(masked, classes), **kept})
    return rows


def _ece(table: pd.DataFrame, classes: list[str]) -> float:
    probs = table[[layout.prob_column(c) for c in classes]].to_numpy(dtype=np.float64)
    correct = as_labels(table[layout.PRED]) == as_labels(table[LABEL])
    return expected_calibration_error(probs.max(axis=1), correct)


def _kept(run: Path, fold: int, round_: int, masked: pd.DataFrame) -> dict:
    """How many masked images survived threshold and balancing, and how often their pseudo-label is right."""
    path = layout.round_dir(run, fold, round_) / layout.PSEUDO_LABELS
    if not path.exists():
        return dict.fromkeys(["kept", "kept_copies", "kept_accuracy"], np.nan)
    truth = dict(zip(masked[PATH], as_labels(masked[LABEL])))
    # a chunk at a time: the table also holds the pool, which may have millions of rows
    kept = pd.concat([chunk[chunk[PATH].isin(truth)] for chunk in read_table_chunks(path, TABLE_CHUNK)], ignore_index=True)
    right = as_labels(kept[layout.PRED]) == np.array([truth[p] for p in kept[PATH]], dtype=object)
    return {"kept": len(kept), "kept_copies": int(kept[layout.COPIES].sum()),
            "kept_accuracy": float(right.mean()) if len(kept) else np.nan}


def pseudo_label_quality(predictions: dict, config: RunConfig, classes: list[str]) -> pd.DataFrame:
    """Per fold, round and class: precision and recall of the pseudo-labels on the masked part."""
    rows = []
    for (fold, round_), table in sorted(predictions.items()):
        masked = table[table[layout.SPLIT] == layout.SPLIT_MASKED]
        if round_ >= config.rounds or masked.empty:
            continue
        truth, guess = as_labels(masked[LABEL]), as_labels(masked[layout.PRED])
        for name in classes:
            called, actual = guess == name, truth == name
            rows.append({layout.FOLD_COLUMN: fold, layout.ROUND: round_, "class": name,
                         "precision": _share(called & actual, called), "recall": _share(called & actual, actual),
                         "n_true": int(actual.sum()), "n_pseudo": int(called.sum())})
    return pd.DataFrame(rows, columns=[layout.FOLD_COLUMN, layout.ROUND, "class", "precision", "recall", "n_true", "n_pseudo"])


def _share(hits: np.ndarray, of: np.ndarray) -> float:
    return float(hits.sum() / of.sum()) if of.sum() else np.nan


# --- the tested comparison --------------------------------------------------------


def run_comparisons(run: Path, predictions: dict, config: RunConfig, classes: list[str], positive: str | None) -> list[Comparison]:
    """Final student vs teacher on the outer test set: each voting rule's ensembles, then the fold means."""
    final = config.rounds
    found = []
    for rule in ("majority", "soft"):
        teacher, student = (_ensemble_table(run, kind, rule) for kind in (layout.TEACHER, layout.STUDENT))
        if final > 0 and teacher is not None and student is not None:
            found.append(compare_predictions([teacher], [student], classes, positive, f"teacher ensemble ({rule})",
                                             f"student ensemble ({rule}, round {final})", MIN_RESAMPLES, config.seed,
                                             majority_a=rule == "majority", majority_b=rule == "majority"))
    teachers, students = _fold_tests(predictions, config, 0), _fold_tests(predictions, config, final)
    if final > 0 and teachers and students:
        found.append(compare_predictions(teachers, students, classes, positive, f"teacher (mean of {len(teachers)} folds)",
                                         f"student round {final} (mean of {len(students)} folds)", MIN_RESAMPLES, config.seed))
    return found


def write_comparisons(run: Path, comparisons: list[Comparison]) -> pd.DataFrame:
    table = comparisons_frame(comparisons)
    atomic.write_csv(layout.results_dir(run) / COMPARISON, table)
    return table


def comparisons_frame(comparisons: list[Comparison]) -> pd.DataFrame:
    """One row per comparison and metric: sides, difference, interval, McNemar, verdict (on accuracy)."""
    parts = []
    for comparison in comparisons:
        test = comparison.mcnemar
        parts.append(comparison_table(comparison).assign(
            verdict=verdict(comparison),
            n_resamples=comparison.n_resamples, mcnemar_p=test.p_value if test else np.nan,
            a_only=test.a_only if test else np.nan, b_only=test.b_only if test else np.nan))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _ensemble_table(run: Path, kind: str, rule: str) -> pd.DataFrame | None:
    path = layout.results_dir(run) / f"predictions_{kind}_{rule}.csv"
    return read_table(path) if path.exists() else None


def _fold_tests(predictions: dict, config: RunConfig, round_: int) -> list[pd.DataFrame]:
    """Every fold's predictions on the test set for ``round_``; empty unless all folds have finished."""
    tables = [predictions.get((fold, round_)) for fold in range(config.folds)]
    if any(t is None for t in tables):
        return []
    tests = [t[t[layout.SPLIT] == "test"] for t in tables]
    return tests if all(len(t) for t in tests) else []


def compare_runs(run_a: Path, run_b: Path, voting: str = "majority", models: str = "students",
                 n_resamples: int = MIN_RESAMPLES, seed: int = 0) -> Comparison:
    """RUN_B's ensemble vs RUN_A's on their shared outer test set (same bootstrap as within a run).

    Reads each run's ``results/predictions_<models>_<voting>.csv`` (written by
    :func:`run_kfold`) and compares them with :func:`compare_predictions`: a
    paired bootstrap over the test set's patients and McNemar's exact test.
    The positive class is run A's. The run folders are only read.

    Args:
        run_a: The baseline run folder (side A).
        run_b: The run compared with it (side B).
        voting: Which ensemble: ``"majority"`` (default) or ``"soft"``.
        models: ``"students"`` (default: the final students) or
            ``"teachers"``, as everywhere; the singular is accepted as an alias.
        n_resamples: Bootstrap resamples; default 2000, the minimum.
        seed: Seed of the resampling; default 0.

    Returns:
        Comparison: B - A per metric with intervals, and McNemar's test (see
        :func:`compare_predictions`); sides named
        ``"<run name> <models> ensemble (<voting>)"``.

    Raises:
        RunFolderError: A run has no such ensemble on an outer test set, or the
            runs have different classes (noisystudent.errors; a UserError).
        DataError: The runs' test sets differ, or fewer than 2000 resamples.
        ConfigError: A run folder's config.json cannot be read.

    Example:
        >>> import noisystudent as ns
        >>> result = ns.compare_runs("runs/cnmc-study", "runs/noisy-student", voting="soft")  # doctest: +SKIP
        >>> result.row("accuracy")[["difference", "low", "high"]]  # doctest: +SKIP
    """
    kind = layout.model_set_kind(models)
    if kind is None:
        raise ConfigError(f"--models must be students or teachers; got {models!r}.")
    tables, classes = [], None
    for run in (Path(run_a), Path(run_b)):
        table = _ensemble_table(run, kind, voting)
        if table is None:
            raise RunFolderError(f"{run} has no {kind} ensemble on an outer test set "
                                 f"({layout.RESULTS}/predictions_{kind}_{voting}.csv); finish that run first.")
        tables.append(table)
        run_classes = [c[len(layout.PROB_PREFIX):] for c in table.columns if c.startswith(layout.PROB_PREFIX)]
        if classes is not None and run_classes != classes:
            raise RunFolderError(f"{run_a} and {run_b} have different classes ({', '.join(classes)} vs {', '.join(run_classes)}).")
        classes = run_classes
    positive = _positive_of(Path(run_a), classes)
    return compare_predictions([tables[0]], [tables[1]], classes, positive, f"{Path(run_a).name} {kind} ensemble ({voting})",
                               f"{Path(run_b).name} {kind} ensemble ({voting})", n_resamples, seed,
                               majority_a=voting == "majority", majority_b=voting == "majority")


def _positive_of(run: Path, classes: list[str]) -> str | None:
    saved = load_config_json(run / layout.CONFIG)
    if len(classes) != 2:
        return None
    return positive_class_of(saved)
