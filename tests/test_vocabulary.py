"""One word per concept (docs/architecture.md, Vocabulary): the new names, and the old spellings still read.

Runs made before the rename name the masked part 'unlabelled' in folds.csv and
predictions.csv and keep the pool's path under the setting 'unlabelled'; such
runs must still load, resume and report. Renamed flags keep their old spelling,
hidden, with a deprecation warning.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from helpers import invoke_cli
from test_compare import _run

from noisystudent import layout
from noisystudent.config.run_config import load_config_json
from noisystudent.config.settings import make_config, resume_config
from noisystudent.data import manifest
from noisystudent.data.folds import load_folds
from noisystudent.errors import ConfigError
from noisystudent.run.evidence import compare_runs
from noisystudent.run.folder import edited_keys, settings_digest
from noisystudent.run.results import read_predictions


def test_the_masked_part_has_one_name_in_folds_predictions_and_metrics():
    assert manifest.ROLE_MASKED == layout.SPLIT_MASKED == "masked"  # folds.csv role, predictions.csv and metrics.csv split
    assert manifest.SUBSET_POOL == manifest.ROLE_POOL == layout.SPLIT_POOL == "pool"


def test_an_old_folds_csv_reads_its_masked_part_as_masked(tmp_path):
    path = tmp_path / "folds.csv"
    pd.DataFrame({"path": ["/a.png", "/b.png", "/c.png"], "label": ["x", "y", "x"], "patient": ["P1", "P2", "P3"],
                  "subset": ["train"] * 3, "fold": [0, 0, 0], "role": ["labelled", "unlabelled", "validation"]}).to_csv(path, index=False)
    assert load_folds(path)["role"].tolist() == ["labelled", "masked", "validation"]


def test_an_old_predictions_csv_reads_its_masked_part_as_masked(tmp_path):
    path = tmp_path / "predictions.csv"
    pd.DataFrame({"path": ["/a.png", "/b.png"], "split": ["unlabelled", "test"], "prob_x": [0.2, 0.9]}).to_csv(path, index=False)
    assert read_predictions(path)["split"].tolist() == ["masked", "test"]


def test_an_old_config_json_resumes_with_the_pool_under_its_new_name(tmp_path):
    config = make_config(tmp_path, preset="smoke", pool_images=str(tmp_path / "pool"))
    old = {("unlabelled" if k == "pool_images" else k): v for k, v in config.to_dict().items()}
    digest = {("unlabelled" if k == "pool_images" else k): v for k, v in settings_digest(config.to_dict()).items()}
    (tmp_path / "config.json").write_text(json.dumps({**old, "settings_digest": digest, "version": "0.1.0"}))
    saved = load_config_json(tmp_path / "config.json")
    assert saved["pool_images"] == str(tmp_path / "pool") and "unlabelled" not in saved
    assert edited_keys(saved) == []  # the digest follows the rename: nothing looks hand-edited
    assert resume_config(saved, source=tmp_path / "config.json").pool_images == str(tmp_path / "pool")


def test_the_old_setting_name_still_works_from_python_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="noisystudent"):
        config = make_config(tmp_path, preset="smoke", unlabelled=str(tmp_path / "pool"))
    assert config.pool_images == str(tmp_path / "pool")
    assert "--unlabelled (setting unlabelled) is deprecated: it is now --pool-images" in caplog.text


def test_the_old_flag_is_hidden_but_still_parsed():
    code, help_text = invoke_cli("kfold", "--help")
    assert code == 0 and "--pool-images" in help_text and "--unlabelled" not in help_text
    code, line = invoke_cli("kfold", "--pool-images", "/no/such/pool", "--out", "/no/such/run", "--preset", "smoke")
    code_old, line_old = invoke_cli("kfold", "--unlabelled", "/no/such/pool", "--out", "/no/such/run", "--preset", "smoke")
    assert code == code_old == 2 and "/no/such/pool" in line and "/no/such/pool" in line_old  # the same setting, refused the same way


@pytest.mark.parametrize("spelling", ["students", "student", "Students"])
def test_models_has_one_spelling_and_accepts_the_singular(tmp_path, spelling):
    a, *_ = _run(tmp_path / "a", right=20, seed=0)
    b, *_ = _run(tmp_path / "b", right=30, seed=1)
    assert compare_runs(a, b, models=spelling).name_b == "b student ensemble (majority)"
    code, line = invoke_cli("compare", a, b, "--models", spelling)
    assert code == 0 and "Verdict on the primary metric, accuracy" in line  # run a was made before --primary-metric


def test_an_unknown_model_set_is_refused_in_one_sentence(tmp_path):
    a, *_ = _run(tmp_path / "a", right=20, seed=0)
    with pytest.raises(ConfigError, match="--models must be students or teachers; got 'pupils'"):
        compare_runs(a, a, models="pupils")
    code, line = invoke_cli("ensemble", "predict", a, tmp_path, "--out", tmp_path / "p.csv", "--models", "pupils")
    assert code == 2 and "--models must be students or teachers" in line
