import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, classification_report, cohen_kappa_score, f1_score, matthews_corrcoef, roc_auc_score

from noisystudent.data.labels import apply_binary_mapping, parse_binary_mapping
from noisystudent.errors import ConfigError, DataError
from noisystudent.evaluation.metrics import (
    CLASS_COLUMN,
    METRIC_COLUMNS,
    binary_metrics,
    metrics_from_predictions,
    multiclass_metrics,
    summarise_folds,
)
from noisystudent.layout import EVAL_SPLIT, FOLD_COLUMN, MODEL_KIND, PRED, prob_column

# 10 images: TP=4, FN=1, TN=3, FP=2 with "all" positive.
Y_TRUE = ["all"] * 5 + ["hem"] * 5
Y_PRED = ["all", "all", "all", "all", "hem", "hem", "hem", "hem", "all", "all"]
P_ALL = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.65, 0.55]


def test_binary_metrics_from_hand_counted_confusion_matrix():
    m = binary_metrics(Y_TRUE, Y_PRED, P_ALL, positive="all")
    assert (m["tp"], m["fn"], m["tn"], m["fp"], m["n"]) == (4, 1, 3, 2, 10)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["ppv"] == pytest.approx(4 / 6)
    assert m["npv"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 1))
    assert m["balanced_accuracy"] == pytest.approx(0.7)
    # AUC by hand: positive scores {.9,.8,.7,.6,.4}, negatives {.3,.2,.1,.65,.55}:
    # pairs won = 5+5+5 (vs .3,.2,.1) + 2+2+2+1+0 (vs .65,.55) = 22 of 25.
    assert m["auc"] == pytest.approx(22 / 25)
    assert set(METRIC_COLUMNS) <= set(m)


def test_binary_metrics_match_scikit_learn():
    t = np.array(Y_TRUE) == "all"
    p = np.array(Y_PRED) == "all"
    m = binary_metrics(Y_TRUE, Y_PRED, P_ALL)  # positive defaults to "all"
    assert m["f1_weighted"] == pytest.approx(f1_score(t, p, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p))
    assert m["auc"] == pytest.approx(roc_auc_score(t, P_ALL))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(t, p))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(t, p))
    # kappa by hand: po = .7, pe = .5*.6 + .5*.4 = .5
    assert m["kappa"] == pytest.approx(0.4)


def test_swapping_the_positive_class_swaps_the_ratios():
    m = binary_metrics(Y_TRUE, Y_PRED, 1 - np.array(P_ALL), positive="hem")
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3, 2, 4, 1)
    assert m["sensitivity"] == pytest.approx(3 / 5)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["ppv"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(6 / 9)
    assert m["auc"] == pytest.approx(22 / 25)
    assert m["accuracy"] == pytest.approx(0.7)


def test_integer_labels_and_string_positive_are_the_same_class():
    m = binary_metrics([1, 1, 0, 0], [1, 0, 0, 0], None, positive="1")
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (1, 1, 2, 0)
    assert math.isnan(m["auc"])


def test_one_class_only_in_y_true():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning spam
        m = binary_metrics(["all"] * 4, ["all", "all", "all", "hem"], [0.9, 0.8, 0.7, 0.2])
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3, 1, 0, 0)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert math.isnan(m["specificity"])  # TN + FP = 0
    assert m["ppv"] == pytest.approx(1.0)
    assert m["npv"] == pytest.approx(0.0)  # TN / (TN + FN) = 0 / 1
    assert m["f1"] == pytest.approx(6 / 7)
    assert math.isnan(m["auc"])
    assert math.isnan(m["mcc"])
    assert m["kappa"] == pytest.approx(0.0)  # po = .75 = pe
    assert m["accuracy"] == pytest.approx(0.75)


def test_all_predictions_wrong():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(["all", "all", "hem", "hem"], ["hem", "hem", "all", "all"], [0.1, 0.2, 0.8, 0.9])
    assert m["accuracy"] == 0.0
    assert m["sensitivity"] == 0.0 and m["specificity"] == 0.0
    assert m["ppv"] == 0.0 and m["npv"] == 0.0
    assert m["f1"] == 0.0
    assert m["auc"] == 0.0
    assert m["mcc"] == pytest.approx(-1.0)
    assert m["kappa"] == pytest.approx(-1.0)


