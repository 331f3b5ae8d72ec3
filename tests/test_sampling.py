import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from noisystudent.errors import ConfigError
from noisystudent.training.sampling import batches, class_weights, epoch_indices

# 10 rows of class 0, 4 of class 1, 6 of class 2 (interleaved, as in a real table).
LABELS = np.array([0] * 10 + [1] * 4 + [2] * 6)[np.random.default_rng(0).permutation(20)]


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _class_counts(indices, labels=LABELS):
    return np.bincount(labels[indices.numpy()], minlength=3).tolist()


def test_none_is_a_permutation_of_all_rows():
    order = epoch_indices(LABELS, None, "none", _generator())
    assert order.dtype == torch.long
    assert sorted(order.tolist()) == list(range(20))
    assert order.tolist() != list(range(20))


def test_none_respects_copies():
    copies = np.array([1, 3, 0, 2])
    order = epoch_indices(np.array([0, 1, 1, 0]), copies, "none", _generator())
    assert sorted(order.tolist()) == [0, 1, 1, 1, 3, 3]


def test_oversample_balances_every_epoch_and_uses_every_image():
    generator = _generator()
    epochs = [epoch_indices(LABELS, None, "oversample", generator) for _ in range(2)]
    for order in epochs:
        assert _class_counts(order) == [10, 10, 10]
        assert set(order.tolist()) == set(range(20))  # no image left out
        counts = np.bincount(order.numpy(), minlength=20)
        assert set(counts[LABELS == 1]) <= {2, 3}  # 10 = 4 * 2 + 2: as even as possible
        assert set(counts[LABELS == 0]) == {1}
    assert epochs[0].tolist() != epochs[1].tolist()  # new draw each epoch


def test_oversample_exactly_doubles_a_class_half_the_size():
    labels = np.array([0, 0, 0, 0, 1, 1])
    order = epoch_indices(labels, None, "oversample", _generator())
    assert np.bincount(order.numpy()).tolist() == [1, 1, 1, 1, 2, 2]


def test_undersample_cuts_every_class_to_the_smallest():
    generator = _generator()
    first = epoch_indices(LABELS, None, "undersample", generator)
    second = epoch_indices(LABELS, None, "undersample", generator)
    for order in (first, second):
        assert _class_counts(order) == [4, 4, 4]
        assert len(set(order.tolist())) == 12  # drawn without replacement
    assert set(first.tolist()) != set(second.tolist())


def test_balancing_counts_copies_as_images():
    labels = np.array([0, 0, 0, 0, 1, 1])
    copies = np.array([1, 1, 1, 1, 2, 2])  # class 1 already duplicated to 4
    order = epoch_indices(labels, copies, "oversample", _generator())
    assert np.bincount(order.numpy()).tolist() == [1, 1, 1, 1, 2, 2]


def test_same_seed_same_order():
    for mode in ("none", "oversample", "undersample"):
        a = epoch_indices(LABELS, None, mode, _generator(7))
        b = epoch_indices(LABELS, None, mode, _generator(7))
        c = epoch_indices(LABELS, None, mode, _generator(8))
        assert a.tolist() == b.tolist()
        assert a.tolist() != c.tolist()


def test_unknown_sampler_is_a_config_error():
    with pytest.raises(ConfigError):
        epoch_indices(LABELS, None, "smote", _generator())


def test_batches_sizes_and_last_batch_rules():
    indices = torch.arange(11)
    assert [len(b) for b in batches(indices, 4)] == [4, 4, 3]
    assert [len(b) for b in batches(indices, 4, drop_last=True)] == [4, 4]
    assert torch.cat(batches(indices, 4)).tolist() == list(range(11))
    assert [len(b) for b in batches(indices, 5)] == [5, 5, 1]
    assert [len(b) for b in batches(indices, 5, drop_last_if_single=True)] == [5, 5]
    assert [len(b) for b in batches(indices, 4, drop_last_if_single=True)] == [4, 4, 3]
    assert [len(b) for b in batches(torch.arange(3), 1, drop_last_if_single=True)] == [1, 1, 1]
    assert batches(torch.arange(0), 4) == []


def test_class_weights_none_and_balanced():
    assert class_weights(LABELS, 3, "none") is None
    weights = class_weights(LABELS, 3, "balanced")
    expected = compute_class_weight("balanced", classes=np.arange(3), y=LABELS)
    assert weights.dtype == torch.float32
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(weights.numpy(), [20 / 30, 20 / 12, 20 / 18], rtol=1e-6)
    assert weights[torch.as_tensor(LABELS)].mean().item() == pytest.approx(1.0)


def test_balanced_weights_with_an_absent_class():
    weights = class_weights(np.array([0, 0, 0, 2]), 3, "balanced")
    np.testing.assert_allclose(weights.numpy(), [4 / 6, 1.0, 4 / 2], rtol=1e-6)


def test_explicit_class_weights():
    assert class_weights(LABELS, 3, "1.0, 2.5,0").tolist() == [1.0, 2.5, 0.0]
    for bad in ("1.0,2.5", "1,-1,1", "a,b,c", "0,0,0", "1,nan,1"):
        with pytest.raises(ConfigError):
            class_weights(LABELS, 3, bad)
