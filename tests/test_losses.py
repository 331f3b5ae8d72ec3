import math

import pytest
import torch
import torch.nn.functional as F

from noisystudent.training.losses import soft_cross_entropy

torch.manual_seed(0)
LOGITS = torch.randn(8, 3) * 2
HARD = torch.tensor([0, 1, 2, 2, 0, 1, 1, 0])
ONE_HOT = F.one_hot(HARD, 3).float()
WEIGHTS = torch.tensor([0.5, 2.0, 1.5])


def test_one_hot_equals_cross_entropy():
    expected = F.cross_entropy(LOGITS, HARD)
    assert soft_cross_entropy(LOGITS, ONE_HOT).item() == pytest.approx(expected.item(), rel=1e-6)


def test_one_hot_with_class_weights_uses_the_weighted_mean():
    expected = F.cross_entropy(LOGITS, HARD, weight=WEIGHTS)
    loss = soft_cross_entropy(LOGITS, ONE_HOT, class_weights=WEIGHTS)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # and that convention is sum w_i l_i / sum w_i, not a plain mean
    per_sample = F.cross_entropy(LOGITS, HARD, reduction="none")
    w = WEIGHTS[HARD]
    assert loss.item() == pytest.approx(((w * per_sample).sum() / w.sum()).item(), rel=1e-6)
    assert loss.item() != pytest.approx((w * per_sample).mean().item(), rel=1e-3)


def test_one_hot_with_label_smoothing():
    for eps in (0.1, 0.3):
        expected = F.cross_entropy(LOGITS, HARD, label_smoothing=eps)
        loss = soft_cross_entropy(LOGITS, ONE_HOT, label_smoothing=eps)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_targets_by_hand():
    logits = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    targets = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    log_p = [
        [1 - math.log(math.e + math.e**2), 2 - math.log(math.e + math.e**2)],
        [0 - math.log(1 + math.e**-1), -1 - math.log(1 + math.e**-1)],
    ]
    l0 = -(0.7 * log_p[0][0] + 0.3 * log_p[0][1])
    l1 = -(0.5 * log_p[1][0] + 0.5 * log_p[1][1])
    assert soft_cross_entropy(logits, targets).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # per-sample weight = expected class weight: 0.7*1 + 0.3*3 = 1.6 and 0.5*1 + 0.5*3 = 2
    weighted = soft_cross_entropy(logits, targets, class_weights=torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((1.6 * l0 + 2.0 * l1) / 3.6, rel=1e-6)
    # matches PyTorch's probability-target cross-entropy without weights
    expected = F.cross_entropy(logits, targets).item()
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_sample_weights_scale_each_sample():
    per_sample = F.cross_entropy(LOGITS, HARD, reduction="none")
    sample = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 3.0, 1.0, 0.5])
    loss = soft_cross_entropy(LOGITS, ONE_HOT, class_weights=WEIGHTS, sample_weights=sample)
    w = WEIGHTS[HARD] * sample
    assert loss.item() == pytest.approx(((w * per_sample).sum() / w.sum()).item(), rel=1e-6)


def test_all_zero_weights_give_zero_not_nan():
    loss = soft_cross_entropy(LOGITS, ONE_HOT, class_weights=torch.zeros(3))
    assert loss.item() == 0.0


def test_low_precision_logits_give_float32_loss_and_gradients():
    logits = LOGITS.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = soft_cross_entropy(logits, ONE_HOT.to(torch.bfloat16), class_weights=WEIGHTS)
    assert loss.dtype == torch.float32
    expected = F.cross_entropy(logits.detach().float(), HARD, weight=WEIGHTS)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        soft_cross_entropy(LOGITS, ONE_HOT[:, :2])
