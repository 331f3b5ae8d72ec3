"""Cross-entropy against probability targets (labels and soft pseudo-labels).

One loss serves the teacher (one-hot targets) and the students (one-hot
labels mixed with soft or hard pseudo-labels). For each sample i with target
distribution t_i:

    l_i = -sum_c t'_ic * log_softmax(logits_i)_c,  t' = t * (1 - eps) + eps / C
    w_i = (sum_c t_ic * class_weight_c) * sample_weight_i
    loss = sum_i w_i * l_i / sum_i w_i

With one-hot targets, this is PyTorch's weighted-mean convention, so it equals
``F.cross_entropy(logits, y, weight=class_weights)``, and without class weights
``F.cross_entropy(logits, y, label_smoothing=eps)``. A soft target's weight is
its expected class weight, computed from the unsmoothed target. (With both
class weights and smoothing PyTorch weights the smoothing term per class
instead; here a sample is weighted by its own class only.)

The loss is computed in float32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean cross-entropy of ``logits`` (B, C) against ``targets`` (B, C) probabilities."""
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be (B, C).")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
    log_probs = F.log_softmax(logits.float(), dim=1)
    targets = targets.float()
    smoothed = targets * (1.0 - label_smoothing) + label_smoothing / logits.shape[1]
    losses = -(smoothed * log_probs).sum(dim=1)
    if class_weights is None and sample_weights is None:
        return losses.mean()
    weights = torch.ones_like(losses)
    if class_weights is not None:
        # Elementwise, not a matmul: autocast would run a matmul in bf16/fp16.
        weights = (targets * class_weights.to(device=logits.device, dtype=torch.float32)).sum(dim=1)
    if sample_weights is not None:
        weights = weights * sample_weights.to(device=logits.device, dtype=torch.float32)
    # A batch whose weights are all 0 gives loss 0 (PyTorch would give NaN).
    return (weights * losses).sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)
