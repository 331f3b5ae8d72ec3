"""The report's numbers: fold-by-fold table (A), summary table (B), headline.

All three read results/metrics.csv as written by the evaluation stage (one row
per fold model, plus 'mean', 'variance' and 'ensemble' rows). The teacher is
round 0; the final student is the highest round with student rows. The test
split is used when the run has one, the out-of-fold validation split otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from noisystudent.config.choices import VOTING as VOTING_RULES
from noisystudent.evaluation.comparison import BETTER, NO_DIFFERENCE, NOT_COMPARABLE, WORSE
from noisystudent.evaluation.metrics import MEAN_ROW, METRIC_COLUMNS, VARIANCE_ROW
from noisystudent.layout import EVAL_SPLIT, FOLD_COLUMN, MODEL_KIND, ROUND, SPLIT_TEST, SPLIT_VALIDATION, STUDENT, TEACHER, VOTING, model_label
from noisystudent.run.evidence import PRIMARY

ENSEMBLE_ROW = "ensemble"
TEST, VALIDATION = SPLIT_TEST, SPLIT_VALIDATION  # short names: the report reads them on every line
VOTING_ORDER = VOTING_RULES  # preferred ensemble for the headline: majority, then soft
HEADLINE_METRICS = ("accuracy", "f1", "auc")
DISPLAY_NAMES = {"f1": "F1", "f1_weighted": "weighted F1", "auc": "AUC", "ppv": "PPV", "npv": "NPV",
                 "mcc": "MCC", "balanced_accuracy": "balanced accuracy", "no_information_rate": "no-information rate",
                 "kappa": "Cohen's kappa", "n": "images"}


@dataclass
class SummaryRow:
    """One row of Table B: a model's metrics, with standard deviations for fold means."""

    label: str
    model: str  # teacher or student
    kind: str  # "mean" or "ensemble"
    values: pd.Series
    sd: pd.Series | None = None
    folds: int | None = None
    voting: str = ""


def display_name(metric: str) -> str:
    return DISPLAY_NAMES.get(metric, metric)


def metric_columns(metrics: pd.DataFrame) -> list[str]:
    return [column for column in METRIC_COLUMNS if column in metrics.columns]


def evaluation_split(metrics: pd.DataFrame) -> str:
    """'test' when the run has a test set, 'validation' (out-of-fold) otherwise."""
    return TEST if (metrics[EVAL_SPLIT] == TEST).any() else VALIDATION


def final_student_round(metrics: pd.DataFrame) -> int | None:
    rounds = metrics.loc[metrics[MODEL_KIND] == STUDENT, ROUND]
    return int(rounds.max()) if len(rounds) else None


def fold_table(metrics: pd.DataFrame, split: str | None = None) -> pd.DataFrame:
    """Table A: one row per fold and model (teacher, students), columns n + metrics."""
    split = split or evaluation_split(metrics)
    rows = metrics[(metrics[EVAL_SPLIT] == split) & _is_fold(metrics[FOLD_COLUMN]) & (metrics[VOTING] == "")].copy()
    rows["Fold"] = rows[FOLD_COLUMN].astype(int)
    rows["Model"] = rows[ROUND].map(model_label)
    rows = rows.sort_values(["Fold", ROUND])
    if "n" in rows.columns:
        rows["n"] = pd.to_numeric(rows["n"], errors="coerce").round().astype("Int64")
    columns = (["n"] if "n" in rows.columns else []) + metric_columns(metrics)
    return rows.set_index(["Fold", "Model"])[columns]


def summary_rows(metrics: pd.DataFrame, split: str | None = None) -> list[SummaryRow]:
    """Mean teacher, mean final student, then each teacher and student ensemble."""
    split = split or evaluation_split(metrics)
    final = final_student_round(metrics)
    rows = [_mean_row(metrics, TEACHER, 0, split)]
    if final is not None:
        rows.append(_mean_row(metrics, STUDENT, final, split))
    for model, round_ in ((TEACHER, 0), (STUDENT, final)):
        if round_ is not None:
            rows.extend(_ensemble_rows(metrics, model, round_, split))
    return [row for row in rows if row is not None]


def summary_table(metrics_df: pd.DataFrame, split: str | None = None) -> pd.DataFrame:
    """Table B as text cells ("0.912 ± 0.010" for fold means), ready to print.

    Rows: mean teacher, mean final student, teacher ensemble(s), student
    ensemble(s); columns: the metrics. ``split`` defaults to test when present.
    """
    rows = summary_rows(metrics_df, split)
    columns = metric_columns(metrics_df)
    cells = [[_cell(row.values[c], None if row.sd is None else row.sd[c]) for c in columns] for row in rows]
    table = pd.DataFrame(cells, columns=columns, index=pd.Index([row.label for row in rows], name="Model"))
    return table


