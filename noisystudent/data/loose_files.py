"""The images an ensemble predicts: files, folders and CSV manifests given on the command line.

``resolve_inputs`` turns any mix of them into one table (path, label,
patient), without decoding a pixel:

- an image file (extension in ``manifest.IMAGE_EXTENSIONS``) is one row;
- a folder is searched recursively for image files (hidden entries skipped);
- a ``.csv`` file is a manifest (``readers.read_csv_manifest``): path, and
  optionally label, patient and subset; rows without a label are allowed.

Patient and label of a file named like C-NMC cells,
``UID_<patient>_<image>_<cell>_<all|hem>.bmp``, come from its name; a CSV's own
patient and label columns win over the name. Otherwise both are "".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from noisystudent.data.manifest import IMAGE_EXTENSIONS, LABEL, PATH, PATIENT
from noisystudent.data.readers import cnmc_name_fields, image_files, read_csv_manifest
from noisystudent.errors import DataError
from noisystudent.safe_paths import file_kind

logger = logging.getLogger(__name__)

INPUT_COLUMNS = [PATH, LABEL, PATIENT]


def resolve_inputs(inputs: list[Path]) -> pd.DataFrame:
    """One row per image (path, label, patient) in the order given; duplicates dropped.

    Turns any mix of image files, folders and CSV manifests into the table
    :func:`predict` and :func:`evaluate` take, without decoding a pixel.
    Folders are searched recursively (hidden entries skipped). A file named
    like a C-NMC cell (``UID_<patient>_<image>_<cell>_<all|hem>.bmp``) gets its
    patient and label from its name; a CSV's own label and patient columns win.

    Args:
        inputs: Paths (``str`` or ``pathlib.Path``) of image files, folders or
            ``.csv`` manifests (column path, optionally label, patient and
            subset; rows may lack a label).

    Returns:
        pandas.DataFrame: Columns ``path`` (absolute), ``label`` and
        ``patient`` ("" when unknown), one row per distinct image; an image
        given twice is kept once (first place) with a warning.

    Raises:
        DataError: ``inputs`` is empty, or an input does not exist, is an empty
            folder, is neither an image, a folder nor a CSV, or is a CSV that
            cannot be read or lists a missing image.

    Example:
        >>> import noisystudent as ns
        >>> images = ns.resolve_inputs(["new_cells/", "UID_H7_1_2_hem.bmp"])  # doctest: +SKIP
        >>> images.columns.tolist()  # doctest: +SKIP
        ['path', 'label', 'patient']
        >>> images.iloc[-1][["label", "patient"]].tolist()  # doctest: +SKIP
        ['hem', 'H7']
    """
    if not inputs:
        raise DataError("No input was given: name image files, folders or CSV manifests.")
    parts = [_one_input(Path(item)) for item in inputs]
    table = pd.concat(parts, ignore_index=True)
    repeated = table[PATH].duplicated()
    if repeated.any():
        logger.warning("%d images were given more than once and are predicted once, e.g. %s.",
                       int(repeated.sum()), table.loc[repeated, PATH].iloc[0])
        table = table[~repeated].reset_index(drop=True)
    return table


def name_fields(path: str | Path) -> tuple[str, str]:
    """(patient, label) of a C-NMC style file name; ("", "") when the name does not match."""
    return cnmc_name_fields(path) or ("", "")


def _one_input(item: Path) -> pd.DataFrame:
    if not item.exists():
        raise DataError(f"The input {item} does not exist.")
    kind = file_kind(item)
    if kind not in (None, "a folder"):  # reading a FIFO or device would wait forever
        raise DataError(f"The input {item} is {kind}, not an image, folder or CSV file.")
    if item.is_dir():
        files = image_files(item)
        if not files:
            raise DataError(f"The folder {item} contains no images ({', '.join(IMAGE_EXTENSIONS)}).")
        return _from_names(files)
    if item.suffix.lower() == ".csv":
        return _from_csv(item)
    if item.suffix.lower() in IMAGE_EXTENSIONS:
        return _from_names([os.path.abspath(item)])
    raise DataError(f"The input {item} is neither an image ({', '.join(IMAGE_EXTENSIONS)}), a folder nor a CSV manifest.")


def _from_names(paths: list[str]) -> pd.DataFrame:
    fields = [name_fields(p) for p in paths]
    return pd.DataFrame({PATH: paths, LABEL: [f[1] for f in fields], PATIENT: [f[0] for f in fields]}, columns=INPUT_COLUMNS)


def _from_csv(csv_path: Path) -> pd.DataFrame:
    table = read_csv_manifest(csv_path, allow_unlabelled=True)[INPUT_COLUMNS].copy()
    named = _from_names(table[PATH].tolist())
    for column in (LABEL, PATIENT):  # the CSV's own value wins over the file name
        table[column] = table[column].where(table[column] != "", named[column])
    return table
