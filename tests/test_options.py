"""Each technique from the reference studies is an option, and each option takes effect.

Tests run the real training loop (``engine.train_one_epoch``, ``trainer.train_model``)
on a few generated 8-32 px images. Most use a tiny stand-in model (a conv and a
linear head ``fc``); the freezing tests use a real EfficientNet-B0.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from noisystudent import layout, models
from noisystudent.config.parsing import parse_progressive_resize
from noisystudent.config.run_config import RunConfig
from noisystudent.data.cache import build_cache
from noisystudent.data.manifest import FOLD, LABEL, PATH, PATIENT, ROLE, ROLE_VALIDATION
from noisystudent.data.preprocess import PreprocessSpec, load_preprocessed
from noisystudent.errors import ConfigError
from noisystudent.inference import backends
from noisystudent.inference.predict import predict_probs
from noisystudent.models import checkpoint
from noisystudent.progress import NULL_PROGRESS, Progress
from noisystudent.run import pipeline
from noisystudent.training import engine, optim, sampling, trainer
from noisystudent.training.augment import IMAGENET_MEAN, IMAGENET_STD, create_augment, normalize
from noisystudent.training.engine import StepContext, TrainSet
from noisystudent.training.seeding import make_generator
from noisystudent.training.trainer import ModelJob, train_model

CPU = torch.device("cpu")
CLASSES = ["all", "hem"]
LITE = "efficientnet-lite0"


class Tiny(torch.nn.Module):
    """A deterministic two-layer classifier (backbone ``conv``, head ``fc``) that records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 2)
        self.inputs: list[tuple[bool, torch.Tensor]] = []  # (training, batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append((self.training, x.detach().clone()))
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _job(tmp_path, arch="efficientnet-b0", n_train=8, n_val=4, size=32, images=None, weights="none"):
    """A hand-made ModelJob over ``n_train`` + ``n_val`` generated images, and its load_batch."""
    images = _images(n_train + n_val, size) if images is None else images
    labels = np.arange(n_train + n_val) % 2
    out = tmp_path / "model"
    out.mkdir(parents=True, exist_ok=True)
    job = ModelJob(
        name="test", out_dir=out, arch=arch, weights=weights, dropout=0.0, drop_connect=0.0, augment_level="none",
        train_set=TrainSet(torch.arange(n_train), torch.eye(2)[labels[:n_train]]),
        val_rows=torch.arange(n_train, n_train + n_val), val_labels=labels[n_train:], classes=CLASSES, seed=0,
    )
    return job, lambda rows: images[rows]


def _config(**settings) -> RunConfig:
    base = dict(epochs=1, batch_size=4, image_size=32, weights="none", eval_batch_size=16, scheduler="none")
    return RunConfig(**{**base, **settings})


@pytest.fixture
def tiny_models(monkeypatch):
    """Make train_model build Tiny models; the list holds every model built."""
    built: list[Tiny] = []

    def build(job, config, device):
        built.append(Tiny())
        return built[-1]

    monkeypatch.setattr(trainer, "build_model", build)
    return built


def _history(job) -> pd.DataFrame:
    return pd.read_csv(job.out_dir / layout.HISTORY)


# --- class imbalance: sampler and class weights ---

def _epoch_spy(monkeypatch, sampler: str, labels: list[int], batch_size: int = 6):
    """Run one epoch; return (class labels per batch from the loss's targets, cache rows loaded)."""
    batches, rows_seen = [], []
    original = engine.soft_cross_entropy

    def loss_spy(logits, targets, *args, **kwargs):
        batches.append(targets.argmax(dim=1).tolist())
        return original(logits, targets, *args, **kwargs)

    monkeypatch.setattr(engine, "soft_cross_entropy", loss_spy)
    images = _images(len(labels), 8)

    def load_batch(rows):
        rows_seen.extend(rows.tolist())
        return images[rows]

    model = Tiny()
    step = StepContext(optimizer=torch.optim.SGD(model.parameters(), lr=0.01), device=CPU)
    train_set = TrainSet(torch.arange(len(labels)), torch.eye(2)[labels])
    engine.train_one_epoch(model, load_batch, train_set, create_augment("none"), step, make_generator(0),
                           batch_size, sampler_mode=sampler)
    return batches, rows_seen


