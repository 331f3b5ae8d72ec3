"""A run's unlabelled pool: RUN/pool.csv, read in chunks, or the pool rows of folds.csv in older runs.

The pool is listed into ``layout.POOL_LISTING`` while the data is read and
installed as ``layout.POOL`` only once config.json accepts the data, so a
refused or changed pool never replaces the run's record of its pool. Runs
made before pool.csv existed hold the pool in folds.csv (role ``pool``);
they resume as they were, with the pool in the image cache's path index.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisystudent import layout
from noisystudent.data import manifest
from noisystudent.data.cache import ImageCache, fingerprint_files, fingerprint_sorted
from noisystudent.data.pool import PoolFile


def listing_path(run: Path) -> Path:
    return Path(run) / layout.POOL_LISTING


def in_fold_table(folds: pd.DataFrame) -> bool:
    """True for a run made before pool.csv: its pool rows are in folds.csv."""
    return bool((folds[manifest.ROLE] == manifest.ROLE_POOL).any())


def data_fingerprint(images: pd.DataFrame, pool: PoolFile | None) -> str:
    """The fingerprint of every image of the run, labelled and pool, as config.json keeps it.

    The pool's sorted file is merged with the sorted labelled paths, so the
    value equals that of the whole list sorted in memory (runs made before
    pool.csv resume with the fingerprint they saved).
    """
    paths = images[manifest.PATH].tolist()
    if pool is None:
        return fingerprint_files(paths)
    return fingerprint_sorted(heapq.merge(sorted(paths), pool.paths()))


def install(run: Path, listed: PoolFile | None, folds: pd.DataFrame) -> PoolFile | None:
    """Move this session's listing into place as RUN/pool.csv (call once config.json has accepted it).

    A run that has pool.csv keeps it (the fingerprint matched), and a run whose
    folds.csv holds the pool keeps it there: the listing only served the fingerprint.
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
        os.replace(listed.path, target)
    return PoolFile(target, listed.count)


def saved(run: Path) -> PoolFile | None:
    """RUN/pool.csv as an earlier session wrote it (its files were checked then), or None."""
    path = Path(run) / layout.POOL
    return PoolFile.open(path) if path.exists() else None


def open_saved(run: Path, folds: pd.DataFrame) -> PoolFile | None:
    """RUN/pool.csv as rank 0 installed it (torchrun's other ranks), or None."""
    return None if in_fold_table(folds) else saved(run)


def pool_size(folds: pd.DataFrame, pool: PoolFile | None) -> int:
    return pool.count if pool is not None else int((folds[manifest.ROLE] == manifest.ROLE_POOL).sum())


def pool_chunks(folds: pd.DataFrame, pool: PoolFile | None, cache: ImageCache, rows: int) -> Iterator[tuple[pd.DataFrame, torch.Tensor]]:
    """(path, label, patient) tables of ``rows`` pool images and their cache rows, in the pool's order."""
    if pool is None:  # a run made before pool.csv
        legacy = folds[folds[manifest.ROLE] == manifest.ROLE_POOL][[manifest.PATH, manifest.LABEL, manifest.PATIENT]]
        for start in range(0, len(legacy), rows):
            chunk = legacy.iloc[start : start + rows].reset_index(drop=True)
            yield chunk, torch.as_tensor(cache.index_of(chunk[manifest.PATH].tolist()), dtype=torch.long)
        return
    start = cache.pool_start
    for chunk in pool.chunks(rows):
        table = pd.DataFrame({manifest.PATH: chunk[manifest.PATH], manifest.LABEL: "", manifest.PATIENT: chunk[manifest.PATIENT]})
        yield table, torch.arange(start, start + len(table), dtype=torch.long)
        start += len(table)


def cache_rows(cache: ImageCache, pool: PoolFile | None, paths: list[str]) -> torch.Tensor:
    """Cache rows of ``paths``: labelled images through the cache's index, pool images by their position in pool.csv."""
    if pool is None:
        return torch.as_tensor(cache.index_of(paths), dtype=torch.long)
    found = cache.index_of(paths, missing_ok=True)
    unknown = np.flatnonzero(found < 0)
    if len(unknown):
        found[unknown] = cache.pool_start + pool.positions([paths[i] for i in unknown])
    return torch.as_tensor(found, dtype=torch.long)
