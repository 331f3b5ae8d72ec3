import pytest
import torch

from noisystudent.errors import ConfigError
from noisystudent.training.augment import IMAGENET_MEAN, IMAGENET_STD, create_augment, normalize, random_affine

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _batch(count=8, size=16, seed=0):
    return torch.randint(0, 256, (count, 3, size, size), generator=_gen(seed), dtype=torch.uint8)


def _cells(count=16, size=32):
    """Black images with a bright, textured square in the middle (like a cell)."""
    x = torch.zeros((count, 3, size, size), dtype=torch.uint8)
    inner = torch.randint(120, 256, (count, 3, size // 2, size // 2), generator=_gen(5), dtype=torch.uint8)
    x[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = inner
    return x


def _dihedral_variants(x):
    """The 8 dihedral transforms of one (3, H, W) image."""
    variants = []
    for k in range(4):
        rotated = torch.rot90(x, k, dims=(-2, -1))
        variants += [rotated, rotated.flip(-1)]
    return variants


def test_normalize_is_imagenet_standardisation():
    x = _batch()
    expected = (x.float() / 255 - MEAN) / STD
    torch.testing.assert_close(normalize(x), expected, rtol=0, atol=1e-5)
    out = normalize(x, image_size=8)
    assert out.shape == (8, 3, 8, 8) and out.dtype == torch.float32


@pytest.mark.parametrize("level,randaugment", [("light", False), ("strong", False), ("strong", True), ("none", True)])
def test_same_seed_same_output_other_seed_differs(level, randaugment):
    aug = create_augment(level, randaugment)
    x = _cells()
    a, b, c = aug(x, _gen(1)), aug(x, _gen(1)), aug(x, _gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()


def test_none_equals_normalize():
    x = _batch()
    aug = create_augment("none")
    assert torch.equal(aug(x, _gen(0)), normalize(x))
    assert torch.equal(aug.normalize(x), normalize(x))


def test_light_is_a_dihedral_transform_of_each_sample():
    x = _batch(count=32)
    out = create_augment("light")(x, _gen(3))
    reference = normalize(x)
    used = set()
    for i in range(len(x)):
        matches = [k for k, v in enumerate(_dihedral_variants(reference[i])) if torch.allclose(out[i], v, atol=1e-5)]
        assert matches, f"sample {i} is not a dihedral transform of its input"
        used.add(matches[0])
    assert len(used) >= 5  # per-sample choices cover the group


def test_light_on_non_square_only_flips():
    x = torch.randint(0, 256, (16, 3, 8, 12), generator=_gen(0), dtype=torch.uint8)
    out = create_augment("light")(x, _gen(1))
    reference = normalize(x)
    for i in range(len(x)):
        flips = [reference[i], reference[i].flip(-1), reference[i].flip(-2), reference[i].flip(-2, -1)]
        assert any(torch.allclose(out[i], v, atol=1e-5) for v in flips)


def test_strong_randomness_is_per_sample():
    x = _cells(count=1).expand(16, -1, -1, -1).contiguous()
    for randaugment in (False, True):
        out = create_augment("strong", randaugment)(x, _gen(0))
        distinct = {tuple(o.flatten().tolist()) for o in out}
        assert len(distinct) > 8


def test_affine_keeps_black_background_black():
    x = _cells().float() / 255
    out = random_affine(x, _gen(0))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # Corners come from outside the bright square or outside the image: black.
    assert out[..., :4, :4].max() == 0 and out[..., -4:, -4:].max() == 0
    assert out.mean() == pytest.approx(x.mean().item(), rel=0.3)  # content kept, not blanked


def test_strong_keeps_background_near_black():
    out = create_augment("strong")(_cells(), _gen(0))
    pixels = out * STD + MEAN  # back to [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    corners = torch.cat([pixels[..., :3, :3].flatten(), pixels[..., -3:, -3:].flatten()])
    assert corners.max() < 0.1  # contrast may lift black by a little
    assert pixels[..., 12:20, 12:20].mean() > 0.3  # the cell is still bright


def test_output_size_follows_image_size():
    aug = create_augment("strong", image_size=8)
    out = aug(_cells(count=4, size=32), _gen(0))
    assert out.shape == (4, 3, 8, 8)
    assert aug.normalize(_cells(count=4, size=32)).shape == (4, 3, 8, 8)


def test_unknown_level_is_refused():
    with pytest.raises(ConfigError, match="heavy"):
        create_augment("heavy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("level,randaugment", [("none", False), ("light", False), ("strong", True)])
def test_cuda_augment_does_not_sync_and_is_deterministic(level, randaugment):
    aug = create_augment(level, randaugment, image_size=24)
    x = _cells().cuda()
    aug(x, torch.Generator(device="cuda").manual_seed(0))  # warm up: constants are made once
    torch.cuda.set_sync_debug_mode("error")
    try:
        a = aug(x, torch.Generator(device="cuda").manual_seed(7))
        b = aug(x, torch.Generator(device="cuda").manual_seed(7))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert a.is_cuda and a.shape == (16, 3, 24, 24) and torch.equal(a, b)
