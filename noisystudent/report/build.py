"""write_report: turn a (possibly unfinished) run folder into RUN/report/.

Each step below draws one kind of figure from whatever the run holds and
returns its page entries; a step that finds nothing to draw adds a note to the
page instead, so a partial run still gets a report that says what is missing.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from noisystudent.atomic import confined_to, write_text
from noisystudent.data.manifest import LABEL
from noisystudent.errors import RunFolderError
from noisystudent.evaluation.baseline import no_information_warnings
from noisystudent.layout import CONFIG, EVAL_SPLIT, PRED, REPORT, SELECTION_BIASED, SPLIT, STUDENT, TEACHER, prob_column
from noisystudent.report import evidence, plots
from noisystudent.report.calibration_section import calibration_figures, calibration_tables
from noisystudent.report.class_tables import patient_table, per_class_table, scope_sentence
from noisystudent.report.data_section import data_caption, fold_parts_table, has_patients, parts_table
from noisystudent.report.evidence import comparison_frame, read_comparisons
from noisystudent.report.galleries import gallery_html
from noisystudent.report.html import FigureEntry, TableEntry, render_page, table_html
from noisystudent.report.run_reader import RunContents, load_run
from noisystudent.report.settings_section import settings_section
from noisystudent.report.tables import (
    TEST,
    VALIDATION,
    evaluation_split,
    fold_table,
    headline,
    metric_columns,
    plural,
    summary_rows,
    summary_table,
)
from noisystudent.safe_paths import check_output_file, check_output_folder, refuse_links_below

log = logging.getLogger(__name__)

PAGE = "report.html"
SPLIT_WORDS = {TEST: "the test set", VALIDATION: "out-of-fold validation"}
NIR_SENTENCE = ("No-information rate: the accuracy of always answering the commonest class; "
                "Cohen's kappa: agreement beyond chance (0: none, 1: perfect).")


def write_report(run: Path) -> Path:
    """Write RUN/report/ (figures and report.html) and return the page's path.

    Reads the run folder (any stage may be unfinished: what exists is shown)
    and writes the figures and one self-contained HTML page into ``run/report/``.
    A figure that cannot be drawn from a malformed table is replaced by a note.

    Args:
        run: A run folder of :func:`run_kfold` (it must hold config.json).

    Returns:
        pathlib.Path: ``run / "report" / "report.html"``.

    Raises:
        RunFolderError: ``run`` does not exist or is not a run folder.
        OutputError: ``run/report`` or the page exists but is not a folder or
            a regular file.

    Example:
        >>> import noisystudent as ns
        >>> ns.write_report("runs/demo")  # doctest: +SKIP
        PosixPath('runs/demo/report/report.html')
    """
    run = Path(run)
    if not run.is_dir():
        raise RunFolderError(f"The run folder {run} does not exist.")
    if not (run / CONFIG).is_file():  # never write report/ into an arbitrary folder
        raise RunFolderError(f"The folder {run} is not a run folder (it has no {CONFIG}); give the --out folder of a noisystudent kfold run.")
    folder = run / REPORT
    refuse_links_below(folder / PAGE, run)
    check_output_folder(folder, flag="RUN")
    check_output_file(folder / PAGE, flag="RUN")
    with confined_to(run):  # the figures too: no write through a link below RUN
        return _write_page(run, folder)


def _write_page(run: Path, folder: Path) -> Path:
    data = load_run(run)
    folder.mkdir(exist_ok=True)
    figures = []
    for step in (curve_figures, confusion_figures, roc_figures, pseudo_label_figures, pseudo_quality_figures, helped_figures,
                 reliability_figures):
        try:
            figures.extend(step(data, folder))
        except (KeyError, ValueError, TypeError) as error:  # a malformed table costs one figure, not the report
            log.exception("%s failed", step.__name__)
            data.notes.append(f"The {step.__name__.replace('_', ' ')} could not be drawn ({type(error).__name__}: {error}).")
    sentence = headline(data.metrics, read_comparisons(run), data.config.get("voting", "majority"))
    page = render_page(f"Noisy Student report: {run.name}", data.config, sentence, data.notes,
                       comparison_tables(run) + report_tables(data) + calibration_tables(run), figures, warnings=no_information_warnings(data.metrics),
                       before=[settings_section(data.config), data_html(data)], after=[patient_html(data), cells_html(data)])
    write_text(folder / PAGE, page)
    log.info("wrote %s with %d figures", folder / PAGE, len(figures))
    return folder / PAGE


def cells_html(data: RunContents) -> str:
    """The Cells section; a malformed prediction table costs the section, not the report."""
    try:
        return gallery_html(data)
    except (KeyError, ValueError, TypeError, OSError) as error:
        log.exception("the cell galleries failed")
        data.notes.append(f"The cell galleries could not be drawn ({type(error).__name__}: {error}).")
        return ""


def report_tables(data: RunContents) -> list[TableEntry]:
    """Table A per evaluated split (the headline split first), then Table B."""
    if data.metrics is None or data.metrics.empty:
        return []
    main = evaluation_split(data.metrics)
    splits = [main] + [s for s in (TEST, VALIDATION) if s != main and (data.metrics[EVAL_SPLIT] == s).any()]
    tables = [
        TableEntry(f"Table A{'' if i == 0 else i + 1}. Fold by fold, {SPLIT_WORDS.get(split, split)}{bias_mark(data.metrics, split)}",
                   f"Each fold's teacher (round 0) and students (round r) on {SPLIT_WORDS.get(split, split)}. "
                   f"{bias_sentence(data.metrics, split)}{scope_sentence(data.classes, data.positive_class)} {NIR_SENTENCE}",
                   fold_table(data.metrics, split))
        for i, split in enumerate(splits)
    ]
    tables.append(TableEntry(
        f"Table B. Summary, {SPLIT_WORDS.get(main, main)}{bias_mark(data.metrics, main)}", "Fold means ± sample standard deviation over folds, "
        f"and the ensembles of the fold models. {bias_sentence(data.metrics, main)}"
        f"{scope_sentence(data.classes, data.positive_class)} {NIR_SENTENCE}",
        summary_table(data.metrics, main)))
    if data.multiclass and data.all_metrics is not None:
        tables.append(TableEntry(
            f"Table C. Each class against the rest, {SPLIT_WORDS.get(main, main)}",
            "One row per class: that class as the positive class and every other class as negative; "
            "AUC is that class's one-vs-rest ROC AUC. Fold means ± sd over folds (images of the class: total over the "
            "folds), then the ensembles.", per_class_table(data.all_metrics, main)))
    return tables


def is_selection_biased(metrics, split: str) -> bool:
    """True when the rows of ``split`` were scored on the images their models were selected on."""
    if SELECTION_BIASED not in metrics.columns:
        return False
    marks = metrics.loc[metrics[EVAL_SPLIT] == split, SELECTION_BIASED].astype(str).str.lower()
    return bool(marks.isin(["true", "1"]).any())


def bias_mark(metrics, split: str) -> str:
    return " (selection-biased)" if is_selection_biased(metrics, split) else ""


def bias_sentence(metrics, split: str) -> str:
    if not is_selection_biased(metrics, split):
        return ""
    return ("Selection-biased: each model kept its best epoch as scored on these very images, so these numbers "
            "are optimistic; quote the outer test set instead (--test-fraction, --test). ")


def comparison_tables(run: Path) -> list[TableEntry]:
    """The tested student-minus-teacher comparisons of results/comparison.csv, the primary one first, after Tables A-C."""
    frame = comparison_frame(read_comparisons(run))
    if frame.empty:
        return []
    return [TableEntry("Did these students beat these teachers? Student minus teacher on the outer test set",
                       "Paired bootstrap over the test set's patients (its images where there are no patient ids), "
                       "2,000 resamples, 95% percentile interval of each row's own metric. The first row is the one primary "
                       "comparison (--voting ensembles, --primary-metric); every other row is secondary: read it with its "
                       "Holm-adjusted p-value, which accounts for the number of secondary rows. p: two-sided bootstrap "
                       "p-value of no difference. These are these models on this test set; a claim about the method "
                       "needs several seeds and a control arm (noisystudent experiment).", frame)]


def data_html(data: RunContents) -> str:
    """The Data section: parts of the run and of each fold (from folds.csv)."""
    if data.folds_table is None:
        return "<h2>Data</h2>\n<p>folds.csv is missing: the data summary is left out.</p>"
    classes = data.classes or sorted(c for c in data.folds_table["label"].fillna("").astype(str).unique() if c)
    entries = [TableEntry("Images, patients and classes per part", data_caption(data.folds_table), parts_table(data.folds_table, classes, data.pool)),
               TableEntry("Per fold", "Each fold's teacher trains on its labelled part; the masked part is pseudo-labelled for the "
                          "students (with the pool); the validation part evaluates and selects the models.",
                          fold_parts_table(data.folds_table, classes))]
    return "<h2>Data</h2>\n" + "\n".join(table_html(entry) for entry in entries)


def patient_html(data: RunContents) -> str:
    """Patient-level results of the ensembles (or pooled out-of-fold models), where patient ids exist."""
    tables_read = [*data.ensembles.values(), *data.predictions.values()]
    if not any(has_patients(table) for table in tables_read):
        return "<h3>Patient-level results</h3>\n<p>The data has no patient ids: there are no patient-level results.</p>"
    tables = {ensemble_name(m, v): t for (m, v), t in _teachers_first(data.ensembles)}
    where = SPLIT_WORDS[TEST]
    if not tables:
        where = SPLIT_WORDS[VALIDATION]
        for round_ in dict.fromkeys((0, data.final_round)):
            parts = [p[p[SPLIT] == VALIDATION] for (f, r), p in sorted(data.predictions.items()) if r == round_]
            if parts:
                tables[f"{plots.round_name(round_).capitalize()}, folds pooled"] = pd.concat(parts, ignore_index=True)
    frame = patient_table(tables, data.classes, None if data.multiclass else data.positive_class)
    if frame.empty:
        return ""
    caption = (f"On {where}, per patient: the call is the class most of the patient's images were called (ties: the "
               "highest mean probability), the truth the commonest label of its images. "
               f"{scope_sentence(data.classes, data.positive_class)} {NIR_SENTENCE}")
    return table_html(TableEntry("Table D. Patient-level results", caption, frame))


# --- figure steps --------------------------------------------------------------


def curve_figures(data: RunContents, folder: Path) -> list[FigureEntry]:
    entries = []
    for fold in data.folds:
        histories = {r: h for (f, r), h in data.histories.items() if f == fold}
        if not histories:
            data.notes.append(f"fold-{fold}: no history.csv: its training curves are left out.")
            continue
        name = f"curves_fold{fold}.png"
        plots.plot_curves(histories, fold, folder / name)
        rounds = ", ".join(str(r) for r in sorted(histories))
        entries.append(FigureEntry(name, f"Training curves, fold {fold}",
                                   f"Loss and validation accuracy per epoch of rounds {rounds}; the teacher is dashed."))
    return entries


def confusion_figures(data: RunContents, folder: Path) -> list[FigureEntry]:
    classes, final = data.classes, data.final_round
    if not classes:
        return []
    entries = []
    panels, where = _main_confusion_panels(data, final)
    if panels:
        scope = f" (positive class: {data.positive_class})" if data.positive_class and not data.multiclass else ""
        plots.plot_confusions(panels, classes, data.positive_class, f"Confusion matrices on {where}{scope}",
                              folder / "confusion.png", columns=2 if len(panels) > 2 else None)
        entries.append(FigureEntry("confusion.png", "Confusion matrices: teachers vs final students",
                                   f"Counts and row percentages on {where}; rows are true classes."))
    split = TEST if _has_split(data, TEST) else VALIDATION
    grid = [_fold_panel(data, fold, round_, split) for fold in data.folds for round_ in dict.fromkeys((0, final))]
    if any(panel[1] is not None for panel in grid):
        plots.plot_confusions(grid, classes, data.positive_class, f"Confusion matrices per fold on {SPLIT_WORDS[split]}",
                              folder / "confusion_folds.png", columns=2 if final else 1)
        entries.append(FigureEntry("confusion_folds.png", "Confusion matrices per fold",
                                   f"Each fold's teacher and final student (round {final}) on {SPLIT_WORDS[split]}."))
    return entries


def roc_figures(data: RunContents, folder: Path) -> list[FigureEntry]:
    if not data.classes:
        return []  # nothing has been predicted yet; the missing models are already noted
    if data.multiclass:
        return class_roc_figures(data, folder)
    positive = data.positive_class
    if positive is None:
        data.notes.append(f"The positive class {data.positive!r} has no probability column: ROC curves are left out.")
        return []
    final = data.final_round
    fold_curves = {"Teacher": _fold_rocs(data, 0, positive)}
    if final > 0:
        fold_curves[f"Student (round {final})"] = _fold_rocs(data, final, positive)
    fold_curves = {name: curves for name, curves in fold_curves.items() if curves}
    ensemble_curves = {}
    for (models, voting), table in _teachers_first(data.ensembles):
        truth, score = _ensemble_scores(table, positive, voting)
        if len(set(truth)) == 2:
            ensemble_curves[ensemble_name(models, voting)] = (truth, score)
    if not fold_curves and not ensemble_curves:
        data.notes.append("No predictions with both classes: ROC curves are left out.")
        return []
    plots.plot_roc(fold_curves, ensemble_curves, positive, folder / "roc.png")
    caption = (f"ROC of the positive class {positive} against the other class. Out-of-fold validation: thin lines are "
               "single folds, thick lines their vertical mean; legend AUC is mean ± sd over folds.")
    if ensemble_curves:
        caption += (" Ensembles on the test set: a soft vote is scored by its mean probability of the positive class, "
                    "a majority vote by the share of fold models voting for it (hence its few steps).")
    return [FigureEntry("roc.png", "ROC curves", caption)]


def class_roc_figures(data: RunContents, folder: Path) -> list[FigureEntry]:
    """Multi-class: one one-vs-rest ROC curve per class for the final students' soft-vote ensemble (or pooled folds)."""
    final = data.final_round
    chosen = [(k, t) for k, t in _teachers_first(data.ensembles) if k[1] == "soft"]
    if chosen:
        (models, voting), table = chosen[-1]
        who, rows = f"{ensemble_name(models, voting)} on {SPLIT_WORDS[TEST]}", table
    else:
        tables = [p for (f, r), p in sorted(data.predictions.items()) if r == final]
        if not tables:
            return []
        pooled = pd.concat(tables, ignore_index=True)
        who, rows = f"{plots.round_name(final)}s, folds pooled, on {SPLIT_WORDS[VALIDATION]}", pooled[pooled[SPLIT] == VALIDATION]
    curves = {name: _positive_scores(rows, name) for name in data.classes}
    curves = {name: c for name, c in curves.items() if len(set(c[0])) == 2}
    if not curves:
        return []
    plots.plot_class_roc(curves, f"One-vs-rest ROC per class: {who}", folder / "roc.png")
    return [FigureEntry("roc.png", "ROC curves, each class against the rest",
                        f"{who}: for each class, its probability separating its images from all others; the legend "
                        "gives each class's one-vs-rest AUC, whose unweighted mean is the macro AUC of the tables.")]


