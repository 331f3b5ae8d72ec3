"""SIGTERM stops a command the way Ctrl-C does: completed stages kept, claims released, workers stopped.

``kill PID``, a batch scheduler at its time limit (Slurm sends SIGTERM, then
SIGKILL after its KillWait) or a container being stopped all send SIGTERM,
whose default ends the process on the spot: a ``--concurrent`` main process
would leave its workers training on, orphaned and holding the GPU, and nothing
would tell the user how to continue. Inside ``sigterm_as_interrupt`` SIGTERM
raises ``Terminated``, a KeyboardInterrupt, so every path that already handles
Ctrl-C (claims released, workers asked to stop, "continue with --resume")
handles it too. Resume is safe either way: checkpoints are written atomically
and a dead process's claims are recognised (``processes.is_alive``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; handled wherever KeyboardInterrupt is."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated``; the previous handler is restored afterwards.

    Only in the main thread (Python delivers signals there), and only where
    SIGTERM still has its default action: a handler someone else installed
    (an application embedding the library, a test runner) is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
