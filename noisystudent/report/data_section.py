"""The report's Data section: images, patients and classes per part of the run, from folds.csv.

Uneven folds (90 validation images in one, 60 in another) change what a fold
mean means, so the reader gets the counts of every part of every fold.
"""

from __future__ import annotations

import pandas as pd

from noisystudent.data import manifest as schema  # column names and checks of the manifest
from noisystudent.data.pool import PoolFile

IMAGES, PATIENTS = "images", "patients"
ROLE_WORDS = {schema.ROLE_LABELLED: "labelled (teacher training)", schema.ROLE_MASKED: "masked (labels hidden, pseudo-labelled)",
              schema.ROLE_VALIDATION: "validation", schema.ROLE_TEST: "outer test set", schema.ROLE_POOL: "unlabelled pool"}
FOLD_ROLES = (schema.ROLE_LABELLED, schema.ROLE_MASKED, schema.ROLE_VALIDATION)


def parts_table(folds: pd.DataFrame, classes: list[str], pool: PoolFile | None = None) -> pd.DataFrame:
    """One row per part of the whole run: training images (all folds), outer test set, unlabelled pool.

    The pool is folds.csv's pool rows in runs made before pool.csv, else ``pool``, counted a chunk at a time.
    """
    shared = pd.to_numeric(folds[schema.FOLD], errors="coerce") == schema.SHARED_FOLD
    training = folds[~shared].drop_duplicates(schema.PATH)
    parts = [("training (split into the folds)", training)]
    parts += [(ROLE_WORDS[role], folds[shared & (folds[schema.ROLE] == role)]) for role in (schema.ROLE_TEST, schema.ROLE_POOL)]
    rows = [_counts(name, frame, classes) for name, frame in parts if len(frame)]
    if pool is not None:
        patients = len(pool.patients())
        rows.append({"name": ROLE_WORDS[schema.ROLE_POOL], IMAGES: pool.count, PATIENTS: patients or pd.NA, "no label": pool.count})
    return _frame(rows)


def fold_parts_table(folds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per fold and role (labelled, masked, validation)."""
    numbers = pd.to_numeric(folds[schema.FOLD], errors="coerce")
    rows = []
    for fold in sorted(int(k) for k in numbers.dropna().unique() if int(k) != schema.SHARED_FOLD):
        for role in FOLD_ROLES:
            frame = folds[(numbers == fold) & (folds[schema.ROLE] == role)]
            rows.append({"Fold": fold, **_counts(ROLE_WORDS[role], frame, classes)})
    return _frame(rows)


def has_patients(folds: pd.DataFrame) -> bool:
    return schema.PATIENT in folds.columns and (folds[schema.PATIENT].fillna("").astype(str) != "").any()


def data_caption(folds: pd.DataFrame) -> str:
    if has_patients(folds):
        return "Patients: distinct patient ids; no patient is in two parts of one fold, nor in a fold and the outer test set."
    return ("The data has no patient ids: folds are split per image, so images of one patient may sit in "
            "training and validation parts alike; there is no patient column.")


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of counts as a table of integers (a class absent from a part counts 0, not NaN)."""
    frame = pd.DataFrame(rows).rename(columns={"name": "Part"})
    counts = [c for c in frame.columns if c not in ("Part", "Fold", PATIENTS)]
    frame[counts] = frame[counts].fillna(0).astype(int)
    frame[PATIENTS] = frame[PATIENTS].astype("Int64")
    return frame if frame[PATIENTS].notna().any() else frame.drop(columns=PATIENTS)  # no ids: the caption says so


def _counts(name: str, frame: pd.DataFrame, classes: list[str]) -> dict:
    labels = frame[schema.LABEL].fillna("").astype(str)
    patients = frame[schema.PATIENT].fillna("").astype(str) if schema.PATIENT in frame.columns else pd.Series(dtype=str)
    known = patients[patients != ""]
    row = {"name": name, IMAGES: int(len(frame)), PATIENTS: int(known.nunique()) if len(known) else pd.NA}
    for name_ in classes:
        row[name_] = int((labels == name_).sum())
    if (labels == "").any():
        row["no label"] = int((labels == "").sum())
    return row
