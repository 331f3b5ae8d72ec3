"""Atomic file writes: write a temporary file beside the target, then rename.

``os.replace`` within one folder is atomic on POSIX, so a reader (or a resumed
run after ``kill -9``) sees either the old file or the complete new one, never
a half-written file. If writing fails (full disk, interruption), the temporary
file is removed and the previous file is left untouched.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temp = Path(temp_name)
    os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, target)
    finally:
        if temp.exists():
            temp.unlink()


def atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(temp_path)`` and move the result to ``target`` atomically."""
    with atomic_path(target) as temp:
        write(temp)


def write_text(target: Path, text: str) -> None:
    atomic_write(target, lambda temp: temp.write_text(text))


def write_csv(target: Path, frame: pd.DataFrame) -> None:
    # float_format=None keeps pandas' round-trip repr, so a CSV read back gives
    # bit-identical floats (resumed runs then match uninterrupted ones exactly).
    atomic_write(target, lambda temp: frame.to_csv(temp, index=False))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
