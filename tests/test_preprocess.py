import numpy as np
import pytest
from PIL import Image

from noisystudent.config.run_config import RunConfig
from noisystudent.data.preprocess import PreprocessSpec, content_box, equalize, preprocess
from noisystudent.errors import ConfigError


def _rgb(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8), "RGB")


def _black_with_rectangle(value: int = 200) -> np.ndarray:
    pixels = np.zeros((100, 100, 3), np.uint8)
    pixels[10:40, 50:70] = value  # 30 rows x 20 columns
    return pixels


def test_black_border_is_cropped_exactly():
    pixels = _black_with_rectangle()
    pixels[10:40, 50:70, 1] = np.arange(20, dtype=np.uint8)  # distinguishable columns
    image = _rgb(pixels)
    assert content_box(image, 10) == (50, 10, 70, 40)
    spec = PreprocessSpec(image_size=30, crop_black=True, crop_threshold=10)
    out = preprocess(image, spec)  # 20 x 30 padded with 5 black columns each side -> 30 x 30
    assert out.shape == (3, 30, 30) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 5:25], pixels[10:40, 50:70].transpose(2, 0, 1))
    assert out[:, :, :5].max() == 0 and out[:, :, 25:].max() == 0


def test_crop_threshold_counts_dim_pixels_as_black():
    pixels = _black_with_rectangle()
    pixels[0, 0] = (10, 3, 0)  # max channel == threshold: black
    pixels[99, 99] = (0, 11, 0)  # above threshold: content
    image = _rgb(pixels)
    assert content_box(image, 10) == (50, 10, 100, 100)
    assert content_box(image, 11) == (50, 10, 70, 40)


def test_all_black_image_is_kept_whole():
    image = _rgb(np.zeros((20, 40, 3)))
    assert content_box(image, 10) is None
    out = preprocess(image, PreprocessSpec(image_size=16, crop_black=True))
    assert out.shape == (3, 16, 16) and out.max() == 0


def test_crop_black_off_keeps_border():
    out = preprocess(_rgb(_black_with_rectangle()), PreprocessSpec(image_size=100))
    np.testing.assert_array_equal(out.transpose(1, 2, 0), _black_with_rectangle())


def _low_contrast(seed: int = 0) -> np.ndarray:
    # large enough that the integer step of PIL.ImageOps.equalize is accurate
    rng = np.random.default_rng(seed)
    return rng.integers(100, 164, size=(256, 256, 3)).astype(np.uint8)


def _max_cdf_gap(grey: np.ndarray) -> float:
    """Largest gap between value / 255 and the fraction of pixels below it.

    Equalisation maps each level to 255 x the fraction of pixels darker than it.
    """
    values, counts = np.unique(grey, return_counts=True)
    below = (np.cumsum(counts) - counts) / grey.size
    return float(np.max(np.abs(below - values / 255)))


def test_grey_equalisation_flattens_the_histogram():
    pixels = _low_contrast()
    out = preprocess(_rgb(pixels), PreprocessSpec(image_size=256, equalize="grey"))
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    assert out.min() <= 10 and out.max() >= 245  # was 100..163
    grey_before = np.asarray(_rgb(pixels).convert("L"))
    assert _max_cdf_gap(grey_before) > 0.3
    assert _max_cdf_gap(out[0]) < 0.03


def test_channel_equalisation_is_per_channel():
    pixels = _low_contrast()
    pixels[..., 2] -= 70  # blue much darker
    out = preprocess(_rgb(pixels), PreprocessSpec(image_size=256, equalize="channels"))
    for channel in range(3):
        assert _max_cdf_gap(out[channel]) < 0.03
    assert abs(float(out[2].mean()) - float(out[0].mean())) < 10  # blue no longer darker


def test_luminance_equalisation_keeps_chroma():
    pixels = _low_contrast()
    pixels[..., 0] = np.clip(pixels[..., 0].astype(int) + 60, 0, 255)  # reddish
    image = _rgb(pixels)
    out = preprocess(image, PreprocessSpec(image_size=256, equalize="luminance"))
    y_out = np.asarray(_rgb(out.transpose(1, 2, 0)).convert("YCbCr"))
    y_in = np.asarray(image.convert("YCbCr"))
    assert _max_cdf_gap(y_out[..., 0]) < 0.06  # looser: RGB clips saturated colours near Y = 255
    assert np.abs(y_out[..., 1:].astype(int) - y_in[..., 1:].astype(int)).mean() < 3
    assert out[0].mean() > out[1].mean() + 20  # still red


def test_equalize_none_is_identity():
    image = _rgb(_low_contrast())
    assert equalize(image, "none") is image


def test_center_crop_keeps_central_fraction():
    pixels = np.arange(40 * 40 * 3).reshape(40, 40, 3) % 251
    out = preprocess(_rgb(pixels), PreprocessSpec(image_size=20, center_crop=0.5))
    np.testing.assert_array_equal(out.transpose(1, 2, 0), pixels[10:30, 10:30])


def test_non_square_is_padded_not_stretched():
    pixels = np.full((20, 40, 3), 255, np.uint8)  # white, twice as wide as high
    out = preprocess(_rgb(pixels), PreprocessSpec(image_size=20))
    assert out.shape == (3, 20, 20)
    assert out[:, :4].max() == 0 and out[:, -4:].max() == 0  # black bands above and below
    assert out[:, 6:14].min() == 255  # a 20 x 10 white band in the middle
    assert (out[0] > 127).sum() == 20 * 10


def test_resize_is_bilinear_antialiased():
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, ::2] = 255  # one-pixel stripes average to grey when downscaled
    out = preprocess(_rgb(pixels), PreprocessSpec(image_size=16))
    assert 100 < out.mean() < 155 and out.std() < 20


def test_non_rgb_input_is_converted():
    out = preprocess(Image.new("L", (16, 16), 77), PreprocessSpec(image_size=16))
    assert out.shape == (3, 16, 16) and np.all(out == 77)


def test_spec_key_is_stable_and_distinguishes_settings():
    spec = PreprocessSpec(image_size=224)
    assert spec.key() == "s224-cropoff-eqnone-cc1.0"
    assert PreprocessSpec(224, crop_black=True, crop_threshold=12, equalize="grey", center_crop=0.875).key() == "s224-crop12-eqgrey-cc0.875"
    assert PreprocessSpec(224, crop_threshold=30).key() == spec.key()  # threshold unused without crop
    assert PreprocessSpec(225).key() != spec.key()


def test_spec_from_config():
    config = RunConfig(image_size=64, crop_black=True, crop_threshold=5, equalize="luminance", center_crop=0.9)
    assert PreprocessSpec.from_config(config) == PreprocessSpec(64, True, 5, "luminance", 0.9)
    assert PreprocessSpec.from_config(config, image_size=32).image_size == 32


@pytest.mark.parametrize("kwargs", [{"equalize": "histogram"}, {"center_crop": 0.0}, {"crop_threshold": 300}, {"image_size": 0}])
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        PreprocessSpec(**kwargs)
