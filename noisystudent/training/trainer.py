"""Train one model (a teacher or a student) to completion, resumably.

``train_model`` is one stage of the run: it is skipped when its ``model.pt``
exists, continues from ``checkpoint.pt`` after an interruption, and writes
``history.csv`` after every epoch. Seeds for data order, augmentation and
dropout are derived from (job seed, epoch), so an epoch replayed after a crash
is the same epoch.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisystudent import atomic, layout, models
from noisystudent.config.parsing import parse_progressive_resize
from noisystudent.config.run_config import RunConfig
from noisystudent.device import amp_dtype
from noisystudent.errors import CheckpointError
from noisystudent.evaluation.scoring import probabilities_loss, selection_score, validation_metrics
from noisystudent.inference.predict import predict_probs
from noisystudent.models import checkpoint
from noisystudent.models.model_file import IDENTITY, check_identity, verify_model_file
from noisystudent.progress import NULL_PROGRESS, Progress
from noisystudent.training import distributed, engine, fixmatch, meta_pseudo_labels, optim
from noisystudent.training.augment import BatchAugment, create_augment
from noisystudent.training.compiling import compile_model
from noisystudent.training.engine import TrainSet
from noisystudent.training.event_log import open_event_log
from noisystudent.training.fixmatch import UnlabelledSet
from noisystudent.training.fixmatch_views import FixMatchViews
from noisystudent.training.optim import Scheduler
from noisystudent.training.sampling import class_weights
from noisystudent.training.seeding import derive_seed, make_generator, seed_everything

logger = logging.getLogger(__name__)

LoadBatch = Callable[[torch.Tensor], torch.Tensor]  # cache rows -> uint8 images (B, 3, H, W) on the device

# torch.compile options of the training model (tests use the "eager" backend: same guards, no codegen).
COMPILE_OPTIONS: dict = {}



@dataclass
class ModelJob:
    """Everything that defines one model's training."""

    name: str  # for logs and progress, e.g. "fold 2 student 1"
    out_dir: Path
    arch: str
    weights: str
    dropout: float
    drop_connect: float
    augment_level: str
    train_set: TrainSet
    val_rows: torch.Tensor
    val_labels: np.ndarray  # class indices
    classes: list[str]
    seed: int
    extra: dict = field(default_factory=dict)  # stored in model.pt (fold, round, ...)
    randaugment: bool = False  # student noise: run.pipeline sets it for students only
    events: Path | None = None  # TensorBoard folder of this model (training/event_log.py); None: no event file
    unlabelled: UnlabelledSet | None = None  # images without labels: trains with FixMatch (training.fixmatch)
    identity: dict | None = None  # model_file.model_identity: recorded in model.pt and checkpoint.pt, checked on resume
    mpl_teacher: Path | None = None  # Meta Pseudo Labels: the model.pt its teacher starts from (with ``unlabelled``)


@dataclass
class TrainState:
    next_epoch: int = 0
    best_score: float = -float("inf")
    best_epoch: int = -1
    best_state: dict | None = None
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    learned: torch.Tensor | None = None  # FlexMatch's record of the unlabelled images (training.fixmatch)
    mpl: dict | None = None  # Meta Pseudo Labels: the teacher's weights, optimizer, baseline and steps (Teacher.state)


