"""The report's figures, drawn with matplotlib's Agg canvas (no display needed).

Each function takes ready data, writes one PNG atomically and returns its path.
Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so no
global backend state is touched and nothing is left open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc as area_under
from sklearn.metrics import confusion_matrix, roc_curve

from noisystudent.atomic import atomic_write
from noisystudent.layout import CONFIDENCE, EPOCH, PRED, STUDENT, TEACHER, TRAIN_LOSS, VAL_LOSS, model_label
from noisystudent.report.tables import ENSEMBLE_ROW, SummaryRow, display_name, plural
from noisystudent.run.evidence import PRIMARY

DPI = 110
VAL_ACCURACY = "val_accuracy"
TEACHER_COLOUR, STUDENT_COLOUR = "#4c72b0", "#dd8452"
FPR_GRID = np.linspace(0.0, 1.0, 201)
BETTER, WORSE, UNDECIDED = "#55a868", "#c44e52", "#bbbbbb"  # grey: the interval includes 0 or is undefined
HATCHES = (None, "///", "ooo", "xx")
VOTING_HATCHES = {"majority": "///", "soft": "ooo"}  # ensembles: one hatch per rule, dense enough to tell apart
PAIR_HATCHES = {**VOTING_HATCHES, "fold": None}  # differences: the ensembles' hatches, plain for the fold means


def save(figure: Figure, path: Path) -> Path:
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=DPI))
    return path


def round_colour(round_: int) -> str:
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    return palette[round_ % len(palette)]


def round_style(round_: int) -> str:
    return "--" if round_ == 0 else "-"


def round_name(round_: int) -> str:
    return model_label(round_)


# --- 1. training curves ------------------------------------------------------


def plot_curves(histories: dict[int, pd.DataFrame], fold: int, path: Path) -> Path:
    """Loss (train faint, validation bold) and validation accuracy per epoch, one line per round."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for round_, history in sorted(histories.items()):
        style = {"color": round_colour(round_), "linestyle": round_style(round_)}
        if TRAIN_LOSS in history:
            loss_axes.plot(history[EPOCH], history[TRAIN_LOSS], alpha=0.45, linewidth=1.2, **style)
        if VAL_LOSS in history:
            loss_axes.plot(history[EPOCH], history[VAL_LOSS], marker="o", markersize=3, linewidth=2, **style)
        if VAL_ACCURACY in history:
            accuracy_axes.plot(history[EPOCH], history[VAL_ACCURACY], marker="o", markersize=3, linewidth=2,
                               label=round_name(round_), **style)
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="cross-entropy loss")
    accuracy_axes.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    kinds = [Line2D([], [], color="black", alpha=0.45, linewidth=1.2, label="train"),
             Line2D([], [], color="black", marker="o", markersize=3, linewidth=2, label="validation")]
    loss_axes.legend(handles=kinds, loc="upper right", fontsize=9)
    if accuracy_axes.lines:
        accuracy_axes.legend(loc="lower right", fontsize=9)
    else:
        accuracy_axes.text(0.5, 0.5, "no validation accuracy recorded", ha="center", va="center",
                           color="grey", transform=accuracy_axes.transAxes)
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"Fold {fold}: training curves (teacher dashed, students solid)")
    return save(figure, path)


# --- 2. confusion matrices ---------------------------------------------------


