"""Checkpoints: plain dicts, saved atomically, loaded onto the CPU.

A training checkpoint holds everything a resumed run needs to continue as if
it had never stopped: model, optimizer, scheduler and AMP-scaler state, the
next epoch, the best metric and weights so far, and every RNG state.
"""

from __future__ import annotations

import logging
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisystudent import atomic
from noisystudent.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def save(target: Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` with a schema version, atomically."""
    payload = {"version": CHECKPOINT_VERSION, **payload}
    atomic.atomic_write(target, lambda temp: _torch_save(payload, temp))


def _torch_save(payload: dict[str, Any], temp: Path) -> None:
    # Through a Python file object, a full disk raises OSError(ENOSPC), which
    # atomic.py turns into one sentence; torch.save(path) would raise an opaque
    # RuntimeError from its C++ writer instead.
    with open(temp, "wb") as handle:
        torch.save(payload, handle)


def load(path: Path, trusted: bool = True) -> dict[str, Any]:
    """Load a checkpoint or model file onto the CPU; CheckpointError if it is unusable.

    Our own checkpoints contain numpy RNG states, which ``weights_only=True``
    refuses, so files written by this package are loaded with
    ``weights_only=False`` (``trusted``). Only load run folders you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The checkpoint {path} does not exist.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trusted)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(
            f"The checkpoint {path} is truncated or corrupt ({_first_line(error)}); "
            "delete it to restart that stage from scratch."
        ) from error
    if not isinstance(payload, dict) or "version" not in payload:
        raise CheckpointError(f"The file {path} is not a noisystudent checkpoint.")
    if payload["version"] > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"The checkpoint {path} has schema version {payload['version']}, newer than this "
            f"noisystudent understands ({CHECKPOINT_VERSION}); upgrade noisystudent."
        )
    return payload


def capture_rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda_rng_state(state["cuda"], torch.cuda.current_device())


def restore_cuda_rng_state(states, device_index: int, set_state=None) -> bool:
    """Restore the saved CUDA RNG state of the device this run trains on; True if restored.

    ``states`` holds one state per GPU that was visible when the checkpoint was
    saved (``get_rng_state_all``). Training uses one device, so only its state
    matters; restoring all of them (``set_rng_state_all``) raises IndexError
    when fewer GPUs are visible now. A missing or unusable state is logged and
    left as it is: the device RNG then differs from the uninterrupted run,
    which changes random draws but nothing else.
    """
    set_state = set_state or torch.cuda.set_rng_state
    try:
        state = states[device_index]
    except (IndexError, KeyError, TypeError):
        count = len(states) if hasattr(states, "__len__") else "no"
        log.warning("The checkpoint has %s CUDA RNG state(s), none for cuda:%d; its RNG is not restored.",
                    count, device_index)
        return False
    try:
        set_state(state, device_index)
    except (RuntimeError, TypeError, ValueError) as error:
        log.warning("The checkpoint's CUDA RNG state for cuda:%d is unusable (%s); not restored.",
                    device_index, _first_line(error))
        return False
    return True


def _first_line(error: BaseException) -> str:
    """The first sentence of an error message (torch appends paragraphs of advice)."""
    text = str(error).strip().splitlines()
    return text[0].split(". ")[0].rstrip(".") if text else type(error).__name__
