"""Build a classifier by architecture name, and rebuild it from a stored spec.

``create_model`` is the one place that knows how each family is constructed:

* ``efficientnet-b0`` .. ``b7`` come from efficientnet_pytorch; ``dropout`` is
  the dropout before the classifier and ``drop_connect`` the stochastic-depth
  rate of the MBConv blocks (scaled up linearly with block depth).
* ``efficientnet-lite0`` is built in :mod:`.lite` from the same blocks.
* ``resnet18/50/152`` come from torchvision; ``dropout`` is applied by
  replacing ``fc`` with ``Sequential(Dropout, Linear)``. torchvision's ResNets
  have no stochastic depth, so ``drop_connect`` is ignored for them (a warning
  is logged when it is > 0).

Noise is controlled by the module mode: dropout and drop-connect act in
``model.train()`` and are off in ``model.eval()``.
"""

from __future__ import annotations

import logging
from typing import Any

import torchvision
from efficientnet_pytorch import EfficientNet
from torch import nn

from noisystudent.errors import CheckpointError, ConfigError
from noisystudent.models.architectures import LITES, RESNETS, check_arch, unwrap
from noisystudent.models.lite import build_lite0
from noisystudent.models.pretrained import load_imagenet
from noisystudent.models.weights import load_weights

log = logging.getLogger(__name__)

SPEC_KEYS = ("arch", "num_classes", "dropout", "drop_connect", "hidden_units")
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# TF Lite models were trained on (pixel - 127) / 128.
LITE_MEAN_STD = ((127 / 255,) * 3, (128 / 255,) * 3)


def create_model(
    arch: str,
    num_classes: int,
    weights: str = "none",
    dropout: float = 0.2,
    drop_connect: float = 0.2,
    hidden_units: int = 0,
    memory_efficient_swish: bool = False,
) -> nn.Module:
    """Build ``arch`` with a ``num_classes`` head and initialise it from ``weights``.

    Dropout and drop-connect (the students' model noise) act in
    ``model.train()`` and are off in ``model.eval()``. The model's shape is
    kept in ``model.noisystudent_spec`` (stored in every model.pt).

    Args:
        arch: ``"efficientnet-b0"`` .. ``"efficientnet-b7"``,
            ``"efficientnet-lite0"``, ``"resnet18"``, ``"resnet50"`` or ``"resnet152"``.
        num_classes: Outputs of the classifier head (logits); at least 1.
        weights: ``"none"`` (default: random), ``"imagenet"`` (backbone from
            ImageNet, head random; downloaded once into torch's hub cache,
            packaged for Lite0) or the path of a weights/checkpoint file
            (loaded non-strictly; see :func:`.weights.load_weights`).
        dropout: Dropout before the classifier, in [0, 1); default 0.2.
        drop_connect: Stochastic-depth rate of the EfficientNet blocks, in
            [0, 1); default 0.2. ResNets have none: ignored with a warning when > 0.
        hidden_units: Width of a hidden layer (Linear, ReLU, Dropout) added to
            the head; default 0: none.
        memory_efficient_swish: efficientnet_pytorch's memory-efficient swish;
            off by default: it saves activation memory but trains 11-27% slower.

    Returns:
        torch.nn.Module: The model in training mode on the CPU, mapping images
        (N, 3, H, W) to logits (N, ``num_classes``).

    Raises:
        ConfigError: Unknown ``arch``, or an argument out of range.
        CheckpointError: ``weights`` cannot be read, belongs to another
            architecture, or ImageNet weights cannot be downloaded.

    Example:
        >>> import torch
        >>> import noisystudent as ns
        >>> model = ns.create_model("efficientnet-b0", num_classes=2)
        >>> model.eval()(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 2])
    """
    _check_arguments(arch, num_classes, dropout, drop_connect, hidden_units)
    model = _build(arch, num_classes, dropout, drop_connect, hidden_units, memory_efficient_swish)
    model.noisystudent_spec = model_spec(arch, num_classes, dropout, drop_connect, hidden_units)
    _initialise(model, arch, weights)
    return model


def _build(arch: str, num_classes: int, dropout: float, drop_connect: float,
           hidden_units: int, memory_efficient_swish: bool) -> nn.Module:
    if arch in RESNETS:
        return _build_resnet(arch, num_classes, dropout, drop_connect, hidden_units)
    if arch in LITES:
        model = build_lite0(num_classes, dropout, drop_connect)
    else:
        # image_size=None: TF-"same" padding computed per input, right at any resolution.
        model = EfficientNet.from_name(arch, num_classes=num_classes, dropout_rate=dropout,
                                       drop_connect_rate=drop_connect, image_size=None)
        model.set_swish(memory_efficient=memory_efficient_swish)
    if hidden_units > 0:
        # forward() applies model._dropout before model._fc: together the head of the docstring.
        model._fc = _hidden_head(model._fc.in_features, hidden_units, num_classes, dropout)
    return model


def _build_resnet(arch: str, num_classes: int, dropout: float, drop_connect: float,
                  hidden_units: int) -> nn.Module:
    if drop_connect > 0:
        log.warning("%s has no stochastic depth; drop_connect=%s is ignored.", arch, drop_connect)
    model = torchvision.models.get_model(arch, weights=None)
    features = model.fc.in_features
    if hidden_units > 0:
        model.fc = nn.Sequential(nn.Dropout(dropout), *_hidden_head(features, hidden_units, num_classes, dropout))
    else:
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))
    return model


def _hidden_head(features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear; the caller puts a Dropout in front."""
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, num_classes))


def _initialise(model: nn.Module, arch: str, weights: str) -> None:
    if weights == "none":
        return
    if weights == "imagenet":
        load_imagenet(model, arch)
    else:
        load_weights(model, weights, arch)


def _check_arguments(arch: str, num_classes: int, dropout: float, drop_connect: float,
                     hidden_units: int) -> None:
    check_arch(arch)
    if num_classes < 1:
        raise ConfigError(f"The number of classes must be at least 1, got {num_classes}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}.")
    if not 0.0 <= drop_connect < 1.0:
        raise ConfigError(f"drop_connect must be in [0, 1), got {drop_connect}.")
    if hidden_units < 0:
        raise ConfigError(f"hidden_units must be >= 0, got {hidden_units}.")


def model_spec(arch: str, num_classes: int, dropout: float, drop_connect: float,
               hidden_units: int = 0) -> dict[str, Any]:
    """Everything needed to rebuild the model's shape; stored in model.pt beside its weights."""
    return {"arch": arch, "num_classes": int(num_classes), "dropout": float(dropout),
            "drop_connect": float(drop_connect), "hidden_units": int(hidden_units)}


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a randomly initialised model from :func:`model_spec`; the caller loads the weights."""
    missing = [key for key in SPEC_KEYS if key not in spec]
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if missing or unknown:
        what = f"lacks {', '.join(missing)}" if missing else f"has unknown entries {', '.join(unknown)}"
        raise CheckpointError(f"The stored model description {what}; it was not written by this version of noisystudent.")
    return create_model(**{key: spec[key] for key in SPEC_KEYS}, weights="none")


def describe_model(model: nn.Module) -> dict[str, Any]:
    """Architecture name and parameter counts (all, and those that will be trained)."""
    model = unwrap(model)
    spec = getattr(model, "noisystudent_spec", None)
    params = list(model.parameters())
    return {
        "arch": spec["arch"] if spec else type(model).__name__,
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
    }


def input_normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of [0, 1] RGB inputs that the arch's ImageNet weights expect."""
    check_arch(arch)
    return LITE_MEAN_STD if arch in LITES else IMAGENET_MEAN_STD

