"""Patient-disjoint, class-stratified folds: computed once, saved as folds.csv.

Every training image gets one row per fold with its role in that fold:
``validation`` (fold k's part of a StratifiedGroupKFold split), or, among the
remaining training patients, ``labelled`` or ``masked`` (labels hidden,
pseudo-labelled by the teacher). Outer-test images (``test``) and truly
unlabelled images (``pool``) appear once, with fold ``SHARED_FOLD``.

No patient ever appears in two of labelled, masked, validation and test
within a fold; ``assign_folds`` asserts this with ``check_no_patient_leakage``
before returning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from noisystudent import atomic
from noisystudent.data.manifest import (
    FOLD,
    LABEL,
    LEGACY_ROLES,
    PATH,
    PATIENT,
    ROLE,
    ROLES,
    ROLE_LABELLED,
    ROLE_MASKED,
    ROLE_POOL,
    ROLE_TEST,
    ROLE_VALIDATION,
    SHARED_FOLD,
    SUBSET,
    SUBSET_POOL,
    SUBSET_TEST,
    SUBSET_TRAIN,
)
from noisystudent.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FOLD_COLUMNS = [PATH, LABEL, PATIENT, SUBSET, FOLD, ROLE]
SHARED_ROLES = (ROLE_TEST, ROLE_POOL)  # roles whose rows are shared by all folds
_GROUP = "_group"  # private column: patient id, or one group per image without one
_TEST_STREAM = 1_000_003  # RNG key of the outer-test hold-out (never a fold index)
_VALIDATION_SHARE_TOLERANCE = 0.05


def assign_folds(
    manifest: pd.DataFrame,
    n_folds: int = 5,
    split_ratio: tuple[float, float, float] = (2, 2, 1),
    test_fraction: float = 0.0,
    seed: int = 0,
    ratio_given: bool = True,
    pool_patients: set[str] = frozenset(),
    twins: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Split a manifest into K patient-disjoint folds; return the folds.csv table.

    The validation part of each fold is fold k of a
    ``StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)`` split of
    the training images, grouped by patient and stratified by label, so **its
    size is fixed by K (about 1/K of the training images); split_ratio only
    picks the labelled:masked split of the rest** (patient-wise, per class,
    seeded by (seed, k)). The default 2:2:1 with K=5 gives 40/40/20 %; a
    validation share in split_ratio far from 1/K is logged as a warning when
    the user gave it (``ratio_given``); a preset's 2:2:1 with K=3 is not their doing.

    ``test_fraction`` > 0 first holds out that fraction of the training
    patients of each class (class = the patient's majority label) as the
    outer test set. Images with subset ``test`` are always test; images with
    subset ``pool`` are the pseudo-label pool (runs before the pool file;
    now the pool lives in pool.csv and only its ``pool_patients`` are checked).

    Images without a patient id are each their own group (with a warning);
    when no image has one, folds fall back to StratifiedKFold per image.
    ``twins`` (path -> first path of its copies, data/duplicates.py) puts
    copies of one image into one group, so they are never in two parts
    (then folds are grouped even without patient ids).
    Raises DataError when a class has too few patients for the folds, or a
    fold ends up without a class in its validation or labelled part.
    """
    _check_arguments(n_folds, split_ratio, test_fraction, seed, ratio_given)
    frame = manifest[[PATH, LABEL, PATIENT, SUBSET]].reset_index(drop=True).copy()
    per_image = _add_groups(frame, twins or {})
    train = frame[frame[SUBSET] == SUBSET_TRAIN]
    has_test = (frame[SUBSET] == SUBSET_TEST).any()
    if has_test and test_fraction > 0:
        log.info("The data has its own outer test set, so test_fraction %g holds out nothing more.", test_fraction)
    held_out = set() if has_test else _hold_out_test(train, test_fraction, n_folds, seed)
    train = train[~train[_GROUP].isin(held_out)]
    _check_patients_per_class(train, n_folds, per_image)
    group_class = _patient_classes(train)
    parts = []
    for k, validation_index in enumerate(_validation_parts(train, n_folds, seed, per_image)):
        parts.append(_fold_rows(train, group_class, k, validation_index, split_ratio, seed))
    held = frame[_GROUP].isin(held_out) & (frame[SUBSET] == SUBSET_TRAIN)
    test_rows = frame[(frame[SUBSET] == SUBSET_TEST) | held]
    parts.append(_shared_rows(test_rows, ROLE_TEST))
    parts.append(_shared_rows(frame[frame[SUBSET] == SUBSET_POOL], ROLE_POOL))
    folds = pd.concat(parts, ignore_index=True)[FOLD_COLUMNS]
    folds[FOLD] = folds[FOLD].astype(int)
    _check_classes_in_folds(folds, sorted(train[LABEL].unique()))
    check_no_patient_leakage(folds, pool_patients)
    _log_sizes(folds)
    return folds


