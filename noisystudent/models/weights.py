"""Load weights from a file into a model, and say exactly what did not fit.

A weights file may be a raw ``state_dict`` or a dict holding one under
``"model"`` or ``"state_dict"`` (our ``model.pt`` and ``checkpoint.pt`` use
``"model"``). ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile)
prefixes are stripped. Classifier weights whose shapes differ (another number
of classes) are skipped and reported; any other mismatch, or a file of which
nothing fits, means the file is for another architecture and is refused.

Security: every file is read with ``torch.load(weights_only=True)``
(``torch_files.load_tensors``), which cannot run code, whatever the file is
named; a file that needs other Python objects is refused with a sentence
naming ``python -m noisystudent.convert``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from noisystudent.errors import CheckpointError
from noisystudent.models.architectures import unwrap
from noisystudent.models.freezing import classifier_name, is_head_key
from noisystudent.models.signatures import guess_architecture
from noisystudent.models.torch_files import load_tensors

log = logging.getLogger(__name__)

STATE_DICT_ENTRIES = ("model", "state_dict")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadReport:
    """Keys of the model absent from the file, keys of the file unknown to the model,
    and classifier keys left at their initial values because their shapes differ."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)
    loaded: int = 0


def load_weights(model: nn.Module, path: str | Path, arch: str) -> LoadReport:
    """Load the weights file ``path`` into ``model`` (an ``arch``), non-strictly, and report."""
    path = Path(path)
    state_dict = extract_state_dict(read_torch_file(path), path)
    report = apply_state_dict(model, state_dict, f"The weights file {path}", arch)
    _log_report(report, str(path))
    return report


def read_torch_file(path: str | Path) -> Any:
    """Weights-only ``torch.load`` onto the CPU; :class:`CheckpointError` for anything unreadable or unsafe."""
    return load_tensors(path, "The weights file")


def extract_state_dict(content: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a raw state_dict or of its ``model``/``state_dict`` entry, prefixes stripped."""
    if isinstance(content, dict):
        for entry in STATE_DICT_ENTRIES:
            if isinstance(content.get(entry), dict):
                content = content[entry]
                break
    if isinstance(content, nn.Module):
        content = content.state_dict()
    tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)} if isinstance(content, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path} contains no model weights (expected a state_dict, or a dict with a 'model' or 'state_dict' entry).")
    return {strip_wrapper_prefixes(key): value for key, value in tensors.items()}


def strip_wrapper_prefixes(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def apply_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, arch: str) -> LoadReport:
    """Load what fits; refuse a state dict that belongs to another architecture.

    ``source`` starts the error sentence, e.g. "The weights file x.pt".
    """
    target = unwrap(model)
    own = target.state_dict()
    head = classifier_name(target)
    usable, skipped, clashing = {}, [], []
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            (skipped if is_head_key(key, head) else clashing).append(key)
        elif key in own:
            usable[key] = value
    guess = guess_architecture(state_dict)
    if clashing or not usable or (guess is not None and guess != arch):
        raise CheckpointError(_wrong_arch_message(source, arch, guess))
    result = target.load_state_dict(usable, strict=False)
    return LoadReport(
        missing=[key for key in result.missing_keys if key not in skipped],
        unexpected=sorted(key for key in state_dict if key not in own),
        skipped_shape=skipped,
        loaded=len(usable),
    )


def _wrong_arch_message(source: str, arch: str, guess: str | None) -> str:
    reason = f"it seems to be for {guess}" if guess else "its parameter names or shapes do not match the model"
    return f"{source} does not fit {arch}: {reason}."


def _log_report(report: LoadReport, source: str) -> None:
    if report.skipped_shape:
        log.warning("%s: classifier weights of another shape left at their initial values: %s", source, ", ".join(report.skipped_shape))
    if report.missing:
        log.warning("%s: %d model weights missing from the file: %s", source, len(report.missing), _listing(report.missing))
    if report.unexpected:
        log.warning("%s: %d weights in the file unknown to the model: %s", source, len(report.unexpected), _listing(report.unexpected))


def _listing(keys: list[str], limit: int = 10) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
