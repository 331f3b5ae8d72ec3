"""Read what a run folder holds, tolerating a run that is still in progress.

Every table is optional: a fold or round that has not been trained yet, a run
without a test set, or a run without pseudo-labels simply yields fewer entries,
and ``RunData.notes`` says, in one sentence each, what was missing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..manifest import LABEL, PATH, PATIENT
from ..run_layout import (
    CONFIG,
    EVAL_SPLIT,
    FOLD_COLUMN,
    HISTORY,
    METRICS,
    MODEL_KIND,
    PREDICTIONS,
    PRED,
    PROB_PREFIX,
    PSEUDO_LABELS,
    ROUND,
    SPLIT,
    VOTING,
    results_dir,
    round_dir,
)

log = logging.getLogger(__name__)

TEXT_COLUMNS = (PATH, LABEL, PATIENT, SPLIT, PRED)
METRIC_TEXT_COLUMNS = (MODEL_KIND, FOLD_COLUMN, EVAL_SPLIT, VOTING)
ENSEMBLE_PATTERN = re.compile(r"^predictions_(?P<models>.+)_(?P<voting>[^_]+)\.csv$")
TEST = "test"  # value of SPLIT for the outer test set
ROUND_PATTERN = re.compile(r"^(?:fold|round)-(\d+)$")

Key = tuple[int, int]  # (fold, round)


@dataclass
class RunData:
    run: Path
    config: dict[str, Any]
    histories: dict[Key, pd.DataFrame] = field(default_factory=dict)
    predictions: dict[Key, pd.DataFrame] = field(default_factory=dict)
    pseudo_labels: dict[Key, pd.DataFrame] = field(default_factory=dict)
    metrics: pd.DataFrame | None = None
    ensembles: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)  # (models, voting)
    notes: list[str] = field(default_factory=list)

    @property
    def positive(self) -> str:
        return str(self.config.get("positive", "all"))

    @property
    def folds(self) -> list[int]:
        expected = set(range(int(self.config["folds"]))) if "folds" in self.config else set()
        return sorted(expected | {fold for fold, _ in self._keys()})

    @property
    def rounds(self) -> list[int]:
        expected = set(range(int(self.config["rounds"]) + 1)) if "rounds" in self.config else set()
        return sorted(expected | {round_ for _, round_ in self._keys()})

    @property
    def final_round(self) -> int:
        """Highest round with any predictions (the final students when the run is complete)."""
        trained = [round_ for _, round_ in self.predictions] or [0]
        return max(trained)

    @property
    def classes(self) -> list[str]:
        """Class names, from the probability columns of the prediction tables."""
        for frame in list(self.predictions.values()) + list(self.ensembles.values()):
            return [c[len(PROB_PREFIX):] for c in frame.columns if c.startswith(PROB_PREFIX)]
        return []

    def _keys(self) -> set[Key]:
        return set(self.histories) | set(self.predictions) | set(self.pseudo_labels)


def load_run(run: Path) -> RunData:
    """Read config, per-model tables and results of ``run``; note what is absent."""
    run = Path(run)
    data = RunData(run=run, config=_read_config(run))
    unreadable: list[str] = []
    for fold, round_ in _round_folders(run):
        folder = round_dir(run, fold, round_)
        for table, name in ((data.histories, HISTORY), (data.predictions, PREDICTIONS), (data.pseudo_labels, PSEUDO_LABELS)):
            frame = _try_read(folder / name, read_table, unreadable)
            if frame is not None:
                table[(fold, round_)] = frame
    data.metrics = _try_read(results_dir(run) / METRICS, read_metrics, unreadable)
    for path in sorted(results_dir(run).glob("predictions_*.csv")):
        match = ENSEMBLE_PATTERN.match(path.name)
        frame = _try_read(path, read_table, unreadable) if match else None
        if frame is not None:
            data.ensembles[(match["models"], match["voting"])] = frame
    data.notes = unreadable + _missing_notes(data)
    return data


def read_table(path: Path) -> pd.DataFrame:
    """A CSV whose text columns (label is "" for pool images) stay strings."""
    frame = pd.read_csv(path)
    for column in TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].fillna("").astype(str)
    return frame


def read_metrics(path: Path) -> pd.DataFrame:
    """results/metrics.csv with fold and voting as text and round as an integer."""
    frame = pd.read_csv(path, dtype={column: str for column in METRIC_TEXT_COLUMNS})
    missing = [c for c in (*METRIC_TEXT_COLUMNS, ROUND) if c not in frame.columns]
    if missing:
        raise ValueError(f"it lacks the column {missing[0]!r}")
    return normalise_metrics(frame)


def normalise_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in METRIC_TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].fillna("").astype(str)
    if ROUND in frame.columns:
        frame[ROUND] = pd.to_numeric(frame[ROUND], errors="coerce").fillna(-1).astype(int)
    return frame


def _read_config(run: Path) -> dict[str, Any]:
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("cannot read %s (%s); the report leaves out the settings", run / CONFIG, error)
        return {}
    if not isinstance(config, dict):
        log.warning("%s is not a JSON object; the report leaves out the settings", run / CONFIG)
        return {}
    return config


def _round_folders(run: Path) -> list[Key]:
    keys = []
    for folder in run.glob("fold-*/round-*"):
        fold, round_ = ROUND_PATTERN.match(folder.parent.name), ROUND_PATTERN.match(folder.name)
        if folder.is_dir() and fold and round_:
            keys.append((int(fold.group(1)), int(round_.group(1))))
    return sorted(keys)


def _try_read(path: Path, reader, unreadable: list[str]) -> pd.DataFrame | None:
    """The table at ``path``, or None when absent; an unreadable table adds a note."""
    if not path.exists():
        return None
    try:
        return reader(path)
    except (OSError, ValueError, UnicodeDecodeError) as error:  # pandas parse errors are ValueErrors
        log.warning("cannot read %s: %s", path, error)
        unreadable.append(f"{path.parent.name}/{path.name} cannot be read ({error}); it is left out.")
        return None


def _missing_notes(data: RunData) -> list[str]:
    notes = []
    for fold in data.folds:
        for round_ in data.rounds:
            if (fold, round_) not in data.predictions:
                model = "teacher" if round_ == 0 else f"student of round {round_}"
                notes.append(f"fold-{fold}/round-{round_}: no predictions yet (the {model} of fold {fold} is left out).")
    if not data.pseudo_labels:
        notes.append("No pseudo_labels.csv found: the pseudo-label confidence histograms are left out.")
    if data.metrics is None:
        notes.append(f"No readable results/{METRICS}: the tables, headline and bar chart are left out.")
    has_test = any(SPLIT in t and (t[SPLIT] == TEST).any() for t in data.predictions.values())
    if not has_test and not data.ensembles:
        notes.append("No test set: out-of-fold validation is used for the headline, tables and figures.")
    elif not data.ensembles:
        notes.append("No ensemble predictions in results/: ensemble ROC curves and confusion matrices are left out.")
    return notes