IMBALANCED = [0] * 12 + [1] * 4  # 12 ALL, 4 HEM


@pytest.mark.slow
def test_oversampling_balances_the_batches_the_model_sees(monkeypatch):
    batches, rows = _epoch_spy(monkeypatch, "oversample", IMBALANCED)
    assert Counter(label for batch in batches for label in batch) == {0: 12, 1: 12}
    assert len(batches) == 4  # 24 images in batches of 6
    counts = Counter(rows)
    assert all(counts[row] == 1 for row in range(12))  # majority: once each
    assert all(counts[row] == 3 for row in range(12, 16))  # minority: each repeated, as evenly as possible


@pytest.mark.slow
def test_undersampling_cuts_the_majority(monkeypatch):
    batches, rows = _epoch_spy(monkeypatch, "undersample", IMBALANCED)
    assert Counter(label for batch in batches for label in batch) == {0: 4, 1: 4}
    assert len(set(rows)) == 8 and set(range(12, 16)) <= set(rows)


@pytest.mark.slow
def test_no_sampler_keeps_the_imbalance(monkeypatch):
    batches, rows = _epoch_spy(monkeypatch, "none", IMBALANCED)
    assert Counter(label for batch in batches for label in batch) == {0: 12, 1: 4}
    assert sorted(rows) == list(range(16))


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["balanced", "1,3"])
def test_class_weighted_loss_is_weighted_cross_entropy(spec):
    labels = torch.tensor(IMBALANCED)
    images = _images(len(labels), 8)
    model = Tiny()
    weights = sampling.class_weights(labels.numpy(), 2, spec)
    with torch.no_grad():
        logits = model(normalize(images))
    expected = F.cross_entropy(logits, labels, weight=weights)
    assert not math.isclose(float(expected), float(F.cross_entropy(logits, labels)), rel_tol=1e-3)
    step = StepContext(optimizer=torch.optim.SGD(model.parameters(), lr=0.01), device=CPU, class_weights=weights)
    stats = engine.train_one_epoch(model, lambda rows: images[rows], TrainSet(torch.arange(16), torch.eye(2)[labels]),
                                   create_augment("none"), step, make_generator(0), batch_size=16)
    assert stats["train_loss"] == pytest.approx(float(expected), rel=1e-5)  # one batch: the loss before the step


