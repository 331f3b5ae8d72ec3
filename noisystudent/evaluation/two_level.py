"""Two-level bootstrap: did the method help, over seeds and the test patients of each seed?

One run's interval (statistics.paired_bootstrap) resamples its test patients
only: it says how sure we are about *these* trained models. A claim about the
*method* must also carry the variation between runs: the initialisation, the
folds, the outer test set and the pseudo-labels all change with the seed. So a
resample first draws S seeds with replacement from the S seeds that ran, then,
inside each drawn seed, that seed's test patients with replacement (Davison &
Hinkley 1997, sec. 3.8: resampling both stages of a nested design), and takes
the mean over the drawn seeds of the paired difference B - A. The point
estimate is the mean over seeds of each seed's difference on its whole test
set. docs/evidence.md argues the choice.

Metrics come from resampled confusion matrices, so any number of classes works
and a resample costs one matrix product: ``W (R x G) @ C (G x K*K)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from noisystudent.evaluation.statistics import MIN_RESAMPLES, _percentile_interval, bootstrap_p_value

# Metrics computable from a confusion matrix; with a positive class the class-wise ones are that class's,
# without one (multi-class) their unweighted mean over the classes, as the macro rows of metrics.csv.
CONFUSION_METRICS = ("balanced_accuracy", "accuracy", "mcc", "kappa", "f1", "sensitivity", "specificity", "ppv", "npv")


@dataclass(frozen=True)
class SeedPair:
    """One seed's paired calls on its own outer test set (class indices), and the unit each image belongs to."""

    truth: np.ndarray
    called_a: np.ndarray
    called_b: np.ndarray
    groups: np.ndarray  # patient ids; the image's own index where there are none


@dataclass(frozen=True)
class MethodEstimate:
    """Mean over seeds of B - A with its two-level interval, and each seed's own difference and interval."""

    estimate: float
    low: float
    high: float
    resamples: int  # resamples where the metric was defined in every drawn seed; 0 when undefined in a seed
    p_value: float  # two-sided bootstrap p-value of the mean difference (statistics.bootstrap_p_value)
    seeds: int
    per_seed: list[dict]  # estimate, low, high, resamples, units of each seed (its patients only)


def seed_pair(truth: ArrayLike, called_a: ArrayLike, called_b: ArrayLike, groups: ArrayLike, classes: list[str]) -> SeedPair:
    """A SeedPair from label texts: ``truth``, ``called_a``, ``called_b`` name classes of ``classes``."""
    index = {name: i for i, name in enumerate(classes)}
    as_index = lambda values: np.array([index[str(v)] for v in values], dtype=np.int64)  # noqa: E731
    return SeedPair(as_index(truth), as_index(called_a), as_index(called_b), np.asarray(groups, dtype=str))


def confusion_metric(confusions: np.ndarray, metric: str, positive: int | None) -> np.ndarray:
    """``metric`` of each (C x C) confusion matrix (rows: truth, columns: call) of ``confusions`` (R x C x C).

    Undefined values (a class absent from a resample, ...) are NaN, never 0 or 1.
    """
    if metric not in CONFUSION_METRICS:
        raise ValueError(f"metric must be one of {', '.join(CONFUSION_METRICS)}; got {metric!r}.")
    c = np.asarray(confusions, np.float64)
    n = c.sum(axis=(1, 2))
    true_per_class, called_per_class = c.sum(axis=2), c.sum(axis=1)
    right = np.einsum("rii->ri", c)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "accuracy":
            return right.sum(axis=1) / n
        if metric == "balanced_accuracy":  # the mean recall of the classes present, as scikit-learn
            recall = right / true_per_class
            present = np.isfinite(recall).sum(axis=1)
            return np.where(present > 0, np.nansum(recall, axis=1) / np.maximum(present, 1), np.nan)
        if metric in ("mcc", "kappa"):
            return _agreement(right.sum(axis=1), n, true_per_class, called_per_class, metric)
        return _class_wise(right, true_per_class, called_per_class, n, metric, positive)


def _agreement(correct: np.ndarray, n: np.ndarray, truth: np.ndarray, called: np.ndarray, metric: str) -> np.ndarray:
    """Matthews' correlation (Gorodkin's K-class form, as scikit-learn) or Cohen's kappa."""
    chance = (truth * called).sum(axis=1)
    if metric == "kappa":
        denominator = n * n - chance
        return np.where(denominator > 0, (n * correct - chance) / denominator, np.nan)
    denominator = np.sqrt((n * n - (called * called).sum(axis=1)) * (n * n - (truth * truth).sum(axis=1)))
    return np.where(denominator > 0, (correct * n - chance) / denominator, np.nan)  # NaN, never 0, without a denominator


