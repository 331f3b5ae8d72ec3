"""The manifest: one table describing every image a run may touch.

Every reader produces a ``pandas.DataFrame`` with these columns; every later
stage consumes it. Paths are absolute strings. ``label`` is a class name
("all", "hem", ...) or the empty string for images without a label.
``patient`` is the subject id (case-normalised) or the empty string when
unknown. ``subset`` says what the data set's own layout says the image is for.
"""

from __future__ import annotations

import pandas as pd

from noisystudent.errors import DataError

PATH = "path"
LABEL = "label"
PATIENT = "patient"
SUBSET = "subset"
FOLD = "fold"
ROLE = "role"

# Values of SUBSET.
SUBSET_TRAIN = "train"  # labelled images used for k-fold cross-validation
SUBSET_TEST = "test"  # labelled images held out from every fold (outer test)
SUBSET_POOL = "pool"  # images without labels: the pool, pseudo-labelled in every fold
SUBSETS = (SUBSET_TRAIN, SUBSET_TEST, SUBSET_POOL)
# The subset's spelling in data CSVs written for versions before 0.2, still read (docs/architecture.md, Vocabulary).
LEGACY_SUBSETS = {"unlabelled": SUBSET_POOL}

# Values of ROLE in folds.csv.
ROLE_LABELLED = "labelled"
ROLE_MASKED = "masked"  # labelled images whose labels are hidden from training; pseudo-labelled
ROLE_VALIDATION = "validation"
ROLE_TEST = "test"
ROLE_POOL = "pool"  # truly unlabelled images, pseudo-labelled in every fold
ROLES = (ROLE_LABELLED, ROLE_MASKED, ROLE_VALIDATION, ROLE_TEST, ROLE_POOL)
# The masked part's role in folds.csv of runs made before 0.2, read as ROLE_MASKED.
LEGACY_ROLES = {"unlabelled": ROLE_MASKED}
SHARED_FOLD = -1  # FOLD value of rows shared by all folds (test, pool)

MANIFEST_COLUMNS = [PATH, LABEL, PATIENT, SUBSET]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def make_manifest(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Build a manifest with the standard columns, types and order."""
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS) if not isinstance(rows, pd.DataFrame) else rows
    for column in MANIFEST_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    frame = frame[MANIFEST_COLUMNS + [c for c in frame.columns if c not in MANIFEST_COLUMNS]].copy()
    for column in (PATH, LABEL, PATIENT, SUBSET):
        frame[column] = frame[column].fillna("").astype(str)
    return frame.reset_index(drop=True)


def normalise_patient(patient: str) -> str:
    """Patient ids differ only in case in the real data (``h3`` and ``H3``)."""
    return str(patient).strip().upper()


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Sorted class names of the labelled images."""
    labels = manifest.loc[manifest[LABEL] != "", LABEL]
    return sorted(labels.unique().tolist())


def check_manifest(manifest: pd.DataFrame) -> None:
    """Raise DataError for the problems every stage would trip over."""
    if manifest.empty:
        raise DataError("The data set contains no images.")
    duplicated = manifest[PATH][manifest[PATH].duplicated()]
    if not duplicated.empty:
        raise DataError(f"The image {duplicated.iloc[0]} is listed more than once.")
    unknown = set(manifest[SUBSET]) - set(SUBSETS)
    if unknown:
        raise DataError(f"Unknown subset value {sorted(unknown)[0]!r} in the manifest.")
    train = manifest[manifest[SUBSET] == SUBSET_TRAIN]
    unlabelled_train = train[train[LABEL] == ""]
    if not unlabelled_train.empty:
        raise DataError(f"The training image {unlabelled_train[PATH].iloc[0]} has no label.")
    classes = class_names(train)
    if len(classes) < 2:
        found = classes[0] if classes else "none"
        raise DataError(f"The training data has a single class ({found}); at least two are needed.")
