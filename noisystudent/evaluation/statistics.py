"""Paired bootstrap over patients, McNemar's exact test and Holm's correction: is model B better than model A?

Both models (or sides: a side may be several fold models whose metric is
averaged) are scored on the same images. A resample draws the *units* (the
patients; the images when there are no patient ids) with replacement, and
every image of a drawn unit enters with the unit's multiplicity, for both sides
at once, so the difference is paired. Choices are explained in docs/evidence.md.

Every metric is computed from per-unit counts, so a resample costs one matrix
product instead of a pass over the images: ``W (R x G) @ C (G x K)`` gives the
resampled confusion counts of R resamples, and for AUC the resampled positive
and negative weights at each distinct score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import binomtest

# Every score of metrics.csv where higher is better (config.choices.PRIMARY_METRICS), in metrics.csv's order.
BOOTSTRAP_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "f1_weighted", "balanced_accuracy", "auc",
                     "kappa", "mcc")
MIN_RESAMPLES = 2000  # the floor; fewer gives unstable 2.5 % / 97.5 % percentiles
CHUNK = 256  # resamples per matrix product: bounds memory at CHUNK x distinct scores


@dataclass(frozen=True)
class Scored:
    """One model's calls on the shared images: predicted positive (bool) and a score for AUC (or None)."""

    called: np.ndarray
    score: np.ndarray | None


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: b = images only A got right, c = images only B got right."""

    a_only: int
    b_only: int
    p_value: float


def resample_weights(groups: np.ndarray, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit index of every image, R x G counts of how often each unit is drawn)."""
    units, unit_of_image = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(units), np.full(len(units), 1.0 / len(units)), size=n_resamples)
    return unit_of_image, draws.astype(np.float64)


