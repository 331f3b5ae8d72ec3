"""Copies of one image under two names, found by the hash of their decoded pixels.

Paths alone cannot tell that ``a.bmp`` and ``copy of a.png`` are one image, and
patient ids are missing in many data sets, so a copy could sit in the labelled
part and the outer test set (or the pool) unseen. Every image is decoded when
the data is read (``images.check_images``), and its pixels are hashed then
(``images.pixel_digest``: SHA-256, 128 bits, of the 8-bit RGB pixels the model sees,
so a re-encoded copy matches too); this module compares the hashes.

What happens to a copy (docs/reliability.md):
- a training image and an outer test image: refused, both paths named;
- copies with two different patient ids: refused, both paths named;
- copies among the training images (the Aria set holds 40 such pairs): kept,
  reported, and kept together in one part of every fold, as one patient;
- an unlabelled pool image that copies a labelled or test image: left out of
  the pool, reported (data/pool.py), as the student would train on it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd

from noisystudent.data.manifest import PATH, PATIENT, SUBSET, SUBSET_POOL, SUBSET_TEST, SUBSET_TRAIN
from noisystudent.errors import DataError

log = logging.getLogger(__name__)

CONTENTS = "contents"
"""Key of ``manifest.attrs``: path -> pixel digest (a ``Contents``) of every image readers.drop_unreadable decoded."""


class Contents(dict):
    """path -> pixel digest. pandas deep-copies ``attrs`` on every operation; this dict is shared instead."""

    def __deepcopy__(self, memo: dict) -> Contents:
        return self


def find_twins(manifest: pd.DataFrame, contents: Mapping[str, str]) -> dict[str, str]:
    """Check the labelled images for copies; return path -> the first path (sorted) of its copies, for copies only.

    Args:
        manifest: The run's labelled images and outer test set (pool rows are ignored).
        contents: Pixel digest of each path (``images.check_images``); paths without one are not compared.

    Returns:
        dict[str, str]: Every image that has a copy, mapped to the first path of its set (itself included).

    Raises:
        DataError: A training image and a test image have the same pixels, or
            copies carry two different patient ids.

    Example:
        >>> import pandas as pd
        >>> images = pd.DataFrame({"path": ["/a.png", "/b.bmp", "/c.png"], "label": ["x", "x", "y"],
        ...                        "patient": ["", "", ""], "subset": ["train"] * 3})
        >>> find_twins(images, {"/a.png": "d1", "/b.bmp": "d1", "/c.png": "d2"})
        {'/a.png': '/a.png', '/b.bmp': '/a.png'}
    """
    labelled = manifest[manifest[SUBSET] != SUBSET_POOL]
    digests = labelled[PATH].map(contents)
    copied = labelled.assign(_digest=digests)[digests.notna() & digests.duplicated(keep=False)]
    twins: dict[str, str] = {}
    for _, copies in copied.sort_values(PATH).groupby("_digest", sort=False):
        _check_copies(copies)
        twins.update(dict.fromkeys(copies[PATH], copies[PATH].iloc[0]))
    if twins:
        first = sorted(path for path, first in twins.items() if path != first)[0]
        log.warning("%d images have the same pixels as another image (e.g. %s and %s); each set of copies is kept in "
                    "one part of every fold, as one patient.", len(twins), twins[first], first)
    return twins


def by_content(contents: Mapping[str, str], paths: set[str]) -> dict[str, str]:
    """Pixel digest -> path of the ``paths`` (the labelled images), for checking the pool against them."""
    return {digest: path for path, digest in sorted(contents.items()) if path in paths}


def _check_copies(copies: pd.DataFrame) -> None:
    subsets = dict(zip(copies[SUBSET], copies[PATH]))
    if SUBSET_TRAIN in subsets and SUBSET_TEST in subsets:
        raise DataError(f"The training image {subsets[SUBSET_TRAIN]} and the test image {subsets[SUBSET_TEST]} have the "
                        "same pixels: the outer test set would score an image the models trained on; remove one of them.")
    patients = copies[copies[PATIENT] != ""].drop_duplicates(PATIENT)
    if len(patients) > 1:
        (a, pa), (b, pb) = patients[[PATH, PATIENT]].head(2).itertuples(index=False)
        raise DataError(f"The images {a} (patient {pa}) and {b} (patient {pb}) have the same pixels, but one image "
                        "comes from one patient; remove the copy or correct its patient id.")
