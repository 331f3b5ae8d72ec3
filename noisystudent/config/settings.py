"""From a preset and the settings a user gave to one RunConfig, for new and resumed runs.

A preset fills in defaults and the settings given win. On resume the run's own
config.json is the base instead, and settings given now override it (the run
folder then refuses any change that would alter results).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from noisystudent.config.choices import ONE_STAGE_METHODS
from noisystudent.config.parsing import parse_split_ratio
from noisystudent.config.presets import preset_settings
from noisystudent.config.run_config import LEGACY_STUDENT_INIT, RENAMED_SETTINGS, RunConfig, config_from_saved

logger = logging.getLogger(__name__)

# Keys of config.json that are not settings (written by the run folder).
META_KEYS = ("version", "created_with", "data_fingerprint", "settings_digest", "machine", "run_id")


def make_config(data: str | Path | None = None, preset: str | None = None, **settings: Any) -> RunConfig:
    """The preset's settings, then ``settings``; no data means the demo preset and data.

    The settings of a new run: RunConfig's defaults, overridden by the preset,
    overridden by the settings given. Every value is checked (RunConfig's
    ``__post_init__``) before anything is written.

    Args:
        data: Data set folder or CSV; made absolute. ``None`` (default) means
            the built-in synthetic demo data, generated into the run folder.
        preset: Name of a preset in ``PRESETS``. Default: ``settings["preset"]``
            when given, else ``"demo"`` without data and ``"cnmc-study"`` with data.
        **settings: Any RunConfig field by name, e.g. ``epochs=10``,
            ``device="cuda"``. The command line's text forms are accepted
            (``split_ratio="2:2:1"``); ``None`` values count as not given.

    Returns:
        RunConfig: The checked settings, ``preset`` holding the preset's name.

    Raises:
        ConfigError: The preset is unknown, a setting does not exist, or a
            value has the wrong type or lies out of range.

    Example:
        >>> import noisystudent as ns
        >>> config = ns.make_config(preset="smoke", epochs=2, split_ratio="3:1:1")
        >>> config.preset, config.folds, config.epochs, config.split_ratio, config.data
        ('smoke', 2, 2, (3.0, 1.0, 1.0), None)
        >>> ns.make_config().preset  # no data: the demo
        'demo'
    """
    given = given_settings(settings)
    name = preset or given.pop("preset", None) or ("demo" if data is None else "cnmc-study")
    values = {**preset_settings(name), **given}
    values["data"] = _data_path(data)
    if values.get("method") in ONE_STAGE_METHODS and "rounds" not in given:  # one model after the teacher: --rounds 1 implied
        values["rounds"] = min(values.get("rounds", 1), 1)
    return RunConfig(**values)


def resume_config(saved: dict[str, Any], data: str | Path | None = None, source: Path | None = None, **settings: Any) -> RunConfig:
    """A run's saved config.json (read from ``source``) with the settings given now on top.

    The settings of a resumed run: the run's own settings are the base (no
    preset is applied again), and the settings given now override them. This
    function only builds the RunConfig; ``run_kfold(..., resume=True)`` then
    refuses any change of a setting that affects results.

    Args:
        saved: The parsed config.json of the run (its ``version``,
            ``created_with``, ``data_fingerprint``, ``settings_digest`` and
            ``machine`` entries are ignored).
        data: A new location of the data set; ``None`` (default) keeps the
            saved one.
        source: The config.json file ``saved`` was read from; when given, a bad
            saved value is reported as a fault of that file, not of the
            settings given now. Default: not checked separately.
        **settings: RunConfig fields to change, as in :func:`make_config`;
            ``None`` values count as not given.

    Returns:
        RunConfig: The saved settings with the given ones on top.

    Raises:
        ConfigError: A saved or given setting is unknown or invalid.

    Example:
        >>> import noisystudent as ns
        >>> saved = ns.make_config(preset="smoke").to_dict()
        >>> config = ns.resume_config(saved, device="cpu", workers=2)
        >>> config.preset, config.epochs, config.device, config.workers
        ('smoke', 1, 'cpu', 2)
    """
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
    for old, new in RENAMED_SETTINGS.items():
        if old in given:
            logger.warning("--%s (setting %s) is deprecated: it is now --%s (%s); the old name works until the next release.",
                           old.replace("_", "-"), old, new.replace("_", "-"), new)
            given.setdefault(new, given.pop(old))
    if given.get("student_init") == LEGACY_STUDENT_INIT:
        logger.warning("--student-init weights is deprecated: leave --student-init unset for the same start (as --weights), "
                       "or choose scratch, imagenet or teacher; the old value works until the next release.")
        given["student_init"] = None  # unset, overriding any preset: the start 'weights' meant
    if isinstance(given.get("split_ratio"), str):
        given["split_ratio"] = parse_split_ratio(given["split_ratio"])
    return given


def default_run_folder(config: RunConfig) -> Path:
    """runs/<data name>, or runs/demo for the built-in data."""
    name = "demo" if config.data is None else Path(config.data).stem or "run"
    return Path("runs") / name


def _data_path(data: str | Path | None) -> str | None:
    return str(Path(data).resolve()) if data is not None else None
