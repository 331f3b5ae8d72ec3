"""Input noise, batched on the device.

Images arrive as uint8 (B, 3, H, W) batches gathered from the decoded-image
cache, already on the training device. Every random choice is drawn per
sample from an explicit ``torch.Generator`` that lives on the same device, so
a run is reproducible from its seed and the step loop never waits for the host
(no ``.item()``, no data-dependent Python branching).

Levels (``create_augment``):

- ``none``: only conversion to float and ImageNet normalisation.
- ``light``: a random element of the dihedral group per sample: horizontal
  flip, vertical flip and, for square images, transposition (together: the 4
  rotations by 90 degrees, each with or without a mirror).
- ``strong``: light, then a small random affine map per sample (rotation
  +-15 degrees, scale 0.9-1.1, translation +-5 % of the side; pixels from
  outside the image are black like the background) and colour jitter
  (brightness, contrast and saturation factors in 0.8-1.2, hue +-0.02 turn).
- ``randaugment`` (added after any level; meant for the students' strong
  noise): ``RANDAUGMENT_LAYERS`` more operations per sample, each picked at random from identity, posterize, solarize,
  sharpness and autocontrast at magnitude ``RANDAUGMENT_MAGNITUDE`` of 10.

Outputs are float32 in normalised units, as ``inference.normalize`` makes them:
``(x / 255 - mean) / std`` with the ImageNet mean and std by default, or the
``mean``/``std`` that an architecture's weights expect. ``normalize`` is the
same conversion without noise, for evaluation.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from noisystudent.config.run_config import AUGMENTS
from noisystudent.errors import ConfigError
from noisystudent.inference.normalize import IMAGENET_MEAN, IMAGENET_STD, Stats, device_of, normalize, standardize, to_unit

MAX_ROTATION_DEG = 15.0
SCALE_RANGE = (0.9, 1.1)
MAX_TRANSLATE = 0.05  # fraction of the side
BRIGHTNESS = CONTRAST = SATURATION = 0.2  # factors drawn from 1 +- this
HUE = 0.02  # fraction of a full turn of the hue circle
RANDAUGMENT_LAYERS = 2
RANDAUGMENT_MAGNITUDE = 9  # of 10

_LUMA = (0.299, 0.587, 0.114)


@lru_cache(maxsize=None)
def _constants(device: torch.device) -> dict[str, torch.Tensor]:
    """Constant tensors of the noise operations per device, made once."""
    rgb_to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    smooth = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    return {
        "luma": torch.tensor(_LUMA, device=device).view(1, 3, 1, 1),
        "rgb_to_yiq": rgb_to_yiq.to(device),
        "yiq_to_rgb": torch.linalg.inv(rgb_to_yiq).to(device),
        "smooth": smooth.expand(3, 1, 3, 3).contiguous().to(device),
    }


def _per_sample(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Each sample mirrored / rotated by a random multiple of 90 degrees.

    Three independent bits per sample (transpose, flip H, flip W) give the 8
    elements of the dihedral group; images that are not square only flip.
    """
    bits = torch.rand((x.shape[0], 3), generator=generator, device=x.device) < 0.5
    if x.shape[-1] == x.shape[-2]:
        x = torch.where(_per_sample(bits[:, 0]), x.transpose(-1, -2), x)
    x = torch.where(_per_sample(bits[:, 1]), x.flip(-2), x)
    # torch.where may give the strides of the transposed input; a compiled model
    # would compile another version for that layout.
    return torch.where(_per_sample(bits[:, 2]), x.flip(-1), x).contiguous()


