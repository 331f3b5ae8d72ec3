"""Where the tool may write: regular files only, never its own inputs, never inside DATA or RUN.

``atomic.py`` replaces a file by renaming a new one over it. Over ``/dev/null``
(or any device, FIFO or socket) that would replace the device node itself,
and over an input it would destroy the input; so every output path is
checked here, before any work starts, and refused with one sentence.

Inside a folder the tool owns (a run folder, its report/), a symbolic link
(``RUN/results -> /elsewhere``) would make it overwrite files outside that
folder: ``refuse_links_below`` refuses every write through one. The folder
itself may be a link (``--out`` on another disk): the user chose it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from noisystudent.errors import OutputError

KINDS = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a named pipe (FIFO)",
         stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}


def file_kind(path: Path) -> str | None:
    """None for a regular file or nothing at all; else what the path is, in words ("a folder", ...)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else None
    except NotADirectoryError:
        return "below a file"
    for test, kind in KINDS.items():
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def check_output_file(out: Path, inputs: Iterable[Path] = (), folders: Iterable[Path] = (), flag: str = "--out") -> None:
    """Refuse an output that is not a regular file, is one of ``inputs`` or lies inside one of ``folders``."""
    out = Path(out)
    kind = file_kind(out)
    if kind is not None:
        raise OutputError(f"The output {out} is {kind}, not a regular file; choose a file path with {flag}.")
    _check_parent(out, flag)
    resolved = out.resolve()
    for item in inputs:
        if Path(item).resolve() == resolved:
            raise OutputError(f"The output {out} is also an input of this command; choose another {flag}.")
    for folder in folders:
        if resolved.is_relative_to(Path(folder).resolve()):
            raise OutputError(f"The output {out} lies inside {folder}, which this command only reads; choose an {flag} outside it.")


def check_output_folder(folder: Path, inputs: Iterable[Path] = (), flag: str = "--out") -> None:
    """Refuse a folder to write into that is something else, or lies inside (or holds) an input."""
    folder = Path(folder)
    kind = file_kind(folder)
    if kind not in (None, "a folder") or (folder.exists() and not folder.is_dir()):
        raise OutputError(f"{folder} is {kind or 'a file'}, not a folder; choose a folder with {flag}.")
    _check_parent(folder, flag)
    resolved = folder.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if resolved == source or resolved.is_relative_to(source):
            raise OutputError(f"The folder {folder} lies inside the input {item}, which is only read; choose a {flag} outside it.")


def refuse_links_below(path: Path, root: Path) -> None:
    """OutputError when ``path``, or a folder between ``root`` and it, is a symbolic link.

    Lexical: ``path`` lies below ``root`` when its absolute path starts with
    root's (neither is resolved). A path outside ``root`` is not checked.
    """
    root, path = Path(os.path.abspath(root)), Path(os.path.abspath(path))
    if path == root or not path.is_relative_to(root):
        return
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            raise OutputError(f"{current} is a symbolic link (to {os.readlink(current)}), through which noisystudent would "
                              f"write outside {root}; replace it with a real {'folder' if current != path else 'file'}.")
        if not current.exists():
            return  # what is created below a missing folder cannot be a link yet


def _check_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor must be a folder (atomic writes create the missing ones)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"The output {path} lies below {parent}, which is a file; choose another {flag}.")
            return
