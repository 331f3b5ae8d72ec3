"""noisystudent experiment: arms that share folds and test set, the study's answer, and its words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import PATIENT_REGEX, invoke_cli, write_class_folders

from noisystudent.config.settings import make_config
from noisystudent.errors import ConfigError
from noisystudent.experiment import arms as arms_module
from noisystudent.experiment import estimates, study
from noisystudent.experiment.report import GREEN, GREY, RED, interval_colour


def test_each_arm_changes_only_what_it_is_about():
    base = make_config("/d", preset="smoke", split_ratio="1:5:3", rounds=2)
    ns, control, upper = (arms_module.arm_config(base, arm, seed=7) for arm in arms_module.ARMS)
    assert ns.to_dict() == {**base.to_dict(), "seed": 7}
    assert control.to_dict() == {**base.to_dict(), "seed": 7, "student_data": "labelled"}
    assert upper.to_dict() == {**base.to_dict(), "seed": 7, "rounds": 0, "split_ratio": (6.0, 0.0, 3.0)}


@pytest.mark.parametrize("arms,message", [(["ns", "placebo"], "--arms takes some of ns, control, upper"),
                                          (["control", "upper"], "--arms must include ns")])
def test_unknown_or_incomplete_arms_are_refused(arms, message):
    with pytest.raises(ConfigError, match=message):
        arms_module.checked_arms(arms)


def _predictions(truth: np.ndarray, called: np.ndarray, patients: list[str]) -> pd.DataFrame:
    classes = ["benign", "malignant"]
    probs = np.where(called == 1, 0.8, 0.2)
    return pd.DataFrame({"path": [f"/t/{i}.png" for i in range(len(truth))], "label": np.array(classes)[truth],
                         "patient": patients, "prob_benign": 1 - probs, "prob_malignant": probs,
                         "pred": np.array(classes)[called]})


def _fake_study(root: Path, seeds: list[int], gain: float) -> Path:
    """Arm runs that wrote only their ensembles' predictions: students right on (0.5 + gain) of the images."""
    rng = np.random.default_rng(0)
    for seed in seeds:
        truth = np.array([0, 1] * 20)
        patients = [f"P{seed}-{i // 2}" for i in range(40)]
        teacher = np.where(rng.random(40) < 0.5, truth, 1 - truth)
        student = np.where(rng.random(40) < 0.5 + gain, truth, 1 - truth) if gain else teacher
        for arm, kind, called in (("ns", "teacher", teacher), ("ns", "student", student), ("control", "student", teacher)):
            results = root / f"seed-{seed}" / arm / "results"
            results.mkdir(parents=True, exist_ok=True)
            _predictions(truth, called, patients).to_csv(results / f"predictions_{kind}_majority.csv", index=False)
            (results / "metrics.csv").write_text("model\n")
    design = {"seeds": seeds, "arms": ["ns", "control"], "primary_metric": "balanced_accuracy", "voting": "majority",
              "positive": "malignant", "settings": {}}
    (root / study.DESIGN).write_text(json.dumps(design))
    return root


def test_a_study_answers_on_its_primary_metric_first_with_holm_for_the_rest(tmp_path):
    result = study.write_study(_fake_study(tmp_path, [0, 1, 2], gain=0.45), n_resamples=500)
    table = pd.read_csv(tmp_path / "results" / "study.csv")
    method = table[table["level"] == "method"]
    assert list(method["comparison"].unique()) == ["students - teachers", "students - control"]
    first = method.iloc[0]
    assert (first["metric"], first["role"], first["seeds"]) == ("balanced_accuracy", "primary", 3)
    assert first["low"] > 0 and first["verdict"] == "helped" and bool(first["excludes_zero"])
    secondary = method[method["role"] == "secondary"]
    assert (secondary["p_holm"] >= secondary["p_value"]).all() and secondary["p_holm"].notna().all()
    per_seed = table[(table["level"] == "seed") & (table["role"] == "primary")]
    assert sorted(per_seed["seed"].astype(int).unique()) == [0, 1, 2]
    assert "Over 3 seeds" in result.headline and "students - teachers" in result.headline and "helped" in result.headline
    assert (tmp_path / "report" / "report.html").read_text().count("Design (declared before the runs)") == 1
    assert (tmp_path / "report" / "method.png").stat().st_size > 0


def test_one_seed_cannot_speak_for_the_method(tmp_path):
    result = study.write_study(_fake_study(tmp_path, [4], gain=0.45), n_resamples=300)
    assert result.headline.startswith("One seed cannot speak for the method")
    assert "helped" not in result.headline
    method = result.table[(result.table["level"] == "method") & (result.table["role"] == "primary")]
    assert (method["verdict"] == "one seed cannot speak for the method").all()


