"""Optimizers and learning-rate schedules, created from the run configuration."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from noisystudent.config.run_config import RunConfig

# What create_scheduler makes (None: a constant learning rate)
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


def create_optimizer(parameters: Iterable[torch.nn.Parameter], config: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    # fused kernels exist on CUDA only; on CPU the default (foreach/for-loop) path is exact
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, **fused)


# Optimizer settings that say how the update runs on this device, not what it computes.
DEVICE_FLAGS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``, keeping the freshly built optimizer's device flags.

    ``load_state_dict`` replaces every param_group wholesale, ``fused`` and
    ``foreach`` included, so a checkpoint written on another device would switch
    the implementation: a CPU checkpoint (``fused=None``) turns a CUDA optimizer
    built with ``fused=True`` back to the plain path, and GradScaler, which
    decided at construction that this optimizer unscales inside its fused
    kernel, then passes ``grad_scale``/``found_inf`` to a step that refuses them.
    The flags are put back before loading so that torch also places the state
    (e.g. Adam's ``step``) where the current implementation expects it.
    """
    groups = [dict(group) for group in saved["param_groups"]]
    for group, current in zip(groups, optimizer.param_groups):
        for flag in DEVICE_FLAGS:
            if flag in current:
                group[flag] = current[flag]
            else:
                group.pop(flag, None)
    optimizer.load_state_dict({**saved, "param_groups": groups})
    _match_parameter_layout(optimizer)


def _match_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory layout.

    ``load_state_dict`` moves state to the parameter's device and dtype but keeps
    the saved strides: a checkpoint written from a contiguous (CPU) model and
    loaded into a channels_last CUDA model leaves exp_avg contiguous while the
    weights are not, and the fused Adam/AdamW kernels refuse mixed layouts
    (seen on an H200: "params, grads, exp_avgs, and exp_avg_sqs must have same
    dtype, device, and layout").
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def create_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig, epochs: int) -> Scheduler | None:
    """A per-epoch scheduler, or None. ``plateau`` steps on the validation selection metric."""
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if config.scheduler == "plateau":
        mode = "min" if config.selection_metric == "loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=config.gamma, patience=2)
    return None


def step_scheduler(scheduler: Scheduler | None, metric: float) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    else:
        scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