def test_all_predictions_one_class():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(["all", "all", "all", "hem"], ["hem"] * 4, None)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (0, 3, 1, 0)
    assert math.isnan(m["ppv"])  # TP + FP = 0
    assert m["npv"] == pytest.approx(0.25)
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0
    assert m["f1"] == 0.0  # 2TP / (2TP + FP + FN) = 0 / 3 is defined
    assert math.isnan(m["mcc"])
    assert m["balanced_accuracy"] == pytest.approx(0.5)


def test_everything_negative_and_predicted_negative():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics(["hem"] * 3, ["hem"] * 3, [0.1, 0.2, 0.3])
    assert m["accuracy"] == 1.0 and m["specificity"] == 1.0 and m["npv"] == 1.0
    for key in ("sensitivity", "ppv", "f1", "auc", "kappa", "mcc"):
        assert math.isnan(m[key]), key


def test_empty_input_gives_nan_and_zero_counts():
    m = binary_metrics([], [], None)
    assert m["n"] == 0 and m["tp"] == 0
    assert all(math.isnan(m[k]) for k in METRIC_COLUMNS)


MC_TRUE = ["a", "a", "a", "b", "b", "c", "c", "c", "c", "b"]
MC_PRED = ["a", "b", "a", "b", "c", "c", "c", "a", "c", "b"]


def mc_probs():
    rng = np.random.default_rng(0)
    probs = rng.random((len(MC_TRUE), 3))
    return probs / probs.sum(axis=1, keepdims=True)


def test_multiclass_per_class_and_macro_match_classification_report():
    probs = mc_probs()
    per_class, macro = multiclass_metrics(MC_TRUE, MC_PRED, probs, ["a", "b", "c"])
    report = classification_report(MC_TRUE, MC_PRED, output_dict=True)
    assert list(per_class[CLASS_COLUMN]) == ["a", "b", "c"]
    for _, row in per_class.iterrows():
        name = row[CLASS_COLUMN]
        assert row["ppv"] == pytest.approx(report[name]["precision"])
        assert row["sensitivity"] == pytest.approx(report[name]["recall"])
        assert row["f1"] == pytest.approx(report[name]["f1-score"])
        assert row["tp"] + row["fn"] == report[name]["support"]
    assert macro["f1"] == pytest.approx(report["macro avg"]["f1-score"])
    assert macro["ppv"] == pytest.approx(report["macro avg"]["precision"])
    assert macro["sensitivity"] == pytest.approx(report["macro avg"]["recall"])
    assert macro["f1_weighted"] == pytest.approx(report["weighted avg"]["f1-score"])
    assert macro["accuracy"] == pytest.approx(report["accuracy"])
    assert macro["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(MC_TRUE, MC_PRED))
    assert macro["kappa"] == pytest.approx(cohen_kappa_score(MC_TRUE, MC_PRED))
    assert macro["mcc"] == pytest.approx(matthews_corrcoef(MC_TRUE, MC_PRED))
    assert macro["auc"] == pytest.approx(roc_auc_score(MC_TRUE, probs, multi_class="ovr", average="macro"))
    assert macro["n"] == 10
    # one-vs-rest specificity of 'a' by hand: negatives 7, predicted 'a' among them 1 ('c' -> 'a').
    assert per_class.loc[0, "specificity"] == pytest.approx(6 / 7)


def test_binary_mapping_for_four_classes():
    classes = ["Benign", "Early", "Pre", "Pro"]
    mapping = parse_binary_mapping("benign=negative, rest=positive", classes)
    assert mapping == {"Benign": "negative", "Early": "positive", "Pre": "positive", "Pro": "positive"}
    mapped = apply_binary_mapping(["Pro", "Benign", "Early", "", "Pre"], mapping)
    assert list(mapped) == ["positive", "negative", "positive", "", "positive"]
    explicit = parse_binary_mapping("Benign=negative,Early=negative,Pre=positive,Pro=positive", classes)
    assert explicit["Early"] == "negative"
    m = binary_metrics(apply_binary_mapping(["Benign", "Pro", "Pre"], mapping), ["negative", "positive", "negative"], None, "positive")
    assert (m["tp"], m["fn"], m["tn"]) == (1, 1, 1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("Bengin=negative,rest=positive", "Unknown class 'Bengin'"),
        ("Benign=negative", "does not map the class 'Early'"),
        ("Benign=neg,rest=positive", "must map to 'positive' or 'negative'"),
        ("Benign,rest=positive", "is not of the form"),
        ("rest=positive", "at least one class to each"),
    ],
)
def test_binary_mapping_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_binary_mapping(text, ["Benign", "Early", "Pre", "Pro"])


