"""Creating, refusing, locking and resuming run folders.

A run folder belongs to exactly one configuration. Starting a run into a
folder that already holds one is refused unless ``--resume`` is given, and a
resume with different result-affecting settings is refused too, naming them.
A folder that a session left before writing config.json (killed while reading
the data, or stopped by a data error) holds nothing worth keeping and may be
started again, with or without ``--resume``.

Several sessions may work on one run folder at once (``--only-folds``,
``--join``, one process per GPU or Slurm task). What they share is prepared in
a short critical section: ``lock_run_folder`` holds an advisory lock on
``RUN/.lock`` (released by the kernel even after ``kill -9``) while a session
checks the folder, writes config.json and folds.csv, builds the image cache,
claims a fold (``run/claims.py``) or writes the results; a second session
waits for it, saying which process it waits for. Training itself runs outside
the lock, under the fold's claim.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Iterator

from noisystudent import __version__, atomic, layout
from noisystudent.config.config_file import config_yaml
from noisystudent.config.run_config import RunConfig, config_from_saved, differing_result_keys, load_config_json, result_keys
from noisystudent.config.settings import META_KEYS
from noisystudent.environment import describe_machine
from noisystudent.errors import ConfigError, RunFolderError
from noisystudent.models.model_file import model_identity

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one session at a time is up to the user
    fcntl = None

logger = logging.getLogger(__name__)

LOCK = ".lock"
# What a session may have written before config.json; such a folder can be started again.
BEFORE_CONFIG = {layout.LOG, layout.DEMO_DATA, LOCK, ".gitkeep"}


def saved_config(run: Path) -> dict[str, Any] | None:
    path = Path(run) / layout.CONFIG
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise RunFolderError(f"{path} is not a regular file; the folder {run} is not a usable run folder.")
    return load_config_json(path) if path.exists() else None


def check_run_folder(run: Path, config: RunConfig, resume: bool, before_writing: bool = True) -> None:
    """Refuse a new run into a used folder, a resume of nothing, or a changed configuration.

    ``before_writing``: this session has written nothing into ``run`` yet, so a
    run.log found there is an earlier session's (checked again later, it is this one's).
    """
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"The run folder {run} is a file; choose a folder with --out.")
    saved = saved_config(run)
    if saved is None:
        entries = [p for p in run.iterdir() if p.name != ".gitkeep"] if run.is_dir() else []
        if any(p.name not in BEFORE_CONFIG and not atomic.is_temp(p) for p in entries):
            raise RunFolderError(f"The folder {run} is not empty and holds no run; choose another --out.")
        if resume and not (run / layout.LOG).exists():
            raise RunFolderError(f"There is no run to resume in {run} (no {layout.CONFIG}); drop --resume to start one.")
        if entries and before_writing:
            logger.info("The session before stopped before saving %s; the run starts from the beginning.", layout.CONFIG)
        return
    if not resume:
        raise RunFolderError(f"The folder {run} already holds a run; pass --resume to continue it or --out to start a new one.")
    if not isinstance(saved.get("settings_digest"), dict):
        raise ConfigError(
            f"{Path(run) / layout.CONFIG} has no settings_digest, so its settings cannot be checked against the ones its "
            "trained stages used; restore the file, or start a new run with --out."
        )
    edited = edited_keys(saved)
    if edited:
        raise ConfigError(
            f"The settings {', '.join(edited)} in {Path(run) / layout.CONFIG} were edited after the run began, but its "
            "trained stages used the original values; restore them, or start a new run with --out."
        )
    differing = differing_result_keys(saved, config)
    if differing:
        details = ", ".join(f"{k} ({saved.get(k)!r} -> {getattr(config, k)!r})" for k in differing)
        raise ConfigError(f"The run in {run} was made with other settings; differing: {details}. Resume with the original settings or use a new --out.")


@contextlib.contextmanager
def lock_run_folder(run: Path) -> Iterator[None]:
    """Hold RUN/.lock for a short critical section, waiting while another process holds it."""
    run = Path(run)
    if fcntl is None:
        yield
        return
    handle = open(run / LOCK, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            logger.warning("Waiting for %s, which is preparing or finishing the run in %s.", holder, run)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # blocks; Ctrl-C still interrupts it
        handle.seek(0)
        handle.truncate()
        handle.write(f"{process_name()}\n")  # for the message of a waiting session
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def remove_shared_temps(run: Path) -> None:
    """Remove temporary files that killed sessions left in RUN and RUN/results.

    Only files written under ``lock_run_folder`` live there (config.json,
    folds.csv, results), so while the lock is held none of them is in use. The
    fold folders are cleared by the process that claims the fold.
    """
    for folder in (Path(run), Path(run) / layout.RESULTS):
        for temp in atomic.remove_stale_temps(folder, recursive=False):
            logger.info("Removed %s, left by an interrupted write.", temp)


def process_name() -> str:
    """host:pid of this process, as claims and lock messages name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def write_config(run: Path, config: RunConfig, data_fingerprint: str) -> None:
    """Write config.json and config.yaml; on resume, refuse if the data changed since the run began.

    Its ``machine`` entry describes where the session that created the run ran
    (environment.py); later sessions keep it (a run begun before the entry existed
    keeps none) and say where they run in run.log.
    """
    saved = saved_config(run)
    if saved is not None and saved.get("data_fingerprint") not in (None, data_fingerprint):
        raise ConfigError(f"The images of the run in {run} have changed since it began (data fingerprint differs); start a new run with --out.")
    created_with = saved.get("created_with", __version__) if saved else __version__
    machine = saved.get("machine") if saved else describe_machine()
    # a run begun before run ids keeps none: its model files record none either, and are refused as unverifiable
    run_id = saved.get("run_id") if saved else uuid.uuid4().hex
    document = {**config.to_dict(), "version": __version__, "created_with": created_with, "data_fingerprint": data_fingerprint,
                "settings_digest": settings_digest(config.to_dict()), "machine": machine, "run_id": run_id}
    atomic.write_text(Path(run) / layout.CONFIG, json.dumps(document, indent=2, sort_keys=True) + "\n")
    # after config.json: a folder with config.yaml alone would look like a foreign folder, not a run
    atomic.write_text(Path(run) / layout.CONFIG_YAML, config_yaml(config.to_dict(), yaml_header(run)))


