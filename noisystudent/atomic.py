"""Atomic file writes: write a temporary file beside the target, then rename.

``os.replace`` within one folder is atomic on POSIX, so a reader (or a resumed
run after ``kill -9``) sees either the old file or the complete new one, never
a half-written file. If writing fails (full disk, interruption), the temporary
file is removed and the previous file is left untouched. A full disk or an
exhausted quota becomes ``DiskFullError``, one sentence naming the file.

Temporary files are named ``.<target name>.<random>.tmp``; one left behind by
a killed process is removed by ``remove_stale_temps`` when the run resumes.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from noisystudent.errors import DiskFullError

TEMP_SUFFIX = ".tmp"
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_BELOW_BYTES = 1 << 20  # a write that failed with less than this free ran out of space


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    temp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
        os.close(handle)
        temp = Path(temp_name)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        yield temp
        _fsync(temp)
        os.replace(temp, target)
        _fsync_folder(target.parent)  # make the rename itself survive a power cut
    except OSError as error:
        if error.errno in NO_SPACE_ERRNOS:
            raise DiskFullError(no_space_message(target)) from error
        if error.errno is not None and error.filename != str(target):  # name the file the user knows, not our temporary one
            raise type(error)(error.errno, error.strerror, str(target)) from error
        raise
    except RuntimeError as error:
        # torch.save's C++ writer turns our file object's OSError(ENOSPC) into
        # RuntimeError("unexpected pos ...") (the OSError is only its __context__),
        # and a path-based writer into "file write failed" with no errno at all.
        if _caused_by_full_disk(error) or _disk_is_full(target.parent):
            raise DiskFullError(no_space_message(target)) from error
        raise
    finally:
        if temp is not None and temp.exists():
            temp.unlink()


def no_space_message(target: Path) -> str:
    kept = f"the previous version of {target} is intact" if target.exists() else f"{target} was not written"
    return f"No space left on device while writing {target}; {kept}. Free some space and continue with --resume."


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


def write_csv_chunks(target: Path, frames: Iterable[pd.DataFrame]) -> None:
    """Write the tables of ``frames`` one after another as one CSV (the first one's header), atomically.

    Only one table is in memory at a time: large tables are written as they are made.
    """
    def write(temp: Path) -> None:
        for index, frame in enumerate(frames):
            frame.to_csv(temp, index=False, mode="w" if index == 0 else "a", header=index == 0)

    atomic_write(target, write)


def is_temp(path: Path) -> bool:
    """True for a temporary file of ``atomic_path`` (or of the same naming scheme)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.name.count(".") >= 3


def remove_stale_temps(folder: Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files that interrupted writes left under ``folder`` (in it only, unless ``recursive``).

    Only call this while no other process writes into the folders it clears.
    """
    removed = []
    pattern = f".*{TEMP_SUFFIX}"
    for path in sorted(Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern)):
        if path.is_file() and is_temp(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _caused_by_full_disk(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


def _disk_is_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: Windows has no statvfs
        return False
    return stats.f_bavail * stats.f_frsize < FULL_BELOW_BYTES


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened; the rename is still atomic
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(handle)