def test_apply_binary_mapping_unknown_label():
    with pytest.raises(DataError, match="'Late'"):
        apply_binary_mapping(["Late"], {"Benign": "negative", "Pro": "positive"})


def test_metrics_from_predictions_reads_the_predictions_layout(tmp_path):
    frame = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(12)]})
    frame["label"] = Y_TRUE + ["", ""]  # two pool images without a label
    frame[prob_column("all")] = P_ALL + [0.5, 0.5]
    frame[prob_column("hem")] = 1 - frame[prob_column("all")]
    frame[PRED] = Y_PRED + ["all", "hem"]
    path = tmp_path / "predictions.csv"
    frame.to_csv(path, index=False)
    reloaded = pd.read_csv(path, keep_default_na=False)
    m = metrics_from_predictions(reloaded, ["all", "hem"], "all")
    assert m == pytest.approx(binary_metrics(Y_TRUE, Y_PRED, P_ALL, "all"))
    assert m["n"] == 10
    macro = metrics_from_predictions(reloaded, ["all", "hem"], None)
    assert macro["accuracy"] == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="positive class 'blast'"):
        metrics_from_predictions(reloaded, ["all", "hem"], "blast")
    with pytest.raises(DataError, match="'pred'"):
        metrics_from_predictions(reloaded.drop(columns=[PRED]), ["all", "hem"], "all")


def test_summarise_folds_mean_and_sample_variance_equal_numpy():
    acc = {"teacher": [0.8, 0.9, 0.85], "student": [0.9, 0.95, 0.7]}
    rows = pd.DataFrame(
        [
            {MODEL_KIND: kind, FOLD_COLUMN: k, EVAL_SPLIT: "test", "accuracy": a, "auc": 1 - a / 2}
            for kind, values in acc.items()
            for k, a in enumerate(values)
        ]
        + [{MODEL_KIND: "student", FOLD_COLUMN: "ensemble", EVAL_SPLIT: "test", "accuracy": 0.99, "auc": 0.5}]
    )
    table = summarise_folds(rows)
    assert len(table) == 7 + 4
    assert list(table.columns) == list(rows.columns)
    for kind, values in acc.items():
        mine = table[table[MODEL_KIND] == kind].set_index(FOLD_COLUMN)
        assert mine.loc["mean", "accuracy"] == pytest.approx(np.mean(values))
        assert mine.loc["variance", "accuracy"] == pytest.approx(np.var(values, ddof=1))
        assert mine.loc["variance", "auc"] == pytest.approx(np.var(1 - np.array(values) / 2, ddof=1))
    assert (table[FOLD_COLUMN] == "ensemble").sum() == 1
    again = summarise_folds(table)  # idempotent: old summaries replaced
    pd.testing.assert_frame_equal(again, table)


def test_macro_auc_is_nan_when_a_class_is_absent_from_the_test_set():
    """It used to average the AUCs of the classes present, silently, as if it were the macro AUC of all three."""
    truth, guess = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    probs = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    per_class, macro = multiclass_metrics(truth, guess, probs, ["a", "b", "c"])
    assert per_class["auc"].tolist()[:2] == [1.0, 1.0] and np.isnan(per_class["auc"].iloc[2])
    assert np.isnan(macro["auc"])
    _, present = multiclass_metrics(truth, guess, probs[:, :2] / probs[:, :2].sum(1, keepdims=True), ["a", "b"])
    assert present["auc"] == 1.0
