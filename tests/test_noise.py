"""The paper's noise and how students start: RandAugment's 16 operations, applied per image to students only;
the noisy-student preset's pseudo-labels; the small-student warning; --student-init."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from test_method_guards import recorded  # noqa: F401 (fixture: pipeline with a recording trainer)

from noisystudent import layout, models
from noisystudent.config.run_config import RunConfig, differing_result_keys
from noisystudent.config.settings import make_config
from noisystudent.errors import ConfigError
from noisystudent.models import checkpoint
from noisystudent.models.architectures import PARAMETERS_M
from noisystudent.run import pipeline
from noisystudent.run.folder import edited_keys, settings_digest
from noisystudent.run.preflight import method_warnings
from noisystudent.training import randaugment
from noisystudent.training.augment import create_augment, normalize
from noisystudent.training.randaugment import RANDAUGMENT_OPS, apply_ops, rand_augment
from noisystudent.training.trainer import build_model

OFFICIAL_OPS = {"auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize", "color", "contrast", "brightness",
                "sharpness", "shear_x", "shear_y", "translate_x", "translate_y", "solarize_add", "cutout"}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _cells(count=8, size=32, seed=5):
    """Dark images with a bright, textured, off-centre rectangle (a cell)."""
    x = torch.full((count, 3, size, size), 20 / 255)
    x[:, :, 6:22, 9:27] = torch.randint(60, 256, (count, 3, 16, 18), generator=_gen(seed)).float() / 255
    return x


# --- RandAugment ---

def test_the_official_sixteen_operations_are_there():
    assert set(RANDAUGMENT_OPS) == OFFICIAL_OPS and len(RANDAUGMENT_OPS) == 16


@pytest.mark.parametrize("name", sorted(OFFICIAL_OPS))
def test_each_operation_changes_the_image_and_keeps_shape_dtype_and_range(name):
    x = _cells()
    out = RANDAUGMENT_OPS[name](x, 0.9, torch.rand((len(x), randaugment.PARAMS), generator=_gen(1)))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().amax() > 0.05, f"{name} left the image as it was"


@pytest.mark.parametrize("name,reference", [
    ("equalize", ImageOps.equalize), ("auto_contrast", ImageOps.autocontrast), ("invert", ImageOps.invert),
    ("posterize", lambda im: ImageOps.posterize(im, 3)), ("solarize", lambda im: ImageOps.solarize(im, 230)),
])
def test_pixel_operations_equal_pil_at_magnitude_9(name, reference):
    x = _cells(count=2)
    out = RANDAUGMENT_OPS[name](x, 0.9, torch.zeros((2, randaugment.PARAMS)))
    for image, result in zip(x, out):
        pil = reference(Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()))
        ours = (result * 255).round().byte().permute(1, 2, 0).numpy().astype(int)
        # PIL truncates the stretched values of autocontrast to integers; these stay float (within 1 level)
        assert np.abs(ours - np.asarray(pil).astype(int)).max() <= (1 if name == "auto_contrast" else 0)


def test_geometric_operations_draw_their_sign_per_image_and_match_the_magnitude_scale():
    x = _cells(count=2)
    params = torch.tensor([[0.2, 0.0, 0.0], [0.8, 0.0, 0.0]])  # sign - and +
    left, right = RANDAUGMENT_OPS["translate_x"](x, 0.2, params)  # (100 / 224) * 0.2 of 32 px = 2.86 px
    def centre(img):  # of the cell's mass above the background, in columns
        mass = (img - 20 / 255).clamp_min(0).sum(dim=(0, 1))
        return (mass * torch.arange(32)).sum() / mass.sum()

    shift = 32 * randaugment.TRANSLATE * 0.2
    assert centre(left) - centre(x[0]) == pytest.approx(shift, abs=0.3)
    assert centre(right) - centre(x[1]) == pytest.approx(-shift, abs=0.3)


def test_two_images_of_one_batch_get_different_operations_and_parameters():
    x = _cells(count=1).expand(64, -1, -1, -1).contiguous()
    choice, params = randaugment.draw_ops(64, _gen(0), x.device)
    assert len(set(choice.tolist())) >= 12 and len(set(params[:, 0].tolist())) == 64
    out = rand_augment(x, _gen(0), ops=1, magnitude=9)
    # more distinct results than operations: signs and Cutout positions are drawn per image too
    assert len({tuple(o.flatten().tolist()) for o in out}) > 16
    # each image got exactly the op it drew: the batched result equals the op applied to that image alone
    for i in (0, 1, 2, 3):
        alone = list(RANDAUGMENT_OPS.values())[int(choice[i])](x[i:i + 1], 0.9, params[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("apply", [apply_ops, randaugment._apply_everywhere])  # the CPU's grouping and the GPU's way
def test_apply_ops_gives_each_image_its_own_operation(apply):
    x = _cells(count=32)
    choice = torch.arange(32) % 16
    params = torch.rand((32, randaugment.PARAMS), generator=_gen(3))
    out = apply(x, choice, params, 0.9)
    for i in range(32):
        op = list(RANDAUGMENT_OPS.values())[i % 16]
        torch.testing.assert_close(out[i:i + 1], op(x[i:i + 1], 0.9, params[i:i + 1]), atol=1e-5, rtol=0)


def test_the_same_generator_seed_gives_the_same_result_and_another_seed_another():
    x = _cells(count=16)
    a, b, c = (rand_augment(x, _gen(s), ops=2, magnitude=9) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ops_and_magnitude_reach_the_augmentation():
    aug = create_augment("none", True, randaugment_ops=3, randaugment_magnitude=12)
    assert (aug.randaugment_ops, aug.randaugment_magnitude) == (3, 12)
    x = (_cells(count=8) * 255).byte()
    assert not torch.equal(aug(x, _gen(0)), create_augment("none", True)(x, _gen(0)))


def test_randaugment_is_bounded_and_checked_before_anything_is_written():
    for settings in ({"randaugment_ops": 0}, {"randaugment_magnitude": 31}, {"randaugment_magnitude": -1}):
        with pytest.raises(ConfigError, match=next(iter(settings))):
            RunConfig(**settings)


# --- teacher vs student ---

@pytest.mark.parametrize("teacher_augment,student_augment", [("strong", "light"), ("strong", "none"), ("light", "strong")])
def test_randaugment_noises_students_at_any_level_and_never_the_teacher(recorded, teacher_augment, student_augment):  # noqa: F811
    _, jobs = recorded(randaugment=True, teacher_augment=teacher_augment, student_augment=student_augment)
    assert not jobs[0].randaugment and jobs[1].randaugment
    assert (jobs[0].augment_level, jobs[1].augment_level) == (teacher_augment, student_augment)
    _, without = recorded(randaugment=False, student_augment=student_augment)
    assert not without[1].randaugment


def test_the_trainer_builds_randaugment_from_the_job(monkeypatch, recorded):  # noqa: F811
    from noisystudent.training import trainer

    run_ctx, jobs = recorded(randaugment=True, student_augment="light", teacher_augment="strong", randaugment_ops=3)
    built = []
    monkeypatch.setattr(trainer, "create_augment", lambda *a, **k: built.append(a) or create_augment(*a, **k))
    monkeypatch.setattr(trainer.engine, "train_one_epoch", lambda *a, **k: {"train_loss": 0.0, "images_per_s": 0.0})
    monkeypatch.setattr(trainer, "predict_probs", lambda *a, **k: np.full((len(jobs[0].val_labels), 2), 0.5))
    for job in (jobs[0], jobs[1]):
        model = build_model(job, run_ctx.config, torch.device("cpu"))
        trainer._one_epoch(job, run_ctx.config, model, model, _step(model), 0, 32, None, trainer.NULL_PROGRESS)
    assert [(level, ra) for level, ra, *_ in built] == [("strong", False), ("light", True)]
    assert built[1][5:] == (3, run_ctx.config.randaugment_magnitude)


def _step(model):
    from noisystudent.training import engine

    return engine.StepContext(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device=torch.device("cpu"), amp_dtype=None,
                              scaler=None, class_weights=None, label_smoothing=0.0, channels_last=False)


def test_evaluation_input_is_never_augmented():
    aug = create_augment("strong", True, randaugment_magnitude=20)
    x = (_cells(count=4) * 255).byte()
    assert torch.equal(aug.normalize(x), normalize(x))


def test_a_strong_teacher_with_randaugment_warns_that_it_stays_without():
    warnings = method_warnings(make_config("/d", randaugment=True, teacher_augment="strong"))
    assert any("teacher" in w and "--randaugment" in w for w in warnings)
    assert method_warnings(make_config("/d", randaugment=True)) == []


# --- the noisy-student preset ---

def test_the_noisy_student_preset_keeps_a_fixed_number_per_class_above_a_threshold():
    config = make_config("/d", preset="noisy-student")
    assert (config.pseudo_per_class, config.pseudo_threshold, config.pseudo_balance) == (2000, 0.3, False)
    assert (config.randaugment, config.randaugment_ops, config.randaugment_magnitude) == (True, 2, 6.0)
    assert (config.student_data, config.pseudo_mode, config.pool) == ("both", "soft", True)


# --- students smaller than their teacher ---

def test_a_student_smaller_than_its_teacher_warns_once_naming_both(caplog):
    warnings = method_warnings(make_config("/d", arch="efficientnet-b3", student_arch="efficientnet-b0"))
    assert len(warnings) == 1 and "efficientnet-b0" in warnings[0] and "efficientnet-b3" in warnings[0]
    assert method_warnings(make_config("/d", arch="efficientnet-b0", student_arch="efficientnet-b3")) == []
    assert method_warnings(make_config("/d", arch="efficientnet-b3", student_arch="efficientnet-b0", rounds=0)) == []


def test_the_size_order_matches_built_models():
    cheap = ["efficientnet-lite0", "efficientnet-b0", "efficientnet-b1", "resnet18"]
    counts = [sum(p.numel() for p in models.create_model(a, 1000, weights="none").parameters()) for a in cheap]
    assert sorted(cheap, key=PARAMETERS_M.get) == [a for _, a in sorted(zip(counts, cheap))]
    for arch, count in zip(cheap, counts):
        assert count / 1e6 == pytest.approx(PARAMETERS_M[arch], rel=0.06)


# --- --student-init ---

def _start(tmp_path, round_, **settings):
    """The weights of round ``round_``'s model as the pipeline loads them (RunContext: only run and config are read)."""
    run_ctx = SimpleNamespace(run=tmp_path, config=make_config("/d", preset="smoke", arch="efficientnet-lite0", **settings))
    weights = pipeline._initial_weights(run_ctx, 0, round_)
    return weights, models.create_model("efficientnet-lite0", 2, weights=weights).state_dict()


