import numpy as np
import pytest

from noisystudent.errors import ConfigError
from noisystudent.evaluation.voting import VoteResult, majority_vote, soft_vote, vote


def two_class(p_first):
    """(M, N, 2) probabilities from the first class's probability per model and image."""
    p = np.asarray(p_first, dtype=float)
    return np.stack([p, 1 - p], axis=-1)


def test_clear_majority():
    # 5 models, 2 images: image 0 gets 4 votes for class 0, image 1 gets 5 for class 1.
    probs = two_class([[0.9, 0.2], [0.8, 0.1], [0.7, 0.3], [0.6, 0.4], [0.3, 0.45]])
    result = majority_vote(probs)
    assert isinstance(result, VoteResult)
    assert result.pred.tolist() == [0, 1]
    assert result.votes.tolist() == [[0, 1], [0, 1], [0, 1], [0, 1], [1, 1]]
    assert result.agreement.tolist() == [0.8, 1.0]
    np.testing.assert_allclose(result.probs[:, 0], [0.66, 0.29])
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0)


def test_two_two_tie_broken_by_mean_probability():
    # 4 models, 2 votes each; image 0: class 1's voters are more confident, image 1: class 0's.
    probs = two_class([[0.6, 0.9], [0.55, 0.8], [0.1, 0.45], [0.2, 0.4]])
    result = majority_vote(probs)
    # mean p(class 0): image 0 = 0.3625 -> class 1; image 1 = 0.6375 -> class 0
    assert result.pred.tolist() == [1, 0]
    assert result.agreement.tolist() == [0.5, 0.5]


def test_exact_tie_goes_to_lowest_class_index():
    probs = two_class([[0.7], [0.3]])
    assert majority_vote(probs).pred.tolist() == [0]
    assert soft_vote(probs).pred.tolist() == [0]


def test_majority_and_soft_vote_disagree():
    # Three weak votes for class 0 (0.55) against two confident votes for class 1 (0.05).
    probs = two_class([[0.55], [0.55], [0.55], [0.05], [0.05]])
    hard, soft = majority_vote(probs), soft_vote(probs)
    assert hard.pred.tolist() == [0]
    assert soft.pred.tolist() == [1]  # mean p(class 0) = 0.35
    assert hard.agreement.tolist() == [0.6]
    assert soft.agreement.tolist() == [0.4]
    np.testing.assert_allclose(soft.probs, [[0.35, 0.65]])
    np.testing.assert_allclose(hard.probs, soft.probs)


def test_soft_vote_weights():
    probs = two_class([[0.55], [0.55], [0.55], [0.05], [0.05]])
    weighted = soft_vote(probs, weights=[2, 2, 2, 1, 1])
    # (3 * 2 * 0.55 + 2 * 0.05) / 8 = 0.425
    np.testing.assert_allclose(weighted.probs[:, 0], [0.425])
    assert weighted.pred.tolist() == [1]
    heavy = soft_vote(probs, weights=[1, 1, 1, 0, 0])
    assert heavy.pred.tolist() == [0]
    np.testing.assert_allclose(heavy.probs[:, 0], [0.55])


@pytest.mark.parametrize(
    "weights, message",
    [([1, 1], "2 voting weights for 5 models"), ([1, 1, 1, 1, -1], "non-negative"), ([0] * 5, "all be zero"), ([1, 1, 1, 1, np.nan], "finite")],
)
def test_bad_weights(weights, message):
    with pytest.raises(ConfigError, match=message):
        soft_vote(two_class([[0.5]] * 5), weights)


def test_three_classes():
    probs = np.array(
        [
            [[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]],
            [[0.2, 0.5, 0.3], [0.3, 0.4, 0.3]],
            [[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]],
        ]
    )
    hard = majority_vote(probs)
    assert hard.votes.tolist() == [[0, 2], [1, 1], [1, 2]]
    assert hard.pred.tolist() == [1, 2]
    np.testing.assert_allclose(hard.agreement, [2 / 3, 2 / 3])
    np.testing.assert_allclose(hard.probs[0], [0.8 / 3, 1.4 / 3, 0.8 / 3])
    # Three-way tie of one vote each goes to the highest mean probability (class 2).
    tie = np.array([[[0.5, 0.1, 0.4]], [[0.1, 0.5, 0.4]], [[0.05, 0.05, 0.9]]])
    assert majority_vote(tie).pred.tolist() == [2]
    assert soft_vote(probs).pred.tolist() == [1, 2]


def test_vote_dispatches_and_rejects_unknown_rule():
    probs = two_class([[0.55], [0.55], [0.55], [0.05], [0.05]])
    assert vote(probs, "majority").pred.tolist() == [0]
    assert vote(probs, "soft").pred.tolist() == [1]
    assert vote(probs, "soft", weights=[1, 1, 1, 0, 0]).pred.tolist() == [0]
    with pytest.raises(ConfigError, match="Unknown voting rule 'mean'"):
        vote(probs, "mean")
    with pytest.raises(ConfigError, match="soft voting only"):
        vote(probs, "majority", weights=[1] * 5)
    with pytest.raises(ValueError, match="shape"):
        majority_vote(np.zeros((2, 3)))