def yaml_header(run: Path) -> str:
    """The comment at the top of RUN/config.yaml: what it is and how to repeat the run."""
    return (f"The resolved settings of the noisystudent run in {Path(run).resolve()}\n"
            f"(noisystudent {__version__}; the same settings as {layout.CONFIG}, which also records the data and machine).\n"
            f"Repeat the run: noisystudent kfold --config {Path(run) / layout.CONFIG_YAML} --out runs/NEW\n"
            "Flags given on the command line win over this file; this file wins over its preset.")


def run_identity(run: Path, fold: int, round_: int) -> dict[str, Any]:
    """``model_identity`` of fold ``fold``, round ``round_`` of the run in ``run``, from its config.json.

    The run id tells two runs with the same settings apart; the digest of the
    result-affecting settings tells a file trained before the settings changed.
    """
    saved = saved_config(run)
    if saved is None:
        raise RunFolderError(f"The folder {run} holds no run ({layout.CONFIG} is missing).")
    if not isinstance(saved.get("run_id"), str) or not isinstance(saved.get("settings_digest"), dict):
        raise RunFolderError(f"{Path(run) / layout.CONFIG} records no run_id or settings_digest (an older noisystudent "
                             "wrote it, or it was edited), so the run's model files cannot be verified; if an older noisystudent made it and "
                             f"you trust it, record them with noisystudent adopt {run}, or start a new run with --out.")
    return model_identity(saved["run_id"], _hash(saved["settings_digest"]), fold, round_)


def settings_digest(settings: dict[str, Any]) -> dict[str, str]:
    """A short hash of each result-affecting setting, stored beside them in config.json.

    A resumed run compares config.json's values with these, so a hand-edited
    value (which would mix settings between stages already trained and stages to
    come) is refused by name.
    """
    return {key: _hash(settings.get(key)) for key in result_keys()}


def edited_keys(saved: dict[str, Any]) -> list[str]:
    """Result-affecting settings of a saved config.json whose value no longer matches its digest.

    A setting the file holds but the digest lacks counts as edited: deleting the
    digest must not turn the check off. A setting absent from both is one added
    after the run began (its default applies).
    """
    digest = saved.get("settings_digest")
    digest = digest if isinstance(digest, dict) else {}
    return [key for key in result_keys() if (key in digest or key in saved) and digest.get(key) != _hash(saved.get(key))]


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def load_run_config(run: Path) -> RunConfig:
    saved = saved_config(run)
    if saved is None:
        raise RunFolderError(f"The folder {run} holds no run ({layout.CONFIG} is missing).")
    return config_from_saved(Path(run) / layout.CONFIG, {k: v for k, v in saved.items() if k not in META_KEYS})
