"""The paired bootstrap and McNemar's test against hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import f1_score, roc_auc_score

from noisystudent.evaluation.metrics import binary_metrics
from noisystudent.evaluation.statistics import (
    BOOTSTRAP_METRICS,
    Scored,
    bootstrap_p_value,
    holm,
    mcnemar_exact,
    metric_matrix,
    paired_bootstrap,
    resample_weights,
    weighted_auc,
)


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    score = np.clip(truth * 0.3 + rng.random(n) * 0.7, 0, 1).round(2)  # rounded: ties in the scores
    return truth, score


def test_resampled_metrics_equal_sklearn_on_the_repeated_images():
    truth, score = _data()
    groups = np.repeat([f"P{i}" for i in range(12)], 5)
    model = Scored(score > 0.5, score)
    unit_of_image, weights = resample_weights(groups, 7, seed=3)
    table = metric_matrix(truth, model, unit_of_image, weights)
    for r in range(7):
        repeat = weights[r][unit_of_image].astype(int)  # how often each image enters resample r
        t, s, c = np.repeat(truth, repeat), np.repeat(score, repeat), np.repeat(score > 0.5, repeat)
        assert table["accuracy"][r] == pytest.approx((t == c).mean())
        assert table["sensitivity"][r] == pytest.approx(c[t].mean())
        assert table["f1"][r] == pytest.approx(f1_score(t, c))
        assert table["auc"][r] == pytest.approx(roc_auc_score(t, s))
        reference = binary_metrics(t, c, s, positive=True)  # every metric as metrics.csv computes it
        for metric in BOOTSTRAP_METRICS:
            assert table[metric][r] == pytest.approx(reference[metric], nan_ok=True), metric


def test_resampled_metrics_are_nan_where_metrics_csv_says_nan():
    truth = np.array([True, True, False, False])
    called = np.array([True, True, True, True])  # no negative calls: NPV and MCC undefined
    table = metric_matrix(truth, Scored(called, None), np.arange(4), np.ones((1, 4)))
    reference = binary_metrics(truth, called, None, positive=True)
    for metric in BOOTSTRAP_METRICS:
        assert table[metric][0] == pytest.approx(reference[metric], nan_ok=True), metric
    assert np.isnan(table["npv"][0]) and np.isnan(table["mcc"][0]) and table["kappa"][0] == 0


def test_auc_without_both_classes_is_nan():
    truth = np.array([True, True, True])
    assert np.isnan(weighted_auc(truth, np.array([0.1, 0.5, 0.9]), np.arange(3), np.ones((1, 3))))[0]


def test_identical_models_differ_by_exactly_zero():
    truth, score = _data()
    model = Scored(score > 0.5, score)
    table = paired_bootstrap(truth, [model], [model], np.arange(len(truth)), n_resamples=2000, seed=1).set_index("metric")
    assert (table["difference"] == 0).all() and (table["low"] == 0).all() and (table["high"] == 0).all()
    assert (table["resamples"] == 2000).all()


def test_accuracy_interval_matches_the_binomial_answer():
    # A is always right, B right on 70 % of 400 independent images: B - A = -0.3,
    # and the bootstrap interval is the binomial one, -0.3 +- 1.96 sqrt(0.21 / 400) = +-0.045.
    n = 400
    truth = np.arange(n) % 2 == 0
    b_right = np.arange(n) % 10 < 7
    table = paired_bootstrap(truth, [Scored(truth, None)], [Scored(np.where(b_right, truth, ~truth), None)],
                             np.arange(n), n_resamples=4000, seed=0).set_index("metric")
    row = table.loc["accuracy"]
    assert row["difference"] == pytest.approx(-0.3)
    half_width = 1.96 * np.sqrt(0.7 * 0.3 / n)
    assert row["low"] == pytest.approx(-0.3 - half_width, abs=0.006)
    assert row["high"] == pytest.approx(-0.3 + half_width, abs=0.006)
    assert table.loc["auc", "resamples"] == 0 and np.isnan(table.loc["auc", "low"])  # no scores: no AUC


def test_patients_are_the_unit_so_correlated_images_widen_the_interval():
    # 20 patients of 20 images each; B is wrong on all images of 6 patients. Resampling
    # images pretends 400 independent cases; resampling patients knows there are 20.
    truth = np.tile(np.arange(20) % 2 == 0, 20)
    patients = np.repeat(np.arange(20), 20)
    b = np.where(patients < 6, ~truth, truth)
    per_image = paired_bootstrap(truth, [Scored(truth, None)], [Scored(b, None)], np.arange(400), seed=0).set_index("metric")
    per_patient = paired_bootstrap(truth, [Scored(truth, None)], [Scored(b, None)], patients, seed=0).set_index("metric")
    width = lambda t: t.loc["accuracy", "high"] - t.loc["accuracy", "low"]  # noqa: E731
    assert width(per_patient) > 3 * width(per_image)


def test_fold_mean_side_averages_its_models():
    truth, score = _data()
    right, wrong = Scored(truth, score), Scored(~truth, 1 - score)
    table = paired_bootstrap(truth, [right, wrong], [right], np.arange(len(truth)), seed=0).set_index("metric")
    assert table.loc["accuracy", "a"] == pytest.approx(0.5)
    assert table.loc["accuracy", "difference"] == pytest.approx(0.5)


def test_the_bootstrap_is_seeded():
    truth, score = _data()
    a, b = Scored(score > 0.4, score), Scored(score > 0.6, score ** 2)
    first = paired_bootstrap(truth, [a], [b], np.arange(len(truth)), seed=5)
    assert first.equals(paired_bootstrap(truth, [a], [b], np.arange(len(truth)), seed=5))
    assert not first.equals(paired_bootstrap(truth, [a], [b], np.arange(len(truth)), seed=6))


def test_mcnemar_counts_discordant_images_and_matches_the_exact_binomial():
    truth = np.array([1] * 10 + [0] * 5)
    a = truth.copy()
    a[:9] = 0  # A wrong on 9 images that B gets right
    b = truth.copy()
    b[14] = 1  # B wrong on 1 image that A gets right
    result = mcnemar_exact(truth, a, b)
    assert (result.a_only, result.b_only) == (1, 9)
    assert result.p_value == pytest.approx(2 * (1 + 10) / 2**10)  # 0.0215, by hand
    assert result.p_value == pytest.approx(binomtest(1, 10, 0.5).pvalue)
    assert mcnemar_exact(truth, truth, truth).p_value == 1.0


def test_expected_calibration_error_by_hand():
    from noisystudent.evaluation.calibration import expected_calibration_error

    # bin (0.6, 0.667]: 0.65, 0.65 with 1 of 2 right -> |0.5 - 0.65| = 0.15 on half the images;
    # bin (0.933, 1]: 0.95, 0.95 both right -> |1 - 0.95| = 0.05 on the other half.
    assert expected_calibration_error([0.65, 0.65, 0.95, 0.95], [1, 0, 1, 1]) == pytest.approx(0.5 * 0.15 + 0.5 * 0.05)
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0
    assert np.isnan(expected_calibration_error([], []))


def test_a_single_sides_interval_is_the_binomial_one_and_holds_the_observed_value():
    # Right on 70 % of 400 independent images: 0.7 +- 1.96 sqrt(0.21 / 400).
    from noisystudent.evaluation.statistics import bootstrap_interval

    n = 400
    truth = np.arange(n) % 2 == 0
    right = np.arange(n) % 10 < 7
    row = bootstrap_interval(truth, [Scored(np.where(right, truth, ~truth), None)], np.arange(n), 4000, seed=0).set_index("metric").loc["accuracy"]
    half_width = 1.96 * np.sqrt(0.7 * 0.3 / n)
    assert row["value"] == pytest.approx(0.7)
    assert row["low"] == pytest.approx(0.7 - half_width, abs=0.006) and row["high"] == pytest.approx(0.7 + half_width, abs=0.006)


def test_score_interval_of_a_multiclass_side_gives_accuracy_only():
    import pandas as pd

    from noisystudent.evaluation.comparison import score_interval

    labels = ["a", "b", "c"] * 20
    calls = ["a", "b", "c", "a"] * 15  # right on some images, wrong on others
    table = pd.DataFrame({"path": [f"i{k:02d}" for k in range(60)], "label": labels, "pred": calls, "patient": ""})
    result = score_interval([table], ["a", "b", "c"], None).set_index("metric")
    assert result.loc["accuracy", "value"] == pytest.approx(np.mean(np.array(labels) == np.array(calls)))
    assert result.loc["accuracy", "low"] < result.loc["accuracy", "value"] < result.loc["accuracy", "high"]
    assert result.drop(index="accuracy")["value"].isna().all()


def test_holm_by_hand():
    # sorted: 0.01 x 4 = 0.04, 0.03 x 3 = 0.09, 0.04 x 2 = 0.08 -> 0.09 (monotone), 0.5 x 1 = 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.3, 0.4]).tolist() == pytest.approx([0.6, 0.6])
    assert holm([0.6, 0.9, 0.9]).tolist() == pytest.approx([1.0, 1.0, 1.0])  # capped at 1


def test_holm_leaves_undefined_p_values_out_of_the_family():
    adjusted = holm([0.01, np.nan, 0.02])
    assert np.isnan(adjusted[1]) and adjusted[[0, 2]].tolist() == pytest.approx([0.02, 0.02])


def test_holm_equals_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest", reason="statsmodels (the test extra) is the reference").multipletests
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 33):
        p = rng.random(size) ** 3  # many small values
        p[rng.random(size) < 0.2] = p[0]  # ties
        assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_bootstrap_p_value_is_two_sided_and_agrees_with_the_interval():
    assert bootstrap_p_value(np.array([0.1, 0.2, 0.3, -0.1])) == pytest.approx(0.5)
    assert bootstrap_p_value(np.array([0.1, 0.2, np.nan])) == 0.0
    assert bootstrap_p_value(np.zeros(5)) == 1.0 and np.isnan(bootstrap_p_value(np.array([np.nan])))
    truth, score = _data(200, seed=4)
    table = paired_bootstrap(truth, [Scored(score > 0.9, score)], [Scored(score > 0.5, score)], np.arange(200), seed=2).set_index("metric")
    for metric, row in table.iterrows():
        if np.isfinite(row["p_value"]):
            assert (row["p_value"] < 0.05) == (row["low"] > 0 or row["high"] < 0), metric
