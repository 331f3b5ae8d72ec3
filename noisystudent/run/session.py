"""One process's session on a run folder: its log, the state every process shares, fold claims, the results.

Several processes may work on one run folder (``--only-folds``, ``--join``,
one per GPU or Slurm task; run/folder.py and run/claims.py say how), and under
torchrun one job is several ranks. The pipeline leaves all of that to this
module:

- ``open_run`` joins torchrun's process group, creates the folder, appends to
  RUN/run.log, and prepares under the folder's lock what every process shares
  (config.json, pool.csv, folds.csv, the image cache) as a ``RunContext``;
- ``claim_fold`` / ``release_fold`` bracket the training of one fold;
- ``finish`` writes results/metrics.csv once every fold is finished.

Under torchrun rank 0 alone prepares, claims and writes; the other ranks wait
at a barrier and read what it wrote.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from noisystudent import atomic, layout
from noisystudent.config.provenance import GIVEN, origin
from noisystudent.config.run_config import RunConfig
from noisystudent.data import folds as folds_module
from noisystudent.data import manifest
from noisystudent.data import pool as pool_files
from noisystudent.data.cache import ImageCache, build_cache
from noisystudent.data.pool import PoolFile, cache_rows
from noisystudent.data.preprocess import PreprocessSpec
from noisystudent.data.run_images import RunImages, load_run_images
from noisystudent.device import resolve_device
from noisystudent.environment import describe_machine, machine_line
from noisystudent.errors import UserError
from noisystudent.models.model_file import verify_model_file
from noisystudent.progress import NULL_PROGRESS, Progress
from noisystudent.run import claims, digests, evidence, results
from noisystudent.run.folder import (check_run_folder, lock_run_folder, remove_shared_temps, run_identity, saved_config,
                                     write_config)
from noisystudent.run.tables import read_table
from noisystudent.training import distributed

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What every stage of a run reads: its folder, settings, classes, fold table (folds.csv), image cache and pool."""

    run: Path
    config: RunConfig
    classes: list[str]
    fold_table: pd.DataFrame  # folds.csv; config.folds is how many folds it has
    cache: ImageCache
    device: torch.device
    progress: Progress
    pool: PoolFile | None = None  # RUN/pool.csv; None without a pool or in runs with the pool in folds.csv
    identity: dict | None = None  # run id and settings digest (folder.run_identity); prepare_run sets it

    def model_identity(self, fold: int, round_: int) -> dict | None:
        """What the model files of ``fold``, ``round_`` must record (model_file.model_identity); None: not checked."""
        return None if self.identity is None else {**self.identity, "fold": fold, "round": round_}

    def load_batch(self, rows: torch.Tensor) -> torch.Tensor:
        return self.cache.batch(rows, self.device)

    def rows(self, paths) -> torch.Tensor:
        return cache_rows(self.cache, self.pool, [str(p) for p in paths])


@contextmanager
def open_run(config: RunConfig, run: Path, resume: bool, join: bool, progress: Progress) -> Iterator[RunContext]:
    """The run in ``run``, prepared for training: checked, created, logged to, its shared state made once.

    Under torchrun this process joins the group for the session and leaves it afterwards.
    """
    check_run_folder(run, config, resume or (join and saved_config(run) is not None))
    started_group = distributed.init_from_env(resolve_device(config.device))  # under torchrun: one rank per device
    try:
        with new_run_folder(run), atomic.confined_to(run), run_log(run):
            yield prepare_run(config, run, resume, join, progress)
    finally:
        if started_group:
            distributed.shutdown()


@contextmanager
def new_run_folder(run: Path) -> Iterator[None]:
    """Create ``run``; if this session created it and the data is refused before config.json, remove it again.

    Before config.json the folder holds only what this session wrote (run.log, .lock,
    the generated demo data), so a refused command leaves no trace.
    """
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except Exception:  # a refusal, or an OSError or MemoryError the CLI turns into one sentence
        if created and not (run / layout.CONFIG).exists():
            shutil.rmtree(run, ignore_errors=True)
        raise


