"""Deterministic image preprocessing: one decoded file -> one uint8 array.

Everything here runs once per image when the decoded-image cache is built
(see ``cache.py``); random noise is applied later, batched, on the device
(``augment.py``). The steps, in order:

1. ``crop_black``: drop border rows and columns in which every pixel is black,
   i.e. its largest channel value is at most ``crop_threshold``. An image that
   is black everywhere is kept whole.
2. ``equalize``: histogram equalisation with ``PIL.ImageOps.equalize``
   (computed over the whole, possibly cropped, image):
   ``grey`` converts to grey, equalises it and repeats it in R, G and B;
   ``channels`` equalises R, G and B independently;
   ``luminance`` equalises Y of YCbCr and keeps the chroma (Cb, Cr).
3. ``center_crop``: keep the central fraction of each side.
4. Pad to a square with black (the background colour of C-NMC) so that cells
   are not distorted, then resize to ``image_size`` x ``image_size`` with
   antialiased bilinear filtering. C-NMC images are already square.

Before step 1, an image whose longer side exceeds ``REDUCE_ABOVE`` times
``image_size`` is shrunk by an integer factor (``images.reduce_image``; when
decoding, before the conversion to RGB): memory then depends on the working
resolution, not on the file. Images up to that size are untouched, so their
pixels are exactly as before.

This module imports only numpy and PIL so that the worker processes decoding
the cache start quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from noisystudent.config.run_config import EQUALIZE
from noisystudent.data.images import load_rgb, reduce_image
from noisystudent.errors import ConfigError

REDUCE_ABOVE = 4  # sides up to 4 x image_size are kept: the final resize still antialiases from >= 2x


@dataclass(frozen=True)
class PreprocessSpec:
    image_size: int = 224
    """Side of the square output in pixels."""
    crop_black: bool = False
    """Crop black border rows and columns first."""
    crop_threshold: int = 10
    """A pixel whose largest channel value is at most this counts as black."""
    equalize: str = "none"
    """Histogram equalisation: none, grey, channels or luminance."""
    center_crop: float = 1.0
    """Central fraction of each side kept before resizing."""

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"image_size must be positive; got {self.image_size}.")
        if not 0 <= self.crop_threshold <= 255:
            raise ConfigError(f"crop_threshold must be between 0 and 255; got {self.crop_threshold}.")
        if self.equalize not in EQUALIZE:
            raise ConfigError(f"equalize must be one of {', '.join(EQUALIZE)}; got {self.equalize!r}.")
        if not 0 < self.center_crop <= 1:
            raise ConfigError(f"center_crop must be in (0, 1]; got {self.center_crop}.")

    @classmethod
    def from_config(cls, cfg: Any, image_size: int | None = None) -> "PreprocessSpec":
        """The spec of a RunConfig; ``image_size`` overrides ``cfg.image_size``."""
        return cls(
            image_size=int(image_size or cfg.image_size),
            crop_black=bool(cfg.crop_black),
            crop_threshold=int(cfg.crop_threshold),
            equalize=str(cfg.equalize),
            center_crop=float(cfg.center_crop),
        )

    def key(self) -> str:
        """Stable text naming exactly the settings that change the pixels."""
        crop = f"crop{self.crop_threshold}" if self.crop_black else "cropoff"
        return f"s{self.image_size}-{crop}-eq{self.equalize}-cc{float(self.center_crop)!r}"


def content_box(image: Image.Image, threshold: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the non-black part, or None if all black."""
    bright = np.asarray(image).reshape(image.height, image.width, -1).max(axis=2) > threshold
    rows = np.flatnonzero(bright.any(axis=1))
    cols = np.flatnonzero(bright.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def equalize(image: Image.Image, mode: str) -> Image.Image:
    """Histogram-equalise an RGB image (see the module doc for the modes)."""
    if mode == "none":
        return image
    if mode == "grey":
        grey = ImageOps.equalize(image.convert("L"))
        return Image.merge("RGB", (grey, grey, grey))
    if mode == "channels":
        return ImageOps.equalize(image)  # PIL equalises each band on its own
    if mode == "luminance":
        y, cb, cr = image.convert("YCbCr").split()
        return Image.merge("YCbCr", (ImageOps.equalize(y), cb, cr)).convert("RGB")
    raise ConfigError(f"equalize must be one of {', '.join(EQUALIZE)}; got {mode!r}.")


def center_crop(image: Image.Image, fraction: float) -> Image.Image:
    """Keep the central ``fraction`` of each side."""
    if fraction >= 1:
        return image
    width = max(1, round(image.width * fraction))
    height = max(1, round(image.height * fraction))
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def pad_to_square(image: Image.Image) -> Image.Image:
    """Centre the image on a black square whose side is its longer side."""
    side = max(image.width, image.height)
    if image.width == image.height:
        return image
    square = Image.new("RGB", (side, side))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Apply ``spec`` to one image; returns uint8 (3, S, S) with S = spec.image_size."""
    image = reduce_image(image, REDUCE_ABOVE * spec.image_size)  # before padding: never a huge square
    image = image.convert("RGB") if image.mode != "RGB" else image
    if spec.crop_black:
        box = content_box(image, spec.crop_threshold)
        if box is not None:
            image = image.crop(box)
    image = equalize(image, spec.equalize)
    image = pad_to_square(center_crop(image, spec.center_crop))
    size = spec.image_size
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def load_preprocessed(path: str, spec: PreprocessSpec) -> np.ndarray:
    """Decode one file and preprocess it; DataError if it cannot be read."""
    return preprocess(load_rgb(path, max_side=REDUCE_ABOVE * spec.image_size), spec)


def decode_into(npy_path: str | Path, start: int, paths: list[str], spec: PreprocessSpec) -> int:
    """Write ``paths`` decoded into rows ``start:start+len(paths)`` of an .npy file.

    The worker of the cache builder: it runs in worker processes, each writing
    its own rows of the same memory-mapped file. Returns the number written.
    """
    array = np.load(npy_path, mmap_mode="r+")
    for offset, path in enumerate(paths):
        array[start + offset] = load_preprocessed(path, spec)
    array.flush()
    del array
    return len(paths)