def pseudo_label_figures(data: RunContents, folder: Path) -> list[FigureEntry]:
    if not data.pseudo_labels:
        return []
    by_round: dict[int, list[pd.DataFrame]] = {}
    for (_, round_), table in sorted(data.pseudo_labels.items()):
        by_round.setdefault(round_, []).append(table)
    pooled = {round_: pd.concat(tables, ignore_index=True) for round_, tables in by_round.items()}
    folds = {round_: len(tables) for round_, tables in by_round.items()}
    plots.plot_pseudo_confidence(pooled, folds, data.classes, folder / "pseudo_confidence.png")
    return [FigureEntry("pseudo_confidence.png", "Pseudo-label confidence",
                        "Confidence (top probability) of the pseudo-labels each round's models gave the next round's "
                        "students, all folds pooled, stacked by predicted class; before balancing copies.")]


def pseudo_quality_figures(data: RunContents, folder: Path) -> list[FigureEntry]:
    return evidence.pseudo_quality_figures(data.metrics, folder)


def reliability_figures(data: RunContents, folder: Path) -> list[FigureEntry]:
    return calibration_figures(data.run, folder)


def helped_figures(data: RunContents, folder: Path) -> list[FigureEntry]:
    if data.metrics is None or data.metrics.empty:
        return []
    split = evaluation_split(data.metrics)
    rows = summary_rows(data.metrics, split)
    if not rows:
        return []
    title = f"These teachers vs these final students on {SPLIT_WORDS.get(split, split)}"
    shown = [m for m in metric_columns(data.metrics) if m != "no_information_rate"]  # a property of the data, not of a model
    plots.plot_helped(rows, shown, title, folder / "helped.png", read_comparisons(data.run) if split == TEST else None)
    return [FigureEntry("helped.png", "Did these students beat these teachers?",
                        "Top: fold means (error bars: sd over folds) and ensembles (hatched). "
                        "Bottom: final students minus teachers per metric with the 95% interval of the patient bootstrap "
                        "(results/comparison.csv); green or red only where that interval excludes 0, grey otherwise "
                        "(and always without an outer test set, where no interval is computed).")]