def test_no_difference_is_said_when_the_interval_includes_zero(tmp_path):
    result = study.write_study(_fake_study(tmp_path, [0, 1], gain=0.0), n_resamples=300)
    primary = result.table[(result.table["level"] == "method") & (result.table["role"] == "primary")].iloc[0]
    assert primary["low"] <= 0 <= primary["high"] and primary["verdict"] == "no detectable difference"


def test_a_study_with_other_settings_is_refused(tmp_path):
    config = make_config("/d", preset="smoke")
    design = estimates.Design([0, 1], ["ns"], "balanced_accuracy", "majority", None)
    study.declare(tmp_path, config, design)
    study.declare(tmp_path, config, estimates.Design([2], ["ns", "control"], "balanced_accuracy", "majority", None))
    saved = json.loads((tmp_path / study.DESIGN).read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["arms"] == ["ns", "control"]  # more seeds and arms: the same study
    with pytest.raises(ConfigError, match="declared with other settings \\(lr\\)"):
        study.declare(tmp_path, make_config("/d", preset="smoke", lr=0.5), design)


def test_an_experiment_on_auc_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="--primary-metric must be one of"):
        study.run_experiment(make_config("/d", preset="smoke", primary_metric="auc"), tmp_path / "s", [0, 1])
    assert not (tmp_path / "s").exists()


def test_a_missing_data_set_is_refused_before_the_study_writes_anything(tmp_path):
    code, line = invoke_cli("experiment", tmp_path / "no-such-data", "--out", tmp_path / "s", "--seeds", "0,1", "--preset", "smoke")
    assert code == 2 and "no-such-data" in line and not (tmp_path / "s").exists()
    code, line = invoke_cli("experiment", "--out", tmp_path / "s", "--seeds", "0,x")
    assert code == 2 and "--seeds takes whole numbers" in line and not (tmp_path / "s").exists()


def test_the_figure_greys_every_interval_that_includes_zero():
    assert interval_colour(-0.01, 0.2) == GREY and interval_colour(np.nan, np.nan) == GREY
    assert interval_colour(0.01, 0.2) == GREEN and interval_colour(-0.3, -0.02) == RED


@pytest.mark.slow
def test_experiment_command_runs_arms_that_share_folds_and_answers(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=6, images_per_patient=3)
    flags = ["--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--rounds", "1", "--epochs", "1",
             "--image-size", "32", "--batch-size", "8", "--weights", "none", "--arch", "resnet18", "--device", "cpu",
             "--workers", "1", "--test-fraction", "0.34", "--student-data", "both", "--quiet"]
    code, line = invoke_cli("experiment", data, "--out", tmp_path / "study", "--seeds", "3", "--arms", "ns,control", *flags)
    assert code == 0, line
    assert "One seed cannot speak for the method" in line
    ns, control = (pd.read_csv(tmp_path / "study" / "seed-3" / arm / "folds.csv") for arm in ("ns", "control"))
    pd.testing.assert_frame_equal(ns, control)  # the same folds, parts and outer test set
    saved = json.loads((tmp_path / "study" / "seed-3" / "control" / "config.json").read_text())
    assert (saved["student_data"], saved["seed"]) == ("labelled", 3)
    assert not (tmp_path / "study" / "seed-3" / "control" / "fold-0" / "round-0" / "pseudo_labels.csv").exists()
    table = pd.read_csv(tmp_path / "study" / "results" / "study.csv")
    assert set(table["comparison"]) == {"students - teachers", "students - control"}


def test_the_arms_of_a_seed_share_the_test_set_and_the_validation_parts():
    """Folds depend on the seed, K and --test-fraction only: the upper bound trains on what ns had labelled or masked."""
    from noisystudent.data.folds import assign_folds
    from noisystudent.data.manifest import make_manifest

    rows = [{"path": f"/d/{label}{p}_{c}.png", "label": label, "patient": f"{label}{p}", "subset": "train"}
            for label in ("a", "b") for p in range(12) for c in range(3)]
    base = make_config("/d", preset="smoke", folds=3, split_ratio="1:5:3", test_fraction=0.2)
    ns, control, upper = (arms_module.arm_config(base, arm, seed=4) for arm in arms_module.ARMS)
    tables = {name: assign_folds(make_manifest(rows), c.folds, c.split_ratio, c.test_fraction, seed=c.seed)
              for name, c in (("ns", ns), ("control", control), ("upper", upper))}
    pd.testing.assert_frame_equal(tables["ns"], tables["control"])
    for role in ("test", "validation"):
        assert set(map(tuple, tables["ns"][tables["ns"]["role"] == role][["fold", "path"]].values)) == \
            set(map(tuple, tables["upper"][tables["upper"]["role"] == role][["fold", "path"]].values))
    trained = tables["ns"]["role"].isin(["labelled", "masked"])
    assert set(map(tuple, tables["ns"][trained][["fold", "path"]].values)) == \
        set(map(tuple, tables["upper"][tables["upper"]["role"] == "labelled"][["fold", "path"]].values))
