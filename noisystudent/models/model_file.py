"""Loading a trained model.pt back into a ready-to-predict model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from noisystudent import models
from noisystudent.errors import CheckpointError
from noisystudent.models import checkpoint


IDENTITY = "identity"  # the entry of model.pt and checkpoint.pt that says which run, fold and round wrote it
IDENTITY_KEYS = ("run_id", "settings", "fold", "round")
RESTART_HINT = "delete it and continue the run with kfold --resume to train that stage again"


def model_identity(run_id: str, settings: str, fold: int, round_: int) -> dict[str, Any]:
    """What a model file of a run records about where it belongs: run id, settings digest, fold and round."""
    return {"run_id": run_id, "settings": settings, "fold": int(fold), "round": int(round_)}


def check_identity(payload: dict[str, Any], path: Path, expected: dict[str, Any], what: str = "model file") -> None:
    """Refuse a model file or checkpoint that another run, fold or round wrote (or that records none).

    A file copied from another fold loads and predicts without complaint, so
    its recorded identity is compared with ``expected`` (``model_identity`` of
    where it lies). A file without one cannot be verified and is refused too.
    """
    found = payload.get(IDENTITY)
    where = f"fold {expected['fold']}, round {expected['round']}"
    if not isinstance(found, dict) or any(key not in found for key in IDENTITY_KEYS):
        raise CheckpointError(f"The {what} {path} records no run, fold and round (an older noisystudent or another tool "
                              f"wrote it), so it cannot be verified as {where} of this run; {RESTART_HINT} (or, for a run an older "
                              "noisystudent made that you trust: noisystudent adopt RUN).")
    if (found["fold"], found["round"]) != (expected["fold"], expected["round"]):
        raise CheckpointError(f"The {what} {path} belongs to fold {found['fold']}, round {found['round']}, not to {where} "
                              f"where it lies; put the right file back, or {RESTART_HINT}.")
    if found["run_id"] != expected["run_id"]:
        raise CheckpointError(f"The {what} {path} belongs to another run (run id {found['run_id']}, this run's is "
                              f"{expected['run_id']}); put this run's file back, or {RESTART_HINT}.")
    if found["settings"] != expected["settings"]:
        raise CheckpointError(f"The {what} {path} was trained with other settings than the ones its run's config.json "
                              f"records; put the right file back, or {RESTART_HINT}.")


def verify_model_file(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Load ``path`` completely (a truncated file is refused) and check its identity; return its payload."""
    payload = checkpoint.load(path)
    check_identity(payload, Path(path), expected)
    return payload


def load_model_file(path: Path, device: torch.device, channels_last: bool = True,
                    expected: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model described in ``path`` and load its weights; eval mode, on ``device``.

    A model.pt (``RUN/fold-<k>/round-<r>/model.pt``) stores the model's shape
    beside its weights, so no settings are needed to rebuild it. The file is
    loaded weights-only onto the CPU first.

    Args:
        path: A model.pt written by ``noisystudent kfold``.
        device: Where the model goes (``torch.device("cpu")``, ``"cuda"``, ...).
        channels_last: On a GPU, convert the weights to channels_last (as
            RunConfig.channels_last, default ``True``), like the inputs
            ``predict_probs`` gives them: mixed layouts make cuDNN convert every
            activation. Ignored on a CPU.
        expected: Where the file lies in its run (``model_identity``: run id,
            settings digest, fold, round); a file that records another place, or
            none, is refused. Default ``None``: a lone file, nothing compared.

    Returns:
        tuple[torch.nn.Module, dict[str, Any]]: The model in eval mode on
        ``device``, and the whole payload of the file (``spec``, ``model``
        weights, ``version``, and what kfold stored beside them, e.g.
        ``classes`` and ``preprocess``).

    Raises:
        CheckpointError: The file is missing, truncated or corrupt, of a newer
            schema version, not a noisystudent model file, or its weights do
            not fit the architecture it names, or it is not the model of
            ``expected``.

    Example:
        >>> import torch
        >>> import noisystudent as ns
        >>> model, payload = ns.load_model_file("runs/demo/fold-0/round-1/model.pt", torch.device("cpu"))  # doctest: +SKIP
        >>> payload["spec"]["arch"], payload["classes"]  # doctest: +SKIP
        ('efficientnet-lite0', ['all', 'hem'])
    """
    payload = checkpoint.load(path)
    if expected is not None:
        check_identity(payload, Path(path), expected)
    if "spec" not in payload or "model" not in payload:
        raise CheckpointError(f"The file {path} is not a noisystudent model.pt (no model spec or weights).")
    model = models.build_from_spec(payload["spec"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"The weights in {path} do not fit the architecture {payload['spec'].get('arch')!r} it names ({str(error).splitlines()[0]})."
        ) from error
    model = model.to(device)
    if torch.device(device).type == "cuda" and channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), payload
