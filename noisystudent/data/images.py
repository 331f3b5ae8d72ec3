"""Open any image file as 8-bit RGB, and tell which files cannot be opened.

Every stage that touches pixels goes through ``load_rgb`` so that grey,
palette, transparent, 16-bit and CMYK files all arrive in the same form.
Failures become ``DataError`` with one sentence naming the file.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from noisystudent.errors import DataError

logger = logging.getLogger(__name__)

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class ImageInfo:
    """What a full decode of one file found; ``error`` is "" when it is usable."""

    path: str
    width: int = 0
    height: int = 0
    mode: str = ""
    error: str = ""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the whole file (so truncation shows) and return it as 8-bit RGB."""
    with _open(path) as image:
        return _decode(path, image)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only; the pixels are not decoded."""
    with _open(path) as image:
        return image.size


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_black(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.mode == "1":
        image = image.convert("L")
    return image.convert("RGB")


def probe_image(path: str | Path) -> ImageInfo:
    """Decode one file fully and report its size and mode, or why it fails."""
    try:
        with _open(path) as image:
            size, mode = image.size, image.mode
            _decode(path, image)
    except DataError as error:
        return ImageInfo(str(path), error=str(error))
    return ImageInfo(str(path), size[0], size[1], mode)


def probe_images(paths: list[str], workers: int | None = None) -> list[ImageInfo]:
    """``probe_image`` for many files, in input order, decoded by a thread pool.

    Threads suffice because PIL releases the GIL while reading and decoding.
    """
    if len(paths) < 2:
        return [probe_image(p) for p in paths]
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(probe_image, paths))


def find_unreadable(paths: list[str], workers: int | None = None) -> list[tuple[str, str]]:
    """(path, one-sentence reason) for every file that cannot be decoded."""
    return [(info.path, info.error) for info in probe_images(paths, workers) if info.error]


def _open(path: str | Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError as error:
        raise DataError(f"The image {path} does not exist.") from error
    except Exception as error:  # unidentified format, permission, directory, ...
        raise DataError(_unreadable(path, error)) from error


def _decode(path: str | Path, image: Image.Image) -> Image.Image:
    try:
        image.load()  # lazy opening reads only the header; truncation shows here
        return to_rgb(image)
    except Exception as error:  # PIL raises many types for corrupt data
        raise DataError(_unreadable(path, error)) from error


def _unreadable(path: str | Path, error: Exception) -> str:
    """One sentence naming the file and the reason in plain words."""
    if isinstance(error, UnidentifiedImageError):
        reason = "it is not an image file in a format that can be decoded"
    elif "truncated" in str(error).lower():
        reason = "it is truncated"
    elif isinstance(error, IsADirectoryError):
        reason = "it is a folder"
    elif isinstance(error, PermissionError):
        reason = "permission denied"
    else:
        reason = f"it is corrupt ({type(error).__name__}: {str(error).rstrip('.')})"
    return f"The image {path} cannot be read: {reason}."


def _composite_on_black(image: Image.Image) -> Image.Image:
    # C-NMC cells sit on a black background, so transparent pixels become black.
    rgba = image.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit data keeps its fixed scale (/257) so images of one camera stay
    comparable; floats and 32-bit integers beyond 16 bits have no natural
    scale and are stretched to their own range."""
    values = values.astype(np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    if mode != "F" and low >= 0 and high <= 65535:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
