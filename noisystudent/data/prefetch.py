"""Decode images in background threads, one batch at a time, a bounded number of batches ahead.

``decoded_batches`` yields batches of preprocessed uint8 pixels in input order
while a thread pool decodes the next ``ahead`` batches: decoding overlaps with
whatever the caller does with the current batch (PIL, like ONNX Runtime and
PyTorch, releases the GIL while it works). At most ``ahead + 1`` batches are
held at any time, so memory is bounded by the batch size, not by the number
of images.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from noisystudent.data.parallel import Threads
from noisystudent.data.preprocess import PreprocessSpec, load_preprocessed
from noisystudent.errors import DataError

AHEAD = 2  # batches decoded ahead of the one being predicted


@dataclass
class DecodedBatch:
    start: int  # index of the batch's first image in the input list
    rows: list[int]  # input indices of the readable images, in order
    pixels: np.ndarray  # uint8 (len(rows), 3, S, S)
    unreadable: list[tuple[int, str]] = field(default_factory=list)  # (input index, why)

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.unreadable)


def decode_one(path: str, spec: PreprocessSpec) -> np.ndarray | str:
    """The preprocessed uint8 (3, S, S) image, or the sentence saying why it cannot be read."""
    try:
        return load_preprocessed(path, spec)
    except DataError as error:
        return str(error)


def decoded_batches(
    paths: list[str], spec: PreprocessSpec, batch_size: int, workers: int | None = None, ahead: int = AHEAD,
) -> Iterator[DecodedBatch]:
    """The images of ``paths`` decoded and preprocessed, ``batch_size`` at a time, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}.")
    starts = iter(range(0, len(paths), batch_size))
    with Threads(max_workers=workers or os.cpu_count() or 1, thread_name_prefix="decode") as pool:
        pending: deque[tuple[int, list[Future]]] = deque()
        try:
            while True:
                while len(pending) <= ahead and (start := next(starts, None)) is not None:
                    pending.append((start, [pool.submit(decode_one, p, spec) for p in paths[start : start + batch_size]]))
                if not pending:
                    return
                start, futures = pending.popleft()
                yield _collect(start, [f.result() for f in futures], spec.image_size)
        finally:
            for _, futures in pending:  # the caller stopped early: do not decode the rest
                for future in futures:
                    future.cancel()


def _collect(start: int, decoded: list, size: int) -> DecodedBatch:
    rows, arrays, unreadable = [], [], []
    for offset, item in enumerate(decoded):
        if isinstance(item, str):
            unreadable.append((start + offset, item))
        else:
            rows.append(start + offset)
            arrays.append(item)
    pixels = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)
    return DecodedBatch(start, rows, pixels, unreadable)
