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
  for a saturated teacher) are ordered by a permutation drawn from ``seed``,
  not by file order. Xie et al. use a fixed count per class instead; a mean
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

    Numbers only (16 bytes per image), so that a pool of millions is selected
    without holding its table. ``per_class`` > 0 balances to that many per class
    (Xie et al.'s fixed count); ``balance`` alone balances to the mean count.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.int64)
    keep = confidence >= threshold
    dropped = int((~keep).sum())
    if dropped:
        log.info("Pseudo-labels: dropped %d of %d images with confidence below %g.", dropped, len(keep), threshold)
    copies = keep.astype(np.int64)
    if (balance or per_class) and keep.any():
        copies[keep] = _balanced_copies(confidence[keep], predicted[keep], classes, seed, per_class)
    return copies


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


def _balanced_copies(confidence: np.ndarray, predicted: np.ndarray, classes: list[str], seed: int, per_class: int) -> np.ndarray:
    counts = np.bincount(predicted, minlength=len(classes))
    target = per_class or int(np.floor(counts[counts > 0].mean() + 0.5))  # the mean rounds half up
    tie_break = np.random.default_rng(seed).permutation(len(confidence))
    # Most confident first; equal confidences in the seeded random order.
    order = np.lexsort((tie_break, -confidence))
    rank = np.empty(len(order), dtype=np.int64)
    for name in range(len(classes)):  # rank of each image within its class, in that order
        members = order[predicted[order] == name]
        rank[members] = np.arange(len(members))
    n = np.maximum(counts[predicted], 1)
    # Classes below target: target // n copies each, one more for the top target % n; above: the top target once.
    copies = np.where(counts[predicted] < target, target // n + (rank < target % n), (rank < target).astype(np.int64))
    log.info("Pseudo-labels balanced to %d per class (was %s).", target,
             ", ".join(f"{name} {int(count)}" for name, count in zip(classes, counts)))
    return copies.astype(np.int64)


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
    and gives the same chunks on every call. Two passes: the first keeps only
    each image's confidence and class (``select_copies``), the second writes
    the kept rows chunk by chunk, so memory is bounded by the chunk size and 16
    bytes per image, not by the table. Writes the same file as
    ``make_pseudo_labels`` + ``save_pseudo_labels`` on the concatenated chunks
    (nothing when no image is kept).
    """
    check_settings(mode, temperature, threshold)
    confidence, predicted = [], []
    for chunk in chunks():
        probabilities = softmax(teacher_logits(chunk, classes))
        confidence.append(probabilities.max(axis=1))
        predicted.append(probabilities.argmax(axis=1))
    predicted_all = np.concatenate(predicted) if predicted else np.zeros(0, np.int64)
    copies = select_copies(np.concatenate(confidence) if confidence else np.zeros(0), predicted_all, classes,
                           threshold, balance, seed, per_class)
    kept = int((copies > 0).sum())
    if kept:
        atomic.write_csv_chunks(out, _kept_rows(chunks, classes, mode, temperature, copies))
        _warn_empty_classes((classes[i] for i in np.unique(predicted_all[copies > 0])), classes)
    return kept


def _kept_rows(chunks, classes, mode, temperature, copies) -> Iterator[pd.DataFrame]:
    start = 0
    for chunk in chunks():
        part = copies[start : start + len(chunk)]
        start += len(chunk)
        yield label_rows(chunk[PATH].tolist(), teacher_logits(chunk, classes), classes, mode, temperature, part)


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
