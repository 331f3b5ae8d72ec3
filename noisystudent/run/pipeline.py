"""``noisystudent kfold``: the k-fold Noisy Student orchestrator.

For each fold: train the teacher (round 0) on the labelled part, let it label
the masked part and the unlabelled pool, train a noised student on labelled +
pseudo-labelled images, and repeat with the student as the next teacher.
Every stage writes its artifact into the run folder and is skipped on resume
once that artifact exists:

    folds.csv -> cache -> per fold and round: model.pt -> predictions.csv -> pseudo_labels.csv
              -> results/metrics.csv
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisystudent import atomic, layout, models
from noisystudent.config.provenance import GIVEN, origin
from noisystudent.config.run_config import RunConfig
from noisystudent.data import folds as folds_module
from noisystudent.data import manifest
from noisystudent.data.cache import ImageCache, build_cache
from noisystudent.data.pool import PoolFile
from noisystudent.data.preprocess import PreprocessSpec
from noisystudent.data.run_images import RunImages, load_run_images
from noisystudent.device import resolve_device
from noisystudent.errors import ConfigError, UserError
from noisystudent.inference import backends
from noisystudent.inference.model_set import ModelSet
from noisystudent.inference.tables import prediction_table
from noisystudent.models.model_file import load_model_file
from noisystudent.progress import NULL_PROGRESS, Progress
from noisystudent.run import claims, evidence, pool_source, pseudo_labels, results
from noisystudent.run.collapse import warn_if_single_class
from noisystudent.run.folder import check_run_folder, lock_run_folder, remove_shared_temps, saved_config, write_config
from noisystudent.run.preflight import check_before_writing
from noisystudent.run.tables import TABLE_CHUNK, read_table, read_table_chunks
from noisystudent.training import distributed
from noisystudent.training.engine import TrainSet
from noisystudent.training.seeding import derive_seed
from noisystudent.training.trainer import ModelJob, train_model

logger = logging.getLogger(__name__)

# predictions.csv split names for each fold role
SPLIT_OF_ROLE = {manifest.ROLE_VALIDATION: "validation", manifest.ROLE_TEST: "test", manifest.ROLE_UNLABELLED: "unlabelled", manifest.ROLE_POOL: "pool"}
PSEUDO_SPLITS = ("unlabelled", "pool")
POOL_CHUNK = TABLE_CHUNK  # pool rows predicted and written at a time (about 10 MB of table, whatever the pool's size)


@dataclass
class RunContext:
    run: Path
    config: RunConfig
    classes: list[str]
    folds: pd.DataFrame
    cache: ImageCache
    device: torch.device
    progress: Progress
    pool: PoolFile | None = None  # RUN/pool.csv; None without a pool or in runs with the pool in folds.csv

    def load_batch(self, rows: torch.Tensor) -> torch.Tensor:
        return self.cache.batch(rows, self.device)

    def rows(self, paths) -> torch.Tensor:
        return pool_source.cache_rows(self.cache, self.pool, [str(p) for p in paths])


def run_kfold(config: RunConfig, run: Path, resume: bool = False, progress: Progress = NULL_PROGRESS,
              only_folds: str | None = None, join: bool = False) -> pd.DataFrame | None:
    """Run (or resume, or join) the protocol in ``run``; return the results table, or None while folds remain.

    ``only_folds`` ('0,2') trains just those folds; it implies ``join``: start
    the run if ``run`` holds none, else continue it like ``--resume``, so that
    several processes can share one run folder (run/claims.py).
    """
    run = Path(run)
    wanted = claims.select_folds(only_folds, config.folds)
    join = join or only_folds is not None
    check_before_writing(config, run)  # a refused setting leaves no trace
    check_run_folder(run, config, resume or (join and saved_config(run) is not None))
    started_group = distributed.init_from_env(resolve_device(config.device))  # under torchrun: one rank per device
    try:
        with new_run_folder(run), run_log(run):
            ctx = _prepare_run(config, run, resume, join, progress)
            _train_folds(ctx, wanted)
            return _finish(ctx, recompute=resume and not join)
    finally:
        if started_group:
            distributed.shutdown()


def _prepare_run(config: RunConfig, run: Path, resume: bool, join: bool, progress: Progress) -> RunContext:
    """What every process shares, made once under the run folder's lock: config.json, folds.csv, the cache.

    Under torchrun rank 0 prepares; the other ranks then read what it wrote.
    """
    device = distributed.local_device(resolve_device(config.device))
    if not distributed.is_main():
        distributed.barrier()
        data = load_run_images(config, run)  # the pool is not listed again: rank 0 wrote pool.csv
        fold_table = folds_module.load_folds(run / layout.FOLDS)
        pool = pool_source.open_saved(run, fold_table)
        return RunContext(run, config, data.classes, fold_table, _build_cache(run, fold_table, config, progress, pool),
                          device, progress, pool)
    with lock_run_folder(run):
        # again under the lock: another process may have begun the run since the check above
        check_run_folder(run, config, resume or (join and saved_config(run) is not None))
        remove_shared_temps(run)
        logger.info("noisystudent kfold into %s (%s)", run, "join" if join else "resume" if resume else "new run")
        try:
            data = load_run_images(config, run, pool_out=pool_source.listing_path(run), progress=progress,
                                   checked_pool=pool_source.saved(run))
            fold_table = _load_or_assign_folds(run, data, config)  # before config.json: may refuse the data
            evidence.announce_test_set(fold_table, config, evidence.data_has_test(data.manifest))
            write_config(run, config, pool_source.data_fingerprint(data.manifest, data.pool))
            pool = pool_source.install(run, data.pool, fold_table)
        finally:
            pool_source.listing_path(run).unlink(missing_ok=True)  # refused: the run keeps the pool it had
        if not (run / layout.FOLDS).exists():
            folds_module.save_folds(fold_table, run / layout.FOLDS)
        cache = _build_cache(run, fold_table, config, progress, pool)
    distributed.barrier()  # the other ranks may read now
    return RunContext(run, config, data.classes, fold_table, cache, device, progress, pool)


def _train_folds(ctx: RunContext, wanted: list[int]) -> None:
    """Train every fold of ``wanted`` that is unfinished and not claimed by another live process."""
    ctx.progress.start("fold", "folds", total=len(wanted))
    for done, fold in enumerate(wanted, start=1):
        if not distributed.broadcast(claims.fold_finished(ctx.run, fold, ctx.config.rounds)):  # one answer for all ranks
            _train_claimed_fold(ctx, fold)
        ctx.progress.update("fold", completed=done)
    ctx.progress.stop("fold")


def _train_claimed_fold(ctx: RunContext, fold: int) -> None:
    holder = None
    if distributed.is_main():  # under torchrun the job claims once, through rank 0
        with lock_run_folder(ctx.run):
            holder = claims.claim_fold(ctx.run, fold)
    holder = distributed.broadcast(holder)
    if holder is not None:
        logger.info("Moving on: %s.", claims.holder_sentence(fold, holder))
        return
    try:
        run_fold(ctx, fold)
    finally:
        if distributed.is_main():
            claims.release_fold(ctx.run, fold)


def _finish(ctx: RunContext, recompute: bool) -> pd.DataFrame | None:
    """Results by rank 0 under the lock; the other ranks read them afterwards."""
    if distributed.is_main():
        with lock_run_folder(ctx.run):
            table = _finish_run(ctx, recompute)
    distributed.barrier()
    if distributed.is_main():
        return table
    metrics_path = layout.results_dir(ctx.run) / layout.METRICS
    return read_table(metrics_path) if metrics_path.exists() else None


def _finish_run(ctx: RunContext, recompute: bool) -> pd.DataFrame | None:
    """Write the results once every fold is finished (call under the lock); None while some are not.

    The process that finishes the last fold finds results/metrics.csv missing
    and writes it; others read it. A plain ``--resume`` recomputes it.
    """
    config, run = ctx.config, ctx.run
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
        table = results.write_results(run, config, ctx.classes)
        logger.info("Wrote the results to %s.", metrics_path)
        return table
    return read_table(metrics_path)


@contextmanager
def new_run_folder(run: Path):
    """Create ``run``; if this session created it and the data is refused before config.json, remove it again.

    Before config.json the folder holds only what this session wrote (run.log, .lock,
    the generated demo data), so a refused command leaves no trace.
    """
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except UserError:
        if created and not (run / layout.CONFIG).exists():
            shutil.rmtree(run, ignore_errors=True)
        raise


@contextmanager
def run_log(run: Path):
    """Append this session's log records (from the whole package) to RUN/run.log."""
    handler = logging.FileHandler(run / layout.LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("noisystudent")
    package_logger.addHandler(handler)
    previous = package_logger.level
    package_logger.setLevel(min(previous or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)
        handler.close()


def _load_or_assign_folds(run: Path, data: RunImages, config: RunConfig) -> pd.DataFrame:
    """The saved folds.csv, or new folds (saved by the caller once config.json is written)."""
    path = run / layout.FOLDS
    if path.exists():
        return folds_module.load_folds(path)
    ratio_given = origin(config.to_dict(), "split_ratio") == GIVEN  # warn about the user's ratio, not the preset's
    pool_patients = data.pool.patients() if data.pool is not None else set()
    return folds_module.assign_folds(data.manifest, config.folds, config.split_ratio, config.test_fraction, config.seed,
                                     ratio_given, pool_patients)


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


def run_fold(ctx: RunContext, fold: int) -> None:
    """Teacher, then ``rounds`` students, each stage skipped when its artifact exists."""
    for round_ in range(ctx.config.rounds + 1):
        out = layout.round_dir(ctx.run, fold, round_)
        out.mkdir(parents=True, exist_ok=True)
        name = f"fold {fold} " + ("teacher" if round_ == 0 else f"student {round_}")
        ctx.progress.update("fold", description=name)
        train_model(_model_job(ctx, fold, round_, name), ctx.config, ctx.load_batch, ctx.device, ctx.progress)
        predictions = predict_round(ctx, fold, round_)
        warn_if_single_class(predictions, f"The {name}")  # on resume too: the warning is about the model
        if round_ < ctx.config.rounds:
            _pseudo_labels(ctx, fold, round_, predictions)


def fold_rows(folds: pd.DataFrame, fold: int, role: str) -> pd.DataFrame:
    """Rows of ``role`` in ``fold``; test and pool rows are shared by all folds."""
    fold_value = manifest.SHARED_FOLD if role in (manifest.ROLE_TEST, manifest.ROLE_POOL) else fold
    return folds[(folds[manifest.FOLD] == fold_value) & (folds[manifest.ROLE] == role)]


def _model_job(ctx: RunContext, fold: int, round_: int, name: str) -> ModelJob:
    config, student = ctx.config, round_ > 0
    validation = fold_rows(ctx.folds, fold, manifest.ROLE_VALIDATION)
    return ModelJob(
        name=name,
        out_dir=layout.round_dir(ctx.run, fold, round_),
        arch=config.student_architecture if student else config.arch,
        weights=_initial_weights(ctx, fold, round_),
        dropout=config.student_dropout if student else config.teacher_dropout,
        drop_connect=config.student_drop_connect if student else config.teacher_drop_connect,
        augment_level=config.student_augment if student else config.teacher_augment,
        train_set=_train_set(ctx, fold, round_),
        val_rows=ctx.rows(validation[manifest.PATH]),
        val_labels=_label_indices(validation, ctx.classes),
        classes=ctx.classes,
        seed=derive_seed(config.seed, "fold", fold, "round", round_),
        extra={"fold": fold, "round": round_, "kind": "student" if student else "teacher"},
    )


def _initial_weights(ctx: RunContext, fold: int, round_: int) -> str:
    """--weights, or for students with --student-init teacher the previous round's model.pt."""
    if round_ > 0 and ctx.config.student_init == "teacher":
        return str(layout.round_dir(ctx.run, fold, round_ - 1) / layout.MODEL)
    return ctx.config.weights


def _train_set(ctx: RunContext, fold: int, round_: int) -> TrainSet:
    """Round 0: the labelled part. Round r: pseudo-labels of round r-1 (+ labelled part)."""
    labelled = fold_rows(ctx.folds, fold, manifest.ROLE_LABELLED)
    one_hot = np.eye(len(ctx.classes), dtype=np.float32)[_label_indices(labelled, ctx.classes)]
    if round_ == 0:
        return TrainSet(ctx.rows(labelled[manifest.PATH]), torch.from_numpy(one_hot))
    pseudo_path = layout.round_dir(ctx.run, fold, round_ - 1) / layout.PSEUDO_LABELS
    paths, targets, copies = pseudo_labels.load_pseudo_labels(pseudo_path, ctx.classes)
    if ctx.config.student_data == "pseudo":
        return TrainSet(ctx.rows(paths), torch.from_numpy(targets), copies)
    rows = torch.cat([ctx.rows(labelled[manifest.PATH]), ctx.rows(paths)])
    all_targets = torch.from_numpy(np.concatenate([one_hot, targets]).astype(np.float32))
    all_copies = np.concatenate([np.ones(len(labelled), dtype=np.int64), copies])
    return TrainSet(rows, all_targets, all_copies)


def _label_indices(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(classes)}
    return np.array([lookup[label] for label in frame[manifest.LABEL]], dtype=np.int64)


def predict_round(ctx: RunContext, fold: int, round_: int) -> pd.DataFrame:
    """Probabilities of this round's model on validation, test and masked images; the pool's go to pool_predictions.csv.

    The pool is predicted only where a next round needs its pseudo-labels, and
    streamed a chunk at a time (``_predict_pool``), so that its size does not
    bound the memory. Returns predictions.csv, read back as a resume reads it.
    """
    folder = layout.round_dir(ctx.run, fold, round_)
    out, pool_out = folder / layout.PREDICTIONS, folder / layout.POOL_PREDICTIONS
    pool_count = pool_source.pool_size(ctx.folds, ctx.pool) if round_ < ctx.config.rounds else 0
    # not once pseudo_labels.csv exists: it is all the pool's predictions were for
    pool_missing = pool_count > 0 and not pool_out.exists() and not (folder / layout.PSEUDO_LABELS).exists()
    if out.exists() and not pool_missing:
        return results.read_predictions(out)
    model, payload = load_model_file(folder / layout.MODEL, ctx.device, ctx.config.channels_last)
    frame = _evaluated_rows(ctx, fold)
    predict = _round_predictor(ctx, model, payload["spec"]["arch"], (0 if out.exists() else len(frame)) + pool_count)
    if not out.exists():
        ctx.progress.start("predict", f"fold {fold} round {round_}: predicting", total=len(frame))
        probs = distributed.gather_rows(predict, ctx.rows(frame[manifest.PATH]))  # torchrun: a slice per rank, gathered in order
        ctx.progress.stop("predict")
        _check_finite(probs, folder)
        table = prediction_table(frame[[manifest.PATH, manifest.LABEL, manifest.PATIENT, layout.SPLIT]], probs, ctx.classes)
        if distributed.is_main():
            atomic.write_csv(out, table)
    if pool_missing:
        _predict_pool(ctx, pool_count, predict, pool_out, f"fold {fold} round {round_}: predicting the pool")
    distributed.barrier()
    return results.read_predictions(out)  # exactly what a resume reads


def _evaluated_rows(ctx: RunContext, fold: int) -> pd.DataFrame:
    """The fold's validation, test and masked images, with their split: the rows of predictions.csv."""
    return pd.concat([fold_rows(ctx.folds, fold, role).assign(**{layout.SPLIT: split})
                      for role, split in SPLIT_OF_ROLE.items() if role != manifest.ROLE_POOL], ignore_index=True)


def _predict_pool(ctx: RunContext, count: int, predict, out: Path, description: str) -> None:
    """pool_predictions.csv written POOL_CHUNK rows at a time: one chunk of the table in memory, whatever the pool's size."""
    ctx.progress.start("predict", description, total=count)

    def tables():
        done = 0
        for chunk, rows in pool_source.pool_chunks(ctx.folds, ctx.pool, ctx.cache, POOL_CHUNK):
            probs = distributed.gather_rows(lambda part: predict(part, done), rows)  # noqa: B023
            _check_finite(probs, out.parent)
            yield prediction_table(chunk.assign(**{layout.SPLIT: SPLIT_OF_ROLE[manifest.ROLE_POOL]}), probs, ctx.classes)
            done += len(chunk)

    if distributed.is_main():
        atomic.write_csv_chunks(out, tables())
    else:
        for _ in tables():  # the other ranks predict their slices of every chunk
            pass
    ctx.progress.stop("predict")


def _check_finite(probs: np.ndarray, folder: Path) -> None:
    if not np.isfinite(probs).all():  # a diverged model must not hand NaN pseudo-labels to the next round
        raise ConfigError(
            f"The model {folder / layout.MODEL} predicts non-finite probabilities: its "
            "training diverged; start a new run (--out) with a lower --lr."
        )


def _round_predictor(ctx: RunContext, model: torch.nn.Module, arch: str, n_images: int) -> backends.RowPredictor:
    """``predict(rows, done_before=0)`` -> (N, C) probabilities of one model for cache rows (``backends.row_predictor``)."""
    config = ctx.config
    # Lite0 expects (x - 127) / 128
    one_model = ModelSet((model,), (models.input_normalization(arch),), ctx.device, config.amp, config.channels_last, config.image_size)
    return backends.row_predictor(one_model, config.tta, ctx.load_batch, config.eval_batch_size, n_images, len(ctx.classes),
                                  lambda done: ctx.progress.update("predict", completed=done))


def _pseudo_labels(ctx: RunContext, fold: int, round_: int, predictions: pd.DataFrame) -> None:
    """pseudo_labels.csv from the masked images' predictions and, streamed, the pool's."""
    folder = layout.round_dir(ctx.run, fold, round_)
    out = folder / layout.PSEUDO_LABELS
    if distributed.broadcast(out.exists()):  # rank 0 may write it before another rank looks
        return
    config = ctx.config
    pool_file = folder / layout.POOL_PREDICTIONS
    # runs written before pool_predictions.csv existed hold the pool in predictions.csv
    splits = ("unlabelled",) if pool_file.exists() else PSEUDO_SPLITS
    masked = predictions[predictions[layout.SPLIT].isin(splits)]

    def chunks():
        yield masked
        if pool_file.exists():
            yield from read_table_chunks(pool_file, POOL_CHUNK)

    kept = None
    if distributed.is_main():
        kept = pseudo_labels.write_streamed(
            chunks, ctx.classes, out, mode=config.pseudo_mode, temperature=config.pseudo_temperature,
            threshold=config.pseudo_threshold, balance=config.pseudo_balance,
            seed=derive_seed(config.seed, "pseudo", fold, round_), per_class=config.pseudo_per_class,
        )
    if not distributed.broadcast(kept):
        raise ConfigError(f"No image of fold {fold} passed the pseudo-label threshold {config.pseudo_threshold}; start a new run (--out) with a lower --pseudo-threshold.")
    distributed.barrier()
