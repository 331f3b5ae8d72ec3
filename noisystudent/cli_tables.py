"""Rich tables printed by the CLI: the results of a run and a data set inspection."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from . import run_layout as layout

SHOWN = ["accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auc", "kappa"]


def print_results(_out, table: pd.DataFrame, run: Path, console: Console | None = None) -> None:
    console = console or Console()
    if table.empty:
        console.print("No finished models yet.")
        return
    for split in ("validation", "test"):
        part = table[table[layout.EVAL_SPLIT] == split]
        if not part.empty:
            console.print(results_table(part, f"{split} set" if split == "test" else "validation (out-of-fold)"))
    console.print(f"Results: {Path(run) / layout.RESULTS / layout.METRICS}   Report: noisystudent report {run}")


def results_table(part: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for column in ("model", "round", "fold", "voting", "n"):
        table.add_column(column, justify="right" if column in ("round", "n") else "left")
    for metric in SHOWN:
        table.add_column(metric, justify="right")
    for _, row in part.iterrows():
        style = "bold" if row[layout.FOLD_COLUMN] in ("mean", "ensemble", "oof") else None
        n = "" if pd.isna(row["n"]) else f"{row['n']:.0f}"
        cells = [str(row[layout.MODEL_KIND]), str(row[layout.ROUND]), str(row[layout.FOLD_COLUMN]), str(row[layout.VOTING] or ""), n]
        cells += [_fmt(row[m]) for m in SHOWN]
        table.add_row(*cells, style=style)
    return table


def _fmt(value) -> str:
    return "-" if pd.isna(value) else f"{value:.3f}"


def print_inspection(console: Console, report) -> None:
    console.print(f"[bold]Format:[/] {report.format}    [bold]Images:[/] {report.n_images}")
    for title, frame in (("Images per subset and class", report.class_counts), ("Images per patient and class", report.patient_counts), ("Image sizes", report.size_counts)):
        console.print(frame_table(frame, title))
    if report.problems:
        console.print(f"[bold red]{len(report.problems)} problem(s):[/]")
        for problem in report.problems:
            console.print(f"  - {problem}", highlight=False)
    else:
        console.print("[green]No problems found.[/]")


def frame_table(frame: pd.DataFrame, title: str, limit: int = 40) -> Table:
    table = Table(title=title)
    shown = frame.reset_index()
    for column in shown.columns:
        table.add_column(str(column))
    for _, row in shown.head(limit).iterrows():
        table.add_row(*[str(v) for v in row])
    if len(shown) > limit:
        table.caption = f"{len(shown) - limit} more rows not shown"
    return table