@dataclass
class Training:
    """One model being trained: what steps it and where it stands, everything checkpoint.pt saves."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    scaler: torch.amp.GradScaler | None
    state: TrainState = field(default_factory=TrainState)


def train_model(job: ModelJob, config: RunConfig, load_batch: LoadBatch, device: torch.device,
                progress: Progress = NULL_PROGRESS) -> Path:
    """Train ``job`` unless its model.pt exists; return the path of model.pt."""
    model_path = job.out_dir / layout.MODEL
    if model_path.exists():
        if job.identity is not None:  # a truncated or misplaced model.pt must not pass for a finished stage
            verify_model_file(model_path, job.identity)
        logger.info("%s: %s exists, skipping training", job.name, model_path)
        return model_path
    seed_everything(derive_seed(job.seed, "init"))
    model = build_model(job, config, device)
    optimizer = optim.create_optimizer(model.parameters(), config, device)
    scheduler = optim.create_scheduler(optimizer, config, total_epochs(job, config))
    scaler = torch.amp.GradScaler(device.type) if amp_dtype(config.amp, device) == torch.float16 else None
    training = Training(model, optimizer, scheduler, scaler)
    training.state = _resume(job, training)
    _run_epochs(job, config, training, load_batch, device, progress)
    if distributed.is_main():  # under torchrun rank 0 alone writes
        _save_model(job, config, _selected(config, training.state, model), model_path)
    distributed.barrier()  # every rank reads model.pt next
    return model_path


def _selected(config: RunConfig, state: TrainState, model: torch.nn.Module) -> TrainState:
    """--select last keeps the weights of the last epoch trained, not the best one on validation."""
    if config.select == "best" or not state.history:
        return state
    last = state.history[-1]
    return TrainState(state.next_epoch, float("nan"), int(last[layout.EPOCH]), copy.deepcopy(model.state_dict()), state.stale_epochs, state.history)


def build_model(job: ModelJob, config: RunConfig, device: torch.device) -> torch.nn.Module:
    """The untrained model of ``job`` on ``device`` (its weights, dropout, BatchNorm momentum, memory format)."""
    model = models.create_model(
        job.arch, len(job.classes), weights=job.weights, dropout=job.dropout,
        drop_connect=job.drop_connect, hidden_units=config.hidden_units,
    )
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = config.bn_momentum
    model = distributed.sync_batchnorm(model, device).to(device)  # torchrun on CUDA: global-batch statistics
    if device.type == "cuda" and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _resume(job: ModelJob, training: Training) -> TrainState:
    """Load checkpoint.pt into ``training`` (model, optimizer, scheduler, scaler, RNGs); return its state."""
    path = job.out_dir / layout.CHECKPOINT
    if not path.exists():
        return TrainState()
    saved = checkpoint.load(path)
    if job.identity is not None:
        check_identity(saved, path, job.identity, "checkpoint")
    try:
        training.model.load_state_dict(saved["model"])
        optim.load_optimizer_state(training.optimizer, saved["optimizer"])  # keeps this device's fused/foreach
        if training.scheduler is not None and saved.get("scheduler") is not None:
            training.scheduler.load_state_dict(saved["scheduler"])
        if training.scaler is not None and saved.get("scaler") is not None:
            training.scaler.load_state_dict(saved["scaler"])
        checkpoint.restore_rng_state(saved["rng"])
        state = TrainState(**saved["train_state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"The checkpoint {path} does not fit this training stage ({type(error).__name__}: {reason}); "
            "delete it to restart that stage from scratch."
        ) from error
    logger.info("%s: resuming at epoch %d from %s", job.name, state.next_epoch + 1, path)
    return state


def _run_epochs(job: ModelJob, config: RunConfig, training: Training, load_batch: LoadBatch, device: torch.device,
                progress: Progress) -> None:
    """The epochs from ``training.state.next_epoch`` on, a checkpoint after each; stops early on a stale score."""
    model, state = training.model, training.state
    sizes = parse_progressive_resize(config.progressive_resize, config.epochs, config.image_size)
    epochs = total_epochs(job, config)
    sizes += sizes[-1:] * (epochs - len(sizes))  # Meta Pseudo Labels' fine-tune epochs: the last size
    step = engine.StepContext(
        optimizer=training.optimizer, device=device, amp_dtype=amp_dtype(config.amp, device), scaler=training.scaler,
        class_weights=_class_weights(job, config, device), label_smoothing=config.label_smoothing,
        channels_last=device.type == "cuda" and config.channels_last,
    )
    # torchrun: DDP averages the gradients of the ranks (a no-op wrapper otherwise)
    wrapped = distributed.wrap_model(model, device, config.freeze != "none" or config.head_warmup_epochs > 0)
    # once per model build; CUDA graphs with --compile-mode reduce-overhead (full batches only: engine.train_one_epoch)
    training_model = compile_model(wrapped, config.compile_mode, device, COMPILE_OPTIONS) if config.compile else wrapped
    progress.start("epoch", job.name, total=epochs)
    progress.update("epoch", completed=state.next_epoch)
    events = open_event_log(job.events if distributed.is_main() else None, first_epoch=state.next_epoch + 1)
    try:
        for epoch in range(state.next_epoch, epochs):
            if _stopped_early(job, config, state):  # checked first: a resumed run stops where the original did
                break
            row = _one_epoch(job, config, model, training_model, step, epoch, sizes[epoch], load_batch, progress, state)
            optim.step_scheduler(training.scheduler, row["score"])
            _record_epoch(state, model, row, epoch)
            if distributed.is_main():
                events.epoch(row)  # before the checkpoint: a kill between them repeats the point, never loses it
                _save_checkpoint(job, training)
            progress.update("epoch", completed=epoch + 1, loss=row[layout.TRAIN_LOSS], val=row[f"val_{config.selection_metric}"])
    finally:
        events.close()
    progress.stop("epoch")


def _stopped_early(job: ModelJob, config: RunConfig, state: TrainState) -> bool:
    if config.early_stopping and state.stale_epochs >= config.early_stopping:
        logger.info("%s: early stop after epoch %d (%d epochs without improvement)", job.name, state.next_epoch, state.stale_epochs)
        return True
    return False


def _one_epoch(job: ModelJob, config: RunConfig, model: torch.nn.Module, training_model: torch.nn.Module,
               step: engine.StepContext, epoch: int, size: int, load_batch: LoadBatch, progress: Progress,
               state: TrainState | None = None) -> dict:
    """Train one epoch (``training_model``: compiled or DDP-wrapped ``model``), then validate; return its history row.

    ``state`` holds what an epoch carries over besides the weights (FixMatch's FlexMatch record).
    """
    seed_everything(derive_seed(job.seed, "epoch", epoch, *distributed.seed_parts()))  # dropout and drop-connect draws
    generator = make_generator(derive_seed(job.seed, "data", epoch))
    frozen = config.freeze == "backbone" or epoch < config.head_warmup_epochs
    _set_frozen(model, frozen)
    if frozen and config.freeze != "backbone" and not distributed.active():
        # Head warm-up runs uncompiled: frozen parameters and eval-mode BatchNorm
        # would compile a second version of the model for a few epochs.
        training_model = model
    mean, std = models.input_normalization(job.arch)  # what the arch's weights expect (Lite0: (x - 127) / 128)
    augment = create_augment(job.augment_level, job.randaugment, size, mean, std, config.randaugment_ops, config.randaugment_magnitude)
    progress.start("batch", f"epoch {epoch + 1}/{total_epochs(job, config)}", total=len(job.train_set))
    started = time.perf_counter()
    # no recompile for the last batch (under DDP every batch must go through the wrapper)
    partial = model if training_model is not model and not distributed.active() else None
    stats = _train_epoch(job, config, state or TrainState(), training_model, partial, step, augment, generator, load_batch, progress)
    progress.stop("batch")
    if config.precise_bn_batches and not frozen:
        engine.recalibrate_batchnorm(
            model, load_batch, job.train_set.rows, lambda images: augment.normalize(images), generator,
            config.batch_size, config.precise_bn_batches, step.amp_dtype, step.channels_last,
        )
    distributed.broadcast_buffers(model)  # every rank validates the model rank 0 saves
    probs = distributed.gather_rows(lambda rows: predict_probs(
        model, load_batch, rows, step.device, config.eval_batch_size,
        amp_dtype=step.amp_dtype, image_size=size, channels_last=step.channels_last, normalization=(mean, std),
    ), job.val_rows)
    return _history_row(job, config, optim.current_lr(step.optimizer), stats, probs, epoch, size, started)


def _train_epoch(job: ModelJob, config: RunConfig, state: TrainState, training_model: torch.nn.Module,
                 partial: torch.nn.Module | None, step: engine.StepContext, augment: BatchAugment, generator: torch.Generator,
                 load_batch: LoadBatch, progress: Progress) -> dict[str, float]:
    """engine.train_one_epoch, or with ``job.unlabelled`` FixMatch's or Meta Pseudo Labels' epoch (labelled images in the weak view)."""
    on_progress = lambda done, loss: progress.update("batch", completed=done, loss=loss)  # noqa: E731
    if job.unlabelled is None or state.next_epoch >= config.epochs:  # supervised, or MPL's fine-tune on the labelled part
        return engine.train_one_epoch(training_model, load_batch, job.train_set, augment, step, generator, config.batch_size,
                                      config.sampler, config.log_every, on_progress=on_progress, partial_batch_model=partial)
    views = FixMatchViews(augment.image_size, augment.mean, augment.std, config.randaugment_ops, config.randaugment_magnitude)
    if job.mpl_teacher is not None:
        return _mpl_epoch(job, config, state, training_model, partial, step, views, generator, load_batch, on_progress)
    settings = fixmatch.FixMatchSettings.from_config(config)
    if settings.flex and state.learned is None:
        state.learned = fixmatch.new_learning_state(job.unlabelled)
    learned = None if state.learned is None else state.learned.to(step.device)
    stats = fixmatch.train_one_epoch(training_model, load_batch, job.train_set, job.unlabelled, views, step, generator,
                                     config.batch_size, settings, learned, config.sampler, config.log_every, on_progress, partial)
    state.learned = None if learned is None else learned.cpu()  # saved in checkpoint.pt: a resume goes on from it
    return stats


def total_epochs(job: ModelJob, config: RunConfig) -> int:
    """--epochs, and for a Meta Pseudo Labels student its fine-tune epochs on the labelled part after them."""
    return config.epochs + (config.mpl_finetune_epochs if job.mpl_teacher is not None and job.unlabelled is not None else 0)


def _mpl_epoch(job: ModelJob, config: RunConfig, state: TrainState, training_model: torch.nn.Module,
               partial: torch.nn.Module | None, step: engine.StepContext, views: FixMatchViews, generator: torch.Generator,
               load_batch: LoadBatch, on_progress: Callable[[int, float | None], None]) -> dict[str, float]:
    """One epoch of the student with its Meta Pseudo Labels teacher, rebuilt from ``state.mpl`` and saved back into it."""
    teacher, module = _mpl_teacher(job, config, state, step)
    teacher_lr = (config.mpl_teacher_lr or config.lr) * optim.current_lr(step.optimizer) / config.lr  # --lr's schedule
    for group in teacher.optimizer.param_groups:
        group["lr"] = teacher_lr
    stats = meta_pseudo_labels.train_one_epoch(
        training_model, teacher, load_batch, job.train_set, job.unlabelled, views, step, generator, config.batch_size,
        meta_pseudo_labels.MplSettings.from_config(config), config.sampler, config.log_every, on_progress, partial)
    state.mpl = teacher.state(module)  # in checkpoint.pt: a resume goes on from it
    return stats


def _mpl_teacher(job: ModelJob, config: RunConfig, state: TrainState,
                 step: engine.StepContext) -> tuple[meta_pseudo_labels.Teacher, torch.nn.Module]:
    """The teacher (its training wrapper under torchrun) and its module: from ``job.mpl_teacher`` at first, else ``state.mpl``."""
    teacher_job = replace(job, arch=config.arch, weights=str(job.mpl_teacher), dropout=config.teacher_dropout,
                          drop_connect=config.teacher_drop_connect)
    with torch.random.fork_rng(devices=[]):  # building it draws random initial weights: not the epoch's draws
        module = build_model(teacher_job, config, step.device)
    optimizer = optim.create_optimizer(module.parameters(), config, step.device)
    baseline, steps = torch.zeros((), device=step.device), 0
    if state.mpl is not None:
        module.load_state_dict(state.mpl["model"])
        optim.load_optimizer_state(optimizer, state.mpl["optimizer"])
        baseline, steps = state.mpl["baseline"].to(step.device), int(state.mpl["steps"])
    module.train()
    wrapped = distributed.wrap_model(module, step.device, False)
    return meta_pseudo_labels.Teacher(wrapped, optimizer, baseline, steps), module


def _set_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freeze the backbone (feature extraction, head warm-up) or train everything; then train mode."""
    if frozen:
        models.freeze_backbone(model)
    else:
        models.unfreeze_all(model)
    models.set_train_mode(model, frozen)


def _history_row(job: ModelJob, config: RunConfig, lr: float, stats: dict[str, float], probs: np.ndarray, epoch: int,
                 size: int, started: float) -> dict:
    """history.csv's row of an epoch, plus its model-selection ``score``."""
    val = validation_metrics(job.val_labels, probs, job.classes, config.positive_class)
    val["loss"] = probabilities_loss(job.val_labels, probs)
    row = {
        layout.EPOCH: epoch + 1, layout.LR: lr, layout.TRAIN_LOSS: stats["train_loss"],
        layout.VAL_LOSS: val["loss"], **{f"val_{k}": v for k, v in val.items() if k != "loss"},
        layout.SECONDS: time.perf_counter() - started, layout.IMAGES_PER_S: stats["images_per_s"],
        layout.IMAGE_SIZE: size,
    }
    if "unlabelled_used" in stats:  # FixMatch: the fraction of unlabelled images above their threshold
        row[layout.UNLABELLED_USED] = stats["unlabelled_used"]
    for key in ("teacher_loss", "mpl_feedback"):  # Meta Pseudo Labels: its teacher's loss and the student's mean feedback
        if key in stats:
            row[key] = stats[key]
    row["score"] = selection_score(val, config.selection_metric)
    return row


def _record_epoch(state: TrainState, model: torch.nn.Module, row: dict, epoch: int) -> None:
    score = row.pop("score")
    state.history.append(row)
    state.next_epoch = epoch + 1
    if score > state.best_score:
        state.best_score, state.best_epoch, state.stale_epochs = score, epoch + 1, 0
        state.best_state = copy.deepcopy(model.state_dict())
    else:
        state.stale_epochs += 1


def _save_checkpoint(job: ModelJob, training: Training) -> None:
    state, scheduler, scaler = training.state, training.scheduler, training.scaler
    train_state = {k: getattr(state, k) for k in ("next_epoch", "best_score", "best_epoch", "best_state", "stale_epochs", "history",
                                                  "learned", "mpl")}
    checkpoint.save(job.out_dir / layout.CHECKPOINT, {
        "model": training.model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "next_epoch": state.next_epoch,
        "rng": checkpoint.capture_rng_state(),
        "train_state": train_state,
        IDENTITY: job.identity,
    })
    # history.csv after the checkpoint: it never lists an epoch the checkpoint lacks
    atomic.write_csv(job.out_dir / layout.HISTORY, pd.DataFrame(state.history))


def _class_weights(job: ModelJob, config: RunConfig, device: torch.device) -> torch.Tensor | None:
    weights = class_weights(job.train_set.labels, len(job.classes), config.class_weights)
    return None if weights is None else weights.to(device)


def _save_model(job: ModelJob, config: RunConfig, state: TrainState, path: Path) -> None:
    spec = models.model_spec(job.arch, len(job.classes), job.dropout, job.drop_connect, config.hidden_units)
    checkpoint.save(path, {
        "spec": spec,
        "model": state.best_state,
        "classes": job.classes,
        "positive": config.positive,
        "image_size": config.image_size,
        "preprocess": {k: getattr(config, k) for k in ("image_size", "crop_black", "crop_threshold", "equalize", "center_crop")},
        "selection": {"metric": config.selection_metric, "score": state.best_score, "epoch": state.best_epoch, "select": config.select},
        **job.extra,
        IDENTITY: job.identity,
    })
    logger.info("%s: best epoch %d (%s %.4f), saved %s", job.name, state.best_epoch, config.selection_metric, state.best_score, path)
