"""Open any image file as 8-bit RGB, and tell which files cannot be opened.

Every stage that touches pixels goes through ``load_rgb`` so that grey,
palette, transparent, 16-bit and CMYK files all arrive in the same form.
Failures become ``DataError`` with one sentence naming the file.

Memory is bounded by the working resolution, not by the file: a file of more
than ``MAX_PIXELS`` pixels is refused from its header, before decoding (a
1 MB compressed 13000 x 13000 float TIFF decodes to 676 MB), and a decoded
image is shrunk by an integer factor (``reduce_image``) to the resolution the
caller needs before it is converted, cropped or padded to a square (padding a
1 x 100000 PNG first would allocate a 100000 x 100000 square, 30 GB).

An EXIF orientation is applied as image viewers apply it (a phone photo
stored sideways arrives upright). Probing a file also hashes its decoded
pixels (``ImageInfo.content``), so copies of one image under two names,
or re-encoded in another format, are found without a second read.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from noisystudent.data.parallel import Threads
from noisystudent.errors import DataError
from noisystudent.safe_paths import file_kind

logger = logging.getLogger(__name__)

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_INDEXED_MODES = ("P", "PA", "1")  # palette indices and bits cannot be averaged
_ORIENTATION = 0x0112  # the EXIF tag

MAX_PIXELS = 50_000_000
"""Files with more pixels are refused unread: 50 M pixels decode to at most 200 MB (4 bytes each)."""
PROBE_SIDE = 1024
"""Checking a file decodes it whole, then converts it at most at this size."""
PROBE_CHUNK = 4096  # files probed per batch of threads
EXTREME_ASPECT = 20
"""Images this many times longer than wide become mostly black padding; ``data inspect`` lists them."""


@dataclass(frozen=True)
class ImageInfo:
    """What a full decode of one file found; ``error`` is "" when it is usable."""

    path: str
    width: int = 0
    height: int = 0
    mode: str = ""
    error: str = ""
    content: str = ""
    """Hash of the decoded 8-bit RGB pixels (at most PROBE_SIDE on the longer side): equal for copies of one image."""


def load_rgb(path: str | Path, max_side: int | None = None) -> Image.Image:
    """Decode the whole file (so truncation shows) and return it as 8-bit RGB.

    With ``max_side``, an image whose longer side exceeds it is first shrunk by an
    integer factor (box average) until it does not (see ``reduce_image``).
    """
    with _open(path) as image:
        return _decode(path, image, max_side)


def reduce_image(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` shrunk by the smallest integer factor that brings its longer side to at most ``max_side``.

    Box averaging in the file's own mode (16-bit as 32-bit integers, palettes and
    bits as RGB first), so no full-size RGB copy is made of a large grey, float or
    16-bit image. Images already small enough are returned as they are.
    """
    factor = math.ceil(max(image.size) / max_side)
    if factor < 2:
        return image
    if image.mode in _INDEXED_MODES:
        image = to_rgb(image)
    elif image.mode in _SIXTEEN_BIT_MODES:
        image = image.convert("I")
    return image.reduce(factor)


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
            rgb = _decode(path, image, PROBE_SIDE)
    except DataError as error:
        return ImageInfo(str(path), error=str(error))
    return ImageInfo(str(path), size[0], size[1], mode, content=pixel_digest(rgb))


def pixel_digest(rgb: Image.Image) -> str:
    """SHA-256 (first 128 bits) of an RGB image's size and pixels: what the model sees, whatever the file format.

    SHA-256 rather than BLAKE2b: with the SHA extensions of current CPUs it hashes
    about twice as fast (measured in docs/reliability.md).
    """
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()[:32]


def probe_images(paths: list[str], workers: int | None = None) -> list[ImageInfo]:
    """``probe_image`` for many files, in input order, decoded by a thread pool.

    Threads suffice because PIL releases the GIL while reading and decoding.
    """
    if len(paths) < 2:
        return [probe_image(p) for p in paths]
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    with Threads(max_workers=workers) as pool:
        return list(pool.map(probe_image, paths))


def find_unreadable(paths: list[str], workers: int | None = None) -> list[tuple[str, str]]:
    """(path, one-sentence reason) for every file that cannot be decoded."""
    return check_images(paths, workers)[0]


def check_images(paths: list[str], workers: int | None = None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(path, reason) of every file that cannot be decoded, and the pixel digest of every one that can.

    PROBE_CHUNK files at a time: a pool of millions is probed without a
    pending future per file in memory (the digests are the caller's to keep or drop).
    """
    bad, contents = [], {}
    for start in range(0, len(paths), PROBE_CHUNK):
        for info in probe_images(paths[start : start + PROBE_CHUNK], workers):
            if info.error:
                bad.append((info.path, info.error))
            else:
                contents[info.path] = info.content
    return bad, contents


def _open(path: str | Path) -> Image.Image:
    """Open the file (header only) and refuse it if it has more than MAX_PIXELS pixels."""
    kind = file_kind(path)
    if kind not in (None, "a folder"):  # a FIFO or device would block or never end
        raise DataError(f"The image {path} cannot be read: it is {kind}, not a file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one sentence
            image = Image.open(path)
    except FileNotFoundError as error:
        raise DataError(f"The image {path} does not exist.") from error
    except Image.DecompressionBombError as error:
        raise DataError(f"The image {path} cannot be read: {error}.") from error
    except Exception as error:  # unidentified format, permission, directory, ...
        _raise_if_the_system_refused(error)
        raise DataError(_unreadable(path, error)) from error
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise DataError(
            f"The image {path} cannot be read: it has {width} x {height} pixels, more than the {MAX_PIXELS:,} "
            "noisystudent decodes; shrink it first."
        )
    return image


def _decode(path: str | Path, image: Image.Image, max_side: int | None = None) -> Image.Image:
    try:
        image.load()  # lazy opening reads only the header; truncation shows here
        image = _upright(image)
        return to_rgb(reduce_image(image, max_side) if max_side else image)
    except Exception as error:  # PIL raises many types for corrupt data
        _raise_if_the_system_refused(error)
        raise DataError(_unreadable(path, error)) from error


def _raise_if_the_system_refused(error: Exception) -> None:
    """Too many open files or no memory says nothing about the image: raised as it is (the CLI words it), never
    reported as an unreadable image (which --skip-unreadable would drop)."""
    if isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno in SYSTEM_ERRNOS):
        raise error


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (viewers show it so); unchanged without one."""
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block does not make the pixels unreadable
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    return ImageOps.exif_transpose(image)


SYSTEM_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM}  # the process's limits, not the file's fault


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
