"""A shareable model folder: the fold models as safetensors, what prediction needs as JSON, and a model card.

The layout follows timm's and the Hugging Face Hub's (``model.safetensors`` +
``config.json`` + ``README.md``)::

    DIR/
      config.json          FORMAT, classes, positive class, input size, normalisation,
                           preprocessing, voting, TTA, calibration and temperature,
                           one entry per fold model (file, model shape), the run's settings
      fold-<k>/model.safetensors   the weights of fold model k
      README.md            the model card (ensemble/model_card.py)

Reading it never unpickles anything: ``json`` and ``safetensors`` only, so a
folder downloaded from anyone cannot run code. Writing is atomic (a temporary
folder beside DIR, renamed when complete).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from noisystudent import atomic
from noisystudent.errors import CheckpointError, OutputError
from noisystudent.models import build_from_spec

logger = logging.getLogger(__name__)

FORMAT = "noisystudent-ensemble"
FORMAT_VERSION = 1  # bump when config.json's keys or the folder's layout change
CONFIG = "config.json"
CARD = "README.md"
WEIGHTS = "model.safetensors"


@dataclass
class FolderMember:
    """One fold model as the folder holds it."""

    fold: int
    path: Path  # its model.safetensors
    model: torch.nn.Module
    spec: dict[str, Any]  # models.model_spec: what rebuilds its shape


def weights_path(folder: Path, fold: int) -> Path:
    return Path(folder) / f"fold-{fold}" / WEIGHTS


def is_model_folder(path: Path) -> bool:
    """True when ``path`` is a folder whose config.json says it is an exported model folder (a run's config.json does not)."""
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_destination(out: Path, run: Path) -> None:
    """``out`` must be a new or empty folder, outside the run folder (which is only read)."""
    out, run = Path(out), Path(run)
    if out.resolve().is_relative_to(run.resolve()):
        raise OutputError(f"The model folder {out} lies inside the run folder {run}, which export only reads; choose an --out outside it.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"The output {out} is a file; --format folder writes a folder: choose a new or empty one.")
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"The folder {out} is not empty; choose a new or empty folder for the model folder.")


def write_folder(out: Path, document: dict[str, Any], members: list[tuple[int, torch.nn.Module]], card: str) -> Path:
    """Write the weights of ``members`` ((fold, model) pairs), ``document`` (+ their files and hashes) and ``card``; atomically."""
    with atomic.atomic_folder(Path(out)) as temp:
        entries = []
        for fold, model in members:
            path = weights_path(temp, fold)
            path.parent.mkdir()
            # clone: safetensors refuses tensors that share memory; contiguous CPU copies share none
            tensors = {name: value.detach().cpu().contiguous().clone() for name, value in model.state_dict().items()}
            save_file(tensors, str(path), metadata={"format": "pt", "fold": str(fold)})
            entries.append({"fold": fold, "file": str(path.relative_to(temp)), "spec": dict(model.noisystudent_spec),
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        (temp / CONFIG).write_text(json.dumps({**document, "members": entries}, indent=2, sort_keys=True) + "\n")
        (temp / CARD).write_text(card)
    logger.info("model folder written: %s (%d fold models)", out, len(members))
    return Path(out)


def read_document(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to be a model folder of a format this version reads."""
    path = Path(folder) / CONFIG
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"The model folder's {path} is unreadable ({error}).") from None
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{path} does not describe a noisystudent model folder.")
    if int(document.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"The model folder {folder} was written by a newer noisystudent (format {document['format_version']}); "
                              "upgrade noisystudent to read it.")
    return document


def read_members(folder: Path, document: dict[str, Any], device: torch.device, channels_last: bool) -> list[FolderMember]:
    """Every fold model of the folder: shape from config.json, weights from its safetensors file; eval mode on ``device``."""
    members = []
    for entry in document.get("members") or []:
        path = Path(folder) / entry["file"]
        model = build_from_spec(entry["spec"])
        try:
            model.load_state_dict(_tensors(path, entry.get("sha256")))
        except RuntimeError as error:
            raise CheckpointError(f"The weights in {path} do not fit the model its {CONFIG} describes "
                                  f"({str(error).splitlines()[0]}).") from None
        model = model.to(device)
        if torch.device(device).type == "cuda" and channels_last:
            model = model.to(memory_format=torch.channels_last)
        members.append(FolderMember(int(entry["fold"]), path, model.eval(), dict(entry["spec"])))
    if not members:
        raise CheckpointError(f"The model folder {folder} lists no fold models in its {CONFIG}.")
    return members


def _tensors(path: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    """The tensors of one weights file, after checking its bytes against the hash config.json recorded."""
    if not path.is_file():
        raise CheckpointError(f"The model folder lacks {path}, which its {CONFIG} lists.")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"The weights file {path} has changed since it was exported (its SHA-256 differs from {CONFIG}'s).")
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"The weights file {path} is not a readable safetensors file ({error}).") from None
