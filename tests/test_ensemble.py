"""`noisystudent ensemble predict / evaluate` end to end on one tiny run trained once for this module.

Every prediction is checked against probabilities recomputed here without the
ensemble code: each fold's model.pt loaded with model_io, the images
preprocessed one by one, one forward pass, softmax.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import save_cell
from sklearn.metrics import accuracy_score
from typer.testing import CliRunner

from noisystudent import layout, models
from noisystudent.cli.commands import app
from noisystudent.config.run_config import RunConfig
from noisystudent.data.loose_files import name_fields, resolve_inputs
from noisystudent.data.preprocess import PreprocessSpec, load_preprocessed
from noisystudent.ensemble import classifier as ensemble
from noisystudent.errors import DataError
from noisystudent.evaluation.voting import vote
from noisystudent.models import checkpoint
from noisystudent.models.model_file import load_model_file
from noisystudent.run.folder import run_identity
from noisystudent.run.pipeline import run_kfold

CPU = torch.device("cpu")
CLASSES = ["all", "hem"]
ARCH = "resnet18"  # fast on a CPU, and its outputs differ from image to image even after one epoch
OTHER_ARCH = "efficientnet-b0"
runner = CliRunner()


def _cell(path: Path, label: str, seed: int) -> Path:
    """A random-texture cell whose class shows as a brighter red (all) or green (hem) channel."""
    return save_cell(path, CLASSES.index(label), seed)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """2 folds, teacher + 1 student, 1 epoch at 32 px on 24 images of 8 patients (the one training here)."""
    root = tmp_path_factory.mktemp("ensemble")
    data = root / "data"
    for p in range(8):
        label = CLASSES[p % 2]
        for i in range(3):
            _cell(data / label / f"p{p}_{i}.png", label, seed=100 * p + i)
    config = RunConfig(
        data=str(data), patient_regex=r"^(p\d+)_", folds=2, rounds=1, epochs=1, image_size=32, batch_size=8,
        weights="none", arch=ARCH, optimizer="adamw", lr=3e-3, scheduler="none", bn_momentum=0.5,
        device="cpu", workers=1, eval_batch_size=16,
    )
    run = root / "run"
    run_kfold(config, run)
    return run


@pytest.fixture(scope="module")
def new_images(trained_run) -> Path:
    """12 C-NMC-named cells of 3 patients (2 all, 1 hem) and one plain-named image without a patient."""
    folder = trained_run.parent / "new"
    for p, label in enumerate(["all", "all", "hem"]):
        for i in range(4):
            _cell(folder / "sub" / f"UID_{p + 50}_{i}_1_{label}.bmp", label, seed=5000 + 10 * p + i)
    _cell(folder / "loose.png", "hem", seed=9)
    return folder


def _independent_probs(run: Path, paths: list[str], round_: int) -> np.ndarray:
    """(folds, images, classes) recomputed image by image from each fold's model.pt."""
    out = []
    for fold in range(2):
        model, payload = load_model_file(layout.round_dir(run, fold, round_) / layout.MODEL, CPU)
        spec = PreprocessSpec(**payload["preprocess"])
        mean, std = models.input_normalization(payload["spec"]["arch"])
        pixels = torch.from_numpy(np.stack([load_preprocessed(p, spec) for p in paths])).float() / 255
        x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            out.append(torch.softmax(model(x), dim=1).numpy())
    return np.stack(out).astype(np.float64)


def _listing(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))}


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"path": str, "label": str, "patient": str}, keep_default_na=False)


def _invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def _squashed(text: str) -> str:
    """``text`` without whitespace: Rich wraps long log lines wherever it likes."""
    return "".join(text.split())


def _copy_run(run: Path, target: Path) -> Path:
    return Path(shutil.copytree(run, target, ignore=shutil.ignore_patterns(layout.CACHE, layout.CHECKPOINT)))


@pytest.fixture(scope="module")
def predicted(trained_run, new_images, tmp_path_factory):
    """Majority and soft predictions of the students on the new images, and the run listing before and after."""
    before = _listing(trained_run)
    out = tmp_path_factory.mktemp("predicted")
    outputs = {}
    for rule in ("majority", "soft"):
        result = _invoke("ensemble", "predict", trained_run, new_images, "--voting", rule, "--out", out / f"{rule}.csv",
                         "--device", "cpu", "-q")
        assert result.exit_code == 0, result.output
        outputs[rule] = (_read(out / f"{rule}.csv"), _read(out / f"{rule}_patients.csv"), result.output)
    return outputs, before, _listing(trained_run)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["majority", "soft"])
