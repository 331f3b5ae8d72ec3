"""The report's calibration: reliability diagrams and ECE / Brier / NLL before and after temperature scaling.

Read from results/calibration.csv and results/reliability.csv (run/calibration.py):
every fold model and the ensemble's mean probability on the outer test set.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from noisystudent.layout import CALIBRATION_COLUMN, CALIBRATION_TABLE, FOLD_COLUMN, MODEL_KIND, RELIABILITY, TEMPERATURE, results_dir
from noisystudent.report.html import FigureEntry, TableEntry
from noisystudent.report.plots import STUDENT_COLOUR, TEACHER_COLOUR, save
from noisystudent.run.tables import read_table

FIGURE = "reliability.png"
ENSEMBLE = "ensemble"
MODES = (("none", "before: the models' probabilities"), ("temperature", "after temperature scaling"))
KIND_COLOURS = {"teacher": TEACHER_COLOUR, "student": STUDENT_COLOUR}


def _read(run: Path, name: str) -> pd.DataFrame | None:
    path = results_dir(run) / name
    if not path.is_file():
        return None
    try:
        table = read_table(path)
    except pd.errors.EmptyDataError:
        return None
    return table if len(table) else None


def calibration_tables(run: Path) -> list[TableEntry]:
    """One table: each fold model and ensemble, ECE, Brier and NLL before and after, with its temperature."""
    table = _read(run, CALIBRATION_TABLE)
    if table is None:
        return []
    table = table.assign(**{FOLD_COLUMN: table[FOLD_COLUMN].astype(str)})
    keys = [MODEL_KIND, FOLD_COLUMN]
    before = table[table[CALIBRATION_COLUMN] == "none"].set_index(keys)
    after = table[table[CALIBRATION_COLUMN] == "temperature"].set_index(keys)
    frame = pd.DataFrame({
        "T": after[TEMPERATURE].round(3),
        "ECE before": before["ece"].round(3), "ECE after": after["ece"].round(3),
        "Brier before": before["brier"].round(3), "Brier after": after["brier"].round(3),
        "NLL before": before["nll"].round(3), "NLL after": after["nll"].round(3), "images": before["n"],
    }).reset_index()
    return [TableEntry("Calibration on the outer test set, before and after temperature scaling",
                       "Temperature T fitted on validation only: each fold model on its own validation part, the ensemble "
                       "on all validation parts pooled (each image predicted by the model that did not train on it) and "
                       "applied to the mean probability of the fold models (pool-then-calibrate). T > 1 softens "
                       "over-confident probabilities, T < 1 sharpens under-confident ones; calls do not change. ECE: "
                       "expected calibration error, 15 equal-width confidence bins; Brier: squared error summed over "
                       "classes; NLL: mean negative log-likelihood. Lower is better for all three. noisystudent ensemble "
                       "predict --calibration temperature applies the ensemble's T.", frame)]


def calibration_figures(run: Path, folder: Path) -> list[FigureEntry]:
    """Reliability diagrams: one row per model kind, before and after; fold models thin, the ensemble bold."""
    points = _read(run, RELIABILITY)
    if points is None:
        return []
    kinds = [k for k in ("teacher", "student") if (points[MODEL_KIND] == k).any()]
    figure = Figure(figsize=(9, 4 * len(kinds)), layout="constrained")
    grid = figure.subplots(len(kinds), len(MODES), squeeze=False, sharex=True, sharey=True)
    left = max(0.0, float(points["lo"].min()) - 0.02)  # two classes: no confidence below 0.5
    for row, kind in enumerate(kinds):
        for column, (mode, title) in enumerate(MODES):
            _reliability_axes(grid[row][column], points[(points[MODEL_KIND] == kind) & (points[CALIBRATION_COLUMN] == mode)],
                              KIND_COLOURS[kind], f"{kind}s, {title}", left)
    save(figure, folder / FIGURE)
    return [FigureEntry(FIGURE, "Reliability diagrams on the outer test set",
                        "Accuracy against mean confidence (top probability) in 15 equal-width bins; a calibrated model lies "
                        "on the diagonal. Thin lines: each fold model (its own temperature after scaling); bold: the "
                        "ensemble's mean probability; marker area: images in the bin.")]


def _reliability_axes(axes, points: pd.DataFrame, colour: str, title: str, left: float) -> None:
    axes.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1)
    for fold, part in points.groupby(points[FOLD_COLUMN].astype(str)):
        part = part.sort_values("bin")
        ensemble = fold == ENSEMBLE
        axes.plot(part["confidence"], part["accuracy"], color=colour if ensemble else "#888888",
                  linewidth=2.2 if ensemble else 0.8, alpha=1 if ensemble else 0.7, label="ensemble" if ensemble else None)
        if ensemble:
            axes.scatter(part["confidence"], part["accuracy"], s=8 + 200 * part["count"] / part["count"].sum(), color=colour)
    axes.set_title(title, fontsize="medium")
    axes.set_xlim(left, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("mean confidence")
    axes.set_ylabel("accuracy")
    axes.legend(loc="upper left", fontsize="small")
