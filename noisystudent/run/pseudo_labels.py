"""Pseudo-labels: what a teacher tells the next round's student.

A teacher's logits on the unlabelled images become one row per image of
``pseudo_labels.csv`` (columns: path, target_<class>..., confidence, pred,
copies), following Xie et al. 2020, "Self-training with Noisy Student":

* ``soft`` targets are ``softmax(logits / temperature)``; ``hard`` targets are
  the one-hot vector of the argmax (the argmax does not depend on the
  temperature).
* ``confidence`` is the largest softmax probability at temperature 1, whatever
  the mode and temperature, so that the threshold and the balancing mean the
  same thing for every setting. ``pred`` is the class name of the argmax.
* ``threshold`` drops images whose confidence is below it (the number dropped
  is logged).
* ``balance`` equalises the pseudo-labelled classes (by ``pred``) after
  thresholding. The per-class target is ``round(mean count)`` over the classes
  that kept at least one image, rounding halves up (10 and 3 images give 7).
  A class above the target keeps only its ``target`` most confident images; a
  class below it keeps all its images and repeats them: each gets
  ``target // n`` copies and the ``target % n`` most confident get one more,
  so the class totals exactly ``target`` copies. Equal confidences (common
  for a saturated teacher) are ordered by a hash of each image's position
  seeded by ``seed``, not by file order. Xie et al. use a fixed count per class instead; a mean
  keeps the student's epoch about as long as without balancing.
* ``per_class`` > 0 is that fixed count: every class is balanced to exactly
  ``per_class`` copies, whatever ``balance`` says. It bounds a student's epoch
  however large the pool is.

``copies`` is how often the image appears in each of the student's epochs
(1 unless balancing duplicated it). Everything here is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from noisystudent import atomic
from noisystudent.config.run_config import PSEUDO_MODES
from noisystudent.data.manifest import PATH
from noisystudent.errors import ConfigError, DataError
from noisystudent.layout import CONFIDENCE, COPIES, PRED, prob_column, target_column
from noisystudent.run.tables import read_table

log = logging.getLogger(__name__)

SUM_TOLERANCE = 1e-4  # targets of a row must sum to 1 within this
CONFIDENT = 0.9  # pseudo_label_summary reports the share of images above this


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)  # avoid overflow
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def make_pseudo_labels(
    paths: list[str],
    logits: np.ndarray,
    classes: list[str],
    mode: str = "soft",
    temperature: float = 1.0,
    threshold: float = 0.0,
    balance: bool = False,
    seed: int = 0,
    per_class: int = 0,
) -> pd.DataFrame:
    """Turn a teacher's logits (N, C) into the pseudo_labels.csv table.

    Rows keep the order of ``paths``; see the module docstring for the rules.
    ``seed`` only orders images of equal confidence when balancing.
    """
    logits = _check_inputs(paths, logits, classes, mode, temperature, threshold)
    probabilities = softmax(logits)
    copies = select_copies(probabilities.max(axis=1), probabilities.argmax(axis=1), classes, threshold, balance, seed, per_class)
    frame = label_rows(paths, logits, classes, mode, temperature, copies)
    _warn_empty_classes(frame[PRED], classes)
    return frame


def label_rows(paths: list[str], logits: np.ndarray, classes: list[str], mode: str, temperature: float,
               copies: np.ndarray) -> pd.DataFrame:
    """The table rows of the images with ``copies`` > 0, in input order."""
    probabilities = softmax(logits)
    predicted = probabilities.argmax(axis=1)
    targets = softmax(logits, temperature) if mode == "soft" else np.eye(len(classes), dtype=np.float64)[predicted]
    keep = np.asarray(copies) > 0
    frame = pd.DataFrame({PATH: pd.Series([str(p) for p, k in zip(paths, keep) if k], dtype=str)})
    for index, name in enumerate(classes):
        frame[target_column(name)] = targets[keep, index]
    frame[CONFIDENCE] = probabilities.max(axis=1)[keep]
    frame[PRED] = pd.Series([classes[i] for i in predicted[keep]], dtype=str)
    frame[COPIES] = np.asarray(copies, dtype=np.int64)[keep]
    return frame


def select_copies(confidence: np.ndarray, predicted: np.ndarray, classes: list[str], threshold: float = 0.0,
                  balance: bool = False, seed: int = 0, per_class: int = 0) -> np.ndarray:
    """How often each image appears in a student's epoch (0: left out): threshold, then balance.

    ``per_class`` > 0 balances to that many per class (Xie et al.'s fixed count);
    ``balance`` alone balances to the mean count. The whole table as one chunk of ``Selection``.
    """
    selection = Selection(classes, threshold, balance, seed, per_class)
    selection.add(np.asarray(confidence, dtype=np.float64), np.asarray(predicted, dtype=np.int64))
    selection.finish()
    return selection.copies(0, np.asarray(confidence, dtype=np.float64), np.asarray(predicted, dtype=np.int64))


class Selection:
    """The threshold and balancing of the module docstring, one chunk of images at a time.

    Pass 1 (``add`` for every chunk, then ``finish``) keeps per class only the
    candidates balancing can pick, as (confidence, position) pairs: with
    ``per_class`` the ``per_class`` best of each class so far, so memory is
    bounded by the setting, not by the pool; with ``balance`` alone every kept
    image (16 bytes each), since the mean count is known only at the end;
    without balancing nothing. Pass 2 (``copies`` for every chunk, in the same
    order) gives the copies of each image.

    Ties in confidence are ordered by a seeded hash of the image's position
    (``_tie_break``), which, unlike a permutation of all images, a chunk can compute.
    """

    def __init__(self, classes: list[str], threshold: float, balance: bool, seed: int, per_class: int) -> None:
        self.classes, self.threshold, self.seed, self.per_class = classes, threshold, seed, per_class
        self.balance = bool(balance or per_class)
        self.counts = np.zeros(len(classes), dtype=np.int64)  # kept images per class
        self.seen = 0
        self._candidates: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in classes]
        self._chosen_positions = self._chosen_copies = np.zeros(0, dtype=np.int64)

    @property
    def remembered(self) -> int:
        """Images pass 1 holds in memory: bounded by ``per_class`` times the classes when that is set."""
        return sum(len(positions) for pairs in self._candidates for _, positions in pairs)

    def add(self, confidence: np.ndarray, predicted: np.ndarray) -> None:
        keep = confidence >= self.threshold
        positions = self.seen + np.flatnonzero(keep)
        confidence, predicted = confidence[keep], predicted[keep]
        self.seen += len(keep)
        self.counts += np.bincount(predicted, minlength=len(self.classes))
        if not self.balance:
            return
        for name in range(len(self.classes)):
            member = predicted == name
            pairs = self._candidates[name] + [(confidence[member], positions[member])]
            self._candidates[name] = [self._best(pairs, self.per_class)] if self.per_class else pairs

    def finish(self) -> None:
        dropped = self.seen - int(self.counts.sum())
        if dropped:
            log.info("Pseudo-labels: dropped %d of %d images with confidence below %g.", dropped, self.seen, self.threshold)
        if not self.balance or not self.counts.any():
            return
        target = self.per_class or int(np.floor(self.counts[self.counts > 0].mean() + 0.5))  # the mean rounds half up
        chosen = [self._class_copies(name, target) for name in range(len(self.classes))]
        positions = np.concatenate([p for p, _ in chosen])
        order = np.argsort(positions)
        self._chosen_positions, self._chosen_copies = positions[order], np.concatenate([c for _, c in chosen])[order]
        log.info("Pseudo-labels balanced to %d per class (was %s).", target,
                 ", ".join(f"{name} {int(count)}" for name, count in zip(self.classes, self.counts)))

    def copies(self, start: int, confidence: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Copies of the images at positions ``start``... (a chunk of pass 2)."""
        if not self.balance:
            return (confidence >= self.threshold).astype(np.int64)
        copies = np.zeros(len(confidence), dtype=np.int64)
        first, last = np.searchsorted(self._chosen_positions, [start, start + len(confidence)])
        copies[self._chosen_positions[first:last] - start] = self._chosen_copies[first:last]
        return copies

    def _class_copies(self, name: int, target: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, copies) of the images of class ``name`` that balancing keeps."""
        confidence, positions = self._best(self._candidates[name], target)
        n = int(self.counts[name])
        if n == 0:
            return positions, np.zeros(0, dtype=np.int64)
        if n < target:  # every image target // n times, the most confident target % n once more
            return positions, (target // n + (np.arange(n) < target % n)).astype(np.int64)
        return positions, np.ones(len(positions), dtype=np.int64)  # the target most confident once

    def _best(self, pairs: list[tuple[np.ndarray, np.ndarray]], limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``limit`` most confident of (confidence, position) pairs, most confident first, ties by seeded hash."""
        confidence = np.concatenate([c for c, _ in pairs]) if pairs else np.zeros(0)
        positions = np.concatenate([p for _, p in pairs]) if pairs else np.zeros(0, dtype=np.int64)
        order = np.lexsort((positions, _tie_break(positions, self.seed), -confidence))[:limit]
        return confidence[order], positions[order]


def _tie_break(positions: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per position (SplitMix64), the same whichever chunk the position is in."""
    with np.errstate(over="ignore"):
        z = positions.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _check_inputs(paths, logits, classes, mode, temperature, threshold) -> np.ndarray:
    check_settings(mode, temperature, threshold)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape != (len(paths), len(classes)):
        raise ValueError(f"logits have shape {logits.shape}; expected ({len(paths)}, {len(classes)}).")
    if not np.isfinite(logits).all():
        raise ValueError("The teacher produced non-finite logits; cannot pseudo-label.")
    return logits


def check_settings(mode: str, temperature: float, threshold: float) -> None:
    if mode not in PSEUDO_MODES:
        raise ConfigError(f"pseudo_mode must be one of {', '.join(PSEUDO_MODES)}; got {mode!r}.")
    if not temperature > 0:
        raise ConfigError(f"pseudo_temperature must be positive, got {temperature}.")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"pseudo_threshold must be between 0 and 1; got {threshold}.")


def _warn_empty_classes(predicted: Iterable[str], classes: list[str]) -> None:
    present = set(predicted)
    for name in classes:
        if name not in present:
            log.warning("Pseudo-labels: no image was pseudo-labelled as class %r.", name)


def write_streamed(chunks: Callable[[], Iterable[pd.DataFrame]], classes: list[str], out: Path, mode: str = "soft",
                   temperature: float = 1.0, threshold: float = 0.0, balance: bool = False, seed: int = 0,
                   per_class: int = 0) -> int:
    """Write pseudo_labels.csv from prediction tables read a chunk at a time; return the number of rows.

    ``chunks()`` yields tables with a path and a prob_<class> column per class
    and gives the same chunks on every call. Two passes of ``Selection``, so
    memory is bounded by the chunk size and what balancing must remember (see
    ``Selection``), not by the table. Writes the same file as
    ``make_pseudo_labels`` + ``save_pseudo_labels`` on the concatenated chunks
    (nothing when no image is kept).
    """
    check_settings(mode, temperature, threshold)
    selection = Selection(classes, threshold, balance, seed, per_class)
    for chunk in chunks():
        selection.add(*_confidence_and_class(chunk, classes))
    selection.finish()
    if not selection.counts.any():
        return 0
    kept, labelled = [0], set()

    def tables() -> Iterator[pd.DataFrame]:
        start = 0
        for chunk in chunks():
            copies = selection.copies(start, *_confidence_and_class(chunk, classes))
            start += len(chunk)
            table = label_rows(chunk[PATH].tolist(), teacher_logits(chunk, classes), classes, mode, temperature, copies)
            kept[0] += len(table)
            labelled.update(table[PRED])
            yield table

    atomic.write_csv_chunks(out, tables())
    _warn_empty_classes(labelled, classes)
    return kept[0]


def _confidence_and_class(chunk: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    probabilities = softmax(teacher_logits(chunk, classes))
    return probabilities.max(axis=1), probabilities.argmax(axis=1)


def teacher_logits(predictions: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Log-probabilities: the teacher's logits up to a per-row constant, which softmax ignores."""
    probs = predictions[[prob_column(c) for c in classes]].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all():
        raise ValueError("The teacher produced non-finite probabilities; cannot pseudo-label.")
    return np.log(np.clip(probs, 1e-30, 1.0))


def pseudo_label_summary(frame: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """Counts and confidence of a pseudo-label table, flat for logs and reports.

    Keys: ``images`` (rows), ``epoch_images`` (sum of copies),
    ``mean_confidence``, ``share_confident`` (confidence above 0.9), and per
    class ``count_<c>``, ``copies_<c>`` and ``mean_confidence_<c>`` (NaN for
    a class without images).
    """
    confidence = frame[CONFIDENCE].astype(float)
    summary: dict[str, float] = {
        "images": len(frame),
        "epoch_images": int(frame[COPIES].sum()),
        "mean_confidence": float(confidence.mean()) if len(frame) else float("nan"),
        "share_confident": float((confidence > CONFIDENT).mean()) if len(frame) else float("nan"),
    }
    for name in classes:
        rows = frame[frame[PRED] == name]
        summary[f"count_{name}"] = len(rows)
        summary[f"copies_{name}"] = int(rows[COPIES].sum())
        summary[f"mean_confidence_{name}"] = float(rows[CONFIDENCE].mean()) if len(rows) else float("nan")
    return summary


def pseudo_label_columns(classes: list[str]) -> list[str]:
    return [PATH] + [target_column(name) for name in classes] + [CONFIDENCE, PRED, COPIES]


def save_pseudo_labels(frame: pd.DataFrame, path: str | Path) -> None:
    """Write the table atomically."""
    atomic.write_csv(Path(path), frame)


def load_pseudo_labels(path: str | Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read pseudo_labels.csv: (paths, targets float32 (N, C), copies int64 (N,)).

    Raises DataError naming the file if it cannot be read, lacks a column,
    or holds targets that are not probabilities summing to 1 (within 1e-4)
    or copies that are not positive integers.
    """
    frame = _read_table(Path(path))
    missing = [c for c in pseudo_label_columns(classes) if c not in frame.columns]
    if missing:
        raise DataError(f"The pseudo-label file {path} has no column {missing[0]!r}.")
    target_names = [target_column(name) for name in classes]
    targets = _numeric(frame[target_names], path, "targets").astype(np.float64)
    _check_targets(targets, frame[PATH], path)
    copies = _numeric(frame[[COPIES]], path, COPIES)[:, 0]
    if len(copies) and (np.any(copies < 1) or np.any(copies != np.round(copies))):
        raise DataError(f"The pseudo-label file {path} has a copies value that is not a positive whole number.")
    return frame[PATH].astype(str).tolist(), targets.astype(np.float32), copies.astype(np.int64)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return read_table(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"The pseudo-label file {path} cannot be read ({error}).") from error


def _numeric(columns: pd.DataFrame, path, what: str) -> np.ndarray:
    values = columns.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"The pseudo-label file {path} has {what} that are missing or not numbers.")
    return values


def _check_targets(targets: np.ndarray, paths: pd.Series, path) -> None:
    bad = (np.abs(targets.sum(axis=1) - 1.0) > SUM_TOLERANCE) | (targets < 0).any(axis=1)
    if bad.any():
        first = paths.iloc[int(np.flatnonzero(bad)[0])]
        raise DataError(
            f"The pseudo-label file {path} has targets for {first} that are not probabilities summing to 1."
        )