def check_no_patient_leakage(folds: pd.DataFrame, pool_patients: set[str] = frozenset()) -> None:
    """Raise DataError if a patient has two of labelled/masked/validation/test in a fold,
    or is in the unlabelled pool and also validation or test (students would train on their images).

    Test and pool rows (fold SHARED_FOLD) count for every fold; ``pool_patients``
    are those of the pool file. Rows without a patient id cannot be checked and are ignored.
    """
    known = folds[folds[PATIENT] != ""]
    _check_pool_patients(known, pool_patients)
    test = known[known[ROLE] == ROLE_TEST]
    fold_ids = sorted(int(k) for k in known[FOLD].unique() if int(k) != SHARED_FOLD)
    checked = known[known[ROLE].isin([ROLE_LABELLED, ROLE_MASKED, ROLE_VALIDATION])]
    shared = [test.assign(**{FOLD: k}) for k in fold_ids] if fold_ids else [test]
    table = pd.concat([checked, *shared])[[FOLD, PATIENT, ROLE]].drop_duplicates()
    roles = table.groupby([FOLD, PATIENT], sort=True)[ROLE].agg(sorted)
    crossing = roles[roles.map(len) > 1]
    if not crossing.empty:
        (fold, patient), both = crossing.index[0], crossing.iloc[0]
        where = "the test set" if int(fold) == SHARED_FOLD else f"fold {fold}"
        raise DataError(f"Patient {patient!r} appears as both {both[0]} and {both[1]} in {where}.")


def _check_pool_patients(known: pd.DataFrame, pool_patients: set[str]) -> None:
    pool = set(known.loc[known[ROLE] == ROLE_POOL, PATIENT]) | set(pool_patients)
    evaluated = known[known[ROLE].isin([ROLE_VALIDATION, ROLE_TEST]) & known[PATIENT].isin(pool)]
    if not evaluated.empty:
        row = evaluated.sort_values([PATIENT, ROLE]).iloc[0]
        raise DataError(f"Patient {row[PATIENT]!r} appears as both pool and {row[ROLE]}; "
                        "remove that patient's images from the pool.")


def save_folds(folds: pd.DataFrame, path: Path) -> None:
    """Write folds.csv atomically."""
    save_folds_bytes(folds_bytes(folds), path)


def folds_bytes(folds: pd.DataFrame) -> bytes:
    """folds.csv's content, so that its digest can be recorded before it is written."""
    return folds[FOLD_COLUMNS].to_csv(index=False).encode("utf-8")


def save_folds_bytes(content: bytes, path: Path) -> None:
    atomic.atomic_write(Path(path), lambda temp: temp.write_bytes(content))


def load_folds(path: Path) -> pd.DataFrame:
    """Read folds.csv; text columns stay strings (patient '011' stays '011', empty stays '')."""
    text_columns = {c: str for c in FOLD_COLUMNS if c != FOLD}
    try:
        folds = pd.read_csv(path, dtype=text_columns, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"The folds file {path} cannot be read ({error}).") from error
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise DataError(f"The folds file {path} lacks the column {missing[0]!r}.")
    try:
        folds[FOLD] = folds[FOLD].astype(int)
    except ValueError as error:
        raise DataError(f"The folds file {path} has a non-integer fold value ({error}).") from error
    folds[ROLE] = folds[ROLE].replace(LEGACY_ROLES)  # runs made before the masked part had its own name
    unknown = set(folds[ROLE]) - set(ROLES)
    if unknown:
        raise DataError(f"The folds file {path} has the unknown role {sorted(unknown)[0]!r}.")
    return folds[FOLD_COLUMNS]


