"""The study's page: STUDY/report/report.html with the answer, its tables and one figure of the intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from noisystudent import atomic  # noqa: E402
from noisystudent.experiment import estimates  # noqa: E402
from noisystudent.report.html import FigureEntry, TableEntry, render_page  # noqa: E402
from noisystudent.report.plots import save  # noqa: E402

FIGURE = "method.png"
GREY, GREEN, RED = "#9a9a9a", "#2e7d32", "#c62828"


def write_study_report(result: estimates.StudyResult, design: estimates.Design) -> Path:
    """Write report/report.html (and report/method.png) of the study; return the page's path."""
    folder = Path(result.study) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    primary = result.table[result.table["role"] == "primary"]
    if not primary.empty:
        plot_method(primary, design.primary_metric, folder / FIGURE)
        figures.append(FigureEntry(FIGURE, f"{design.primary_metric}: each seed and the method",
                                   "Differences on the primary metric with 95% intervals: per seed over its test patients, "
                                   "for the method over seeds and patients (two-level bootstrap). Grey: the interval includes 0."))
    page = render_page(f"Study {Path(result.study).name}", _design_rows(design), result.headline,
                       [f"Not finished: {m}" for m in result.missing], _tables(result), figures, before=[_design_html(design)])
    path = folder / "report.html"
    atomic.write_text(path, page)
    return path


def _design_rows(design: estimates.Design) -> dict:
    return {"seed": ", ".join(map(str, design.seeds)), "voting": design.voting, "positive": design.positive}


def _design_html(design: estimates.Design) -> str:
    return ("<h2>Design (declared before the runs)</h2>\n<p>Seeds " + ", ".join(map(str, design.seeds)) + "; arms "
            + ", ".join(design.arms) + f"; primary comparison: {design.primary_metric} of the {design.voting}-vote "
            "ensembles of final students, against the teachers and against the control students, on each seed's outer "
            "test set. Every other metric is secondary (Holm-adjusted p-values).</p>")


def _tables(result: estimates.StudyResult) -> list[TableEntry]:
    tables = []
    if not result.table.empty:
        method = result.table[result.table["level"] == "method"].drop(columns=["level", "seed", "units"])
        seeds = result.table[(result.table["level"] == "seed") & (result.table["role"] == "primary")]
        tables += [TableEntry("The method: mean over seeds", "Two-level bootstrap over seeds and each seed's test patients; "
                              "the primary row first, then the secondary ones with Holm-adjusted p-values.", method),
                   TableEntry("Each seed (primary metric)", "The interval of one seed resamples its test patients only: "
                              "it speaks of that seed's models, not of the method.",
                              seeds[["comparison", "seed", "estimate", "low", "high", "excludes_zero", "units"]])]
    if not result.arms.empty:
        tables.append(TableEntry("Each ensemble on each seed's test set", "The primary metric of every arm's ensemble.",
                                 result.arms.pivot_table(index="seed", columns="ensemble", values="value").reset_index()))
    return tables


def plot_method(primary: pd.DataFrame, metric: str, path: Path) -> Path:
    """One panel per comparison: per-seed intervals and the method's, grey where the interval includes 0."""
    comparisons = list(dict.fromkeys(primary["comparison"]))
    figure, axes = plt.subplots(1, len(comparisons), figsize=(5.5 * len(comparisons), 3.2), squeeze=False)
    for ax, name in zip(axes[0], comparisons):
        rows = primary[primary["comparison"] == name]
        labels = [f"seed {s}" if level == "seed" else "method" for s, level in zip(rows["seed"], rows["level"])]
        for y, row in enumerate(rows.itertuples()):
            colour = interval_colour(row.low, row.high)
            ax.errorbar(row.estimate, y, xerr=[[row.estimate - row.low], [row.high - row.estimate]], fmt="o",
                        color=colour, capsize=3, lw=2.5 if row.level == "method" else 1.2)
        ax.axvline(0, color="#444", lw=0.8)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_title(name)
        ax.set_xlabel(f"difference in {metric.replace('_', ' ')}")
    figure.tight_layout()
    save(figure, path)
    plt.close(figure)
    return path


def interval_colour(low: float, high: float) -> str:
    """Green or red only where the interval excludes 0; grey where it includes 0 or is undefined."""
    if not estimates.excludes_zero(low, high):
        return GREY
    return GREEN if low > 0 else RED
