"""One training epoch and precise BatchNorm. These touch no files and return values.

Images come from the decoded uint8 cache by row index; noise (augmentation) is
applied to whole batches on the device. The step loop never synchronises with
the host except every ``log_every`` steps, to report the running loss: index
copies to the device go through pinned memory with ``non_blocking``
(``device.to_device``), and nothing reads a device value back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from noisystudent.device import autocast, to_device
from noisystudent.errors import UserError
from noisystudent.training import distributed, sampling
from noisystudent.training.losses import soft_cross_entropy


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite: a setting (usually the learning rate) the user must change."""


@dataclass
class TrainSet:
    """The images of one training stage, as rows of the cache plus soft targets."""

    rows: torch.Tensor  # (N,) int64 cache rows
    targets: torch.Tensor  # (N, C) float32, each row sums to 1
    copies: np.ndarray | None = None  # (N,) times each row appears per epoch

    @property
    def labels(self) -> np.ndarray:
        return self.targets.argmax(dim=1).numpy()

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class StepContext:
    """What a training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    channels_last: bool = False


def train_one_epoch(
    model: torch.nn.Module,
    load_batch: Callable[[torch.Tensor], torch.Tensor],
    train_set: TrainSet,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    step: StepContext,
    generator: torch.Generator,
    batch_size: int,
    sampler_mode: str = "none",
    log_every: int = 20,
    on_progress: Callable[[int, float | None], None] | None = None,
    partial_batch_model: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Train for one epoch; return mean loss, image count, seconds and images/s.

    ``load_batch(rows)`` returns uint8 images (B,3,H,W) on the device;
    ``augment(images, generator)`` returns normalised, noised float images.
    ``on_progress(images_done, running_loss_or_None)`` is called after every step.
    ``partial_batch_model`` (the uncompiled module of a compiled ``model``)
    trains the batches smaller than ``batch_size``, so that the last batch of
    an epoch does not compile another version of the model.
    """
    order = sampling.epoch_indices(train_set.labels, train_set.copies, sampler_mode, generator)
    noise = distributed.rank_generator(generator)  # under torchrun: this rank's own draws
    loss_sum = torch.zeros((), device=step.device)
    seen, started = 0, time.perf_counter()
    targets_on_device = to_device(train_set.targets, step.device)
    # under torchrun each rank gets its slice of every global batch (training/distributed.py)
    for index, (batch, weight) in enumerate(distributed.local_batches(order, batch_size)):
        images = augment(load_batch(train_set.rows[batch]), augment_generator(noise, step.device))
        step_model = model if len(batch) == batch_size or partial_batch_model is None else partial_batch_model
        loss = _train_step(step_model, images, targets_on_device[to_device(batch, step.device)], step, weight)
        loss_sum += loss.detach() * len(batch)
        seen += len(batch)
        running = None
        if log_every and (index + 1) % log_every == 0:
            running = checked_mean(loss_sum, seen)  # the only host sync in the loop
        if on_progress:
            on_progress(seen, running)
    seconds = time.perf_counter() - started
    if distributed.active():  # the epoch's loss and image count over all ranks
        total, seen = distributed.sum_over_ranks(loss_sum.item(), seen)
        loss_sum, seen = torch.tensor(total), int(seen)
    mean_loss = checked_mean(loss_sum, max(seen, 1))
    return {"train_loss": mean_loss, "images": seen, "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}


def augment_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """Per-batch augmentation generator on the device, seeded from the epoch's CPU generator."""
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())  # CPU generator: no device sync
    sub = torch.Generator(device=device)
    sub.manual_seed(seed)
    return sub


def _train_step(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, step: StepContext,
                weight: float = 1.0) -> torch.Tensor:
    """One optimizer step; ``weight`` scales the gradient (a rank's share of the global batch under DDP)."""
    if step.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(step.device, step.amp_dtype):
        logits = model(images)
    loss = soft_cross_entropy(logits, targets, step.class_weights, step.label_smoothing)
    optimizer_step(loss if weight == 1.0 else loss * weight, step)
    return loss


def optimizer_step(loss: torch.Tensor, step: StepContext) -> None:
    """Backpropagate ``loss`` (through the scaler under fp16) and step the optimizer."""
    step.optimizer.zero_grad(set_to_none=True)
    if step.scaler is not None:
        step.scaler.scale(loss).backward()
        step.scaler.step(step.optimizer)
        step.scaler.update()
    else:
        loss.backward()
        step.optimizer.step()


def checked_mean(loss_sum: torch.Tensor, count: int) -> float:
    value = float(loss_sum.item()) / count
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"The training loss became {value}; lower the learning rate and start a new run with --out "
            "(--resume keeps the old settings), or check the data."
        )
    return value


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module,
    load_batch: Callable[[torch.Tensor], torch.Tensor],
    rows: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    batch_size: int,
    max_batches: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> None:
    """Precise BatchNorm: recompute running statistics as a true average over clean training batches.

    With few steps per epoch, exponential running averages lag far behind the
    weights (or, with a large momentum, follow the last small batch), and an
    eval-mode model predicts a single class. Recomputing them on ``max_batches``
    batches of un-noised images (``prepare``) fixes that (Wu & Johnson 2021).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if not norms or max_batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average
    device = next(model.parameters()).device
    order = torch.randperm(len(rows), generator=generator)
    for batch in sampling.batches(order, batch_size, drop_last_if_single=True)[:max_batches]:
        images = prepare(load_batch(rows[batch]))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            model(images)
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