def test_predict_matches_independent_recomputation(trained_run, new_images, predicted, rule):
    table, _, output = predicted[0][rule]
    expected_paths = sorted(str(p) for p in new_images.rglob("*") if p.is_file())
    assert sorted(table["path"]) == expected_paths  # one row per image
    assert list(table.columns) == ["path", "label", "patient", "prob_all", "prob_hem", "pred", "agreement",
                                   "vote_fold0", "vote_fold1"]
    np.testing.assert_allclose(table[["prob_all", "prob_hem"]].sum(axis=1), 1.0, atol=1e-6)
    assert set(table["agreement"]) <= {0.5, 1.0}

    probs = _independent_probs(trained_run, table["path"].tolist(), round_=1)
    assert probs.std(axis=1).min() > 1e-3  # outputs differ per image, so a row mix-up would show
    result = vote(probs, rule)
    names = np.array(CLASSES, dtype=object)
    for k in range(2):
        assert list(table[f"vote_fold{k}"]) == list(names[probs[k].argmax(axis=1)])
    np.testing.assert_allclose(table[["prob_all", "prob_hem"]].to_numpy(), result.probs, atol=1e-5)
    assert list(table["pred"]) == list(names[result.pred])
    np.testing.assert_allclose(table["agreement"], result.agreement)
    assert "Skipped unreadable images: 0" in output


@pytest.mark.slow
def test_majority_and_soft_agree_with_two_folds(predicted):
    # two votes either agree, or tie and the tie goes to the higher mean probability: soft voting's answer
    majority, soft = predicted[0]["majority"][0], predicted[0]["soft"][0]
    pd.testing.assert_frame_equal(majority, soft)


@pytest.mark.slow
def test_predict_names_patients_and_labels_from_cnmc_names(predicted):
    table = predicted[0]["soft"][0].set_index("path")
    cell = table.loc[[p for p in table.index if p.endswith("UID_52_3_1_hem.bmp")][0]]
    assert (cell["patient"], cell["label"]) == ("52", "hem")
    loose = table.loc[[p for p in table.index if p.endswith("loose.png")][0]]
    assert (loose["patient"], loose["label"]) == ("", "")


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["majority", "soft"])
def test_patient_table_fractions(predicted, rule):
    table, patients, _ = predicted[0][rule]
    assert list(patients.columns) == ["patient", "n_cells", "fraction_all", "mean_prob_all", "call", "label"]
    assert list(patients["patient"]) == ["50", "51", "52"]  # the image without a patient is left out
    assert list(patients["label"]) == ["all", "all", "hem"]
    for _, row in patients.iterrows():
        cells = table[table["patient"] == row["patient"]]
        assert row["n_cells"] == len(cells) == 4
        assert row["fraction_all"] == pytest.approx((cells["pred"] == "all").mean())
        assert row["mean_prob_all"] == pytest.approx(cells["prob_all"].mean())
        assert row["call"] == ("all" if row["fraction_all"] >= 0.5 else "hem")


@pytest.mark.slow
def test_predict_leaves_the_run_folder_untouched(predicted):
    _, before, after = predicted
    assert after == before


