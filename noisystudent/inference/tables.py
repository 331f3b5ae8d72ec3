"""Prediction tables: the images' own columns, then prob_<class> for every class and pred, the most probable class.

One builder for every table of one model's predictions: kfold's
predictions.csv and pool_predictions.csv (``run.pipeline``) and each fold
model's rows of ``ensemble evaluate`` (``ensemble.classifier``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noisystudent import layout


def prediction_table(frame: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """``frame`` (re-indexed from 0) with a float64 prob_<class> column per class and pred, from ``probs`` (N, C)."""
    table = frame.reset_index(drop=True).copy()
    for i, name in enumerate(classes):
        table[layout.prob_column(name)] = probs[:, i].astype(np.float64)
    # no rows: argmax has nothing to reduce over (probs may even be (0, 0))
    table[layout.PRED] = np.asarray(classes, dtype=object)[probs.argmax(axis=1)] if len(probs) else []
    return table