def _same_backbone(a, b):
    return all(torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point() and not k.startswith("_fc"))


def test_student_init_scratch_and_imagenet_load_what_they_say(tmp_path):
    imagenet = models.create_model("efficientnet-lite0", 2, weights="imagenet").state_dict()
    assert _same_backbone(_start(tmp_path, 0, weights="imagenet", student_init="scratch")[1], imagenet)  # the teacher
    weights, scratch = _start(tmp_path, 1, weights="imagenet", student_init="scratch")
    assert weights == "none" and not _same_backbone(scratch, imagenet)
    weights, student = _start(tmp_path, 1, weights="none", student_init="imagenet")
    assert weights == "imagenet" and _same_backbone(student, imagenet)
    assert not _same_backbone(_start(tmp_path, 0, weights="none", student_init="imagenet")[1], imagenet)  # the teacher


def test_student_init_teacher_loads_the_previous_rounds_model(tmp_path):
    previous = layout.round_dir(tmp_path, 0, 0) / layout.MODEL
    teacher = models.create_model("efficientnet-lite0", 2, weights="none")
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.5)  # not what any initialisation gives
    previous.parent.mkdir(parents=True)
    checkpoint.save(previous, {"model": teacher.state_dict()})
    weights, student = _start(tmp_path, 1, student_init="teacher")
    assert weights == str(previous)
    assert all(torch.equal(student[k], v) for k, v in teacher.state_dict().items())


