"""The K fold models of a run as one ONNX graph: uint8 pixels in, probabilities and the vote out.

The graph does everything ``ensemble predict`` does after decoding, so ONNX
Runtime alone (no PyTorch, no noisystudent) reproduces its numbers:

    pixels      uint8  (batch, 3, S, S)  as ``preprocess.preprocess`` returns them
    -> per model: (x - 255 mean) / (255 std) with the (mean, std) its arch expects,
       test-time augmentation (``tta.predict_tta``: mean of the softmax of each view)
    fold_probs  float32 (batch, K, C)    each fold model's probabilities
    probs       float32 (batch, C)       mean over the K models
    pred        int64   (batch,)         class index by the voting rule (``voting.vote``)
    agreement   float32 (batch,)         fraction of the models whose own vote is pred

Majority voting breaks ties by the highest mean probability, then the lowest
index, exactly as ``voting.majority_vote``. What a reader needs besides the
graph (classes, preprocessing, voting rule, ...) is stored as JSON in the
model's metadata under ``METADATA_KEY``, so the export is one self-contained file.

Export uses the TorchScript exporter (``dynamo=False``): efficientnet_pytorch's
TF-"same" padding is computed in Python from the input size and traces to
constants at the exported size, which is the size the run was trained on.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from noisystudent import __version__, atomic
from noisystudent.errors import ConfigError
from noisystudent.inference import tta
from noisystudent.inference.model_set import ExportRecord, ModelSet

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the graph's inputs, outputs or metadata change
OPSET = 17
INPUT = "pixels"
OUTPUTS = ("fold_probs", "probs", "pred", "agreement")
METADATA_KEY = "noisystudent"


class EnsembleGraph(nn.Module):
    """K classifiers, their input normalisation, test-time augmentation, softmax and the vote."""

    def __init__(self, classifiers: list[nn.Module], normalizations: list[tuple], tta_mode: str, rule: str) -> None:
        super().__init__()
        self.classifiers = nn.ModuleList(classifiers)
        for k, (mean, std) in enumerate(normalizations):
            # the same constants as normalize.normalize: (x - 255 mean) * 1 / (255 std)
            self.register_buffer(f"shift{k}", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer(f"scale{k}", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0))
        self.tta_mode = tta_mode
        self.rule = rule

    def forward(self, pixels: torch.Tensor):
        x = pixels.float()
        per_model = []
        for k, classifier in enumerate(self.classifiers):
            normalised = (x - getattr(self, f"shift{k}")) * getattr(self, f"scale{k}")
            per_model.append(_mean_softmax(classifier, normalised, self.tta_mode))
        fold_probs = torch.stack(per_model, dim=1)  # (B, K, C)
        probs = fold_probs.mean(dim=1)
        votes = fold_probs.argmax(dim=2)  # (B, K)
        pred = self._vote(votes, probs)
        agreement = (votes == pred.unsqueeze(1)).float().mean(dim=1)
        return fold_probs, probs, pred, agreement

    def _vote(self, votes: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        if self.rule == "soft":
            return probs.argmax(dim=1)
        classes = torch.arange(probs.shape[1], device=probs.device)
        counts = (votes.unsqueeze(2) == classes).sum(dim=1)  # (B, C) votes per class
        tied = counts == counts.max(dim=1, keepdim=True).values
        # probabilities are >= 0, so -1 excludes the classes with fewer votes
        return torch.where(tied, probs, torch.full_like(probs, -1.0)).argmax(dim=1)


def _mean_softmax(classifier: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """``tta.predict_tta`` with views the exporter can trace (it has no rot90)."""
    views = list(_dihedral(x)) if mode == "dihedral" else tta.tta_views(x, mode)
    total = None
    for view in views:
        probs = torch.softmax(classifier(view).float(), dim=1)
        total = probs if total is None else total + probs
    return total / len(views)


def _dihedral(x: torch.Tensor):
    """``tta.iter_views(x, "dihedral")``, in the same order, with rot90 as flips and transposes."""
    rotations = (x, x.flip(-1).transpose(-2, -1), x.flip(-2, -1), x.transpose(-2, -1).flip(-1))
    for rotated in rotations:
        yield rotated
        yield rotated.flip(-1)


def build_graph(classifiers: list[nn.Module], normalizations: list[tuple], tta_mode: str, rule: str) -> EnsembleGraph:
    """An eval-mode copy of the classifiers on the CPU, wrapped for export (the originals are untouched)."""
    copies = []
    for classifier in classifiers:
        classifier = copy.deepcopy(classifier).cpu().eval()
        if hasattr(classifier, "set_swish"):  # MemoryEfficientSwish is an autograd.Function: not exportable
            classifier.set_swish(memory_efficient=False)
        copies.append(classifier)
    return EnsembleGraph(copies, normalizations, tta_mode, rule).eval()


def export_graph(graph: EnsembleGraph, image_size: int, metadata: dict[str, Any]) -> bytes:
    """The serialised ONNX model of ``graph`` for square inputs of ``image_size``, with ``metadata``."""
    import onnx  # the optional extra: imported only when exporting

    buffer = io.BytesIO()
    example = torch.zeros((2, 3, image_size, image_size), dtype=torch.uint8)
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values (padding) becoming constants
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
            output_names=list(OUTPUTS), dynamic_axes={name: batch for name in (INPUT, *OUTPUTS)},
        )
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    model.producer_name, model.producer_version = "noisystudent", __version__
    return model.SerializeToString()


def ensemble_metadata(record: ExportRecord, tta_mode: str, rule: str) -> dict[str, Any]:
    """What a reader of the exported file needs besides the graph."""
    return {
        "format": EXPORT_FORMAT,
        "input": INPUT,
        "outputs": list(OUTPUTS),
        "classes": list(record.classes),
        "positive": record.positive,
        "voting": rule,
        "tta": tta_mode,
        "preprocess": record.preprocess,
        "models": record.kind + "s",
        "round": record.round,
        "folds": list(record.folds),
        "architectures": [record.architecture] * len(record.folds),
        "run": str(Path(record.run).resolve()),
        "noisystudent_version": __version__,
    }


def export_ensemble_bytes(models: ModelSet, record: ExportRecord, tta_mode: str, rule: str) -> bytes:
    """The ONNX model of ``models`` (see the module doc), serialised; ``record`` goes into its metadata."""
    if rule not in ("majority", "soft"):
        raise ConfigError(f"--voting must be majority or soft; got {rule!r}.")
    graph = build_graph(list(models.models), list(models.normalizations), tta_mode, rule)
    logger.info("exporting %d %ss to ONNX (%s voting, tta %s)", len(models.models), record.kind, rule, tta_mode)
    return export_graph(graph, models.image_size, ensemble_metadata(record, tta_mode, rule))


def write_export(model: bytes, out: Path) -> Path:
    """Write the serialised model atomically."""
    atomic.atomic_write(Path(out), lambda temp: Path(temp).write_bytes(model))
    return Path(out)


def read_metadata(model: bytes | str | Path) -> dict[str, Any]:
    """The metadata stored in an exported file (or its bytes)."""
    import onnx

    loaded = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model), load_external_data=False)
    found = {p.key: p.value for p in loaded.metadata_props}
    if METADATA_KEY not in found:
        raise ConfigError(f"The ONNX file {model if not isinstance(model, bytes) else '(bytes)'} was not exported by noisystudent.")
    return json.loads(found[METADATA_KEY])
