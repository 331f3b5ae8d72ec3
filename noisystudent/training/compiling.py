"""torch.compile of the training model, and CUDA graphs (``--compile-mode reduce-overhead``) where they can run.

At the study's batch of 15 a B0 step is a few hundred small kernels, each
paying a launch: the GPU idles between them. ``reduce-overhead`` records the
fixed-shape step once as a CUDA graph and replays it with one launch. Only full
batches go through the compiled module (training/engine.py trains the epoch's
partial last batch on the uncompiled one), so one graph serves an epoch; the
optimizer step, the schedulers and fp16's GradScaler run outside the graph, as
eager code, so they need no special handling. CUDA graphs need a CUDA device:
anywhere else the mode falls back to ``default`` and says so in the log of
every model it builds (a run's log must say it, whichever run came first in
the process).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

GRAPH_MODE = "reduce-overhead"


def effective_mode(mode: str, device: torch.device) -> str:
    """The torch.compile mode that runs on ``device``: CUDA graphs only on CUDA, else ``default`` (logged).

    >>> effective_mode("reduce-overhead", torch.device("cpu")), effective_mode("default", torch.device("cpu"))
    ('default', 'default')
    """
    if mode == GRAPH_MODE and device.type != "cuda":
        logger.info("CUDA graphs (--compile-mode %s) need a CUDA device; compiling for %s without them.", GRAPH_MODE, device.type)
        return "default"
    return mode


def compile_options(mode: str, device: torch.device, base: dict) -> dict:
    """torch.compile's keyword arguments: ``base`` (tests: the eager backend) plus the mode where it is not the default."""
    chosen = effective_mode(mode, device)
    return {**base, "mode": chosen} if chosen != "default" else dict(base)


def compile_model(model: torch.nn.Module, mode: str, device: torch.device, base: dict) -> torch.nn.Module:
    """``model`` compiled for ``device`` in ``mode`` (the uncompiled module stays usable for partial batches)."""
    return torch.compile(model, **compile_options(mode, device, base))


def prediction_graphs(model: torch.nn.Module, compile_enabled: bool, mode: str, device: torch.device, base: dict) -> torch.nn.Module | None:
    """``model`` compiled as CUDA graphs for predicting full batches, or None where they do not apply (no
    ``--compile``, another mode, not CUDA): prediction is launch-bound like training at small batches."""
    if not compile_enabled or mode != GRAPH_MODE or device.type != "cuda":
        return None
    return torch.compile(model, **compile_options(mode, device, base))
