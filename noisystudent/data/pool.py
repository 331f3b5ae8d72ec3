"""The unlabelled pool, from listing to cache rows: sorted and checked into RUN/pool.csv, then read in chunks.

Noisy Student's gains grow with the unlabelled pool, so a pool may hold
millions of images and no stage holds its list in memory:

* the listing (a folder searched recursively, a CSV, DATA's own unlabelled
  images) is sorted by path with an external merge sort: sorted runs of
  ``SORT_CHUNK`` records in a scratch folder, merged ``MERGE_FAN_IN`` at a
  time by ``heapq.merge``;
* the sorted records are checked (no duplicate, no labelled image, every file
  decodes) ``CHECK_CHUNK`` at a time and written to ``RUN/pool.csv``
  (columns path, patient); an image with the same pixels as a labelled or
  test image (data/duplicates.py) is left out and reported, whether or not
  it has a patient id;
* every later stage reads that file in chunks and addresses a pool image by
  its position in it (the image cache stores the pool after the labelled
  images, in this order).

Memory is bounded by these chunk sizes, not by the pool's size.

In a run folder the pool is listed into ``layout.POOL_LISTING`` while the
data is read and installed as ``layout.POOL`` only once config.json accepts
the data, so a refused or changed pool never replaces the run's record of its
pool. Runs made before pool.csv existed hold the pool in folds.csv (role
``pool``); they resume as they were, with the pool in the image cache's path index.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from noisystudent import atomic, layout
from noisystudent.data.images import PROBE_CHUNK, check_images
from noisystudent.data.manifest import LABEL, PATH, PATIENT, ROLE, ROLE_POOL
from noisystudent.errors import DataError, DiskFullError
from noisystudent.progress import NULL_PROGRESS, Progress

log = logging.getLogger(__name__)

POOL_COLUMNS = [PATH, PATIENT]
SORT_CHUNK = 1 << 18  # records sorted in memory at a time (about 50 MB of path strings)
MERGE_FAN_IN = 64  # sorted runs merged at once (each reads READ_CHUNK records ahead)
READ_CHUNK = 1 << 12  # records a sorted run or the pool file is read ahead by
CHECK_CHUNK = PROBE_CHUNK  # records checked and decoded at a time
Record = tuple[str, str]  # (absolute path, patient id or "")
SCRATCH_PREFIX = ".pool-sort-"  # the external sort's folder beside pool.csv


@dataclass(frozen=True)
class PoolFile:
    """RUN/pool.csv: one row (path, patient) per pool image, sorted by path."""

    path: Path
    count: int

    @classmethod
    def open(cls, path: str | Path) -> PoolFile:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"The pool list {path} is missing; start the run again with --resume.")
        return cls(path, sum(len(chunk) for chunk in _read_csv_chunks(path, READ_CHUNK * 16)))

    def chunks(self, rows: int) -> Iterator[pd.DataFrame]:
        """The pool's rows, ``rows`` at a time, in order."""
        yield from _read_csv_chunks(self.path, rows)

    def paths(self) -> Iterator[str]:
        for chunk in self.chunks(READ_CHUNK):
            yield from chunk[PATH].tolist()

    def patients(self) -> set[str]:
        """The distinct patient ids of the pool (not its images: a few per slide)."""
        found: set[str] = set()
        for chunk in self.chunks(READ_CHUNK * 16):
            found.update(chunk.loc[chunk[PATIENT] != "", PATIENT].unique())
        return found

    def positions(self, paths: Sequence[str]) -> np.ndarray:
        """Position of each of ``paths`` in the pool (int64), found in one pass over the file.

        Memory is bounded by ``paths``, not by the pool: they are sorted and
        merged with the sorted file. DataError names a path that is not in the pool.
        """
        paths = [str(p) for p in paths]
        order = sorted(range(len(paths)), key=paths.__getitem__)
        found = np.full(len(paths), -1, dtype=np.int64)
        wanted = iter(order)
        current = next(wanted, None)
        for position, path in enumerate(self.paths()):
            while current is not None and paths[current] <= path:
                if paths[current] == path:
                    found[current] = position
                current = next(wanted, None)
            if current is None:
                break
        if (found < 0).any():
            raise DataError(f"The image {paths[int(np.argmax(found < 0))]} is not in the pool list {self.path}.")
        return found


