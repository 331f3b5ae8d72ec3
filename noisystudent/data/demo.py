"""Synthetic single-cell images in the C-NMC layout, for demos and tests.

Each image shows one stained cell on a black background: a pale cytoplasm
disc around a darker nucleus. The classes differ the way the real ones do,
with overlapping distributions so that the task is learnable but not
trivial: ALL blasts have a larger nucleus-to-cell ratio, finer and lighter
chromatin and more visible nucleoli; HEM cells have smaller, denser nuclei
with clumped chromatin. Every patient has its own stain hue and brightness,
which a model must learn to ignore; that is why folds split patients.

Images are drawn with vectorised numpy from a generator seeded by (seed,
class, patient), so the output is byte-identical for the same arguments.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from noisystudent.errors import DataError

logger = logging.getLogger(__name__)

CNMC_FOLDER = "C-NMC_Leukemia"
CLASSES = ("all", "hem")
N_FOLDS = 3  # fold_0..fold_2, as in the real training_data
CELLS_PER_IMAGE = 3  # cells cropped from one microscope image share its index
MARKER = ".demo-complete.json"  # written last: its presence means the tree is whole
GENERATOR_VERSION = 1  # bump when the drawing changes, so old demo folders are rebuilt
# The demo data set: many patients with few cells each, so that the outer test set holds
# enough patients for a paired bootstrap over patients, and a fold's masked part dwarfs its
# labelled part (few labels, large unlabelled pool: where Noisy Student is expected to help).
DEMO_PATIENTS_PER_CLASS = 30
DEMO_CELLS_PER_PATIENT = 6

# Stain colours (RGB in 0..1) before per-patient variation.
_CYTOPLASM = np.array([0.74, 0.64, 0.86], dtype=np.float32)
_NUCLEUS_LIGHT = np.array([0.60, 0.44, 0.72], dtype=np.float32)
_NUCLEUS_DARK = np.array([0.30, 0.12, 0.42], dtype=np.float32)


@dataclass(frozen=True)
class ClassLook:
    """(mean, spread) of the per-cell features of one class."""

    nucleus_ratio: tuple[float, float]  # nucleus radius / cell radius
    density: tuple[float, float]  # chromatin darkness, 0 light .. 1 dark
    clumping: tuple[float, float]  # amplitude of coarse chromatin blobs
    fine_texture: tuple[float, float]  # amplitude of pixel-scale chromatin grain
    nucleolus_chance: float  # chance that each of up to 3 nucleoli shows
    lobing: tuple[float, float]  # irregularity of the nucleus outline


LOOKS = {
    "all": ClassLook((0.80, 0.06), (0.52, 0.10), (0.07, 0.03), (0.07, 0.02), 0.50, (0.04, 0.02)),
    "hem": ClassLook((0.67, 0.06), (0.64, 0.10), (0.17, 0.05), (0.05, 0.02), 0.12, (0.08, 0.03)),
}


def generate_demo(
    root: str | Path,
    n_patients_per_class: int = DEMO_PATIENTS_PER_CLASS,
    cells_per_patient: int = DEMO_CELLS_PER_PATIENT,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write (once) and return ``root/C-NMC_Leukemia`` holding the synthetic data set.

    Synthetic single-cell images (64 px BMPs by default) in the C-NMC layout:
    ``training_data/fold_<k>/{all,hem}/UID_<patient>_<image>_<cell>_<class>.bmp``.
    The drawing is seeded by (seed, class, patient), so the same arguments give
    byte-identical files. An existing complete tree with the same arguments is
    reused; the tree is built in a hidden sibling folder and renamed into place,
    so an interrupted call leaves no half-written data set.

    Args:
        root: Folder that receives ``C-NMC_Leukemia``; created if missing.
        n_patients_per_class: Patients of each class (all, hem); default 30.
        cells_per_patient: Images per patient; default 6.
        size: Width and height of each image in pixels; default 64.
        seed: Seed of the drawing; default 0.

    Returns:
        pathlib.Path: ``root / "C-NMC_Leukemia"``, readable by :func:`read_dataset`.

    Raises:
        DataError: ``root/C-NMC_Leukemia`` exists and is not generated demo data.

    Example:
        >>> import noisystudent as ns
        >>> data = ns.generate_demo("demo_data", n_patients_per_class=4, cells_per_patient=3)  # doctest: +SKIP
        >>> manifest, layout = ns.read_dataset(data)  # doctest: +SKIP
        >>> layout, len(manifest)  # doctest: +SKIP
        ('cnmc', 24)
    """
    root = Path(root)
    target = root / CNMC_FOLDER
    params = {
        "n_patients_per_class": n_patients_per_class,
        "cells_per_patient": cells_per_patient,
        "size": size,
        "seed": seed,
        "version": GENERATOR_VERSION,
    }
    if _is_complete(target, params):
        logger.info("Demo data in %s is already complete.", target)
        return target
    if target.exists() and not (target / MARKER).is_file():
        raise DataError(f"The folder {target} exists and does not hold generated demo data.")
    _build(target, params)
    logger.info("Wrote demo data to %s.", target)
    return target


