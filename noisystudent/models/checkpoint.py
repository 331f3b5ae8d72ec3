"""Checkpoints: plain dicts, saved atomically, loaded onto the CPU without running code.

A training checkpoint holds everything a resumed run needs to continue as if
it had never stopped: model, optimizer, scheduler and AMP-scaler state, the
next epoch, the best metric and weights so far, and every RNG state.

Everything is saved as tensors and plain Python values (``plain``), so every
file loads with ``torch.load(weights_only=True)`` (``torch_files``): a
checkpoint or model.pt from someone else's run folder cannot run code.
Schema 2 stores the Python and numpy RNG states as tensors; schema-1 files
(numpy RNG states) still load, through the numpy allow-list of ``torch_files``.
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from noisystudent import atomic
from noisystudent.errors import CheckpointError

log = logging.getLogger(__name__)
from noisystudent.models.torch_files import UnreadableTorchFile, load_tensors, short

CHECKPOINT_VERSION = 2


def save(target: Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` with a schema version, atomically."""
    save_plain(target, {"version": CHECKPOINT_VERSION, **payload})


def save_plain(target: Path, content: Any) -> None:
    """Save ``content`` with numpy values turned into tensors and Python numbers, atomically."""
    content = plain(content)
    atomic.atomic_write(target, lambda temp: _torch_save(content, temp))


def _torch_save(payload: Any, temp: Path) -> None:
    # Serialised in memory, then written by Python: an exception raised inside torch's
    # C++ writer (Ctrl-C's KeyboardInterrupt, a full disk's OSError) reaches us as an
    # opaque RuntimeError("[enforce fail at inline_container.cc ...]"), while from our
    # own write it stays itself: "Interrupted" and exit 130, or the disk-full sentence.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with open(temp, "wb") as handle:
        handle.write(buffer.getbuffer())


def plain(value: Any) -> Any:
    """``value`` with numpy arrays as tensors and numpy scalars as Python numbers, recursively.

    Containers without numpy inside are returned as they are (a state_dict keeps its
    ``_metadata``, which load_state_dict uses for BatchNorm versioning).
    """
    if isinstance(value, dict):
        converted = {k: plain(v) for k, v in value.items()}
        return value if all(converted[k] is v for k, v in value.items()) else converted
    if isinstance(value, (list, tuple)):
        converted = [plain(v) for v in value]
        return value if all(a is b for a, b in zip(converted, value)) else type(value)(converted)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint or model file onto the CPU; CheckpointError if it is unusable."""
    path = Path(path)
    try:
        payload = load_tensors(path, "The checkpoint")
    except UnreadableTorchFile as error:
        raise CheckpointError(
            f"The checkpoint {path} is truncated or corrupt ({error.reason}); delete it to restart that stage from scratch."
        ) from error
    if not isinstance(payload, dict) or "version" not in payload:
        raise CheckpointError(f"The file {path} is not a noisystudent checkpoint.")
    if not isinstance(payload["version"], int) or payload["version"] > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"The checkpoint {path} has schema version {payload['version']}, newer than this "
            f"noisystudent understands ({CHECKPOINT_VERSION}); upgrade noisystudent."
        )
    return payload


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain values (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda_rng_state(state["cuda"], torch.cuda.current_device())


def restore_cuda_rng_state(states: Sequence[torch.Tensor] | None, device_index: int,
                           set_state: Callable[[torch.Tensor, int], None] | None = None) -> bool:
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
                    device_index, short(error))
        return False
    return True


def _python_state(saved: Any) -> tuple:
    if not isinstance(saved, dict):  # schema 1: random.getstate() itself
        return saved
    return saved["version"], tuple(int(x) for x in saved["internal"].tolist()), saved["gauss"]


def _numpy_state(saved: Any) -> tuple:
    if not isinstance(saved, dict):  # schema 1: np.random.get_state() itself
        return saved
    keys = saved["keys"].numpy().astype(np.uint32)
    return saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]
