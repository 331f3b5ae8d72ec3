"""The arms of an experiment: what each one changes in the run's settings, and where its run folder lives.

All arms of a seed share the folds, the validation parts and the outer test set:
those depend only on the seed, K, the data and --test-fraction, never on the
split of a fold's training part or on what the students learn from.

* ``ns``: the run as configured: the teacher on the labelled part, then the students
  (Noisy Student's, or with ``--method fixmatch`` / ``meta-pseudo-labels`` that method's model).
* ``control``: the same run whose students learn from the labelled part alone
  (``--student-data labelled``): the students' noise, epochs, schedule and
  initialisation, without pseudo-labels. Its teacher is the ns arm's teacher.
* ``upper``: one supervised model on the labelled and masked parts with their
  true labels (``--rounds 0``, split L:M:V -> (L+M):0:V): what semi-supervision aims at.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from noisystudent.config.run_config import RunConfig
from noisystudent.errors import ConfigError

ARMS = ("ns", "control", "upper")


def checked_arms(arms: list[str]) -> list[str]:
    """``arms`` in ARMS order; ConfigError names an unknown one. The ns arm is needed by every comparison."""
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown or not arms:
        raise ConfigError(f"--arms takes some of {', '.join(ARMS)}; got {', '.join(arms) or 'none'}.")
    if "ns" not in arms:
        raise ConfigError("--arms must include ns: every comparison of an experiment is with its students.")
    return [arm for arm in ARMS if arm in arms]


def arm_config(base: RunConfig, arm: str, seed: int) -> RunConfig:
    """The settings of ``arm`` for ``seed``: ``base`` with the arm's changes (module docstring).

    Example:
        >>> config = arm_config(RunConfig(), "upper", seed=3)
        >>> config.seed, config.rounds, config.split_ratio
        (3, 0, (4.0, 0.0, 1.0))
    """
    config = replace(base, seed=seed)
    if arm == "control":
        return replace(config, student_data="labelled")
    if arm == "upper":
        labelled, masked, validation = base.split_ratio
        return replace(config, rounds=0, split_ratio=(labelled + masked, 0.0, validation))
    return config


def arm_folder(study: Path, seed: int, arm: str) -> Path:
    return Path(study) / f"seed-{seed}" / arm
