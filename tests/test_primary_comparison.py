"""One declared primary comparison, each row's own verdict, Holm for the rest, and honest selection marks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from noisystudent.config.presets import PRESETS
from noisystudent.config.run_config import CHOICES, RunConfig, differing_result_keys
from noisystudent.config.settings import make_config, resume_config
from noisystudent.evaluation.comparison import BETTER, NO_DIFFERENCE, Comparison
from noisystudent.evaluation.metrics import METRIC_COLUMNS, summarise_folds
from noisystudent.evaluation.statistics import BOOTSTRAP_METRICS, holm
from noisystudent.report.plots import BETTER as GREEN
from noisystudent.report.plots import UNDECIDED, WORSE, difference_colour
from noisystudent.report import tables as report_tables
from noisystudent.run.evidence import comparisons_frame, mark_rows


# --- the primary metric and model selection --------------------------------------------------------


def test_every_primary_metric_is_a_metrics_csv_column_and_is_bootstrapped():
    choices = CHOICES["primary_metric"]
    assert set(choices) <= set(METRIC_COLUMNS) and set(choices) <= set(BOOTSTRAP_METRICS)
    assert set(choices) <= set(CHOICES["select_metric"])  # the default selection metric is always a valid one
    assert "no_information_rate" not in choices  # a property of the data, not a score of a model


def test_selection_uses_the_primary_metric_unless_the_user_sets_one():
    assert RunConfig().primary_metric == "balanced_accuracy" and RunConfig().selection_metric == "balanced_accuracy"
    assert RunConfig(primary_metric="mcc").selection_metric == "mcc"
    assert RunConfig(primary_metric="mcc", select_metric="loss").selection_metric == "loss"
    for name in PRESETS:
        config = make_config(preset=name)
        assert config.select_metric is None and config.selection_metric == config.primary_metric, name
        assert config.to_dict()["select_metric"] is None  # config.json keeps the value as given


def test_an_old_run_with_accuracy_selection_and_no_primary_metric_resumes_unchanged(tmp_path):
    old = make_config(tmp_path, preset="smoke").to_dict()
    del old["primary_metric"]
    old["select_metric"] = "accuracy"
    saved = json.loads(json.dumps(old))
    config = resume_config(saved)
    assert config.selection_metric == "accuracy"  # training picks epochs as it did
    assert differing_result_keys(saved, config) == []  # a missing setting counts as its default
    assert differing_result_keys(saved, resume_config(saved, primary_metric="mcc")) == ["primary_metric"]


# --- selection_biased and folds_averaged ---------------------------------------------------------


def _metrics_table() -> pd.DataFrame:
    """Two teacher folds on validation and test; PPV defined in fold 0 only (fold 1 made no positive call)."""
    rows = []
    for fold, ppv in ((0, 0.8), (1, np.nan)):
        for split in ("validation", "test"):
            rows.append({"model": "teacher", "fold": fold, "round": 0, "split": split, "voting": "", "class": "all",
                         **dict.fromkeys(METRIC_COLUMNS, 0.7), "ppv": ppv})
    return summarise_folds(pd.DataFrame(rows))


@pytest.mark.parametrize(("settings", "biased"), [
    (dict(select="best"), True),
    (dict(select="last", early_stopping=3), True),
    (dict(select="last", scheduler="plateau"), True),
    (dict(select="last"), False),
])
def test_validation_rows_are_selection_biased_whenever_validation_chose_the_epoch(settings, biased):
    table = mark_rows(_metrics_table(), RunConfig(**settings))
    validation = table["split"] == "validation"
    assert table.loc[validation, "selection_biased"].tolist() == [biased] * validation.sum()
    assert not table.loc[~validation, "selection_biased"].any()  # the test set chose nothing


def test_folds_averaged_counts_the_folds_that_define_the_metric():
    table = mark_rows(_metrics_table(), RunConfig())
    mean = table[(table["fold"] == "mean") & (table["split"] == "test")].iloc[0]
    assert mean["ppv"] == pytest.approx(0.8)
    assert mean["folds_ppv"] == 1 and mean["folds_accuracy"] == 2
    assert mean["folds_averaged"] == 2  # the primary metric, balanced accuracy, is defined in both folds
    primary_ppv = mark_rows(_metrics_table(), RunConfig(primary_metric="ppv"))
    assert primary_ppv.loc[(primary_ppv["fold"] == "mean") & (primary_ppv["split"] == "test"), "folds_averaged"].tolist() == [1]
    assert table.loc[table["fold"].isin([0, 1]), "folds_ppv"].isna().all()  # fold rows summarise nothing


# --- comparison.csv: primary first, own verdicts, Holm ----------------------------------------------


def _comparison(intervals: dict[str, tuple[float, float]], p_values: dict[str, float], primary: str = "balanced_accuracy") -> Comparison:
    rows = [{"metric": m, "a": 0.8, "b": 0.8 + (low + high) / 2, "difference": (low + high) / 2, "low": low, "high": high,
             "resamples": 2000, "p_value": p_values[m]} for m, (low, high) in intervals.items()]
    return Comparison("teacher ensemble (majority)", "student ensemble (majority, round 1)", pd.DataFrame(rows), "patient", 24, 480,
                      2000, 0, 0.95, primary_metric=primary)


DEMO_INTERVALS = {"accuracy": (-0.010, 0.080), "sensitivity": (0.042, 0.167), "balanced_accuracy": (0.010, 0.110), "auc": (np.nan, np.nan)}
DEMO_P = {"accuracy": 0.2, "sensitivity": 0.004, "balanced_accuracy": 0.02, "auc": np.nan}


def test_the_primary_row_is_first_and_every_row_has_its_own_verdict():
    pairs = {"majority": _comparison(DEMO_INTERVALS, DEMO_P), "soft": _comparison(DEMO_INTERVALS, DEMO_P)}
    table = comparisons_frame(pairs, "soft", "balanced_accuracy")
    first = table.iloc[0]
    assert (first["endpoint"], first["pair"], first["metric"], first["verdict"]) == ("primary", "soft", "balanced_accuracy", BETTER)
    assert (table["endpoint"] == "primary").sum() == 1
    rows = table.set_index(["pair", "metric"])
    # the accuracy interval includes 0, the sensitivity interval does not: no verdict is copied across rows
    assert rows.loc[("majority", "accuracy"), "verdict"] == NO_DIFFERENCE
    assert rows.loc[("majority", "sensitivity"), "verdict"] == BETTER
    assert rows.loc[("majority", "auc"), "verdict"] == "not comparable"


def test_secondary_rows_carry_holm_adjusted_p_values_beside_the_raw_ones():
    table = comparisons_frame({"majority": _comparison(DEMO_INTERVALS, DEMO_P), "soft": _comparison(DEMO_INTERVALS, DEMO_P)},
                              "majority", "balanced_accuracy")
    secondary = table[table["endpoint"] == "secondary"]
    assert len(secondary) == 7
    assert secondary["p_holm"].to_numpy() == pytest.approx(holm(secondary["p_value"]), nan_ok=True)
    # 5 defined secondary p-values (0.2, 0.004, 0.2, 0.004, 0.02): the sensitivities' 0.004 times 5 and 4, then the running maximum
    assert secondary.loc[secondary["metric"] == "sensitivity", "p_holm"].tolist() == pytest.approx([0.02, 0.02])
    assert secondary.loc[secondary["metric"] == "accuracy", "p_holm"].tolist() == pytest.approx([0.4, 0.4])
    assert table.iloc[0]["p_holm"] == table.iloc[0]["p_value"] == 0.02  # the primary is a family of one


def test_without_the_primary_pair_every_row_is_secondary():
    table = comparisons_frame({"majority": _comparison(DEMO_INTERVALS, DEMO_P)}, "soft", "balanced_accuracy")
    assert (table["endpoint"] == "secondary").all()


def test_the_headline_speaks_of_these_models_on_the_primary_metric():
    table = comparisons_frame({"majority": _comparison(DEMO_INTERVALS, DEMO_P)}, "majority", "balanced_accuracy")
    sentence = report_tables.tested_sentence(table, "majority")
    assert sentence.startswith("These students (student ensemble (majority, round 1)) vs these teachers")
    assert "on this test set (480 images, 24 patients): balanced accuracy 0.860 vs 0.800, +0.060 [+0.010, +0.110]" in sentence
    assert "), helped." in sentence
    assert "noisystudent experiment DATA --out STUDY --seeds 0,1,2" in sentence


def test_an_undefined_primary_metric_gives_no_verdict_and_no_nan():
    undefined = {**DEMO_INTERVALS, "balanced_accuracy": (np.nan, np.nan)}
    table = comparisons_frame({"majority": _comparison(undefined, DEMO_P)}, "majority", "balanced_accuracy")
    table.loc[0, ["a", "b", "difference"]] = np.nan  # e.g. four classes: only accuracy is compared
    sentence = report_tables.tested_sentence(table, "majority")
    assert "balanced accuracy is undefined here" in sentence and "no verdict" in sentence and "nan" not in sentence


def test_an_old_comparison_csv_still_reads_its_accuracy_verdict():
    old = comparisons_frame({"majority": _comparison(DEMO_INTERVALS, DEMO_P)}, "majority", "accuracy")
    old = old.drop(columns=["endpoint", "pair", "p_value", "p_holm"]).assign(verdict="better")  # as written before 0.2
    assert "accuracy 0.835 vs 0.800" in report_tables.tested_sentence(old, "majority") and "), helped." in report_tables.tested_sentence(old, "majority")


# --- helped.png: colour only where the interval excludes 0 -------------------------------------------


def test_a_difference_is_coloured_only_where_its_interval_excludes_zero():
    assert difference_colour(0.042, 0.167) == GREEN
    assert difference_colour(-0.2, -0.01) == WORSE
    assert difference_colour(-0.01, 0.08) == UNDECIDED  # a positive estimate whose interval crosses 0
    assert difference_colour(0.0, 0.1) == UNDECIDED  # touching 0 does not exclude it
    assert difference_colour(np.nan, np.nan) == UNDECIDED


def test_one_test_image_without_a_patient_id_is_one_unit_with_one_warning(caplog):
    """It used to switch the whole bootstrap from patients to images, silently."""
    from noisystudent.evaluation import comparison
    from noisystudent.evaluation.comparison import compare_predictions

    images = pd.DataFrame({"path": [f"c{i}.bmp" for i in range(9)], "label": ["all"] * 4 + ["hem"] * 5,
                           "patient": ["P1", "P1", "P2", "P2", "H1", "H1", "H2", "H2", ""]})
    teacher = images.assign(pred=["all", "hem", "all", "hem", "hem", "all", "hem", "hem", "hem"])
    student = images.assign(pred=["all", "all", "all", "hem", "hem", "hem", "hem", "hem", "hem"])
    comparison._WARNED.clear()
    with caplog.at_level("WARNING", logger="noisystudent.evaluation.comparison"):
        first = compare_predictions([teacher], [student], ["all", "hem"], "all")
        compare_predictions([teacher], [student], ["all", "hem"], "all")
    assert (first.unit, first.n_units) == ("patient", 5)  # 4 patients + the image without an id
    warnings = [r.getMessage() for r in caplog.records if "no patient id" in r.getMessage()]
    assert warnings == ["1 of 9 test images have no patient id: the bootstrap resamples each of them as a patient "
                        "of its own, so if they share patients the interval is too narrow."]