@pytest.mark.slow
def test_predict_defaults_to_predictions_csv_in_the_working_directory(trained_run, new_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("ensemble", "predict", trained_run, new_images / "loose.png", "--models", "teachers", "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = _read(tmp_path / "predictions.csv")
    assert len(table) == 1 and "label" not in table.columns  # no label known
    assert not (tmp_path / "predictions_patients.csv").exists()  # no patient known
    probs = _independent_probs(trained_run, table["path"].tolist(), round_=0)
    np.testing.assert_allclose(table[["prob_all", "prob_hem"]].to_numpy(), probs.mean(axis=0), atol=1e-5)


@pytest.mark.slow
def test_predict_csv_manifest_patient_column(trained_run, new_images, tmp_path):
    manifest = tmp_path / "list.csv"
    pd.DataFrame({"path": [str(new_images / "loose.png")], "patient": ["x7"]}).to_csv(manifest, index=False)
    images = resolve_inputs([manifest])
    assert images.to_dict("records") == [{"path": str(new_images / "loose.png"), "label": "", "patient": "X7"}]


@pytest.mark.slow
def test_out_inside_the_run_is_refused(trained_run, new_images):
    before = _listing(trained_run)
    result = _invoke("ensemble", "predict", trained_run, new_images, "--out", trained_run / "results" / "mine.csv")
    assert result.exit_code == 2
    assert "inside the run folder" in result.output
    assert _listing(trained_run) == before


@pytest.mark.slow
def test_missing_input_is_named(trained_run, tmp_path):
    result = _invoke("ensemble", "predict", trained_run, tmp_path / "nowhere", "--out", tmp_path / "p.csv")
    assert result.exit_code == 2
    assert f"The input {tmp_path / 'nowhere'} does not exist." in result.output


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="contains no images"):
        resolve_inputs([tmp_path / "empty"])


@pytest.mark.slow
def test_unreadable_image_stops_or_is_skipped_and_reported(trained_run, new_images, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(new_images / "sub", images)
    broken = images / "broken.png"
    broken.write_bytes(b"not an image at all")
    result = _invoke("ensemble", "predict", trained_run, images, "--out", tmp_path / "p.csv", "--device", "cpu")
    assert result.exit_code == 2
    assert f"The image {broken} cannot be read" in result.output
    assert not (tmp_path / "p.csv").exists()

    result = _invoke("ensemble", "predict", trained_run, images, "--out", tmp_path / "p.csv", "--device", "cpu",
                     "--skip-unreadable")
    assert result.exit_code == 0, result.output
    assert "Skipped unreadable images: 1" in result.output
    assert _squashed(f"Skipped: The image {broken} cannot be read") in _squashed(result.output)  # named in the log
    assert len(_read(tmp_path / "p.csv")) == 12


def _replace_model(run: Path, fold: int, payload_arch: str, weights_arch: str) -> Path:
    """Overwrite fold's student model.pt with a model file naming ``payload_arch`` and holding ``weights_arch`` weights."""
    spec = models.model_spec(payload_arch, 2, 0.2, 0.0)
    weights = models.create_model(weights_arch, 2, weights="none").state_dict()
    path = layout.round_dir(run, fold, 1) / layout.MODEL
    checkpoint.save(path, {"spec": spec, "model": weights, "classes": CLASSES, "preprocess": {"image_size": 32},
                           "identity": run_identity(run, fold, 1)})  # it belongs here: only its architecture is wrong
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("payload_arch", "weights_arch", "message"), [
    (OTHER_ARCH, OTHER_ARCH, f"was built for the architecture {OTHER_ARCH}, but the students of this run are {ARCH}"),
    (ARCH, OTHER_ARCH, f"do not fit the architecture '{ARCH}'"),
])
def test_model_from_another_architecture_is_one_sentence(trained_run, new_images, tmp_path, payload_arch, weights_arch, message):
    run = _copy_run(trained_run, tmp_path / "run")
    path = _replace_model(run, 1, payload_arch, weights_arch)
    result = _invoke("ensemble", "predict", run, new_images, "--out", tmp_path / "p.csv", "--device", "cpu")
    assert result.exit_code == 2
    assert str(path) in result.output and message in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.slow
def test_missing_student_names_the_fold_and_the_way_out(trained_run, new_images, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    (layout.round_dir(run, 1, 1) / layout.MODEL).unlink()
    result = _invoke("ensemble", "predict", run, new_images, "--out", tmp_path / "p.csv", "--device", "cpu")
    assert result.exit_code == 2
    assert "Fold 1 of the run" in result.output
    assert "(fold-1/round-1/model.pt is missing); finish the run with kfold --resume or use --models teachers." in result.output
    # the teachers are all there
    result = _invoke("ensemble", "predict", run, new_images, "--out", tmp_path / "p.csv", "--device", "cpu",
                     "--models", "teachers")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_evaluate_metrics_recompute_from_written_predictions(trained_run, new_images, tmp_path):
    before = _listing(trained_run)
    data = tmp_path / "data.csv"
    cells = sorted(str(p) for p in (new_images / "sub").iterdir())
    pd.DataFrame({"path": cells, "label": [name_fields(p)[1] for p in cells]}).to_csv(data, index=False)
    result = _invoke("ensemble", "evaluate", trained_run, data, "--out", tmp_path / "m.csv", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert _listing(trained_run) == before

    metrics = pd.read_csv(tmp_path / "m.csv", keep_default_na=False, dtype={"fold": str, "voting": str})
    assert list(zip(metrics["fold"], metrics["voting"])) == [("0", ""), ("1", ""), ("ensemble", "majority"), ("ensemble", "soft")]
    assert set(metrics["model"]) == {"student"} and set(metrics["n"]) == {12}
    predictions = pd.read_csv(tmp_path / "m_predictions.csv", keep_default_na=False, dtype={"fold": str, "voting": str})
    probs = _independent_probs(trained_run, ensemble.rows_of(predictions, "0", "")["path"].tolist(), round_=1)
    for _, row in metrics.iterrows():
        rows = ensemble.rows_of(predictions, row["fold"], row["voting"])
        assert len(rows) == 12
        assert row["accuracy"] == pytest.approx(accuracy_score(rows["label"], rows["pred"]))
        if row["voting"]:
            expected = np.array(CLASSES, dtype=object)[vote(probs, row["voting"]).pred]
        else:
            expected = np.array(CLASSES, dtype=object)[probs[int(row["fold"])].argmax(axis=1)]
        assert list(rows["pred"]) == list(expected)