def plot_confusions(panels: Sequence[tuple[str, Sequence, Sequence]], classes: Sequence[str], positive: str | None,
                    title: str, path: Path, columns: int | None = None) -> Path:
    """One annotated confusion matrix per (title, y_true, y_pred) panel, in a grid.

    A panel whose y_true is None is drawn as a 'not available' placeholder.
    Panels grow with the number of classes so that up to 10 stay legible."""
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    side = max(3.9, 0.62 * len(classes) + 2.2)  # inches per panel: room for the cells and the class names
    figure = Figure(figsize=(side * columns, side * 0.95 * rows + 0.6), layout="constrained")
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    names = [_short(c) + ("\n(positive)" if c == positive and len(classes) == 2 else "") for c in classes]
    for axes, (panel_title, truth, guess) in zip(grid, panels):
        if truth is None:  # placeholder for a model that has not been trained yet
            axes.set_axis_off()
            axes.text(0.5, 0.5, f"{panel_title}\nnot available", ha="center", va="center", color="grey")
            continue
        _confusion_axes(axes, confusion_matrix(list(truth), list(guess), labels=list(classes)), names, panel_title)
    for axes in grid[len(panels):]:
        axes.set_visible(False)
    figure.suptitle(title)
    return save(figure, path)


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _confusion_axes(axes, matrix: np.ndarray, names: list[str], title: str) -> None:
    axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    totals = matrix.sum(axis=1, keepdims=True)
    size = 11 if len(names) <= 3 else 9 if len(names) <= 6 else 7
    for (i, j), count in np.ndenumerate(matrix):
        share = count / totals[i, 0] if totals[i, 0] else 0.0
        colour = "white" if count > matrix.max() / 2 else "black"
        axes.text(j, i, f"{count}\n{share:.0%}", ha="center", va="center", color=colour, fontsize=size)
    ticks = range(len(names))
    rotate = len(names) > 2  # long names side by side overlap from three classes on
    axes.set_xticks(ticks, names, rotation=40 if rotate else 0, ha="right" if rotate else "center",
                    rotation_mode="anchor", fontsize=max(size - 1, 7))
    axes.set_yticks(ticks, names, fontsize=max(size - 1, 7))
    axes.set(xlabel="predicted", ylabel="true", title=f"{title}\naccuracy {np.trace(matrix) / max(matrix.sum(), 1):.3f}, n={matrix.sum()}")


# --- 3. ROC curves -----------------------------------------------------------


def plot_roc(fold_curves: dict[str, list[tuple[np.ndarray, np.ndarray]]],
             ensemble_curves: dict[str, tuple[np.ndarray, np.ndarray]], positive: str, path: Path) -> Path:
    """Left: per-fold out-of-fold ROC (thin) and their mean, per model kind.
    Right (when given): ensembles on the test set. Inputs are (y_true_is_positive, score)."""
    panels = [p for p in (fold_curves, ensemble_curves) if p]
    figure = Figure(figsize=(5.4 * len(panels), 5), layout="constrained")
    grid = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)).ravel()
    axes_iter = iter(grid)
    if fold_curves:
        axes = next(axes_iter)
        for index, (name, curves) in enumerate(fold_curves.items()):
            _mean_roc(axes, name, curves, TEACHER_COLOUR if index == 0 else STUDENT_COLOUR, "--" if index == 0 else "-")
        _roc_axes(axes, "Out-of-fold validation (mean of folds)")
    if ensemble_curves:
        axes = next(axes_iter)
        seen = {TEACHER: 0, STUDENT: 0}
        for name, (truth, score) in ensemble_curves.items():
            kind = TEACHER if TEACHER in name.lower() else STUDENT
            styles, colour = (("--", "-."), TEACHER_COLOUR) if kind == TEACHER else (("-", ":"), STUDENT_COLOUR)
            fpr, tpr, _ = roc_curve(truth, score)
            axes.plot(fpr, tpr, linewidth=2.4 if seen[kind] == 0 else 1.6, color=colour,
                      linestyle=styles[seen[kind] % 2], label=f"{name} (AUC {area_under(fpr, tpr):.3f})")
            seen[kind] += 1
        _roc_axes(axes, "Ensembles on the test set")
    figure.suptitle(f"ROC curves, positive class: {positive}")
    return save(figure, path)


