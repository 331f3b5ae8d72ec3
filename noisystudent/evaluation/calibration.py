"""Calibration: does a model's confidence match how often it is right?"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

ECE_BINS = 15  # equal-width confidence bins, as Guo et al. 2017


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (share of images) x |accuracy - mean confidence|; NaN when empty.

    Bins are (lo, hi], the first [0, hi]: a confidence of exactly 1 falls in the last bin.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidence) == 0:
        return float("nan")
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)
