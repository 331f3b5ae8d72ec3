"""What inference takes from its callers: trained models and their origin as typed plain values.

The stages above (``ensemble.classifier`` for the K fold models of a run,
``run.pipeline`` for one model per round) build these and pass them down, so
that inference never reads attributes of their objects: a dependency the
layer test can see (tests/test_architecture.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from noisystudent.inference.normalize import Normalization


@dataclass(frozen=True)
class ModelSet:
    """Trained models that predict the same pixels together, and how they run."""

    models: tuple[torch.nn.Module, ...]
    normalizations: tuple[Normalization, ...]  # (mean, std) each model expects, in the order of ``models``
    device: torch.device
    amp: str  # the --amp mode; device.amp_dtype resolves it for the device
    channels_last: bool  # the run's --channels-last; it only applies on a GPU
    image_size: int  # side of the square uint8 pixels the models are given (and an ONNX export is traced at)


@dataclass(frozen=True)
class ExportRecord:
    """Where the models of a ModelSet come from: what their ONNX export's metadata records and its cache key hashes."""

    run: Path  # the run folder the models were read from
    files: tuple[Path, ...]  # their model.pt files: the export cache hashes their bytes
    folds: tuple[int, ...]
    kind: str  # teacher or student
    round: int
    architecture: str
    classes: tuple[str, ...]
    positive: str | None  # positive class of metrics and patient calls; None for >2 classes without one
    preprocess: dict[str, Any]  # the PreprocessSpec's fields, as dataclasses.asdict gives them
    voting: str  # the run's voting rule: an ensemble's cached export votes by it
