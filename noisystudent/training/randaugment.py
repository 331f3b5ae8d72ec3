"""RandAugment as the Noisy Student code applies it, batched on the device with per-sample choices.

Xie et al.'s students use RandAugment (Cubuk et al. 2020) from the TPU
EfficientNet code (``autoaugment.py``; google-research/noisystudent's
``randaugment.py``): each image gets ``ops`` rounds (N, default 2) of one
operation drawn uniformly from these 16, at one shared magnitude M:

    AutoContrast, Equalize, Invert, Rotate, Posterize, Solarize, Color, Contrast,
    Brightness, Sharpness, ShearX, ShearY, TranslateX, TranslateY, SolarizeAdd, Cutout

The magnitude scale is theirs: level ``l = M / 10`` (M may exceed 10; they used
M = 6 for EfficientNet-B2 up to 27 for B7) and

- Rotate: +-30 l degrees; ShearX/Y: +-0.3 l; TranslateX/Y: +-(100 / 224) l of the
  side (their 100 px at B0's 224 px); the sign drawn per image.
- Color, Contrast, Brightness, Sharpness: blend factor 1.8 l + 0.1 (PIL's enhance).
- Posterize keeps ``int(4 l)`` bits (at most 8); Solarize inverts pixels >=
  ``int(256 l)``; SolarizeAdd adds ``int(110 l)`` to pixels below 128 (of 255).
  As in their code, Posterize and Solarize get weaker, not stronger, as M grows.
- Cutout: a square of side 2 (40 / 224) l of the image side (their 40 px pad at
  224 px), centred on a random pixel of each image.
- AutoContrast, Equalize, Invert: no magnitude (per channel, as PIL).

Two deliberate differences: pixels that a geometric op or Cutout leaves empty are
black (the background of cell images; theirs are grey 128), and shears turn about
the image centre (theirs about the corner, which also shifts the image).

Every image draws its own operation, sign and Cutout position from the generator
given: the same generator state gives the same output. On the CPU each operation
runs on the images that drew it; on a GPU, to stay free of host synchronisation,
every operation runs on the whole batch and each image keeps its own (the five
geometric ones share one ``grid_sample``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache, partial

import torch
import torch.nn.functional as F

from noisystudent.inference.normalize import device_of

MAX_LEVEL = 10.0
ROTATE_DEG = 30.0
SHEAR = 0.3
TRANSLATE = 100 / 224  # fraction of the side at level 1
CUTOUT = 40 / 224  # half the square's side, as a fraction of the image side, at level 1
ENHANCE = (1.8, 0.1)  # factor = a l + b
POSTERIZE_BITS, SOLARIZE, SOLARIZE_ADD, SOLARIZE_ADD_BELOW = 4, 256, 110, 128
PARAMS = 3  # uniform draws per image and round: sign, Cutout row, Cutout column

Op = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]  # (x in [0, 1], level, (B, PARAMS) draws) -> x


@lru_cache(maxsize=None)
def _constants(device: torch.device) -> dict[str, torch.Tensor]:
    """Luma weights and PIL's SMOOTH kernel per device, made once."""
    smooth = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    return {
        "luma": torch.tensor((0.299, 0.587, 0.114), device=device).view(1, 3, 1, 1),
        "smooth": smooth.expand(3, 1, 3, 3).contiguous().to(device),
    }


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601, as PIL's 'L') of float RGB (B, 3, H, W) -> (B, 1, H, W)."""
    return (x * _constants(device_of(x))["luma"]).sum(dim=1, keepdim=True)


