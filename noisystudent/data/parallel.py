"""Parallel image decoding that adapts to where it runs: processes or threads, and as many as the system allows.

Two situations would otherwise end in a traceback:

- a plain script without an ``if __name__ == "__main__":`` guard calls the
  public API. Worker processes (forkserver or spawn) import the main module
  again, so they would run the script's ``run_kfold`` once more. Decoding then
  uses threads instead: ``processes_allowed`` reads the script to tell;
- the system refuses another thread (``RuntimeError: can't start new thread``,
  e.g. under ``ulimit -v``). ``Threads`` then goes on with the threads that did
  start, or does the work in the calling thread when none did. A process pool
  cannot adapt so (its helper threads fail inside it, and it hangs), so under a
  tight address-space limit decoding uses threads (``address_space_left``).
"""

from __future__ import annotations

import ast
import logging
import queue
import re
import sys
import tokenize
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


def processes_allowed() -> bool:
    """Whether a worker process can import ``__main__`` without running the caller's work again.

    True for the command line, ``python -m package``, an interactive session or
    notebook (workers import nothing of it) and a script with a top-level
    ``if __name__ == "__main__":`` block; False for any other script.
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if name.endswith(".__main__"):
        return True  # multiprocessing never re-runs a package's __main__
    path = getattr(main, "__file__", None)
    return path is None or has_main_guard(path)


def has_main_guard(path: str) -> bool:
    """Whether the Python file ``path`` has a top-level ``if __name__ == "__main__":`` block (False if unreadable)."""
    try:
        with tokenize.open(path) as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return False
    tests = (ast.unparse(node.test) for node in tree.body if isinstance(node, ast.If))
    return any("__name__" in test and "__main__" in test for test in tests)


def address_space_left() -> int | None:
    """Bytes this process may still map under its address-space limit (``ulimit -v``); None if unlimited or unknown.

    Importing torch alone maps about 3.3 GB, so a 4 GB limit leaves little.
    """
    try:
        import resource  # POSIX only

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, AttributeError):
        return None
    used = address_space_used()
    return None if limit == resource.RLIM_INFINITY or used is None else limit - used


def address_space_used() -> int | None:
    """Bytes this process maps now (VmSize), or None where /proc cannot tell (not Linux)."""
    try:
        with open("/proc/self/status") as status:
            return int(re.search(r"^VmSize:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024
    except (OSError, AttributeError, ValueError):
        return None


class Threads(ThreadPoolExecutor):
    """A ThreadPoolExecutor that works with the threads the system grants, down to none.

    When a thread cannot be started, the pool keeps the threads it has; with
    none at all, each task runs in the submitting thread as it is submitted.
    """

    _refused = False  # set once the system refused a thread: no more are asked for

    def _adjust_thread_count(self) -> None:
        if not self._refused:
            try:
                super()._adjust_thread_count()
                return
            except RuntimeError as error:  # "can't start new thread": address space or thread limit exhausted
                self._refused = True
                self._max_workers = max(1, len(self._threads))
                log.warning("The system refused another thread (%s); continuing with %s.", error,
                            f"{len(self._threads)} thread(s)" if self._threads else "the calling thread alone")
        if not self._threads:
            self._run_queued()

    def _run_queued(self) -> None:
        """Run the submitted tasks here, since no thread exists to run them."""
        while True:
            try:
                item = self._work_queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.run()  # _WorkItem.run() of Python 3.10 to 3.13
