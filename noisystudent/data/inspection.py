"""Describe a data set before training on it: counts, sizes and problems.

Unlike ``readers.read_dataset`` this does not stop at the first bad image:
it decodes every file and lists all problems it finds, so that a user can
fix the data in one pass. It returns tables; the CLI renders them.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from noisystudent.data.images import EXTREME_ASPECT, ImageInfo, probe_images
from noisystudent.data.label_names import similar_labels, similar_labels_sentence
from noisystudent.data.manifest import LABEL, PATH, PATIENT, SUBSET, SUBSET_TEST, SUBSET_TRAIN, check_manifest
from noisystudent.data.readers import read_manifest
from noisystudent.errors import DataError

logger = logging.getLogger(__name__)

WIDTH = "width"
HEIGHT = "height"
MODE = "mode"
IMAGES = "images"  # count column of size_counts and mode_counts
NO_LABEL = "(none)"  # column of unlabelled images in subset_counts
NO_PATIENT = "(unknown)"  # row of images without patient id in patient_counts


@dataclass
class InspectReport:
    """What ``inspect_dataset`` found."""

    format: str
    n_images: int
    subset_counts: pd.DataFrame  # index subset, one column per class (+ NO_LABEL)
    patient_counts: pd.DataFrame  # index patient, one column per class; labelled images only
    size_counts: pd.DataFrame  # columns WIDTH, HEIGHT, IMAGES; readable images only
    mode_counts: pd.DataFrame  # columns MODE, IMAGES; colour modes as stored in the files
    problems: list[str] = field(default_factory=list)


def inspect_dataset(
    path: str | Path,
    data_format: str = "auto",
    patient_regex: str | None = None,
    workers: int | None = None,
) -> InspectReport:
    """Read the layout, decode every image and report counts and problems.

    Unlike :func:`read_dataset` it does not stop at the first problem: every
    image is decoded and every problem found is listed, so that the data can be
    fixed in one pass. Nothing is written.

    Args:
        path: The data set, as for :func:`read_dataset`.
        data_format: ``"auto"`` (default), ``"cnmc"``, ``"folders"`` or ``"csv"``.
        patient_regex: Regex with one group for the patient id (folders
            layout); default ``None``: patients unknown.
        workers: Threads that decode images; ``None`` (default): CPU cores + 4, at most 32.

    Returns:
        InspectReport: ``format`` (the layout read), ``n_images``, and the
        tables ``subset_counts`` (subset x class), ``patient_counts`` (patient
        x class, labelled images), ``size_counts`` (width, height, images) and
        ``mode_counts`` (mode, images) as DataFrames, plus ``problems``: one
        sentence per problem found (unreadable images, duplicate paths, a
        patient in two classes or in both train and test, mixed colour modes, ...).

    Raises:
        DataError: The path does not exist or does not follow the layout at all
            (problems with single images are listed instead).
        ConfigError: ``data_format`` or ``patient_regex`` is invalid.

    Example:
        >>> import noisystudent as ns
        >>> report = ns.inspect_dataset("/data/C-NMC_Leukemia")  # doctest: +SKIP
        >>> report.format, report.n_images, report.problems  # doctest: +SKIP
        ('cnmc', 15114, [])
    """
    manifest, data_format = read_manifest(path, data_format, patient_regex)
    infos = probe_images(manifest[PATH].tolist(), workers)
    readable = [info for info in infos if not info.error]
    problems = [info.error for info in infos if info.error]
    problems += manifest_problems(manifest) + _mode_problems(readable) + _aspect_problems(readable)
    return InspectReport(
        format=data_format,
        n_images=len(manifest),
        subset_counts=subset_counts(manifest),
        patient_counts=patient_counts(manifest),
        size_counts=_size_counts(readable),
        mode_counts=_mode_counts(readable),
        problems=problems,
    )


def subset_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per subset (rows) and class (columns)."""
    labels = manifest[LABEL].replace("", NO_LABEL)
    return pd.crosstab(manifest[SUBSET], labels).rename_axis(index=SUBSET, columns=LABEL)