def fold_frame(folds: pd.DataFrame, k: int, role: str) -> pd.DataFrame:
    """Rows with ``role`` in fold ``k`` (test and pool rows are the same for every fold)."""
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}; expected one of {', '.join(ROLES)}.")
    chosen = folds[ROLE] == role
    if role not in SHARED_ROLES:
        chosen &= folds[FOLD] == k
    return folds[chosen].reset_index(drop=True)


def fold_ids(folds: pd.DataFrame) -> list[int]:
    """The fold indices 0..K-1 present in a folds table."""
    return sorted(int(k) for k in folds[FOLD].unique() if int(k) != SHARED_FOLD)


# --- steps of assign_folds -------------------------------------------------


def _check_arguments(n_folds: int, split_ratio: tuple[float, float, float], test_fraction: float, seed: int,
                     ratio_given: bool = True) -> None:
    if n_folds < 2:
        raise ConfigError(f"The number of folds must be at least 2, got {n_folds}.")
    if len(split_ratio) != 3 or min(split_ratio) < 0 or split_ratio[0] <= 0 or split_ratio[2] <= 0:
        raise ConfigError(f"split_ratio must be labelled:masked:validation with labelled and validation > 0, got {tuple(split_ratio)}.")
    if seed < 0:
        raise ConfigError(f"The seed must be a non-negative integer, got {seed}.")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}.")
    share = split_ratio[2] / sum(split_ratio)
    if ratio_given and abs(share - 1.0 / n_folds) > _VALIDATION_SHARE_TOLERANCE:
        log.warning(
            "split_ratio gives validation a share of %.0f%%, but with %d folds validation is always 1/%d (%.0f%%); "
            "the ratio only sets the labelled:masked split of the rest.",
            100 * share, n_folds, n_folds, 100 / n_folds,
        )


def _add_groups(frame: pd.DataFrame, twins: Mapping[str, str]) -> bool:
    """Add the grouping column; return True when folds must be split per image."""
    train = frame[SUBSET] == SUBSET_TRAIN
    missing = (frame[PATIENT] == "") & train
    frame[_GROUP] = frame[PATIENT].where(frame[PATIENT] != "", "\0image:" + frame[PATH])
    _join_twins(frame, twins)
    if train.any() and missing[train].all():
        log.warning("No image has a patient id: folds are split per image, so images of one patient may be in several "
                    "parts, and the test set's bootstrap resamples images, not patients.")
        return not twins
    if missing.any():
        log.warning("%d training images have no patient id; each is treated as its own patient.", int(missing.sum()))
    return False


def _join_twins(frame: pd.DataFrame, twins: Mapping[str, str]) -> None:
    """Copies of one image share a group: their patient's (find_twins allows at most one), else the first copy's."""
    first = frame[PATH].map(twins)
    copies = first.notna()
    if not copies.any():
        return
    patient = frame[PATIENT][copies].groupby(first[copies]).transform("max")  # "" sorts first
    frame.loc[copies, _GROUP] = patient.where(patient != "", "\0image:" + first[copies])


def _patient_classes(train: pd.DataFrame) -> pd.Series:
    """Each group's majority label (ties: alphabetically first), indexed by sorted group id."""
    counts = train.groupby([_GROUP, LABEL]).size().reset_index(name="n")
    counts = counts.sort_values([_GROUP, "n", LABEL], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates(_GROUP).set_index(_GROUP)[LABEL]


def _hold_out_test(train: pd.DataFrame, test_fraction: float, n_folds: int, seed: int) -> set[str]:
    """Groups held out as the outer test set: a fraction of each class's patients."""
    if test_fraction <= 0 or train.empty:
        return set()
    rng = np.random.default_rng([seed, _TEST_STREAM])
    held: set[str] = set()
    with_images = train.groupby(LABEL)[_GROUP].nunique()
    for label, groups in _classes_to_groups(_patient_classes(train)):
        n_test = max(1, int(np.floor(test_fraction * len(groups) + 0.5)))
        if len(groups) - n_test < n_folds:
            raise DataError(
                f"{_majority_clause(label, len(groups), with_images[label])} (which decides the class a patient is "
                f"split by); holding out {n_test} for the test set leaves fewer than the "
                f"{n_folds} that {n_folds} folds need."
            )
        held.update(rng.permutation(groups)[:n_test].tolist())
    return held


def _majority_clause(label: str, majority: int, with_images: int) -> str:
    """"Only 1 of the 7 patients with 'hem' images has it as the majority label", in the singular or plural it needs."""
    verb = "has" if majority == 1 else "have"
    if majority == with_images:
        return f"Only {majority} patient{'' if majority == 1 else 's'} {verb} {label!r} as the majority label"
    return f"Only {majority} of the {with_images} patients with {label!r} images {verb} it as the majority label"


def _classes_to_groups(group_class: pd.Series) -> list[tuple[str, np.ndarray]]:
    """(label, sorted group ids whose majority label it is) for each class, sorted by label."""
    return [(label, np.sort(groups.index.to_numpy())) for label, groups in group_class.groupby(group_class, sort=True)]


def _check_patients_per_class(train: pd.DataFrame, n_folds: int, per_image: bool) -> None:
    unit = "images" if per_image else "patients"
    if train.empty:
        raise DataError("There are no training images to split into folds.")
    for label, count in train.groupby(LABEL)[_GROUP].nunique().sort_index().items():
        if count < n_folds:
            raise DataError(f"Only {count} {unit} have label {label!r}; {n_folds} folds need at least {n_folds}.")


def _validation_parts(train: pd.DataFrame, n_folds: int, seed: int, per_image: bool) -> list[pd.Index]:
    """Index labels of each fold's validation images."""
    if per_image:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(train)), train[LABEL].to_numpy())
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(train)), train[LABEL].to_numpy(), train[_GROUP].to_numpy())
    return [train.index[validation] for _, validation in splits]


