"""Test-time augmentation: predict several deterministic views and average.

Views of a float batch (B, 3, H, W), all of the input's size:

- ``none``: the batch itself (1 view).
- ``flips``: identity, horizontal, vertical, both (4 views).
- ``dihedral``: rotations by 0, 90, 180, 270 degrees, each as is and mirrored
  horizontally (8 views; rotations swap H and W of non-square inputs).
- ``five_crop``: the four corner crops and the centre crop, each keeping
  ``CROP_FRACTION`` of the sides, resized back to H x W (5 views).
- ``ten_crop``: five_crop plus the horizontal mirror of each crop (10 views).

``predict_tta`` averages the softmax *probabilities* of the views (not the
logits), so one confident view cannot outvote the others without bound.
Views are predicted one at a time: memory stays that of one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from noisystudent.config.run_config import TTA
from noisystudent.errors import ConfigError

CROP_FRACTION = 0.875
N_VIEWS = {"none": 1, "flips": 4, "dihedral": 8, "five_crop": 5, "ten_crop": 10}


def _check_mode(mode: str) -> None:
    if mode not in N_VIEWS:
        raise ConfigError(f"tta must be one of {', '.join(TTA)}; got {mode!r}.")


def _five_crops(x: torch.Tensor, fraction: float) -> Iterator[torch.Tensor]:
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
    for top, left in corners:
        crop = x[..., top : top + ch, left : left + cw]
        yield F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def iter_views(x: torch.Tensor, mode: str) -> Iterator[torch.Tensor]:
    """The views of ``x`` one by one, in the order described in the module doc."""
    _check_mode(mode)
    if mode == "none":
        yield x
    elif mode == "flips":
        yield from (x, x.flip(-1), x.flip(-2), x.flip(-2, -1))
    elif mode == "dihedral":
        for k in range(4):
            rotated = torch.rot90(x, k, dims=(-2, -1))
            yield from (rotated, rotated.flip(-1))
    else:
        crops = list(_five_crops(x, CROP_FRACTION))
        yield from crops
        if mode == "ten_crop":
            yield from (crop.flip(-1) for crop in crops)


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """All views of ``x`` as a list of N_VIEWS[mode] tensors."""
    return list(iter_views(x, mode))


def predict_tta(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean over the views of softmax(forward(view)): float32 probabilities (B, C)."""
    total = None
    for view in iter_views(x, mode):
        probs = torch.softmax(forward(view).float(), dim=1)
        total = probs if total is None else total.add_(probs)
    return total.div_(N_VIEWS[mode])
