"""The order of rows in a training epoch, its batches, and class weights.

The training images live in one uint8 cache; an epoch is a tensor of row
indices into it, drawn here from a ``torch.Generator`` so that the same
generator state gives the same epoch. Class balancing is done either here
(``sampler``: oversample, undersample) or in the loss (``class_weights``).

``copies`` (from pseudo_labels.csv; 1 for labelled rows) says how many times a
row appears in an epoch. The balancing samplers work on that expanded list:
a row with 3 copies counts as 3 images of its class.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from noisystudent.config.run_config import CLASS_WEIGHTS, SAMPLERS
from noisystudent.errors import ConfigError

log = logging.getLogger(__name__)


def epoch_indices(
    labels: np.ndarray,
    copies: np.ndarray | None,
    mode: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """Row indices (LongTensor) of one epoch, in training order.

    ``labels`` is each row's class index (the argmax of soft targets).

    * ``none``: every row ``copies`` times (once if ``copies`` is None), shuffled.
    * ``oversample``: every class is brought up to the largest class's count.
      A class of n images short of M repeats each image ``M // n`` times and
      adds ``M % n`` of them drawn at random without replacement, so its images
      appear as evenly as possible (a class half the size of the largest is
      exactly doubled) and the draw changes every epoch.
    * ``undersample``: every class is cut to the smallest class's count by a
      random draw without replacement, new every epoch.
    """
    if mode not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}; got {mode!r}.")
    expanded = _expand(np.asarray(labels), copies)
    if mode != "none" and len(expanded):
        expanded = _balance(expanded, np.asarray(labels)[expanded.numpy()], mode, generator)
    return expanded[torch.randperm(len(expanded), generator=generator)]


def _expand(labels: np.ndarray, copies: np.ndarray | None) -> torch.Tensor:
    rows = torch.arange(len(labels), dtype=torch.long)
    if copies is None:
        return rows
    copies = torch.as_tensor(np.asarray(copies), dtype=torch.long)
    if copies.shape != rows.shape or bool((copies < 0).any()):
        raise ValueError("copies must be one non-negative count per row.")
    return rows.repeat_interleave(copies)


def _balance(rows: torch.Tensor, row_labels: np.ndarray, mode: str, generator: torch.Generator) -> torch.Tensor:
    groups = [rows[torch.as_tensor(row_labels == c)] for c in np.unique(row_labels)]
    sizes = [len(g) for g in groups]
    goal = max(sizes) if mode == "oversample" else min(sizes)
    return torch.cat([_resize(group, goal, generator) for group in groups])


def _resize(group: torch.Tensor, goal: int, generator: torch.Generator) -> torch.Tensor:
    """``goal`` entries of ``group``: whole repeats plus a random remainder."""
    repeats, remainder = divmod(goal, len(group))
    chosen = torch.randperm(len(group), generator=generator)[:remainder]
    return torch.cat([group.repeat(repeats), group[chosen]])


def batches(
    indices: torch.Tensor,
    batch_size: int,
    drop_last: bool = False,
    drop_last_if_single: bool = False,
) -> list[torch.Tensor]:
    """Split an epoch's indices into consecutive batches of ``batch_size``.

    ``drop_last`` drops an incomplete last batch. ``drop_last_if_single``
    (for training) drops the last batch only when it holds exactly one image
    and ``batch_size`` > 1: BatchNorm in train mode cannot normalise a batch
    of one. That image misses this epoch only; the next epoch's order
    differs. Never use it for evaluation, where every image must be seen.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    parts = [part for part in torch.split(indices, batch_size) if len(part)]
    if parts and len(parts[-1]) < batch_size:
        if drop_last or (drop_last_if_single and batch_size > 1 and len(parts[-1]) == 1):
            parts.pop()
    return parts


def class_weights(labels: np.ndarray, num_classes: int, spec: str) -> torch.Tensor | None:
    """Loss weight per class (float32, length ``num_classes``), or None.

    * ``none``: None (every class weighs 1).
    * ``balanced``: sklearn's ``n / (C * count_c)``, so weights average to 1
      over the samples; a class absent from ``labels`` gets weight 1.
    * ``"1.0,2.5"``: the given weights, one per class, non-negative.
    """
    spec = spec.strip()
    if spec == "none":
        return None
    if spec == "balanced":
        return _balanced_weights(np.asarray(labels), num_classes)
    return parse_class_weights(spec, num_classes)


def _balanced_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    present = np.unique(labels)
    weights = np.ones(num_classes, dtype=np.float64)
    if len(present):
        weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    absent = sorted(set(range(num_classes)) - set(present.tolist()))
    if absent:
        log.warning("Class weights: classes %s have no training images; they get weight 1.", absent)
    return torch.tensor(weights, dtype=torch.float32)


def parse_class_weights(spec: str, num_classes: int) -> torch.Tensor:
    """Parse an explicit ``"w1,w2,..."`` list; ConfigError if it cannot be used."""
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ConfigError(
            f"class_weights must be {', '.join(CLASS_WEIGHTS)} or comma-separated numbers; got {spec!r}."
        ) from None
    if len(values) != num_classes:
        raise ConfigError(f"class_weights lists {len(values)} weights but there are {num_classes} classes.")
    if any(not math.isfinite(v) or v < 0 for v in values) or not any(values):
        raise ConfigError(f"class_weights must be non-negative numbers, not all zero; got {spec!r}.")
    return torch.tensor(values, dtype=torch.float32)