def _build(target: Path, params: dict) -> None:
    """Draw into a hidden sibling, then rename: an interrupted run leaves no half tree."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the data set is not
        _write_tree(staging, params)
        (staging / MARKER).write_text(json.dumps(params, sort_keys=True))
        _publish(staging, target, params)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def draw_cells(rng: np.random.Generator, label: str, n: int, size: int, stain: dict) -> np.ndarray:
    """``n`` cells of class ``label`` as uint8 array (n, size, size, 3)."""
    look = LOOKS[label]
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres; float32 halves the time
    cell, nucleus, (nuc_x, nuc_y, nuc_r) = _shapes(rng, look, stain, grid, n)
    darkness = _chromatin(rng, look, n, size) - _nucleoli(rng, look, grid, nuc_x, nuc_y, nuc_r)
    rgb = _paint(rng, stain, cell, nucleus, np.clip(darkness, 0.0, 1.0))
    return np.ascontiguousarray(np.rint(rgb * 255).astype(np.uint8).transpose(1, 2, 3, 0))


def _shapes(rng: np.random.Generator, look: ClassLook, stain: dict, grid: np.ndarray, n: int) -> tuple:
    """Soft masks of cells and their off-centre nuclei, and the nuclei's (x, y, radius)."""
    size = len(grid)
    cell_r = size * rng.uniform(0.27, 0.35, n)
    cell_x, cell_y = size / 2 + rng.normal(0, size * 0.05, (2, n))
    cell = _blob(rng, grid, cell_x, cell_y, cell_r, irregularity=np.full(n, 0.05))
    ratio = np.clip(rng.normal(*look.nucleus_ratio, n) + stain["ratio_shift"], 0.45, 0.92)
    nuc_r = ratio * cell_r
    offset = (cell_r - nuc_r) * rng.uniform(0.0, 0.7, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    nuc_x, nuc_y = cell_x + offset * np.cos(angle), cell_y + offset * np.sin(angle)
    nucleus = _blob(rng, grid, nuc_x, nuc_y, nuc_r, np.abs(rng.normal(*look.lobing, n))) * cell
    return cell, nucleus, (nuc_x, nuc_y, nuc_r)


def _paint(rng: np.random.Generator, stain: dict, cell: np.ndarray, nucleus: np.ndarray,
           darkness: np.ndarray) -> np.ndarray:
    """RGB in 0..1 as (3, n, S, S): channels first, since numpy is slow on a trailing axis of 3."""
    n, size = cell.shape[:2]
    light, dark, cyto = (_channels(stain[key]) for key in ("light", "dark", "cytoplasm"))
    nucleus_rgb = light + (dark - light) * darkness
    cyto_rgb = cyto * (1 + 0.04 * _smooth_noise(rng, n, size, max(2, size // 4)))
    rgb = cyto_rgb + (nucleus_rgb - cyto_rgb) * nucleus
    brightness = (stain["brightness"] * rng.normal(1.0, 0.04, n)).astype(np.float32)
    rgb = rgb * brightness[:, None, None] + 0.012 * rng.standard_normal(rgb.shape, dtype=np.float32)
    # Multiply by the cell mask last so the background stays exactly black, as in C-NMC.
    return np.clip(rgb, 0, 1) * cell


def _channels(colour: np.ndarray) -> np.ndarray:
    return colour.astype(np.float32).reshape(3, 1, 1, 1)


def patient_stain(rng: np.random.Generator) -> dict:
    """Per-patient staining: hue, brightness and a small shift of the nucleus ratio."""
    hue = np.exp(rng.normal(0, 0.07, 3)).astype(np.float32)
    return {
        "cytoplasm": _CYTOPLASM * hue,
        "light": _NUCLEUS_LIGHT * hue,
        "dark": _NUCLEUS_DARK * hue,
        "brightness": rng.normal(1.0, 0.07),
        "ratio_shift": rng.normal(0, 0.025),
    }


def _write_tree(folder: Path, params: dict) -> None:
    size, cells = params["size"], params["cells_per_patient"]
    for class_index, label in enumerate(CLASSES):
        for patient_index in range(params["n_patients_per_class"]):
            rng = np.random.default_rng([params["seed"], class_index, patient_index])
            patient = f"{patient_index + 1}" if label == "all" else f"H{patient_index + 1}"
            images = draw_cells(rng, label, cells, size, patient_stain(rng))
            out = folder / "training_data" / f"fold_{patient_index % N_FOLDS}" / label
            out.mkdir(parents=True, exist_ok=True)
            for index, pixels in enumerate(images):
                image_no, cell_no = divmod(index, CELLS_PER_IMAGE)
                name = f"UID_{patient}_{image_no + 1}_{cell_no + 1}_{label}.bmp"
                Image.fromarray(pixels).save(out / name, format="BMP")


def _blob(rng: np.random.Generator, grid: np.ndarray, x: np.ndarray, y: np.ndarray,
          radius: np.ndarray, irregularity: np.ndarray) -> np.ndarray:
    """Soft mask (n, S, S) of roundish shapes whose outline wobbles by ``irregularity``."""
    dx = grid[None, None, :] - x.astype(np.float32)[:, None, None]
    dy = grid[None, :, None] - y.astype(np.float32)[:, None, None]
    theta = np.arctan2(dy, dx)
    n = len(x)
    outline = np.ones_like(theta)
    for harmonic in (2, 3, 5):  # 2 elongates, 3 and 5 dent the outline
        amplitude = (irregularity * rng.uniform(0.3, 1.0, n) / (harmonic - 1)).astype(np.float32)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
        outline = outline + amplitude * np.cos(harmonic * theta + phase)
    distance = np.hypot(dx, dy) - radius.astype(np.float32)[:, None, None] * outline
    return 1 / (1 + np.exp(np.clip(distance / 0.6, -50, 50)))  # ~1 pixel soft edge


def _chromatin(rng: np.random.Generator, look: ClassLook, n: int, size: int) -> np.ndarray:
    """Darkness of the nucleus: base density plus coarse clumps and fine grain."""
    density = rng.normal(*look.density, n).astype(np.float32)[:, None, None]
    clumping = np.abs(rng.normal(*look.clumping, n)).astype(np.float32)[:, None, None]
    grain = np.abs(rng.normal(*look.fine_texture, n)).astype(np.float32)[:, None, None]
    coarse = _smooth_noise(rng, n, size, max(2, size // 8))
    fine = _smooth_noise(rng, n, size, max(2, size // 2))
    return density + clumping * coarse + grain * fine


def _nucleoli(rng: np.random.Generator, look: ClassLook, grid: np.ndarray,
              x: np.ndarray, y: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Lightening (n, S, S) by up to three small round nucleoli inside the nucleus."""
    n = len(x)
    light = np.zeros((n, len(grid), len(grid)), dtype=np.float32)
    for _ in range(3):
        shows = rng.random(n) < look.nucleolus_chance
        angle, reach = rng.uniform(0, 2 * np.pi, n), radius * rng.uniform(0, 0.55, n)
        spot = _gaussian_spot(grid, x + reach * np.cos(angle), y + reach * np.sin(angle),
                              radius * rng.uniform(0.10, 0.16, n))
        light += (shows * rng.uniform(0.25, 0.45, n)).astype(np.float32)[:, None, None] * spot
    return light


def _gaussian_spot(grid: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    dx = grid[None, None, :] - x.astype(np.float32)[:, None, None]
    dy = grid[None, :, None] - y.astype(np.float32)[:, None, None]
    return np.exp(-(dx**2 + dy**2) / (2 * sigma.astype(np.float32)[:, None, None] ** 2))


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """Unit-variance value noise (n, S, S) with about ``cells`` blobs per side."""
    knots = rng.standard_normal((n, cells + 1, cells + 1), dtype=np.float32)
    position = np.arange(size, dtype=np.float32) * np.float32(cells / size)
    index = position.astype(int)
    t = position - index
    t = t * t * (3 - 2 * t)  # smoothstep hides the grid
    rows = knots[:, index, :] * (1 - t)[None, :, None] + knots[:, index + 1, :] * t[None, :, None]
    noise = rows[:, :, index] * (1 - t)[None, None, :] + rows[:, :, index + 1] * t[None, None, :]
    return noise / noise.std(axis=(1, 2), keepdims=True)


def _is_complete(target: Path, params: dict) -> bool:
    try:
        return json.loads((target / MARKER).read_text()) == params
    except (OSError, json.JSONDecodeError):
        return False


def _publish(staging: Path, target: Path, params: dict) -> None:
    """Move the finished tree into place, replacing an outdated demo tree."""
    outdated = None
    if target.exists():
        outdated = target.with_name(f".{target.name}-outdated-{os.getpid()}")
        os.replace(target, outdated)
    try:
        os.replace(staging, target)
    except OSError:
        # Another process published the same tree first; theirs is as good as ours.
        if not _is_complete(target, params):
            raise
    if outdated is not None:
        shutil.rmtree(outdated, ignore_errors=True)
