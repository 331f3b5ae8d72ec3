"""Choosing the device and the mixed-precision mode."""

from __future__ import annotations

import torch

from noisystudent.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device {name!r} was requested but no CUDA GPU is available; use --device cpu.")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32. CPU always runs fp32 (exact resume)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16  # auto and bf16: bf16 needs no loss scaling
