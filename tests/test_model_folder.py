"""`ensemble export --format folder`: safetensors + config.json + model card, read back without unpickling.

One tiny run is trained for this module (2 folds, teacher + 1 student, 1 epoch
at 32 px); its model folder must predict as the run folder does (within 1e-5),
with and without the temperature fitted on the run's validation predictions.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import save_cell
from typer.testing import CliRunner

from noisystudent import layout
from noisystudent.cli.commands import app
from noisystudent.config.run_config import RunConfig
from noisystudent.data.loose_files import resolve_inputs
from noisystudent.ensemble import classifier as ensemble
from noisystudent.ensemble import model_card, model_folder
from noisystudent.errors import OutputError
from noisystudent.evaluation import calibration as calib
from noisystudent.run import calibration as run_calibration
from noisystudent.run.pipeline import run_kfold

CLASSES = ["all", "hem"]
runner = CliRunner()


def _invoke(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """2 folds, teacher + 1 student, 1 epoch at 32 px on 36 images of 12 patients, a quarter of them the outer test set."""
    root = tmp_path_factory.mktemp("model-folder")
    for p in range(12):
        label = CLASSES[p % 2]
        for i in range(3):
            save_cell(root / "data" / label / f"p{p}_{i}.png", CLASSES.index(label), seed=100 * p + i)
    config = RunConfig(
        data=str(root / "data"), patient_regex=r"^(p\d+)_", folds=2, rounds=1, epochs=1, image_size=32, batch_size=8,
        weights="none", arch="resnet18", optimizer="adamw", lr=3e-3, scheduler="none", bn_momentum=0.5,
        device="cpu", workers=1, eval_batch_size=16, test_fraction=0.25,
    )
    run_kfold(config, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def exported(trained_run) -> Path:
    out = trained_run.parent / "shared" / "model"
    code, output = _invoke("ensemble", "export", trained_run, "--format", "folder", "--out", out, "--calibration", "temperature")
    assert code == 0, output
    return out


def _forbid_unpickling(monkeypatch) -> None:
    """Every way of unpickling raises from here on: reading a model folder must need none."""
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling was attempted")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(target, name, refuse)


@pytest.mark.slow
def test_the_folder_holds_safetensors_config_and_a_card(exported, trained_run):
    assert sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()) == [
        "README.md", "config.json", "fold-0/model.safetensors", "fold-1/model.safetensors"]
    document = json.loads((exported / "config.json").read_text())
    assert (document["format"], document["kind"], document["round"], document["folds"]) == ("noisystudent-ensemble", "student", 1, [0, 1])
    assert document["classes"] == CLASSES and document["positive"] == "all" and document["input_size"] == 32
    assert document["architecture"] == "resnet18" and document["calibration"] == "temperature"
    assert document["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    saved = json.loads((trained_run / "results" / layout.CALIBRATION).read_text())["models"]["student"]
    assert document["temperature"] == saved["temperature"] and document["fold_temperatures"] == saved["folds"]
    card = (exported / "README.md").read_text()
    for needed in ("## Data", "## Protocol", "## Outer test set", "95 % interval", "## Calibration", "## Intended use",
                   "## Limitations", "git commit", "noisystudent 0."):
        assert needed in card
    assert f"| {model_card.CARD_METRICS[0]} | " in card  # balanced accuracy with its interval
    assert "| test | 12 | 4 |" in card  # the outer test set's images and patients


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "temperature"])
def test_folder_predicts_as_the_run_without_unpickling(exported, trained_run, mode, monkeypatch):
    images = resolve_inputs([trained_run.parent / "data"])
    from_run = ensemble.predict(ensemble.load_ensemble(trained_run, device="cpu"), images, calibration=mode, backend="torch")
    _forbid_unpickling(monkeypatch)
    folder = ensemble.load_ensemble(exported, device="cpu")
    assert folder.is_folder and folder.calibration == "temperature"
    from_folder = ensemble.predict(folder, images, calibration=mode, backend="torch")
    columns = [layout.prob_column(c) for c in CLASSES]
    np.testing.assert_allclose(from_folder.table[columns], from_run.table[columns], atol=1e-5, rtol=0)
    assert (from_folder.table.pred == from_run.table.pred).all()
    if mode == "temperature":  # the temperature did move the probabilities
        uncalibrated = ensemble.predict(folder, images, calibration="none", backend="torch").table[columns]
        assert np.abs(uncalibrated.to_numpy() - from_folder.table[columns].to_numpy()).max() > 1e-4


@pytest.mark.slow
def test_cli_predict_reads_the_folder_like_the_run(exported, trained_run, tmp_path):
    data = trained_run.parent / "data"
    for source, name in ((trained_run, "run.csv"), (exported, "folder.csv")):
        code, output = _invoke("ensemble", "predict", source, data, "--out", tmp_path / name, "--device", "cpu",
                               "--calibration", "temperature")  # the default backend: ONNX Runtime where installed
        assert code == 0, output
    run_table, folder_table = pd.read_csv(tmp_path / "run.csv"), pd.read_csv(tmp_path / "folder.csv")
    np.testing.assert_allclose(folder_table.prob_all, run_table.prob_all, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_run_temperature_is_fitted_on_validation_predictions_only(trained_run):
    fitted = json.loads((trained_run / "results" / layout.CALIBRATION).read_text())["models"]["student"]
    tables = [pd.read_csv(layout.round_dir(trained_run, f, 1) / layout.PREDICTIONS) for f in range(2)]
    validation = [run_calibration.labelled_probs(t[t.split == "validation"], CLASSES) for t in tables]
    probs, labels = np.concatenate([p for p, _ in validation]), np.concatenate([y for _, y in validation])
    assert fitted["temperature"] == pytest.approx(calib.fit_temperature(probs, labels))
    assert fitted["validation_images"] == len(labels) and fitted["validation_nll_after"] <= fitted["validation_nll_before"] + 1e-9
    table = pd.read_csv(trained_run / "results" / layout.CALIBRATION_TABLE)
    assert set(table.split) == {"test"} and set(table.calibration) == {"none", "temperature"}
    assert set(table.fold.astype(str)) == {"0", "1", "ensemble"}


@pytest.mark.slow
def test_evaluate_writes_calibration_before_and_after(trained_run, tmp_path):
    code, output = _invoke("ensemble", "evaluate", trained_run, trained_run.parent / "data", "--out", tmp_path / "m.csv",
                           "--device", "cpu", "--backend", "torch", "--calibration", "temperature")
    assert code == 0, output
    table = pd.read_csv(tmp_path / "m_calibration.csv")
    assert len(table) == 6 and set(table.calibration) == {"none", "temperature"}
    assert (table.n == 36).all() and table.ece.between(0, 1).all()


@pytest.mark.slow
def test_export_refuses_a_non_empty_folder_and_the_run_folder(trained_run, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for out in (busy, trained_run, trained_run / "export"):
        code, output = _invoke("ensemble", "export", trained_run, "--format", "folder", "--out", out)
        assert code == 2 and "Error:" in output, output
    assert (busy / "notes.txt").read_text() == "mine" and not (trained_run / "export").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_destination_checks_without_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "file").write_text("x")
    model_folder.check_destination(tmp_path / "new", run)
    (tmp_path / "empty").mkdir()
    model_folder.check_destination(tmp_path / "empty", run)
    for bad in (tmp_path / "file", run, run / "inside"):
        with pytest.raises(OutputError):
            model_folder.check_destination(bad, run)


def test_a_run_folder_is_not_a_model_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"folds": 5}))
    assert not model_folder.is_model_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": model_folder.FORMAT}))
    assert model_folder.is_model_folder(tmp_path)


def test_calibration_option_is_checked_before_anything_is_read(tmp_path):
    code, output = _invoke("ensemble", "predict", tmp_path / "missing-run", tmp_path, "--calibration", "platt")
    assert code == 2 and "--calibration must be one of none, temperature" in output
    code, output = _invoke("ensemble", "export", tmp_path / "missing-run", "--calibration", "temperature")
    assert code == 2 and "applies to --format folder" in output


@pytest.mark.slow
def test_changed_weights_are_refused_in_one_sentence(exported, trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    weights = copy / "fold-1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, output = _invoke("ensemble", "predict", copy, trained_run.parent / "data", "--out", tmp_path / "p.csv", "--device", "cpu")
    assert code == 2 and "has changed since it was exported" in output
