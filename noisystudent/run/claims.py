"""Fold claims: which process trains which fold of a shared run folder.

Several processes (one per GPU, per machine on a shared file system, per
Slurm array task) may work on one run folder. Before training a fold, a
process claims it by writing ``RUN/fold-<k>/.claim`` (host, pid, process start
time), inside the short ``lock_run_folder`` critical section, so two
claimants can never both win. Another process finds the fold claimed and
moves on, naming the holder. A claim whose process is gone is stale and is
taken over: on the same host that is decided for sure (the pid is not running,
or is running but started later, i.e. was reused); a claim from another host
cannot be checked from here and is left alone, with a message saying how to
remove it by hand. The claim is removed when its process is done with the fold
(also after an error or Ctrl-C), and after ``kill -9`` it is the stale case.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from noisystudent import atomic, layout, processes
from noisystudent.errors import ConfigError
from noisystudent.processes import process_start

logger = logging.getLogger(__name__)

CLAIM = ".claim"


@dataclass(frozen=True)
class Claim:
    host: str
    pid: int
    process_start: str | None  # start time of the pid (Linux: clock ticks since boot), tells a reused pid
    claimed_at: float  # seconds since the epoch, for the message

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"

    def is_mine(self) -> bool:
        me = this_process()
        return (self.host, self.pid, self.process_start) == (me.host, me.pid, me.process_start)


def this_process() -> Claim:
    return Claim(socket.gethostname(), os.getpid(), process_start(os.getpid()), time.time())


def is_stale(claim: Claim) -> bool:
    """True when ``claim``'s process is certainly gone; a claim from another host is never stale here."""
    return not processes.is_alive(claim.pid, claim.process_start, on_other_host=claim.host != socket.gethostname())


def claim_path(run: Path, fold: int) -> Path:
    return layout.fold_dir(run, fold) / CLAIM


def read_claim(run: Path, fold: int) -> Claim | None:
    path = claim_path(run, fold)
    try:
        return Claim(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # written atomically, so only a hand-edited file gets here
        logger.warning("The claim %s cannot be read; it is treated as stale.", path)
        return Claim("?", -1, None, 0.0)


def claim_fold(run: Path, fold: int) -> Claim | None:
    """Claim ``fold`` for this process; return the live holder instead when another process has it.

    Call only inside ``lock_run_folder``: reading, judging and replacing a
    claim must not interleave with another claimant's.
    """
    current = read_claim(run, fold)
    if current is not None and not current.is_mine():
        if not (current.pid == -1 or is_stale(current)):
            return current
        logger.warning("Fold %d was claimed by %s, which is no longer running; this process (%s) takes it over.",
                       fold, current.name, this_process().name)
        for temp in atomic.remove_stale_temps(layout.fold_dir(run, fold)):  # the dead holder's half-written files
            logger.info("Removed %s, left by an interrupted write.", temp)
    atomic.write_text(claim_path(run, fold), json.dumps(asdict(this_process())) + "\n")
    return None


def release_fold(run: Path, fold: int) -> None:
    """Remove this process's claim of ``fold`` (another process's claim is left alone)."""
    current = read_claim(run, fold)
    if current is not None and current.is_mine():
        claim_path(run, fold).unlink(missing_ok=True)


def clear_stale_claim(run: Path, fold: int) -> None:
    """Remove the claim a killed process left on a fold that was finished before it died."""
    current = read_claim(run, fold)
    if current is not None and (current.pid == -1 or is_stale(current)):
        claim_path(run, fold).unlink(missing_ok=True)


def holder_sentence(fold: int, holder: Claim) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.claimed_at))
    where = "" if holder.host == socket.gethostname() else (
        f"; it runs on another machine, so if it was stopped there remove {CLAIM} in that fold's folder by hand")
    return f"fold {fold} is being trained by process {holder.name} (since {since}){where}"


def fold_finished(run: Path, fold: int, rounds: int) -> bool:
    """A fold is finished once its last round's predictions.csv exists (every earlier stage came before)."""
    return (layout.round_dir(run, fold, rounds) / layout.PREDICTIONS).exists()


def select_folds(spec: str | None, n_folds: int) -> list[int]:
    """The folds of ``--only-folds`` ('0,2'; None: all), checked against ``--folds``."""
    if spec is None:
        return list(range(n_folds))
    try:
        chosen = sorted({int(part) for part in spec.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--only-folds takes fold numbers separated by commas, such as 0,2; got {spec!r}.") from None
    if not chosen or chosen[0] < 0 or chosen[-1] >= n_folds:
        raise ConfigError(f"--only-folds must name folds from 0 to {n_folds - 1} (the run has {n_folds} folds); got {spec!r}.")
    return chosen
