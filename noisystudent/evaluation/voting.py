"""Ensembles of the K fold models: majority (hard) or soft voting.

Input everywhere is an array of probabilities shaped (M models, N images,
C classes). Both rules return a VoteResult carrying the final class index,
the (weighted) mean probabilities, every model's own vote and how many
models agree with the final answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from noisystudent.errors import ConfigError

RULES = ("majority", "soft")


@dataclass(frozen=True)
class VoteResult:
    pred: np.ndarray  # (N,) final class index
    probs: np.ndarray  # (N, C) mean probability over models (weighted for soft voting)
    votes: np.ndarray  # (M, N) class index each model predicts (its argmax)
    agreement: np.ndarray  # (N,) fraction of models whose vote equals pred


def majority_vote(probs: np.ndarray) -> VoteResult:
    """Each model votes for its most probable class; the most votes win.

    Ties (several classes with the same, highest number of votes) go to the
    tied class with the highest mean probability over all models; if that is
    tied too, to the lowest class index.
    """
    probs = _check_probs(probs)
    votes = probs.argmax(axis=2)
    n_classes = probs.shape[2]
    counts = (votes[..., None] == np.arange(n_classes)).sum(axis=0)  # (N, C)
    mean = probs.mean(axis=0)
    # Among the classes with the most votes, the highest mean probability wins;
    # argmax returns the first maximum, i.e. the lowest index on an exact tie.
    tied = counts == counts.max(axis=1, keepdims=True)
    pred = np.where(tied, mean, -np.inf).argmax(axis=1)
    return _result(pred, mean, votes)


def soft_vote(probs: np.ndarray, weights: Sequence[float] | None = None) -> VoteResult:
    """The class with the highest (weighted) mean probability wins (ties: lowest index).

    ``weights`` (one per model, non-negative, not all zero) are normalised to sum 1.
    """
    probs = _check_probs(probs)
    w = _check_weights(weights, probs.shape[0])
    mean = np.tensordot(w, probs, axes=1)
    return _result(mean.argmax(axis=1), mean, probs.argmax(axis=2))


def vote(probs: np.ndarray, rule: str, weights: Sequence[float] | None = None) -> VoteResult:
    """Apply the ensemble rule 'majority' or 'soft' (weights only apply to soft voting).

    Majority: each model votes for its most probable class and the most votes
    win; a tie goes to the tied class with the highest mean probability, then
    to the lowest class index. Soft: the class with the highest (weighted) mean
    probability wins (ties: lowest index).

    Args:
        probs: Probabilities shaped (models, images, classes).
        rule: ``"majority"`` or ``"soft"``.
        weights: One non-negative weight per model, not all zero, normalised to
            sum 1; soft voting only. Default ``None``: equal weights.

    Returns:
        VoteResult: ``pred`` (images,) class index; ``probs`` (images, classes)
        mean probability over the models (weighted for soft voting); ``votes``
        (models, images) each model's own class; ``agreement`` (images,)
        fraction of the models whose vote equals ``pred``.

    Raises:
        ConfigError: Unknown ``rule``, weights with majority voting, or
            weights of the wrong count, negative or all zero.
        ValueError: ``probs`` is not a non-empty 3-d array.

    Example:
        >>> import numpy as np
        >>> import noisystudent as ns
        >>> probs = np.array([[[0.55, 0.45], [0.4, 0.6]],   # model 1: image 1, image 2
        ...                   [[0.60, 0.40], [0.3, 0.7]],   # model 2
        ...                   [[0.05, 0.95], [0.9, 0.1]]])  # model 3
        >>> majority = ns.vote(probs, "majority")
        >>> majority.pred.tolist(), majority.agreement.round(3).tolist()
        ([0, 1], [0.667, 0.667])
        >>> soft = ns.vote(probs, "soft")
        >>> soft.pred.tolist(), soft.probs.round(3).tolist()
        ([1, 0], [[0.4, 0.6], [0.533, 0.467]])
        >>> ns.vote(probs, "soft", weights=[1, 1, 0]).pred.tolist()
        [0, 1]
    """
    if rule == "majority":
        if weights is not None:
            raise ConfigError("Weights apply to soft voting only, not to majority voting.")
        return majority_vote(probs)
    if rule == "soft":
        return soft_vote(probs, weights)
    raise ConfigError(f"Unknown voting rule {rule!r}; expected one of {', '.join(RULES)}.")


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or 0 in probs.shape:
        raise ValueError(f"Expected probabilities shaped (models, images, classes), got shape {probs.shape}.")
    return probs


def _check_weights(weights: Sequence[float] | None, n_models: int) -> np.ndarray:
    if weights is None:
        return np.full(n_models, 1.0 / n_models)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(w) != n_models:
        raise ConfigError(f"Got {len(w)} voting weights for {n_models} models.")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ConfigError(f"Voting weights must be finite and non-negative, got {w.tolist()}.")
    if w.sum() == 0:
        raise ConfigError("Voting weights must not all be zero.")
    return w / w.sum()


def _result(pred: np.ndarray, mean: np.ndarray, votes: np.ndarray) -> VoteResult:
    agreement = (votes == pred[None, :]).mean(axis=0)
    return VoteResult(pred=pred, probs=mean, votes=votes, agreement=agreement)
