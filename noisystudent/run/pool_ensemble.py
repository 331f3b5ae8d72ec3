"""--pool-labels ensemble: the pool's pseudo-labels of a round from the average of that round's K fold models.

The teachers (and students) of the K folds are K models of the same data; on the
truly unlabelled pool their averaged prediction is a better teacher than any one
of them (Zhang et al. 2025 found ensembled pseudo-labels the strong, simple
baseline). A fold's masked part stays labelled by its own fold's model: the
other folds' models trained on those images with their labels.

So every fold's round r must be finished before any fold's round r + 1 starts:
``run_rounds_together`` runs the folds round by round; several processes sharing
the run folder meet at each round (a process waits while another live process
trains a fold it needs, and stops, to be resumed or joined later, when no live
process does). The average is written once, to
``pool-ensemble/round-<r>/pool_predictions.csv``, a chunk of the pool at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from noisystudent import atomic, layout
from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.errors import RunFolderError
from noisystudent.inference.tables import prediction_table
from noisystudent.run.tables import TABLE_CHUNK, read_table_chunks

logger = logging.getLogger(__name__)

FRAME_COLUMNS = [PATH, LABEL, PATIENT, layout.SPLIT]  # of pool_predictions.csv, before the probabilities


def round_ready(run: Path, fold: int, round_: int, needs_pool: bool) -> bool:
    """Fold ``fold``'s round ``round_`` has its predictions (and, where its pool is averaged, the pool's)."""
    folder = layout.round_dir(run, fold, round_)
    pool_done = not needs_pool or (folder / layout.POOL_PREDICTIONS).exists() or (folder / layout.PSEUDO_LABELS).exists()
    return (folder / layout.PREDICTIONS).exists() and pool_done


def write_average(run: Path, folds: int, round_: int, classes: list[str], chunk: int = TABLE_CHUNK) -> Path:
    """pool-ensemble/round-<r>/pool_predictions.csv: the mean probability of the K fold models per pool image.

    Written once (later calls find it); every fold's pool_predictions.csv lists
    the pool in the same order, which is checked chunk by chunk.
    """
    out = layout.pool_ensemble_file(run, round_)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    probs = [layout.prob_column(c) for c in classes]

    def tables():
        readers = [read_table_chunks(layout.round_dir(run, k, round_) / layout.POOL_PREDICTIONS, chunk) for k in range(folds)]
        for parts in zip(*readers):
            if any(not part[PATH].equals(parts[0][PATH]) for part in parts):
                raise RunFolderError(f"The pool predictions of round {round_}'s fold models in {run} list the pool in different "
                                     f"orders; delete fold-*/round-{round_}/{layout.POOL_PREDICTIONS} there and --resume.")
            mean = np.mean([part[probs].to_numpy(dtype=np.float64) for part in parts], axis=0)
            yield prediction_table(parts[0][FRAME_COLUMNS], mean, classes)

    atomic.write_csv_chunks(out, tables())
    logger.info("Round %d: the pool's pseudo-labels come from the average of the %d fold models (%s).", round_, folds, out)
    return out
