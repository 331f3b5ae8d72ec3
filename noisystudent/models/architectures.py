"""Names of the supported architectures, and which family a model belongs to."""

from __future__ import annotations

from efficientnet_pytorch import EfficientNet
from torch import nn

from noisystudent.config.choices import ARCHITECTURES, EFFICIENTNETS, LITES, RESNETS

__all__ = ["ARCHITECTURES", "EFFICIENTNETS", "LITES", "RESNETS", "check_arch", "is_efficientnet", "unwrap"]
from noisystudent.errors import ConfigError


def check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself when ``model`` is a torch.compile wrapper (they share parameters)."""
    return getattr(model, "_orig_mod", model)


def is_efficientnet(model: nn.Module) -> bool:
    """True for EfficientNet-B* and -Lite (both efficientnet_pytorch ``EfficientNet``)."""
    return isinstance(unwrap(model), EfficientNet)
