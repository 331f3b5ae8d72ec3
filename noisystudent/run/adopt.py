"""``noisystudent adopt RUN``: give a run made before verified run files the records it lacks.

A run written by an earlier noisystudent has no ``run_id`` or
``settings_digest`` in config.json, no digests.json, and model files that
record no run, fold and round, so every command now refuses it rather than
trust it (docs/reliability.md). Weeks of training should not be lost to that:
``adopt`` records the files *as they are now*, once, on the user's word that
they trust them. It refuses a run whose model files already record another
place (those were verified once and something moved them), and it changes no
weights, no table and no setting.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from noisystudent import atomic, layout
from noisystudent.errors import RunFolderError
from noisystudent.models import checkpoint
from noisystudent.models.model_file import IDENTITY, check_identity
from noisystudent.run import digests
from noisystudent.run.folder import lock_run_folder, run_identity, saved_config, settings_digest

logger = logging.getLogger(__name__)

MODEL_FILES = (layout.MODEL, layout.CHECKPOINT)


def adopt_run(run: Path) -> list[str]:
    """Record what ``run`` lacks (run id, settings digest, file digests, model identities); return what was recorded.

    Args:
        run: A run folder written by an earlier noisystudent.

    Returns:
        list[str]: One line per record written, empty when the run lacked none.

    Raises:
        RunFolderError: ``run`` holds no run, or a model file records another run, fold or round.

    Example:
        >>> import noisystudent as ns
        >>> ns.adopt_run("runs/made-with-0.1")  # doctest: +SKIP
        ['config.json: run_id, settings_digest', 'digests.json: folds.csv', 'fold-0/round-0/model.pt: identity']
    """
    run = Path(run)
    if saved_config(run) is None:
        raise RunFolderError(f"The folder {run} holds no run ({layout.CONFIG} is missing); nothing to adopt.")
    with lock_run_folder(run):
        done = _config_records(run) + _file_digests(run)
        for path in sorted(run.glob("fold-*/round-*/*.pt")):
            if path.name in MODEL_FILES and _model_identity(run, path):
                done.append(f"{path.relative_to(run)}: identity")
    for line in done:
        logger.debug("Recorded %s.", line)
    return done


def _config_records(run: Path) -> list[str]:
    saved = saved_config(run)
    missing = {}
    if not isinstance(saved.get("run_id"), str):
        missing["run_id"] = uuid.uuid4().hex
    if not isinstance(saved.get("settings_digest"), dict):
        settings = {k: v for k, v in saved.items() if k not in ("version", "created_with", "data_fingerprint", "machine", "run_id")}
        missing["settings_digest"] = settings_digest(settings)
    if not missing:
        return []
    atomic.write_text(run / layout.CONFIG, json.dumps({**saved, **missing}, indent=2, sort_keys=True) + "\n")
    return [f"{layout.CONFIG}: {', '.join(missing)}"]


def _file_digests(run: Path) -> list[str]:
    have = digests.recorded(run)
    done = []
    for name in (layout.FOLDS, layout.POOL):
        if (run / name).is_file() and name not in have:
            digests.record(run, name, digests.file_sha256(run / name))
            done.append(f"{layout.DIGESTS}: {name}")
    return done


def _model_identity(run: Path, path: Path) -> bool:
    """Write the identity of where ``path`` lies into it, if it records none; True if written."""
    payload = checkpoint.load(path)
    fold, round_ = int(path.parent.parent.name.split("-")[1]), int(path.parent.name.split("-")[1])
    expected = run_identity(run, fold, round_)
    if isinstance(payload.get(IDENTITY), dict):
        check_identity(payload, path, expected, what=path.name)  # verified once: never re-labelled
        return False
    payload.pop("version", None)
    checkpoint.save(path, {**payload, IDENTITY: expected})
    return True
