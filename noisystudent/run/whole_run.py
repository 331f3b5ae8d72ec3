"""The whole run's progress: every model of every fold, and when the run will finish.

``WholeRunProgress`` wraps the Progress a run reports to. It passes every event
on, listens to the trainer's epoch events and the pipeline's ``"model"``
events, looks in the run folder for models finished before this session or by
another process, and reports a ``"run"`` task: the share of the run's work done
(models weighted by epochs x training images) with ``eta_seconds`` from
:mod:`noisystudent.eta` (rate from this process's own measured time only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from noisystudent import layout
from noisystudent.config.run_config import RunConfig
from noisystudent.data import manifest
from noisystudent.eta import RunEta, model_work
from noisystudent.progress import Progress
from noisystudent.run import claims

RUN, MODEL, EPOCH = "run", "model", "epoch"  # progress keys: the whole run, a model begins, its epochs


def model_images(config: RunConfig, fold_table: pd.DataFrame, fold: int, round_: int, pool_count: int, n_classes: int) -> int:
    """Training images of one model, as planned: round 0 the labelled part; students by --student-data.

    Pseudo-labelled images are counted before any threshold drops some (their number is known only once the
    previous round has labelled them); ``--pseudo-per-class`` fixes it.
    """
    in_fold = fold_table[fold_table[manifest.FOLD] == fold]
    labelled = int((in_fold[manifest.ROLE] == manifest.ROLE_LABELLED).sum())
    if round_ == 0 or config.student_data == "labelled":
        return labelled
    masked = int((in_fold[manifest.ROLE] == manifest.ROLE_MASKED).sum())
    pseudo = config.pseudo_per_class * n_classes if config.pseudo_per_class else masked + pool_count
    return pseudo + (labelled if config.student_data == "both" else 0)


class WholeRunProgress(Progress):
    """Passes events to ``inner`` and adds the ``"run"`` task: work done over folds x rounds, and the ETA.

    Args:
        inner: Where the events go (the CLI's bars, or ``NULL_PROGRESS``).
        run: The run folder, looked in for finished models (model.pt) and other processes' fold claims.
        config: The run's settings.
        fold_table: folds.csv of the run.
        n_classes: Number of classes (``--pseudo-per-class`` counts per class).
        pool_count: Images of the unlabelled pool.
        clock: Seconds, monotonic (a test passes its own).
    """

    def __init__(self, inner: Progress, run: Path, config: RunConfig, fold_table: pd.DataFrame, n_classes: int,
                 pool_count: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner, self.run, self.config, self.clock = inner, run, config, clock
        self.keys = [(fold, round_) for fold in range(config.folds) for round_ in range(config.rounds + 1)]
        self.eta = RunEta({key: model_work(config.epochs, model_images(config, fold_table, *key, pool_count, n_classes))
                           for key in self.keys})
        self.current: tuple[int, int] | None = None
        self.resumed_epochs_pending = False  # the trainer's first epoch update after start says where a resumed model was
        self.workers = 1

    def begin(self) -> None:
        """Show the run's bar, with what is already finished."""
        self.inner.start(RUN, "whole run (%)", total=100)
        self._look_at_run_folder()
        self._show()

    def start(self, key: str, description: str, total: int | None = None) -> None:
        if key == EPOCH:
            self.resumed_epochs_pending = True
        self.inner.start(key, description, total)

    def update(self, key: str, completed: int | None = None, description: str | None = None, **info: Any) -> None:
        if key == MODEL:
            self._model_begins(info["fold"], info["round"])
            return
        if key == EPOCH and completed is not None and self.current is not None:
            self._epochs_done(completed)
        self.inner.update(key, completed, description, **info)

    def stop(self, key: str) -> None:
        self.inner.stop(key)

    def _model_begins(self, fold: int, round_: int) -> None:
        self._model_ends()
        self.current = (fold, round_)
        self.eta.start(self.clock())  # the clock runs from this process's first model on
        self.workers = 1 + len(self._other_processes())
        self._look_at_run_folder()
        self._show()

    def _model_ends(self) -> None:
        """The model before is finished (early stopping may have skipped epochs: credited, but not in the rate)."""
        if self.current is not None and (layout.round_dir(self.run, *self.current) / layout.MODEL).exists():
            self.eta.credit(self.current, 1.0)

    def _epochs_done(self, completed: int) -> None:
        fraction = completed / max(1, self.config.epochs)
        if self.resumed_epochs_pending:  # where a resumed model's checkpoint left it: trained before, not measured
            self.eta.credit(self.current, fraction)
            self.resumed_epochs_pending = False
        else:
            self.eta.credit(self.current, fraction, now=self.clock())
        self._look_at_run_folder()
        self._show()

    def finish(self) -> None:
        """After the last fold of this process: credit its last model and show the final state."""
        self._model_ends()
        self.current = None
        self._look_at_run_folder()
        self._show()

    def _look_at_run_folder(self) -> None:
        """Models finished before this session or by another process count as done, outside the rate."""
        for key in self.keys:
            if key != self.current and self.eta.credited[key] < 1 and (layout.round_dir(self.run, *key) / layout.MODEL).exists():
                self.eta.credit(key, 1.0)

    def _other_processes(self) -> set[str]:
        """Other live processes training folds of this run now (each is taken to go at this process's rate)."""
        others = set()
        for fold in range(self.config.folds):
            claim = claims.read_claim(self.run, fold)
            if claim is not None and not claim.is_mine() and claim.pid != -1 and not claims.is_stale(claim):
                others.add(claim.name)
        return others

    def _show(self) -> None:
        processes = f" ({self.workers} processes)" if self.workers > 1 else ""
        self.inner.update(RUN, completed=round(100 * self.eta.fraction_done(), 1),
                          models=f"{self.eta.models_done()}/{len(self.keys)} done{processes}", eta_seconds=self.eta.eta_seconds(self.workers))
