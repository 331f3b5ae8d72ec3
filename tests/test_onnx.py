"""The exported ONNX ensemble and the ONNX Runtime backend give the numbers of eager PyTorch.

One tiny EfficientNet-B0 run (2 folds, teachers only, 32 px) is trained once
for the module. ``ensemble predict --backend torch`` is the reference; the
ONNX backend and the standalone scripts/onnx_predict.py (run in a process
where importing torch or noisystudent fails) must match its probabilities
within 1e-4 and its calls exactly, on generated images and on the real
C-NMC sample.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra)")
pytest.importorskip("onnx", reason="onnx is not installed (the onnx extra)")

from helpers import REPO  # noqa: E402

from noisystudent.cli import app  # noqa: E402
from noisystudent.config.run_config import RunConfig  # noqa: E402
from noisystudent.data import prefetch  # noqa: E402
from noisystudent.data.preprocess import PreprocessSpec, load_preprocessed  # noqa: E402
from noisystudent.errors import ConfigError  # noqa: E402
from noisystudent.evaluation.voting import majority_vote  # noqa: E402
from noisystudent.inference import backends, onnx_export, onnx_runtime  # noqa: E402
from noisystudent.inference.model_set import ModelSet  # noqa: E402
from noisystudent.models import create_model  # noqa: E402
from noisystudent.run.pipeline import run_kfold  # noqa: E402

TOLERANCE = 1e-4
CLASSES = ["all", "hem"]
runner = CliRunner()


def _cells(folder: Path, count: int, seed: int, size: int = 24) -> Path:
    """Random-texture cells, C-NMC-named, class shown by a brighter red (all) or green (hem) channel."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = CLASSES[i % 2]
        pixels = rng.integers(0, 160, (size, size + 4 * (i % 3), 3), dtype=np.uint8)  # some not square
        pixels[..., i % 2] += np.uint8(90)
        path = folder / label / f"UID_{i % 4 + 1}_{i}_1_{label}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return folder


@pytest.fixture(scope="module")
def b0_run(tmp_path_factory) -> Path:
    """2 EfficientNet-B0 teachers, 1 epoch at 32 px; precise BN so that outputs differ between images."""
    root = tmp_path_factory.mktemp("onnx")
    data = root / "data"
    for p in range(8):
        label = CLASSES[p % 2]
        rng = np.random.default_rng(p)
        for i in range(3):
            pixels = rng.integers(0, 160, (24, 24, 3), dtype=np.uint8)
            pixels[..., p % 2] += np.uint8(90)
            (data / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(data / label / f"p{p}_{i}.png")
    config = RunConfig(
        data=str(data), patient_regex=r"^(p\d+)_", folds=2, rounds=0, epochs=1, image_size=32, batch_size=8,
        weights="none", arch="efficientnet-b0", optimizer="adamw", lr=3e-3, scheduler="none", bn_momentum=0.5,
        precise_bn_batches=4, device="cpu", workers=1, eval_batch_size=16,
        test_fraction=0.0,  # every patient trains: the models these comparisons were written against
    )
    run_kfold(config, root / "run")
    return root / "run"


@pytest.fixture(autouse=True)
def _export_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(tmp_path / "onnx-cache"))


def _invoke(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"path": str}, keep_default_na=False).sort_values("path").reset_index(drop=True)


def _standalone(model: Path, images: Path, out: Path, *extra: str) -> pd.DataFrame:
    """scripts/onnx_predict.py in a fresh process in which torch and noisystudent cannot be imported."""
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['noisystudent'] = None; "
            f"sys.argv = {['onnx_predict.py', str(model), str(images), '--out', str(out), *extra]!r}; "
            f"runpy.run_path({str(REPO / 'scripts' / 'onnx_predict.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return _read(out)


def _assert_same(reference: pd.DataFrame, other: pd.DataFrame) -> None:
    assert list(reference["path"]) == list(other["path"])
    for name in CLASSES:
        assert np.abs(reference[f"prob_{name}"] - other[f"prob_{name}"]).max() < TOLERANCE
    for column in ("pred", "vote_fold0", "vote_fold1"):
        assert list(reference[column]) == list(other[column])
    assert np.abs(reference["agreement"] - other["agreement"]).max() < 1e-9


def _predict(run: Path, images: Path, out: Path, backend: str, *extra) -> pd.DataFrame:
    _invoke("ensemble", "predict", run, images, "--out", out, "--backend", backend, "--models", "teachers", "-q", *extra)
    return _read(out)


