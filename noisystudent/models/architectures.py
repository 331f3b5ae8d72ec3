"""Names of the supported architectures, and which family a model belongs to."""

from __future__ import annotations

from efficientnet_pytorch import EfficientNet
from torch import nn

from noisystudent.config.choices import ARCHITECTURES, EFFICIENTNETS, LITES, RESNETS

__all__ = ["ARCHITECTURES", "EFFICIENTNETS", "LITES", "PARAMETERS_M", "RESNETS", "check_arch", "is_efficientnet", "unwrap"]
from noisystudent.errors import ConfigError

# Parameters of each architecture with its 1000-class ImageNet head, in millions (their papers;
# tests/test_noise.py checks the order against built models): the size order of teachers and students.
PARAMETERS_M = {
    "efficientnet-b0": 5.3, "efficientnet-b1": 7.8, "efficientnet-b2": 9.2, "efficientnet-b3": 12.0, "efficientnet-b4": 19.0,
    "efficientnet-b5": 30.0, "efficientnet-b6": 43.0, "efficientnet-b7": 66.0, "efficientnet-lite0": 4.7,
    "resnet18": 11.7, "resnet50": 25.6, "resnet152": 60.2,
}


def check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself when ``model`` is a torch.compile wrapper (they share parameters)."""
    return getattr(model, "_orig_mod", model)


def is_efficientnet(model: nn.Module) -> bool:
    """True for EfficientNet-B* and -Lite (both efficientnet_pytorch ``EfficientNet``)."""
    return isinstance(unwrap(model), EfficientNet)
