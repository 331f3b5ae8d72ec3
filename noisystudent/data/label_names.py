"""Labels that differ only in case or surrounding spaces, and the ``--label-map`` that merges them.

``ALL/ all/ Hem/ hem/`` as class folders would silently make a 4-class
problem; ``data inspect`` reports such labels and ``kfold`` refuses them
unless ``--label-map 'ALL=all,Hem=hem'`` says what each one is.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from noisystudent.config.parsing import parse_label_map
from noisystudent.data.manifest import LABEL
from noisystudent.errors import DataError


def similar_labels(labels: Iterable[str]) -> list[list[str]]:
    """Groups of two or more distinct labels that are equal after stripping spaces and ignoring case."""
    groups: dict[str, set[str]] = {}
    for label in set(labels) - {""}:
        groups.setdefault(str(label).strip().casefold(), set()).add(str(label))
    return [sorted(group) for _, group in sorted(groups.items()) if len(group) > 1]


def similar_labels_sentence(groups: list[list[str]]) -> str:
    listing = "; ".join(", ".join(repr(label) for label in group) for group in groups)
    return f"Some labels differ only in case or surrounding spaces ({listing}): each is a class of its own"


def check_distinct_labels(manifest: pd.DataFrame) -> None:
    """DataError when labels differ only in case or surrounding spaces."""
    groups = similar_labels(manifest[LABEL])
    if groups:
        raise DataError(f"{similar_labels_sentence(groups)}; merge them with --label-map, e.g. --label-map '{_example(groups)}'.")


def _example(groups: list[list[str]]) -> str:
    """'ALL=all,Hem=hem': each label renamed to the lower-case spelling when there is one."""
    pairs = []
    for group in groups:
        target = next((label for label in group if label == label.strip().lower()), group[0].strip())
        pairs += [f"{label.strip()}={target}" for label in group if label != target]
    return ",".join(pairs)


def apply_label_map(manifest: pd.DataFrame, spec: str | None, require_all: bool = True) -> pd.DataFrame:
    """``manifest`` with labels renamed by ``spec`` (compared after stripping spaces).

    With ``require_all`` (the training data), a label to rename that no image has is refused: a typo.
    """
    if not spec:
        return manifest
    mapping = parse_label_map(spec)
    stripped = manifest[LABEL].str.strip()
    unknown = sorted(set(mapping) - set(stripped))
    if unknown and require_all:
        raise DataError(f"--label-map renames {unknown[0]!r}, which no image has as its label.")
    manifest = manifest.copy()
    manifest[LABEL] = [mapping.get(s, label) for s, label in zip(stripped, manifest[LABEL])]
    return manifest