def _per_sample(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 as floats (the cache's uint8 values, resized)."""
    return torch.round(x * 255.0)


def _sign(params: torch.Tensor) -> torch.Tensor:
    return torch.where(params[:, 0] < 0.5, -1.0, 1.0)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor (x - degenerate), clipped."""
    return (degenerate + factor * (x - degenerate)).clamp(0, 1)


def _enhance_factor(level: float) -> float:
    return ENHANCE[0] * level + ENHANCE[1]


def auto_contrast(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, ((x - low) / span.clamp_min(1e-6)).clamp(0, 1), x)


def equalize(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalisation of each channel of each image."""
    b, c, h, w = x.shape
    values = _levels(x).long().clamp(0, 255).view(b * c, h * w)
    histogram = torch.zeros((b * c, 256), dtype=torch.long, device=x.device).scatter_add_(1, values, torch.ones_like(values))
    bins = torch.arange(256, device=x.device)
    last = torch.where(histogram > 0, bins, 0).amax(dim=1, keepdim=True)  # the brightest value present
    step = (h * w - histogram.gather(1, last)) // 255
    before = torch.cumsum(histogram, dim=1) - histogram  # pixels below each value
    table = ((before + step // 2) // step.clamp_min(1)).clamp(0, 255)
    equalized = table.gather(1, values)
    return torch.where(step > 0, equalized, values).view(b, c, h, w).float() / 255.0


def invert(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def posterize(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    bucket = 2 ** (8 - min(8, int(POSTERIZE_BITS * level)))
    return torch.floor(_levels(x) / bucket) * (bucket / 255.0)


def solarize(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    return torch.where(_levels(x) < int(SOLARIZE * level), x, 1.0 - x)


def solarize_add(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    pixels = _levels(x)
    return torch.where(pixels < SOLARIZE_ADD_BELOW, (pixels + int(SOLARIZE_ADD * level)).clamp(0, 255) / 255.0, x)


def color(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    return _blend(grey(x).expand_as(x), x, _enhance_factor(level))


def contrast(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    return _blend(grey(x).mean(dim=(2, 3), keepdim=True), x, _enhance_factor(level))


def brightness(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, _enhance_factor(level))


def sharpness(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter; the border pixels stay as they are."""
    smooth = F.conv2d(x, _constants(device_of(x))["smooth"], groups=3).clamp(0, 1)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, _enhance_factor(level))


def cutout(x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    """A black square of side 2 pad around a random pixel of each image."""
    _, _, h, w = x.shape
    pad = int(CUTOUT * level * min(h, w))
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    centre_row = torch.floor(params[:, 1] * h).view(-1, 1, 1)
    centre_col = torch.floor(params[:, 2] * w).view(-1, 1, 1)
    inside = (rows >= centre_row - pad) & (rows < centre_row + pad) & (cols >= centre_col - pad) & (cols < centre_col + pad)
    return torch.where(inside.unsqueeze(1), 0.0, x)


# --- geometric operations: per-image affine maps (output -> input, as affine_grid takes them) ---

def _theta(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
           h: int, w: int) -> torch.Tensor:
    """(B, 2, 3) for affine_grid from the pixel-space map [[a, b], [c, d]] and a shift in fractions of the side."""
    return torch.stack([torch.stack([a, b * (h / w), 2 * tx], 1), torch.stack([c * (w / h), d, 2 * ty], 1)], 1)


def _rotation(level: float, params: torch.Tensor, h: int, w: int) -> torch.Tensor:
    angle = _sign(params) * math.radians(ROTATE_DEG * level)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    return _theta(cos, -sin, sin, cos, zero, zero, h, w)


def _shear(level: float, params: torch.Tensor, h: int, w: int, axis: int) -> torch.Tensor:
    amount, one, zero = _sign(params) * SHEAR * level, torch.ones_like(params[:, 0]), torch.zeros_like(params[:, 0])
    return _theta(one, amount, zero, one, zero, zero, h, w) if axis else _theta(one, zero, amount, one, zero, zero, h, w)


def _translation(level: float, params: torch.Tensor, h: int, w: int, axis: int) -> torch.Tensor:
    shift, one, zero = _sign(params) * TRANSLATE * level, torch.ones_like(params[:, 0]), torch.zeros_like(params[:, 0])
    return _theta(one, zero, zero, one, shift, zero, h, w) if axis else _theta(one, zero, zero, one, zero, shift, h, w)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


Warp = Callable[[float, torch.Tensor, int, int], torch.Tensor]
WARPS: dict[str, Warp] = {
    "rotate": _rotation,
    "shear_x": partial(_shear, axis=1), "shear_y": partial(_shear, axis=0),
    "translate_x": partial(_translation, axis=1), "translate_y": partial(_translation, axis=0),
}


def _warped(name: str, x: torch.Tensor, level: float, params: torch.Tensor) -> torch.Tensor:
    return _warp(x, WARPS[name](level, params, x.shape[-2], x.shape[-1]))


# In the order of the reference code's list (it appends Cutout last).
RANDAUGMENT_OPS: dict[str, Op] = {
    "auto_contrast": auto_contrast, "equalize": equalize, "invert": invert, "rotate": partial(_warped, "rotate"),
    "posterize": posterize, "solarize": solarize, "color": color, "contrast": contrast, "brightness": brightness,
    "sharpness": sharpness, "shear_x": partial(_warped, "shear_x"), "shear_y": partial(_warped, "shear_y"),
    "translate_x": partial(_warped, "translate_x"), "translate_y": partial(_warped, "translate_y"),
    "solarize_add": solarize_add, "cutout": cutout,
}


def draw_ops(batch: int, generator: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One round's draws: the operation index (B,) and the parameters (B, PARAMS) of every image."""
    draws = torch.rand((batch, 1 + PARAMS), generator=generator, device=device)
    return (draws[:, 0] * len(RANDAUGMENT_OPS)).long().clamp_max(len(RANDAUGMENT_OPS) - 1), draws[:, 1:]


def apply_ops(x: torch.Tensor, choice: torch.Tensor, params: torch.Tensor, level: float) -> torch.Tensor:
    """Image i gets operation ``choice[i]`` with ``params[i]``.

    On the CPU each operation runs on the images that drew it; on an accelerator
    every operation runs on the whole batch and each image keeps its own, which
    needs no host synchronisation. Every operation acts on each image alone, so
    both give the same images.
    """
    if x.device.type != "cpu":
        return _apply_everywhere(x, choice, params, level)
    out = x.clone()
    for index, op in enumerate(RANDAUGMENT_OPS.values()):
        rows = torch.nonzero(choice == index).flatten()
        if len(rows):
            out[rows] = op(x[rows], level, params[rows])
    return out


def _apply_everywhere(x: torch.Tensor, choice: torch.Tensor, params: torch.Tensor, level: float) -> torch.Tensor:
    """``apply_ops`` without data-dependent shapes: every op on the batch (the five warps as one grid_sample)."""
    h, w = x.shape[-2:]
    one, zero = torch.ones_like(params[:, 0]), torch.zeros_like(params[:, 0])
    theta = _theta(one, zero, zero, one, zero, zero, h, w)  # identity for the images no warp chose
    warped_images = torch.zeros_like(choice, dtype=torch.bool)
    out = x
    for index, (name, op) in enumerate(RANDAUGMENT_OPS.items()):
        chosen = choice == index
        if name in WARPS:
            theta = torch.where(chosen.view(-1, 1, 1), WARPS[name](level, params, h, w), theta)
            warped_images |= chosen
        else:
            out = torch.where(_per_sample(chosen), op(x, level, params), out)
    return torch.where(_per_sample(warped_images), _warp(x, theta), out)


def rand_augment(x: torch.Tensor, generator: torch.Generator | None, ops: int = 2, magnitude: float = 6.0) -> torch.Tensor:
    """``ops`` rounds of one operation per image, drawn from the 16 of ``RANDAUGMENT_OPS``, at ``magnitude``.

    Args:
        x: Float images in [0, 1], (B, 3, H, W), on any device.
        generator: Source of every random draw (on ``x``'s device); the same
            state gives the same output.
        ops: Operations per image (N of the paper).
        magnitude: Shared magnitude M on the reference scale (10 = level 1;
            see the module docstring).

    Returns:
        torch.Tensor: Images of the same shape and dtype, in [0, 1].

    Example:
        >>> x = torch.rand(4, 3, 32, 32)
        >>> rand_augment(x, torch.Generator().manual_seed(0), ops=2, magnitude=9).shape
        torch.Size([4, 3, 32, 32])
    """
    level = magnitude / MAX_LEVEL
    for _ in range(ops):
        choice, params = draw_ops(x.shape[0], generator, x.device)
        x = apply_ops(x, choice, params, level)
    return x
