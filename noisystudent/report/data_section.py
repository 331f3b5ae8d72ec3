"""The report's Data section: images, patients and classes per part of the run, from folds.csv.

Uneven folds (90 validation images in one, 60 in another) change what a fold
mean means, so the reader gets the counts of every part of every fold.
"""

from __future__ import annotations

import pandas as pd

from noisystudent.data.manifest import (
    FOLD,
    LABEL,
    PATH,
    PATIENT,
    ROLE,
    ROLE_LABELLED,
    ROLE_POOL,
    ROLE_TEST,
    ROLE_UNLABELLED,
    ROLE_VALIDATION,
    SHARED_FOLD,
)

IMAGES, PATIENTS = "images", "patients"
ROLE_WORDS = {ROLE_LABELLED: "labelled (teacher training)", ROLE_UNLABELLED: "masked (labels hidden, pseudo-labelled)",
              ROLE_VALIDATION: "validation", ROLE_TEST: "outer test set", ROLE_POOL: "unlabelled pool"}
FOLD_ROLES = (ROLE_LABELLED, ROLE_UNLABELLED, ROLE_VALIDATION)


def parts_table(folds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per part of the whole run: training images (all folds), outer test set, unlabelled pool."""
    shared = pd.to_numeric(folds[FOLD], errors="coerce") == SHARED_FOLD
    training = folds[~shared].drop_duplicates(PATH)
    parts = [("training (split into the folds)", training)]
    parts += [(ROLE_WORDS[role], folds[shared & (folds[ROLE] == role)]) for role in (ROLE_TEST, ROLE_POOL)]
    return _frame([_counts(name, frame, classes) for name, frame in parts if len(frame)])


def fold_parts_table(folds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per fold and role (labelled, masked, validation)."""
    numbers = pd.to_numeric(folds[FOLD], errors="coerce")
    rows = []
    for fold in sorted(int(k) for k in numbers.dropna().unique() if int(k) != SHARED_FOLD):
        for role in FOLD_ROLES:
            frame = folds[(numbers == fold) & (folds[ROLE] == role)]
            rows.append({"Fold": fold, **_counts(ROLE_WORDS[role], frame, classes)})
    return _frame(rows)


def has_patients(folds: pd.DataFrame) -> bool:
    return PATIENT in folds.columns and (folds[PATIENT].fillna("").astype(str) != "").any()


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
    labels = frame[LABEL].fillna("").astype(str)
    patients = frame[PATIENT].fillna("").astype(str) if PATIENT in frame.columns else pd.Series(dtype=str)
    known = patients[patients != ""]
    row = {"name": name, IMAGES: int(len(frame)), PATIENTS: int(known.nunique()) if len(known) else pd.NA}
    for name_ in classes:
        row[name_] = int((labels == name_).sum())
    if (labels == "").any():
        row["no label"] = int((labels == "").sum())
    return row
