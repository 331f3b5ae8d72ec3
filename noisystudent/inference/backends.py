"""Which engine runs the forward passes of trained models: ONNX Runtime or eager PyTorch.

Both are callables from uint8 pixels (B, 3, S, S) to fold probabilities
(K, B, C) float32 and give the same numbers (within 1e-4; tests/test_onnx.py).
``auto`` picks the fastest available on the device: ONNX Runtime on a CPU when
the ``onnx`` extra is installed (3.7x eager PyTorch for EfficientNet-B0 on 2 cores,
docs/throughput.md), PyTorch on a GPU (bf16 autocast, channels_last).
``row_predictor`` serves kfold's rounds: one model, cache rows in, (N, C) out,
in ONNX Runtime only where the work pays for the export (``pipeline_backend``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from noisystudent.device import amp_dtype, to_device
from noisystudent.errors import ConfigError
from noisystudent.inference import onnx_export, onnx_runtime
from noisystudent.inference.model_set import ExportRecord, ModelSet
from noisystudent.inference.predict import predict_probs

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
# Exporting one model costs a few seconds; below this much work (images x (side/224)^2)
# the pipeline's per-model predictions stay in PyTorch, which needs no export.
EXPORT_PAYS_OFF = 2000

BatchPredictor = Callable[[np.ndarray], np.ndarray]  # uint8 pixels (B, 3, S, S) -> probabilities (K, B, C)
RowPredictor = Callable[..., np.ndarray]  # predict(rows, done_before=0): cache rows -> probabilities (N, C)


def resolve_backend(name: str, device: torch.device) -> str:
    """onnx or torch for ``name`` (auto, onnx, torch) on ``device``; ConfigError when onnx is missing."""
    if name not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}; got {name!r}.")
    if name == "auto":
        return "onnx" if device.type == "cpu" and onnx_runtime.available() else "torch"
    if name == "onnx" and not onnx_runtime.available():
        raise ConfigError(f"--backend onnx needs onnx and onnxruntime; {onnx_runtime.INSTALL_HINT} or use --backend torch.")
    return name


def ensemble_predictor(models: ModelSet, record: ExportRecord, tta_mode: str, backend: str = "auto") -> BatchPredictor:
    """The fold probabilities of every model of ``models`` for a batch of pixels; ``record`` keys the export cache."""
    chosen = resolve_backend(backend, models.device)
    logger.info("backend: %s on %s", "ONNX Runtime" if chosen == "onnx" else "PyTorch", models.device)
    if chosen == "torch":
        return TorchModels(models, tta_mode)
    # The run's own rule: fold_probs do not depend on it, so every --voting shares one cached graph.
    model = onnx_runtime.cached_ensemble_export(models, record, tta_mode, record.voting)
    # As many ONNX Runtime threads as PyTorch uses: the caller's torch.set_num_threads holds for both.
    return onnx_runtime.OrtEnsemble(model, torch.get_num_threads(), onnx_runtime.providers_for(models.device.type))


def model_predictor(models: ModelSet, tta_mode: str, backend: str) -> BatchPredictor:
    """The probabilities (K, B, C) of ``models`` (kfold: one) for a batch of pixels; ``backend`` already resolved.

    The ONNX graph is exported afresh (no cache): kfold's models are new each round.
    """
    if backend == "torch":
        return TorchModels(models, tta_mode)
    graph = onnx_export.build_graph(list(models.models), list(models.normalizations), tta_mode, "soft")
    model_bytes = onnx_export.export_graph(graph, models.image_size, {"format": onnx_export.EXPORT_FORMAT})
    return onnx_runtime.OrtEnsemble(model_bytes, torch.get_num_threads(), onnx_runtime.providers_for(models.device.type))


def pipeline_backend(device: torch.device, n_images: int, image_size: int) -> str:
    """The backend of kfold's per-model predictions: ONNX Runtime on a CPU when the work pays for the export."""
    work = n_images * (image_size / 224) ** 2
    if device.type == "cpu" and onnx_runtime.available() and work >= EXPORT_PAYS_OFF:
        return "onnx"
    return "torch"


def row_predictor(models: ModelSet, tta_mode: str, load_batch: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                  n_images: int, n_classes: int, on_progress: Callable[[int], None],
                  full_batch_model: torch.nn.Module | None = None) -> RowPredictor:
    """``predict(rows, done_before=0)`` -> (N, C) probabilities of the one model of ``models`` for cache rows.

    ONNX Runtime on a CPU when it pays off for the ``n_images`` to predict, else
    PyTorch; chosen and exported once, so that every chunk of a pool goes
    through the same backend (the two differ by float rounding).
    ``on_progress(done)`` counts the images done, ``done_before`` included.
    ``full_batch_model`` (the model compiled, e.g. as CUDA graphs) predicts the full batches with PyTorch.
    """
    (model,), (normalization,) = models.models, models.normalizations
    device = models.device
    backend = "torch" if full_batch_model is not None else pipeline_backend(device, n_images, models.image_size)
    predictor = None if backend == "torch" else model_predictor(models, tta_mode, backend)

    def predict(rows: torch.Tensor, done_before: int = 0) -> np.ndarray:
        report = lambda done: on_progress(done_before + done)  # noqa: E731
        if predictor is None:
            return predict_probs(
                model, load_batch, rows, device, batch_size, tta_mode, amp_dtype(models.amp, device),
                channels_last=device.type == "cuda" and models.channels_last, on_progress=report,
                normalization=normalization, full_batch_model=full_batch_model,
            )
        parts = []
        for start in range(0, len(rows), batch_size):
            parts.append(predictor(load_batch(rows[start : start + batch_size]).numpy())[0])
            report(start + len(parts[-1]))
        return np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)

    return predict


class TorchModels:
    """Eager PyTorch: each model in turn on the batch (moved to the device once)."""

    def __init__(self, models: ModelSet, tta_mode: str) -> None:
        self.models = list(zip(models.models, models.normalizations))
        self.device, self.tta_mode = models.device, tta_mode
        self.amp = amp_dtype(models.amp, models.device)
        self.channels_last = models.device.type == "cuda" and models.channels_last

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        batch = to_device(torch.from_numpy(pixels), self.device)  # pinned, non-blocking on a GPU
        rows = torch.arange(len(batch), device=self.device)  # row batches are slices on the device: no copy per batch
        load = lambda index: batch.index_select(0, index)  # noqa: E731
        return np.stack([
            predict_probs(model, load, rows, self.device, len(batch), self.tta_mode, self.amp,
                          channels_last=self.channels_last, normalization=normalization)
            for model, normalization in self.models
        ])
