"""Where everything lives in a run folder, and the columns of its tables.

The run folder is the single source of truth: every stage writes one artifact
here atomically, and a stage whose artifact exists is never recomputed.

    runs/<name>/
      config.json            every setting, package version, data fingerprint
      config.yaml            the same settings, commented: noisystudent kfold --config RUN/config.yaml repeats the run
      folds.csv              path, label, patient, subset, fold, role
      pool.csv               the unlabelled pool: path, patient (runs with --pool-images or --pool)
      digests.json           SHA-256 of folds.csv and pool.csv, recorded as they are written
      run.log                log of every session that worked on this run
      cache/                 decoded images (uint8), keyed by fingerprint
      demo-data/             the built-in synthetic images (demo runs only)
      fold-<k>/round-<r>/    r = 0 is the teacher, r >= 1 the students
        checkpoint.pt        resume state, rewritten every epoch
        history.csv          one row per epoch
        model.pt             final weights + what is needed to rebuild the model
        predictions.csv      this model on validation, test and masked images
        pool_predictions.csv this model on the pool (rounds whose pseudo-labels need it)
        pseudo_labels.csv    labels this model gives the next round's student
      pool-ensemble/round-<r>/pool_predictions.csv   the round's K fold models averaged (--pool-labels ensemble)
      results/
        predictions_<models>_<voting>.csv   ensemble predictions on the test set
        metrics.csv          one row per fold model, fold summary and ensemble
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.json"
CONFIG_YAML = "config.yaml"  # written after config.json, from the same settings
FOLDS = "folds.csv"
DIGESTS = "digests.json"  # SHA-256 of FOLDS and POOL (run/digests.py)
POOL = "pool.csv"  # the unlabelled pool (path, patient), sorted by path; read in chunks, never whole
POOL_LISTING = ".pool.csv.listing.tmp"  # the pool listed by this session, installed as POOL once config.json is written
LOG = "run.log"
CACHE = "cache"
MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"
PREDICTIONS = "predictions.csv"
PSEUDO_LABELS = "pseudo_labels.csv"
POOL_PREDICTIONS = "pool_predictions.csv"  # the pool's probabilities, only in rounds whose pseudo-labels need them
RESULTS = "results"
POOL_ENSEMBLE = "pool-ensemble"  # --pool-labels ensemble: round-<r>/pool_predictions.csv, the round's K fold models averaged
METRICS = "metrics.csv"
CALIBRATION = "calibration.json"  # results/: the temperatures, fitted on out-of-fold validation predictions
CALIBRATION_TABLE = "calibration.csv"  # results/: ECE, Brier, NLL of every model on the outer test set, before and after
RELIABILITY = "reliability.csv"  # results/: the points of the reliability diagrams
REPORT = "report"
TENSORBOARD = "tensorboard"  # event files: TENSORBOARD/fold-<k>/round-<r>, TENSORBOARD/fold-<k>/pseudo-labels
DEMO_DATA = "demo-data"  # the built-in synthetic images, generated into the run folder

# history.csv columns (validation metrics are prefixed "val_").
EPOCH = "epoch"
LR = "lr"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
SECONDS = "seconds"
IMAGES_PER_S = "images_per_s"
IMAGE_SIZE = "image_size"
UNLABELLED_USED = "unlabelled_used"  # FixMatch: fraction of the epoch's unlabelled images above their threshold

# predictions.csv columns: path, label, patient, split, prob_<class>..., pred.
SPLIT = "split"  # one of the values below
SPLIT_VALIDATION, SPLIT_TEST, SPLIT_MASKED, SPLIT_POOL = "validation", "test", "masked", "pool"
LEGACY_SPLITS = {"unlabelled": SPLIT_MASKED}  # the masked part's split in predictions.csv of runs made before 0.2
PRED = "pred"
PROB_PREFIX = "prob_"

# pseudo_labels.csv columns: path, target_<class>..., confidence, pred, copies.
TARGET_PREFIX = "target_"
CONFIDENCE = "confidence"
COPIES = "copies"  # times the image appears in the student's epoch (balancing)

# Round 0 is the teacher trained on labelled images; rounds >= 1 are students.
TEACHER = "teacher"
STUDENT = "student"
# --models: the fold models an ensemble is made of. One spelling everywhere, the plural; the singular
# (compare's before 0.2) is accepted as an alias. The value is the kind of the models: the name in files.
MODEL_SETS = {"students": STUDENT, "teachers": TEACHER, STUDENT: STUDENT, TEACHER: TEACHER}


def model_set_kind(models: str) -> str | None:
    """'student' or 'teacher' for ``--models`` in either spelling; None for anything else."""
    return MODEL_SETS.get(str(models).strip().lower())


def model_kind(round_: int) -> str:
    """'teacher' for round 0, 'student' for every later round."""
    return TEACHER if int(round_) == 0 else STUDENT


def model_label(round_: int) -> str:
    """A reader's name for the model of a round: 'teacher' or 'student (round r)'."""
    return TEACHER if int(round_) == 0 else f"{STUDENT} (round {int(round_)})"


# results/metrics.csv identifying columns.
MODEL_KIND = "model"  # teacher or student
FOLD_COLUMN = "fold"  # 0..K-1, or "mean", "variance", "ensemble"
ROUND = "round"
EVAL_SPLIT = "split"  # SPLIT_VALIDATION (out-of-fold), SPLIT_TEST, or SPLIT_MASKED: pseudo-label quality against hidden labels
VOTING = "voting"  # empty for single models, majority or soft for ensembles
# Honesty of a row: how its models were selected, and whether the selection saw these images.
SELECTION = "selection"  # "best epoch" or "last epoch" (empty for rows of no model)
SELECTION_BIASED = "selection_biased"  # True where the model's epoch was chosen with the row's (validation) images
FOLDS_AVERAGED = "folds_averaged"  # mean/variance rows: how many folds define the run's primary metric
FOLDS_PREFIX = "folds_"  # mean/variance rows: folds_<metric>, how many folds define that metric (the mean's count)
AUC_FROM = "auc_from"  # "probability", "vote fraction", or empty when there is no AUC
VOTE_PREFIX = "vote_fold"  # ensemble tables: vote_fold<k> is fold model k's vote
CALIBRATION_COLUMN = "calibration"  # none or temperature: the probabilities a calibration row was computed from
TEMPERATURE = "temperature"


def folds_column(metric: str) -> str:
    """folds_<metric>: on a mean or variance row, the number of folds whose ``metric`` is defined."""
    return f"{FOLDS_PREFIX}{metric}"


def fold_dir(run: Path, fold: int) -> Path:
    return Path(run) / f"fold-{fold}"


def round_dir(run: Path, fold: int, round_: int) -> Path:
    return fold_dir(run, fold) / f"round-{round_}"


def pool_ensemble_file(run: Path, round_: int) -> Path:
    """The pool's probabilities averaged over round ``round_``'s K fold models (--pool-labels ensemble)."""
    return Path(run) / POOL_ENSEMBLE / f"round-{round_}" / POOL_PREDICTIONS


def results_dir(run: Path) -> Path:
    return Path(run) / RESULTS


def prob_column(class_name: str) -> str:
    return f"{PROB_PREFIX}{class_name}"


def target_column(class_name: str) -> str:
    return f"{TARGET_PREFIX}{class_name}"
