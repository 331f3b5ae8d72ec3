"""Class labels: their text form, the positive class, and mapping classes to a binary task."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from noisystudent.errors import ConfigError, DataError

POSITIVE = "positive"  # class names produced by apply_binary_mapping
NEGATIVE = "negative"
REST = "rest"  # keyword of a binary mapping: every class not named


def as_labels(values: Sequence) -> np.ndarray:
    """Labels as an array of strings: '' for missing, 1.0 (an int column read with gaps) as '1'."""
    return np.array([label_text(v) for v in np.asarray(values, dtype=object).ravel()], dtype=object)


def label_text(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def positive_index_of(classes: list[str], positive: str) -> int:
    """Index of the positive class; ConfigError naming the classes when it is not one."""
    if positive not in classes:
        raise ConfigError(f"The positive class {positive!r} is not one of the classes {', '.join(classes)}; pass --positive.")
    return classes.index(positive)


def parse_binary_mapping(text: str, classes: Sequence[str]) -> dict[str, str]:
    """Parse 'Benign=negative,rest=positive' into {class: 'positive' | 'negative'}.

    Class names match case-insensitively; ``rest`` stands for every class not
    named. Every class must end up mapped, with at least one on each side.
    """
    names = {str(c).lower(): str(c) for c in classes}
    mapping: dict[str, str] = {}
    rest_side = None
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, side = _parse_mapping_item(item)
        if name.lower() == REST:
            rest_side = side
            continue
        if name.lower() not in names:
            raise ConfigError(f"Unknown class {name!r} in the binary mapping {text!r}; the classes are {', '.join(map(str, classes))}.")
        mapping[names[name.lower()]] = side
    for name in names.values():
        if name not in mapping:
            if rest_side is None:
                raise ConfigError(f"The binary mapping {text!r} does not map the class {name!r}; add it or 'rest=...'.")
            mapping[name] = rest_side
    if set(mapping.values()) != {POSITIVE, NEGATIVE}:
        raise ConfigError(f"The binary mapping {text!r} must map at least one class to each of positive and negative.")
    return mapping


def apply_binary_mapping(labels: Sequence, mapping: dict[str, str]) -> np.ndarray:
    """Replace class names by 'positive'/'negative'; empty labels stay empty."""
    labels = as_labels(labels)
    unknown = sorted(set(labels) - set(mapping) - {""})
    if unknown:
        raise DataError(f"The label {unknown[0]!r} is not covered by the binary mapping.")
    lookup = {**mapping, "": ""}
    return np.array([lookup[label] for label in labels], dtype=object)


def _parse_mapping_item(item: str) -> tuple[str, str]:
    name, sep, side = item.partition("=")
    side = side.strip().lower()
    if not sep or not name.strip():
        raise ConfigError(f"The binary mapping item {item!r} is not of the form class=positive or class=negative.")
    if side not in (POSITIVE, NEGATIVE):
        raise ConfigError(f"The binary mapping item {item!r} must map to 'positive' or 'negative', not {side!r}.")
    return name.strip(), side
