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

    On a GPU with ``channels_last`` (RunConfig.channels_last) the weights are
    converted to channels_last, like the inputs ``predict_probs`` gives them:
    mixed layouts make cuDNN convert every activation.
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