@pytest.mark.slow
@pytest.mark.parametrize("voting", ["majority", "soft"])
def test_export_runs_without_torch_and_matches_predict(b0_run, tmp_path, voting):
    images = _cells(tmp_path / "new", 14, seed=7)
    reference = _predict(b0_run, images, tmp_path / "torch.csv", "torch", "--voting", voting)
    assert reference["prob_all"].std() > 1e-3 and reference["pred"].nunique() == 2  # a test that can fail
    model = tmp_path / "ensemble.onnx"
    _invoke("ensemble", "export", b0_run, "--out", model, "--voting", voting, "--models", "teachers")
    meta = onnx_export.read_metadata(model)
    assert (meta["classes"], meta["voting"], meta["folds"], meta["preprocess"]["image_size"]) == (CLASSES, voting, [0, 1], 32)
    _assert_same(reference, _standalone(model, images, tmp_path / "standalone.csv"))


@pytest.mark.slow
def test_onnx_backend_matches_torch_with_tta(b0_run, tmp_path):
    images = _cells(tmp_path / "new", 10, seed=3)
    for tta in ("none", "flips", "dihedral"):
        reference = _predict(b0_run, images, tmp_path / f"t-{tta}.csv", "torch", "--tta", tta, "--batch-size", "4")
        _assert_same(reference, _predict(b0_run, images, tmp_path / f"o-{tta}.csv", "onnx", "--tta", tta, "--batch-size", "4"))


@pytest.mark.slow
def test_cnmc_sample_same_probabilities_and_calls(b0_run, cnmc_sample, tmp_path):
    reference = _predict(b0_run, cnmc_sample, tmp_path / "torch.csv", "torch")
    assert len(reference) >= 50
    _assert_same(reference, _predict(b0_run, cnmc_sample, tmp_path / "onnx.csv", "onnx"))
    model = tmp_path / "ensemble.onnx"
    _invoke("ensemble", "export", b0_run, "--out", model, "--models", "teachers")
    _assert_same(reference, _standalone(model, cnmc_sample, tmp_path / "standalone.csv"))


@pytest.mark.slow
def test_second_predict_reads_the_cached_export(b0_run, tmp_path, monkeypatch):
    images = _cells(tmp_path / "new", 4, seed=1)
    first = _predict(b0_run, images, tmp_path / "a.csv", "onnx")
    assert len(list(onnx_runtime.cache_dir().glob("*.onnx"))) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_ensemble_bytes", no_export)
    pd.testing.assert_frame_equal(first, _predict(b0_run, images, tmp_path / "b.csv", "onnx"))


class _Fixed(torch.nn.Module):
    """A 'classifier' whose logits for image i are row i of a table (read from the first pixel)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (x[:, 0, 0, 0] * 0.229 + 0.485).mul(255).round().long()  # undo the normalisation
        return self.logits.index_select(0, index)


def test_graph_majority_vote_breaks_ties_like_voting_module():
    # 3 models, 3 classes, images with clear majorities, 1-1-1 ties and 2-model ties
    logits = torch.randn(3, 40, 3, generator=torch.Generator().manual_seed(0)) * 3
    logits[:, :5] = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]).unsqueeze(1)  # three-way ties
    graph = onnx_export.build_graph([_Fixed(m) for m in logits], [((0.485,) * 3, (0.229,) * 3)] * 3, "none", "majority")
    pixels = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 4, 4).contiguous()
    expected = majority_vote(torch.softmax(logits, dim=2).numpy())
    model = onnx_export.export_graph(graph, 4, {"format": onnx_export.EXPORT_FORMAT})
    session = onnx_runtime.create_session(model, threads=1)
    fold_probs, probs, pred, agreement = session.run(list(onnx_export.OUTPUTS), {onnx_export.INPUT: pixels.numpy()})
    np.testing.assert_array_equal(pred, expected.pred)
    np.testing.assert_allclose(probs, expected.probs, atol=1e-6)
    np.testing.assert_allclose(agreement, expected.agreement, atol=1e-6)
    np.testing.assert_allclose(agreement[:5], 1 / 3, atol=1e-6)  # the three-way ties


@pytest.mark.slow
def test_b0_graph_matches_eager_at_224():
    """The exporter's path for EfficientNet-B0 (swish, TF-same padding) at the real working size."""
    torch.manual_seed(0)
    model = create_model("efficientnet-b0", 2, weights="none", memory_efficient_swish=True).eval()
    for module in model.modules():  # BN statistics that make outputs differ between images
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.2, 0.2)
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    one_model = ModelSet((model,), (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),), torch.device("cpu"), "auto", False, 224)
    predict = backends.model_predictor(one_model, "none", "onnx")
    eager = backends.model_predictor(one_model, "none", "torch")
    assert np.abs(predict(pixels.numpy()) - eager(pixels.numpy())).max() < TOLERANCE


