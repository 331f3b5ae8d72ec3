"""Did B beat A? Two sets of predictions on the same test images, compared with intervals.

A side is one prediction table (an ensemble) or several (fold models, whose
metric is averaged). Every metric row has its own interval and its own verdict
(does that interval exclude 0?); one pre-specified metric (``primary_metric``,
balanced accuracy unless chosen otherwise) is the primary endpoint, and the
others are secondary, to be read with Holm-adjusted p-values (docs/evidence.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from noisystudent.data.labels import as_labels
from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.errors import ConfigError, DataError
from noisystudent.evaluation.statistics import (
    BOOTSTRAP_METRICS,
    MIN_RESAMPLES,
    McNemar,
    Scored,
    bootstrap_interval,
    mcnemar_exact,
    paired_bootstrap,
)
from noisystudent.layout import PRED, VOTE_PREFIX, prob_column

logger = logging.getLogger(__name__)

PRIMARY_METRIC = "balanced_accuracy"  # RunConfig.primary_metric's default
BETTER, WORSE, NO_DIFFERENCE, NOT_COMPARABLE = "better", "worse", "no detectable difference", "not comparable"
FEW_UNITS = 10  # below this many patients a bootstrap interval is too coarse to lean on
BINARY_ONLY = tuple(m for m in BOOTSTRAP_METRICS if m != "accuracy")  # NaN with more than two classes
_WARNED: set[str] = set()  # warnings this process has logged


@dataclass
class Comparison:
    """B minus A per metric with percentile intervals; McNemar when both sides are single tables."""

    name_a: str
    name_b: str
    table: pd.DataFrame  # metric, a, b, difference, low, high, resamples
    unit: str  # "patient" or "image": what the bootstrap resamples
    n_units: int
    n_images: int
    n_resamples: int
    seed: int
    level: float
    mcnemar: McNemar | None = None
    notes: list[str] = field(default_factory=list)
    primary_metric: str = PRIMARY_METRIC  # the metric whose verdict is the comparison's

    def row(self, metric: str | None = None) -> pd.Series:
        """One metric's row; the primary metric's by default."""
        return self.table.set_index("metric").loc[metric or self.primary_metric]


def compare_predictions(side_a: list[pd.DataFrame], side_b: list[pd.DataFrame], classes: list[str], positive: str | None,
                        name_a: str = "A", name_b: str = "B", n_resamples: int = MIN_RESAMPLES, seed: int = 0,
                        level: float = 0.95, majority_a: bool = False, majority_b: bool = False,
                        primary_metric: str = PRIMARY_METRIC) -> Comparison:
    """Paired bootstrap of B - A (and McNemar's test for single tables) on the images both sides share.

    Resamples patients when every image has one, else images. Each metric gets
    its interval, a two-sided bootstrap p-value and its own verdict; the
    comparison's verdict is that of ``primary_metric``. Rows without a label
    are ignored.

    Args:
        side_a: Side A: one prediction table (an ensemble) or several (fold
            models, whose metrics are averaged). Columns path, label, patient,
            pred and ``prob_<positive>`` (for AUC).
        side_b: Side B, likewise, on the same labelled images.
        classes: The class names.
        positive: The positive class of a two-class task; ``None`` or more
            than two classes: only accuracy is compared (a note says so).
        name_a: Name of side A in texts; default ``"A"``.
        name_b: Name of side B; default ``"B"``.
        n_resamples: Bootstrap resamples; default 2000, the minimum.
        seed: Seed of the resampling; default 0.
        level: Coverage of the interval; default 0.95.
        majority_a: Side A is a majority vote: score its AUC with the share of
            ``vote_fold<k>`` columns voting positive (it has no probability of
            its own). Default ``False``.
        majority_b: The same for side B.
        primary_metric: The metric whose verdict is the comparison's (one of
            BOOTSTRAP_METRICS); default ``"balanced_accuracy"``.

    Returns:
        Comparison: ``table`` (metric, a, b, difference, low, high,
        resamples, p_value), ``unit`` ("patient" or "image"), ``n_units``,
        ``n_images``, the bootstrap settings, ``mcnemar`` (a McNemar when both
        sides are single tables, else ``None``), ``notes`` and
        ``primary_metric``; ``row(metric)`` gives one metric's row (the
        primary metric's by default).

    Raises:
        DataError: Fewer than 2000 resamples, or the sides were not evaluated
            on the same labelled images (or label them differently).
        ConfigError: ``primary_metric`` is not a compared metric.

    Example:
        >>> import pandas as pd
        >>> import noisystudent as ns
        >>> images = pd.DataFrame({"path": [f"c{i}.bmp" for i in range(8)], "label": ["all"] * 4 + ["hem"] * 4,
        ...                        "patient": ["P1", "P1", "P2", "P2", "H1", "H1", "H2", "H2"]})
        >>> teacher = images.assign(pred=["all", "hem", "all", "hem", "hem", "all", "hem", "hem"],
        ...                         prob_all=[0.8, 0.4, 0.7, 0.3, 0.2, 0.6, 0.1, 0.3])
        >>> student = images.assign(pred=["all", "all", "all", "hem", "hem", "hem", "hem", "hem"],
        ...                         prob_all=[0.9, 0.6, 0.8, 0.4, 0.1, 0.3, 0.2, 0.2])
        >>> result = ns.compare_predictions([teacher], [student], ["all", "hem"], "all", "teacher", "student")
        >>> result.unit, result.n_units, result.mcnemar
        ('patient', 4, McNemar(a_only=0, b_only=2, p_value=0.5))
        >>> result.row("accuracy")[["a", "b", "difference", "low", "high"]].round(3).tolist()
        [0.625, 0.875, 0.25, 0.0, 0.5]
        >>> result.primary_metric, result.row().name  # row(): the primary metric's
        ('balanced_accuracy', 'balanced_accuracy')
    """
    if n_resamples < MIN_RESAMPLES:
        raise DataError(f"The bootstrap needs at least {MIN_RESAMPLES} resamples for a 95% interval; got {n_resamples}.")
    if primary_metric not in BOOTSTRAP_METRICS:
        raise ConfigError(f"The primary metric must be one of {', '.join(BOOTSTRAP_METRICS)}; got {primary_metric!r}.")
    tables = [_sorted(t) for t in side_a + side_b]
    _check_same_images(tables, name_a, name_b)
    reference = tables[0]
    groups, unit = _units(reference)
    binary = positive is not None and len(classes) == 2
    truth = _truth(reference, positive if binary else None)
    scored = [_scored(t, positive if binary else None, majority) for t, majority in
              zip(tables, [majority_a] * len(side_a) + [majority_b] * len(side_b))]
    table = paired_bootstrap(truth, scored[:len(side_a)], scored[len(side_a):], groups, n_resamples, seed, level)
    notes = [] if binary else [f"{len(classes)} classes: only accuracy is compared (the others need one positive class)."]
    n_units = len(np.unique(groups))
    if n_units < FEW_UNITS:
        notes.append(f"Only {n_units} {unit}s in the test set: the interval rests on very few independent units.")
    if not binary:
        table.loc[table["metric"].isin(BINARY_ONLY), ["a", "b", "difference", "low", "high", "p_value"]] = np.nan
        if primary_metric != "accuracy":
            notes.append(f"The primary metric {primary_metric} is not compared with {len(classes)} classes; see accuracy.")
    test = None
    if len(side_a) == 1 and len(side_b) == 1:
        labels = as_labels(reference[LABEL])
        test = mcnemar_exact(labels, as_labels(tables[0][PRED]), as_labels(tables[1][PRED]))
    return Comparison(name_a, name_b, table, unit, n_units, len(reference), n_resamples, seed, level, test, notes, primary_metric)


def score_interval(side: list[pd.DataFrame], classes: list[str], positive: str | None, n_resamples: int = MIN_RESAMPLES,
                   seed: int = 0, level: float = 0.95, majority: bool = False) -> pd.DataFrame:
    """One side's metrics with percentile intervals, resampling the same units as :func:`compare_predictions`.

    ``side`` is one prediction table or several fold models' tables of the same
    images (their metric is averaged); with more than two classes only accuracy is given.
    """
    if n_resamples < MIN_RESAMPLES:
        raise DataError(f"The bootstrap needs at least {MIN_RESAMPLES} resamples for a 95% interval; got {n_resamples}.")
    tables = [_sorted(t) for t in side]
    _check_same_images(tables, "one model", "another model of the same side")
    groups, _ = _units(tables[0])
    binary = positive is not None and len(classes) == 2
    truth = _truth(tables[0], positive if binary else None)
    scored = [_scored(t, positive if binary else None, majority) for t in tables]
    table = bootstrap_interval(truth, scored, groups, n_resamples, seed, level)
    if not binary:
        table.loc[table["metric"].isin(BINARY_ONLY), ["value", "low", "high"]] = np.nan
    return table


def interval_verdict(low: float, high: float) -> str:
    """'better' or 'worse' (B vs A) when the interval [low, high] excludes 0; 'not comparable' when it is undefined."""
    if not np.isfinite(low) or not np.isfinite(high):
        return NOT_COMPARABLE
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return NO_DIFFERENCE


def verdict(comparison: Comparison, metric: str | None = None) -> str:
    """The verdict of ``metric``'s own interval (the primary metric's by default)."""
    row = comparison.row(metric)
    return interval_verdict(row["low"], row["high"])


def interval_text(comparison: Comparison, metric: str | None = None) -> str:
    """'accuracy +0.012 (95% CI -0.020 to +0.041; 2000 resamples of 24 patients)'; the primary metric by default."""
    metric = metric or comparison.primary_metric
    row = comparison.row(metric)
    if not np.isfinite(row["difference"]):
        return f"{metric} not comparable"
    level = f"{100 * comparison.level:g}%"
    units = f"{comparison.n_units} {comparison.unit}{'' if comparison.n_units == 1 else 's'}"
    return (f"{metric} {row['difference']:+.3f} ({level} CI {row['low']:+.3f} to {row['high']:+.3f}; "
            f"{comparison.n_resamples} resamples of {units})")


def mcnemar_text(comparison: Comparison) -> str:
    test = comparison.mcnemar
    if test is None:
        return ""
    return (f"McNemar exact p = {test.p_value:.3g} ({test.b_only} images right only by {comparison.name_b}, "
            f"{test.a_only} only by {comparison.name_a})")


def comparison_table(comparison: Comparison) -> pd.DataFrame:
    """The table with each row's own verdict, the sides named (a_name, b_name) and the bootstrap's unit, for CSV files and reports."""
    table = comparison.table
    return table.assign(verdict=[interval_verdict(low, high) for low, high in zip(table["low"], table["high"])],
                        a_name=comparison.name_a, b_name=comparison.name_b, unit=comparison.unit, units=comparison.n_units,
                        images=comparison.n_images, seed=comparison.seed, level=comparison.level)


# --- helpers -------------------------------------------------------------------


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    rows = table[as_labels(table[LABEL]) != ""] if LABEL in table else table
    return rows.sort_values(PATH, kind="stable").reset_index(drop=True)


def _check_same_images(tables: list[pd.DataFrame], name_a: str, name_b: str) -> None:
    first = tables[0]
    if first.empty:
        raise DataError(f"{name_a} has no labelled test predictions to compare.")
    for table in tables[1:]:
        if len(table) != len(first) or (table[PATH].to_numpy() != first[PATH].to_numpy()).any():
            raise DataError(f"{name_a} and {name_b} were not evaluated on the same test images; compare runs with the same outer test set.")
        if (as_labels(table[LABEL]) != as_labels(first[LABEL])).any():
            raise DataError(f"{name_a} and {name_b} give the same test images different labels.")


def _units(table: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Patients; an image without a patient id is a unit of its own (all images when none has an id).

    One image without an id used to switch the whole bootstrap from patients
    to images; now it only adds one unit, and a warning says so once.
    """
    patients = table[PATIENT].astype(str).to_numpy() if PATIENT in table else np.full(len(table), "")
    missing = (patients == "") | (patients == "nan")
    if missing.all():
        return table[PATH].astype(str).to_numpy(), "image"
    if not missing.any():
        return patients, "patient"
    _warn_once(f"{int(missing.sum())} of {len(missing)} test images have no patient id: the bootstrap resamples each "
               "of them as a patient of its own, so if they share patients the interval is too narrow.")
    paths = table[PATH].astype(str).to_numpy()
    return np.where(missing, np.char.add("image:", paths), np.char.add("patient:", patients)), "patient"


def _warn_once(message: str) -> None:
    """Log ``message`` the first time only: a run compares many pairs of models on the same test set."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _truth(table: pd.DataFrame, positive: str | None) -> np.ndarray:
    labels = as_labels(table[LABEL])
    return labels == str(positive) if positive is not None else np.ones(len(labels), bool)


def _scored(table: pd.DataFrame, positive: str | None, majority: bool) -> Scored:
    """Binary: calls of the positive class and its score. Otherwise: 'called' means 'right' (accuracy only)."""
    pred = as_labels(table[PRED])
    if positive is None:
        return Scored(pred == as_labels(table[LABEL]), None)
    return Scored(pred == str(positive), _score(table, positive, majority))


def _score(table: pd.DataFrame, positive: str, majority: bool) -> np.ndarray | None:
    if majority:
        votes = [c for c in table.columns if str(c).startswith(VOTE_PREFIX)]
        return (table[votes].astype(str) == str(positive)).mean(axis=1).to_numpy() if votes else None
    column = prob_column(str(positive))
    return table[column].to_numpy(dtype=np.float64) if column in table else None
