"""The two-level bootstrap (seeds, then patients within a seed): its metrics and its resampling, against plain loops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
)

from noisystudent.evaluation.two_level import CONFUSION_METRICS, SeedPair, confusion_metric, differences, two_level_bootstrap
from noisystudent.experiment.estimates import method_verdict


def _sklearn(metric: str, truth, called, classes: int, positive: int | None) -> float:
    labels = list(range(classes))
    average = "binary" if positive is not None else "macro"
    options = {"labels": labels, "zero_division": np.nan} if positive is None else {"pos_label": positive, "zero_division": np.nan}
    if metric == "specificity":
        negative_recall = [recall_score(truth != k, called != k, zero_division=np.nan) for k in labels]
        return negative_recall[positive] if positive is not None else float(np.mean(negative_recall))
    if metric == "npv":
        values = [precision_score(truth != k, called != k, zero_division=np.nan) for k in labels]
        return values[positive] if positive is not None else float(np.mean(values))
    return {
        "accuracy": lambda: accuracy_score(truth, called),
        "balanced_accuracy": lambda: balanced_accuracy_score(truth, called),
        "mcc": lambda: matthews_corrcoef(truth, called),
        "kappa": lambda: cohen_kappa_score(truth, called),
        "f1": lambda: f1_score(truth, called, average=average, **options),
        "sensitivity": lambda: recall_score(truth, called, average=average, **options),
        "ppv": lambda: precision_score(truth, called, average=average, **options),
    }[metric]()


@pytest.mark.parametrize("classes,positive", [(2, 0), (2, 1), (4, None)])
@pytest.mark.parametrize("metric", CONFUSION_METRICS)
def test_every_metric_equals_scikit_learn(metric, classes, positive):
    rng = np.random.default_rng(classes * 10 + (positive or 0))
    truth = rng.integers(0, classes, 60)
    called = np.where(rng.random(60) < 0.7, truth, rng.integers(0, classes, 60))
    confusion = confusion_matrix(truth, called, labels=list(range(classes)))[None]
    ours = confusion_metric(confusion, metric, positive)[0]
    assert ours == pytest.approx(_sklearn(metric, truth, called, classes, positive), abs=1e-12)


def test_an_undefined_metric_is_nan_not_zero():
    only_negatives = np.array([[[5, 0], [0, 0]]])  # no positive image: sensitivity has no denominator
    assert np.isnan(confusion_metric(only_negatives, "sensitivity", 1)[0])
    assert np.isnan(confusion_metric(only_negatives, "mcc", None)[0])  # scikit-learn says 0.0; the package says empty
    assert confusion_metric(only_negatives, "balanced_accuracy", None)[0] == 1.0  # the classes present, as scikit-learn
    assert np.isnan(confusion_metric(np.zeros((1, 2, 2)), "balanced_accuracy", None)[0])


def _pairs(seeds: int, rng: np.random.Generator) -> list[SeedPair]:
    pairs = []
    for s in range(seeds):
        n = 20 + 4 * s  # each seed has its own test set, of its own size
        truth = rng.integers(0, 2, n)
        called_a = np.where(rng.random(n) < 0.7, truth, 1 - truth)
        called_b = np.where(rng.random(n) < 0.8, truth, 1 - truth)
        pairs.append(SeedPair(truth, called_a, called_b, np.array([f"P{i // 2}" for i in range(n)])))
    return pairs


def test_the_two_level_bootstrap_equals_a_naive_loop():
    """Same draws, plain loops: pick seeds, expand each image by its patient's count, score with scikit-learn."""
    pairs, resamples, seed = _pairs(3, np.random.default_rng(1)), 40, 7
    result = two_level_bootstrap(pairs, "balanced_accuracy", n_classes=2, n_resamples=resamples, seed=seed)

    rng = np.random.default_rng(seed)  # the documented order of draws: seeds, then each seed's R*S patient draws
    picks = rng.integers(0, 3, size=(resamples, 3))
    draws = []
    for pair in pairs:
        units = len(np.unique(pair.groups))
        draws.append(rng.multinomial(units, np.full(units, 1 / units), size=resamples * 3))
    naive = []
    for r in range(resamples):
        diffs = []
        for j in range(3):
            pair = pairs[picks[r, j]]
            _, unit_of_image = np.unique(pair.groups, return_inverse=True)
            repeat = draws[picks[r, j]][r * 3 + j][unit_of_image]
            truth, a, b = (np.repeat(x, repeat) for x in (pair.truth, pair.called_a, pair.called_b))
            diffs.append(balanced_accuracy_score(truth, b) - balanced_accuracy_score(truth, a))
        naive.append(np.mean(diffs))
    low, high = np.percentile(naive, [2.5, 97.5])
    assert (result.low, result.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    observed = [balanced_accuracy_score(p.truth, p.called_b) - balanced_accuracy_score(p.truth, p.called_a) for p in pairs]
    assert result.estimate == pytest.approx(np.mean(observed), abs=1e-12)
    assert [row["estimate"] for row in result.per_seed] == pytest.approx(observed, abs=1e-12)
    assert result.seeds == 3 and result.resamples == resamples


def test_the_seed_level_widens_the_interval_when_seeds_disagree():
    """Two seeds whose differences have opposite signs: each seed alone excludes 0, the method does not."""
    truth = np.array([0, 1] * 30)
    better = SeedPair(truth, np.where(np.arange(60) % 3 == 0, 1 - truth, truth), truth, np.arange(60).astype(str))
    worse = SeedPair(truth, truth, np.where(np.arange(60) % 3 == 0, 1 - truth, truth), np.arange(60).astype(str))
    result = two_level_bootstrap([better, worse], "accuracy", n_classes=2, n_resamples=2000, seed=0)
    assert result.per_seed[0]["low"] > 0 and result.per_seed[1]["high"] < 0  # each run alone is "sure"
    assert result.estimate == pytest.approx(0.0) and result.low < 0 < result.high  # the method: no answer


def test_differences_use_the_patients_as_units():
    pair = SeedPair(np.array([1, 1, 0, 0]), np.array([0, 0, 0, 0]), np.array([1, 1, 0, 0]), np.array(["p", "p", "q", "q"]))
    only_p = np.array([[1.0, 0.0]])  # the resample that draws patient p once and q never
    assert differences(pair, "accuracy", 1, only_p, 2)[0] == pytest.approx(1.0)


def test_a_metric_undefined_on_a_whole_seed_has_no_method_interval():
    """NPV of a student that calls every image positive is undefined on that seed: no interval from lucky resamples."""
    truth = np.array([0, 1] * 20)
    mixed = np.where(np.arange(40) % 5 == 0, 1 - truth, truth)
    all_positive = np.ones(40, dtype=np.int64)
    defined = SeedPair(truth, mixed, truth, np.arange(40).astype(str))
    collapsed = SeedPair(truth, mixed, all_positive, np.arange(40).astype(str))
    result = two_level_bootstrap([defined, collapsed], "npv", n_classes=2, positive=1, n_resamples=200, seed=0)
    assert np.isnan(result.estimate) and np.isnan(result.low) and np.isnan(result.high)
    assert np.isnan(result.p_value) and result.resamples == 0
    assert np.isfinite(result.per_seed[0]["estimate"]) and np.isnan(result.per_seed[1]["estimate"])
    assert method_verdict(result, [3, 8]) == "not defined on the test set of seed 8"
