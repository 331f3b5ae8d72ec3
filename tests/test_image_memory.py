"""Memory is bounded by the working resolution, not by the file.

Peak memory is measured in a subprocess (``ru_maxrss``) whose address space
is capped, so that a regression fails with MemoryError instead of taking the
machine down: a 1 x 100000 PNG of a few hundred bytes once needed 30 GB.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import subprocess_env
from PIL import Image
from typer.testing import CliRunner

from noisystudent.cli import app
from noisystudent.data.images import MAX_PIXELS, load_rgb, reduce_image
from noisystudent.data.inspection import inspect_dataset
from noisystudent.data.preprocess import PreprocessSpec, preprocess
from noisystudent.errors import DataError

PEAK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from noisystudent.data.images import probe_image
from noisystudent.data.preprocess import PreprocessSpec, load_preprocessed
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "preprocess":
    print(load_preprocessed(sys.argv[2], PreprocessSpec(image_size=224)).shape)
else:
    print(probe_image(sys.argv[2]))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def peak_mb(what: str, path) -> tuple[str, int]:
    """(printed result, peak RSS growth in MB) of preprocessing or probing ``path`` in a fresh process."""
    done = subprocess.run([sys.executable, "-c", PEAK, what, str(path)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result, megabytes = done.stdout.strip().splitlines()
    return result, int(megabytes)


def test_a_one_pixel_wide_png_is_reduced_before_it_is_padded(tmp_path):
    path = tmp_path / "thin.png"
    Image.new("L", (1, 100_000), 200).save(path)
    assert path.stat().st_size < 1000
    result, megabytes = peak_mb("preprocess", path)
    assert result == "(3, 224, 224)"
    assert megabytes < 100  # measured 4 MB; padding first allocated a 100000^2 square (30 GB)


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (8000, 8000)).save(path)  # 64 M pixels, 80 kB on disk
    result, megabytes = peak_mb("probe", path)
    assert "8000 x 8000 pixels, more than the 50,000,000 noisystudent decodes" in result
    assert megabytes < 50
    with pytest.raises(DataError, match="shrink it first"):
        load_rgb(path)


def test_a_large_float_image_is_reduced_in_its_own_mode(tmp_path):
    path = tmp_path / "float.tif"
    Image.new("F", (3000, 3000), 1.5).save(path)  # 36 MB decoded; a float64 RGB copy would be 216 MB
    result, megabytes = peak_mb("preprocess", path)
    assert result == "(3, 224, 224)"
    assert megabytes < 120


def test_images_up_to_four_times_the_working_size_are_not_reduced():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 128, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert reduce_image(image, 4 * 32) is image
    spec = PreprocessSpec(image_size=32)
    padded = Image.new("RGB", (128, 128))
    padded.paste(image, (0, 44))
    expected = np.asarray(padded.resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=None)).transpose(2, 0, 1)
    assert np.array_equal(preprocess(image, spec), expected)


def test_reduction_averages_colours_not_palette_indices():
    """Columns alternate index 0 (black) and 2 (white); index 1 is red. Averaged indices would give red."""
    image = Image.new("P", (90, 9))
    image.putpalette([0, 0, 0, 255, 0, 0, 255, 255, 255] + [0] * 759)
    image.putdata([2 * (i % 2) for i in range(90 * 9)])
    reduced = np.asarray(reduce_image(image, 45))
    assert reduced.shape == (5, 45, 3)
    assert (reduced == 128).all()  # grey: (0 + 255) / 2


@pytest.mark.parametrize("mode, value", [("I;16", 25700), ("F", 1.5), ("L", 7), ("1", 1)])
def test_reduction_keeps_the_values_of_uniform_images(mode, value):
    reduced = reduce_image(Image.new(mode, (90, 9), value), 30)
    assert reduced.size == (30, 3)
    assert len(set(reduced.getdata())) == 1


def test_inspect_reports_huge_and_elongated_images(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for n in range(2):
            Image.new("RGB", (16, 16), (n * 50, 0, 0)).save(tmp_path / label / f"p{n}{label}_0.png")
    Image.new("L", (1, 5000), 90).save(tmp_path / "a" / "p0a_thin.png")
    Image.new("L", (8000, 8000)).save(tmp_path / "b" / "p0b_huge.png")
    report = inspect_dataset(tmp_path, "folders")
    problems = " ".join(report.problems)
    assert f"{tmp_path / 'b' / 'p0b_huge.png'} cannot be read: it has 8000 x 8000 pixels" in problems
    assert f"1 images are more than 20 times longer than wide, e.g. {tmp_path / 'a' / 'p0a_thin.png'} (1 x 5000)" in problems
    result = CliRunner().invoke(app, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 0 and "No problems found" not in result.output


def test_the_pixel_limit_is_documented_in_the_limit_constant():
    assert MAX_PIXELS == 50_000_000
