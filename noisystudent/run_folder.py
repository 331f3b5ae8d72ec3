"""Creating, refusing and resuming run folders.

A run folder belongs to exactly one configuration. Starting a run into a
folder that already holds one is refused unless ``--resume`` is given, and a
resume with different result-affecting settings is refused too, naming them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from . import __version__, atomic
from . import run_layout as layout
from .config import RunConfig, differing_result_keys, load_config_json
from .errors import ConfigError, RunFolderError

logger = logging.getLogger(__name__)

# config.json holds every RunConfig field at top level, plus these.
META_KEYS = ("version", "created_with", "data_fingerprint")


def saved_config(run: Path) -> dict[str, Any] | None:
    path = Path(run) / layout.CONFIG
    return load_config_json(path) if path.exists() else None


def check_run_folder(run: Path, config: RunConfig, resume: bool) -> None:
    """Refuse a new run into a used folder, a resume of nothing, or a changed configuration."""
    run = Path(run)
    saved = saved_config(run)
    if saved is None:
        if resume:
            raise RunFolderError(f"There is no run to resume in {run} (no {layout.CONFIG}); drop --resume to start one.")
        if run.exists() and any(p.name != ".gitkeep" for p in run.iterdir()):
            raise RunFolderError(f"The folder {run} is not empty and holds no run; choose another --out.")
        return
    if not resume:
        raise RunFolderError(f"The folder {run} already holds a run; pass --resume to continue it or --out to start a new one.")
    differing = differing_result_keys(saved, config)
    if differing:
        details = ", ".join(f"{k} ({saved.get(k)!r} -> {getattr(config, k)!r})" for k in differing)
        raise ConfigError(f"The run in {run} was made with other settings; differing: {details}. Resume with the original settings or use a new --out.")


def write_config(run: Path, config: RunConfig, data_fingerprint: str) -> None:
    """Write config.json; on resume, refuse if the data changed since the run began."""
    saved = saved_config(run)
    if saved is not None and saved.get("data_fingerprint") not in (None, data_fingerprint):
        raise ConfigError(f"The images of the run in {run} have changed since it began (data fingerprint differs); start a new run with --out.")
    created_with = saved.get("created_with", __version__) if saved else __version__
    document = {**config.to_dict(), "version": __version__, "created_with": created_with, "data_fingerprint": data_fingerprint}
    atomic.write_text(Path(run) / layout.CONFIG, json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_run_config(run: Path) -> RunConfig:
    saved = saved_config(run)
    if saved is None:
        raise RunFolderError(f"The folder {run} holds no run ({layout.CONFIG} is missing).")
    return RunConfig.from_dict({k: v for k, v in saved.items() if k not in META_KEYS})
