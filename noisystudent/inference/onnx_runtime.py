"""Running exported ensembles with ONNX Runtime, and the cache of exports.

Exporting K EfficientNets takes seconds to a minute on a CPU, so the graph of
an ensemble is exported once per (model files, test-time augmentation, voting
rule) and kept in a cache folder outside the run (``cache_dir``): the run
folder is only ever read. The cache key hashes the model files' bytes, so a
retrained model never reuses a stale graph.

onnx and onnxruntime are the optional extra ``onnx``; ``available()`` says
whether they are installed, and nothing here imports them before it is needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from noisystudent.errors import ConfigError
from noisystudent.inference import onnx_export
from noisystudent.inference.model_set import ExportRecord, ModelSet

logger = logging.getLogger(__name__)

CACHE_ENV = "NOISYSTUDENT_CACHE_DIR"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
INSTALL_HINT = "install the onnx extra (pip install 'noisystudent[onnx]')"


def available() -> bool:
    """True when onnx and onnxruntime can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def providers_for(device_type: str) -> list[str]:
    """ONNX Runtime providers for a torch device type; ConfigError when the device's one is missing."""
    import onnxruntime as ort

    if device_type == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER not in ort.get_available_providers():
        raise ConfigError(f"This onnxruntime has no CUDA provider (it has {', '.join(ort.get_available_providers())}); "
                          "use --backend torch on the GPU or install onnxruntime-gpu.")
    return [CUDA_PROVIDER, CPU_PROVIDER]


def create_session(model: bytes | str | Path, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session with every graph optimisation; ``threads`` intra-op threads (None: ORT's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # Idle worker threads sleep instead of spinning, so the decoding threads get the cores
    # between batches (the same reason as OMP_WAIT_POLICY=PASSIVE in cli.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers or [CPU_PROVIDER])


class OrtEnsemble:
    """Callable: uint8 pixels (B, 3, S, S) -> fold probabilities (K, B, C) float32."""

    def __init__(self, model: bytes | str | Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.session = create_session(model, threads, providers)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        fold_probs = self.session.run([onnx_export.OUTPUTS[0]], {onnx_export.INPUT: np.ascontiguousarray(pixels)})[0]
        return np.ascontiguousarray(fold_probs.transpose(1, 0, 2))


# --- the export cache -------------------------------------------------------------------------


def cache_dir() -> Path:
    """$NOISYSTUDENT_CACHE_DIR, else $XDG_CACHE_HOME/noisystudent, else ~/.cache/noisystudent; plus /onnx."""
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "noisystudent"
    return Path(base) / "onnx"


def export_key(files: list[Path], tta_mode: str, rule: str) -> str:
    """A hash of everything the exported graph depends on."""
    import torch

    digest = hashlib.sha256(f"{onnx_export.EXPORT_FORMAT}|{onnx_export.OPSET}|{torch.__version__}|{tta_mode}|{rule}".encode())
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def cached_ensemble_export(models: ModelSet, record: ExportRecord, tta_mode: str, rule: str) -> bytes:
    """The exported graph of ``models``, from the cache when it has been exported before."""
    path = cache_dir() / f"{export_key(list(record.files), tta_mode, rule)}.onnx"
    if path.is_file():
        logger.info("ONNX graph from the cache %s", path)
        return path.read_bytes()
    model = onnx_export.export_ensemble_bytes(models, record, tta_mode, rule)
    try:
        onnx_export.write_export(model, path)
    except OSError as error:  # a read-only home only costs the next call another export
        logger.warning("Could not keep the ONNX graph in %s (%s).", path, error)
    return model