@contextmanager
def run_log(run: Path) -> Iterator[None]:
    """Append this session's log records (from the whole package) to RUN/run.log, the first saying where it runs."""
    handler = logging.FileHandler(run / layout.LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("noisystudent")
    package_logger.addHandler(handler)
    previous = package_logger.level
    package_logger.setLevel(min(previous or logging.INFO, logging.INFO))
    try:
        logger.info("Session machine: %s", machine_line(describe_machine()))  # a resumed run's log: where each session ran
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)
        handler.close()


def prepare_run(config: RunConfig, run: Path, resume: bool, join: bool, progress: Progress) -> RunContext:
    """What every process shares, made once under the run folder's lock: config.json, folds.csv, the cache.

    Under torchrun rank 0 prepares; the other ranks then read what it wrote.
    """
    device = distributed.local_device(resolve_device(config.device))
    if not distributed.is_main():
        distributed.barrier()
        data = load_run_images(config, run)  # the pool is not listed again: rank 0 wrote pool.csv
        fold_table = folds_module.load_folds(run / layout.FOLDS)
        pool = pool_files.open_saved(run, fold_table)
        return RunContext(run, config, data.classes, fold_table, _build_cache(run, fold_table, config, progress, pool),
                          device, progress, pool, run_identity(run, 0, 0))
    with lock_run_folder(run):
        # again under the lock: another process may have begun the run since the check above
        check_run_folder(run, config, resume or (join and saved_config(run) is not None), before_writing=False)
        remove_shared_temps(run)
        digests.verify(run)  # before anything reads folds.csv or pool.csv
        logger.info("noisystudent kfold into %s (%s)", run, "join" if join else "resume" if resume else "new run")
        data, fold_table, pool = _accept_data(config, run, progress)
        if not (run / layout.FOLDS).exists():
            content = folds_module.folds_bytes(fold_table)
            digests.record(run, layout.FOLDS, digests.bytes_sha256(content))
            folds_module.save_folds_bytes(content, run / layout.FOLDS)
        cache = _build_cache(run, fold_table, config, progress, pool)
    distributed.barrier()  # the other ranks may read now
    return RunContext(run, config, data.classes, fold_table, cache, device, progress, pool, run_identity(run, 0, 0))


def _accept_data(config: RunConfig, run: Path, progress: Progress) -> tuple[RunImages, pd.DataFrame, PoolFile | None]:
    """The data, its folds and its pool, once config.json has accepted them (call under the lock)."""
    try:
        data = load_run_images(config, run, progress, list_pool=True)
        fold_table = _load_or_assign_folds(run, data, config, progress)  # before config.json: may refuse the data
        evidence.announce_test_set(fold_table, config, evidence.data_has_test(data.manifest))
        write_config(run, config, data.fingerprint())
        return data, fold_table, pool_files.install(run, data.pool, fold_table, lambda listing: _record_pool(run, listing))
    finally:
        pool_files.discard_listing(run)  # refused: the run keeps the pool it had


def _record_pool(run: Path, listing: Path) -> None:
    digests.record(run, layout.POOL, digests.file_sha256(listing))  # before the listing becomes pool.csv


def _load_or_assign_folds(run: Path, data: RunImages, config: RunConfig, progress: Progress = NULL_PROGRESS) -> pd.DataFrame:
    """The saved folds.csv, or new folds (saved by the caller once config.json is written).

    Assigning takes minutes with 10,000 classes (StratifiedGroupKFold weighs
    every group against every class), so it shows as a task of its own.
    """
    path = run / layout.FOLDS
    if path.exists():
        return folds_module.load_folds(path)
    ratio_given = origin(config.to_dict(), "split_ratio") == GIVEN  # warn about the user's ratio, not the preset's
    pool_patients = data.pool.patients() if data.pool is not None else set()
    description = f"assigning {len(data.manifest)} images of {len(data.classes)} classes to {config.folds} folds"
    logger.info("%s%s.", description[0].upper(), description[1:])
    progress.start("folds", description)
    folds = folds_module.assign_folds(data.manifest, config.folds, config.split_ratio, config.test_fraction, config.seed,
                                      ratio_given, pool_patients, data.twins)
    progress.stop("folds")
    return folds


