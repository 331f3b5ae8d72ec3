"""Every evaluation number of the package, computed one way from labels and predictions.

Training, evaluation, ensembling and the report all call these functions, and
``metrics_from_predictions`` recomputes them from a saved predictions.csv, so
a number in metrics.csv can always be reproduced from the prediction files.

Degenerate cases: a metric whose denominator is zero is NaN, never a warning
or a crash. Sensitivity, specificity, PPV and NPV are ratios of the confusion
counts (NaN when their denominator is 0); F1 uses scikit-learn with
``zero_division=nan`` (NaN only when TP + FP + FN = 0); MCC and kappa are NaN
when their denominator is 0 (scikit-learn would report 0 for MCC); AUC is NaN
when y_true has a single class or no probabilities are given. Balanced
accuracy is scikit-learn's: the mean recall of the classes present in y_true.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
)

from noisystudent.data.labels import as_labels
from noisystudent.data.manifest import LABEL
from noisystudent.errors import ConfigError, DataError
from noisystudent.layout import EVAL_SPLIT, FOLD_COLUMN, MODEL_KIND, PRED, ROUND, VOTING, prob_column

METRIC_COLUMNS = [
    "accuracy",
    "no_information_rate",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "f1_weighted",
    "balanced_accuracy",
    "auc",
    "kappa",
    "mcc",
]
COUNT_COLUMNS = ["tp", "fp", "tn", "fn", "n"]
# Metrics of one class against the rest; MACRO and WEIGHTED rows average these over the classes.
PER_CLASS_AVERAGED = ["sensitivity", "specificity", "ppv", "npv", "f1", "auc"]
CLASS_COLUMN = "class"  # which class a row is about: a class name (one-vs-rest), MACRO or WEIGHTED
MACRO = "macro"  # CLASS_COLUMN of unweighted means over the classes
WEIGHTED = "weighted"  # CLASS_COLUMN of support-weighted means over the classes
DEFAULT_POSITIVE = "all"  # ALL (leukaemic blast) is the positive class of C-NMC
MEAN_ROW = "mean"  # FOLD_COLUMN values added by summarise_folds
VARIANCE_ROW = "variance"
SUMMARY_KEYS = [MODEL_KIND, ROUND, EVAL_SPLIT, VOTING, CLASS_COLUMN]  # rows are summarised per these (when present)


def binary_metrics(
    y_true: Sequence,
    y_pred: Sequence,
    prob_positive: Sequence[float] | None = None,
    positive: str | int = DEFAULT_POSITIVE,
) -> dict[str, float]:
    """Metrics of ``positive`` versus every other class.

    Labels may be class names or ints; they are compared as strings, so 1 and
    "1" are the same class. A metric whose denominator is 0 is NaN, never a
    warning (see the module docstring for each degenerate case).

    Args:
        y_true: True labels, one per image.
        y_pred: Predicted labels, same length.
        prob_positive: Predicted probability (or any score) of the positive
            class per image, for AUC; default ``None``: AUC is NaN.
        positive: The positive class; default ``"all"`` (C-NMC's leukaemic blasts).

    Returns:
        dict[str, float]: The METRIC_COLUMNS (accuracy, no_information_rate,
        sensitivity, specificity, ppv, npv, f1, f1_weighted,
        balanced_accuracy, auc, kappa, mcc) as floats and the COUNT_COLUMNS
        (tp, fp, tn, fn, n) as ints; all metrics NaN and counts 0 for no images.

    Raises:
        ValueError: ``y_true`` and ``y_pred`` differ in length.

    Example:
        >>> import noisystudent as ns
        >>> m = ns.binary_metrics(["all", "hem", "all", "hem"], ["all", "hem", "hem", "hem"],
        ...                       prob_positive=[0.9, 0.2, 0.4, 0.3], positive="all")
        >>> m["accuracy"], m["sensitivity"], m["specificity"], m["auc"]
        (0.75, 0.5, 1.0, 1.0)
        >>> m["tp"], m["fp"], m["tn"], m["fn"], m["n"]
        (1, 0, 2, 1, 4)
    """
    truth = as_labels(y_true) == str(positive)
    guess = as_labels(y_pred) == str(positive)
    if len(truth) != len(guess):
        raise ValueError(f"y_true has {len(truth)} labels but y_pred has {len(guess)}.")
    if len(truth) == 0:
        return {**dict.fromkeys(METRIC_COLUMNS, float("nan")), **dict.fromkeys(COUNT_COLUMNS, 0)}
    tn, fp, fn, tp = (int(x) for x in confusion_matrix(truth, guess, labels=[False, True]).ravel())
    counts = {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(truth)}
    with warnings.catch_warnings():  # degenerate cases are NaN by design, not warnings
        warnings.simplefilter("ignore")
        values = {
            "accuracy": float(accuracy_score(truth, guess)),
            "no_information_rate": no_information_rate(truth),
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn),
            "f1": float(f1_score(truth, guess, pos_label=True, zero_division=np.nan)),
            "f1_weighted": _weighted_f1(truth, guess),
            "balanced_accuracy": float(balanced_accuracy_score(truth, guess)),
            "auc": _auc(truth, prob_positive),
            "kappa": _kappa(truth, guess),
            "mcc": _mcc(truth, guess, tp, fp, tn, fn),
        }
    return {**values, **counts}


def multiclass_metrics(
    y_true: Sequence,
    y_pred: Sequence,
    probs: np.ndarray | None,
    classes: Sequence[str],
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-class one-vs-rest metrics and their macro summary.

    The per-class table has a CLASS_COLUMN plus binary_metrics of that class
    against the rest (AUC from ``probs[:, i]``). The macro dict holds the
    unweighted mean over classes (NaN classes skipped, as scikit-learn's
    ``zero_division=nan``) of sensitivity, specificity, PPV, NPV, F1 and AUC,
    except that the macro AUC is NaN when a class has no true image (as
    scikit-learn's one-vs-rest AUC refuses such data);
    accuracy, weighted F1, balanced accuracy, kappa and MCC are the true
    multiclass values; n is the number of images.

    Args:
        y_true: True labels, one per image (compared as strings).
        y_pred: Predicted labels, same length.
        probs: Probabilities shaped (images, classes), columns in the order of
            ``classes``, for the per-class AUC; ``None``: AUC is NaN.
        classes: The class names, one table row each, in this order.

    Returns:
        tuple[pandas.DataFrame, dict[str, float]]: The per-class table (columns
        class, the METRIC_COLUMNS and COUNT_COLUMNS; one row per class) and
        the macro dict (METRIC_COLUMNS and n).

    Raises:
        ValueError: ``probs`` is not shaped (len(y_true), len(classes)).

    Example:
        >>> import noisystudent as ns
        >>> per_class, macro = ns.multiclass_metrics(["a", "b", "c", "a"], ["a", "b", "b", "a"], None, ["a", "b", "c"])
        >>> per_class[["class", "sensitivity", "ppv"]].to_dict("list")
        {'class': ['a', 'b', 'c'], 'sensitivity': [1.0, 1.0, 0.0], 'ppv': [1.0, 0.5, nan]}
        >>> macro["accuracy"], round(macro["sensitivity"], 3), macro["n"]
        (0.75, 0.667, 4)
    """
    truth, guess = as_labels(y_true), as_labels(y_pred)
    names = [str(c) for c in classes]
    if probs is not None and np.shape(probs) != (len(truth), len(names)):
        raise ValueError(f"probs has shape {np.shape(probs)}, expected ({len(truth)}, {len(names)}).")
    rows = []
    for i, name in enumerate(names):
        prob = None if probs is None else np.asarray(probs)[:, i]
        rows.append({CLASS_COLUMN: name, **binary_metrics(truth, guess, prob, positive=name)})
    per_class = pd.DataFrame(rows, columns=[CLASS_COLUMN, *METRIC_COLUMNS, *COUNT_COLUMNS])
    macro = {m: _nanmean(per_class[m]) for m in METRIC_COLUMNS}
    if (per_class["tp"] + per_class["fn"] == 0).any():
        macro["auc"] = float("nan")  # an average over some classes is not the macro AUC of all of them
    macro.update(_multiclass_overall(truth, guess, names))
    macro["n"] = len(truth)
    return per_class, macro


def weighted_metrics(per_class: pd.DataFrame, overall: dict[str, float]) -> dict[str, float]:
    """Support-weighted means over the classes of a multiclass_metrics table.

    Each class weighs its number of true images (tp + fn), as scikit-learn's
    ``average="weighted"``; so weighted sensitivity equals accuracy and
    weighted AUC is scikit-learn's weighted one-vs-rest AUC. The class-free
    numbers (accuracy, kappa, ...) are taken from ``overall``.
    """
    support = (per_class["tp"] + per_class["fn"]).to_numpy(float)
    values = {m: _weighted_mean(per_class[m].to_numpy(float), support) for m in PER_CLASS_AVERAGED}
    shared = {m: overall[m] for m in METRIC_COLUMNS if m not in PER_CLASS_AVERAGED}
    return {**shared, **values, "n": overall["n"]}


def no_information_rate(y_true: Sequence) -> float:
    """Accuracy of always answering the commonest true class (NaN without labels)."""
    labels = pd.Series(np.asarray(y_true, dtype=object).ravel())
    return float(labels.value_counts(normalize=True).max()) if len(labels) else float("nan")


def metrics_from_predictions(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    positive: str | None = DEFAULT_POSITIVE,
) -> dict[str, float]:
    """Metrics of a predictions.csv table (columns label, pred, prob_<class>).

    Rows without a label (pool images) are skipped. With a ``positive`` class
    these are binary_metrics of it against the rest (AUC from its prob column
    when present); with ``positive=None`` the macro dict of multiclass_metrics.
    """
    first = metric_rows_from_predictions(predictions, classes, positive)[0]
    return {k: v for k, v in first.items() if k != CLASS_COLUMN}


def metric_rows_from_predictions(
    predictions: pd.DataFrame,
    classes: Sequence[str],
    positive: str | None = DEFAULT_POSITIVE,
) -> list[dict[str, float]]:
    """Every metrics row of a predictions table, each with its CLASS_COLUMN.

    With a ``positive`` class: one row, that class against the rest. With
    ``positive=None`` (more than two classes): the MACRO row, the WEIGHTED row,
    then one one-vs-rest row per class, in the order of ``classes``.
    """
    truth, guess, labelled = _labelled(predictions)
    prob_columns = [prob_column(str(c)) for c in classes]
    if positive is None:
        has_probs = all(c in labelled.columns for c in prob_columns)
        probs = labelled[prob_columns].to_numpy(dtype=float) if has_probs else None
        per_class, macro = multiclass_metrics(truth, guess, probs, classes)
        averages = [{CLASS_COLUMN: MACRO, **macro}, {CLASS_COLUMN: WEIGHTED, **weighted_metrics(per_class, macro)}]
        return averages + per_class.to_dict("records")
    if str(positive) not in map(str, classes):
        raise ConfigError(f"The positive class {positive!r} is not one of the classes {', '.join(map(str, classes))}.")
    column = prob_column(str(positive))
    prob = labelled[column].to_numpy(dtype=float) if column in labelled.columns else None
    return [{CLASS_COLUMN: str(positive), **binary_metrics(truth, guess, prob, positive)}]


def headline_class_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that summarise all classes: MACRO rows of a multi-class table, every row of a binary one.

    A table written before the CLASS_COLUMN existed is returned as it is.
    """
    if CLASS_COLUMN not in table.columns or not (table[CLASS_COLUMN].astype(str) == MACRO).any():
        return table
    return table[table[CLASS_COLUMN].astype(str) == MACRO].reset_index(drop=True)


def one_vs_rest_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The per-class rows of a multi-class table (empty for a binary one)."""
    if CLASS_COLUMN not in table.columns or not (table[CLASS_COLUMN].astype(str) == MACRO).any():
        return table.iloc[0:0]
    return table[~table[CLASS_COLUMN].astype(str).isin([MACRO, WEIGHTED])].reset_index(drop=True)


def with_integer_counts(table: pd.DataFrame) -> pd.DataFrame:
    """COUNT_COLUMNS as nullable integers, so a CSV holds 128, never 128.0 (empty where undefined)."""
    table = table.copy()
    for column in COUNT_COLUMNS:
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce").round().astype("Int64")
    return table


def summarise_folds(rows: pd.DataFrame) -> pd.DataFrame:
    """Append a 'mean' and a 'variance' row per model/round/split/voting group.

    Per-fold rows are those whose FOLD_COLUMN is an integer; other rows
    (e.g. 'ensemble') are kept as they are, and earlier 'mean'/'variance'
    rows are replaced. Every numeric column is summarised over the folds of
    the group, skipping NaN: the mean, and the sample variance (ddof=1, i.e.
    ``numpy.var(x, ddof=1)``; NaN with a single fold). Counts (COUNT_COLUMNS)
    are not averaged: the mean row holds their totals over the folds (a mean
    of 75.5 images is no count) and the variance row leaves them empty.
    """
    is_fold = pd.to_numeric(rows[FOLD_COLUMN], errors="coerce").notna()
    is_old_summary = rows[FOLD_COLUMN].astype(str).isin([MEAN_ROW, VARIANCE_ROW])
    kept = rows[~is_old_summary]
    per_fold = rows[is_fold]
    keys = [k for k in SUMMARY_KEYS if k in rows.columns]
    values = [c for c in per_fold.select_dtypes("number").columns if c not in keys and c != FOLD_COLUMN]
    summaries = []
    groups = per_fold.groupby(keys, sort=False, dropna=False) if keys else [((), per_fold)]
    for key, group in groups:
        ident = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        counts = [c for c in values if c in COUNT_COLUMNS]
        rates = [c for c in values if c not in COUNT_COLUMNS]
        totals = group[counts].sum(min_count=1).to_dict()
        summaries.append({**ident, FOLD_COLUMN: MEAN_ROW, **group[rates].mean().to_dict(), **totals})
        summaries.append({**ident, FOLD_COLUMN: VARIANCE_ROW, **group[rates].var(ddof=1).to_dict()})
    if not summaries:
        return kept.reset_index(drop=True)
    table = pd.concat([kept.astype({FOLD_COLUMN: object}), pd.DataFrame(summaries)], ignore_index=True)
    return table[list(rows.columns)]


# --- helpers -----------------------------------------------------------------


def _labelled(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """True and predicted labels of the labelled rows, and those rows."""
    for column in (LABEL, PRED):
        if column not in predictions.columns:
            raise DataError(f"The predictions table lacks the column {column!r}.")
    labelled = predictions[as_labels(predictions[LABEL]) != ""]
    return as_labels(labelled[LABEL]), as_labels(labelled[PRED]), labelled


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _weighted_f1(truth: np.ndarray, guess: np.ndarray) -> float:
    """Support-weighted F1 of both classes (a class absent from y_true has weight 0)."""
    labels = [label for label in (False, True) if label in set(truth)]
    return float(f1_score(truth, guess, labels=labels, average="weighted", zero_division=np.nan))


def _auc(truth: np.ndarray, prob_positive: Sequence[float] | None) -> float:
    if prob_positive is None or len(set(truth)) < 2:
        return float("nan")
    prob = np.asarray(prob_positive, dtype=float)
    if not np.isfinite(prob).all():
        return float("nan")
    return float(roc_auc_score(truth, prob))


def _kappa(truth: np.ndarray, guess: np.ndarray) -> float:
    """Cohen's kappa; NaN where chance agreement is 1 (true and predicted labels all one class)."""
    if len(set(truth) | set(guess)) < 2:
        return float("nan")
    return float(cohen_kappa_score(truth, guess))


def _mcc(truth: np.ndarray, guess: np.ndarray, tp: int, fp: int, tn: int, fn: int) -> float:
    if 0 in (tp + fp, tp + fn, tn + fp, tn + fn):
        return float("nan")  # scikit-learn returns 0 here; 0/0 is undefined
    return float(matthews_corrcoef(truth, guess))


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Mean of the finite values, weighted; NaN when no finite value has weight."""
    keep = np.isfinite(values) & (weights > 0)
    return float(np.average(values[keep], weights=weights[keep])) if keep.any() else float("nan")


def _nanmean(values: pd.Series) -> float:
    finite = values.dropna()
    return float(finite.mean()) if len(finite) else float("nan")


def _multiclass_overall(truth: np.ndarray, guess: np.ndarray, names: list[str]) -> dict[str, float]:
    if len(truth) == 0:
        return dict.fromkeys(["accuracy", "no_information_rate", "f1_weighted", "balanced_accuracy", "kappa", "mcc"], float("nan"))
    present = [c for c in names if c in set(truth)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": float(accuracy_score(truth, guess)),
            "no_information_rate": no_information_rate(truth),
            "f1_weighted": float(f1_score(truth, guess, labels=present, average="weighted", zero_division=np.nan)),
            "balanced_accuracy": float(balanced_accuracy_score(truth, guess)),
            "kappa": _kappa(truth, guess),
            "mcc": _multiclass_mcc(truth, guess, names),
        }


def _multiclass_mcc(truth: np.ndarray, guess: np.ndarray, names: list[str]) -> float:
    """MCC; NaN where its denominator is 0 (all true or all predicted labels one class)."""
    if len(set(truth)) < 2 or len(set(guess)) < 2:
        return float("nan")
    return float(matthews_corrcoef(truth, guess))
