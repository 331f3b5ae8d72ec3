"""Does a model beat guessing? Its accuracy against the no-information rate.

The no-information rate is the accuracy of always answering the commonest true
class. On an imbalanced test set (48 of 71 images one class: 0.68) an accuracy
of 0.52 looks like a result but is worse than not looking at the images.
"""

from __future__ import annotations

import math

import pandas as pd

from noisystudent.evaluation.metrics import headline_class_rows
from noisystudent.layout import EVAL_SPLIT, FOLD_COLUMN, ROUND, VOTING, model_label

ENSEMBLE, OOF = "ensemble", "oof"
SPLIT_WORDS = {"test": "the test set", "validation": "out-of-fold validation"}


def no_information_warnings(metrics: pd.DataFrame) -> list[str]:
    """One sentence per ensemble (or, without ensembles, pooled out-of-fold model) not above the no-information rate."""
    if metrics is None or metrics.empty or "no_information_rate" not in metrics.columns:
        return []
    rows = headline_class_rows(metrics)
    folds = rows[FOLD_COLUMN].astype(str)
    chosen = rows[folds == ENSEMBLE] if (folds == ENSEMBLE).any() else rows[folds == OOF]
    return [_sentence(row) for _, row in chosen.iterrows() if not _beats(row)]


def _beats(row: pd.Series) -> bool:
    accuracy, rate = float(row["accuracy"]), float(row["no_information_rate"])
    return not (math.isfinite(accuracy) and math.isfinite(rate)) or accuracy > rate


def _sentence(row: pd.Series) -> str:
    model = model_label(row[ROUND])
    who = f"The {model} ensemble ({row[VOTING]} vote)" if str(row[FOLD_COLUMN]) == ENSEMBLE else f"The {model} models, folds pooled,"
    where = SPLIT_WORDS.get(str(row[EVAL_SPLIT]), str(row[EVAL_SPLIT]))
    return (f"{who} on {where}: accuracy {float(row['accuracy']):.3f} does not beat the no-information rate "
            f"{float(row['no_information_rate']):.3f} (always answering the commonest class).")