def write_pool(records: Iterable[Record], out: Path, labelled: set[str], skip_unreadable: bool,
               workers: int | None = None, source: str = "The pool images", progress: Progress = NULL_PROGRESS,
               checked: PoolFile | None = None, labelled_contents: Mapping[str, str] | None = None,
               ) -> tuple[PoolFile, list[tuple[str, str]]]:
    """Sort ``records``, check them and write ``out``; return the pool and the (path, reason) of skipped files.

    Refuses a path listed twice or also labelled, and an unreadable file
    unless ``skip_unreadable`` (then it is left out and listed). A file with
    the same pixels as a labelled image (``labelled_contents``: pixel digest
    -> path) is left out with a warning naming both. Files of an
    earlier listing ``checked`` (a resumed run's pool.csv) are not decoded
    again: the data fingerprint tells whether they changed. The sorted
    runs go to a scratch folder beside ``out``, removed afterwards (call it
    under the run folder's lock: a scratch folder a killed process left is removed).
    """
    out = Path(out)
    for stale in out.parent.glob(f"{SCRATCH_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    checker = _Checker(labelled, skip_unreadable, workers, progress, checked, labelled_contents or {})
    listed = _Counter(records, progress)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=out.parent) as scratch:
        progress.start("pool", "listing the unlabelled pool")
        try:
            ordered = external_sort(listed, Path(scratch))
        except OSError as error:
            if error.errno in atomic.NO_SPACE_ERRNOS:
                raise DiskFullError(f"No space left on device while sorting the unlabelled pool in {out.parent} "
                                    "(about 150 bytes per image); free some space and run the command again.") from error
            raise
        progress.start("pool", "checking the unlabelled pool", total=listed.count)
        atomic.write_csv_chunks(out, checker.tables(ordered))
        progress.stop("pool")
    checker.report()
    if not checker.count:
        out.unlink(missing_ok=True)
        raise DataError(f"{source} contains no readable images.")
    return PoolFile(out, checker.count), checker.skipped


class _Counter:
    """The records, counted as they are listed (the check's progress bar then knows its total)."""

    def __init__(self, records: Iterable[Record], progress: Progress) -> None:
        self.records, self.progress, self.count = iter(records), progress, 0

    def __iter__(self) -> Iterator[Record]:
        for record in self.records:
            self.count += 1
            if self.count % CHECK_CHUNK == 0:
                self.progress.update("pool", completed=self.count)
            yield record


