"""``noisystudent experiment``: every arm of every seed as an ordinary run folder, then the method-level answer.

The study folder holds ``study.json`` (the design, written before the first
run: the settings, seeds, arms, primary metric and voting rule), one run folder
per seed and arm (``seed-<s>/<arm>/``, each resumable, joinable by several
processes and ``report``-able), ``results/study.csv`` and ``results/arms.csv``,
and ``report/report.html``. Running the same command again continues it; more
seeds or arms may be added later, other settings are refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from noisystudent import __version__, atomic, layout
from noisystudent.config.run_config import RunConfig, differing_result_keys, load_config_json
from noisystudent.errors import ConfigError
from noisystudent.evaluation.statistics import MIN_RESAMPLES
from noisystudent.evaluation.two_level import CONFUSION_METRICS
from noisystudent.experiment import estimates
from noisystudent.experiment.arms import arm_config, arm_folder, checked_arms
from noisystudent.experiment.estimates import StudyResult
from noisystudent.experiment.lanes import run_lanes
from noisystudent.experiment.report import write_study_report
from noisystudent.progress import NULL_PROGRESS, Progress
from noisystudent.run.preflight import check_before_writing
from noisystudent.safe_paths import check_output_folder

logger = logging.getLogger(__name__)

DESIGN = "study.json"
STUDY_CSV, ARMS_CSV = "study.csv", "arms.csv"
SEED_MAX = 2**32 - 1


def run_experiment(config: RunConfig, study: Path, seeds: list[int], arms: list[str] = ("ns", "control", "upper"),
                   progress: Progress = NULL_PROGRESS, n_resamples: int = MIN_RESAMPLES) -> StudyResult:
    """Run (or continue) every arm of every seed, then answer: did the method help?

    Args:
        config: The settings of the ns arm (``make_config``); its ``seed`` is replaced by each of ``seeds``.
        study: The study folder; created, or continued when it holds a study with the same settings.
        seeds: The seeds to run (at least two for an answer about the method).
        arms: Some of ``ns``, ``control``, ``upper`` (ns is required); default all three.
        progress: Receives the runs' progress events.
        n_resamples: Resamples of the two-level bootstrap; default 2000.

    Returns:
        StudyResult: ``table`` (results/study.csv: per comparison and metric the method-level row, primary first,
        and one row per seed), ``arms`` (each ensemble's primary metric per seed) and the ``headline``.

    Raises:
        ConfigError: A seed, arm or the primary metric is refused, or the study folder holds a study with
            other settings.

    Example:
        >>> import noisystudent as ns
        >>> config = ns.make_config("/data/aria", preset="noisy-student", epochs=5)  # doctest: +SKIP
        >>> result = ns.run_experiment(config, "runs/aria-study", seeds=[0, 1, 2])  # doctest: +SKIP
        >>> print(result.headline)  # doctest: +SKIP
    """
    study, arms, seeds = Path(study), checked_arms(list(arms)), checked_seeds(seeds)
    design = estimates.Design(seeds, arms, primary_metric_of(config), config.voting, config.positive_class)
    check_output_folder(study, [Path(config.data)] if config.data else [], flag="--out")
    for seed in seeds:  # every arm's settings and folder, before the study writes anything
        for arm in arms:
            check_before_writing(arm_config(config, arm, seed), arm_folder(study, seed, arm))
    declare(study, config, design)
    # seed by seed, arm by arm; with --concurrent above the folds of a run, several runs at once
    run_lanes(config, study, [(seed, arm) for seed in seeds for arm in arms], progress)
    return write_study(study, n_resamples)


def checked_seeds(seeds: list[int]) -> list[int]:
    if not seeds or any(not 0 <= int(s) <= SEED_MAX for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds takes distinct whole numbers from 0 to {SEED_MAX}; got {', '.join(map(str, seeds)) or 'none'}.")
    return [int(s) for s in seeds]


def primary_metric_of(config: RunConfig) -> str:
    metric = config.primary_metric
    if metric not in CONFUSION_METRICS:
        raise ConfigError(f"An experiment compares calls: --primary-metric must be one of {', '.join(CONFUSION_METRICS)} "
                          f"for it; got {metric!r}.")
    return metric


def declare(study: Path, config: RunConfig, design: estimates.Design) -> None:
    """Write study.json before any run (the primary comparison is declared first); refuse a study with other settings."""
    path = study / DESIGN
    settings = {k: v for k, v in config.to_dict().items() if k != "seed"}
    if path.exists():
        saved = load_config_json(path)
        changed = differing_result_keys({**saved.get("settings", {}), "seed": config.seed}, config)
        if changed or saved.get("primary_metric") != design.primary_metric:
            names = ", ".join(changed or ["primary_metric"])
            raise ConfigError(f"The study in {study} was declared with other settings ({names}); start a new study with --out.")
        earlier = list(saved.get("seeds", []))
        design.seeds[:] = earlier + [s for s in design.seeds if s not in earlier]  # more seeds: the same study
        design.arms[:] = [arm for arm in ("ns", "control", "upper") if arm in set(saved.get("arms", [])) | set(design.arms)]
    study.mkdir(parents=True, exist_ok=True)
    document = {"primary_metric": design.primary_metric, "voting": design.voting, "positive": design.positive,
                "seeds": design.seeds, "arms": design.arms, "settings": settings, "created_with": __version__}
    atomic.write_text(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_design(study: Path) -> estimates.Design:
    saved = load_config_json(Path(study) / DESIGN)
    return estimates.Design(list(saved["seeds"]), list(saved["arms"]), saved["primary_metric"], saved["voting"], saved.get("positive"))


def write_study(study: Path, n_resamples: int = MIN_RESAMPLES) -> StudyResult:
    """results/study.csv, results/arms.csv and report/report.html from the arms' runs as they stand."""
    design = load_design(study)
    missing = [f"seed {s} {arm}" for s in design.seeds for arm in design.arms
               if not (layout.results_dir(arm_folder(study, s, arm)) / layout.METRICS).exists()]
    table = estimates.study_table(study, design, n_resamples)
    arms = estimates.arms_table(study, design)
    results = layout.results_dir(study)
    results.mkdir(parents=True, exist_ok=True)
    atomic.write_csv(results / STUDY_CSV, table, for_people=True)
    atomic.write_csv(results / ARMS_CSV, arms, for_people=True)
    result = StudyResult(study, table, arms, headline(table, design, missing), missing)
    write_study_report(result, design)
    return result


def headline(table: pd.DataFrame, design: estimates.Design, missing: list[str]) -> str:
    """The study's answer on its primary comparison, in words: helped / hurt only where the interval excludes 0."""
    rows = table[(table["level"] == "method") & (table["role"] == "primary")]
    if rows.empty:
        return f"No comparison yet: {', '.join(missing) or 'the runs'} have not finished."
    metric = design.primary_metric.replace("_", " ")
    parts = [f"{row.comparison} {row.estimate:+.3f} [{row.low:+.3f}, {row.high:+.3f}]: {row.verdict}" for row in rows.itertuples()]
    seeds = int(rows["seeds"].max())
    about = (f"Over {seeds} seeds, {metric} of the {design.voting}-vote ensembles on each seed's outer test set "
             f"(mean difference, 95% two-level bootstrap interval over seeds and test patients): ")
    if seeds < 2:
        about = (f"One seed cannot speak for the method (run --seeds with at least two); this seed's {metric} of the "
                 f"{design.voting}-vote ensembles, interval over its test patients only: ")
        parts = [p.split(": ")[0] for p in parts]
    return about + "; ".join(parts) + ("." if not missing else f". Missing: {', '.join(missing)}.")