def _fold_rows(train: pd.DataFrame, group_class: pd.Series, k: int, validation_index: pd.Index, split_ratio: tuple[float, float, float], seed: int) -> pd.DataFrame:
    """All training images with their role in fold k."""
    rows = train.assign(**{FOLD: k, ROLE: ROLE_VALIDATION})
    rest = train.drop(index=validation_index)
    rest_class = group_class[group_class.index.isin(rest[_GROUP].unique())]
    labelled = _split_labelled(rest_class, split_ratio, np.random.default_rng([seed, k]))
    in_rest = rows.index.isin(rest.index)
    rows.loc[in_rest, ROLE] = np.where(rows.loc[in_rest, _GROUP].isin(labelled), ROLE_LABELLED, ROLE_MASKED)
    return rows


def _split_labelled(rest_class: pd.Series, split_ratio: tuple[float, float, float], rng: np.random.Generator) -> set[str]:
    """Groups that keep their labels: split_ratio[0] : split_ratio[1] of each class's patients."""
    share = split_ratio[0] / (split_ratio[0] + split_ratio[1])
    labelled: set[str] = set()
    for _, groups in _classes_to_groups(rest_class):
        n = len(groups)
        n_labelled = int(np.floor(share * n + 0.5))
        # At least one labelled patient per class; at least one masked when asked for.
        n_labelled = max(1, min(n_labelled, n - 1 if split_ratio[1] > 0 and n > 1 else n))
        labelled.update(rng.permutation(groups)[:n_labelled].tolist())
    return labelled


def _shared_rows(rows: pd.DataFrame, role: str) -> pd.DataFrame:
    return rows.assign(**{FOLD: SHARED_FOLD, ROLE: role})


def _check_classes_in_folds(folds: pd.DataFrame, classes: list[str]) -> None:
    for k in fold_ids(folds):
        for role in (ROLE_VALIDATION, ROLE_LABELLED):
            present = set(fold_frame(folds, k, role)[LABEL])
            for label in classes:
                if label not in present:
                    raise DataError(
                        f"Fold {k} has no {label!r} images in its {role} part; "
                        "use fewer folds or a data set with more patients of that class."
                    )


def _log_sizes(folds: pd.DataFrame) -> None:
    for k in fold_ids(folds):
        sizes = folds[folds[FOLD] == k][ROLE].value_counts()
        log.info(
            "Fold %d: %d labelled, %d masked, %d validation images.",
            k, sizes.get(ROLE_LABELLED, 0), sizes.get(ROLE_MASKED, 0), sizes.get(ROLE_VALIDATION, 0),
        )
    shared = folds[folds[FOLD] == SHARED_FOLD][ROLE].value_counts()
    pool = f", {shared[ROLE_POOL]} pool" if shared.get(ROLE_POOL, 0) else ""  # runs made before pool.csv
    log.info("Shared: %d test%s images.", shared.get(ROLE_TEST, 0), pool)
