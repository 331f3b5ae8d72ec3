"""FixMatch's two views of an image, batched on the device: weak (flip and shift) and strong (RandAugment + Cutout).

Sohn et al. 2020 (section 2.3): the weak view flips an image and shifts it by up
to 12.5 % of its side; the strong view is the weak one followed by RandAugment
and Cutout. Cell images have no up or down, so the flip here is a random element
of the dihedral group (``augment.random_dihedral``, the ``light`` level), as for
every other model of this package. Cutout is always applied, a black square half
the image's side (the PyTorch port's 16 px at 32 px); pixels a shift leaves empty
are black, the background of cell images.

Both views return float32 in normalised units, like ``augment.BatchAugment``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from noisystudent.inference.normalize import IMAGENET_MEAN, IMAGENET_STD, Stats, standardize, to_unit
from noisystudent.training import randaugment
from noisystudent.training.augment import RANDAUGMENT_MAGNITUDE, RANDAUGMENT_OPS_PER_IMAGE, random_dihedral

WEAK_TRANSLATE = 0.125  # largest shift, fraction of the side (the paper's 12.5 %)
CUTOUT_SIDE = 0.5  # side of the Cutout square, fraction of the image side
CUTOUT_LEVEL = CUTOUT_SIDE / 2 / randaugment.CUTOUT  # randaugment.cutout's level for that side


def random_translate(x: torch.Tensor, generator: torch.Generator | None, fraction: float = WEAK_TRANSLATE) -> torch.Tensor:
    """Each image shifted by up to ``fraction`` of its side along each axis; black where nothing maps."""
    shift = (torch.rand((x.shape[0], 2), generator=generator, device=x.device) * 2 - 1) * fraction
    one, zero = torch.ones_like(shift[:, 0]), torch.zeros_like(shift[:, 0])
    theta = torch.stack([torch.stack([one, zero, 2 * shift[:, 0]], 1), torch.stack([zero, one, 2 * shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def always_cutout(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A black square of side ``CUTOUT_SIDE`` of the image's side around a random pixel of each image."""
    params = torch.rand((x.shape[0], randaugment.PARAMS), generator=generator, device=x.device)
    return randaugment.cutout(x, CUTOUT_LEVEL, params)


class FixMatchViews:
    """``weak(x_uint8, generator)`` and ``strong(x_uint8, generator)``: normalised float32 views.

    ``ops`` and ``magnitude`` are RandAugment's N and M (``--randaugment-ops``,
    ``--randaugment-magnitude``); ``image_size``, ``mean`` and ``std`` as in
    ``augment.BatchAugment``.
    """

    def __init__(self, image_size: int | None = None, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD,
                 ops: int = RANDAUGMENT_OPS_PER_IMAGE, magnitude: float = RANDAUGMENT_MAGNITUDE) -> None:
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.ops, self.magnitude = ops, magnitude

    def __repr__(self) -> str:
        return f"FixMatchViews(image_size={self.image_size}, ops={self.ops}, magnitude={self.magnitude:g})"

    def _flip_and_shift(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return random_translate(to_unit(random_dihedral(x, generator), self.image_size), generator)

    def weak(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flip and shift: the view that gives the pseudo-label (and the labelled images' view)."""
        return standardize(self._flip_and_shift(x, generator), self.mean, self.std).contiguous()

    def strong(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flip and shift, RandAugment, then Cutout: the view trained to predict the weak view's pseudo-label."""
        x = randaugment.rand_augment(self._flip_and_shift(x, generator), generator, self.ops, self.magnitude)
        return standardize(always_cutout(x.clamp(0, 1), generator), self.mean, self.std).contiguous()
