"""Calibration: does a model's confidence match how often it is right? And temperature scaling to make it so.

Temperature scaling (Guo et al. 2017) divides the logits by one number T > 0
fitted by minimising the negative log-likelihood on held-out labelled images;
T > 1 softens an over-confident model. An ensemble is calibrated *after* its
members' probabilities are averaged ("pool-then-calibrate", Rahaman & Thiery
2021), with the log of the averaged probability as its logits:
``softmax(log(mean p) / T)``. T never changes which class is most probable,
so votes, predictions and ROC-AUC stay the same; only the probabilities move.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar

ECE_BINS = 15  # equal-width confidence bins, as Guo et al. 2017
LOG_T_BOUNDS = (-3.0, 3.0)  # T between 0.05 and 20: wide enough for any trained model, finite for a degenerate one
EPS = 1e-12  # probabilities are clipped here before their log: a 0 would be an infinite logit


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (share of images) x |accuracy - mean confidence|; NaN when empty.

    Bins are (lo, hi], the first [0, hi]: a confidence of exactly 1 falls in the last bin.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return float("nan")
    index = _bin_index(confidence, bins)
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def reliability_bins(probs: ArrayLike, labels: ArrayLike, bins: int = ECE_BINS) -> list[dict]:
    """One dict per non-empty confidence bin: lo, hi, count, confidence (mean), accuracy; the points of a reliability diagram.

    ``probs`` is (N, C), ``labels`` the (N,) true class indices; confidence is
    the top probability, correct whether its class is the label.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = _bin_index(confidence, bins)
    return [{"bin": int(b), "lo": b / bins, "hi": (b + 1) / bins, "count": int((index == b).sum()),
             "confidence": float(confidence[index == b].mean()), "accuracy": float(correct[index == b].mean())}
            for b in np.unique(index)]


def scaled(probs: ArrayLike, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row: (N, C) probabilities; T = 1 returns them unchanged (renormalised)."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, None)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood of the true classes (natural log); NaN when empty."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return float("nan")
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, None)).mean())


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean over images of the squared distance between the probabilities and the one-hot label.

    Summed over the classes (Brier 1950); for two classes this is twice the
    binary form (p_positive - y)^2. NaN when empty.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return float("nan")
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def fit_temperature(probs: ArrayLike, labels: ArrayLike) -> float:
    """The temperature T minimising the NLL of ``scaled(probs, T)`` on these labelled images.

    Minimised over log T (bounded, ``LOG_T_BOUNDS``) with scipy's bounded
    scalar minimiser: NLL is smooth in log T and the bounds keep T finite when
    the images are all correct (the NLL then falls for ever as T -> 0).

    Args:
        probs: (N, C) probabilities of held-out images: validation, never the test set.
        labels: (N,) their true class indices.

    Returns:
        float: T > 0; 1.0 when there are no images.

    Example:
        >>> import numpy as np
        >>> probs = np.array([[0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.99, 0.01]])
        >>> fit_temperature(probs, np.array([0, 1, 1, 0])) > 1  # over-confident: softened
        True
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return 1.0
    result = minimize_scalar(lambda log_t: nll(scaled(probs, np.exp(log_t)), labels), bounds=LOG_T_BOUNDS,
                             method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def calibration_summary(probs: ArrayLike, labels: ArrayLike, bins: int = ECE_BINS) -> dict[str, float]:
    """ece, brier, nll and n of (N, C) probabilities against (N,) true class indices."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return {"ece": float("nan"), "brier": float("nan"), "nll": float("nan"), "n": 0}
    ece = expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels, bins)
    return {"ece": ece, "brier": brier_score(probs, labels), "nll": nll(probs, labels), "n": int(len(labels))}
