"""A full disk at each writer ends in the documented sentence and leaves the previous file intact.

Writers: the image cache (a memory-mapped .npy: on a full disk a store into a
sparse map is a SIGBUS, so its blocks are allocated first), checkpoint.pt and
model.pt (torch.save's C++ writer masks our ENOSPC as RuntimeError), and every
CSV, the report page and its figures (atomic.py).
"""

from __future__ import annotations

import errno
import io

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PATIENT_REGEX, torch_threads, write_class_folders
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from noisystudent import atomic
from noisystudent.cli import app
from noisystudent.data import cache
from noisystudent.data.preprocess import PreprocessSpec
from noisystudent.errors import DiskFullError
from noisystudent.models import checkpoint
from noisystudent.report import plots


def _message(target, kept: bool) -> str:
    state = f"the previous version of {target} is intact" if kept else f"{target} was not written"
    return f"No space left on device while writing {target}; {state}. Free some space and continue with --resume."


class FillsUp(io.FileIO):
    """A real file that reports ENOSPC once ``limit`` bytes have been written, as a full disk does."""

    limit = 0

    def write(self, data) -> int:
        if self.tell() + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def _full_after(limit: int):
    def opener(path, mode="r", *args, **kwargs):
        FillsUp.limit = limit
        return FillsUp(path, mode.replace("b", "") or "r")

    return opener


@pytest.mark.parametrize("name", ["checkpoint.pt", "model.pt"])
@pytest.mark.parametrize("limit", [10, 5000], ids=["in-the-header", "in-the-tensors"])
def test_a_full_disk_while_saving_a_torch_file(tmp_path, monkeypatch, name, limit):
    """At 5000 bytes torch's C++ writer raises RuntimeError('unexpected pos ...'), the ENOSPC only its context."""
    target = tmp_path / name
    checkpoint.save(target, {"model": {"w": torch.ones(3)}})
    before = target.read_bytes()
    monkeypatch.setattr(checkpoint, "open", _full_after(limit), raising=False)
    with pytest.raises(DiskFullError) as raised:
        checkpoint.save(target, {"model": {"w": torch.zeros(100_000)}})
    assert str(raised.value) == _message(target, kept=True)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_torch_error_without_a_full_disk_is_not_disguised(tmp_path, monkeypatch):
    def broken(payload, handle):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(RuntimeError, match="some other failure"):
        checkpoint.save(tmp_path / "checkpoint.pt", {})


@pytest.mark.parametrize("writer", ["csv", "text", "figure"])
def test_a_full_disk_while_writing_a_table_the_page_or_a_figure(tmp_path, monkeypatch, writer):
    target = tmp_path / {"csv": "predictions.csv", "text": "report.html", "figure": "roc.png"}[writer]
    target.write_text("previous\n")

    def half_then_full(self, path, *args, **kwargs):
        open(path, "w").write("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    monkeypatch.setattr("pathlib.Path.write_text", lambda self, text: half_then_full(None, self))
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", half_then_full)
    with pytest.raises(DiskFullError) as raised:
        if writer == "csv":
            atomic.write_csv(target, pd.DataFrame({"a": [1]}))
        elif writer == "text":
            atomic.write_text(target, "<html>")
        else:
            plots.save(Figure(), target)  # every figure of the report is written here
    assert str(raised.value) == _message(target, kept=True)
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# --- the image cache ------------------------------------------------------------------------


def _images(folder, count=3):
    folder.mkdir()
    paths = []
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def _no_space(handle, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_the_cache_allocates_its_blocks_before_mapping_them(tmp_path, monkeypatch):
    """On a full disk the allocation fails with ENOSPC, before a store into the map could SIGBUS."""
    paths = _images(tmp_path / "images")
    monkeypatch.setattr(cache.os, "posix_fallocate", _no_space)
    spec = PreprocessSpec(image_size=16)
    npy = tmp_path / "cache" / f"images-{cache.cache_fingerprint(paths, spec)[:24]}.npy"
    with pytest.raises(DiskFullError) as raised:
        cache.build_cache(paths, spec, tmp_path / "cache", workers=1)
    assert str(raised.value) == _message(npy, kept=False)
    assert list((tmp_path / "cache").iterdir()) == []  # no temporary .npy left behind
    monkeypatch.undo()
    built = cache.build_cache(paths, spec, tmp_path / "cache", workers=1)
    assert built.array.shape == (3, 3, 16, 16) and built.npy_path == npy


def test_the_cache_is_fully_allocated_on_disk(tmp_path):
    paths = _images(tmp_path / "images")
    built = cache.build_cache(paths, PreprocessSpec(image_size=64), tmp_path / "cache", workers=1)
    stat = built.npy_path.stat()
    assert stat.st_blocks * 512 >= stat.st_size  # not sparse


def test_a_full_disk_while_building_the_cache_is_one_sentence_and_the_run_resumes(tmp_path, monkeypatch):
    from noisystudent.run import pipeline

    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))
    run = tmp_path / "run"
    flags = ["--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--epochs", "1",
             "--image-size", "16", "--weights", "none", "--arch", "resnet18", "--device", "cpu", "--workers", "1", "--quiet",
             "--test-fraction", "0"]  # 2 patients per class: no outer test set
    monkeypatch.setattr(cache.os, "posix_fallocate", _no_space)
    with torch_threads(1):
        full = CliRunner().invoke(app, ["kfold", str(data), "--out", str(run), *flags])
    line = " ".join(full.output.split())
    assert full.exit_code == 2 and "Traceback" not in full.output, line
    assert f"No space left on device while writing {run / 'cache'}/images-" in line and "was not written" in line
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "run_fold", lambda run_ctx, fold: (_ for _ in ()).throw(KeyboardInterrupt))
    with torch_threads(1):
        resumed = CliRunner().invoke(app, ["kfold", "--out", str(run), "--resume"])
    assert resumed.exit_code == 130, resumed.output  # past the cache: built this time
    assert len(list((run / "cache").glob("images-*.npy"))) == 1
