"""Models that call every image the same class: the sign of a collapsed training run.

Such a model's accuracy is just the share of that class, and an ensemble or a student
built on it inherits nothing useful, so every run says so loudly instead of leaving it
to be noticed in a confusion matrix.
"""

from __future__ import annotations

import logging

import pandas as pd

from noisystudent import layout

log = logging.getLogger(__name__)

# The split that tells: the outer test set when there is one, else the validation part.
CHECKED_SPLITS = ("test", "validation")


def single_class(predictions: pd.DataFrame) -> tuple[str, str, int] | None:
    """(split, class, n) when the model predicts one class for the whole checked split, else None."""
    for split in CHECKED_SPLITS:
        called = predictions.loc[predictions[layout.SPLIT] == split, layout.PRED]
        if len(called):
            classes = called.unique()
            return (split, str(classes[0]), len(called)) if len(classes) == 1 and len(called) > 1 else None
    return None


def warn_if_single_class(predictions: pd.DataFrame, model: str) -> bool:
    """Log a warning when ``model`` calls every checked image one class; return whether it did."""
    found = single_class(predictions)
    if found is None:
        return False
    split, label, n = found
    log.warning(
        "%s predicts %r for all %d %s images: it has collapsed to one class, so its numbers only reflect the "
        "class balance (try a lower --lr, more --epochs or more labelled images).", model, label, n, split,
    )
    return True
