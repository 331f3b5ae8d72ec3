"""``experiment --concurrent N`` with N above the folds of one run: several runs of the study at once.

A study is seeds x arms ordinary runs, each of K folds. ``--concurrent N``
trains min(N, K) folds of a run at once (run/concurrent.py); when N holds more
than one run's folds, ``N // K`` lanes walk the study's runs side by side, each
lane a process that trains runs with K folds at once. Lane L starts at the L-th
share of the list and goes round it, joining each run: a run that another lane
has begun is joined through its fold claims (its unclaimed folds trained here,
its claimed ones skipped), so no run is trained twice and every lane stays busy
until the study is done. The runs' results are those of one run after another
(the lanes change no number: tests/test_experiment_lanes.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from noisystudent.config.run_config import RunConfig
from noisystudent.experiment.arms import arm_config, arm_folder
from noisystudent.progress import NULL_PROGRESS, Progress
from noisystudent.run import concurrent
from noisystudent.run.pipeline import run_kfold

logger = logging.getLogger(__name__)

LANE_ENTRY = "from noisystudent.experiment.lanes import lane_main; lane_main()"

Run = tuple[int, str]  # (seed, arm)


def lane_count(concurrent_processes: int, folds: int, runs: int) -> int:
    """Runs trained side by side: as many as ``concurrent_processes`` holds whole runs' folds, at most ``runs``.

    >>> lane_count(10, 5, 9), lane_count(5, 5, 9), lane_count(4, 5, 9), lane_count(20, 2, 3)
    (2, 1, 1, 3)
    """
    return max(1, min(runs, concurrent_processes // max(1, folds)))


def lane_order(runs: list[Run], lane: int, lanes: int) -> list[Run]:
    """``runs`` as lane ``lane`` of ``lanes`` walks them: from its share of the list round to the start.

    >>> lane_order([(0, "ns"), (0, "control"), (1, "ns"), (1, "control")], 1, 2)
    [(1, 'ns'), (1, 'control'), (0, 'ns'), (0, 'control')]
    """
    start = lane * len(runs) // lanes
    return runs[start:] + runs[:start]


def run_lane(config: RunConfig, study: Path, runs: list[Run], progress: Progress = NULL_PROGRESS) -> None:
    """Train (or join) each run of ``runs`` in turn."""
    for seed, arm in runs:
        logger.info("Study %s: seed %d, arm %s.", study, seed, arm)
        run_kfold(arm_config(config, arm, seed), arm_folder(study, seed, arm), join=True, progress=progress)


def run_lanes(config: RunConfig, study: Path, runs: list[Run], progress: Progress) -> None:
    """Every run of ``runs``, in ``lane_count`` lanes side by side (this process is lane 0).

    A lane that fails is reported with its last output; the runs it left are
    trained here afterwards.
    """
    lanes = lane_count(config.concurrent, config.folds, len(runs))
    if lanes == 1:
        run_lane(config, study, runs, progress)
        return
    threads = concurrent.worker_threads(torch.get_num_threads(), lanes)  # each lane splits its share among its folds
    logger.info("Training %d runs of the study at once, %d folds of each at a time.", lanes, min(config.concurrent // lanes,
                                                                                                   config.folds))
    jobs = [lane_payload(config, study, lane_order(runs, lane, lanes), threads) for lane in range(1, lanes)]
    with concurrent.start_processes(LANE_ENTRY, jobs, threads) as others, concurrent.cpu_threads(threads):
        run_lane(config, study, lane_order(runs, 0, lanes), progress)
        failed = others.wait()
    if failed:
        run_lane(config, study, runs, progress)


def lane_payload(config: RunConfig, study: Path, runs: list[Run], threads: int) -> bytes:
    """What a lane reads from stdin: the study's settings and folder, its runs in order, its CPU threads."""
    return json.dumps({"config": config.to_dict(), "study": str(study), "runs": runs, "threads": threads}).encode()


def lane_main() -> None:
    """Entry of a lane process: train its runs. Exits as ``concurrent.run_worker`` says (0 done, 130 stopped, 2 refused)."""
    concurrent.run_worker(lambda job: run_lane(RunConfig.from_dict(job["config"]), Path(job["study"]),
                                               [(int(seed), str(arm)) for seed, arm in job["runs"]]))
