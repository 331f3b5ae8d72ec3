"""No file the tool reads can run code.

A malicious pickle is planted in each place the tool reads one: a ``--weights``
file (named like our own artifacts, which used to be fully unpickled), a
run's ``model.pt`` read by ``ensemble predict`` / ``evaluate``, and a
``checkpoint.pt`` read by ``kfold --resume``. Unpickling it would create a
marker file; each command must refuse with one sentence and the marker must
not exist.
"""

from __future__ import annotations

import argparse
import builtins
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PATIENT_REGEX, write_class_folders
from helpers import invoke_cli as invoke

from noisystudent import convert, layout
from noisystudent.config.run_config import RunConfig
from noisystudent.models import checkpoint, create_model
from noisystudent.models.torch_files import load_tensors
from noisystudent.run.folder import write_config

FLAGS = [
    "--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--rounds", "1", "--epochs", "1",
    "--image-size", "32", "--batch-size", "8", "--weights", "none", "--arch", "resnet18", "--device", "cpu",
    "--workers", "1", "--test-fraction", "0", "--quiet",  # 2 patients per class: no outer test set
]


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file appears if any code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def plant(path: Path, marker: Path) -> Path:
    """A file that looks like a noisystudent checkpoint / model.pt and carries the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = create_model("resnet18", 2, drop_connect=0.0)
    torch.save({"version": 1, "model": model.state_dict(), "spec": {"arch": "resnet18"}, "x": Payload(marker)}, path)
    return path


def assert_refused_without_running(code: int, line: str, path: Path, marker: Path) -> None:
    assert code == 2, line
    assert f"{path} holds the Python object io.open besides tensors and is not loaded" in line, line
    assert "python -m noisystudent.convert" in line
    assert not marker.exists()


@pytest.fixture
def data(tmp_path) -> Path:
    return write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2)


@pytest.mark.parametrize("name", ["evil_model.pt", "checkpoint.pt", "weights.pth"])
def test_a_malicious_weights_file_runs_nothing(tmp_path, data, name):
    marker = tmp_path / "marker"
    weights = plant(tmp_path / name, marker)
    code, line = invoke("kfold", data, "--out", tmp_path / "run", *FLAGS, "--weights", weights)
    assert_refused_without_running(code, line, weights, marker)


@pytest.fixture
def run_with_malicious_model(tmp_path, data) -> tuple[Path, Path, Path]:
    """A run folder (config.json only) whose fold-0 student model.pt carries the payload."""
    run = tmp_path / "run"
    config = RunConfig(data=str(data), patient_regex=PATIENT_REGEX, folds=2, rounds=1, arch="resnet18", weights="none")
    run.mkdir()
    write_config(run, config, "fingerprint")
    marker = tmp_path / "marker"
    model = plant(layout.round_dir(run, 0, 1) / layout.MODEL, marker)
    return run, model, marker


def test_a_malicious_model_pt_runs_nothing_in_ensemble_predict(tmp_path, data, run_with_malicious_model):
    run, model, marker = run_with_malicious_model
    code, line = invoke("ensemble", "predict", run, data, "--out", tmp_path / "preds.csv", "--device", "cpu")
    assert_refused_without_running(code, line, model, marker)
    assert not (tmp_path / "preds.csv").exists()


def test_a_malicious_model_pt_runs_nothing_in_ensemble_evaluate(tmp_path, data, run_with_malicious_model):
    run, model, marker = run_with_malicious_model
    code, line = invoke("ensemble", "evaluate", run, data, "--out", tmp_path / "eval.csv", "--device", "cpu",
                        "--patient-regex", PATIENT_REGEX)
    assert_refused_without_running(code, line, model, marker)


def test_a_malicious_checkpoint_runs_nothing_on_resume(tmp_path, data, monkeypatch):
    from noisystudent.run import pipeline

    run, marker = tmp_path / "run", tmp_path / "marker"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "run_fold", _interrupt)  # config, folds and cache written; no training
        assert invoke("kfold", data, "--out", run, *FLAGS)[0] == 130
    saved = plant(layout.round_dir(run, 0, 0) / layout.CHECKPOINT, marker)
    code, line = invoke("kfold", "--out", run, "--resume")
    assert_refused_without_running(code, line, saved, marker)


def _interrupt(run_ctx, fold):
    raise KeyboardInterrupt


# --- what is saved now loads without any allow-list ---------------------------------------


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    """Saved RNG states and numpy metrics load with torch's bare weights_only loader (no numpy allowed)."""
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"rng": checkpoint.capture_rng_state(), "score": np.float64(0.75),
                           "history": [{"val_auc": np.float32(0.5), "epoch": np.int64(3)}]})
    saved = torch.load(path, weights_only=True)  # raises on any numpy object
    assert saved["version"] == checkpoint.CHECKPOINT_VERSION
    assert saved["score"] == 0.75 and type(saved["score"]) is float
    assert saved["history"] == [{"val_auc": 0.5, "epoch": 3}]


def test_rng_states_saved_as_tensors_restore_the_same_draws(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.normal()  # a cached Gaussian in both
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"rng": checkpoint.capture_rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.random(), np.random.normal(), torch.rand(1).item())
    checkpoint.restore_rng_state(checkpoint.load(path)["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.random(), np.random.normal(), torch.rand(1).item()) == expected


def test_a_schema_1_checkpoint_with_numpy_rng_states_still_resumes(tmp_path):
    path = tmp_path / "checkpoint.pt"
    np.random.seed(5)
    torch.save({"version": 1, "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                      "torch": torch.get_rng_state()}}, path)
    expected = np.random.random()
    checkpoint.restore_rng_state(checkpoint.load(path)["rng"])
    assert np.random.random() == expected


def test_convert_resaves_a_trusted_file_as_tensors_and_plain_values(tmp_path):
    model = create_model("resnet18", 2, drop_connect=0.0)
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save({"model": model, "args": argparse.Namespace(lr=0.1), "keys": np.arange(3), "epoch": np.int64(4)}, old)
    assert convert.main([str(old), str(new)]) == 0
    content = load_tensors(new)
    assert set(content) == {"model", "keys", "epoch"}  # the Namespace is dropped
    assert torch.equal(content["model"]["fc.1.weight"], model.state_dict()["fc.1.weight"])
    assert content["keys"].tolist() == [0, 1, 2] and content["epoch"] == 4


@pytest.mark.parametrize("kind", ["plain pickle, protocol 4", "plain pickle, protocol 0", "torch legacy format"])
def test_a_pickle_that_holds_code_is_named_as_such_not_as_corrupt(tmp_path, kind):
    """A pickle of protocol 4 fails weights-only loading on its framing: before, "maybe truncated or corrupt"."""
    import pickle

    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    payload = {"model": Payload(marker)}
    if kind == "torch legacy format":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4 if "4" in kind else 0))
    with pytest.raises(Exception) as refused:
        load_tensors(path, "The weights file")
    assert f"{path} holds the Python object io.open besides tensors and is not loaded" in str(refused.value)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_still_called_truncated(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"version": 2, "model": create_model("resnet18", 2, drop_connect=0.0).state_dict(), "seen": {1, 2}}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(Exception, match="is not a readable PyTorch file, maybe truncated or corrupt"):
        load_tensors(path, "The checkpoint")