def random_affine(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per-sample rotation, scale and translation; black where nothing maps."""
    b, _, h, w = x.shape
    u = torch.rand((b, 4), generator=generator, device=x.device) * 2 - 1  # in [-1, 1)
    angle = u[:, 0] * math.radians(MAX_ROTATION_DEG)
    low, high = SCALE_RANGE
    scale = (low + high) / 2 + u[:, 1] * (high - low) / 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid maps output to input coordinates in [-1, 1] per axis; the
    # aspect ratio factors keep the rotation rigid in pixels.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (h / w), u[:, 2] * 2 * MAX_TRANSLATE], dim=1),
            torch.stack([sin * (w / h), cos, u[:, 3] * 2 * MAX_TRANSLATE], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (x * _constants(device_of(x))["luma"]).sum(dim=1, keepdim=True)


def colour_jitter(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and hue (float in [0, 1])."""
    u = torch.rand((x.shape[0], 4), generator=generator, device=x.device) * 2 - 1
    x = x * _per_sample(1 + BRIGHTNESS * u[:, 0])
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * _per_sample(1 + CONTRAST * u[:, 1]) + mean
    grey = _grey(x)
    x = (x - grey) * _per_sample(1 + SATURATION * u[:, 2]) + grey
    return _rotate_hue(x, u[:, 3] * HUE * 2 * math.pi).clamp_(0, 1)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane (I, Q of YIQ) by ``angle`` radians per sample."""
    c = _constants(device_of(x))
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack(
        [torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1), torch.stack([zero, sin, cos], 1)], 1
    )
    matrix = c["yiq_to_rgb"] @ rotation @ c["rgb_to_yiq"]  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, x)


def _posterize(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    step = 2 ** round(4 * magnitude)  # 4 bits kept at magnitude 1
    return torch.floor(x * 255.0 / step) * (step / 255.0)


def _solarize(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    threshold = 1.0 - 0.3 * magnitude  # black background stays black
    return torch.where(x >= threshold, 1.0 - x, x)


def _sharpness(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), _constants(device_of(x))["smooth"], groups=3)
    factor = _per_sample(1 + 0.9 * magnitude * sign)  # sharpen or blur
    return (smooth + factor * (x - smooth)).clamp(0, 1)


def _autocontrast(x: torch.Tensor, magnitude: float, sign: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    stretched = (x - low) / span.clamp_min(1e-6)
    return torch.where(span > 1e-6, stretched, x)


RANDAUGMENT_OPS = (None, _posterize, _solarize, _sharpness, _autocontrast)  # None: identity


def rand_augment(x: torch.Tensor, generator: torch.Generator | None, layers: int = RANDAUGMENT_LAYERS,
                 magnitude: float = RANDAUGMENT_MAGNITUDE) -> torch.Tensor:
    """``layers`` rounds of one randomly chosen operation per sample."""
    strength = magnitude / 10.0
    for _ in range(layers):
        draws = torch.rand((x.shape[0], 2), generator=generator, device=x.device)
        choice = (draws[:, 0] * len(RANDAUGMENT_OPS)).long()
        sign = torch.where(draws[:, 1] < 0.5, -1.0, 1.0)
        out = x
        for index, op in enumerate(RANDAUGMENT_OPS):
            if op is not None:
                out = torch.where(_per_sample(choice == index), op(x, strength, sign), out)
        x = out
    return x


class BatchAugment:
    """Callable noise: ``aug(x_uint8, generator) -> normalised float32``.

    ``image_size`` (optional) resizes every batch to that side on the device,
    e.g. for progressive resizing from a larger cache. ``mean`` and ``std``
    are the input normalisation of the model (ImageNet's by default).
    """

    def __init__(self, level: str = "none", randaugment: bool = False, image_size: int | None = None,
                 mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> None:
        if level not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}; got {level!r}.")
        self.level = level
        self.randaugment = randaugment
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __repr__(self) -> str:
        return (f"BatchAugment(level={self.level!r}, randaugment={self.randaugment}, image_size={self.image_size}, "
                f"mean={self.mean}, std={self.std})")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.level == "none" and not self.randaugment:
            return self.normalize(x)
        if self.level != "none":
            x = random_dihedral(x, generator)  # on uint8: a quarter of the memory traffic
        x = to_unit(x, self.image_size)
        if self.level == "strong":
            x = colour_jitter(random_affine(x, generator), generator)
        if self.randaugment:
            x = rand_augment(x, generator)
        return standardize(x, self.mean, self.std).contiguous()  # one memory layout for every level

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation input: no noise, same size and normalisation."""
        return normalize(x, self.image_size, self.mean, self.std)


def create_augment(level: str, randaugment: bool = False, image_size: int | None = None,
                   mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> BatchAugment:
    """Noise of one level (none, light or strong), optionally with RandAugment,
    normalised with ``mean``/``std`` (see ``models.input_normalization``)."""
    return BatchAugment(level, randaugment, image_size, mean, std)
