"""Progress events from library code, rendered by whoever listens (the CLI uses Rich).

Library modules never print; they call a ``Progress``. The base class ignores
everything, so tests and library users need not care.
"""

from __future__ import annotations

from typing import Any


class Progress:
    def start(self, key: str, description: str, total: int | None = None) -> None:
        """A task begins (``key`` is e.g. "fold", "round", "epoch", "batch")."""

    def update(self, key: str, completed: int | None = None, description: str | None = None, **info: Any) -> None:
        """A task advanced to ``completed``; ``info`` carries loss, img/s and the like."""

    def stop(self, key: str) -> None:
        """A task is done."""


NULL_PROGRESS = Progress()
