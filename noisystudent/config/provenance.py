"""Where each setting of a run came from: given by the user, filled in by the preset, or RunConfig's default.

Worked out from the settings alone (config.json names its preset), so the
banner, ``--help`` and the report say the same thing. A value equal to what
the preset would have chosen counts as the preset's: it changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from noisystudent.config.presets import PRESETS
from noisystudent.config.run_config import RunConfig

GIVEN, PRESET, DEFAULT = "given", "preset", "default"
# The settings a reader needs first to know what was run, in the order they are shown.
KEY_SETTINGS = ("method", "folds", "split_ratio", "rounds", "epochs", "image_size", "arch", "weights", "optimizer", "lr",
                "batch_size", "scheduler", "student_data", "pseudo_mode", "student_augment", "voting", "positive")


def defaults() -> dict[str, Any]:
    return {f.name: _plain(f.default) for f in fields(RunConfig) if f.default is not f.default_factory}


def preset_value(preset: str, name: str) -> Any:
    """What ``preset`` sets ``name`` to (RunConfig's default when it leaves it alone)."""
    return _plain(PRESETS.get(preset, {}).get(name, defaults().get(name)))


def origin(values: dict[str, Any], name: str) -> str:
    """GIVEN, PRESET or DEFAULT for setting ``name`` of a config dict (config.json or asdict)."""
    preset = str(values.get("preset", "cnmc-study"))
    if name == "preset" or _plain(values.get(name)) == preset_value(preset, name):
        return PRESET if name in PRESETS.get(preset, {}) or name == "preset" else DEFAULT
    return GIVEN


def given_names(values: dict[str, Any]) -> list[str]:
    """The settings whose value differs from what the preset would have chosen."""
    return [f.name for f in fields(RunConfig) if f.name not in ("data", "preset") and origin(values, f.name) == GIVEN]


def banner(config: RunConfig) -> str:
    """One line of the settings in force, those given on the command line marked with '*'."""
    values = config.to_dict()
    # positive is left out while it is the default: on multi-class data 'all' would name no class
    names = [n for n in KEY_SETTINGS if n != "positive" or origin(values, n) == GIVEN]
    parts = [f"{name} {shown(values[name])}{'*' if origin(values, name) == GIVEN else ''}" for name in names]
    others = [n for n in given_names(values) if n not in KEY_SETTINGS]
    tail = f"; also given: {', '.join(f'{n} {shown(values[n])}' for n in others)}" if others else ""
    return f"preset {config.preset}: {', '.join(parts)}{tail} (* given, overriding the preset)"


def help_default(name: str) -> str:
    """'(default, cnmc-study: hard; presets demo, smoke: soft)': RunConfig's default and every preset that changes it."""
    default = defaults().get(name)
    changes: dict[str, list[str]] = {}
    for preset, settings in PRESETS.items():
        if name in settings and _plain(settings[name]) != default:
            changes.setdefault(shown(settings[name]), []).append(preset)
    extra = "".join(f"; {'preset' if len(p) == 1 else 'presets'} {', '.join(p)}: {v}" for v, p in changes.items())
    return f"(default, cnmc-study: {shown(default)}{extra})"


def shown(value: Any) -> str:
    """A setting as a reader writes it: 2:2:1, 0.001, none."""
    if isinstance(value, (list, tuple)):
        return ":".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def _plain(value: Any) -> Any:
    """The JSON form, so a tuple from RunConfig equals the list read from config.json."""
    return json.loads(json.dumps(value))
