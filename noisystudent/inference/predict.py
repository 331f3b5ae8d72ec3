"""Batched prediction: class probabilities of one model for cache rows. Touches no files and returns values.

Images come from the decoded uint8 cache by row index (``load_batch``), are
normalised as the model expects (``normalize``) and predicted in eval mode,
with test-time augmentation (``tta``) when asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from noisystudent.device import autocast
from noisystudent.inference import tta
from noisystudent.inference.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalization, normalize


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    load_batch: Callable[[torch.Tensor], torch.Tensor],
    rows: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    tta_mode: str = "none",
    amp_dtype: torch.dtype | None = None,
    image_size: int | None = None,
    channels_last: bool = False,
    on_progress: Callable[[int], None] | None = None,
    normalization: Normalization | None = None,
    full_batch_model: torch.nn.Module | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) of an un-noised model (eval mode) for cache rows.

    ``normalization`` is the (mean, std) the model expects
    (``models.input_normalization(arch)``); None means ImageNet's.
    ``full_batch_model`` (``model`` compiled, e.g. as a CUDA graph) predicts
    the batches of exactly ``batch_size`` rows; ``model`` the last, partial one,
    so that no second graph is recorded for its shape.
    """
    model.eval()
    outputs = []
    net = model

    def forward(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            return net(x).float()

    mean, std = normalization or (IMAGENET_MEAN, IMAGENET_STD)
    done = 0
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        net = full_batch_model if full_batch_model is not None and len(batch_rows) == batch_size else model
        images = normalize(load_batch(batch_rows), image_size, mean, std)
        outputs.append(tta.predict_tta(forward, images, tta_mode))
        done += len(batch_rows)
        if on_progress:
            on_progress(done)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).cpu().numpy().astype(np.float32)