def headline(metrics_df: pd.DataFrame | None, comparisons: pd.DataFrame | None = None, voting: str = "majority") -> str:
    """One sentence: final students vs teachers, and a verdict only where it was tested.

    With an outer test set the sentence is the primary comparison of
    results/comparison.csv ("helped"/"hurt" only when its metric's interval
    excludes 0), about these models only. Without one, out-of-fold validation
    is shown, marked as selection-biased, and no verdict is drawn.
    """
    if metrics_df is None or metrics_df.empty:
        return "No results yet: results/metrics.csv is missing or empty."
    final = final_student_round(metrics_df)
    if final is None:
        return "Only teachers have been evaluated so far: there are no student results to compare."
    split = evaluation_split(metrics_df)
    if split == TEST and comparisons is not None:
        return tested_sentence(comparisons, voting)
    pair = _headline_pair(metrics_df, split, final)
    if pair is None:
        return f"Teachers and students cannot be compared yet: the {split} results of one of them are missing."
    teacher, student, basis = pair
    if split == TEST:
        return (f"Final students (round {final}) vs teachers on the test set ({basis}): {_comparison(teacher, student)} — "
                "not tested (results/comparison.csv is missing; rerun noisystudent kfold --resume), so no verdict.")
    return (f"No test set: out-of-fold validation used, which is selection-biased (each model's epoch was chosen on it). "
            f"Final students (round {final}) vs teachers ({basis}): {_comparison(teacher, student)} — no verdict without an outer test set.")


VERDICT_WORDS = {BETTER: "helped", WORSE: "hurt", NO_DIFFERENCE: "no detectable difference", NOT_COMPARABLE: "not comparable"}
METHOD_CLAIM = ("This is about these models on this test set; a claim about the method needs several seeds and a control arm: "
                "noisystudent experiment DATA --out STUDY --seeds 0,1,2.")


def tested_sentence(comparisons: pd.DataFrame, voting: str = "majority") -> str:
    """The primary comparison of results/comparison.csv as a sentence about these models, and what a method claim needs."""
    row = primary_row(comparisons, voting)
    if row is None:
        return (f"results/comparison.csv has no primary comparison (the {voting} vote ensembles are missing): no verdict. "
                + METHOD_CLAIM)
    level = f"{100 * float(row['level']):g}%"
    sides = (f"These students ({row['b_name']}) vs these teachers ({row['a_name']}) on this test set "
             f"({_test_set_size(int(row['images']), int(row['units']), str(row['unit']))})")
    if not _finite(row["difference"]) or not _finite(row["low"]):
        return (f"{sides}: {display_name(row['metric'])} is undefined here (with more than two classes only accuracy is "
                f"compared: --primary-metric accuracy), so no verdict. {METHOD_CLAIM}")
    text = (f"{sides}: {display_name(row['metric'])} {float(row['b']):.3f} vs "
            f"{float(row['a']):.3f}, {float(row['difference']):+.3f} [{float(row['low']):+.3f}, {float(row['high']):+.3f}] "
            f"({level} percentile interval, paired bootstrap over {row['unit']}s, {int(row['n_resamples'])} resamples")
    if _finite(row.get("p_value")):
        text += f"; bootstrap p = {float(row['p_value']):.3g}"
    if row["metric"] == "accuracy" and _finite(row.get("mcnemar_p")):
        text += f"; McNemar exact p = {float(row['mcnemar_p']):.3g}"
    return f"{text}), {VERDICT_WORDS.get(row['verdict'], row['verdict'])}. {METHOD_CLAIM}"


def primary_row(comparisons: pd.DataFrame, voting: str = "majority") -> pd.Series | None:
    """The row marked primary; in a comparison.csv written before there was one, the accuracy of ``voting``'s ensembles."""
    if "endpoint" in comparisons.columns:
        rows = comparisons[comparisons["endpoint"] == PRIMARY]
        return rows.iloc[0] if len(rows) else None
    rows = comparisons[comparisons["metric"] == "accuracy"]  # older runs: the verdict was on accuracy
    preferred = rows[rows["a_name"].str.contains(f"({voting}", regex=False)]
    return (preferred if len(preferred) else rows).iloc[0] if len(rows) else None



# --- helpers -----------------------------------------------------------------