def plot_class_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """One one-vs-rest ROC curve per class; inputs are (y_true_is_class, score)."""
    figure = Figure(figsize=(6.4, 5.6), layout="constrained")
    axes = figure.subplots()
    for index, (name, (truth, score)) in enumerate(curves.items()):
        fpr, tpr, _ = roc_curve(truth, score)
        axes.plot(fpr, tpr, linewidth=2, color=round_colour(index), linestyle=("-", "--", "-.", ":")[index // 8 % 4],
                  label=f"{_short(name, 24)} (AUC {area_under(fpr, tpr):.3f})")
    _roc_axes(axes, title)
    axes.legend(loc="lower right", fontsize=9 if len(curves) <= 6 else 8)
    return save(figure, path)


def _mean_roc(axes, name: str, curves: list[tuple[np.ndarray, np.ndarray]], colour: str, style: str) -> None:
    interpolated, aucs = [], []
    for truth, score in curves:
        fpr, tpr, _ = roc_curve(truth, score)
        axes.plot(fpr, tpr, color=colour, alpha=0.25, linewidth=1, linestyle=style)
        interpolated.append(np.interp(FPR_GRID, fpr, tpr))
        aucs.append(area_under(fpr, tpr))
    mean = np.mean(interpolated, axis=0)
    mean[0] = 0.0
    spread = f" ± {np.std(aucs, ddof=1):.3f}" if len(aucs) > 1 else ""
    axes.plot(FPR_GRID, mean, color=colour, linewidth=2.2, linestyle=style,
              label=f"{name}, {plural(len(curves), 'fold')} (AUC {np.mean(aucs):.3f}{spread})")


def _roc_axes(axes, title: str) -> None:
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(title=title, xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)",
             xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8.5)


# --- 4. pseudo-label confidence ----------------------------------------------


def plot_pseudo_confidence(pseudo: dict[int, pd.DataFrame], folds: dict[int, int], classes: Sequence[str],
                           path: Path) -> Path:
    """Histogram of pseudo-label confidence per round (``folds[round]`` folds pooled), stacked by predicted class."""
    rounds = sorted(pseudo)
    figure = Figure(figsize=(4.6 * len(rounds), 3.8), layout="constrained")
    grid = np.atleast_1d(figure.subplots(1, len(rounds), squeeze=False)).ravel()
    low = 1.0 / max(len(classes), 2)
    bins = np.linspace(low, 1.0, 21)
    for axes, round_ in zip(grid, rounds):
        table = pseudo[round_]
        present = [c for c in classes if (table[PRED] == c).any()] or sorted(table[PRED].unique())
        values = [table.loc[table[PRED] == c, CONFIDENCE].to_numpy(float) for c in present]
        axes.hist(values, bins=bins, stacked=True, label=[f"predicted {c}" for c in present],
                  color=[round_colour(i) for i in range(len(present))])
        axes.set(title=f"Made by round {round_} for round {round_ + 1}\n{plural(len(table), 'image')}, {plural(folds[round_], 'fold')}",
                 xlabel="confidence (top softmax probability)", ylabel="images")
        axes.legend(fontsize=8.5, loc="upper left")
        axes.grid(alpha=0.3)
    figure.suptitle("Pseudo-label confidence")
    return save(figure, path)


# --- 5. did Noisy Student help? ----------------------------------------------