def _build_cache(run: Path, fold_table: pd.DataFrame, config: RunConfig, progress: Progress, pool: PoolFile | None) -> ImageCache:
    """The fold table's images (sorted by path), then the pool's in pool.csv's order."""
    paths = sorted(fold_table[manifest.PATH].unique())
    cache_dir = Path(config.cache_dir) if config.cache_dir else run / layout.CACHE
    progress.start("cache", "decoding images", total=len(paths) + (pool.count if pool is not None else 0))
    cache = build_cache(
        paths, PreprocessSpec.from_config(config), cache_dir, workers=config.workers,
        progress=lambda done, total: progress.update("cache", completed=done), pool=pool,
    )
    progress.stop("cache")
    return cache


def claim_fold(run_ctx: RunContext, fold: int) -> bool:
    """True when this process (under torchrun: the job, through rank 0) now holds ``fold``'s claim.

    False when the fold is finished, or another live process trains it (said in the log).
    """
    run = run_ctx.run
    if distributed.broadcast(claims.fold_finished(run, fold, run_ctx.config.rounds)):  # one answer for all ranks
        verify_fold_models(run_ctx, fold)
        return False
    holder = None
    if distributed.is_main():
        with lock_run_folder(run):
            holder = claims.claim_fold(run, fold)
    holder = distributed.broadcast(holder)
    if holder is not None:
        logger.info("Moving on: %s.", claims.holder_sentence(fold, holder))
    return holder is None


def verify_fold_models(run_ctx: RunContext, fold: int) -> None:
    """Load every model.pt of a finished fold and check where it belongs: a fold counts as finished
    by its last predictions.csv, which says nothing of a model.pt truncated or replaced since."""
    for round_ in range(run_ctx.config.rounds + 1 if run_ctx.identity is not None else 0):
        verify_model_file(layout.round_dir(run_ctx.run, fold, round_) / layout.MODEL, run_ctx.model_identity(fold, round_))


def release_fold(run_ctx: RunContext, fold: int) -> None:
    """Give up the claim of ``fold`` (also after an error or Ctrl-C), so another process may take it."""
    if distributed.is_main():
        claims.release_fold(run_ctx.run, fold)


def finish(run_ctx: RunContext, recompute: bool) -> pd.DataFrame | None:
    """Results by rank 0 under the lock; the other ranks read them afterwards."""
    if distributed.is_main():
        with lock_run_folder(run_ctx.run):
            table = _finish_run(run_ctx, recompute)
    distributed.barrier()
    if distributed.is_main():
        return table
    metrics_path = layout.results_dir(run_ctx.run) / layout.METRICS
    return read_table(metrics_path) if metrics_path.exists() else None


def _finish_run(run_ctx: RunContext, recompute: bool) -> pd.DataFrame | None:
    """Write the results once every fold is finished (call under the lock); None while some are not.

    The process that finishes the last fold finds results/metrics.csv missing
    and writes it; others read it. A plain ``--resume`` recomputes it.
    """
    config, run = run_ctx.config, run_ctx.run
    unfinished = [fold for fold in range(config.folds) if not claims.fold_finished(run, fold, config.rounds)]
    if unfinished:
        held = [claims.holder_sentence(f, c) for f in unfinished if (c := claims.read_claim(run, f)) is not None]
        logger.warning("Folds %s are not finished%s; the process that finishes the last one writes the results, "
                       "or run noisystudent kfold --out %s --resume then.", ", ".join(map(str, unfinished)),
                       f" ({'; '.join(held)})" if held else "", run)
        return None
    for fold in range(config.folds):
        claims.clear_stale_claim(run, fold)
    metrics_path = layout.results_dir(run) / layout.METRICS
    if recompute or not metrics_path.exists():
        table = results.write_results(run, config, run_ctx.classes)
        logger.info("Wrote the results to %s.", metrics_path)
        return table
    return read_table(metrics_path)