class _Checker:
    """Checks sorted records CHECK_CHUNK at a time: duplicates and labelled images refused, unreadable files dropped or refused."""

    def __init__(self, labelled: set[str], skip: bool, workers: int | None, progress: Progress, known: PoolFile | None,
                 labelled_contents: Mapping[str, str]) -> None:
        self.labelled, self.skip, self.workers, self.progress = labelled, skip, workers, progress
        self.labelled_contents, self.copies, self.first_copy = labelled_contents, 0, ("", "")
        self.without_patient = 0
        self.known = known.paths() if known is not None else iter(())
        self.next_known = next(self.known, None)
        self.count, self.checked, self.skipped, self.previous = 0, 0, [], None

    def tables(self, records: Iterator[Record]) -> Iterator[pd.DataFrame]:
        yield pd.DataFrame(columns=POOL_COLUMNS)  # the header, whatever follows
        for chunk in _batched(records, CHECK_CHUNK):
            yield pd.DataFrame(self._readable(chunk), columns=POOL_COLUMNS)

    def _readable(self, chunk: list[Record]) -> list[Record]:
        paths = [path for path, _ in chunk]
        for path in paths:
            if path == self.previous:
                raise DataError(f"The unlabelled image {path} is listed more than once.")
            if path in self.labelled:
                raise DataError(f"The image {path} is both a labelled image and in the pool.")
            self.previous = path
        bad, contents = check_images([path for path in paths if not self._known(path)], self.workers)
        if bad and not self.skip:
            raise DataError(bad[0][1])
        for _, reason in bad:
            log.warning("Skipped: %s", reason)
        self.skipped += bad
        dropped = {path for path, _ in bad} | self._copies(contents)
        kept = [record for record in chunk if record[0] not in dropped]
        self.without_patient += sum(1 for _, patient in kept if not patient)
        self.count += len(kept)
        self.checked += len(chunk)
        self.progress.update("pool", completed=self.checked)
        return kept

    def _copies(self, contents: Mapping[str, str]) -> set[str]:
        """Pool paths whose pixels are those of a labelled image (the first pair is kept for the report)."""
        copies = {path for path, digest in contents.items() if digest in self.labelled_contents}
        if copies and not self.copies:
            first = min(copies)
            self.first_copy = (first, self.labelled_contents[contents[first]])
        self.copies += len(copies)
        return copies

    def report(self) -> None:
        """Say once what the listing left out, and what it could not check by patient."""
        if self.copies:
            log.warning("%d unlabelled images have the same pixels as a labelled or test image (e.g. %s and %s) and are "
                        "left out of the pool: the student would train on a validation or test image.",
                        self.copies, *self.first_copy)
        if self.without_patient:
            log.warning("%d unlabelled images have no patient id: the pool is checked against the labelled and test "
                        "images by their pixels only, not by patient.", self.without_patient)

    def _known(self, path: str) -> bool:
        """True when the earlier listing holds ``path`` (both are sorted: one pass over it)."""
        while self.next_known is not None and self.next_known < path:
            self.next_known = next(self.known, None)
        return self.next_known == path


def external_sort(records: Iterable[Record], scratch: Path, chunk: int | None = None) -> Iterator[Record]:
    """``records`` sorted, holding at most ``chunk`` (SORT_CHUNK) of them in memory.

    A listing that fits in one chunk is sorted in memory. A larger one is
    written to ``scratch`` as sorted runs, merged MERGE_FAN_IN at a time, so a
    pool of any size is sorted with bounded memory and open files.
    """
    parts = _batched(iter(records), chunk or SORT_CHUNK)
    first = next(parts, [])
    first.sort()
    second = next(parts, None)
    if second is None:
        return iter(first)
    runs = [_write_run(iter(first), scratch)]
    del first
    for part in itertools.chain([second], parts):
        part.sort()
        runs.append(_write_run(iter(part), scratch))
    while len(runs) > MERGE_FAN_IN:
        runs = [_write_run(heapq.merge(*map(_read_run, group)), scratch) for group in _batched(iter(runs), MERGE_FAN_IN)]
    return heapq.merge(*map(_read_run, runs))


def _write_run(records: Iterator[Record], scratch: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix="run-", suffix=".csv", dir=scratch)
    with open(handle, "w", newline="", encoding="utf-8") as file:
        for part in _batched(records, READ_CHUNK * 16):
            pd.DataFrame(part, columns=POOL_COLUMNS).to_csv(file, index=False, header=file.tell() == 0)
    return Path(name)


def _read_run(path: Path) -> Iterator[Record]:
    for chunk in _read_csv_chunks(path, READ_CHUNK):
        yield from zip(chunk[PATH].tolist(), chunk[PATIENT].tolist())


def _read_csv_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """Text columns stay text: a patient '011' stays '011', an empty one stays ''."""
    try:
        with pd.read_csv(path, chunksize=rows, dtype=str, keep_default_na=False) as reader:
            yield from reader
    except pd.errors.EmptyDataError:
        return


