"""Atomic file writes: write a temporary file beside the target, then rename.

``os.replace`` within one folder is atomic on POSIX, so a reader (or a resumed
run after ``kill -9``) sees either the old file or the complete new one, never
a half-written file. If writing fails (full disk, interruption), the temporary
file is removed and the previous file is left untouched. A full disk or an
exhausted quota becomes ``DiskFullError``, one sentence naming the file.

Temporary files are named ``.<target name>.<writer>.<random>.tmp``, where
``<writer>`` (pid, process start time, host) names the process writing it. One
left behind by a killed process is removed by ``remove_stale_temps`` when the
run resumes; one whose writer is still running (``processes.is_alive``) is kept,
so that processes sharing a folder never remove each other's files.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from noisystudent import processes
from noisystudent.errors import DiskFullError
from noisystudent.safe_paths import refuse_links_below
from noisystudent.spreadsheet import escape_formulas, quoting

TEMP_SUFFIX = ".tmp"
# <pid>-<start time, or x where unknown>-<host tag>, between the target's name and the random part
WRITER = re.compile(r"(?P<pid>[0-9]+)-(?P<start>[0-9]+|x)-(?P<host>[0-9a-f]{8})")
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_BELOW_BYTES = 1 << 20  # a write that failed with less than this free ran out of space


_CONFINED: list[Path] = []  # folders no write may leave through a symbolic link (confined_to)


@contextmanager
def confined_to(root: Path) -> Iterator[None]:
    """While inside, an atomic write below ``root`` through a symbolic link below it is refused (OutputError).

    A run folder is shared and downloaded like any other; ``RUN/results`` made a
    link to another folder must not let ``kfold --resume`` overwrite the files there.
    """
    _CONFINED.append(Path(root))
    try:
        yield
    finally:
        _CONFINED.remove(Path(root))


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    for root in _CONFINED:
        refuse_links_below(target, root)
    temp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.{_writer()}.", suffix=TEMP_SUFFIX, dir=target.parent)
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
        # and a path-based writer into "file write failed" with no errno at all;
        # Ctrl-C during such a write likewise arrives as a RuntimeError.
        if _caused_by(error, KeyboardInterrupt):
            raise KeyboardInterrupt from error
        if _caused_by_full_disk(error) or _disk_is_full(target.parent):
            raise DiskFullError(no_space_message(target)) from error
        raise
    finally:
        if temp is not None and temp.exists():
            temp.unlink()


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` on success, remove it on failure.

    ``target`` must not exist, or be an empty folder (removed just before the
    rename): readers see no folder or the complete one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_writer()}.", suffix=TEMP_SUFFIX, dir=target.parent))
    try:
        yield temp
        _usual_permissions(temp)
        if target.is_dir():
            target.rmdir()  # empty, as the caller checked; a file written there since makes this fail loudly
        os.rename(temp, target)
        _fsync_folder(target.parent)
    except OSError as error:
        if error.errno in NO_SPACE_ERRNOS:
            raise DiskFullError(no_space_message(target)) from error
        raise
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def _usual_permissions(folder: Path) -> None:
    """mkdtemp makes 0700, and some writers 0600 files: give the folder's contents the umask's permissions."""
    os.chmod(folder, 0o777 & ~_umask())
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def no_space_message(target: Path) -> str:
    kept = f"the previous version of {target} is intact" if target.exists() else f"{target} was not written"
    return f"No space left on device while writing {target}; {kept}. Free some space and continue with --resume."


def atomic_write(target: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(temp_path)`` and move the result to ``target`` atomically."""
    with atomic_path(target) as temp:
        write(temp)


def write_text(target: Path, text: str) -> None:
    atomic_write(target, lambda temp: temp.write_text(text))


def write_csv(target: Path, frame: pd.DataFrame, for_people: bool = False) -> None:
    """Write ``frame`` as a CSV, atomically; ``for_people``: formula-like text escaped (spreadsheet.py)."""
    # float_format=None keeps pandas' round-trip repr, so a CSV read back gives
    # bit-identical floats (resumed runs then match uninterrupted ones exactly).
    if not for_people:
        atomic_write(target, lambda temp: frame.to_csv(temp, index=False))
        return
    frame = escape_formulas(frame)
    atomic_write(target, lambda temp: frame.to_csv(temp, index=False, quoting=quoting(frame)))


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
    """Delete the temporary files that writers which died left under ``folder`` (in it only, unless ``recursive``).

    A temporary file whose writer may still be running (on this host, or any
    on another host) is kept. One that names no writer (written by a version
    before writers were named) is removed: call this only where such a version
    cannot be writing, as under ``lock_run_folder`` or a fold's claim.
    Returns the removed files.
    """
    pattern = f".*{TEMP_SUFFIX}"
    return _remove_dead(Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern))


def remove_stale_temps_of(target: Path) -> list[Path]:
    """Delete the temporary files of ``target`` whose writer died, as ``remove_stale_temps`` does for a folder.

    For a folder that several processes write into without a common lock (a
    shared image cache): the temporary files of live writers are kept.
    """
    target = Path(target)
    found = target.parent.glob(f".{glob.escape(target.name)}.*{TEMP_SUFFIX}")
    return _remove_dead(p for p in found if p.name.rsplit(".", 3)[0] == f".{target.name}")


def _remove_dead(paths: Iterable[Path]) -> list[Path]:
    removed = []
    for path in sorted(paths):
        if path.is_file() and is_temp(path) and not _writer_alive(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _writer() -> str:
    """This process as temporary files name their writer: pid, start time and a tag of the host."""
    pid = os.getpid()
    return f"{pid}-{processes.process_start(pid) or 'x'}-{_host_tag()}"


def _host_tag() -> str:
    # a hash: host names may hold dots, which separate the parts of a temporary file's name
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _writer_alive(path: Path) -> bool:
    match = WRITER.fullmatch(path.name.rsplit(".", 3)[1])  # .<target>.<writer>.<random>.tmp
    if match is None:
        return False  # an older version's temporary file, which names no writer
    start = None if match["start"] == "x" else match["start"]
    return processes.is_alive(int(match["pid"]), start, on_other_host=match["host"] != _host_tag())


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """True when ``error`` or an exception it was raised from (or while handling) is a ``kind``."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


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
