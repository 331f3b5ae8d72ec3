"""Whether a process is still running: the one liveness check behind fold claims and temporary files.

A process is named by its pid and its start time. The start time (Linux: clock
ticks since boot, field 22 of /proc/<pid>/stat) tells a reused pid from the
process that had it before. A process on another host cannot be checked from
here and is always taken as alive: nothing of it is ever taken over or removed.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` as the kernel reports it, or None where it cannot be read."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None  # field 22 of /proc/<pid>/stat: starttime


def is_alive(pid: int, start: str | None = None, on_other_host: bool = False) -> bool:
    """False only when the process ``pid`` that started at ``start`` is certainly gone.

    Gone means exited, a zombie (killed, not yet reaped by its parent), or its
    pid now belongs to a later process. ``start`` is its ``process_start`` when
    it was recorded (None: any process with this pid counts as it). A process
    ``on_other_host`` cannot be checked from here and counts as alive.
    """
    if on_other_host:
        return True
    if pid <= 0:
        return False  # no process has such a pid (os.kill would signal a whole group)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # running, as another user
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc: a running pid is taken as the process
    zombie = fields[0] == "Z"
    reused = start is not None and fields[19] != start
    return not (zombie or reused)


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()