def _batched(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(itertools.islice(items, size)):
        yield batch


# --- the pool of a run folder ---


def list_into_run(records: Iterable[Record], run: Path, labelled: set[str], skip_unreadable: bool, source: str,
                  progress: Progress = NULL_PROGRESS, labelled_contents: Mapping[str, str] | None = None,
                  ) -> tuple[PoolFile, list[tuple[str, str]]]:
    """``write_pool`` into the run's listing (``install`` moves it into place); files RUN/pool.csv holds are not decoded again."""
    return write_pool(records, Path(run) / layout.POOL_LISTING, labelled, skip_unreadable, source=source,
                      progress=progress, checked=saved(run), labelled_contents=labelled_contents)


def discard_listing(run: Path) -> None:
    """Remove this session's listing: a refused pool leaves the run with the pool it had."""
    (Path(run) / layout.POOL_LISTING).unlink(missing_ok=True)


def install(run: Path, listed: PoolFile | None, folds: pd.DataFrame,
            before: Callable[[Path], None] | None = None) -> PoolFile | None:
    """Move this session's listing into place as RUN/pool.csv (call once config.json has accepted it).

    A run that has pool.csv keeps it (the fingerprint matched), and a run whose
    folds.csv holds the pool keeps it there: the listing only served the fingerprint.
    ``before(listing)`` runs just before a listing becomes pool.csv (the run records its digest).
    """
    if listed is None:
        return None
    if in_fold_table(folds):
        listed.path.unlink(missing_ok=True)
        return None
    target = Path(run) / layout.POOL
    if target.exists():  # the fingerprint matched: the same list, which other processes may be reading
        listed.path.unlink(missing_ok=True)
    else:
        if before is not None:
            before(listed.path)
        os.replace(listed.path, target)
    return PoolFile(target, listed.count)


def saved(run: Path) -> PoolFile | None:
    """RUN/pool.csv as an earlier session wrote it (its files were checked then), or None."""
    path = Path(run) / layout.POOL
    return PoolFile.open(path) if path.exists() else None


def open_saved(run: Path, folds: pd.DataFrame) -> PoolFile | None:
    """RUN/pool.csv as rank 0 installed it (torchrun's other ranks), or None."""
    return None if in_fold_table(folds) else saved(run)


def in_fold_table(folds: pd.DataFrame) -> bool:
    """True for a run made before pool.csv: its pool rows are in folds.csv."""
    return bool((folds[ROLE] == ROLE_POOL).any())


# --- the pool's rows of the image cache ---


class CacheIndex(Protocol):
    """What the pool needs of the image cache (data/cache.py's ImageCache, which reads PoolFile)."""

    pool_start: int  # row of the pool's first image: the pool follows the labelled images, in pool.csv's order

    def index_of(self, paths: Iterable[str], missing_ok: bool = False) -> np.ndarray: ...


def pool_size(folds: pd.DataFrame, pool: PoolFile | None) -> int:
    return pool.count if pool is not None else int((folds[ROLE] == ROLE_POOL).sum())


def pool_chunks(folds: pd.DataFrame, pool: PoolFile | None, cache: CacheIndex, rows: int) -> Iterator[tuple[pd.DataFrame, torch.Tensor]]:
    """(path, label, patient) tables of ``rows`` pool images and their cache rows, in the pool's order."""
    if pool is None:  # a run made before pool.csv
        legacy = folds[folds[ROLE] == ROLE_POOL][[PATH, LABEL, PATIENT]]
        for start in range(0, len(legacy), rows):
            chunk = legacy.iloc[start : start + rows].reset_index(drop=True)
            yield chunk, torch.as_tensor(cache.index_of(chunk[PATH].tolist()), dtype=torch.long)
        return
    start = cache.pool_start
    for chunk in pool.chunks(rows):
        table = pd.DataFrame({PATH: chunk[PATH], LABEL: "", PATIENT: chunk[PATIENT]})
        yield table, torch.arange(start, start + len(table), dtype=torch.long)
        start += len(table)


def cache_rows(cache: CacheIndex, pool: PoolFile | None, paths: list[str]) -> torch.Tensor:
    """Cache rows of ``paths``: labelled images through the cache's index, pool images by their position in pool.csv."""
    if pool is None:
        return torch.as_tensor(cache.index_of(paths), dtype=torch.long)
    found = cache.index_of(paths, missing_ok=True)
    unknown = np.flatnonzero(found < 0)
    if len(unknown):
        found[unknown] = cache.pool_start + pool.positions([paths[i] for i in unknown])
    return torch.as_tensor(found, dtype=torch.long)
