import pytest
import torch

from noisystudent.errors import ConfigError
from noisystudent.inference.tta import N_VIEWS, predict_tta, tta_views


def _batch(count=3, size=16, seed=0):
    return torch.rand((count, 3, size, size), generator=torch.Generator().manual_seed(seed))


class RecordingModel:
    """Fake model: remembers every view and returns fixed logits per call."""

    def __init__(self, classes=2):
        self.views = []
        self.classes = classes

    def __call__(self, x):
        self.views.append(x.clone())
        call = len(self.views)
        return torch.stack([x.mean(dim=(1, 2, 3)) * call, -x[:, 0, 0, 0] * call], dim=1)


def _distinct(views):
    return len({tuple(v.flatten().tolist()) for v in views})


@pytest.mark.parametrize("mode", list(N_VIEWS))
def test_model_sees_distinct_views_of_input_size(mode):
    model = RecordingModel()
    x = _batch()
    probs = predict_tta(model, x, mode)
    assert len(model.views) == N_VIEWS[mode]
    assert _distinct(model.views) == N_VIEWS[mode]
    assert all(v.shape == x.shape for v in model.views)
    assert probs.shape == (3, 2) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


def test_views_are_the_documented_transforms():
    x = _batch(count=1, size=8)
    flips = tta_views(x, "flips")
    assert torch.equal(flips[0], x) and torch.equal(flips[1], x.flip(-1))
    assert torch.equal(flips[2], x.flip(-2)) and torch.equal(flips[3], x.flip(-2, -1))
    dihedral = tta_views(x, "dihedral")
    assert torch.equal(dihedral[2], torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(dihedral[5], torch.rot90(x, 2, dims=(-2, -1)).flip(-1))
    assert tta_views(x, "none")[0] is x


def test_five_crop_corners_and_centre():
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).expand(1, 3, 8, 8)
    crops = tta_views(x, "five_crop")  # 7 x 7 crops resized back to 8 x 8
    assert len(crops) == 5 and all(c.shape == x.shape for c in crops)
    assert crops[0][0, 0, 0, 0] == pytest.approx(0.0, abs=0.5)  # top-left corner
    assert crops[3][0, 0, -1, -1] == pytest.approx(63.0, abs=0.5)  # bottom-right corner
    assert crops[1][0, 0, 0, -1] == pytest.approx(7.0, abs=0.5)  # top-right
    assert crops[2][0, 0, -1, 0] == pytest.approx(56.0, abs=0.5)  # bottom-left
    ten = tta_views(x, "ten_crop")
    assert all(torch.equal(ten[5 + i], crops[i].flip(-1)) for i in range(5))


def test_probabilities_are_averaged_not_logits():
    x = _batch()
    model = RecordingModel()
    probs = predict_tta(model, x, "flips")
    replay = RecordingModel()
    expected = torch.stack([torch.softmax(replay(v), dim=1) for v in model.views]).mean(dim=0)
    torch.testing.assert_close(probs, expected)
    replay_logits = RecordingModel()
    from_logits = torch.softmax(torch.stack([replay_logits(v) for v in model.views]).mean(dim=0), dim=1)
    assert not torch.allclose(probs, from_logits)


@pytest.mark.parametrize("mode", ["flips", "dihedral"])
def test_invariant_model_gives_same_result_with_and_without_tta(mode):
    weights = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0]])

    def pooled_model(x):  # global average pooling: invariant to rotations and flips
        return x.mean(dim=(2, 3)) @ weights.T

    x = _batch()
    torch.testing.assert_close(predict_tta(pooled_model, x, mode), predict_tta(pooled_model, x, "none"))


def test_unknown_mode_is_refused():
    with pytest.raises(ConfigError, match="twenty_crop"):
        predict_tta(lambda v: v, _batch(), "twenty_crop")
