"""``noisystudent kfold``: the k-fold Noisy Student method (or FixMatch, Meta Pseudo Labels), read top-down.

For each fold: train the teacher (round 0) on the labelled part, let it label
the masked part and the unlabelled pool, train a noised student on labelled +
pseudo-labelled images, and repeat with the student as the next teacher. With
``--method fixmatch`` round 1 is one FixMatch model that learns from the masked
part and the pool itself (training/fixmatch.py); ``--method meta-pseudo-labels``
trains round 1 as a student beside a teacher that starts from round 0's model
(training/meta_pseudo_labels.py); with ``--pool-labels
ensemble`` the folds run round by round and the pool's pseudo-labels are the
round's K fold models averaged (run/pool_ensemble.py).
Every stage writes its artifact into the run folder and is skipped on resume
once that artifact exists:

    folds.csv -> cache -> per fold and round: model.pt -> predictions.csv -> pseudo_labels.csv
              -> results/metrics.csv

How processes share the run folder (its lock, fold claims, torchrun's ranks,
run.log, the shared state and the results) is run/session.py's job.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisystudent import atomic, layout, models
from noisystudent.config.choices import ONE_STAGE_METHODS
from noisystudent.config.run_config import RunConfig
from noisystudent.data import manifest
from noisystudent.data.pool import pool_chunks, pool_size
from noisystudent.errors import ConfigError
from noisystudent.inference import backends
from noisystudent.inference.model_set import ModelSet
from noisystudent.inference.tables import prediction_table
from noisystudent.models.model_file import load_model_file, verify_model_file
from noisystudent.progress import NULL_PROGRESS, Progress
from noisystudent.run import claims, concurrent, pool_ensemble, pseudo_labels, results, session
from noisystudent.run.collapse import warn_if_single_class
from noisystudent.run.preflight import check_before_writing, method_warnings
from noisystudent.run.session import RunContext
from noisystudent.run.tables import TABLE_CHUNK, read_table_chunks
from noisystudent.run.whole_run import MODEL, WholeRunProgress
from noisystudent.training import distributed, event_log
from noisystudent.training.compiling import prediction_graphs
from noisystudent.training.engine import TrainSet
from noisystudent.training.fixmatch import UnlabelledSet
from noisystudent.training.seeding import derive_seed
from noisystudent.training.trainer import COMPILE_OPTIONS, ModelJob, train_model

logger = logging.getLogger(__name__)

# predictions.csv split names for each fold role
SPLIT_OF_ROLE = {manifest.ROLE_VALIDATION: layout.SPLIT_VALIDATION, manifest.ROLE_TEST: layout.SPLIT_TEST,
                 manifest.ROLE_MASKED: layout.SPLIT_MASKED, manifest.ROLE_POOL: layout.SPLIT_POOL}
PSEUDO_SPLITS = (layout.SPLIT_MASKED, layout.SPLIT_POOL)
STUDENT_WEIGHTS = {"scratch": "none", "imagenet": "imagenet"}  # --student-init -> the weights models.create_model loads
WAIT_SECONDS = 5.0  # --pool-labels ensemble: how often a process looks whether the folds it waits for are ready
MPL = "meta-pseudo-labels"
POOL_CHUNK = TABLE_CHUNK  # pool rows predicted and written at a time (about 10 MB of table, whatever the pool's size)


def run_kfold(config: RunConfig, run: Path, resume: bool = False, progress: Progress = NULL_PROGRESS,
              only_folds: str | None = None, join: bool = False) -> pd.DataFrame | None:
    """Run (or resume, or join) the protocol in ``run``; return the results table, or None while folds remain.

    For each fold: train the teacher (round 0) on the labelled part, let it
    pseudo-label the masked part (and the unlabelled pool), train a noised
    student, and repeat ``config.rounds`` times with the student as the next
    teacher; then write results/metrics.csv. Every stage writes its artifact
    atomically into ``run`` and is skipped on resume once it exists. Under
    torchrun each rank takes one device.

    Args:
        config: The run's settings (:func:`make_config`, or
            :func:`resume_config` for a resume).
        run: The run folder. A new run needs a missing or empty folder.
        resume: Continue the run in ``run`` (default ``False``: start a new
            one). Refused if a setting that affects results differs from the
            run's config.json; with ``resume`` the results table is recomputed.
        progress: Receives progress events (fold, round, epoch, batch); the
            default ``NULL_PROGRESS`` ignores them.
        only_folds: Fold numbers such as ``"0,2"`` to train just those folds;
            default ``None``: every fold. Implies ``join``.
        join: Start the run if ``run`` holds none, else continue it like
            ``resume``, so that several processes can share one run folder,
            each training folds no other live process has claimed.

    Returns:
        pandas.DataFrame | None: The results table (results/metrics.csv): one
        row per fold model (teacher = round 0, students = rounds >= 1) and
        split, fold ``mean``/``variance`` rows, pooled out-of-fold (``oof``)
        rows and ``ensemble`` rows (majority and soft voting on the outer test
        set), identified by the columns model, fold, round, split, voting and
        class, followed by the metrics and counts. ``None`` while some fold is
        unfinished (e.g. claimed by another process); the process that finishes
        the last fold writes the table.

    Raises:
        ConfigError: A setting is refused, ``only_folds`` is malformed, or
            settings differ from the run's on resume.
        DataError: The data cannot be read or split into folds.
        RunFolderError: ``run`` already holds a run (without ``resume``) or
            holds none to resume (noisystudent.errors; a UserError).
        DiskFullError: The disk filled up; continue with ``resume=True``.

    Example:
        >>> import noisystudent as ns
        >>> config = ns.make_config(preset="demo", epochs=2, device="cpu")  # built-in demo data
        >>> table = ns.run_kfold(config, "runs/demo")  # doctest: +SKIP
        >>> table = ns.run_kfold(config, "runs/demo", resume=True)  # after an interruption  # doctest: +SKIP
        >>> table[table["fold"] == "ensemble"][["model", "voting", "accuracy"]]  # doctest: +SKIP
    """
    run = Path(run)
    wanted = claims.select_folds(only_folds, config.folds)
    join = join or only_folds is not None
    check_before_writing(config, run)  # a refused setting leaves no trace
    with session.open_run(config, run, resume, join, progress) as run_ctx:  # config.json, folds.csv, the cache
        for warning in method_warnings(config) if distributed.is_main() else ():
            logger.warning(warning)
        event_log.say_if_unavailable(config.tensorboard and distributed.is_main())
        whole_run = WholeRunProgress(run_ctx.progress, run, config, run_ctx.fold_table, len(run_ctx.classes),
                                     pool_size(run_ctx.fold_table, run_ctx.pool))
        run_ctx.progress = whole_run  # every model of every fold, with the ETA, beside each model's bars
        whole_run.begin()
        helpers = min(config.concurrent, len(wanted)) - 1  # --concurrent N: this process and N - 1 workers
        threads = concurrent.worker_threads(torch.get_num_threads(), helpers + 1)
        worker_config = {**config.to_dict(), "concurrent": 1}
        # each process's cache takes a 1/N share of the GPU (N: also the processes of other runs of an experiment)
        run_ctx.cache.device_sharers = max(helpers + 1, config.concurrent)
        with concurrent.fold_workers(worker_config, run, only_folds, helpers, threads,
                                     sharers=run_ctx.cache.device_sharers) as workers, concurrent.cpu_threads(threads):
            train_folds(run_ctx, wanted)
            if workers.wait():  # a worker failed: the folds it left are trained here (its claims are released or stale)
                train_folds(run_ctx, wanted)
        whole_run.finish()
        return session.finish(run_ctx, recompute=resume and not join)  # once every fold is finished


def train_folds(run_ctx: RunContext, wanted: list[int]) -> None:
    """Train each of ``wanted`` that is unfinished and that no other live process has claimed.

    With --pool-labels ensemble the folds go round by round (every fold's round r before any round r + 1).
    """
    if _pool_averaged(run_ctx):
        run_rounds_together(run_ctx, wanted)
    else:
        _run_folds(run_ctx, wanted)


def _run_folds(run_ctx: RunContext, wanted: list[int]) -> None:
    run_ctx.progress.start("fold", "folds", total=len(wanted))
    for done, fold in enumerate(wanted, start=1):
        if session.claim_fold(run_ctx, fold):  # unfinished, and no other live process trains it
            try:
                run_fold(run_ctx, fold)
            finally:
                session.release_fold(run_ctx, fold)
        run_ctx.progress.update("fold", completed=done)
    run_ctx.progress.stop("fold")


def fold_worker_main() -> None:
    """Entry of a ``--concurrent`` worker process (run/concurrent.py): join the run and train unclaimed folds.

    Reads its settings from stdin; exits as ``concurrent.run_worker`` says (0 done, 130 stopped, 2 refused, 1 failed).
    """
    concurrent.run_worker(_join_and_train)


def _join_and_train(job: dict) -> None:
    config, run = RunConfig.from_dict(job["config"]), Path(job["run"])
    with session.open_run(config, run, resume=False, join=True, progress=NULL_PROGRESS) as run_ctx:
        run_ctx.cache.device_sharers = job.get("sharers", 1)
        train_folds(run_ctx, claims.select_folds(job["only_folds"], config.folds))


def run_fold(run_ctx: RunContext, fold: int) -> None:
    """Teacher, then ``rounds`` students, each stage skipped when its artifact exists."""
    for round_ in range(run_ctx.config.rounds + 1):
        predictions = run_round(run_ctx, fold, round_)
        if round_ < run_ctx.config.rounds and _learns_from_pseudo_labels(run_ctx.config):
            _pseudo_labels(run_ctx, fold, round_, predictions)


def run_round(run_ctx: RunContext, fold: int, round_: int) -> pd.DataFrame:
    """Train round ``round_``'s model of ``fold`` and predict with it; return its predictions.csv."""
    out = layout.round_dir(run_ctx.run, fold, round_)
    out.mkdir(parents=True, exist_ok=True)
    name = f"fold {fold} " + ("teacher" if round_ == 0 else f"student {round_}")
    run_ctx.progress.update("fold", description=name)
    run_ctx.progress.update(MODEL, fold=fold, round=round_)  # the whole run's progress: which model now
    train_model(_model_job(run_ctx, fold, round_, name), run_ctx.config, run_ctx.load_batch, run_ctx.device, run_ctx.progress)
    predictions = predict_round(run_ctx, fold, round_)
    warn_if_single_class(predictions, f"The {name}")  # on resume too: the warning is about the model
    return predictions


def _pool_averaged(run_ctx: RunContext) -> bool:
    """--pool-labels ensemble with students that learn from pseudo-labels and a pool to label."""
    config = run_ctx.config
    return (config.pool_labels == "ensemble" and config.rounds > 0 and _learns_from_pseudo_labels(config)
            and pool_size(run_ctx.fold_table, run_ctx.pool) > 0)


def run_rounds_together(run_ctx: RunContext, wanted: list[int]) -> bool:
    """--pool-labels ensemble: round r of every fold before round r + 1 of any; False when stopped waiting.

    Each round: train this process's unclaimed folds, wait for the folds other
    live processes train, average the round's pool predictions once, and let
    each fold's next student learn from its own masked labels plus that average.
    """
    for round_ in range(run_ctx.config.rounds + 1):
        run_ctx.progress.start("fold", f"round {round_}", total=len(wanted))
        for done, fold in enumerate(wanted, start=1):
            _claimed_round(run_ctx, fold, round_)
            run_ctx.progress.update("fold", completed=done)
        run_ctx.progress.stop("fold")
        if round_ < run_ctx.config.rounds:
            if not _wait_for_round(run_ctx, wanted, round_):
                return False
            if distributed.is_main():
                pool_ensemble.write_average(run_ctx.run, run_ctx.config.folds, round_, run_ctx.classes)
            distributed.barrier()
    return True


def _claimed_round(run_ctx: RunContext, fold: int, round_: int) -> bool:
    """Round ``round_`` of ``fold`` (its pseudo-labels first) unless another live process holds the fold; True if run here."""
    if not session.claim_fold(run_ctx, fold):
        return False
    try:
        if round_ > 0:
            previous = results.read_predictions(layout.round_dir(run_ctx.run, fold, round_ - 1) / layout.PREDICTIONS)
            _pseudo_labels(run_ctx, fold, round_ - 1, previous)
        run_round(run_ctx, fold, round_)
    finally:
        session.release_fold(run_ctx, fold)
    return True


def _wait_for_round(run_ctx: RunContext, wanted: list[int], round_: int) -> bool:
    """Until every fold's round ``round_`` is ready: train the wanted ones no live process holds, wait for the others.

    False (this process stops; --resume or --join continues) when a fold it may
    not train (--only-folds) is held by no live process.
    """
    run = run_ctx.run
    while True:
        waiting = [k for k in range(run_ctx.config.folds)
                   if not distributed.broadcast(pool_ensemble.round_ready(run, k, round_, needs_pool=True))]
        if not waiting:
            return True
        ran = False
        for fold in waiting:
            if fold in wanted:
                ran = _claimed_round(run_ctx, fold, round_) or ran
            elif distributed.broadcast(_no_live_holder(run, fold)):
                logger.warning("Round %d needs fold %d's model, which no live process trains; this process stops here "
                               "(continue with --join or --resume).", round_, fold)
                return False
        if not ran:
            time.sleep(WAIT_SECONDS)


def _no_live_holder(run: Path, fold: int) -> bool:
    claim = claims.read_claim(run, fold)
    return claim is None or claims.is_stale(claim)


def _learns_from_pseudo_labels(config: RunConfig) -> bool:
    """Noisy Student's students learn from pseudo-labels.csv; a one-stage method's model makes its own, and the control none."""
    return config.student_data != "labelled" and config.method not in ONE_STAGE_METHODS


def _learns_without_labels(config: RunConfig, round_: int) -> bool:
    """Round 1 of a one-stage method (FixMatch, Meta Pseudo Labels) learns from the masked part and pool themselves, never their labels."""
    return round_ > 0 and config.method in ONE_STAGE_METHODS and config.student_data != "labelled"


def _model_job(run_ctx: RunContext, fold: int, round_: int, name: str) -> ModelJob:
    config, student = run_ctx.config, round_ > 0
    validation = fold_rows(run_ctx.fold_table, fold, manifest.ROLE_VALIDATION)
    return ModelJob(
        name=name,
        out_dir=layout.round_dir(run_ctx.run, fold, round_),
        arch=config.student_architecture if student else config.arch,
        weights=_initial_weights(run_ctx, fold, round_),
        dropout=config.student_dropout if student else config.teacher_dropout,
        drop_connect=config.student_drop_connect if student else config.teacher_drop_connect,
        augment_level=config.student_augment if student else config.teacher_augment,
        randaugment=student and config.randaugment,  # RandAugment is the students' noise (Xie et al.), at any level; never the teacher's
        train_set=_train_set(run_ctx, fold, round_),
        unlabelled=_unlabelled_set(run_ctx, fold) if _learns_without_labels(config, round_) else None,
        val_rows=run_ctx.rows(validation[manifest.PATH]),
        val_labels=_label_indices(validation, run_ctx.classes),
        classes=run_ctx.classes,
        seed=derive_seed(config.seed, "fold", fold, "round", round_),
        extra={"fold": fold, "round": round_, "kind": "student" if student else "teacher"},
        events=event_log.model_folder(run_ctx.run, fold, round_) if config.tensorboard else None,
        identity=run_ctx.model_identity(fold, round_),
        mpl_teacher=_mpl_teacher(run_ctx, fold) if config.method == MPL and _learns_without_labels(config, round_) else None,
    )


def _mpl_teacher(run_ctx: RunContext, fold: int) -> Path:
    """Meta Pseudo Labels' teacher starts from the fold's supervised teacher (round 0), checked like any model.pt it reads."""
    path = layout.round_dir(run_ctx.run, fold, 0) / layout.MODEL
    verify_model_file(path, run_ctx.model_identity(fold, 0))
    return path


def _initial_weights(run_ctx: RunContext, fold: int, round_: int) -> str:
    """The teacher: --weights. Students: --student-init (scratch, imagenet, or the previous round's model.pt); unset: --weights."""
    init = run_ctx.config.student_init if round_ > 0 else None
    if init == "teacher":
        return str(layout.round_dir(run_ctx.run, fold, round_ - 1) / layout.MODEL)
    return STUDENT_WEIGHTS.get(init, run_ctx.config.weights)


def _train_set(run_ctx: RunContext, fold: int, round_: int) -> TrainSet:
    """Round 0: the labelled part. Round r: pseudo-labels of round r-1 (+ labelled part), or with
    ``--student-data labelled`` the labelled part again (the control arm: the student's noise, epochs and
    initialisation without pseudo-labels)."""
    labelled = fold_rows(run_ctx.fold_table, fold, manifest.ROLE_LABELLED)
    one_hot = np.eye(len(run_ctx.classes), dtype=np.float32)[_label_indices(labelled, run_ctx.classes)]
    if round_ == 0 or not _learns_from_pseudo_labels(run_ctx.config):  # the control, or FixMatch's labelled batches
        return TrainSet(run_ctx.rows(labelled[manifest.PATH]), torch.from_numpy(one_hot))
    pseudo_path = layout.round_dir(run_ctx.run, fold, round_ - 1) / layout.PSEUDO_LABELS
    paths, targets, copies = pseudo_labels.load_pseudo_labels(pseudo_path, run_ctx.classes)
    if run_ctx.config.student_data == "pseudo":
        return TrainSet(run_ctx.rows(paths), torch.from_numpy(targets), copies)
    rows = torch.cat([run_ctx.rows(labelled[manifest.PATH]), run_ctx.rows(paths)])
    all_targets = torch.from_numpy(np.concatenate([one_hot, targets]).astype(np.float32))
    all_copies = np.concatenate([np.ones(len(labelled), dtype=np.int64), copies])
    return TrainSet(rows, all_targets, all_copies)


def _unlabelled_set(run_ctx: RunContext, fold: int) -> UnlabelledSet:
    """The fold's masked part and the pool as cache rows only: their labels never leave the fold table."""
    masked = fold_rows(run_ctx.fold_table, fold, manifest.ROLE_MASKED)
    pool = [rows for _, rows in pool_chunks(run_ctx.fold_table, run_ctx.pool, run_ctx.cache, POOL_CHUNK)]
    rows = torch.cat([run_ctx.rows(masked[manifest.PATH]), *pool])
    if len(rows) == 0:
        raise ConfigError(f"Fold {fold} has no masked or pool images for --method {run_ctx.config.method} to learn from; "
                          "give the folds a masked part (--split-ratio) or a pool (--pool, --pool-images).")
    return UnlabelledSet(rows)


def fold_rows(fold_table: pd.DataFrame, fold: int, role: str) -> pd.DataFrame:
    """Rows of ``role`` in ``fold``; test and pool rows are shared by all folds."""
    fold_value = manifest.SHARED_FOLD if role in (manifest.ROLE_TEST, manifest.ROLE_POOL) else fold
    return fold_table[(fold_table[manifest.FOLD] == fold_value) & (fold_table[manifest.ROLE] == role)]


def _label_indices(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(classes)}
    return np.array([lookup[label] for label in frame[manifest.LABEL]], dtype=np.int64)


def predict_round(run_ctx: RunContext, fold: int, round_: int) -> pd.DataFrame:
    """Probabilities of this round's model on validation, test and masked images; the pool's go to pool_predictions.csv.

    The pool is predicted only where a next round needs its pseudo-labels, and
    streamed a chunk at a time (``_predict_pool``), so that its size does not
    bound the memory. Returns predictions.csv, read back as a resume reads it.
    """
    folder = layout.round_dir(run_ctx.run, fold, round_)
    out, pool_out = folder / layout.PREDICTIONS, folder / layout.POOL_PREDICTIONS
    needed = round_ < run_ctx.config.rounds and _learns_from_pseudo_labels(run_ctx.config)
    pool_count = pool_size(run_ctx.fold_table, run_ctx.pool) if needed else 0
    # not once pseudo_labels.csv exists: it is all the pool's predictions were for
    pool_missing = pool_count > 0 and not pool_out.exists() and not (folder / layout.PSEUDO_LABELS).exists()
    if out.exists() and not pool_missing:
        return results.read_predictions(out)
    model, payload = load_model_file(folder / layout.MODEL, run_ctx.device, run_ctx.config.channels_last,
                                     run_ctx.model_identity(fold, round_))
    frame = _evaluated_rows(run_ctx, fold)
    predict = _round_predictor(run_ctx, model, payload["spec"]["arch"], (0 if out.exists() else len(frame)) + pool_count)
    if not out.exists():
        run_ctx.progress.start("predict", f"fold {fold} round {round_}: predicting", total=len(frame))
        probs = distributed.gather_rows(predict, run_ctx.rows(frame[manifest.PATH]))  # torchrun: a slice per rank, gathered in order
        run_ctx.progress.stop("predict")
        _check_finite(probs, folder)
        table = prediction_table(frame[[manifest.PATH, manifest.LABEL, manifest.PATIENT, layout.SPLIT]], probs, run_ctx.classes)
        if distributed.is_main():
            atomic.write_csv(out, table)
    if pool_missing:
        _predict_pool(run_ctx, pool_count, predict, pool_out, f"fold {fold} round {round_}: predicting the pool")
    distributed.barrier()
    return results.read_predictions(out)  # exactly what a resume reads


def _evaluated_rows(run_ctx: RunContext, fold: int) -> pd.DataFrame:
    """The fold's validation, test and masked images, with their split: the rows of predictions.csv."""
    return pd.concat([fold_rows(run_ctx.fold_table, fold, role).assign(**{layout.SPLIT: split})
                      for role, split in SPLIT_OF_ROLE.items() if role != manifest.ROLE_POOL], ignore_index=True)


def _predict_pool(run_ctx: RunContext, count: int, predict, out: Path, description: str) -> None:
    """pool_predictions.csv written POOL_CHUNK rows at a time: one chunk of the table in memory, whatever the pool's size."""
    run_ctx.progress.start("predict", description, total=count)

    def tables():
        done = 0
        for chunk, rows in pool_chunks(run_ctx.fold_table, run_ctx.pool, run_ctx.cache, POOL_CHUNK):
            probs = distributed.gather_rows(lambda part: predict(part, done), rows)  # noqa: B023
            _check_finite(probs, out.parent)
            yield prediction_table(chunk.assign(**{layout.SPLIT: SPLIT_OF_ROLE[manifest.ROLE_POOL]}), probs, run_ctx.classes)
            done += len(chunk)

    if distributed.is_main():
        atomic.write_csv_chunks(out, tables())
    else:
        for _ in tables():  # the other ranks predict their slices of every chunk
            pass
    run_ctx.progress.stop("predict")


def _check_finite(probs: np.ndarray, folder: Path) -> None:
    if not np.isfinite(probs).all():  # a diverged model must not hand NaN pseudo-labels to the next round
        raise ConfigError(
            f"The model {folder / layout.MODEL} predicts non-finite probabilities: its "
            "training diverged; start a new run (--out) with a lower --lr."
        )


def _round_predictor(run_ctx: RunContext, model: torch.nn.Module, arch: str, n_images: int) -> backends.RowPredictor:
    """``predict(rows, done_before=0)`` -> (N, C) probabilities of one model for cache rows (``backends.row_predictor``)."""
    config = run_ctx.config
    # Lite0 expects (x - 127) / 128
    one_model = ModelSet((model,), (models.input_normalization(arch),), run_ctx.device, config.amp, config.channels_last, config.image_size)
    graphs = prediction_graphs(model, config.compile, config.compile_mode, run_ctx.device, COMPILE_OPTIONS)  # CUDA only
    return backends.row_predictor(one_model, config.tta, run_ctx.load_batch, config.eval_batch_size, n_images, len(run_ctx.classes),
                                  lambda done: run_ctx.progress.update("predict", completed=done), full_batch_model=graphs)


def _pseudo_labels(run_ctx: RunContext, fold: int, round_: int, predictions: pd.DataFrame) -> None:
    """pseudo_labels.csv from the masked images' predictions and, streamed, the pool's."""
    folder = layout.round_dir(run_ctx.run, fold, round_)
    out = folder / layout.PSEUDO_LABELS
    if distributed.broadcast(out.exists()):  # rank 0 may write it before another rank looks
        return
    config = run_ctx.config
    pool_file = layout.pool_ensemble_file(run_ctx.run, round_) if _pool_averaged(run_ctx) else folder / layout.POOL_PREDICTIONS
    # runs written before pool_predictions.csv existed hold the pool in predictions.csv
    splits = (layout.SPLIT_MASKED,) if pool_file.exists() else PSEUDO_SPLITS
    masked = predictions[predictions[layout.SPLIT].isin(splits)]

    def chunks():
        yield masked
        if pool_file.exists():
            yield from read_table_chunks(pool_file, POOL_CHUNK)

    kept = None
    if distributed.is_main():
        hidden = predictions[predictions[layout.SPLIT] == layout.SPLIT_MASKED]  # scored on the masked part's hidden labels
        if config.tensorboard and len(hidden):
            accuracy = float((hidden[manifest.LABEL].astype(str) == hidden[layout.PRED].astype(str)).mean())
            event_log.write_pseudo_label_accuracy(run_ctx.run, fold, round_, accuracy)  # before the file: never lost
        kept = pseudo_labels.write_streamed(
            chunks, run_ctx.classes, out, mode=config.pseudo_mode, temperature=config.pseudo_temperature,
            threshold=config.pseudo_threshold, balance=config.pseudo_balance,
            seed=derive_seed(config.seed, "pseudo", fold, round_), per_class=config.pseudo_per_class,
        )
    if not distributed.broadcast(kept):
        raise ConfigError(f"No image of fold {fold} passed the pseudo-label threshold {config.pseudo_threshold}; start a new run (--out) with a lower --pseudo-threshold.")
    distributed.barrier()
