"""Rich tables printed by the CLI: the results of a run and a data set inspection."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from noisystudent import layout
from noisystudent.evaluation.baseline import no_information_warnings
from noisystudent.evaluation.metrics import CLASS_COLUMN, headline_class_rows, one_vs_rest_rows

# NPV is left to metrics.csv: with NIR and kappa, the table must still fit 80 columns
SHOWN = {"accuracy": "acc", "no_information_rate": "NIR", "kappa": "kappa", "sensitivity": "sens", "specificity": "spec",
         "ppv": "ppv", "f1": "f1", "auc": "auc"}
PER_CLASS_SHOWN = {"sensitivity": "sens", "specificity": "spec", "ppv": "ppv", "npv": "npv", "f1": "f1", "auc": "auc"}
FOLD_LABELS = {"majority": "ens maj", "soft": "ens soft"}
VOTE_SHORT = {"majority": "maj", "soft": "soft"}
HIDDEN_FOLDS = ("variance",)  # in metrics.csv; the table shows the mean only
# The console shows one table: the outer test set when there is one (validation numbers are
# selection-biased and live in metrics.csv and the report), else the validation parts.
SPLIT_TITLES = (("test", "Outer test set"), ("validation", "Validation parts (out-of-fold)"))
LEGEND = ("NIR: no-information rate, the accuracy of always answering the commonest class; "
          "kappa: Cohen's kappa (0 = chance agreement).")


def print_results(_out, table: pd.DataFrame, run: Path, console: Console | None = None, headline: str | None = None) -> None:
    """One table (the outer test set, or the validation parts when there is none), the headline, where the rest is."""
    console = console or Console()
    if table.empty:
        console.print("No finished models yet.")
        return
    if headline:  # the one primary comparison first
        console.print(headline, highlight=False, soft_wrap=True)
    main, per_class = headline_class_rows(table), one_vs_rest_rows(table)
    main = main[~main[layout.FOLD_COLUMN].astype(str).isin(HIDDEN_FOLDS)]
    split, title = next(((s, t) for s, t in SPLIT_TITLES if (main[layout.EVAL_SPLIT] == s).any()), SPLIT_TITLES[-1])
    part = main[main[layout.EVAL_SPLIT] == split]
    if not part.empty:
        console.print(results_table(part, f"{_biased_title(table, split, title)}: {class_scope(part)}"))
    if not per_class.empty:
        console.print(per_class_table(per_class))
    console.print(LEGEND, highlight=False)
    for sentence in no_information_warnings(table):
        console.print(f"[bold yellow]Warning:[/] {escape(sentence)}", highlight=False)
    console.print(f"All rows, with variances: {Path(run) / layout.RESULTS / layout.METRICS}", markup=False)
    console.print(f"Plots and tables: noisystudent report {run}", markup=False)


def class_scope(rows: pd.DataFrame) -> str:
    """What the class-dependent columns are about: the positive class, or macro averages."""
    names = set(rows[CLASS_COLUMN].astype(str)) if CLASS_COLUMN in rows.columns else set()
    if names == {"macro"}:
        return "sens, spec, ppv, f1 and auc are macro averages (unweighted means over the classes of one-vs-rest values)"
    if len(names) == 1:
        positive = names.pop()
        return f"positive class {positive}; auc is the ROC AUC of {positive} against the rest"
    return "every class"


def per_class_table(rows: pd.DataFrame) -> Table:
    """One-vs-rest rows of each class for the ensembles (or the pooled out-of-fold models without a test set)."""
    folds = rows[layout.FOLD_COLUMN].astype(str)
    chosen = rows[folds == "ensemble"] if (folds == "ensemble").any() else rows[folds == "oof"]
    where = "outer test set, ensembles" if (folds == "ensemble").any() else "out-of-fold validation, folds pooled"
    table = Table(title=f"Each class against the rest ({where}); images: of that class; auc: one-vs-rest ROC AUC",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 0))
    for column in ("model", "vote", "class", "images"):
        table.add_column(column, justify="right" if column == "images" else "left", no_wrap=column != "class")
    for short in PER_CLASS_SHOWN.values():
        table.add_column(short, justify="right", no_wrap=True, min_width=5)
    previous = None
    for _, row in chosen.iterrows():
        key = (row[layout.ROUND], row[layout.VOTING])
        if previous is not None and key != previous:
            table.add_section()
        previous = key
        support = "" if pd.isna(row["tp"]) else f"{int(row['tp']) + int(row['fn'])}"
        table.add_row(model_name(row), VOTE_SHORT.get(row[layout.VOTING], row[layout.VOTING] or "-"), str(row[CLASS_COLUMN]), support, *[_fmt(row[m]) for m in PER_CLASS_SHOWN])
    return table
def _biased_title(table: pd.DataFrame, split: str, title: str) -> str:
    """The title, marked when the rows' models were selected on these very images."""
    marks = table.loc[table[layout.EVAL_SPLIT] == split, layout.SELECTION_BIASED] if layout.SELECTION_BIASED in table else []
    if len(marks) and marks.astype(bool).any():
        return f"{title}: SELECTION-BIASED (each model's best epoch was chosen on these images)"
    return title


