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
- ``randaugment`` (added after any level; the students' noise, never a
  teacher's, see ``run.pipeline``): RandAugment as Xie et al. apply it,
  ``ops`` operations per sample drawn from 16 (geometric ones included) at
  magnitude ``magnitude``; see ``training.randaugment``.

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
from noisystudent.training.randaugment import grey, rand_augment

MAX_ROTATION_DEG = 15.0
SCALE_RANGE = (0.9, 1.1)
MAX_TRANSLATE = 0.05  # fraction of the side
BRIGHTNESS = CONTRAST = SATURATION = 0.2  # factors drawn from 1 +- this
HUE = 0.02  # fraction of a full turn of the hue circle
RANDAUGMENT_OPS_PER_IMAGE = 2  # N of Xie et al.
RANDAUGMENT_MAGNITUDE = 6.0  # M on the reference scale (their EfficientNet-B2: 6, B7: 27)


@lru_cache(maxsize=None)
def _constants(device: torch.device) -> dict[str, torch.Tensor]:
    """Constant tensors of the noise operations per device, made once."""
    rgb_to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    return {"rgb_to_yiq": rgb_to_yiq.to(device), "yiq_to_rgb": torch.linalg.inv(rgb_to_yiq).to(device)}


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


def colour_jitter(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and hue (float in [0, 1])."""
    u = torch.rand((x.shape[0], 4), generator=generator, device=x.device) * 2 - 1
    x = x * _per_sample(1 + BRIGHTNESS * u[:, 0])
    mean = grey(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * _per_sample(1 + CONTRAST * u[:, 1]) + mean
    luma = grey(x)
    x = (x - luma) * _per_sample(1 + SATURATION * u[:, 2]) + luma
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


class BatchAugment:
    """Callable noise: ``aug(x_uint8, generator) -> normalised float32``.

    ``image_size`` (optional) resizes every batch to that side on the device,
    e.g. for progressive resizing from a larger cache. ``mean`` and ``std``
    are the input normalisation of the model (ImageNet's by default).
    ``randaugment_ops`` and ``randaugment_magnitude`` are RandAugment's N and M.
    """

    def __init__(self, level: str = "none", randaugment: bool = False, image_size: int | None = None,
                 mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD, randaugment_ops: int = RANDAUGMENT_OPS_PER_IMAGE,
                 randaugment_magnitude: float = RANDAUGMENT_MAGNITUDE) -> None:
        if level not in AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)}; got {level!r}.")
        self.level = level
        self.randaugment = randaugment
        self.randaugment_ops, self.randaugment_magnitude = randaugment_ops, randaugment_magnitude
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __repr__(self) -> str:
        randaugment = f"({self.randaugment_ops} ops, magnitude {self.randaugment_magnitude:g})" if self.randaugment else ""
        return (f"BatchAugment(level={self.level!r}, randaugment={self.randaugment}{randaugment}, image_size={self.image_size}, "
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
            x = rand_augment(x, generator, self.randaugment_ops, self.randaugment_magnitude)
        return standardize(x, self.mean, self.std).contiguous()  # one memory layout for every level

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation input: no noise, same size and normalisation."""
        return normalize(x, self.image_size, self.mean, self.std)


def create_augment(level: str, randaugment: bool = False, image_size: int | None = None,
                   mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD, randaugment_ops: int = RANDAUGMENT_OPS_PER_IMAGE,
                   randaugment_magnitude: float = RANDAUGMENT_MAGNITUDE) -> BatchAugment:
    """Noise of one level (none, light or strong), optionally followed by RandAugment
    (``randaugment_ops`` operations at ``randaugment_magnitude``), normalised with
    ``mean``/``std`` (see ``models.input_normalization``)."""
    return BatchAugment(level, randaugment, image_size, mean, std, randaugment_ops, randaugment_magnitude)