def test_unset_student_init_starts_students_as_the_teacher(tmp_path):
    assert RunConfig().student_init is None
    for weights in ("none", "imagenet"):
        assert _start(tmp_path, 0, weights=weights)[0] == _start(tmp_path, 1, weights=weights)[0] == weights


def test_the_old_value_weights_is_unset_with_a_deprecation_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="noisystudent"):
        config = make_config("/d", student_init="weights")
    assert config.student_init is None and "--student-init weights is deprecated" in caplog.text
    with pytest.raises(ConfigError, match="student_init must be one of scratch, imagenet, teacher"):
        make_config("/d", student_init="file")


def test_an_old_run_with_student_init_weights_resumes_unchanged(tmp_path):
    """config.json of a run made before 0.3: student_init 'weights' and no randaugment_ops/magnitude."""
    from noisystudent.config.run_config import load_config_json
    from noisystudent.config.settings import resume_config

    values = {k: v for k, v in make_config(str(tmp_path), preset="smoke").to_dict().items()
              if k not in ("randaugment_ops", "randaugment_magnitude")}
    values["student_init"] = "weights"
    digest = {k: v for k, v in settings_digest(values).items() if k not in ("randaugment_ops", "randaugment_magnitude")}
    (tmp_path / "config.json").write_text(json.dumps({**values, "settings_digest": digest, "version": "0.2.0"}))
    saved = load_config_json(tmp_path / "config.json")
    assert edited_keys(saved) == []
    config = resume_config(saved, source=tmp_path / "config.json")
    assert config.student_init is None and differing_result_keys(saved, config) == []
