"""The report's evidence: results/comparison.csv (for the headline, see tables.headline) and the pseudo-label quality figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from noisystudent.layout import EVAL_SPLIT, FOLD_COLUMN, ROUND, SPLIT_MASKED, results_dir
from noisystudent.report.html import FigureEntry
from noisystudent.report.plots import round_colour, save
from noisystudent.report.tables import display_name
from noisystudent.run.evidence import COMPARISON
from noisystudent.run.tables import read_table

QUALITY_PANELS = (("accuracy", "accuracy of all masked images"), ("ece", "expected calibration error"),
                  ("kept", "images kept after threshold and balancing"))


def read_comparisons(run: Path) -> pd.DataFrame | None:
    path = results_dir(run) / COMPARISON
    if not path.exists():
        return None
    try:
        table = read_table(path)
    except pd.errors.EmptyDataError:  # a run without students writes an empty comparison.csv (a bare newline)
        return None
    return table if len(table) else None


def pseudo_quality_figures(metrics: pd.DataFrame | None, folder: Path) -> list[FigureEntry]:
    """Accuracy, calibration and kept count of the pseudo-labels per round (one line per fold)."""
    figure = pseudo_quality_figure(metrics)
    if figure is None:
        return []
    save(figure, folder / "pseudo_quality.png")
    return [FigureEntry("pseudo_quality.png", "Pseudo-label quality against the masked part's hidden labels",
                        "Per fold and round: accuracy of the pseudo-labels on all masked images, expected calibration "
                        "error of their confidence (15 bins), and how many masked images the student got after the "
                        "threshold and balancing. The hidden labels are read only here, never in training.")]


def pseudo_quality_figure(metrics: pd.DataFrame | None) -> Figure | None:
    """The figure of ``pseudo_quality_figures``, or None when no masked part was scored."""
    if metrics is None or EVAL_SPLIT not in metrics or not (metrics[EVAL_SPLIT] == SPLIT_MASKED).any():
        return None
    rows = metrics[(metrics[EVAL_SPLIT] == SPLIT_MASKED) & metrics[FOLD_COLUMN].astype(str).str.fullmatch(r"\d+")]
    rounds = sorted(set(rows[ROUND].astype(int)))
    figure = Figure(figsize=(12, 3.6), layout="constrained")
    for axes, (column, title) in zip(figure.subplots(1, len(QUALITY_PANELS)), QUALITY_PANELS):
        for index, (fold, part) in enumerate(rows.groupby(FOLD_COLUMN)):
            part = part.sort_values(ROUND)
            axes.plot(part[ROUND].astype(int), part[column].astype(float), marker="o", color=round_colour(index), label=f"fold {fold}")
        axes.set_title(title)
        axes.set_xlabel("round that pseudo-labelled (0: teacher)")
        _round_ticks(axes, rounds)
    figure.axes[0].legend(fontsize="small")
    return figure


def _round_ticks(axes: Axes, rounds: list[int]) -> None:
    """One tick per round; a single round gets a one-round-wide axis (the default would tick -0.04 ... 0.04)."""
    if len(rounds) <= 1:
        only = rounds[0] if rounds else 0
        axes.set_xlim(only - 1, only + 1)
        axes.set_xticks([only])
        return
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def comparison_frame(comparisons: pd.DataFrame | None) -> pd.DataFrame:
    """Every tested comparison, the primary one first: both sides, student minus teacher, its own interval and verdict, p-values.

    Each row's "interval excludes 0" is that row's own interval's; secondary
    rows carry Holm-adjusted p-values. A comparison.csv written before there
    was a primary comparison shows its accuracy rows.
    """
    if comparisons is None or comparisons.empty:
        return pd.DataFrame()
    rows = comparisons if "endpoint" in comparisons.columns else comparisons[comparisons["metric"] == "accuracy"].assign(endpoint="")
    excludes = (rows["low"] > 0) | (rows["high"] < 0)
    return pd.DataFrame({
        "endpoint": rows["endpoint"], "metric": rows["metric"].map(display_name),
        "student": rows["b_name"], "teacher": rows["a_name"],
        "student value": rows["b"].round(3), "teacher value": rows["a"].round(3),
        "student - teacher": rows["difference"].map(_signed),
        "95% interval": [f"{_signed(low)} to {_signed(high)}" for low, high in zip(rows["low"], rows["high"])],
        "interval excludes 0": excludes.map({True: "yes", False: "no"}),
        "p": _p_texts(rows, "p_value"), "p (Holm)": _p_texts(rows, "p_holm"),
        "resampled": [f"{n} {unit}s" for n, unit in zip(rows["units"], rows["unit"])],
        "McNemar p": _p_texts(rows, "mcnemar_p"),
    }).reset_index(drop=True)


def _signed(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:+.3f}"


def _p_texts(rows: pd.DataFrame, column: str) -> list[str]:
    values = rows[column] if column in rows.columns else pd.Series(np.nan, index=rows.index)
    return ["" if pd.isna(p) else f"{p:.3g}" for p in values]
