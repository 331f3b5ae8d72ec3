"""From a preset and the settings a user gave to one RunConfig, for new and resumed runs.

A preset fills in defaults and the settings given win. On resume the run's own
config.json is the base instead, and settings given now override it (the run
folder then refuses any change that would alter results).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from noisystudent.config.parsing import parse_split_ratio
from noisystudent.config.presets import preset_settings
from noisystudent.config.run_config import RunConfig, config_from_saved

# Keys of config.json that are not settings (written by the run folder).
META_KEYS = ("version", "created_with", "data_fingerprint", "settings_digest")


def make_config(data: str | Path | None = None, preset: str | None = None, **settings: Any) -> RunConfig:
    """The preset's settings, then ``settings``; no data means the demo preset and data.

    ``settings`` may use the command line's text forms (``split_ratio="2:2:1"``);
    ``None`` values count as not given.
    """
    given = given_settings(settings)
    name = preset or given.pop("preset", None) or ("demo" if data is None else "cnmc-study")
    values = {**preset_settings(name), **given}
    values["data"] = _data_path(data)
    return RunConfig(**values)


def resume_config(saved: dict[str, Any], data: str | Path | None = None, source: Path | None = None, **settings: Any) -> RunConfig:
    """A run's saved config.json (read from ``source``) with the settings given now on top."""
    values = {k: v for k, v in saved.items() if k not in META_KEYS}
    if source is not None:
        config_from_saved(source, values)  # a hand-edited file is named in the error, not blamed on the flags
    values.update(given_settings(settings))
    if data is not None:
        values["data"] = _data_path(data)
    return RunConfig.from_dict(values)


def given_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings actually given (None means not given), text forms parsed."""
    given = {k: v for k, v in settings.items() if v is not None}
    if isinstance(given.get("split_ratio"), str):
        given["split_ratio"] = parse_split_ratio(given["split_ratio"])
    return given


def default_run_folder(config: RunConfig) -> Path:
    """runs/<data name>, or runs/demo for the built-in data."""
    name = "demo" if config.data is None else Path(config.data).stem or "run"
    return Path("runs") / name


def _data_path(data: str | Path | None) -> str | None:
    return str(Path(data).resolve()) if data is not None else None
