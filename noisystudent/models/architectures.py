"""Names of the supported architectures, and which family a model belongs to."""

from __future__ import annotations

from efficientnet_pytorch import EfficientNet
from torch import nn

from noisystudent.errors import ConfigError

EFFICIENTNETS = tuple(f"efficientnet-b{i}" for i in range(8))
LITES = ("efficientnet-lite0",)
RESNETS = ("resnet18", "resnet50", "resnet152")
ARCHITECTURES = EFFICIENTNETS + LITES + RESNETS


def check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself when ``model`` is a torch.compile wrapper (they share parameters)."""
    return getattr(model, "_orig_mod", model)


def is_efficientnet(model: nn.Module) -> bool:
    """True for EfficientNet-B* and -Lite (both efficientnet_pytorch ``EfficientNet``)."""
    return isinstance(unwrap(model), EfficientNet)
