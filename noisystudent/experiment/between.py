"""Two studies, one question: which method does my data reward? B - A at the method level.

Two ``noisystudent experiment`` studies that differ only in the method (say
``--method fixmatch`` against Noisy Student) share their seeds' folds, teachers,
controls and outer test sets, because every seed derives them from the data and
the seed alone. Their ``ns`` arms can then be paired seed by seed on the same
test images, and the same two-level bootstrap that answers students - teachers
inside one study (evaluation/two_level.py) answers study B - study A.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from noisystudent import layout
from noisystudent.errors import ConfigError, RunFolderError
from noisystudent.evaluation.statistics import MIN_RESAMPLES
from noisystudent.evaluation.two_level import two_level_bootstrap
from noisystudent.experiment.estimates import (STUDY_COLUMNS, Design, classes_of, comparison_rows, ensemble_table, ordered_metrics, paired,
                                               with_holm)

ARMS_KINDS = {"ns": layout.STUDENT, "control": layout.STUDENT, "upper": layout.STUDENT, "teachers": layout.TEACHER}


def compare_studies(study_a: Path, design_a: Design, study_b: Path, design_b: Design, arm: str = "ns",
                    n_resamples: int = MIN_RESAMPLES) -> pd.DataFrame:
    """B - A of one arm's final ensembles, per seed both studies ran, on study A's primary metric first.

    Args:
        study_a, study_b: Study folders (``noisystudent experiment --out``).
        design_a, design_b: Their designs (``study.load_design``); voting and primary metric must agree.
        arm: ``ns`` (default: each study's method), ``control``, ``upper``, or ``teachers`` (the ns arms' round 0).
        n_resamples: Top-level resamples of the two-level bootstrap.

    Returns:
        pandas.DataFrame: study.csv's columns, comparison ``"B - A (<arm>)"``; the primary metric's
        method row first, Holm-adjusted p-values on the secondary rows.

    Raises:
        ConfigError: The designs differ in voting or primary metric, or share fewer than one seed.
        RunFolderError: A seed's two sides were evaluated on different test images (not the same data and seed).
    """
    if (design_a.voting, design_a.primary_metric) != (design_b.voting, design_b.primary_metric):
        raise ConfigError(f"The studies declare different comparisons ({design_a.voting} / {design_a.primary_metric} in {study_a}, "
                          f"{design_b.voting} / {design_b.primary_metric} in {study_b}); compare studies of one design.")
    kind, folder = ARMS_KINDS[arm], "ns" if arm == "teachers" else arm
    pairs, seeds, classes = [], [], []
    for seed in [s for s in design_a.seeds if s in design_b.seeds]:
        a, b = (ensemble_table(study, seed, folder, kind, design_a.voting) for study in (study_a, study_b))
        if a is None or b is None:
            continue
        classes = classes_of(b)
        pairs.append(paired(b, a, classes, f"seed {seed}"))
        seeds.append(seed)
    if not pairs:
        raise ConfigError(f"{study_a} and {study_b} have no seed whose {arm} arm both finished; nothing to compare.")
    positive = classes.index(design_a.positive) if design_a.positive in classes else None
    rows = []
    for metric in ordered_metrics(design_a.primary_metric):
        estimate = two_level_bootstrap(pairs, metric, len(classes), positive, n_resamples, seed=0)
        rows += comparison_rows(f"B - A ({arm})", metric, metric == design_a.primary_metric, estimate, seeds)
    return with_holm(pd.DataFrame(rows, columns=STUDY_COLUMNS))


def is_study(folder: Path) -> bool:
    return (Path(folder) / "study.json").is_file()


def check_pair(study_a: Path, study_b: Path) -> None:
    """Both folders studies, or neither: a run and a study do not compare."""
    if is_study(study_a) != is_study(study_b):
        raise RunFolderError(f"One of {study_a} and {study_b} is a study (noisystudent experiment) and the other is not; "
                             "compare two runs or two studies.")
