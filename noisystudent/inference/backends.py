"""Which engine runs the forward passes of trained models: ONNX Runtime or eager PyTorch.

Both are callables from uint8 pixels (B, 3, S, S) to fold probabilities
(K, B, C) float32 and give the same numbers (within 1e-4; tests/test_onnx.py).
``auto`` picks the fastest available on the device: ONNX Runtime on a CPU when
the ``onnx`` extra is installed (3.7x eager PyTorch for EfficientNet-B0 on 2 cores,
docs/throughput.md), PyTorch on a GPU (bf16 autocast, channels_last).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from noisystudent.device import amp_dtype, to_device
from noisystudent.errors import ConfigError
from noisystudent.inference import onnx_export, onnx_runtime
from noisystudent.inference.predict import predict_probs

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
# Exporting one model costs a few seconds; below this much work (images x (side/224)^2)
# the pipeline's per-model predictions stay in PyTorch, which needs no export.
EXPORT_PAYS_OFF = 2000

BatchPredictor = Callable[[np.ndarray], np.ndarray]


def resolve_backend(name: str, device: torch.device) -> str:
    """onnx or torch for ``name`` (auto, onnx, torch) on ``device``; ConfigError when onnx is missing."""
    if name not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}; got {name!r}.")
    if name == "auto":
        return "onnx" if device.type == "cpu" and onnx_runtime.available() else "torch"
    if name == "onnx" and not onnx_runtime.available():
        raise ConfigError(f"--backend onnx needs onnx and onnxruntime; {onnx_runtime.INSTALL_HINT} or use --backend torch.")
    return name


def ensemble_predictor(ensemble, tta_mode: str, backend: str = "auto") -> BatchPredictor:
    """The fold probabilities of every model of ``ensemble`` for a batch of pixels."""
    chosen = resolve_backend(backend, ensemble.device)
    logger.info("backend: %s on %s", "ONNX Runtime" if chosen == "onnx" else "PyTorch", ensemble.device)
    if chosen == "torch":
        return TorchModels([(m.model, m.normalization) for m in ensemble.members], ensemble.device, tta_mode, ensemble.config)
    # The run's own rule: fold_probs do not depend on it, so every --voting shares one cached graph.
    model = onnx_runtime.cached_ensemble_export(ensemble, tta_mode, ensemble.config.voting)
    # As many ONNX Runtime threads as PyTorch uses: the caller's torch.set_num_threads holds for both.
    return onnx_runtime.OrtEnsemble(model, torch.get_num_threads(), onnx_runtime.providers_for(ensemble.device.type))


def model_predictor(model: torch.nn.Module, normalization: tuple, device: torch.device, tta_mode: str, config,
                    backend: str) -> BatchPredictor:
    """One model's probabilities (1, B, C) for a batch of pixels; ``backend`` already resolved."""
    if backend == "torch":
        return TorchModels([(model, normalization)], device, tta_mode, config)
    graph = onnx_export.build_graph([model], [normalization], tta_mode, "soft")
    model_bytes = onnx_export.export_graph(graph, config.image_size, {"format": onnx_export.EXPORT_FORMAT})
    return onnx_runtime.OrtEnsemble(model_bytes, torch.get_num_threads(), onnx_runtime.providers_for(device.type))


def pipeline_backend(device: torch.device, n_images: int, image_size: int) -> str:
    """The backend of kfold's per-model predictions: ONNX Runtime on a CPU when the work pays for the export."""
    work = n_images * (image_size / 224) ** 2
    if device.type == "cpu" and onnx_runtime.available() and work >= EXPORT_PAYS_OFF:
        return "onnx"
    return "torch"


class TorchModels:
    """Eager PyTorch: each model in turn on the batch (moved to the device once)."""

    def __init__(self, models: list[tuple[torch.nn.Module, tuple]], device: torch.device, tta_mode: str, config) -> None:
        self.models, self.device, self.tta_mode = models, device, tta_mode
        self.amp = amp_dtype(config.amp, device)
        self.channels_last = device.type == "cuda" and config.channels_last

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        batch = to_device(torch.from_numpy(pixels), self.device)  # pinned, non-blocking on a GPU
        rows = torch.arange(len(batch), device=self.device)  # row batches are slices on the device: no copy per batch
        load = lambda index: batch.index_select(0, index)  # noqa: E731
        return np.stack([
            predict_probs(model, load, rows, self.device, len(batch), self.tta_mode, self.amp,
                          channels_last=self.channels_last, normalization=normalization)
            for model, normalization in self.models
        ])