def print_comparison(comparison, console: Console) -> None:
    """The paired-bootstrap table of ``noisystudent compare`` and its verdict."""
    from noisystudent.evaluation.comparison import interval_text, interval_verdict, mcnemar_text, verdict

    table = Table(title=f"{comparison.name_b} minus {comparison.name_a} (primary metric first)", box=box.SIMPLE_HEAD)
    for column in ("metric", "A", "B", "B - A", f"{100 * comparison.level:g}% interval", "p", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
    rows = comparison.table.sort_values("metric", key=lambda m: m != comparison.primary_metric, kind="stable")
    for _, row in rows.iterrows():
        table.add_row(row["metric"], _fmt(row["a"]), _fmt(row["b"]), _signed(row["difference"]),
                      f"{_signed(row['low'])} to {_signed(row['high'])}", _fmt(row["p_value"]), interval_verdict(row["low"], row["high"]))
    console.print(table)
    console.print(f"{interval_text(comparison)}; {mcnemar_text(comparison)}" if comparison.mcnemar else interval_text(comparison))
    console.print(f"Verdict on the primary metric, {comparison.primary_metric}: {verdict(comparison)}. The other rows are "
                  "secondary: each verdict is its own interval's, without a correction for their number.")
    for note in comparison.notes:
        console.print(f"Note: {note}")


def _signed(value) -> str:
    return "-" if pd.isna(value) else f"{value:+.3f}"


def results_table(part: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 0))
    for column, width in (("model", 7), ("fold", 8), ("n", 4)):
        table.add_column(column, justify="right" if column == "n" else "left", no_wrap=True, min_width=width)
    for short in SHOWN.values():
        table.add_column(short, justify="right", no_wrap=True, min_width=5)
    previous = None
    for _, row in part.iterrows():
        name = model_name(row)
        if previous is not None and name != previous:
            table.add_section()
        previous = name
        fold = FOLD_LABELS.get(row[layout.VOTING], str(row[layout.FOLD_COLUMN]))
        style = "bold" if row[layout.FOLD_COLUMN] in ("mean", "ensemble", "oof") else None
        n = "" if pd.isna(row["n"]) else f"{row['n']:.0f}"
        table.add_row(name, fold, n, *[_fmt(row.get(m)) for m in SHOWN], style=style)
    return table


def model_name(row) -> str:
    """'teacher' or 'student r2': short enough for an 80-column terminal."""
    round_ = int(row[layout.ROUND])
    return layout.TEACHER if round_ == 0 else f"{layout.STUDENT} r{round_}"


def _fmt(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.3f}"


def print_inspection(console: Console, report) -> None:
    console.print(f"[bold]Format:[/] {report.format}    [bold]Images:[/] {report.n_images}")
    known = report.patient_counts.drop(index="(unknown)", errors="ignore")
    patients = (known > 0).sum()
    if len(known):
        console.print("[bold]Patients per class:[/] " + ", ".join(f"{c} {n}" for c, n in patients.items()))
    for title, frame in (("Images per subset and class", report.subset_counts), ("Images per patient and class", report.patient_counts), ("Image sizes (width x height)", report.size_counts), ("Colour modes", report.mode_counts)):
        console.print(frame_table(frame, title))
    if report.problems:
        console.print(f"[bold red]{len(report.problems)} problem(s):[/]")
        for problem in report.problems:
            console.print(f"  - {problem}", highlight=False, markup=False)
    else:
        console.print("[green]No problems found.[/]")


def frame_table(frame: pd.DataFrame, title: str, limit: int = 40) -> Table:
    table = Table(title=title)
    shown = frame if isinstance(frame.index, pd.RangeIndex) else frame.reset_index()
    for column in shown.columns:
        table.add_column(str(column))
    for _, row in shown.head(limit).iterrows():
        table.add_row(*[str(v) for v in row])
    if len(shown) > limit:
        table.caption = f"{len(shown) - limit} more rows not shown"
    return table


def print_prediction_summary(console: Console, prediction, ensemble, voting: str | None) -> None:
    """Counts per predicted class, agreement of the fold models, patient calls, skipped images."""
    table = prediction.table
    console.print(f"{len(table)} images predicted by {len(ensemble.members)} {ensemble.kind}s, {voting or ensemble.config.voting} voting:")
    summary = Table()
    for column in ("predicted", "images", "fraction"):
        summary.add_column(column, justify="left" if column == "predicted" else "right")
    for name in ensemble.classes:
        count = int((table["pred"] == name).sum())
        summary.add_row(name, str(count), f"{count / max(len(table), 1):.3f}")
    console.print(summary)
    console.print(f"Mean agreement of the fold models: {table['agreement'].mean():.3f}")
    if not prediction.patients.empty:
        calls = prediction.patients["call"].value_counts().sort_index()
        console.print(f"Patients: {len(prediction.patients)}, called " + ", ".join(f"{c} {n}" for c, n in calls.items()))
    console.print(f"Skipped unreadable images: {len(prediction.skipped)}")


def print_study_table(result, console: Console) -> None:
    """The primary comparison per seed and for the method, the headline, and where the rest is."""
    print_primary_rows(result.table, console)
    console.print(result.headline, highlight=False, soft_wrap=True)
    console.print(f"Every metric, per seed and for the method: {Path(result.study) / layout.RESULTS / 'study.csv'}", markup=False)
    console.print(f"The study's page: {Path(result.study) / 'report' / 'report.html'}", markup=False)


def print_primary_rows(table: pd.DataFrame, console: Console) -> None:
    """The primary metric's rows of a study table: each seed and the method."""
    primary = table[table["role"] == "primary"] if not table.empty else table
    if not primary.empty:
        view = Table(title="Primary comparison: each seed (its test patients) and the method (seeds and patients)", box=box.SIMPLE)
        for column in ("comparison", "level", "estimate", "95% interval", "verdict"):
            view.add_column(column, justify="left" if column in ("comparison", "level", "verdict") else "right")
        for row in primary.itertuples():
            level = "method" if row.level == "method" else f"seed {row.seed}"
            verdict = row.verdict if row.level == "method" else ("excludes 0" if row.excludes_zero else "includes 0")
            view.add_row(escape(row.comparison), level, f"{row.estimate:+.3f}", f"[{row.low:+.3f}, {row.high:+.3f}]", verdict)
        console.print(view)
