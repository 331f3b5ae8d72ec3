"""TensorBoard event files: every model's epochs, and each fold's pseudo-label accuracy per round.

``tensorboard --logdir runs/x`` then shows one line per ``fold-k/round-r`` for
each tag, so folds and rounds compare at a glance. Written only when the
``tensorboard`` package is installed (the ``tensorboard`` extra) and
``--tensorboard`` is on (the default).

Resume: a model's points are written before its checkpoint, so a kill between
the two loses none; the resumed session opens its writer with ``purge_step`` at
the first epoch it will train, and TensorBoard drops the earlier session's
points from that step on, so none is shown twice.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from noisystudent import layout

logger = logging.getLogger(__name__)

FOLDER = layout.TENSORBOARD  # RUN/tensorboard/fold-<k>/round-<r>/events.out.tfevents.*
PSEUDO_LABELS_RUN = "pseudo-labels"  # RUN/tensorboard/fold-<k>/pseudo-labels: accuracy per round
# history.csv column -> TensorBoard tag; the validation metrics (val_<name>) become validation/<name>
TAGS = {layout.TRAIN_LOSS: "loss/train", layout.VAL_LOSS: "loss/validation", layout.LR: "learning_rate",
        layout.IMAGES_PER_S: "speed/images_per_s", layout.SECONDS: "speed/epoch_seconds"}


def available() -> bool:
    """True when the tensorboard package (which torch.utils.tensorboard writes through) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def model_folder(run: Path, fold: int, round_: int) -> Path:
    return Path(run) / FOLDER / f"fold-{fold}" / f"round-{round_}"


class EventLog:
    """One model's event file; ``epoch(row)`` writes history.csv's row of an epoch, ``close()`` flushes."""

    def __init__(self, folder: Path, first_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: points an earlier session wrote at or after the first epoch trained now are dropped
        self.writer = SummaryWriter(str(folder), purge_step=first_epoch if first_epoch > 1 else None)

    def epoch(self, row: dict[str, Any]) -> None:
        step = int(row[layout.EPOCH])
        for column, value in row.items():
            tag = TAGS.get(column) or (f"validation/{column[4:]}" if column.startswith("val_") else None)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()  # on disk before the checkpoint that makes the epoch count as done

    def close(self) -> None:
        self.writer.close()


class NoEventLog:
    """``--no-tensorboard``, or tensorboard not installed: nothing written."""

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def open_event_log(folder: Path | None, first_epoch: int) -> EventLog | NoEventLog:
    """The event log of a model whose next epoch to train is ``first_epoch`` (1-based), or a no-op one."""
    if folder is None or not available():
        return NoEventLog()
    return EventLog(folder, first_epoch)


def write_pseudo_label_accuracy(run: Path, fold: int, round_: int, accuracy: float) -> None:
    """The accuracy of the pseudo-labels that round ``round_``'s model gave the masked part (hidden labels), at step ``round_``."""
    if not available():
        return
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(Path(run) / FOLDER / f"fold-{fold}" / PSEUDO_LABELS_RUN), purge_step=round_ or None) as writer:
        writer.add_scalar("pseudo_labels/accuracy", accuracy, round_)


def say_if_unavailable(enabled: bool) -> None:
    """One log line when --tensorboard is on but the package is missing."""
    if enabled and not available():
        logger.info("TensorBoard event files are not written: the tensorboard package is not installed "
                    "(pip install 'noisystudent[tensorboard]').")