def metric_matrix(truth: np.ndarray, model: Scored, unit_of_image: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
    """Each BOOTSTRAP_METRICS value of ``model`` under each row of unit ``weights`` (R x metrics).

    A row of ones gives the metrics of the data as observed. Undefined values
    (no positives in the resample, ...) are NaN.
    """
    truth, called = np.asarray(truth, bool), np.asarray(model.called, bool)
    cells = np.stack([truth & called, ~truth & called, ~truth & ~called, truth & ~called], axis=1).astype(np.float64)
    per_unit = np.zeros((weights.shape[1], 4))
    np.add.at(per_unit, unit_of_image, cells)
    values = count_metrics(*(weights @ per_unit).T)
    values["auc"] = weighted_auc(truth, model.score, unit_of_image, weights)
    return pd.DataFrame(values, columns=list(BOOTSTRAP_METRICS))


def count_metrics(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Every BOOTSTRAP_METRICS value but AUC from (weighted) confusion counts, as evaluation.metrics defines it.

    NaN where metrics.py gives NaN: a zero denominator (MCC with an empty row or
    column, kappa with chance agreement 1); balanced accuracy is the mean recall
    of the classes present, weighted F1 weighs each class by its true images.
    """
    positives, negatives = tp + fn, tn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity, specificity = tp / positives, tn / negatives
        f1, f1_negative = 2 * tp / (2 * tp + fp + fn), 2 * tn / (2 * tn + fp + fn)
        mcc_denominator = np.sqrt((tp + fp) * positives * negatives * (tn + fn))
        kappa_denominator = (tp + fp) * negatives + positives * (fn + tn)
        return {
            "accuracy": (tp + tn) / (positives + negatives),
            "sensitivity": sensitivity,
            "specificity": specificity,
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": f1,
            "f1_weighted": (np.where(positives > 0, positives * f1, 0) + np.where(negatives > 0, negatives * f1_negative, 0))
                           / np.where(positives + negatives > 0, positives + negatives, np.nan),
            "balanced_accuracy": np.where(np.isnan(sensitivity), specificity,
                                          np.where(np.isnan(specificity), sensitivity, (sensitivity + specificity) / 2)),
            "kappa": np.where(kappa_denominator > 0, 2 * (tp * tn - fn * fp) / kappa_denominator, np.nan),
            "mcc": np.where(mcc_denominator > 0, (tp * tn - fp * fn) / mcc_denominator, np.nan),
        }


def weighted_auc(truth: np.ndarray, score: np.ndarray | None, unit_of_image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count one half) of ``score`` with images weighted by their unit's count, per row of ``weights``.

    Equals scikit-learn's ``roc_auc_score`` of the data with each image repeated
    that many times; NaN without a score or without both classes.
    """
    if score is None or not np.isfinite(score).all():
        return np.full(weights.shape[0], np.nan)
    levels, level_of_image = np.unique(np.asarray(score, np.float64), return_inverse=True)
    positive, negative = (np.zeros((weights.shape[1], len(levels))) for _ in range(2))
    np.add.at(positive, (unit_of_image[truth], level_of_image[truth]), 1.0)
    np.add.at(negative, (unit_of_image[~truth], level_of_image[~truth]), 1.0)
    result = np.empty(weights.shape[0])
    for start in range(0, weights.shape[0], CHUNK):
        w = weights[start:start + CHUNK]
        pos, neg = w @ positive, w @ negative  # weight of each class at each score level
        below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each level
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            result[start:start + CHUNK] = (pos * (below + 0.5 * neg)).sum(axis=1) / pairs
    return result


def side_metrics(truth: np.ndarray, models: list[Scored], unit_of_image: np.ndarray, weights: np.ndarray) -> pd.DataFrame:
    """The metrics of one side: a single model, or the mean over fold models (per resample)."""
    tables = [metric_matrix(truth, model, unit_of_image, weights).to_numpy() for model in models]
    with np.errstate(invalid="ignore"):
        mean = np.mean(tables, axis=0)  # a fold with an undefined value leaves the mean undefined
    return pd.DataFrame(mean, columns=list(BOOTSTRAP_METRICS))


def paired_bootstrap(truth: ArrayLike, side_a: list[Scored], side_b: list[Scored], groups: ArrayLike, n_resamples: int = MIN_RESAMPLES,
                     seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per metric: A, B, B - A on the data, and the percentile interval of B - A over resamples of ``groups``.

    A resample draws the units (patients) with replacement, and every image of
    a drawn unit enters with the unit's multiplicity for both sides at once, so
    the difference is paired. A side of several models (fold models) scores the
    mean of their metrics. :func:`compare_predictions` builds the arguments
    from prediction tables.

    Args:
        truth: Whether each image truly is of the positive class (bool per image).
        side_a: The models of side A, each a
            ``noisystudent.evaluation.statistics.Scored(called, score)``:
            predicted positive (bool per image) and a score for AUC (or ``None``).
        side_b: The models of side B, likewise, on the same images.
        groups: The unit of each image (patient id; the image's own path when
            patients are unknown).
        n_resamples: Bootstrap resamples; default 2000 (MIN_RESAMPLES).
        seed: Seed of the resampling; default 0 (same seed, same resamples).
        level: Coverage of the central percentile interval; default 0.95.

    Returns:
        pandas.DataFrame: One row per metric (BOOTSTRAP_METRICS: accuracy,
        sensitivity, specificity, ppv, npv, f1, f1_weighted,
        balanced_accuracy, auc, kappa, mcc) with columns metric, a, b,
        difference (b - a on the data), low, high (the interval of the
        difference), resamples (those where the difference is defined; the
        interval uses only those) and p_value (two-sided, of "no difference":
        :func:`bootstrap_p_value`). Undefined values are NaN.

    Raises:
        ValueError: ``n_resamples`` < 1 or ``level`` outside (0, 1).

    Example:
        >>> import numpy as np
        >>> import noisystudent as ns
        >>> from noisystudent.evaluation.statistics import Scored
        >>> truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
        >>> a = Scored(called=np.array([1, 0, 1, 0, 0, 1, 0, 0], bool), score=None)
        >>> b = Scored(called=np.array([1, 1, 1, 0, 0, 0, 0, 0], bool), score=None)
        >>> patients = ["P1", "P1", "P2", "P2", "H1", "H1", "H2", "H2"]
        >>> table = ns.paired_bootstrap(truth, [a], [b], patients, n_resamples=2000, seed=0)
        >>> table.set_index("metric").loc["accuracy", ["a", "b", "difference", "low", "high"]].round(3).tolist()
        [0.625, 0.875, 0.25, 0.0, 0.5]
    """
    truth = np.asarray(truth, bool)
    _check_arguments(n_resamples, level)
    unit_of_image, weights = resample_weights(groups, n_resamples, seed)
    observed = np.ones((1, weights.shape[1]))
    a, b = side_metrics(truth, side_a, unit_of_image, observed), side_metrics(truth, side_b, unit_of_image, observed)
    diffs = side_metrics(truth, side_b, unit_of_image, weights) - side_metrics(truth, side_a, unit_of_image, weights)
    return pd.DataFrame([
        {"metric": metric, "a": a[metric][0], "b": b[metric][0], "difference": b[metric][0] - a[metric][0],
         **_percentile_interval(diffs[metric].to_numpy(), level), "p_value": bootstrap_p_value(diffs[metric].to_numpy())}
        for metric in BOOTSTRAP_METRICS
    ])


def bootstrap_interval(truth: ArrayLike, side: list[Scored], groups: ArrayLike, n_resamples: int = MIN_RESAMPLES, seed: int = 0,
                       level: float = 0.95) -> pd.DataFrame:
    """Per metric: one side's value on the data and its percentile interval over resamples of ``groups``.

    The same resamples as :func:`paired_bootstrap` with the same seed, for a single
    number (a model, an ensemble, or the mean over fold models) rather than a difference.
    Columns: metric, value, low, high, resamples.
    """
    truth = np.asarray(truth, bool)
    _check_arguments(n_resamples, level)
    unit_of_image, weights = resample_weights(groups, n_resamples, seed)
    value = side_metrics(truth, side, unit_of_image, np.ones((1, weights.shape[1])))
    resampled = side_metrics(truth, side, unit_of_image, weights)
    return pd.DataFrame([
        {"metric": metric, "value": value[metric][0], **_percentile_interval(resampled[metric].to_numpy(), level)}
        for metric in BOOTSTRAP_METRICS
    ])


def _check_arguments(n_resamples: int, level: float) -> None:
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"Need n_resamples >= 1 and 0 < level < 1; got {n_resamples} and {level}.")


def _percentile_interval(values: np.ndarray, level: float) -> dict:
    """The central ``level`` percentile interval of the resamples where the value is defined, and their count."""
    finite = values[np.isfinite(values)]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (np.nan, np.nan)
    return {"low": float(low), "high": float(high), "resamples": len(finite)}


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference": min(1, 2 x the smaller share of resamples <= 0 or >= 0).

    Only resamples where the difference is defined count; NaN without any. It
    agrees with the percentile interval: p < 1 - level exactly when that interval
    excludes 0 (up to ties at 0).
    """
    finite = np.asarray(differences, np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return float("nan")
    return float(min(1.0, 2 * min((finite <= 0).mean(), (finite >= 0).mean())))


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN ones stay NaN and are not counted).

    The i-th smallest of m p-values is multiplied by m - i + 1, the running
    maximum keeps the order, and 1 caps it: rejecting where the adjusted value
    is below alpha keeps the family-wise error rate at alpha under any
    dependence. Equals statsmodels' ``multipletests(p, method="holm")[1]``.

    Args:
        p_values: Raw p-values of the family, in any order; NaN for a test that
            could not be made.

    Returns:
        numpy.ndarray: The adjusted p-values, in the order given.

    Example:
        >>> import noisystudent as ns
        >>> ns.holm([0.01, 0.04, 0.03, 0.5]).round(3).tolist()
        [0.04, 0.09, 0.09, 0.5]
    """
    p = np.asarray(p_values, np.float64)
    adjusted = np.full(p.shape, np.nan)
    defined = np.flatnonzero(np.isfinite(p))
    order = defined[np.argsort(p[defined], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def mcnemar_exact(truth: ArrayLike, called_a: ArrayLike, called_b: ArrayLike) -> McNemar:
    """McNemar's exact (binomial) test on the discordant images of two sets of calls; two-sided.

    Only the images exactly one of the two gets right count: under the null
    hypothesis each is equally likely to be A's or B's.

    Args:
        truth: True labels, one per image (any comparable values).
        called_a: Model A's predicted labels, same length.
        called_b: Model B's predicted labels, same length.

    Returns:
        McNemar: ``a_only`` (images only A got right), ``b_only`` (only B) and
        the two-sided exact ``p_value`` (1.0 when there are no discordant images).

    Example:
        >>> import noisystudent as ns
        >>> truth = ["all", "hem", "all", "hem", "all"]
        >>> ns.mcnemar_exact(truth, ["all", "all", "hem", "hem", "hem"], truth)
        McNemar(a_only=0, b_only=3, p_value=0.25)
    """
    truth = np.asarray(truth)
    right_a, right_b = np.asarray(called_a) == truth, np.asarray(called_b) == truth
    a_only, b_only = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p_value = 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return McNemar(a_only, b_only, p_value)