def _class_wise(right: np.ndarray, truth: np.ndarray, called: np.ndarray, n: np.ndarray, metric: str,
                positive: int | None) -> np.ndarray:
    tp, fn, fp = right, truth - right, called - right
    tn = n[:, None] - tp - fn - fp
    values = {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp), "ppv": tp / (tp + fp),
              "npv": tn / (tn + fn), "f1": 2 * tp / (2 * tp + fp + fn)}[metric]
    return values[:, positive] if positive is not None else np.mean(values, axis=1)


def differences(pair: SeedPair, metric: str, positive: int | None, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """metric(B) - metric(A) under each row of unit ``weights`` (R x G, units in sorted order)."""
    _, unit_of_image = np.unique(pair.groups, return_inverse=True)
    values = []
    for called in (pair.called_a, pair.called_b):
        cells = np.zeros((weights.shape[1], n_classes * n_classes))
        np.add.at(cells, (unit_of_image, pair.truth * n_classes + called), 1.0)
        confusions = (weights @ cells).reshape(len(weights), n_classes, n_classes)
        values.append(confusion_metric(confusions, metric, positive))
    return values[1] - values[0]


def two_level_bootstrap(pairs: list[SeedPair], metric: str, n_classes: int, positive: int | None = None,
                        n_resamples: int = MIN_RESAMPLES, seed: int = 0, level: float = 0.95) -> MethodEstimate:
    """Mean over seeds of B - A, with the percentile interval of the two-level bootstrap (seeds, then units).

    Args:
        pairs: One SeedPair per seed that ran (each on its own outer test set).
        metric: One of CONFUSION_METRICS.
        n_classes: The number of classes; calls and truth are indices below it.
        positive: Index of the positive class for the class-wise metrics; None: their mean over classes.
        n_resamples: Resamples of the top level; default 2000.
        seed: Seed of the resampling.
        level: Coverage of the central percentile interval; default 0.95.

    Returns:
        MethodEstimate: the mean difference over seeds, its interval, and per seed the difference and the
        interval of that seed's test patients alone (what a single run reports).

    Example:
        >>> import numpy as np
        >>> pair = SeedPair(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]), np.array(["a", "b", "c", "d"]))
        >>> result = two_level_bootstrap([pair, pair], "accuracy", n_classes=2, n_resamples=200)
        >>> round(result.estimate, 3), result.seeds
        (0.5, 2)
    """
    if not pairs or n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"Need seeds, n_resamples >= 1 and 0 < level < 1; got {len(pairs)}, {n_resamples} and {level}.")
    rng = np.random.default_rng(seed)
    seeds = len(pairs)
    picks = rng.integers(0, seeds, size=(n_resamples, seeds))  # the seed level: S seeds drawn with replacement
    inner = [differences(pair, metric, positive, _unit_draws(pair, n_resamples * seeds, rng), n_classes) for pair in pairs]
    positions = np.arange(n_resamples * seeds).reshape(n_resamples, seeds)  # draw j of resample r uses inner row r*S + j
    resampled = _mean_over_picks(inner, picks, positions)
    observed = [float(differences(pair, metric, positive, _ones(pair), n_classes)[0]) for pair in pairs]
    interval = _percentile_interval(resampled, level)
    if not np.all(np.isfinite(observed)):  # undefined on some seed's whole test set: an interval over the resamples
        interval = {"low": np.nan, "high": np.nan, "resamples": 0}  # where it happens to be defined would be biased
    per_seed = [{"estimate": observed[s], **_percentile_interval(inner[s], level), "units": len(np.unique(pairs[s].groups))}
                for s in range(seeds)]
    return MethodEstimate(float(np.mean(observed)), interval["low"], interval["high"], interval["resamples"],
                          bootstrap_p_value(resampled) if interval["resamples"] else np.nan, seeds, per_seed)


def _mean_over_picks(inner: list[np.ndarray], picks: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each top-level resample r: the mean over j of the drawn seed's difference in its inner row r*S + j."""
    stacked = np.stack(inner)  # S x (R*S): every seed's differences in every inner row
    return stacked[picks, positions].mean(axis=1)  # NaN where a drawn seed's metric is undefined


def _unit_draws(pair: SeedPair, count: int, rng: np.random.Generator) -> np.ndarray:
    units = len(np.unique(pair.groups))
    return rng.multinomial(units, np.full(units, 1.0 / units), size=count).astype(np.float64)


def _ones(pair: SeedPair) -> np.ndarray:
    return np.ones((1, len(np.unique(pair.groups))))
