"""FixMatch (Sohn et al. 2020), optionally with FlexMatch's class-wise thresholds (Zhang et al. 2021): one epoch.

Each step takes B labelled images and mu * B images without labels. The model
sees all of them in one forward pass (as the reference code does, so BatchNorm
normalises over the whole step): the labelled images and the unlabelled ones in
their weak view (flip and shift), and the unlabelled ones again in their strong
view (RandAugment + Cutout; ``fixmatch_views``). The loss is

    L = L_s + lambda_u * L_u,
    L_u = 1 / (mu B) * sum_b 1[max p_b >= T(y_b)] * CE(y_b, strong logits_b),  y_b = argmax p_b,

where ``p_b`` is the softmax of the weak view's logits, never differentiated.
``T`` is the threshold tau for every class, or with FlexMatch tau * M(beta_c):
beta_c is class c's learning effect (how many unlabelled images were last
predicted as c with confidence >= tau), normalised by the largest class count or,
during the warm-up, by the number of images not yet predicted confidently, and
M(x) = x / (2 - x) (their convex mapping).

An epoch is one pass over the labelled images; the unlabelled images are drawn
as a stream of random permutations, so every one is seen about equally often.
Nothing here reads a label of an unlabelled image: an ``UnlabelledSet`` holds
cache rows only. These functions touch no files and return values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from noisystudent.config.run_config import RunConfig
from noisystudent.device import autocast, to_device
from noisystudent.training import distributed, engine, sampling
from noisystudent.training.engine import StepContext, TrainSet
from noisystudent.training.fixmatch_views import FixMatchViews
from noisystudent.training.losses import soft_cross_entropy

UNUSED = -1  # FlexMatch: an unlabelled image not yet predicted with confidence >= tau


@dataclass(frozen=True)
class FixMatchSettings:
    """FixMatch's hyper-parameters; defaults are the paper's (``RunConfig``'s ``fixmatch_*`` fields)."""

    threshold: float = 0.95  # tau
    mu: int = 7  # unlabelled images per labelled image in a step
    lambda_u: float = 1.0  # weight of the unlabelled loss
    flex: bool = False  # FlexMatch's class-wise thresholds

    @classmethod
    def from_config(cls, config: RunConfig) -> FixMatchSettings:
        return cls(config.fixmatch_threshold, config.fixmatch_mu, config.fixmatch_lambda_u, config.fixmatch_flex)


@dataclass
class UnlabelledSet:
    """Images FixMatch learns from without labels: cache rows, and nothing else."""

    rows: torch.Tensor  # (N,) int64 cache rows

    def __len__(self) -> int:
        return len(self.rows)


def new_learning_state(unlabelled: UnlabelledSet) -> torch.Tensor:
    """FlexMatch's record: the class each unlabelled image was last confidently predicted as, ``UNUSED`` at first."""
    return torch.full((len(unlabelled),), UNUSED, dtype=torch.long)


def flex_thresholds(learned: torch.Tensor, n_classes: int, threshold: float) -> torch.Tensor:
    """(C,) thresholds tau * M(beta_c), M(x) = x / (2 - x), beta with FlexMatch's warm-up.

    Example:
        >>> flex_thresholds(torch.tensor([0, 0, 1, -1]), 2, 0.9)  # counts 2 and 1, 1 unused: beta 1 and 0.5
        tensor([0.9000, 0.3000])
    """
    counts = torch.bincount(learned[learned >= 0], minlength=n_classes).float()
    unused = (learned == UNUSED).sum().float()
    beta = counts / torch.clamp(torch.maximum(counts.max(), unused), min=1.0)  # warm-up: unused images count as a class
    return threshold * beta / (2 - beta)


def unlabelled_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                    thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_u and, per image, whether it counted, its confidence and its pseudo-label (the weak view's argmax).

    Images whose weak-view confidence is below their class's threshold add 0
    but still count in the mean's denominator (mu B), as in the paper.

    Example:
        >>> weak = torch.tensor([[4.0, 0.0], [0.0, 0.1]])  # confident (0.98) and not (0.52)
        >>> loss, used, _, pseudo = unlabelled_loss(weak, torch.zeros(2, 2), torch.full((2,), 0.95))
        >>> round(float(loss), 4), used.tolist(), pseudo.tolist()  # ln(2) / 2: only the first image counts
        (0.3466, [True, False], [0, 1])
    """
    probs = torch.softmax(weak_logits.detach().float(), dim=1)
    confidence, pseudo = probs.max(dim=1)
    used = confidence >= thresholds[pseudo]
    per_image = F.cross_entropy(strong_logits.float(), pseudo, reduction="none")
    return (per_image * used).mean(), used, confidence, pseudo


def step_loss(model: torch.nn.Module, labelled: torch.Tensor, targets: torch.Tensor, weak: torch.Tensor, strong: torch.Tensor,
              thresholds: torch.Tensor, step: StepContext, settings: FixMatchSettings,
              weights: tuple[float, float] = (1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(loss to backpropagate, L_s + lambda_u L_u unweighted, unlabelled_loss's per-image values) of one step.

    One forward pass over the labelled views, the weak and the strong views;
    ``weights`` are this rank's shares of the labelled and unlabelled global
    batches under torchrun (1 otherwise).
    """
    images = torch.cat([labelled, weak, strong])
    if step.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(step.device, step.amp_dtype):
        logits = model(images)
    logits_l, logits_weak, logits_strong = logits.split([len(labelled), len(weak), len(strong)])
    loss_s = soft_cross_entropy(logits_l, targets, step.class_weights, step.label_smoothing)
    loss_u, used, confidence, pseudo = unlabelled_loss(logits_weak, logits_strong, thresholds)
    scaled = weights[0] * loss_s + settings.lambda_u * weights[1] * loss_u
    return scaled, loss_s + settings.lambda_u * loss_u, {"used": used, "confidence": confidence, "pseudo": pseudo}


def record_learning(learned: torch.Tensor, positions: torch.Tensor, values: dict[str, torch.Tensor], threshold: float) -> None:
    """FlexMatch: images predicted with confidence >= tau now belong to their predicted class (every rank's)."""
    selected = values["confidence"] >= threshold
    learned[distributed.gather_cat(positions[selected])] = distributed.gather_cat(values["pseudo"][selected])


def unlabelled_stream(size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` positions in 0..size-1: random permutations one after another, cut to length."""
    rounds = -(-count // size)
    return torch.cat([torch.randperm(size, generator=generator) for _ in range(rounds)])[:count]


def step_slices(labelled: TrainSet, n_unlabelled: int, mu: int, batch_size: int, sampler_mode: str,
                generator: torch.Generator) -> list[tuple[torch.Tensor, tuple, tuple]]:
    """Each step's global labelled batch with this rank's slices of it and of its ``mu`` unlabelled images per labelled one.

    Drawn here, before the caller draws its noise generator from ``generator`` (the order fixes the results);
    a step where this rank gets no image is left out. Shared by FixMatch and Meta Pseudo Labels.
    """
    order = sampling.epoch_indices(labelled.labels, labelled.copies, sampler_mode, generator)
    global_batches = sampling.batches(order, batch_size, drop_last_if_single=True)
    stream = unlabelled_stream(n_unlabelled, mu * sum(len(b) for b in global_batches), generator)
    steps, start = [], 0
    for batch in global_batches:
        positions, start = stream[start : start + mu * len(batch)], start + mu * len(batch)
        mine, mine_u = distributed.local_slice(batch, batch_size), distributed.local_slice(positions, batch_size)
        if mine is not None and mine_u is not None:
            steps.append((batch, mine, mine_u))
    return steps


def train_one_epoch(
    model: torch.nn.Module,
    load_batch: Callable[[torch.Tensor], torch.Tensor],
    labelled: TrainSet,
    unlabelled: UnlabelledSet,
    views: FixMatchViews,
    step: StepContext,
    generator: torch.Generator,
    batch_size: int,
    settings: FixMatchSettings,
    learned: torch.Tensor | None = None,
    sampler_mode: str = "none",
    log_every: int = 20,
    on_progress: Callable[[int, float | None], None] | None = None,
    partial_batch_model: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One pass over ``labelled`` with mu unlabelled images per labelled one; return the epoch's statistics.

    ``learned`` (FlexMatch's record, ``new_learning_state``, on ``step.device``)
    is updated in place; None: fixed thresholds. Returns ``train_loss`` (mean
    L_s + lambda_u L_u per step), ``images`` (labelled images seen), ``seconds``,
    ``images_per_s`` (labelled and unlabelled images) and ``unlabelled_used``
    (the fraction of unlabelled images above their threshold).
    """
    slices = step_slices(labelled, len(unlabelled), settings.mu, batch_size, sampler_mode, generator)
    noise = distributed.rank_generator(generator)
    targets = to_device(labelled.targets, step.device)
    n_classes = targets.shape[1]
    fixed = torch.full((n_classes,), settings.threshold, device=step.device)
    totals = {"loss": torch.zeros((), device=step.device), "used": torch.zeros((), device=step.device)}
    seen, seen_u, steps, started = 0, 0, 0, time.perf_counter()
    for batch, mine, mine_u in slices:
        step_model = model if len(batch) == batch_size or partial_batch_model is None else partial_batch_model
        thresholds = flex_thresholds(learned, n_classes, settings.threshold) if learned is not None else fixed
        values = _train_step(step_model, load_batch, labelled, targets, unlabelled, views, step, noise, settings,
                             mine, mine_u, thresholds)
        if learned is not None:
            record_learning(learned, to_device(mine_u[0], step.device), values, settings.threshold)
        totals["loss"] += values["loss"].detach()
        totals["used"] += values["used"].sum()
        seen, seen_u, steps = seen + len(mine[0]), seen_u + len(mine_u[0]), steps + 1
        running = engine.checked_mean(totals["loss"], steps) if log_every and steps % log_every == 0 else None
        if on_progress:
            on_progress(seen, running)
    return _epoch_stats(totals, seen, seen_u, steps, time.perf_counter() - started)


def _train_step(model: torch.nn.Module, load_batch: Callable[[torch.Tensor], torch.Tensor], labelled: TrainSet,
                targets: torch.Tensor, unlabelled: UnlabelledSet, views: FixMatchViews, step: StepContext,
                noise: torch.Generator, settings: FixMatchSettings, mine: tuple[torch.Tensor, float],
                mine_u: tuple[torch.Tensor, float], thresholds: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of this rank's part of the step, one optimizer step; returns step_loss's per-image values and the loss."""
    (batch, weight), (positions, weight_u) = mine, mine_u
    images = load_batch(unlabelled.rows[positions])
    generator = engine.augment_generator(noise, step.device)
    weak_l, weak, strong = views.weak(load_batch(labelled.rows[batch]), generator), views.weak(images, generator), views.strong(images, generator)
    scaled, loss, values = step_loss(model, weak_l, targets[to_device(batch, step.device)], weak, strong, thresholds, step,
                                     settings, (weight, weight_u))
    engine.optimizer_step(scaled, step)
    return {**values, "loss": loss}


def _epoch_stats(totals: dict[str, torch.Tensor], seen: int, seen_u: int, steps: int, seconds: float) -> dict[str, float]:
    loss, used = float(totals["loss"].item()), float(totals["used"].item())
    if distributed.active():  # over all ranks: each rank's mean loss weighs by its steps (the same count on every rank)
        loss, used, seen, seen_u, steps = distributed.sum_over_ranks(loss, used, seen, seen_u, steps)
    mean_loss = engine.checked_mean(torch.tensor(loss), max(int(steps), 1))
    return {"train_loss": mean_loss, "images": int(seen), "seconds": seconds,
            "images_per_s": (seen + seen_u) / max(seconds, 1e-9), "unlabelled_used": used / max(seen_u, 1)}
