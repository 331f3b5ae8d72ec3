"""Choosing the device and the mixed-precision mode."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from noisystudent.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"Device {name!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device {name!r} was requested but no CUDA GPU is available; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"Device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32. CPU always runs fp32 (exact resume)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "auto" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16  # pre-Ampere GPUs only emulate bf16 (slowly); fp16 runs with loss scaling
    return torch.bfloat16  # bf16 needs no loss scaling


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device`` without making the host wait for the GPU.

    A copy from ordinary (pageable) host memory to a GPU is synchronous: the
    host waits until the GPU's queue has drained, every step. A copy from
    pinned memory with ``non_blocking`` is queued like a kernel. PyTorch's
    caching host allocator keeps the pinned block until its copy has finished.
    """
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device`` (``amp_dtype``); a no-op context for None (fp32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
