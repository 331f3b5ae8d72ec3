"""Metrics of a model's class probabilities, for model selection and result tables.

A thin layer over ``metrics``: it turns (true class indices, probabilities)
into the metric dict, binary with ``positive`` as the positive class when there
are two classes, macro-averaged one-vs-rest otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from noisystudent.data.labels import positive_index_of
from noisystudent.evaluation import metrics


def validation_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str], positive: str) -> dict[str, float]:
    """Metric dict for true class indices ``labels`` and probabilities ``probs`` (N, C)."""
    names = np.asarray(classes, dtype=object)
    y_true = names[np.asarray(labels, dtype=int)]
    y_pred = names[probs.argmax(axis=1)]
    if len(classes) == 2:
        positive_index = positive_index_of(classes, positive)
        return metrics.binary_metrics(y_true, y_pred, probs[:, positive_index], positive)
    _, macro = metrics.multiclass_metrics(y_true, y_pred, probs, classes)
    return macro


def probabilities_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of the true class, from probabilities."""
    if len(labels) == 0:
        return float("nan")
    picked = probs[np.arange(len(labels)), np.asarray(labels, dtype=int)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def selection_score(values: dict[str, float], metric: str) -> float:
    """Higher is better; NaN counts as the worst score."""
    score = -values["loss"] if metric == "loss" else values[metric]
    return -math.inf if score is None or math.isnan(score) else float(score)
