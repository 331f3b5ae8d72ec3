"""Read a data set from disk into a manifest (columns in manifest.py).

Three layouts are understood:

* ``cnmc``: the C-NMC 2019 / Kaggle folders, ``C-NMC_Leukemia/training_data/
  fold_*/{all,hem}/UID_<patient>_<image>_<cell>_<all|hem>.bmp`` plus, when
  present, the labelled preliminary test set and the unlabelled final test set;
* ``folders``: one folder per class, patients optionally parsed by a regex;
* ``csv``: a CSV with columns path, label[, patient][, subset].

``read_dataset`` picks the layout, checks that every image decodes and returns
the manifest. Images that cannot be decoded either stop the read (first one
named) or, with ``skip_unreadable``, are dropped and listed in
``manifest.attrs["skipped"]`` as (path, one-sentence reason) pairs.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from noisystudent.data.duplicates import CONTENTS, Contents
from noisystudent.data.images import check_images
from noisystudent.data.manifest import (
    IMAGE_EXTENSIONS,
    LABEL,
    LEGACY_SUBSETS,
    PATH,
    PATIENT,
    SUBSET,
    SUBSETS,
    SUBSET_POOL,
    SUBSET_TEST,
    SUBSET_TRAIN,
    check_manifest,
    make_manifest,
    normalise_patient,
)
from noisystudent.errors import ConfigError, DataError
from noisystudent.safe_paths import file_kind

logger = logging.getLogger(__name__)

FORMATS = ("cnmc", "folders", "csv")
CNMC_FOLDER = "C-NMC_Leukemia"
CNMC_CLASSES = ("all", "hem")
SKIPPED = "skipped"  # key of manifest.attrs listing (path, reason) of dropped images

_UID_NAME = re.compile(r"^UID_([^_]+)_(\d+)_(\d+)_(all|hem)$", re.IGNORECASE)
_PRELIM_IMAGES = Path("validation_data", "C-NMC_test_prelim_phase_data")
_PRELIM_LABELS = Path("validation_data", "C-NMC_test_prelim_phase_data_labels.csv")
_PRELIM_COLUMNS = ("Patient_ID", "new_names", "labels")
_PRELIM_LABEL_NAMES = {"1": "all", "0": "hem"}
_FINAL_IMAGES = Path("testing_data", "C-NMC_test_final_phase_data")
_CSV_COLUMNS = (PATH, LABEL, PATIENT, SUBSET)
CSV_CHUNK = 1 << 16  # rows of a pool CSV read at a time
_JUNK_NAMES = {"thumbs.db", "desktop.ini"}  # written by file browsers, never data


# --- entry points ---------------------------------------------------------------


def read_dataset(
    path: str | Path,
    data_format: str = "auto",
    patient_regex: str | None = None,
    skip_unreadable: bool = False,
    workers: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """Manifest of a labelled data set, checked image by image, and its layout.

    Reads the layout (C-NMC folders, one folder per class, or a CSV), decodes
    every image, and checks the manifest (no duplicates, labelled training
    images of at least two classes). Nothing is written.

    Args:
        path: The data set: the C-NMC_Leukemia folder (or its parent), a folder
            with one sub-folder per class, or a CSV with columns path, label and
            optionally patient and subset (relative paths start at the CSV's folder).
        data_format: ``"cnmc"``, ``"folders"``, ``"csv"``, or ``"auto"``
            (default: a ``.csv`` file is csv, a folder with ``training_data``
            is cnmc, any other folder is folders).
        patient_regex: For the folders layout, a regex with one group that
            finds the patient id in a file name. Default ``None``: patients
            unknown (folds then split images, not patients). Ignored, with a
            warning, for the other layouts.
        skip_unreadable: ``False`` (default): the first image that does not
            decode stops the read. ``True``: such images are dropped, logged,
            and listed in ``manifest.attrs["skipped"]``.
        workers: Threads that decode images; ``None`` (default): CPU cores + 4, at most 32.

    Returns:
        tuple[pandas.DataFrame, str]: The manifest, one row per image sorted by
        path, with string columns ``path`` (absolute), ``label``, ``patient``
        (upper-cased; "" when unknown) and ``subset`` (train, test or
        pool); and the layout actually read (``"cnmc"``, ``"folders"`` or ``"csv"``).

    Raises:
        DataError: The path does not exist, the layout does not match, an image
            does not decode (without ``skip_unreadable``), or the data set has
            fewer than two labelled classes.
        ConfigError: ``data_format`` or ``patient_regex`` is invalid.

    Example:
        >>> import noisystudent as ns
        >>> manifest, layout = ns.read_dataset("cells/", patient_regex=r"^(p\\d+)_")  # doctest: +SKIP
        >>> layout, manifest.columns.tolist()  # doctest: +SKIP
        ('folders', ['path', 'label', 'patient', 'subset'])
    """
    manifest, data_format = read_manifest(path, data_format, patient_regex)
    manifest = drop_unreadable(manifest, skip_unreadable, workers)
    check_manifest(manifest)
    return manifest, data_format


def read_manifest(
    path: str | Path, data_format: str = "auto", patient_regex: str | None = None
) -> tuple[pd.DataFrame, str]:
    """Manifest as the layout describes it, without decoding any image."""
    path = Path(path)
    _require_exists(path)
    if data_format == "auto":
        data_format = detect_format(path)
        logger.info("The data at %s is read as the %s layout (detected).", path, data_format)
    if data_format not in FORMATS:
        raise ConfigError(f"data_format must be one of auto, {', '.join(FORMATS)}; got {data_format!r}.")
    if patient_regex and data_format != "folders":
        logger.warning("The patient regex is ignored: it applies to the folders layout only, not %s.", data_format)
    if data_format == "cnmc":
        return read_cnmc(path), data_format
    if data_format == "folders":
        return read_folders(path, patient_regex), data_format
    return read_csv_manifest(path), data_format


def detect_format(path: str | Path) -> str:
    """'csv' for a CSV file, 'cnmc' for the C-NMC folders, else 'folders'."""
    path = Path(path)
    _require_exists(path)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"The data path {path} is a file but not a CSV file.")
    return "cnmc" if _cnmc_root(path) is not None else "folders"


def pool_records(path: str | Path) -> Iterator[tuple[str, str]]:
    """(path, patient) of every image of an extra pool, unsorted and unchecked, one at a time.

    A folder is searched recursively; a CSV gives path[, label][, patient][, subset]
    (labels dropped). Streamed: a pool may hold millions of images (data/pool.py
    sorts and checks them).
    """
    path = Path(path)
    _require_exists(path)
    if not path.is_file():
        return _pool_image_paths(path)
    if path.suffix.lower() != ".csv":
        raise DataError(f"The pool images {path} are a file but not a CSV file.")
    return _csv_pool_records(path)


def drop_unreadable(manifest: pd.DataFrame, skip: bool, workers: int | None = None) -> pd.DataFrame:
    """Decode every image; raise on the first bad one, or drop and list them when ``skip``.

    The pixel digest of every kept image goes to ``attrs[CONTENTS]`` (for data/duplicates.py).
    """
    bad, contents = check_images(manifest[PATH].tolist(), workers)
    if bad and not skip:
        raise DataError(bad[0][1])
    for _, reason in bad:
        logger.warning("Skipped: %s", reason)
    bad_paths = {path for path, _ in bad}
    kept = manifest[~manifest[PATH].isin(bad_paths)].reset_index(drop=True)
    kept.attrs[SKIPPED] = bad
    kept.attrs[CONTENTS] = Contents(contents)
    return kept


# --- C-NMC ----------------------------------------------------------------------


def read_cnmc(root: str | Path) -> pd.DataFrame:
    """C-NMC layout; ``root`` is the C-NMC_Leukemia folder or its parent."""
    root = Path(root)
    _require_exists(root)
    cnmc = _cnmc_root(root)
    if cnmc is None:
        raise DataError(f"The folder {root} is not in the C-NMC layout: it has no training_data folder.")
    rows = _cnmc_training(cnmc / "training_data") + _cnmc_prelim(cnmc) + _cnmc_final(cnmc)
    return _finish(rows)


def parse_cnmc_name(name: str) -> tuple[str, str]:
    """(normalised patient, class) from a file name or path 'UID_<patient>_<image>_<cell>_<all|hem>.bmp'."""
    fields = cnmc_name_fields(name)
    if fields is None:
        raise DataError(
            f"The file name {name} does not follow the C-NMC pattern UID_<patient>_<image>_<cell>_<all|hem>.bmp."
        )
    return fields


def cnmc_name_fields(name: str | Path) -> tuple[str, str] | None:
    """(normalised patient, class) of a C-NMC file name, or None when the name does not follow the pattern."""
    match = _UID_NAME.match(Path(name).stem)
    return None if match is None else (normalise_patient(match.group(1)), match.group(4).lower())


def _cnmc_root(path: Path) -> Path | None:
    for candidate in (path, path / CNMC_FOLDER):
        if (candidate / "training_data").is_dir():
            return candidate
    return None


def _cnmc_training(training: Path) -> list[dict]:
    rows = []
    for class_dir in sorted(d for d in training.glob("fold_*/*") if d.is_dir()):
        label = class_dir.name.lower()
        if label not in CNMC_CLASSES:
            raise DataError(f"The C-NMC folder {class_dir} is neither an 'all' nor a 'hem' folder.")
        for file in _image_files(class_dir):
            patient, name_label = parse_cnmc_name(str(file))
            if name_label != label:
                raise DataError(f"The image {file} lies in the {label} folder but its name says {name_label}.")
            rows.append(_row(file, label, patient, SUBSET_TRAIN))
    if not rows:
        raise DataError(f"The folder {training} contains no images in fold_*/all or fold_*/hem.")
    return rows


def _cnmc_prelim(cnmc: Path) -> list[dict]:
    """Labelled preliminary-phase test images: subset test."""
    folder, labels_csv = cnmc / _PRELIM_IMAGES, cnmc / _PRELIM_LABELS
    if not folder.is_dir():
        return []
    if not labels_csv.is_file():
        logger.warning("The preliminary test images in %s are skipped: %s is missing.", folder, labels_csv)
        return []
    table = _read_csv_table(labels_csv, lower_columns=False)
    missing = [c for c in _PRELIM_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"The labels file {labels_csv} has no {missing[0]} column.")
    rows = [_prelim_row(record, line, folder, labels_csv) for line, record in _numbered(table)]
    _warn_unlisted(folder, {row[PATH] for row in rows}, labels_csv)
    return rows


def _prelim_row(record: dict, line: int, folder: Path, labels_csv: Path) -> dict:
    file = folder / record["new_names"].strip()
    _check_listed_file(file, line, labels_csv)
    label = _PRELIM_LABEL_NAMES.get(record["labels"].strip())
    if label is None:
        raise DataError(
            f"Unknown label {record['labels']!r} on line {line} of {labels_csv}; expected 1 (all) or 0 (hem)."
        )
    return _row(file, label, _prelim_patient(record["Patient_ID"]), SUBSET_TEST)


def _prelim_patient(patient_id: str) -> str:
    """Patient_ID holds the original cell name ('UID_57_29_1_all.bmp') or a bare id."""
    try:
        return parse_cnmc_name(patient_id.strip())[0]
    except DataError:
        return normalise_patient(patient_id)


def _warn_unlisted(folder: Path, listed: set[str], labels_csv: Path) -> None:
    unlisted = [f for f in _image_files(folder) if _absolute(f) not in listed]
    if unlisted:
        logger.warning(
            "%d images in %s are not in %s and are ignored, e.g. %s.", len(unlisted), folder, labels_csv, unlisted[0].name
        )


def _cnmc_final(cnmc: Path) -> list[dict]:
    """Final-phase test images have no published labels: subset pool."""
    folder = cnmc / _FINAL_IMAGES
    if not folder.is_dir():
        return []
    return [_row(f, "", "", SUBSET_POOL) for f in _image_files(folder)]


# --- one folder per class ------------------------------------------------------------


def read_folders(root: str | Path, patient_regex: str | None = None) -> pd.DataFrame:
    """``root/<class>/<image>``; the class is the folder name, patients from ``patient_regex``."""
    root = Path(root)
    _require_exists(root)
    pattern = compile_patient_regex(patient_regex)
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not _is_hidden(d)]
    if not class_dirs:
        raise DataError(f"The folder {root} has no class sub-folders.")
    loose = [f for f in root.iterdir() if f.is_file() and not _is_hidden(f)]
    if loose:
        logger.warning("%d files directly in %s are ignored, e.g. %s.", len(loose), root, sorted(loose)[0].name)
    rows = []
    for class_dir in class_dirs:
        files = _image_files(class_dir)
        if not files:
            raise DataError(f"The class folder {class_dir} contains no images.")
        rows += [_row(f, class_dir.name, patient_from_name(f, pattern), SUBSET_TRAIN) for f in files]
    return _finish(rows)


def compile_patient_regex(patient_regex: str | None) -> re.Pattern | None:
    """The compiled regex, checked to have exactly one capturing group."""
    if not patient_regex:
        return None
    try:
        pattern = re.compile(patient_regex)
    except re.error as error:
        raise ConfigError(f"The patient regex {patient_regex!r} is invalid: {error}.") from error
    if pattern.groups != 1:
        raise ConfigError(
            f"The patient regex {patient_regex!r} must have exactly one group (...) around the patient id; it has {pattern.groups}."
        )
    return pattern


def patient_from_name(file: Path, pattern: re.Pattern | None) -> str:
    """Patient id the regex finds in the file name; "" when there is no regex."""
    if pattern is None:
        return ""
    match = pattern.search(file.name)
    if match is None or not match.group(1):
        raise DataError(f"The file name {file} does not match the patient regex {pattern.pattern!r}.")
    return normalise_patient(match.group(1))


# --- CSV ------------------------------------------------------------------------


def read_csv_manifest(
    csv_path: str | Path, classes: list[str] | None = None, allow_unlabelled: bool = False
) -> pd.DataFrame:
    """CSV with columns path, label[, patient][, subset]; relative paths start at the CSV's folder.

    A row may lack a label only when its subset is 'pool' ('unlabelled' before 0.2), or when
    ``allow_unlabelled`` is set (such rows then become subset 'pool').
    """
    csv_path = Path(csv_path)
    _require_exists(csv_path)
    table = _read_csv_table(csv_path, lower_columns=True)
    _check_csv_columns(table, csv_path)
    rows: list[dict] = []
    first_line: dict[str, int] = {}
    for line, record in _numbered(table):
        row = _csv_row(record, line, csv_path, classes, allow_unlabelled)
        if row[PATH] in first_line:
            raise DataError(
                f"The image {row[PATH]} is listed twice in {csv_path}, on lines {first_line[row[PATH]]} and {line}."
            )
        first_line[row[PATH]] = line
        rows.append(row)
    if not rows:
        raise DataError(f"The CSV file {csv_path} lists no images.")
    return _finish(rows)


def _csv_pool_records(csv_path: Path) -> Iterator[tuple[str, str]]:
    """(path, patient) of a pool CSV, read CSV_CHUNK rows at a time; labels and subsets are ignored."""
    line = 2
    try:
        with pd.read_csv(csv_path, dtype=str, keep_default_na=False, chunksize=CSV_CHUNK) as reader:
            for chunk in reader:
                chunk.columns = [str(c).strip().lower() for c in chunk.columns]
                _check_csv_columns(chunk, csv_path)
                patients = chunk[PATIENT] if PATIENT in chunk.columns else itertools.repeat("")
                for raw, patient in zip(chunk[PATH].tolist(), patients):
                    yield _csv_image_path(raw, line, csv_path), normalise_patient(patient)
                    line += 1
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise _csv_read_error(csv_path, error) from error


def _check_csv_columns(table: pd.DataFrame, csv_path: Path) -> None:
    unknown = [c for c in table.columns if c not in _CSV_COLUMNS]
    if unknown:
        raise DataError(
            f"The CSV file {csv_path} has unknown column(s) {', '.join(unknown)}; allowed are {', '.join(_CSV_COLUMNS)}."
        )
    if PATH not in table.columns:
        raise DataError(f"The CSV file {csv_path} has no '{PATH}' column.")


def _csv_row(record: dict, line: int, csv_path: Path, classes: list[str] | None, allow_unlabelled: bool) -> dict:
    path = _csv_image_path(record[PATH], line, csv_path)
    subset = record.get(SUBSET, "").strip().lower() or SUBSET_TRAIN
    subset = LEGACY_SUBSETS.get(subset, subset)  # 'unlabelled', the pool's name before 0.2
    if subset not in SUBSETS:
        raise DataError(f"Unknown subset {subset!r} on line {line} of {csv_path}; expected one of {', '.join(SUBSETS)}.")
    label = record.get(LABEL, "").strip()
    if not label and allow_unlabelled:
        subset = SUBSET_POOL
    if not label and subset != SUBSET_POOL:
        raise DataError(f"The image on line {line} of {csv_path} has no label, but only rows of subset 'pool' may omit it.")
    if label and classes is not None and label not in classes:
        raise DataError(f"Unknown label {label!r} on line {line} of {csv_path}; expected one of {', '.join(classes)}.")
    return {PATH: path, LABEL: label, PATIENT: normalise_patient(record.get(PATIENT, "")), SUBSET: subset}


def _csv_image_path(raw: str, line: int, csv_path: Path) -> str:
    raw = raw.strip()
    if not raw:
        raise DataError(f"Line {line} of {csv_path} has an empty path.")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = csv_path.parent / path
    _check_listed_file(path, line, csv_path)
    return _absolute(path)


def _check_listed_file(path: Path, line: int, csv_path: Path) -> None:
    """Refuse a listed image that is missing, not a regular file (/dev/zero, a FIFO), or has an impossible name."""
    where = f"listed on line {line} of {csv_path}"
    try:
        kind, exists = file_kind(path), path.exists()
    except OSError as error:  # ENAMETOOLONG: a name over 255 bytes; ELOOP
        raise DataError(f"The image {_shortened(path)} {where} cannot be opened: {error.strerror or error}.") from error
    if kind is not None:
        raise DataError(f"The image {path} {where} is {kind}, not a regular file.")
    if not exists:
        raise DataError(f"The image {path} {where} does not exist.")


def _shortened(path: Path, keep: int = 80) -> str:
    """``path`` with a very long file name cut in the middle, so that the sentence stays readable."""
    text = str(path)
    return text if len(text) <= 2 * keep else f"{text[:keep]}...{text[-keep:]}"


def _read_csv_table(csv_path: Path, lower_columns: bool) -> pd.DataFrame:
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise _csv_read_error(csv_path, error) from error
    names = [str(c).strip() for c in table.columns]
    table.columns = [n.lower() for n in names] if lower_columns else names
    return table


def _csv_read_error(csv_path: Path, error: Exception) -> DataError:
    """One sentence for a CSV file pandas cannot read: the first line of its reason."""
    reason = str(error).strip().splitlines()[0].rstrip(".")
    return DataError(f"The CSV file {csv_path} cannot be read: {reason}.")


def _numbered(table: pd.DataFrame) -> list[tuple[int, dict]]:
    """Records with their line number in the file (line 1 is the header)."""
    return list(enumerate(table.to_dict("records"), start=2))


# --- shared helpers -------------------------------------------------------------


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"The data path {path} does not exist.")
    kind = file_kind(path)
    if kind not in (None, "a folder"):  # reading a FIFO would wait forever
        raise DataError(f"The data path {path} is {kind}, not a file or folder.")


def _image_files(folder: Path) -> list[Path]:
    """Sorted image files directly in a folder; other entries are counted in one warning."""
    images, others = [], []
    for entry in list_entries(folder):
        if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(entry)
        else:
            others.append(entry)
    if others:
        logger.warning(
            "%d entries in %s are not images and are ignored, e.g. %s.", len(others), folder, others[0].name
        )
    return images


def _pool_image_paths(folder: Path) -> Iterator[tuple[str, str]]:
    """(absolute path, "") of the image files anywhere under ``folder``, in walk order; other files are counted in one warning."""
    others, example = 0, None
    for path in _walk_files(folder):
        if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(path):
            yield path, ""
        else:
            others, example = others + 1, min(example or path, path)
    if others:
        logger.warning("%d entries in %s are not images and are ignored, e.g. %s.", others, folder, os.path.basename(example))


def list_entries(folder: Path) -> list[Path]:
    """Entries directly in a folder, sorted, hidden ones (.DS_Store, .ipynb_checkpoints, ...) left out."""
    return sorted(e for e in folder.iterdir() if not _is_hidden(e))


def image_files(folder: Path) -> list[str]:
    """Absolute paths of the image files anywhere under ``folder``, sorted, hidden ones left out."""
    return sorted(path for path in _walk_files(folder) if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS)


def _walk_files(folder: Path) -> Iterator[str]:
    """Absolute paths (strings) of the files anywhere under ``folder``, hidden files and folders left out.

    Strings, not Path objects: a pool may list millions of files, and pathlib
    interns every name it parses.
    """
    for parent, dirs, files in os.walk(os.path.abspath(folder)):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield from (os.path.join(parent, name) for name in files if not _is_hidden_name(name))


def _is_hidden(path: Path) -> bool:
    return _is_hidden_name(path.name)


def _is_hidden_name(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def _row(file: Path, label: str, patient: str, subset: str) -> dict:
    return {PATH: _absolute(file), LABEL: label, PATIENT: patient, SUBSET: subset}


def _absolute(path: Path) -> str:
    # abspath, not resolve(): symlinked files (git-annex, DVC) keep the names that carry labels.
    return os.path.abspath(path)


def _finish(rows: list[dict]) -> pd.DataFrame:
    """Manifest sorted by path, so that folds do not depend on directory listing order."""
    manifest = make_manifest(rows)
    return manifest.sort_values(PATH, kind="stable").reset_index(drop=True)
