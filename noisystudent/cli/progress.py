"""Rich progress bars for the CLI: folds, epochs, batches (with images/s and ETA), decoding, prediction."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichBars

from noisystudent.progress import Progress


class RichProgress(Progress):
    def __init__(self, console: Console) -> None:
        self.bars = RichBars(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, transient=False, refresh_per_second=4,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "RichProgress":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def start(self, key: str, description: str, total: int | None = None) -> None:
        if key in self.tasks:
            self.bars.reset(self.tasks[key], total=total, description=description, info="", visible=True)
        else:
            self.tasks[key] = self.bars.add_task(description, total=total, info="")

    def update(self, key: str, completed: int | None = None, description: str | None = None, **info: Any) -> None:
        task = self.tasks.get(key)
        if task is None:
            return
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items() if v is not None)
        changes: dict[str, Any] = {}
        if completed is not None:
            changes["completed"] = completed
        if description is not None:
            changes["description"] = description
        if text:
            changes["info"] = text
        self.bars.update(task, **changes)

    def stop(self, key: str) -> None:
        task = self.tasks.get(key)
        if task is not None and key in ("batch", "predict", "cache", "data", "folds"):
            self.bars.update(task, visible=False)  # inner bars vanish; fold/epoch bars stay
