"""Shared fixtures: tiny images written into tmp_path, and the real C-NMC sample."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import os

import torch

# The real sample lies in ../shared/data beside the checkout (CI clones next to shared/ too).
_SAMPLE_CANDIDATES = [
    os.environ.get("NOISYSTUDENT_CNMC_SAMPLE", ""),
    str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cnmc-sample.tar.gz"),
    "/work/shared/data/cnmc-sample.tar.gz",
]
CNMC_SAMPLE = next((Path(p) for p in _SAMPLE_CANDIDATES if p and Path(p).is_file()), Path(_SAMPLE_CANDIDATES[1]))

# Exported ONNX graphs (onnx_backend.cache_dir) go to a temporary folder, not the user's ~/.cache.
os.environ.setdefault("NOISYSTUDENT_CACHE_DIR", tempfile.mkdtemp(prefix="noisystudent-test-cache-"))

# Tiny tensors run faster on one thread, and a busy 2-core machine stops thrashing.
torch.set_num_threads(1)


def save_image(path: Path, colour=(200, 40, 120), size=(8, 6), mode: str = "RGB") -> Path:
    """Write a small single-colour image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def save_noise(path: Path, size: int = 32, seed: int = 0) -> Path:
    """Write a random RGB image (incompressible, so truncating it cuts pixel data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def make_image():
    """``make_image(path, colour, size, mode)`` writes a small single-colour image."""
    return save_image


@pytest.fixture
def make_noise():
    """``make_noise(path, size, seed)`` writes a random RGB image."""
    return save_noise


@pytest.fixture
def make_truncated():
    """``make_truncated(path, keep)`` cuts a file to a fraction of its bytes."""
    return truncate


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """root/{benign,malignant}/p<patient>_<n>.png: 2 classes x 2 patients x 2 images."""
    root = tmp_path / "folders"
    for label, colour in (("benign", (30, 200, 30)), ("malignant", (200, 30, 30))):
        for patient in (1, 2):
            for n in (1, 2):
                save_image(root / label / f"p{patient}{label[0]}_{n}.png", colour)
    return root


@pytest.fixture(scope="session")
def cnmc_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the unpacked real C-NMC sample (59 cells), or skip."""
    if not CNMC_SAMPLE.is_file():
        pytest.skip(f"The real C-NMC sample {CNMC_SAMPLE} is not available.")
    folder = tmp_path_factory.mktemp("cnmc-sample")
    with tarfile.open(CNMC_SAMPLE) as archive:
        archive.extractall(folder, filter="data")
    return folder
