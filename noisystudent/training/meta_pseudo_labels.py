"""Meta Pseudo Labels (Pham et al. 2021): one epoch of a teacher and a student trained together.

Each step takes B labelled images (their weak view) and mu * B images without
labels in their weak and strong views (``fixmatch_views``), and:

1. the teacher predicts all three; its hard pseudo-label of an unlabelled image
   is the argmax of its prediction on the strong view;
2. the student takes one optimizer step on CE(pseudo-label, student(strong));
   its labelled cross-entropy is measured before (in the same forward pass) and
   after that step;
3. the feedback h = CE_l(before) - CE_l(after), minus a moving average of h
   (the baseline), is 0 during the first ``student_wait_steps`` steps;
4. the teacher takes one step on

       L_T = CE(y_l, teacher(x_l)) + lambda_u * min(1, step / uda_steps) * L_UDA + h * CE(pseudo, teacher(strong)),

   where L_UDA is UDA's consistency: the soft cross-entropy between the
   teacher's weak-view prediction sharpened by a temperature (not
   differentiated), counted where its top probability reaches a threshold, and
   its strong-view prediction.

h is the first-order approximation of the paper's dot product of the
student's two gradients (its labelled loss falls by about lr * g_l . g_u), so a
pseudo-label that lowers the student's labelled loss gets h > 0 and is
reinforced. The reference code and its PyTorch port write the difference the
other way round (CE_l(after) - CE_l(before); kekmodel/MPL-pytorch issue 6);
docs/methods.md says why this package follows the paper's derivation.

Nothing here reads a label of an unlabelled image (``UnlabelledSet`` holds
cache rows only). These functions touch no files and return values; the
teacher's state is a ``Teacher`` that the caller saves with the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from noisystudent.config.run_config import RunConfig
from noisystudent.device import autocast, to_device
from noisystudent.training import distributed, engine
from noisystudent.training.engine import StepContext, TrainSet
from noisystudent.training.fixmatch import UnlabelledSet, step_slices
from noisystudent.training.fixmatch_views import FixMatchViews
from noisystudent.training.losses import soft_cross_entropy


@dataclass(frozen=True)
class MplSettings:
    """Meta Pseudo Labels' hyper-parameters (``RunConfig``'s ``mpl_*`` fields; reference values in their help)."""

    uda_threshold: float = 0.95
    uda_temperature: float = 0.7
    lambda_u: float = 1.0
    uda_steps: int = 500
    mu: int = 7
    student_wait_steps: int = 50
    baseline_decay: float = 0.99

    @classmethod
    def from_config(cls, config: RunConfig) -> MplSettings:
        return cls(config.mpl_uda_threshold, config.mpl_uda_temperature, config.mpl_lambda_u, config.mpl_uda_steps,
                   config.mpl_mu, config.mpl_student_wait_steps, config.mpl_baseline_decay)


@dataclass
class Teacher:
    """The MPL teacher as it trains: its model, optimizer, the feedback's moving-average baseline and the steps taken."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    baseline: torch.Tensor  # () float32 on the device: no host sync per step
    steps: int = 0

    def state(self, model: torch.nn.Module | None = None) -> dict:
        """What checkpoint.pt keeps (``model``: the unwrapped module of a DDP-wrapped ``self.model``), weights on the CPU."""
        weights = {name: value.detach().cpu() for name, value in (model or self.model).state_dict().items()}
        return {"model": weights, "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline.detach().cpu(), "steps": self.steps}


def uda_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float,
             temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """UDA's consistency loss and, per image, whether it counted.

    The target is softmax(weak / temperature), not differentiated; images whose
    top target probability is below ``threshold`` add 0 but count in the mean.

    Example:
        >>> weak = torch.tensor([[4.0, 0.0], [0.0, 0.1]])  # the second is not confident
        >>> loss, used = uda_loss(weak, torch.zeros(2, 2), 0.9, 1.0)
        >>> round(float(loss), 4), used.tolist()  # ln(2) / 2: uniform strong logits, one image of two
        (0.3466, [True, False])
    """
    target = torch.softmax(weak_logits.detach().float() / temperature, dim=1)
    used = target.max(dim=1).values >= threshold
    per_image = -(target * F.log_softmax(strong_logits.float(), dim=1)).sum(dim=1)
    return (per_image * used).mean(), used


def feedback(before: torch.Tensor, after: torch.Tensor, baseline: torch.Tensor, decay: float,
             active: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(h minus the baseline, or 0 while ``active`` is False; the updated baseline); h = before - after.

    The baseline is updated first, as in the reference, and also while the
    feedback waits, so that it is warm when the feedback starts.

    Example:
        >>> h, baseline = feedback(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.0), 0.9, True)
        >>> round(float(h), 4), round(float(baseline), 4)  # h = 0.5, baseline 0.05
        (0.45, 0.05)
    """
    h = (before - after).detach().float()
    baseline = decay * baseline + (1 - decay) * h
    return (h - baseline) if active else torch.zeros_like(h), baseline


def uda_weight(settings: MplSettings, steps: int) -> float:
    """lambda_u * min(1, (step + 1) / uda_steps): the ramp of the teacher's UDA loss."""
    return settings.lambda_u * min(1.0, (steps + 1) / settings.uda_steps)


def mpl_step(student: torch.nn.Module, teacher: Teacher, labelled: torch.Tensor, targets: torch.Tensor, weak: torch.Tensor,
             strong: torch.Tensor, step: StepContext, settings: MplSettings) -> dict[str, torch.Tensor]:
    """One step of the student and then of the teacher (``teacher`` is updated in place); returns the step's values.

    ``labelled`` are the labelled images' views with ``targets`` (N, C);
    ``weak`` and ``strong`` the unlabelled images' two views. ``step`` steps the
    student; the teacher steps with its own optimizer (and no gradient scaler).
    """
    t_labelled, t_weak, t_strong = _forward(teacher.model, [labelled, weak, strong], step)
    pseudo = t_strong.detach().argmax(dim=1)
    s_labelled, s_strong = _forward(student, [labelled, strong], step)
    hard = targets.argmax(dim=1)
    before = F.cross_entropy(s_labelled.detach().float(), hard)
    student_loss = F.cross_entropy(s_strong.float(), pseudo, label_smoothing=step.label_smoothing)
    engine.optimizer_step(student_loss, step)
    with torch.no_grad():
        after = F.cross_entropy(_forward(student, [labelled], step)[0].float(), hard)
    active = teacher.steps >= settings.student_wait_steps
    h, teacher.baseline = feedback(_rank_mean(before), _rank_mean(after), teacher.baseline, settings.baseline_decay, active)
    supervised = soft_cross_entropy(t_labelled, targets, step.class_weights, step.label_smoothing)
    consistency, used = uda_loss(t_weak, t_strong, settings.uda_threshold, settings.uda_temperature)
    teacher_loss = (supervised + uda_weight(settings, teacher.steps) * consistency
                    + h * F.cross_entropy(t_strong.float(), pseudo))
    engine.optimizer_step(teacher_loss, replace(step, optimizer=teacher.optimizer, scaler=None))
    teacher.steps += 1
    return {"student_loss": student_loss.detach(), "teacher_loss": teacher_loss.detach(), "h": h, "used": used,
            "pseudo": pseudo}


def _forward(model: torch.nn.Module, parts: list[torch.Tensor], step: StepContext) -> list[torch.Tensor]:
    """``model`` on the parts in one forward pass (BatchNorm normalises over all of them), split back."""
    images = torch.cat(parts)
    if step.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(step.device, step.amp_dtype):
        logits = model(images)
    return list(logits.split([len(part) for part in parts]))


def _rank_mean(value: torch.Tensor) -> torch.Tensor:
    """Under torchrun the mean over ranks, so that every rank's baseline and feedback are the same; else ``value``."""
    if not distributed.active():
        return value
    total = value.detach().float().clone()
    torch.distributed.all_reduce(total)
    return total / distributed.world()


def train_one_epoch(
    student: torch.nn.Module,
    teacher: Teacher,
    load_batch: Callable[[torch.Tensor], torch.Tensor],
    labelled: TrainSet,
    unlabelled: UnlabelledSet,
    views: FixMatchViews,
    step: StepContext,
    generator: torch.Generator,
    batch_size: int,
    settings: MplSettings,
    sampler_mode: str = "none",
    log_every: int = 20,
    on_progress: Callable[[int, float | None], None] | None = None,
    partial_batch_model: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One pass over ``labelled`` with mu unlabelled images per labelled one; return the epoch's statistics.

    Returns ``train_loss`` (the student's mean loss on pseudo-labels),
    ``images`` (labelled images seen), ``seconds``, ``images_per_s`` (labelled
    and unlabelled), ``unlabelled_used`` (the fraction of unlabelled images in
    the teacher's UDA loss), ``teacher_loss`` and ``mpl_feedback`` (mean h).
    """
    slices = step_slices(labelled, len(unlabelled), settings.mu, batch_size, sampler_mode, generator)
    noise = distributed.rank_generator(generator)
    targets = to_device(labelled.targets, step.device)
    totals = {key: torch.zeros((), device=step.device) for key in ("student_loss", "teacher_loss", "h", "used")}
    seen, seen_u, steps, started = 0, 0, 0, time.perf_counter()
    for batch, mine, mine_u in slices:
        model = student if len(batch) == batch_size or partial_batch_model is None else partial_batch_model
        generator_b = engine.augment_generator(noise, step.device)
        images = load_batch(unlabelled.rows[mine_u[0]])
        weak_l = views.weak(load_batch(labelled.rows[mine[0]]), generator_b)
        weak, strong = views.weak(images, generator_b), views.strong(images, generator_b)
        values = mpl_step(model, teacher, weak_l, targets[to_device(mine[0], step.device)], weak, strong, step, settings)
        for key in ("student_loss", "teacher_loss", "h"):
            totals[key] += values[key]
        totals["used"] += values["used"].sum()
        seen, seen_u, steps = seen + len(mine[0]), seen_u + len(mine_u[0]), steps + 1
        running = engine.checked_mean(totals["student_loss"], steps) if log_every and steps % log_every == 0 else None
        if on_progress:
            on_progress(seen, running)
    return _epoch_stats(totals, seen, seen_u, steps, time.perf_counter() - started)


def _epoch_stats(totals: dict[str, torch.Tensor], seen: int, seen_u: int, steps: int, seconds: float) -> dict[str, float]:
    loss, teacher_loss, h, used = (float(totals[k].item()) for k in ("student_loss", "teacher_loss", "h", "used"))
    if distributed.active():  # over all ranks: each rank's mean weighs by its steps (the same count on every rank)
        loss, teacher_loss, h, used, seen, seen_u, steps = distributed.sum_over_ranks(loss, teacher_loss, h, used, seen, seen_u, steps)
    count = max(int(steps), 1)
    return {"train_loss": engine.checked_mean(torch.tensor(loss), count), "images": int(seen), "seconds": seconds,
            "images_per_s": (seen + seen_u) / max(seconds, 1e-9), "unlabelled_used": used / max(seen_u, 1),
            "teacher_loss": engine.checked_mean(torch.tensor(teacher_loss), count), "mpl_feedback": h / count}
