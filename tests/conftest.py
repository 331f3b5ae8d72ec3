"""Fixtures over tests/helpers.py (tiny images in tmp_path, the real C-NMC sample) and the check of the slow marker."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

import helpers
import pytest
import torch

# Exported ONNX graphs (onnx_runtime.cache_dir) go to a temporary folder, not the user's ~/.cache.
os.environ.setdefault("NOISYSTUDENT_CACHE_DIR", tempfile.mkdtemp(prefix="noisystudent-test-cache-"))

# Tiny tensors run faster on one thread, and a busy 2-core machine stops thrashing.
torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """Set-up (module fixtures too) may train only for a test marked slow."""
    before = helpers.optimizer_steps()
    result = yield
    helpers.check_slow_marker(item, before)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test that trains a model must be marked slow, so that ``-m "not slow"`` trains none."""
    before = helpers.optimizer_steps()
    result = yield
    helpers.check_slow_marker(item, before)
    return result


@pytest.fixture
def make_image():
    """``make_image(path, colour, size, mode)`` writes a small single-colour image."""
    return helpers.save_image


@pytest.fixture
def make_noise():
    """``make_noise(path, size, seed)`` writes a random RGB image."""
    return helpers.save_noise


@pytest.fixture
def make_truncated():
    """``make_truncated(path, keep)`` cuts a file to a fraction of its bytes."""
    return helpers.truncate


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """root/{benign,malignant}/p<NN>_<i>.png, 8x6 RGB: 2 classes x 2 patients (p01 p02 | p03 p04) x 2 images."""
    return helpers.write_class_folders(tmp_path / "folders", patients_per_class=2, images_per_patient=2, size=(8, 6))


@pytest.fixture(scope="session")
def cnmc_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the unpacked real C-NMC sample (59 cells), or skip."""
    archive = helpers.cnmc_sample_archive()
    if not archive.is_file():
        pytest.skip(
            f"The real C-NMC sample {archive} is not available: put the shared folder beside the checkout "
            f"(../shared/data/) or set {helpers.CNMC_SAMPLE_VARIABLE} to the archive."
        )
    folder = tmp_path_factory.mktemp("cnmc-sample")
    with tarfile.open(archive) as opened:
        opened.extractall(folder, filter="data")
    return folder
