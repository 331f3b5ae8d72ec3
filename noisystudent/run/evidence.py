"""What a run's numbers are worth: selection bias marks, pseudo-label quality, and the tested comparison.

- Every metrics.csv row says how its models were selected (``selection``) and
  whether that selection looked at the row's own images (``selection_biased``:
  validation rows whenever the validation part chose the epoch: ``--select
  best``, ``--early-stopping``, ``--scheduler plateau``; and the students'
  validation rows of ``--pool-labels ensemble`` runs, whose pool labels came
  from the other folds' models, trained on this fold's validation part). Mean and variance rows
  say how many folds define each metric (``folds_<metric>``; ``folds_averaged``
  for the primary metric).
- ``split=masked`` rows score each teacher's pseudo-labels against the masked
  part's hidden labels (which only evaluation reads: students learn from
  pseudo_labels.csv). results/pseudo_label_quality.csv has them per class.
- results/comparison.csv: final students vs teachers on the outer test set by
  a paired bootstrap over patients (evaluation.comparison): the one primary
  comparison (``--voting`` ensembles, ``--primary-metric``) first, every other
  row secondary with Holm-adjusted p-values; the same code compares two runs
  (``noisystudent compare``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from noisystudent import atomic, layout
from noisystudent.config.choices import ONE_STAGE_METHODS
from noisystudent.config.run_config import RunConfig, load_config_json, positive_class_of
from noisystudent.data.labels import as_labels
from noisystudent.data.manifest import LABEL, PATH, ROLE, ROLE_TEST, SUBSET, SUBSET_TEST
from noisystudent.errors import ConfigError, RunFolderError
from noisystudent.evaluation import metrics
from noisystudent.evaluation.calibration import expected_calibration_error
from noisystudent.evaluation.comparison import Comparison, compare_predictions, comparison_table
from noisystudent.evaluation.statistics import MIN_RESAMPLES, holm
from noisystudent.run.tables import TABLE_CHUNK, read_table, read_table_chunks

logger = logging.getLogger(__name__)

SELECTION_WORDS = {"best": "best epoch", "last": "last epoch"}
QUALITY_COLUMNS = ["ece", "kept", "kept_copies", "kept_accuracy"]
EVIDENCE_COLUMNS = [layout.SELECTION, layout.SELECTION_BIASED, layout.FOLDS_AVERAGED, layout.AUC_FROM]
FOLDS_DEFINED = [layout.folds_column(m) for m in metrics.METRIC_COLUMNS]  # after the quality columns
MARK_COLUMNS = EVIDENCE_COLUMNS[:3] + FOLDS_DEFINED  # what mark_rows adds
COMPARISON = "comparison.csv"
PRIMARY, SECONDARY = "primary", "secondary"  # comparison.csv's endpoint column
FOLD_MEAN_PAIR = "fold mean"  # comparison.csv's pair column: a voting rule, or the fold means
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
                       "out-of-fold number is selection-biased%s.", " (epochs chosen on it)" if selection_saw_validation(config) else "")


def data_has_test(images: pd.DataFrame) -> bool:
    return bool((images[SUBSET] == SUBSET_TEST).any())


def selection_saw_validation(config: RunConfig) -> bool:
    """Whether the validation part chose each model's epoch: best epoch, early stopping, or a plateau schedule.

    ``--select last`` alone keeps the last of a fixed number of epochs; early
    stopping ends training when the validation metric stalls, and the plateau
    schedule lowers the learning rate when it does, so the last epoch was then
    chosen with the validation images too.
    """
    return config.select == "best" or config.early_stopping > 0 or config.scheduler == "plateau"


def _saw_other_folds(table: pd.DataFrame, config: RunConfig) -> pd.Series:
    """Students of --pool-labels ensemble runs: their pool labels came from every fold's model, which trained on this fold's validation part."""
    students = pd.to_numeric(table[layout.ROUND], errors="coerce") >= 1
    return students & (config.pool_labels == "ensemble" and config.student_data != "labelled")  # not the control arm


def mark_rows(table: pd.DataFrame, config: RunConfig) -> pd.DataFrame:
    """Add selection, selection_biased, folds_averaged and folds_<metric> to a metrics table."""
    table = table.copy()
    table[layout.SELECTION] = SELECTION_WORDS[config.select]
    validation = table[layout.EVAL_SPLIT] == "validation"
    table[layout.SELECTION_BIASED] = validation & (selection_saw_validation(config) | _saw_other_folds(table, config))
    defined = folds_defined(table)
    table[layout.FOLDS_AVERAGED] = defined[layout.folds_column(config.primary_metric)]
    return pd.concat([table, defined], axis=1)


def folds_defined(table: pd.DataFrame) -> pd.DataFrame:
    """folds_<metric> of every row: on mean and variance rows, how many fold rows of the group define the metric.

    A group is what metrics.summarise_folds averages over (model, round, split,
    voting, class); other rows are left empty.
    """
    keys = [k for k in metrics.SUMMARY_KEYS if k in table.columns]
    is_fold = pd.to_numeric(table[layout.FOLD_COLUMN], errors="coerce").notna()
    folds = table.loc[is_fold, keys].join(table.loc[is_fold, metrics.METRIC_COLUMNS].notna().astype(int))
    counts = folds.groupby(keys, dropna=False, as_index=False).sum().rename(columns=dict(zip(metrics.METRIC_COLUMNS, FOLDS_DEFINED)))
    found = table[keys].reset_index(drop=True).merge(counts, on=keys, how="left")[FOLDS_DEFINED]  # keeps the table's order
    summary = table[layout.FOLD_COLUMN].astype(str).isin([metrics.MEAN_ROW, metrics.VARIANCE_ROW]).to_numpy()
    found.loc[~summary] = np.nan
    return found.set_axis(table.index).astype("Int64")


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
        if round_ >= config.rounds or masked.empty or config.method in ONE_STAGE_METHODS:  # FixMatch uses no teacher's labels
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


def run_comparisons(run: Path, predictions: dict, config: RunConfig, classes: list[str], positive: str | None) -> dict[str, Comparison]:
    """Final students vs teachers on the outer test set, by pair: each voting rule's ensembles, then the fold means.

    Only the final round's students are compared (intermediate rounds keep
    their rows in metrics.csv); the pair of ``config.voting`` is the primary one.
    """
    final = config.rounds
    found = {}
    for rule in ("majority", "soft"):
        teacher, student = (_ensemble_table(run, kind, rule) for kind in (layout.TEACHER, layout.STUDENT))
        if final > 0 and teacher is not None and student is not None:
            found[rule] = compare_predictions([teacher], [student], classes, positive, f"teacher ensemble ({rule})",
                                              f"student ensemble ({rule}, round {final})", MIN_RESAMPLES, config.seed,
                                              majority_a=rule == "majority", majority_b=rule == "majority",
                                              primary_metric=config.primary_metric)
    teachers, students = _fold_tests(predictions, config, 0), _fold_tests(predictions, config, final)
    if final > 0 and teachers and students:
        found[FOLD_MEAN_PAIR] = compare_predictions(teachers, students, classes, positive, f"teacher (mean of {len(teachers)} folds)",
                                                    f"student round {final} (mean of {len(students)} folds)", MIN_RESAMPLES,
                                                    config.seed, primary_metric=config.primary_metric)
    return found


def write_comparisons(run: Path, comparisons: dict[str, Comparison], config: RunConfig) -> pd.DataFrame:
    table = comparisons_frame(comparisons, config.voting, config.primary_metric)
    atomic.write_csv(layout.results_dir(run) / COMPARISON, table, for_people=True)
    return table


def comparisons_frame(comparisons: dict[str, Comparison], primary_pair: str, primary_metric: str) -> pd.DataFrame:
    """One row per pair and metric, the primary comparison first: endpoint, interval, own verdict, p-values, McNemar.

    The primary comparison is ``primary_pair``'s row of ``primary_metric``;
    every other row is secondary, and its ``p_holm`` is Holm's adjustment over
    all secondary rows (the primary row's is its raw ``p_value``: a family of one).
    """
    parts = []
    for pair, comparison in comparisons.items():
        test = comparison.mcnemar
        part = comparison_table(comparison).assign(n_resamples=comparison.n_resamples, mcnemar_p=test.p_value if test else np.nan,
                                                  a_only=test.a_only if test else np.nan, b_only=test.b_only if test else np.nan)
        primary = (pair == primary_pair) & (part["metric"] == primary_metric)
        part.insert(0, "pair", pair)
        part.insert(0, "endpoint", np.where(primary, PRIMARY, SECONDARY))
        parts.append(part)
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    secondary = (table["endpoint"] == SECONDARY).to_numpy()
    p_holm = table["p_value"].to_numpy(dtype=np.float64, copy=True)
    p_holm[secondary] = holm(p_holm[secondary])
    table.insert(table.columns.get_loc("p_value") + 1, "p_holm", p_holm)
    return table.sort_values("endpoint", key=lambda e: e != PRIMARY, kind="stable").reset_index(drop=True)


def _ensemble_table(run: Path, kind: str, rule: str) -> pd.DataFrame | None:
    path = layout.results_dir(run) / f"predictions_{kind}_{rule}.csv"
    if not path.exists():
        return None
    try:
        return read_table(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        reason = "it is empty" if isinstance(error, pd.errors.EmptyDataError) else "it is not a readable CSV"
        raise RunFolderError(f"The file {path} cannot be read ({reason}); noisystudent kfold --out {run} --resume "
                             "writes it again from the fold predictions.") from error


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
    The positive class and the primary metric are run A's. The run folders
    are only read.

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
    saved = load_config_json(Path(run_a) / layout.CONFIG)
    positive = positive_class_of(saved) if len(classes) == 2 else None
    return compare_predictions([tables[0]], [tables[1]], classes, positive, f"{Path(run_a).name} {kind} ensemble ({voting})",
                               f"{Path(run_b).name} {kind} ensemble ({voting})", n_resamples, seed,
                               majority_a=voting == "majority", majority_b=voting == "majority",
                               primary_metric=saved.get("primary_metric", "accuracy"))  # runs before --primary-metric: accuracy