def test_prefetch_keeps_order_lists_unreadable_and_decodes_only_ahead(tmp_path, monkeypatch):
    paths = []
    for i in range(10):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (6, 4), (i * 20, 0, 0)).save(path)
        paths.append(str(path))
    (tmp_path / "bad.png").write_text("not an image")
    paths.insert(3, str(tmp_path / "bad.png"))
    decoded = []
    original = prefetch.load_preprocessed
    monkeypatch.setattr(prefetch, "load_preprocessed", lambda p, s: decoded.append(p) or original(p, s))
    batches = prefetch.decoded_batches(paths, PreprocessSpec(image_size=8), batch_size=2, workers=2, ahead=1)
    first = next(batches)
    assert len(decoded) <= 4  # this batch and one ahead, not all 11
    rest = list(batches)
    assert [r for b in [first, *rest] for r in b.rows] == [i for i in range(11) if i != 3]
    assert [u[0] for b in rest for u in b.unreadable] == [3]
    assert first.pixels.shape == (2, 3, 8, 8) and first.pixels[1, 0, 4, 4] == 20


def test_onnx_backend_missing_is_one_sentence(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "available", lambda: False)
    assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ConfigError, match="onnx extra"):
        backends.resolve_backend("onnx", torch.device("cpu"))
    with pytest.raises(ConfigError, match="--backend must be one of"):
        backends.resolve_backend("tensorrt", torch.device("cpu"))
    assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.undo()
    assert backends.resolve_backend("auto", torch.device("cpu")) == "onnx"
    assert backends.resolve_backend("auto", torch.device("cuda")) == "torch"


@pytest.mark.slow
def test_cli_unknown_backend_is_one_sentence(b0_run, tmp_path):
    images = _cells(tmp_path / "new", 2, seed=1)
    result = runner.invoke(app, ["ensemble", "predict", str(b0_run), str(images), "--backend", "tensorrt",
                                 "--out", str(tmp_path / "p.csv"), "--models", "teachers"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--backend must be one of auto, onnx, torch" in " ".join(result.output.split())


@pytest.mark.slow
def test_kfold_predictions_through_onnx_match_torch(tmp_path, monkeypatch):
    """kfold's per-model predictions (pseudo-labels, metrics) through ONNX Runtime when it pays off."""
    data = tmp_path / "data"
    for p in range(8):
        rng = np.random.default_rng(p)
        for i in range(3):
            pixels = rng.integers(0, 160, (24, 24, 3), dtype=np.uint8)
            pixels[..., p % 2] += np.uint8(90)
            (data / CLASSES[p % 2]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(data / CLASSES[p % 2] / f"p{p}_{i}.png")
    config = RunConfig(data=str(data), patient_regex=r"^(p\d+)_", folds=2, rounds=0, epochs=1, image_size=32,
                       batch_size=8, weights="none", arch="resnet18", optimizer="adamw", lr=3e-3, scheduler="none",
                       device="cpu", workers=1, eval_batch_size=5)
    chosen = []
    original = backends.model_predictor
    monkeypatch.setattr(backends, "model_predictor", lambda *a: chosen.append(a[-1]) or original(*a))
    run_kfold(config, tmp_path / "torch")
    monkeypatch.setattr(backends, "EXPORT_PAYS_OFF", 0)
    run_kfold(config, tmp_path / "onnx")
    assert chosen == ["onnx", "onnx"]  # the first run stayed in PyTorch (too little work), the second did not
    for fold in range(2):
        torch_table = pd.read_csv(tmp_path / "torch" / f"fold-{fold}" / "round-0" / "predictions.csv")
        onnx_table = pd.read_csv(tmp_path / "onnx" / f"fold-{fold}" / "round-0" / "predictions.csv")
        assert torch_table["prob_all"].std() > 1e-3
        assert np.abs(torch_table["prob_all"] - onnx_table["prob_all"]).max() < TOLERANCE
        assert list(torch_table["pred"]) == list(onnx_table["pred"])


@pytest.mark.parametrize("mode, size", [("RGB", (40, 30)), ("I;16", (30, 50)), ("P", (300, 20)), ("RGBA", (700, 90)), ("L", (1, 900))])
def test_standalone_preprocessing_equals_the_package(tmp_path, mode, size):
    """scripts/onnx_predict.py copies load_rgb + preprocess (it must run without this package): same pixels,
    also for images large enough to be shrunk before padding."""
    import runpy

    standalone = runpy.run_path(str(REPO / "scripts" / "onnx_predict.py"))
    values = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(values, "RGBA").convert(mode) if mode != "I;16" else Image.fromarray(values[..., 0].astype(np.uint16) * 200)
    path = tmp_path / "cell.png"
    image.save(path)
    spec = PreprocessSpec(image_size=16)
    meta = {"image_size": 16, "crop_black": False, "crop_threshold": 10, "equalize": "none", "center_crop": 1.0}
    expected = load_preprocessed(str(path), spec)
    got = standalone["preprocess"](standalone["load_rgb"](path, standalone["REDUCE_ABOVE"] * 16), meta)
    np.testing.assert_array_equal(got, expected)
