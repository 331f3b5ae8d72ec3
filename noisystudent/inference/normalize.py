"""Model input from uint8 pixels: float32, resized, normalised with the (mean, std) a model expects.

Outputs are ``(x / 255 - mean) / std`` with the ImageNet mean and std by
default, or the ``mean``/``std`` that an architecture's weights expect
(``models.input_normalization``; EfficientNet-Lite0's TF Lite weights expect
``(pixel - 127) / 128``). Prediction uses ``normalize`` as it is; training's
noise (``training.augment``) is applied between ``to_unit`` and ``standardize``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stats = tuple[float, float, float]
Normalization = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) a model expects (models.input_normalization)


@lru_cache(maxsize=None)
def _normalisation(device: torch.device, mean: Stats, std: Stats) -> dict[str, torch.Tensor]:
    """Normalisation constants per (device, mean, std), made once (creating them on a GPU syncs)."""
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return {
        "mean": mean_t,
        "inv_std": 1.0 / std_t,
        "shift": mean_t * 255.0,  # normalisation straight from uint8
        "scale": 1.0 / (std_t * 255.0),
    }


def device_of(x: torch.Tensor) -> torch.device:
    """The device of ``x`` with its index: the key of constants cached per device."""
    device = x.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def to_unit(x: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1], resized (antialiased) to image_size."""
    x = x.float().div_(255.0)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x


def standardize(x: torch.Tensor, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> torch.Tensor:
    """float in [0, 1] -> (x - mean) / std (ImageNet statistics by default)."""
    c = _normalisation(device_of(x), tuple(mean), tuple(std))
    return (x - c["mean"]) * c["inv_std"]


def normalize(x: torch.Tensor, image_size: int | None = None,
              mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (x / 255 - mean) / std, no noise."""
    if image_size is None or tuple(x.shape[-2:]) == (image_size, image_size):
        c = _normalisation(device_of(x), tuple(mean), tuple(std))
        return (x.float() - c["shift"]) * c["scale"]
    return standardize(to_unit(x, image_size), mean, std)
