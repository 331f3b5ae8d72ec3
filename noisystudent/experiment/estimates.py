"""The study's numbers: each arm's ensemble on each seed's outer test set, and the method-level differences.

Two comparisons, both of final students' ensembles under the configured voting
rule, paired on the images of each seed's outer test set:

* students - teachers (the ns arm): what a single run reports, over seeds;
* students - control: what the pseudo-labels add beyond the students' noise,
  epochs and initialisation (the control arm).

For each, the primary metric (declared before the run) and the others
(secondary, with Holm-adjusted p-values), as the mean over seeds with the
interval of the two-level bootstrap, plus one row per seed with the interval
of its test patients alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from noisystudent import layout
from noisystudent.config.choices import METHOD_NAMES
from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.errors import RunFolderError
from noisystudent.evaluation.statistics import MIN_RESAMPLES, holm
from noisystudent.evaluation.two_level import CONFUSION_METRICS, MethodEstimate, SeedPair, confusion_metric, seed_pair, two_level_bootstrap
from noisystudent.experiment.arms import arm_folder
from noisystudent.run.folder import saved_config
from noisystudent.run.tables import read_table

# (name, arm and kind of side B, arm and kind of side A)
COMPARISONS = [
    ("students - teachers", ("ns", layout.STUDENT), ("ns", layout.TEACHER)),
    ("students - control", ("ns", layout.STUDENT), ("control", layout.STUDENT)),
]
# (arm, kind) of each ensemble in the arms table, and its name there
SIDES = [(("ns", layout.TEACHER), "teachers (labelled part only)"), (("ns", layout.STUDENT), "students (Noisy Student)"),
         (("control", layout.STUDENT), "control students (no pseudo-labels)"), (("upper", layout.TEACHER), "upper bound (true labels)")]
STUDY_COLUMNS = ["comparison", "level", "seed", "metric", "role", "estimate", "low", "high", "excludes_zero", "p_value", "p_holm",
                 "verdict", "seeds", "units", "resamples"]


@dataclass
class StudyResult:
    """What ``run_experiment`` found: the study table, the arms table, the headline and the runs still missing."""

    study: Path
    table: pd.DataFrame
    arms: pd.DataFrame
    headline: str
    missing: list[str]


@dataclass(frozen=True)
class Design:
    """What the answer is about, fixed before the first run: seeds, arms, metric, voting rule, positive class."""

    seeds: list[int]
    arms: list[str]
    primary_metric: str
    voting: str
    positive: str | None


def ensemble_table(study: Path, seed: int, arm: str, kind: str, voting: str) -> pd.DataFrame | None:
    """results/predictions_<kind>_<voting>.csv of one arm's run; None while the run has not written it."""
    path = layout.results_dir(arm_folder(study, seed, arm)) / f"predictions_{kind}_{voting}.csv"
    return read_table(path) if path.exists() else None


def classes_of(table: pd.DataFrame) -> list[str]:
    return [c[len(layout.PROB_PREFIX):] for c in table.columns if c.startswith(layout.PROB_PREFIX)]


def units_of(table: pd.DataFrame) -> np.ndarray:
    """The bootstrap's units: the patient of each image, or the image itself where the data has no patient ids."""
    patients = table[PATIENT].astype(str) if PATIENT in table.columns else pd.Series("", index=table.index)
    return np.where(patients.str.len() > 0, "patient:" + patients, "image:" + table[PATH].astype(str))


def paired(b: pd.DataFrame, a: pd.DataFrame, classes: list[str], where: str) -> SeedPair:
    """Side B and side A on the same images, matched by path."""
    a = a.set_index(PATH)
    if set(a.index) != set(b[PATH]):
        raise RunFolderError(f"{where}: the two sides were not evaluated on the same test images; were the arms' runs changed?")
    a = a.loc[b[PATH]]
    return seed_pair(b[LABEL], a[layout.PRED], b[layout.PRED], units_of(b), classes)


def seed_pairs(study: Path, design: Design, comparison: tuple) -> tuple[list[SeedPair], list[int], list[str]]:
    """The SeedPairs of every seed whose two sides exist, those seeds, and the classes."""
    name, (arm_b, kind_b), (arm_a, kind_a) = comparison
    pairs, seeds, classes = [], [], []
    for seed in design.seeds:
        b, a = (ensemble_table(study, seed, arm, kind, design.voting) for arm, kind in ((arm_b, kind_b), (arm_a, kind_a)))
        if b is None or a is None:
            continue
        classes = classes_of(b)
        pairs.append(paired(b, a, classes, f"seed {seed}, {name}"))
        seeds.append(seed)
    return pairs, seeds, classes