# --- helpers -------------------------------------------------------------------


def ensemble_kind(models: str) -> str:
    """'teacher' or 'student' from the <models> part of predictions_<models>_<voting>.csv."""
    lowered = models.lower()
    if TEACHER in lowered:
        return TEACHER
    numbers = re.findall(r"\d+", lowered)
    return TEACHER if numbers and int(numbers[-1]) == 0 else STUDENT


def ensemble_name(models: str, voting: str) -> str:
    kind = "Teacher" if ensemble_kind(models) == TEACHER else "Student"
    detail = "" if models.lower() in (TEACHER, STUDENT, "teachers", "students") else f" [{models}]"
    return f"{kind} ensemble{detail}, {voting} vote"


def _main_confusion_panels(data: RunContents, final: int) -> tuple[list, str]:
    """Ensembles on the test set when present, otherwise pooled out-of-fold validation."""
    if data.ensembles:
        panels = [(ensemble_name(m, v), *_truth_and_guess(t, None)) for (m, v), t in _teachers_first(data.ensembles)]
        return [p for p in panels if len(p[1])], SPLIT_WORDS[TEST]
    panels = []
    for round_, name in ((0, "Teachers"), (final, f"Students (round {final})")):
        tables = [p for (f, r), p in sorted(data.predictions.items()) if r == round_]
        if tables and (round_ == 0 or final > 0):
            truth, guess = _truth_and_guess(pd.concat(tables, ignore_index=True), VALIDATION)
            panels.append((f"{name}, {plural(len(tables), 'fold')} pooled", truth, guess))
    return [p for p in panels if len(p[1])], SPLIT_WORDS[VALIDATION]


