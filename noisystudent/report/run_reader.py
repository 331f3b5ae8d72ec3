"""Read what a run folder holds, tolerating a run that is still in progress.

Every table is optional: a fold or round that has not been trained yet, a run
without a test set, or a run without pseudo-labels simply yields fewer entries,
and ``RunContents.notes`` says, in one sentence each, what was missing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from noisystudent.data.manifest import LEGACY_ROLES, ROLE
from noisystudent.data.pool import PoolFile
from noisystudent.errors import ConfigError
from noisystudent.evaluation.metrics import CLASS_COLUMN, headline_class_rows
from noisystudent.layout import (
    CONFIDENCE,
    EVAL_SPLIT,
    FOLD_COLUMN,
    FOLDS,
    HISTORY,
    METRICS,
    MODEL_KIND,
    POOL,
    PRED,
    PREDICTIONS,
    PROB_PREFIX,
    PSEUDO_LABELS,
    ROUND,
    SPLIT,
    SPLIT_TEST,
    VOTING,
    model_label,
    results_dir,
    round_dir,
)
from noisystudent.run.folder import saved_config
from noisystudent.run.results import read_predictions
from noisystudent.run.tables import read_table

log = logging.getLogger(__name__)

METRIC_TEXT_COLUMNS = (MODEL_KIND, FOLD_COLUMN, EVAL_SPLIT, VOTING, CLASS_COLUMN)
ENSEMBLE_PATTERN = re.compile(r"^predictions_(?P<models>.+)_(?P<voting>[^_]+)\.csv$")
TEST = SPLIT_TEST  # the outer test set
ROUND_PATTERN = re.compile(r"^(?:fold|round)-(\d+)$")

Key = tuple[int, int]  # (fold, round)


@dataclass
class RunContents:
    run: Path
    config: dict[str, Any]
    histories: dict[Key, pd.DataFrame] = field(default_factory=dict)
    predictions: dict[Key, pd.DataFrame] = field(default_factory=dict)
    pseudo_labels: dict[Key, pd.DataFrame] = field(default_factory=dict)
    metrics: pd.DataFrame | None = None  # the rows about all classes: macro (multi-class) or the positive class
    all_metrics: pd.DataFrame | None = None  # every row of metrics.csv, per-class one-vs-rest rows included
    folds_table: pd.DataFrame | None = None  # folds.csv: every image's part in every fold
    pool: PoolFile | None = None  # pool.csv: the unlabelled pool, counted, never read whole
    ensembles: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)  # (models, voting)
    notes: list[str] = field(default_factory=list)

    @property
    def positive(self) -> str:
        return str(self.config.get("positive", "all"))

    @property
    def positive_class(self) -> str | None:
        """The class one-vs-rest figures are about: the positive class when the data has it, else None."""
        if self.config.get("binary"):
            return "positive"
        return self.positive if self.positive in self.classes else None

    @property
    def multiclass(self) -> bool:
        return len(self.classes) > 2

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


def _read_fold_table(path: Path) -> pd.DataFrame:
    """folds.csv as written, except that the masked part of runs made before 0.2 ('unlabelled') reads as 'masked'."""
    table = read_table(path)
    if ROLE in table.columns:
        table[ROLE] = table[ROLE].replace(LEGACY_ROLES)
    return table


def load_run(run: Path) -> RunContents:
    """Read config, per-model tables and results of ``run``; note what is absent."""
    run = Path(run)
    data = RunContents(run=run, config=_read_config(run))
    unreadable: list[str] = []
    for fold, round_ in _round_folders(run):
        folder = round_dir(run, fold, round_)
        readers = ((data.histories, HISTORY, read_table), (data.predictions, PREDICTIONS, read_predictions),
                   (data.pseudo_labels, PSEUDO_LABELS, read_pseudo_confidence))
        for table, name, reader in readers:
            frame = _try_read(folder / name, reader, unreadable)
            if frame is not None:
                table[(fold, round_)] = frame
    data.all_metrics = _try_read(results_dir(run) / METRICS, read_metrics, unreadable)
    data.metrics = None if data.all_metrics is None else headline_class_rows(data.all_metrics)
    data.folds_table = _try_read(run / FOLDS, _read_fold_table, unreadable)
    data.pool = _try_read(run / POOL, PoolFile.open, unreadable)
    for path in sorted(results_dir(run).glob("predictions_*.csv")):
        match = ENSEMBLE_PATTERN.match(path.name)
        frame = _try_read(path, read_table, unreadable) if match else None
        if frame is not None:
            data.ensembles[(match["models"], match["voting"])] = frame
    data.notes = unreadable + _missing_notes(data)
    return data


def read_pseudo_confidence(path: Path) -> pd.DataFrame:
    """The confidence and class columns of pseudo_labels.csv, all the report draws: about 5 bytes per
    row, since the table may hold a pool of millions of images per fold and round."""
    return pd.read_csv(path, usecols=[CONFIDENCE, PRED], dtype={CONFIDENCE: "float32", PRED: "category"},
                       keep_default_na=False)


def read_metrics(path: Path) -> pd.DataFrame:
    """results/metrics.csv with fold and voting as text and round as an integer."""
    frame = read_table(path)
    missing = [c for c in (*METRIC_TEXT_COLUMNS, ROUND) if c not in frame.columns and c != CLASS_COLUMN]  # older runs lack it
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
        return saved_config(run) or {}
    except ConfigError as error:
        log.warning("%s The report leaves out the settings.", error)
        return {}


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


def _missing_notes(data: RunContents) -> list[str]:
    notes = []
    for fold in data.folds:
        for round_ in data.rounds:
            if (fold, round_) not in data.predictions:
                notes.append(f"fold-{fold}/round-{round_}: no predictions yet (the {model_label(round_)} of fold {fold} is left out).")
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
