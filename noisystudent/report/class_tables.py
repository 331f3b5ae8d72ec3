"""Multi-class and patient-level tables of the report, and the words that say what a table's numbers are about.

Per class: each class against the rest, for the fold means and the ensembles.
Per patient: a patient's call is the class most of its images were called
(ties: the highest mean probability), its truth the commonest label of its
images; the metrics are then those of the image tables, computed the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noisystudent.data.manifest import LABEL, PATIENT
from noisystudent.evaluation.metrics import (
    CLASS_COLUMN,
    MEAN_ROW,
    PER_CLASS_AVERAGED,
    VARIANCE_ROW,
    metric_rows_from_predictions,
    one_vs_rest_rows,
)
from noisystudent.layout import EVAL_SPLIT, FOLD_COLUMN, PRED, ROUND, VOTING, prob_column

ENSEMBLE = "ensemble"
PATIENT_METRICS = ("accuracy", "no_information_rate", "kappa", "balanced_accuracy", "sensitivity", "specificity", "f1", "auc")


def scope_sentence(classes: list[str], positive: str | None) -> str:
    """What the class-dependent columns of the summary tables are about, and which AUC they show."""
    if len(classes) > 2:
        return (f"Sensitivity, specificity, PPV, NPV, F1 and AUC are macro averages: unweighted means over the "
                f"{len(classes)} classes of each class against the rest (AUC: mean of the one-vs-rest ROC AUCs). "
                "Accuracy, weighted F1, balanced accuracy, kappa and MCC are computed over all classes at once.")
    return (f"Sensitivity, specificity, PPV, NPV and F1 are about the positive class {positive}; "
            f"AUC is the ROC AUC of {positive} against the other class.")


def per_class_table(all_metrics: pd.DataFrame, split: str) -> pd.DataFrame:
    """Each class against the rest: fold means (± sd) of the teachers and final students, then the ensembles."""
    rows = one_vs_rest_rows(all_metrics)
    rows = rows[rows[EVAL_SPLIT] == split]
    final = int(rows[ROUND].max()) if len(rows) else 0
    cells = []
    for round_ in dict.fromkeys((0, final)):
        cells += _mean_cells(rows[rows[ROUND] == round_], round_)
    for round_ in dict.fromkeys((0, final)):
        chosen = rows[(rows[ROUND] == round_) & (rows[FOLD_COLUMN] == ENSEMBLE)]
        for _, row in chosen.iterrows():
            cells.append(_cells(f"{_model(round_)} ensemble, {row[VOTING]} vote", row, None))
    table = pd.DataFrame(cells)
    if len(table):
        table["images of the class"] = table["images of the class"].astype("Int64")
    return table


def patient_table(tables: dict[str, pd.DataFrame], classes: list[str], positive: str | None) -> pd.DataFrame:
    """Patient-level metrics per model (name -> image predictions with a patient column)."""
    rows = []
    for name, images in tables.items():
        patients = patient_calls(images, classes)
        if len(patients):
            values = metric_rows_from_predictions(patients, classes, positive)[0]
            rows.append({"Model": name, "patients": len(patients), **{m: values[m] for m in PATIENT_METRICS}})
    return pd.DataFrame(rows)


def patient_calls(images: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per patient: label (commonest true label), pred (commonest call), mean prob_<class>."""
    known = images[(images[PATIENT].fillna("").astype(str) != "") & (images[LABEL].fillna("").astype(str) != "")]
    if known.empty:
        return pd.DataFrame(columns=[PATIENT, LABEL, PRED])
    probs = [prob_column(c) for c in classes]
    grouped = known.groupby(PATIENT, sort=True)
    table = grouped[probs].mean()
    counts = pd.crosstab(known[PATIENT], known[PRED].astype(str)).reindex(index=table.index, columns=classes, fill_value=0)
    tied = counts.to_numpy() == counts.to_numpy().max(axis=1, keepdims=True)
    calls = np.where(tied, table[probs].to_numpy(float), -np.inf).argmax(axis=1)  # most votes, then highest mean probability
    table[LABEL] = grouped[LABEL].agg(lambda s: s.value_counts().sort_index().idxmax())
    table[PRED] = np.asarray(classes, dtype=object)[calls]
    return table.reset_index()


def _mean_cells(rows: pd.DataFrame, round_: int) -> list[dict]:
    means, variances = rows[rows[FOLD_COLUMN] == MEAN_ROW], rows[rows[FOLD_COLUMN] == VARIANCE_ROW]
    cells = []
    for _, mean in means.iterrows():
        variance = variances[variances[CLASS_COLUMN] == mean[CLASS_COLUMN]]
        sd = np.sqrt(variance.iloc[0][PER_CLASS_AVERAGED].astype(float)) if len(variance) else None
        cells.append(_cells(f"{_models(round_)}, mean ± sd over folds", mean, sd))
    return cells


def _cells(name: str, row: pd.Series, sd: pd.Series | None) -> dict:
    support = int(row["tp"] + row["fn"]) if pd.notna(row.get("tp")) and pd.notna(row.get("fn")) else pd.NA
    values = {m: _text(row[m], None if sd is None else sd[m]) for m in PER_CLASS_AVERAGED}
    return {"Model": name, "Class": row[CLASS_COLUMN], "images of the class": support, **values}


def _models(round_: int) -> str:
    return "Teachers" if int(round_) == 0 else f"Students (round {int(round_)})"


def _model(round_: int) -> str:
    return "Teacher" if int(round_) == 0 else f"Student (round {int(round_)})"


def _text(value: float, sd: float | None) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:.3f} ± {sd:.3f}" if sd is not None and pd.notna(sd) else f"{value:.3f}"
