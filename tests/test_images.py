from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from noisystudent.data.images import find_unreadable, image_size, load_rgb, probe_image, probe_images
from noisystudent.errors import DataError


def pixels(path: Path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grey_becomes_three_equal_channels(tmp_path, make_image):
    path = make_image(tmp_path / "grey.png", colour=100, mode="L")
    assert pixels(path).shape == (6, 8, 3)
    assert (pixels(path) == 100).all()


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 128)  # half transparent
    rgba[0, 1] = (200, 100, 50, 255)  # opaque
    rgba[0, 2] = (255, 255, 255, 0)  # fully transparent white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert pixels(tmp_path / "a.png").tolist() == [[[100, 50, 25], [200, 100, 50], [0, 0, 0]]]


def test_grey_with_alpha_is_composited_on_black(tmp_path, make_image):
    path = make_image(tmp_path / "la.png", colour=(200, 0), mode="LA")
    assert (pixels(path) == 0).all()


def test_palette_maps_to_palette_colours(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 240, 120, 60] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png")
    assert pixels(tmp_path / "p.png").tolist() == [[[10, 20, 30], [240, 120, 60]]]


def test_palette_transparency_becomes_black(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 240, 120, 60] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "t.png", transparency=1)
    assert pixels(tmp_path / "t.png").tolist() == [[[10, 20, 30], [0, 0, 0]]]


def test_sixteen_bit_png_is_divided_by_257(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    assert pixels(tmp_path / "16.png")[0, :, 0].tolist() == [0, 100, 255, 4]


def test_32_bit_integers_beyond_16_bits_are_stretched_to_their_range(tmp_path):
    values = np.array([[-1000, 0, 1000, 3000]], dtype=np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "32.tif")
    assert pixels(tmp_path / "32.tif")[0, :, 1].tolist() == [0, 64, 128, 255]


def test_float_image_is_stretched_to_its_range(tmp_path):
    values = np.array([[2.0, 2.5, 3.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert pixels(tmp_path / "f.tif")[0, :, 2].tolist() == [0, 128, 255]


def test_cmyk_and_bilevel_convert(tmp_path, make_image):
    assert (pixels(make_image(tmp_path / "c.tif", colour=(0, 0, 0, 0), mode="CMYK")) == 255).all()
    assert (pixels(make_image(tmp_path / "k.tif", colour=(0, 0, 0, 255), mode="CMYK")) == 0).all()
    assert (pixels(make_image(tmp_path / "b.png", colour=1, mode="1")) == 255).all()


def test_rgb_file_is_returned_unchanged(tmp_path, make_noise):
    path = make_noise(tmp_path / "n.bmp", size=16, seed=3)
    expected = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(pixels(path), expected)


@pytest.mark.parametrize("name", ["cut.png", "cut.bmp", "cut.jpg", "cut.tif"])
def test_truncated_image_raises_naming_file(tmp_path, make_noise, make_truncated, name):
    path = make_truncated(make_noise(tmp_path / name, size=64), keep=0.6)
    with pytest.raises(DataError) as caught:
        load_rgb(path)
    assert str(path) in str(caught.value)
    assert "truncated" in str(caught.value)


def test_text_file_with_image_extension_raises_naming_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(DataError, match="not an image file") as caught:
        load_rgb(path)
    assert str(caught.value) == f"The image {path} cannot be read: it is not an image file in a format that can be decoded."


def test_missing_file_raises_naming_file(tmp_path):
    path = tmp_path / "gone.bmp"
    with pytest.raises(DataError) as caught:
        load_rgb(path)
    assert str(caught.value) == f"The image {path} does not exist."
    with pytest.raises(DataError, match="does not exist"):
        image_size(path)


def test_image_size_reads_only_the_header(tmp_path, make_noise, make_truncated):
    path = make_truncated(make_noise(tmp_path / "wide.png", size=40), keep=0.5)
    assert image_size(path) == (40, 40)  # header intact, pixels cut


def test_probe_reports_size_mode_or_error(tmp_path, make_image):
    grey = make_image(tmp_path / "g.png", colour=7, size=(5, 3), mode="L")
    assert probe_image(grey) == probe_image(str(grey))
    info = probe_image(grey)
    assert (info.width, info.height, info.mode, info.error) == (5, 3, "L", "")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    assert str(bad) in probe_image(bad).error


def test_find_unreadable_lists_only_bad_files_in_order(tmp_path, make_image, make_noise, make_truncated):
    good = [str(make_image(tmp_path / f"ok{i}.png", colour=(i, i, i))) for i in range(5)]
    cut = str(make_truncated(make_noise(tmp_path / "cut.png", size=64), keep=0.5))
    text = tmp_path / "text.bmp"
    text.write_text("hello")
    paths = good[:2] + [cut] + good[2:] + [str(text), str(tmp_path / "missing.png")]
    bad = find_unreadable(paths, workers=3)
    assert [path for path, _ in bad] == [cut, str(text), str(tmp_path / "missing.png")]
    assert "truncated" in bad[0][1] and "not an image" in bad[1][1] and "does not exist" in bad[2][1]
    assert [info.path for info in probe_images(paths, workers=2)] == paths


def test_exif_orientation_is_applied_as_viewers_do(tmp_path):
    """A photo stored sideways with EXIF orientation 6 (rotate 90° clockwise) used to be decoded unrotated."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of the stored image
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.png", exif=exif)
    upright = np.asarray(load_rgb(tmp_path / "sideways.png"))
    assert upright.shape == (40, 20, 3)  # turned: 40 high, 20 wide
    assert upright[:10].min() == 255 and upright[10:].max() == 0  # the left band is now on top
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "sideways.png")), np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "sideways.png")).convert("RGB")))
