"""Loading a trained model.pt back into a ready-to-predict model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from noisystudent import models
from noisystudent.errors import CheckpointError
from noisystudent.models import checkpoint


def load_model_file(path: Path, device: torch.device, channels_last: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
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

    Returns:
        tuple[torch.nn.Module, dict[str, Any]]: The model in eval mode on
        ``device``, and the whole payload of the file (``spec``, ``model``
        weights, ``version``, and what kfold stored beside them, e.g.
        ``classes`` and ``preprocess``).

    Raises:
        CheckpointError: The file is missing, truncated or corrupt, of a newer
            schema version, not a noisystudent model file, or its weights do
            not fit the architecture it names.

    Example:
        >>> import torch
        >>> import noisystudent as ns
        >>> model, payload = ns.load_model_file("runs/demo/fold-0/round-1/model.pt", torch.device("cpu"))  # doctest: +SKIP
        >>> payload["spec"]["arch"], payload["classes"]  # doctest: +SKIP
        ('efficientnet-lite0', ['all', 'hem'])
    """
    payload = checkpoint.load(path)
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