def _teachers_first(ensembles: dict[tuple[str, str], pd.DataFrame]) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    return sorted(ensembles.items(), key=lambda item: (ensemble_kind(item[0][0]) != TEACHER, item[0]))


def _fold_panel(data: RunContents, fold: int, round_: int, split: str) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """A per-fold confusion panel; (title, None, None) draws a 'not available' placeholder."""
    title = f"fold {fold}, {plots.round_name(round_)}"
    table = data.predictions.get((fold, round_))
    truth, guess = _truth_and_guess(table, split) if table is not None else (np.array([]), np.array([]))
    return (title, truth, guess) if len(truth) else (title, None, None)


def _truth_and_guess(table: pd.DataFrame, split: str | None) -> tuple[np.ndarray, np.ndarray]:
    rows = table if split is None or SPLIT not in table else table[table[SPLIT] == split]
    rows = rows[rows[LABEL] != ""]
    return rows[LABEL].to_numpy(), rows[PRED].astype(str).to_numpy()


def _positive_scores(table: pd.DataFrame, positive: str, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    rows = table if split is None or SPLIT not in table else table[table[SPLIT] == split]
    rows = rows[rows[LABEL] != ""]
    return (rows[LABEL] == positive).to_numpy(), rows[prob_column(positive)].to_numpy(float)


def _ensemble_scores(table: pd.DataFrame, positive: str, voting: str) -> tuple[np.ndarray, np.ndarray]:
    """A majority vote is scored by its share of votes for ``positive``: its mean probability is the soft vote's."""
    truth, score = _positive_scores(table, positive)
    votes = [c for c in table.columns if c.startswith("vote_fold")]
    if voting == "majority" and votes:
        rows = table[table[LABEL] != ""]
        score = (rows[votes].astype(str) == positive).mean(axis=1).to_numpy(float)
    return truth, score


def _fold_rocs(data: RunContents, round_: int, positive: str) -> list[tuple[np.ndarray, np.ndarray]]:
    curves = []
    for (fold, r), table in sorted(data.predictions.items()):
        if r == round_:
            truth, score = _positive_scores(table, positive, VALIDATION)
            if len(set(truth)) == 2:
                curves.append((truth, score))
    return curves


def _has_split(data: RunContents, split: str) -> bool:
    return any(SPLIT in table and (table[SPLIT] == split).any() for table in data.predictions.values())
