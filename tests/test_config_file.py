"""Settings files (--config FILE.yaml): flags given > file > preset > defaults, errors named, runs repeatable.

The kfold cases run the real CLI with ``pipeline.run_fold`` replaced by a no-op:
the run folder, config.json and config.yaml are written as in a real run, but
no model is trained, so each case takes a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import PATIENT_REGEX, assert_one_sentence, write_class_folders
from helpers import invoke_cli as invoke

from noisystudent.config.config_file import read_config_file, starting_file
from noisystudent.config.run_config import RunConfig
from noisystudent.config.settings import make_config
from noisystudent.errors import ConfigError, UserError
from noisystudent.run.folder import write_config

BASE = ["--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--arch", "resnet18", "--weights", "none",
        "--image-size", "32", "--device", "cpu", "--workers", "1", "--test-fraction", "0", "--quiet"]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))


@pytest.fixture
def no_training(monkeypatch):
    """kfold writes its run folder (config.json, config.yaml, folds.csv, cache) but trains nothing."""
    from noisystudent.run import pipeline

    monkeypatch.setattr(pipeline, "run_fold", lambda run_ctx, fold: None)


def _file(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _saved(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


# --- precedence ------------------------------------------------------------------------------


def test_flags_win_over_the_file_which_wins_over_the_preset_which_wins_over_defaults(tmp_path, data, no_training):
    settings = _file(tmp_path, "preset: smoke\nepochs: 7\nlr: 1e-2\nbatch_size: 4\nchannels_last: true\nsplit_ratio: '3:1:1'\n")
    run = tmp_path / "run"
    code, line = invoke("kfold", data, "--out", run, "--config", settings, *BASE, "--lr", "0.02", "--no-channels-last")
    assert code == 0, line
    saved = _saved(run)
    assert saved["preset"] == "smoke" and saved["folds"] == 2  # the file's preset
    assert saved["epochs"] == 7 and saved["batch_size"] == 4 and saved["split_ratio"] == [3.0, 1.0, 1.0]  # the file over smoke
    assert saved["lr"] == 0.02 and saved["channels_last"] is False  # flags over the file
    assert saved["momentum"] == 0.9 and saved["rounds"] == 1  # RunConfig's default; smoke's rounds


def test_a_flag_typed_with_its_default_value_still_wins_over_the_file(tmp_path, data, no_training):
    settings = _file(tmp_path, "epochs: 7\nfolds: 3\nrounds: 1\n")
    run = tmp_path / "run"
    assert invoke("kfold", data, "--out", run, "--config", settings, *BASE, "--epochs", "50", "--folds", "2")[0] == 0
    saved = _saved(run)
    assert (saved["epochs"], saved["folds"], saved["rounds"]) == (50, 2, 1)


def test_the_data_positional_wins_over_the_file_and_the_files_data_is_used_without_one(tmp_path, data, no_training):
    other = write_class_folders(tmp_path / "other", patients_per_class=2, images_per_patient=2, size=(16, 16))
    settings = _file(tmp_path, f"data: {other}\nfolds: 2\nrounds: 0\nepochs: 1\n")
    assert invoke("kfold", "--out", tmp_path / "a", "--config", settings, *BASE)[0] == 0
    assert invoke("kfold", data, "--out", tmp_path / "b", "--config", settings, *BASE)[0] == 0
    assert _saved(tmp_path / "a")["data"] == str(other.resolve()) and _saved(tmp_path / "a")["preset"] == "cnmc-study"
    assert _saved(tmp_path / "b")["data"] == str(data.resolve())


# --- errors: one sentence, nothing written -----------------------------------------------------


@pytest.mark.parametrize("text, fragments", [
    ("epoch: 3\n", ["has an unknown setting 'epoch'; did you mean 'epochs'?"]),
    ("learning_rate: 0.1\n", ["unknown setting 'learning_rate'", "--help lists the settings"]),
    ("lr: fast\n", ["holds an unusable setting: lr must be a number; got 'fast'."]),
    ("epochs: 2.5\n", ["epochs must be a whole number"]),
    ("pool: 'yes'\n", ["pool must be true or false; got 'yes'."]),
    ("split_ratio: 2-2-1\n", ["--split-ratio must look like 2:2:1"]),
    ("- epochs\n- 3\n", ["must hold 'name: value' lines, not a list"]),
    ("epochs: [1\n", ["is not valid YAML at line"]),
    ("models: teachers\n", ["the setting 'models' of ensemble predict, which kfold does not take"]),
    ("epochs: 3\nlr: 0.01\n# later\nepochs: 50\n", ["sets 'epochs' twice (lines 1 and 4); keep one of them."]),
])
def test_a_bad_file_is_refused_in_one_sentence_before_the_run_folder_exists(tmp_path, data, text, fragments):
    settings = _file(tmp_path, text)
    run = tmp_path / "run"
    assert_one_sentence(*invoke("kfold", data, "--out", run, "--config", settings, *BASE), f"The config file {settings}", *fragments)
    assert not run.exists()


def test_a_missing_file_is_named(tmp_path, data):
    assert_one_sentence(*invoke("kfold", data, "--out", tmp_path / "run", "--config", tmp_path / "nope.yaml"),
                        f"The config file {tmp_path / 'nope.yaml'} does not exist")


def test_yaml_is_read_as_data_never_as_code(tmp_path, data):
    marker = tmp_path / "ran"
    settings = _file(tmp_path, f"epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_one_sentence(*invoke("kfold", data, "--out", tmp_path / "run", "--config", settings, *BASE), "is not valid YAML")
    assert not marker.exists()


def test_read_config_file_parses_what_yaml_reads_as_text(tmp_path):
    path = _file(tmp_path, "lr: 1e-3\nunlabelled: pool/\nsplit_ratio: [3, 1, 1]\nstudent_arch: null\n")
    assert read_config_file(path) == {"lr": 0.001, "pool_images": "pool/", "split_ratio": (3.0, 1.0, 1.0), "student_arch": None}
    assert read_config_file(_file(tmp_path, "# nothing but a comment\n", "empty.yaml")) == {}


# --- every run writes config.yaml; it repeats the run --------------------------------------------


def test_config_yaml_beside_config_json_repeats_the_run(tmp_path, data, no_training):
    first, second = tmp_path / "runs" / "x", tmp_path / "runs" / "y"
    assert invoke("kfold", data, "--out", first, *BASE, "--preset", "smoke", "--epochs", "3", "--lr", "3e-4",
                  "--split-ratio", "3:1:1", "--student-arch", "resnet18")[0] == 0
    text = (first / "config.yaml").read_text()
    assert text.startswith("# The resolved settings of the noisystudent run in ")
    assert "# Epochs per model. (default: 50)\nepochs: 3\n" in text
    code, line = invoke("kfold", "--config", first / "config.yaml", "--out", second, "--quiet")  # no DATA, no flags
    assert code == 0, line
    a, b = _saved(first), _saved(second)
    assert a["settings_digest"] == b["settings_digest"]
    meta = ("version", "created_with", "data_fingerprint", "settings_digest", "machine", "run_id")
    assert {k: v for k, v in a.items() if k not in meta} == {k: v for k, v in b.items() if k not in meta}
    assert a["data_fingerprint"] == b["data_fingerprint"]
    assert yaml.safe_load((second / "config.yaml").read_text()) == yaml.safe_load(text)


def test_write_config_writes_yaml_that_reads_back_to_the_same_settings(tmp_path):
    config = RunConfig(folds=3, lr=1e-5, split_ratio=(1.0, 5.0, 3.0), label_map="ALL=all,Hem=hem", binary=None,
                       class_weights="1,2", pool_images="yes", patient_regex=r"^(p\d+)_")
    write_config(tmp_path, config, "fingerprint")
    assert RunConfig(**read_config_file(tmp_path / "config.yaml")) == config


# --- resume with --config --------------------------------------------------------------------


def test_resume_with_a_config_file_is_checked_like_flags(tmp_path, data, no_training):
    run = tmp_path / "run"
    assert invoke("kfold", data, "--out", run, *BASE, "--preset", "smoke")[0] == 0
    assert invoke("kfold", "--out", run, "--resume", "--config", run / "config.yaml", "--quiet")[0] == 0  # the same settings
    changed = _file(tmp_path, (run / "config.yaml").read_text().replace("\nepochs: 1\n", "\nepochs: 4\n"))
    assert_one_sentence(*invoke("kfold", "--out", run, "--resume", "--config", changed, "--quiet"),
                        "was made with other settings; differing: epochs (1 -> 4)")
    workers = _file(tmp_path, "workers: 2\n", "workers.yaml")  # a setting that does not change results may change
    assert invoke("kfold", "--out", run, "--resume", "--config", workers, "--quiet")[0] == 0
    assert _saved(run)["workers"] == 2


# --- config show -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["cnmc-study", "smoke", "demo"])
def test_config_show_prints_a_commented_file_that_means_the_preset(tmp_path, preset):
    code, _ = invoke("config", "show", "--preset", preset)
    assert code == 0
    text = starting_file(preset)
    assert RunConfig(**read_config_file(_file(tmp_path, text))) == make_config(preset=preset)
    for name, field in RunConfig.__dataclass_fields__.items():
        assert f"\n{name}: " in text
        assert f"# {field.metadata['help'].split()[0]}" in text  # each key after its help text


def test_config_show_refuses_an_unknown_preset():
    assert_one_sentence(*invoke("config", "show", "--preset", "fast"), "Unknown preset 'fast'")


# --- ensemble predict --config -----------------------------------------------------------------


@pytest.fixture
def run_folder(tmp_path, data) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, RunConfig(data=str(data), folds=2, rounds=1, arch="resnet18", weights="none"), "fingerprint")
    return run


@pytest.fixture
def loads(monkeypatch) -> list:
    """What load_ensemble was asked for, then a stop: the options are resolved by then."""
    from noisystudent.ensemble import classifier

    calls = []

    def load(run, models, device):
        calls.append((models, device))
        raise UserError("stop here")

    monkeypatch.setattr(classifier, "load_ensemble", load)
    return calls


def test_predict_takes_its_settings_from_the_file_unless_typed(tmp_path, run_folder, data, loads):
    settings = _file(tmp_path, "models: teachers\ndevice: cpu\nvoting: soft\n")
    out = tmp_path / "p.csv"
    assert_one_sentence(*invoke("ensemble", "predict", run_folder, data, "--out", out, "--config", settings), "stop here")
    assert_one_sentence(*invoke("ensemble", "predict", run_folder, data, "--out", out, "--config", settings,
                                "--device", "auto", "--models", "students"), "stop here")  # typed, though they are the defaults
    assert loads == [("teachers", "cpu"), ("students", "auto")]


def test_predict_refuses_a_kfold_setting_and_names_a_wrong_type(tmp_path, run_folder, data, loads):
    epochs = _file(tmp_path, "epochs: 3\n")
    assert_one_sentence(*invoke("ensemble", "predict", run_folder, data, "--config", epochs),
                        "the setting 'epochs' of kfold, which ensemble predict does not take; its settings are models, voting")
    batch = _file(tmp_path, "batch_size: many\n", "batch.yaml")
    assert_one_sentence(*invoke("ensemble", "predict", run_folder, data, "--config", batch), "batch_size must be a whole number; got 'many'.")
    typo = _file(tmp_path, "voteing: soft\n", "typo.yaml")
    assert_one_sentence(*invoke("ensemble", "predict", run_folder, data, "--config", typo), "did you mean 'voting'?")
    assert loads == []


# --- experiment --config ---------------------------------------------------------------------


def test_experiment_takes_seeds_from_the_file_and_refuses_seed(tmp_path, data, monkeypatch):
    from noisystudent import experiment

    calls = []

    def run_experiment(config, study, seeds, arms, progress):
        calls.append((config, seeds, arms))
        raise UserError("stop here")

    monkeypatch.setattr(experiment, "run_experiment", run_experiment)
    settings = _file(tmp_path, "seeds: [4, 5]\narms: ns,control\nepochs: 3\n")
    assert_one_sentence(*invoke("experiment", data, "--out", tmp_path / "s", "--config", settings, *BASE), "stop here")
    assert_one_sentence(*invoke("experiment", data, "--out", tmp_path / "s", "--config", settings, *BASE, "--seeds", "0,1,2"), "stop here")
    assert [(c.epochs, s, a) for c, s, a in calls] == [(3, [4, 5], ["ns", "control"]), (3, [0, 1, 2], ["ns", "control"])]
    seed = _file(tmp_path, "seed: 1\n", "seed.yaml")
    assert_one_sentence(*invoke("experiment", data, "--config", seed, *BASE), "'seed', which experiment replaces by 'seeds'")


def test_read_config_file_checks_keys_per_command(tmp_path):
    path = _file(tmp_path, "tta: flips\n")
    assert read_config_file(path, "ensemble predict") == {"tta": "flips"}
    assert read_config_file(path, "kfold") == {"tta": "flips"}
    with pytest.raises(ConfigError, match="'seeds' of experiment, which kfold does not take"):
        read_config_file(_file(tmp_path, "seeds: 0,1\n", "s.yaml"), "kfold")