def study_table(study: Path, design: Design, n_resamples: int = MIN_RESAMPLES) -> pd.DataFrame:
    """results/study.csv: per comparison and metric, the method-level row (primary first) and one row per seed."""
    rows = []
    for comparison in COMPARISONS:
        pairs, seeds, classes = seed_pairs(study, design, comparison)
        if not pairs:
            continue
        positive = classes.index(design.positive) if design.positive in classes else None
        for metric in ordered_metrics(design.primary_metric):
            estimate = two_level_bootstrap(pairs, metric, len(classes), positive, n_resamples, seed=0)
            rows += comparison_rows(comparison[0], metric, metric == design.primary_metric, estimate, seeds)
    table = pd.DataFrame(rows, columns=STUDY_COLUMNS)
    return with_holm(table)


def ordered_metrics(primary: str) -> list[str]:
    return [primary] + [m for m in CONFUSION_METRICS if m != primary]


def comparison_rows(name: str, metric: str, primary: bool, estimate: MethodEstimate, seeds: list[int]) -> list[dict]:
    role = "primary" if primary else "secondary"
    method = {"comparison": name, "level": "method", "seed": "", "metric": metric, "role": role,
              "estimate": estimate.estimate, "low": estimate.low, "high": estimate.high,
              "excludes_zero": excludes_zero(estimate.low, estimate.high), "p_value": estimate.p_value,
              "verdict": method_verdict(estimate, seeds), "seeds": estimate.seeds, "units": np.nan, "resamples": estimate.resamples}
    per_seed = [{"comparison": name, "level": "seed", "seed": seed, "metric": metric, "role": role, **{k: row[k] for k in ("estimate", "low", "high")},
                 "excludes_zero": excludes_zero(row["low"], row["high"]), "p_value": np.nan, "verdict": "", "seeds": 1,
                 "units": row["units"], "resamples": row["resamples"]} for seed, row in zip(seeds, estimate.per_seed)]
    return [method, *per_seed]


def excludes_zero(low: float, high: float) -> bool:
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def method_verdict(estimate: MethodEstimate, seeds: list[int]) -> str:
    """helped / hurt only when the two-level interval excludes 0 and at least two seeds ran; one seed says nothing.

    A metric undefined on some seed's whole test set (NPV when a student calls every image positive) has no
    method-level value: the row names those seeds instead of an interval over the lucky resamples.
    """
    if estimate.seeds < 2:
        return "one seed cannot speak for the method"
    if not np.isfinite(estimate.estimate):
        undefined = [str(seed) for seed, row in zip(seeds, estimate.per_seed) if not np.isfinite(row["estimate"])]
        return f"not defined on the test set of seed {', '.join(undefined)}"
    if not excludes_zero(estimate.low, estimate.high):
        return "no detectable difference"
    return "helped" if estimate.low > 0 else "hurt"


def with_holm(table: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjusted p-values over the secondary method-level rows (the primary row is not adjusted)."""
    table = table.copy()
    table["p_holm"] = np.nan
    secondary = (table["level"] == "method") & (table["role"] == "secondary") & table["p_value"].notna()
    if secondary.any():
        table.loc[secondary, "p_holm"] = holm(table.loc[secondary, "p_value"].to_numpy())
    primary = (table["level"] == "method") & (table["role"] == "primary")
    table.loc[primary, "p_holm"] = table.loc[primary, "p_value"]
    return table


def _named_by_method(study: Path, seed: int, arm: str, name: str) -> str:
    """'students (FixMatch)' where the ns arm ran --method fixmatch; other names as they are."""
    saved = saved_config(arm_folder(study, seed, arm)) or {}
    method = METHOD_NAMES.get(saved.get("method", "noisy-student"), "Noisy Student")
    return name.replace(METHOD_NAMES["noisy-student"], method)


def arms_table(study: Path, design: Design) -> pd.DataFrame:
    """Per seed and ensemble: the primary metric on that seed's outer test set (and the images and units)."""
    rows = []
    for seed in design.seeds:
        for (arm, kind), name in SIDES:
            table = ensemble_table(study, seed, arm, kind, design.voting) if arm in design.arms else None
            if table is None:
                continue
            name = _named_by_method(study, seed, arm, name)
            classes = classes_of(table)
            pair = seed_pair(table[LABEL], table[layout.PRED], table[layout.PRED], units_of(table), classes)
            confusion = np.zeros((1, len(classes), len(classes)))
            np.add.at(confusion, (0, pair.truth, pair.called_b), 1.0)
            positive = classes.index(design.positive) if design.positive in classes else None
            rows.append({"seed": seed, "ensemble": name, "arm": arm, "metric": design.primary_metric,
                         "value": float(confusion_metric(confusion, design.primary_metric, positive)[0]),
                         "images": len(table), "units": len(np.unique(pair.groups))})
    return pd.DataFrame(rows, columns=["seed", "ensemble", "arm", "metric", "value", "images", "units"])