def plot_helped(rows: Sequence[SummaryRow], metrics: Sequence[str], title: str, path: Path,
                comparisons: pd.DataFrame | None = None) -> Path:
    """Top: every summary row as bars per metric (fold means with ±sd). Bottom: student − teacher with its interval.

    The differences and intervals are results/comparison.csv's (``comparisons``);
    without it (no outer test set) the differences of the summary rows are drawn
    without intervals, all grey.
    """
    figure = Figure(figsize=(max(9, 1.1 * len(metrics) + 3.5), 7.2), layout="constrained")
    values_axes, delta_axes = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    x = np.arange(len(metrics))
    width = 0.8 / max(len(rows), 1)
    for index, row in enumerate(rows):
        offset = (index - (len(rows) - 1) / 2) * width
        sd = None if row.sd is None else row.sd[list(metrics)].to_numpy(float)
        values_axes.bar(x + offset, row.values[list(metrics)].to_numpy(float), width, yerr=sd, capsize=2,
                        color=TEACHER_COLOUR if row.model == TEACHER else STUDENT_COLOUR,
                        hatch=VOTING_HATCHES.get(row.voting, "//") if row.kind == ENSEMBLE_ROW else None,
                        edgecolor="black", linewidth=0.4, label=row.label)
    values_axes.set(ylabel="value", title=title)
    values_axes.set_ylim(min(0.0, _lowest(rows, metrics)), 1.05)
    values_axes.legend(fontsize=10, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _plot_deltas(delta_axes, _differences(rows, metrics, comparisons), metrics)
    delta_axes.set_xticks(x, [display_name(m) for m in metrics], rotation=30, ha="right")
    primary = _primary_metric(comparisons)
    for label, metric in zip(delta_axes.get_xticklabels(), metrics):
        label.set_fontweight("bold" if metric == primary else "normal")
    for axes in (values_axes, delta_axes):
        axes.grid(axis="y", alpha=0.3)
    return save(figure, path)


def difference_colour(low: float, high: float) -> str:
    """Green where the interval of student − teacher lies above 0, red below; grey where it includes 0 or is undefined."""
    if np.isfinite(low) and np.isfinite(high) and low > 0:
        return BETTER
    if np.isfinite(low) and np.isfinite(high) and high < 0:
        return WORSE
    return UNDECIDED


def _differences(rows: Sequence[SummaryRow], metrics: Sequence[str], comparisons: pd.DataFrame | None) -> list[tuple[str, pd.DataFrame]]:
    """(pair name, difference/low/high per metric) from comparison.csv, else from the summary rows without intervals."""
    if comparisons is not None and not comparisons.empty:
        pair = comparisons["pair"] if "pair" in comparisons.columns else comparisons["a_name"]
        return [(str(name), part.set_index("metric").reindex(list(metrics))[["difference", "low", "high"]].astype(float))
                for name, part in comparisons.groupby(pair, sort=False)]
    return [(name, pd.DataFrame({"difference": student.values[list(metrics)].to_numpy(float) - teacher.values[list(metrics)].to_numpy(float),
                                 "low": np.nan, "high": np.nan}, index=list(metrics)))
            for name, teacher, student in _teacher_student_pairs(rows)]


def _primary_metric(comparisons: pd.DataFrame | None) -> str | None:
    """The metric of comparison.csv's primary row (its tick label is drawn bold), if there is one."""
    if comparisons is None or "endpoint" not in comparisons.columns:
        return None
    rows = comparisons.loc[comparisons["endpoint"] == PRIMARY, "metric"]
    return str(rows.iloc[0]) if len(rows) else None


def _plot_deltas(axes, pairs: list[tuple[str, pd.DataFrame]], metrics: Sequence[str]) -> None:
    x = np.arange(len(metrics))
    width = 0.8 / max(len(pairs), 1)
    handles = []
    for index, (name, table) in enumerate(pairs):
        offset = (index - (len(pairs) - 1) / 2) * width
        colours = [difference_colour(low, high) for low, high in zip(table["low"], table["high"])]
        hatch = PAIR_HATCHES.get(name.split(" ")[0], HATCHES[index % len(HATCHES)])
        error = np.abs(np.vstack([table["difference"] - table["low"], table["high"] - table["difference"]]))
        axes.bar(x + offset, table["difference"].to_numpy(), width, color=colours, edgecolor="black", linewidth=0.5, hatch=hatch,
                 yerr=error, capsize=2, error_kw={"linewidth": 0.8})
        handles.append(Patch(facecolor="#dddddd", edgecolor="black", hatch=hatch, label=name))
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set(ylabel="student − teacher", title="Final students − teachers with 95% intervals, primary metric in bold "
             "(green/red: interval above/below 0; grey: includes 0 or none)")
    if handles:
        axes.legend(handles=handles, fontsize=10, loc="upper left", bbox_to_anchor=(1.01, 1.0), handleheight=1.6, handlelength=2.6)


def _teacher_student_pairs(rows: Sequence[SummaryRow]) -> list[tuple[str, SummaryRow, SummaryRow]]:
    pairs = []
    for kind, voting in dict.fromkeys((row.kind, row.voting) for row in rows):
        matched = {row.model: row for row in rows if (row.kind, row.voting) == (kind, voting)}
        if len(matched) == 2:
            pairs.append(("fold mean" if kind != ENSEMBLE_ROW else f"{voting} vote", matched[TEACHER], matched[STUDENT]))
    return pairs


def _lowest(rows: Sequence[SummaryRow], metrics: Sequence[str]) -> float:
    values = [float(v) for row in rows for v in row.values[list(metrics)] if np.isfinite(v)]
    return min(values, default=0.0) - 0.05