def patient_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Labelled images per patient (rows, natural order) and class (columns)."""
    labelled = manifest[manifest[LABEL] != ""]
    patients = labelled[PATIENT].replace("", NO_PATIENT)
    table = pd.crosstab(patients, labelled[LABEL]).rename_axis(index=PATIENT, columns=LABEL)
    return table.reindex(sorted(table.index, key=_natural_key))


def manifest_problems(manifest: pd.DataFrame) -> list[str]:
    """Problems visible from the manifest alone, one sentence each."""
    problems = []
    try:
        check_manifest(manifest)
    except DataError as error:
        problems.append(str(error))
    labelled = manifest[(manifest[LABEL] != "") & (manifest[PATIENT] != "")]
    groups = similar_labels(manifest[LABEL])
    if groups:
        problems.append(f"{similar_labels_sentence(groups)}; kfold refuses them unless --label-map merges them.")
    problems += _patients_in_both_classes(labelled)
    problems += _patients_in_train_and_test(labelled)
    problems += _classes_with_few_patients(labelled[labelled[SUBSET] == SUBSET_TRAIN])
    missing = int(((manifest[LABEL] != "") & (manifest[PATIENT] == "")).sum())
    if missing:
        problems.append(
            f"{missing} labelled images have no patient id, so folds split images rather than patients "
            "and scores may be optimistic."
        )
    return problems


def _patients_in_both_classes(labelled: pd.DataFrame) -> list[str]:
    classes = labelled.groupby(PATIENT)[LABEL].unique()
    return [
        f"Patient {patient} has images of several classes ({', '.join(sorted(found))})."
        for patient, found in classes.items()
        if len(found) > 1
    ]


def _patients_in_train_and_test(labelled: pd.DataFrame) -> list[str]:
    train = set(labelled.loc[labelled[SUBSET] == SUBSET_TRAIN, PATIENT])
    test = set(labelled.loc[labelled[SUBSET] == SUBSET_TEST, PATIENT])
    return [f"Patient {patient} appears in both the train and the test subset." for patient in sorted(train & test)]


def _classes_with_few_patients(train: pd.DataFrame) -> list[str]:
    per_class = train.groupby(LABEL)[PATIENT].nunique()
    return [
        f"Class {label} has training images of only {count} patient; patient-disjoint folds need at least 2."
        for label, count in per_class.items()
        if count < 2
    ]


def _mode_problems(readable: list[ImageInfo]) -> list[str]:
    modes = Counter(info.mode for info in readable)
    if len(modes) < 2:
        return []
    listing = ", ".join(f"{mode}: {count}" for mode, count in modes.most_common())
    return [f"The images have mixed colour modes ({listing}); all are converted to 8-bit RGB."]


def _aspect_problems(readable: list[ImageInfo]) -> list[str]:
    """Images so elongated that, padded to a square, they are almost all black."""
    thin = [info for info in readable if max(info.width, info.height) > EXTREME_ASPECT * max(1, min(info.width, info.height))]
    if not thin:
        return []
    first = thin[0]
    return [f"{len(thin)} images are more than {EXTREME_ASPECT} times longer than wide, e.g. {first.path} "
            f"({first.width} x {first.height}); padded to a square they become almost all black."]


def _size_counts(readable: list[ImageInfo]) -> pd.DataFrame:
    sizes = Counter((info.width, info.height) for info in readable)
    rows = [{WIDTH: w, HEIGHT: h, IMAGES: n} for (w, h), n in sizes.most_common()]
    return pd.DataFrame(rows, columns=[WIDTH, HEIGHT, IMAGES])


def _mode_counts(readable: list[ImageInfo]) -> pd.DataFrame:
    modes = Counter(info.mode for info in readable)
    return pd.DataFrame([{MODE: m, IMAGES: n} for m, n in modes.most_common()], columns=[MODE, IMAGES])


def _natural_key(patient: str) -> tuple:
    """'H2' before 'H10', '2' before '11', images without patient last."""
    if patient == NO_PATIENT:
        return ((2, ""),)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", patient) if part)
