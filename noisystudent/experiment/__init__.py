"""Experiments: does the method help? Several seeds, each with arms that share their folds and test set.

``noisystudent experiment DATA --out STUDY --seeds 0,1,2`` runs, for every seed,
the Noisy Student arm, a control arm (the students' noise, epochs and
initialisation without pseudo-labels) and the supervised upper bound, each an
ordinary run folder, and answers with a two-level bootstrap over seeds and
test patients (evaluation/two_level.py).
"""

from noisystudent.experiment.arms import ARMS, arm_config
from noisystudent.experiment.estimates import StudyResult
from noisystudent.experiment.study import run_experiment

__all__ = ["ARMS", "StudyResult", "arm_config", "run_experiment"]
