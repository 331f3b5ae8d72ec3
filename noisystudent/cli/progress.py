"""Rich progress bars for the CLI: the whole run, folds, epochs, batches (with images/s and ETA), decoding, prediction."""

from __future__ import annotations

import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichBars
from rich.text import Text

from noisystudent.progress import Progress

NO_ESTIMATE = object()  # a task whose ETA Rich works out from its own speed


class GivenRemainingColumn(TimeRemainingColumn):
    """The time left a task was given (the whole run's, from noisystudent.eta), else Rich's own estimate.

    Rich's estimate would take a resumed run's finished models, credited at once, for speed.
    """

    def render(self, task: Any) -> Text:
        given = task.fields.get("eta", NO_ESTIMATE)
        if given is NO_ESTIMATE:
            return super().render(task)
        return Text(remaining_text(given), style="progress.remaining")


def remaining_text(seconds: float | None, now: datetime.datetime | None = None) -> str:
    """'1:02:03 (done ~14:32)', or '-:--:--' when unknown.

    Example:
        >>> remaining_text(3723, datetime.datetime(2026, 1, 1, 13, 30))
        '1:02:03 (done ~14:32)'
    """
    if seconds is None:
        return "-:--:--"
    whole = int(round(seconds))
    finish = (now or datetime.datetime.now()) + datetime.timedelta(seconds=whole)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d} (done ~{finish:%H:%M})"


class RichProgress(Progress):
    def __init__(self, console: Console) -> None:
        self.bars = RichBars(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), GivenRemainingColumn(),
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
        changes: dict[str, Any] = {}
        if "eta_seconds" in info:  # the whole run's ETA, worked out by the run, not by Rich
            changes["eta"] = info.pop("eta_seconds")
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items() if v is not None)
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