def _is_fold(folds: pd.Series) -> pd.Series:
    return folds.astype(str).str.fullmatch(r"\d+")


def _select(metrics: pd.DataFrame, model: str, round_: int, split: str) -> pd.DataFrame:
    return metrics[(metrics[MODEL_KIND] == model) & (metrics[ROUND] == round_) & (metrics[EVAL_SPLIT] == split)]


def _mean_row(metrics: pd.DataFrame, model: str, round_: int, split: str) -> SummaryRow | None:
    """Fold mean and sd from the 'mean'/'variance' rows, or computed from the fold rows."""
    rows = _select(metrics, model, round_, split)
    rows = rows[rows[VOTING] == ""]
    folds = rows[_is_fold(rows[FOLD_COLUMN])]
    columns = metric_columns(metrics)
    mean, variance = rows[rows[FOLD_COLUMN] == MEAN_ROW], rows[rows[FOLD_COLUMN] == VARIANCE_ROW]
    if len(mean):
        values = mean.iloc[0][columns].astype(float)
        sd = np.sqrt(variance.iloc[0][columns].astype(float)) if len(variance) else pd.Series(np.nan, index=columns)
    elif len(folds):
        values, sd = folds[columns].astype(float).mean(), folds[columns].astype(float).std(ddof=1)
    else:
        return None
    name = "Teacher" if model == TEACHER else f"Student (round {round_})"
    count = len(folds) or None
    label = f"{name}, mean ± sd of {_folds(count)}" if count != 1 else f"{name}, single fold"
    return SummaryRow(label=label, model=model, kind=MEAN_ROW, values=values, sd=sd, folds=count)


def _ensemble_rows(metrics: pd.DataFrame, model: str, round_: int, split: str) -> list[SummaryRow]:
    rows = _select(metrics, model, round_, split)
    rows = rows[rows[FOLD_COLUMN] == ENSEMBLE_ROW]
    name = "Teacher ensemble" if model == TEACHER else f"Student ensemble (round {round_})"
    return [
        SummaryRow(label=f"{name}, {row[VOTING] or 'unnamed'} vote", model=model, kind=ENSEMBLE_ROW,
                   values=row[metric_columns(metrics)].astype(float), voting=row[VOTING])
        for _, row in sorted(rows.iterrows(), key=lambda item: _voting_rank(item[1][VOTING]))
    ]


def _voting_rank(voting: str) -> tuple[int, str]:
    return (VOTING_ORDER.index(voting) if voting in VOTING_ORDER else len(VOTING_ORDER), voting)


def _headline_pair(metrics: pd.DataFrame, split: str, final: int) -> tuple[pd.Series, pd.Series, str] | None:
    """Teacher and student values to compare: same-rule ensembles first, fold means second."""
    teachers = {row.voting: row for row in _ensemble_rows(metrics, TEACHER, 0, split)}
    students = {row.voting: row for row in _ensemble_rows(metrics, STUDENT, final, split)}
    for voting in sorted(set(teachers) & set(students), key=_voting_rank):
        return teachers[voting].values, students[voting].values, f"{voting} vote ensemble"
    teacher, student = _mean_row(metrics, TEACHER, 0, split), _mean_row(metrics, STUDENT, final, split)
    if teacher is None or student is None:
        return None
    if teacher.folds == student.folds:
        basis = f"mean of {_folds(teacher.folds)}"
    else:
        basis = f"means over different folds: teachers of {_folds(teacher.folds)}, students of {_folds(student.folds)}"
    return teacher.values, student.values, basis


def _comparison(teacher: pd.Series, student: pd.Series) -> str:
    parts = []
    for metric in HEADLINE_METRICS:
        if metric in teacher.index and _finite(teacher[metric]) and _finite(student[metric]):
            s, t = float(student[metric]), float(teacher[metric])
            parts.append(f"{display_name(metric)} {s:.3f} vs {t:.3f} ({s - t:+.3f})")
    return ", ".join(parts) or "no comparable metric"


def _test_set_size(images: int, units: int, unit: str) -> str:
    """'52 images, 7 patients'; '52 images, no patient ids' when the bootstrap unit is the image."""
    if unit == "image":
        return f"{plural(images, 'image')}, no patient ids"
    return f"{plural(images, 'image')}, {plural(units, unit)}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _folds(count: int | None) -> str:
    return "all folds" if count is None else plural(count, "fold")


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _cell(value: float, sd: float | None) -> str:
    if not _finite(value):
        return "–"
    return f"{value:.3f} ± {sd:.3f}" if sd is not None and _finite(sd) else f"{value:.3f}"