@pytest.mark.slow
def test_train_model_passes_optimizer_weights_smoothing_and_sampler_to_the_loop(tmp_path, tiny_models, monkeypatch):
    calls = []
    original = engine.train_one_epoch

    def spy(model, load_batch, train_set, augment, step, generator, batch_size, sampler_mode="none", *args, **kwargs):
        calls.append((step, sampler_mode))
        return original(model, load_batch, train_set, augment, step, generator, batch_size, sampler_mode, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    job, load_batch = _job(tmp_path, size=8)
    config = _config(class_weights="1,3", label_smoothing=0.1, sampler="oversample", optimizer="adamw")
    train_model(job, config, load_batch, CPU)
    step, sampler_mode = calls[0]
    assert type(step.optimizer) is torch.optim.AdamW
    assert step.class_weights.tolist() == [1.0, 3.0]
    assert step.label_smoothing == 0.1
    assert sampler_mode == "oversample"


# --- preprocessing reaches the cache ---

def _bordered_cell(path, seed):
    """A 64x64 image: black border, a noisy low-contrast 48x48 cell in the middle.

    (PIL leaves images of fewer than 256 pixels unequalised: the cell must be larger.)
    """
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[8:56, 8:56] = np.random.default_rng(seed).integers(100, 131, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_preprocessing_options_change_the_cache(tmp_path):
    paths = [_bordered_cell(tmp_path / f"cell{i}.png", i) for i in range(3)]
    plain = build_cache(paths, PreprocessSpec.from_config(RunConfig(image_size=16)), tmp_path / "cache")
    config = RunConfig(image_size=16, crop_black=True, crop_threshold=20, equalize="grey", center_crop=0.8)
    processed = build_cache(paths, PreprocessSpec.from_config(config), tmp_path / "cache")
    assert processed.npy_path != plain.npy_path  # a new cache file for new settings
    assert processed.array.shape == plain.array.shape == (3, 3, 16, 16)
    assert (plain.array[:, :, 0, 0] == 0).all()  # the black border is still there ...
    assert (processed.array[:, :, 0, 0] > 0).all()  # ... and cropped away
    grey = processed.array.astype(int)
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()  # grey equalisation
    spec = PreprocessSpec.from_config(config)
    for row, path in enumerate(paths):
        np.testing.assert_array_equal(processed.array[row], load_preprocessed(path, spec))
        crop_only = load_preprocessed(path, PreprocessSpec(16, True, 20, "none", 0.8)).astype(int)
        assert np.ptp(grey[row]) > np.ptp(crop_only) + 40  # equalisation spreads the grey levels


# --- test-time augmentation ---

@pytest.mark.parametrize("mode, views", [("none", 1), ("flips", 4), ("dihedral", 8), ("five_crop", 5), ("ten_crop", 10)])
def test_predict_probs_calls_the_model_once_per_view(mode, views):
    model = Tiny()
    images = _images(8, 16)
    probs = predict_probs(model, lambda rows: images[rows], torch.arange(8), CPU, batch_size=4, tta_mode=mode)
    assert len(model.inputs) == 2 * views  # 2 batches of 4
    assert all(batch.shape == (4, 3, 16, 16) for _, batch in model.inputs)
    first_batch = [batch for _, batch in model.inputs[:views]]
    assert len({tuple(view.flatten().tolist()) for view in first_batch}) == views  # all different views
    assert probs.shape == (8, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


# --- config validation ---

@pytest.mark.parametrize("settings", [
    {"arch": "nope"},
    {"student_arch": "efficientnet-b9"},
    {"class_weights": "heavy"},
    {"class_weights": "1,x"},
    {"class_weights": "-1,2"},
    {"class_weights": "0,0"},
    {"class_weights": "1,nan"},
    {"progressive_resize": "32-2"},
    {"progressive_resize": "64:2", "image_size": 32},
    {"progressive_resize": "16:0"},
])
def test_bad_option_values_fail_at_construction(settings):
    with pytest.raises(ConfigError):
        RunConfig(**settings)


def test_good_option_values_are_accepted_and_kept():
    for arch in models.ARCHITECTURES:
        config = RunConfig(arch=arch, student_arch=arch)
        assert (config.arch, config.student_architecture) == (arch, arch)
    labels = np.array([0, 0, 0, 1])
    for spec, weights in (("none", None), ("balanced", [4 / 6, 2.0]), ("1,3", [1.0, 3.0]), ("0.5, 2", [0.5, 2.0])):
        config = RunConfig(class_weights=spec)
        assert config.class_weights == spec
        got = sampling.class_weights(labels, 2, config.class_weights)
        assert (got is None) if weights is None else got.tolist() == pytest.approx(weights)
    config = RunConfig(progressive_resize="16:2,24:2", image_size=32)
    assert parse_progressive_resize(config.progressive_resize, 5, config.image_size) == [16, 16, 24, 24, 24]


def test_every_technique_has_a_kfold_flag():
    from noisystudent.cli.commands import app

    result = CliRunner().invoke(app, ["kfold", "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0
    for flag in ("--class-weights", "--sampler", "--crop-black", "--crop-threshold", "--equalize", "--center-crop",
                 "--image-size", "--tta", "--arch", "--freeze", "--head-warmup-epochs", "--scheduler", "--optimizer",
                 "--early-stopping", "--label-smoothing", "--progressive-resize", "--step-size", "--gamma"):
        assert flag in result.output, flag


# --- frozen backbone and head warm-up (a real EfficientNet-B0) ---

@pytest.fixture(scope="module")
def b0_weights(tmp_path_factory):
    """A B0 weights file standing in for pretrained weights.

    A random B0 in eval mode (what a frozen backbone is) passes features of
    ~1e-13 to its head, too small to move it; one forward pass in train mode
    with cumulative BatchNorm averaging gives it the statistics of real features.
    """
    model = models.create_model("efficientnet-b0", 2, weights="none", dropout=0.0, drop_connect=0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model.train()(normalize(_images(8, 32, seed=1)))
    path = tmp_path_factory.mktemp("weights") / "b0-calibrated.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _is_head(key: str) -> bool:
    return key.startswith("_fc.")


class EpochStates(Progress):
    """The model state of every epoch: read from checkpoint.pt when train_model reports the epoch done."""

    def __init__(self, job: ModelJob) -> None:
        self.job, self.epochs = job, []

    def update(self, key, completed=None, description=None, **info):
        if key == "epoch" and "loss" in info:  # the report after an epoch's checkpoint, not the one at the start
            self.epochs.append(checkpoint.load(self.job.out_dir / layout.CHECKPOINT)["model"])


def _changed(before: dict, after: dict, head: bool) -> list[str]:
    return [k for k in before if _is_head(k) == head and not torch.equal(before[k], after[k])]


@pytest.mark.slow
def test_frozen_backbone_trains_only_the_head(tmp_path, b0_weights):
    job, load_batch = _job(tmp_path, n_train=4, n_val=4, weights=b0_weights)
    config = _config(freeze="backbone", lr=0.05, batch_size=4, eval_batch_size=4)
    initial = trainer.build_model(job, config, CPU).state_dict()  # the weights file: the same every time
    train_model(job, config, load_batch, CPU)
    final = checkpoint.load(job.out_dir / layout.CHECKPOINT)["model"]
    assert any("running_mean" in k for k in initial)
    assert _changed(initial, final, head=False) == []  # weights and BatchNorm statistics bit-identical
    assert _changed(initial, final, head=True) == ["_fc.weight", "_fc.bias"]


@pytest.mark.slow
def test_head_warmup_freezes_the_backbone_for_its_epochs_only(tmp_path, b0_weights):
    job, load_batch = _job(tmp_path, n_train=4, n_val=4, weights=b0_weights)
    config = _config(epochs=2, head_warmup_epochs=1, lr=0.05, batch_size=4, eval_batch_size=4)
    initial = trainer.build_model(job, config, CPU).state_dict()  # the weights file: the same every time
    states = EpochStates(job)
    train_model(job, config, load_batch, CPU, states)
    after_1, after_2 = states.epochs
    assert _changed(initial, after_1, head=False) == []
    assert _changed(initial, after_1, head=True)
    changed = _changed(after_1, after_2, head=False)
    assert "_conv_stem.weight" in changed and "_bn0.running_mean" in changed


# --- schedules, optimisers, early stopping ---

@pytest.mark.slow
def test_step_schedule_in_history(tmp_path, tiny_models):
    job, load_batch = _job(tmp_path, size=8)
    train_model(job, _config(epochs=5, scheduler="step", lr=0.1, step_size=2, gamma=0.5), load_batch, CPU)
    np.testing.assert_allclose(_history(job)[layout.LR], [0.1, 0.1, 0.05, 0.05, 0.025])


@pytest.mark.slow
def test_cosine_schedule_in_history_decays_to_zero(tmp_path, tiny_models):
    job, load_batch = _job(tmp_path, size=8)
    train_model(job, _config(epochs=4, scheduler="cosine", lr=0.1), load_batch, CPU)
    expected = [0.05 * (1 + math.cos(math.pi * epoch / 4)) for epoch in range(4)]
    np.testing.assert_allclose(_history(job)[layout.LR], expected, rtol=1e-6)
    final_lr = checkpoint.load(job.out_dir / layout.CHECKPOINT)["optimizer"]["param_groups"][0]["lr"]
    assert final_lr == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_plateau_schedule_cuts_the_rate_when_the_metric_stalls(tmp_path, tiny_models):
    job, load_batch = _job(tmp_path, size=8)
    # lr so small the validation accuracy cannot change: no epoch after the first improves
    train_model(job, _config(epochs=5, scheduler="plateau", lr=1e-6, gamma=0.5), load_batch, CPU)
    np.testing.assert_allclose(_history(job)[layout.LR], [1e-6] * 4 + [5e-7])  # patience 2


@pytest.mark.slow
def test_early_stopping_stops_when_the_metric_does_not_improve(tmp_path, tiny_models):
    job, load_batch = _job(tmp_path, size=8)
    train_model(job, _config(epochs=6, lr=1e-9, early_stopping=1), load_batch, CPU)
    assert len(_history(job)) == 2  # best at epoch 1, one epoch without improvement
    assert checkpoint.load(job.out_dir / layout.MODEL)["selection"]["epoch"] == 1


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizer_option_picks_the_optimizer(name, cls):
    config = _config(optimizer=name, lr=0.02, weight_decay=0.01, momentum=0.8)
    created = optim.create_optimizer(Tiny().parameters(), config, CPU)
    assert type(created) is cls
    group = created.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.01
    if name == "sgd":
        assert group["momentum"] == 0.8
    else:  # --momentum is SGD's; Adam and AdamW keep their default betas
        assert "momentum" not in group and group["betas"] == (0.9, 0.999)


# --- progressive resizing ---

@pytest.mark.slow
def test_progressive_resize_stages_in_history_and_inputs(tmp_path, tiny_models):
    job, load_batch = _job(tmp_path, size=32)
    train_model(job, _config(epochs=3, progressive_resize="16:1,24:1"), load_batch, CPU)
    assert _history(job)[layout.IMAGE_SIZE].tolist() == [16, 24, 24]
    model = tiny_models[0]
    sizes = [batch.shape[-1] for _, batch in model.inputs]
    # per epoch: 2 training batches of 4, then 1 validation batch
    assert sizes == [16, 16, 16, 24, 24, 24, 24, 24, 24]


# --- input normalisation of the architecture (Lite0: (x - 127) / 128) ---

GREY_127 = torch.full((12, 3, 8, 8), 127, dtype=torch.uint8)


def test_input_normalization_of_archs():
    assert models.input_normalization("efficientnet-b0") == (IMAGENET_MEAN, IMAGENET_STD)
    mean, std = models.input_normalization(LITE)
    x = torch.tensor([[0, 127, 255]], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    torch.testing.assert_close(normalize(x, mean=mean, std=std)[0, 0, 0], torch.tensor([-127, 0, 128]) / 128)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [LITE, "efficientnet-b0"])
def test_trainer_feeds_each_arch_its_normalisation(tmp_path, tiny_models, arch):
    job, load_batch = _job(tmp_path, arch=arch, size=8, images=GREY_127)
    train_model(job, _config(), load_batch, CPU)
    mean, std = models.input_normalization(arch)
    expected = (127 / 255 - torch.tensor(mean)) / torch.tensor(std)
    inputs = tiny_models[0].inputs
    assert {training for training, _ in inputs} == {True, False}  # training batches and validation
    for _, batch in inputs:
        torch.testing.assert_close(batch[0, :, 0, 0], expected.float(), atol=1e-5, rtol=0)


def test_predict_probs_normalization_argument():
    model = Tiny()
    predict_probs(model, lambda rows: GREY_127[rows], torch.arange(2), CPU,
                         normalization=models.input_normalization(LITE))
    predict_probs(model, lambda rows: GREY_127[rows], torch.arange(2), CPU)
    torch.testing.assert_close(model.inputs[0][1], torch.zeros(2, 3, 8, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.inputs[1][1], normalize(GREY_127[:2]))


class _FakeCache:
    def __init__(self, images):
        self.images = images

    def index_of(self, paths):
        return [int(path.removeprefix("img")) for path in paths]

    def batch(self, rows, device):
        return self.images[rows]


def test_pipeline_predicts_with_the_model_arch_normalisation_and_tta(tmp_path, monkeypatch):
    model = models.create_model(LITE, 2, weights="none")
    out = layout.round_dir(tmp_path, 0, 0)
    out.mkdir(parents=True)
    checkpoint.save(out / layout.MODEL, {"spec": model.noisystudent_spec, "model": model.state_dict()})
    folds = pd.DataFrame({PATH: ["img0", "img1"], LABEL: CLASSES, PATIENT: ["p1", "p2"],
                          FOLD: [0, 0], ROLE: [ROLE_VALIDATION] * 2})
    step = pipeline.RunContext(tmp_path, RunConfig(tta="flips", image_size=8), CLASSES, folds,
                              _FakeCache(GREY_127[:2]), CPU, NULL_PROGRESS)
    calls = []
    original = backends.predict_probs

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(backends, "predict_probs", spy)
    table = pipeline.predict_round(step, 0, 0)
    args, kwargs = calls[0]
    passed = inspect.signature(original).bind(*args, **kwargs).arguments
    assert passed["normalization"] == models.input_normalization(LITE)
    assert passed["tta_mode"] == "flips"
    assert len(table) == 2
