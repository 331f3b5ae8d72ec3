"""Load weights from a file into a model, and say exactly what did not fit.

A weights file may be a raw ``state_dict`` or a dict holding one under
``"model"`` or ``"state_dict"`` (our ``model.pt`` and ``checkpoint.pt`` use
``"model"``). ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile)
prefixes are stripped. Classifier weights whose shapes differ (another number
of classes) are skipped and reported; any other mismatch, or a file of which
nothing fits, means the file is for another architecture and is refused.

Security: files are read with ``torch.load(weights_only=True)``, which cannot
run code; numpy arrays (the RNG states in our checkpoints) are allow-listed.
Only files named like our own artifacts (``*model.pt``, ``*checkpoint.pt``)
fall back to full unpickling, which can run arbitrary code: load those only
from run folders you trust.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from noisystudent.errors import CheckpointError
from noisystudent.models.architectures import unwrap
from noisystudent.models.freezing import classifier_name, is_head_key
from noisystudent.models.signatures import guess_architecture

log = logging.getLogger(__name__)

STATE_DICT_ENTRIES = ("model", "state_dict")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
OWN_ARTIFACT_SUFFIXES = ("model.pt", "checkpoint.pt")


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
    trusted = path.name.endswith(OWN_ARTIFACT_SUFFIXES)
    state_dict = extract_state_dict(read_torch_file(path, trusted=trusted), path)
    report = apply_state_dict(model, state_dict, f"The weights file {path}", arch)
    _log_report(report, str(path))
    return report


def read_torch_file(path: str | Path, trusted: bool = False) -> Any:
    """``torch.load`` onto the CPU; :class:`CheckpointError` for anything unreadable.

    Full unpickling (can run code) is used only when ``trusted`` and weights-only loading
    meets a Python object it does not allow.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The weights file {path} does not exist.")
    try:
        return _torch_load(path, weights_only=True)
    except Exception as error:  # torch.load raises many types for a corrupt file
        if not _needs_full_unpickling(error):
            raise _unreadable(path, error) from error
        if not trusted:
            raise CheckpointError(
                f"{path} holds Python objects besides tensors and is not loaded, because unpickling them "
                "could run arbitrary code; save just its state_dict with torch.save."
            ) from error
    log.warning("%s needs full unpickling; loading it because it is named like a noisystudent artifact.", path)
    try:
        return _torch_load(path, weights_only=False)
    except Exception as error:
        raise _unreadable(path, error) from error


def _torch_load(path: Path, weights_only: bool) -> Any:
    with _numpy_allowed(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a non-torch pickle
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable PyTorch file, maybe truncated or corrupt ({_short(error)}).")


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


def _needs_full_unpickling(error: Exception) -> bool:
    return isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error)


def _short(error: Exception) -> str:
    """Type and first informative line of an error (torch's weights-only errors are paragraphs)."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = line.split(". ")[0][:160]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _numpy_allowed() -> contextlib.AbstractContextManager:
    """Allow numpy arrays and scalars (RNG states, metrics) in weights-only loading."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: weights_only cannot allow-list; trusted files fall back
        return contextlib.nullcontext()
    return safe_globals(_numpy_globals())


def _numpy_globals() -> list[Any]:
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    dtypes = [getattr(np.dtypes, name) for name in dir(getattr(np, "dtypes", None)) if name.endswith("DType")]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]
