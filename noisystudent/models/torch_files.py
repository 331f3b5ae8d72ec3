"""Reading PyTorch files without ever running code from them.

Every ``.pt`` file the tool reads (``--weights FILE``, a run's ``model.pt`` and
``checkpoint.pt``, cached ImageNet weights) goes through :func:`load_tensors`:
``torch.load(weights_only=True)``, whose unpickler only builds tensors, plain
Python containers and numbers, and the numpy array and scalar types allowed
below. Run folders are shared between people and downloaded from the
internet, so a file that needs any other Python object is refused with a
sentence naming :mod:`noisystudent.convert`, the one explicit way to re-save a
file you trust.

Numpy is allowed because checkpoints of noisystudent 0.1 (schema version 1)
hold numpy RNG states and metrics; numpy's array reconstruction only makes
arrays and scalars, and their elements go through the same restricted
unpickler. Files written now contain no numpy at all (see ``checkpoint.plain``).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from noisystudent.errors import CheckpointError

CONVERT_HINT = "python -m noisystudent.convert"
# What the pickles of a plain checkpoint name (protocol 2 pickles sets as builtins.set), for telling code from damage
SAFE_MODULES = {"torch", "numpy", "collections", "_codecs"}
SAFE_BUILTINS = {f"{m}.{n}" for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "complex", "slice", "bytearray")}


class UnreadableTorchFile(CheckpointError):
    """A file torch cannot read at all (truncated, corrupt, not a torch file); ``reason`` in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def load_tensors(path: str | Path, what: str = "The file") -> Any:
    """``torch.load(weights_only=True)`` onto the CPU; CheckpointError for anything unusable.

    ``what`` starts each error sentence, e.g. "The weights file" or "The checkpoint".
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a regular file.")
    try:
        with _numpy_allowed(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a non-torch pickle
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        name = unsafe_global(error) or code_global(path)
        if name is None:
            raise unreadable(path, what, error) from error
        raise CheckpointError(
            f"{what} {path} holds the Python object {name} besides tensors and is not loaded, because unpickling "
            f"it could run arbitrary code; if you trust the file, re-save its tensors with {CONVERT_HINT} {path} NEW.pt."
        ) from None
    except Exception as error:  # torch.load raises many types for a corrupt or truncated file
        raise unreadable(path, what, error) from error


def unsafe_global(error: BaseException) -> str | None:
    """The name of the global that weights-only loading refused, or None for another error."""
    text = str(error)  # torch < 2.6: "Unsupported global: GLOBAL x.y"; later: "unsupported GLOBAL x.y whose module ..."
    match = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", text)
    return match.group(1) if match else None


def code_global(path: Path) -> str | None:
    """The first function or class outside torch, numpy and collections that the file's pickles name, or None.

    Read from the opcodes alone (``pickletools``), never by unpickling: a plain
    pickle of protocol 4 fails weights-only loading on its framing before its
    globals are looked at, and would otherwise be called corrupt.
    """
    try:
        data = path.read_bytes()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".pkl"))
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    for name in _pickled_globals(data):
        if name.split(".")[0] not in SAFE_MODULES and name not in SAFE_BUILTINS:
            return name
    return None


def _pickled_globals(data: bytes) -> Iterator[str]:
    """``module.name`` of each GLOBAL and STACK_GLOBAL in the (possibly concatenated) pickles in ``data``."""
    stream, strings = io.BytesIO(data), []
    while stream.tell() < len(data):
        try:
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    yield str(argument).replace(" ", ".")
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    yield f"{strings[-2]}.{strings[-1]}"
                elif isinstance(argument, str):
                    strings.append(argument)
        except (ValueError, EOFError, UnicodeDecodeError):
            return  # not a pickle from here on


def unreadable(path: Path, what: str, error: BaseException) -> UnreadableTorchFile:
    reason = short(error)
    return UnreadableTorchFile(f"{what} {path} is not a readable PyTorch file, maybe truncated or corrupt ({reason}).", reason)


def short(error: BaseException) -> str:
    """Type and first informative line of an error (torch's weights-only errors are paragraphs)."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = line.split(". ")[0][:160]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _numpy_allowed() -> contextlib.AbstractContextManager:
    """Allow numpy arrays and scalars (RNG states and metrics of schema-1 files) in weights-only loading."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5 cannot allow-list: such files are refused with the convert hint
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
