"""Settings kept in a YAML file: read one for a command (``--config FILE``), write a commented one.

A file holds settings by name, as the flags do (``epochs: 10`` for ``--epochs 10``).
The command line merges them in one order: flags given > the file > the preset >
RunConfig's defaults. Every run writes its resolved settings as RUN/config.yaml,
so ``noisystudent kfold --config RUN/config.yaml --out NEW`` repeats it.

A file is read with ``yaml.safe_load`` only: it can hold settings, never code.
An unknown key stops with a "did you mean" suggestion; a key of another
command (``epochs`` for ``ensemble predict``) stops saying whose it is.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from noisystudent.config.parsing import parse_split_ratio
from noisystudent.config.presets import DESCRIPTIONS, preset_settings
from noisystudent.config.run_config import RENAMED_SETTINGS, RunConfig, check_setting_type
from noisystudent.errors import ConfigError

logger = logging.getLogger(__name__)

KFOLD, EXPERIMENT, PREDICT = "kfold", "experiment", "ensemble predict"
# The settings of `ensemble predict` a file may hold, with their types (the flags' own names).
PREDICT_SETTINGS: dict[str, str] = {"models": "str", "voting": "str", "tta": "str", "batch_size": "int", "device": "str",
                                    "skip_unreadable": "bool", "backend": "str", "calibration": "str"}
EXPERIMENT_ONLY = {"seeds": "list", "arms": "list"}  # text such as "0,1,2" or a YAML list
EXPERIMENT_REFUSED = {"seed": "seeds"}  # RunConfig settings experiment replaces by its own
# Where each group of settings begins, in RunConfig's field order: the sections of --help and of a written file.
SECTIONS = (("data", "Data"), ("folds", "Folds"), ("method", "Method"), ("student_data", "Noisy Student"),
            ("fixmatch_threshold", "FixMatch"), ("mpl_uda_threshold", "Meta Pseudo Labels"),
            ("teacher_augment", "Noise"),
            ("epochs", "Optimisation"), ("image_size", "Images"), ("device", "Execution"))
FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")  # YAML 1.1 reads 1e-3 as text
WIDTH = 100


def command_settings(command: str) -> dict[str, str]:
    """The keys a file for ``command`` may hold, with the type of each ("int", "str | None", "list", ...)."""
    run_settings = {f.name: str(f.type) for f in fields(RunConfig)}
    if command == KFOLD:
        return run_settings
    if command == EXPERIMENT:
        return {**{k: v for k, v in run_settings.items() if k not in EXPERIMENT_REFUSED}, **EXPERIMENT_ONLY}
    if command == PREDICT:
        return dict(PREDICT_SETTINGS)
    raise ValueError(f"no config file for command {command!r}")


def read_config_file(path: str | Path, command: str = KFOLD) -> dict[str, Any]:
    """The settings of a YAML file for ``command``, checked by name and type.

    Args:
        path: A YAML file of ``name: value`` lines (e.g. a run's config.yaml,
            or ``noisystudent config show``'s output).
        command: ``"kfold"`` (default), ``"experiment"`` or ``"ensemble predict"``:
            which keys are allowed.

    Returns:
        dict[str, Any]: Setting name -> value as given (split_ratio and
        numbers written as text parsed; renamed settings under their new
        names). Values are checked again, with the others, by RunConfig.

    Raises:
        ConfigError: The file cannot be read, is not YAML of ``name: value``
            lines, has an unknown key (with a suggestion) or one of another
            command, or a value of the wrong type (named).

    Example:
        >>> import pathlib, tempfile
        >>> import noisystudent as ns
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.yaml"
        >>> _ = path.write_text("epochs: 10\\nlr: 1e-3\\nsplit_ratio: '3:1:1'\\n")
        >>> ns.read_config_file(path)
        {'epochs': 10, 'lr': 0.001, 'split_ratio': (3.0, 1.0, 1.0)}
    """
    document = _load_yaml(Path(path))
    allowed = command_settings(command)
    settings = {}
    for key, value in document.items():
        key = _current_name(str(key), path)
        if key not in allowed:
            raise ConfigError(f"The config file {path} has {_unknown_key_sentence(key, command, allowed)}")
        try:
            settings[key] = _checked_value(key, value, allowed[key])
        except ConfigError as error:
            raise ConfigError(f"The config file {path} holds an unusable setting: {error}") from None
    return settings


def merged_settings(file_settings: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The file's settings with the flags given on top (a flag left out is ``None`` and does not count).

    Example:
        >>> merged_settings({"epochs": 10, "lr": 0.1}, {"epochs": 2, "lr": None})
        {'epochs': 2, 'lr': 0.1}
    """
    return {**file_settings, **{k: v for k, v in given.items() if v is not None}}


def config_yaml(settings: Mapping[str, Any], header: str) -> str:
    """A YAML file of ``settings`` (RunConfig fields in their order), each key after its help text as a comment.

    ``header`` becomes the comment lines at the top. A value that differs from
    RunConfig's default says the default in its comment. The text reads back
    with :func:`read_config_file` to the same settings.
    """
    defaults = {f.name: _plain(f.default) for f in fields(RunConfig)}
    starts = dict(SECTIONS)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for config_field in fields(RunConfig):
        name = config_field.name
        if name not in settings:
            continue
        if name in starts:
            lines += ["", f"# --- {starts[name]} ---"]
        value = _plain(settings[name])
        note = "" if value == defaults[name] else f" (default: {_inline(defaults[name])})"
        lines += textwrap.wrap(config_field.metadata["help"] + note, WIDTH, initial_indent="# ", subsequent_indent="# ")
        lines.append(f"{name}: {_inline(value)}")
    return "\n".join(lines) + "\n"


def starting_file(preset: str = "cnmc-study") -> str:
    """A commented YAML file of every kfold setting as ``preset`` sets it: a start for ``--config``.

    Raises:
        ConfigError: ``preset`` is unknown.

    Example:
        >>> text = starting_file("smoke")
        >>> "folds: 2" in text and "# Number of patient-disjoint, class-stratified folds. (default: 5)" in text
        True
    """
    settings = RunConfig(**preset_settings(preset)).to_dict()
    header = (f"noisystudent kfold settings, from the preset {preset}: {DESCRIPTIONS[preset]}.\n"
              "Edit the values, delete lines to keep the preset's, then: noisystudent kfold DATA --config THIS.yaml\n"
              "Flags given on the command line win over this file; the file wins over its preset.")
    return config_yaml(settings, header)


class _RepeatedKey(Exception):
    def __init__(self, key: Any, first_line: int, line: int):
        super().__init__(key)
        self.key, self.first_line, self.line = key, first_line, line


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (plain data only, never objects or code) that refuses a key written twice.

    Plain safe_load keeps the last of two equal keys without a word, so an
    ``epochs: 50`` further down a long file would silently win over the line
    the user edited.
    """


def _unique_mapping(loader: _UniqueKeySafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _RepeatedKey(key, seen[key], line)
            seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeySafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _load_yaml(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise ConfigError(f"The config file {path} does not exist or is not a file.")
    try:
        document = yaml.load(path.read_text(), Loader=_UniqueKeySafeLoader)  # noqa: S506 (a SafeLoader)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"The config file {path} cannot be read ({error}).") from None
    except _RepeatedKey as repeated:
        raise ConfigError(f"The config file {path} sets '{repeated.key}' twice (lines {repeated.first_line} and "
                          f"{repeated.line}); keep one of them.") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"The config file {path} is not valid YAML{line}; write one 'name: value' per line.") from None
    if document is None:  # an empty file, or comments only
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"The config file {path} must hold 'name: value' lines, not a {type(document).__name__}.")
    return document


def _current_name(key: str, path: str | Path) -> str:
    """A renamed setting's new name, with the warning its old flag gives."""
    if key in RENAMED_SETTINGS:
        logger.warning("The setting %s in %s is deprecated: it is now %s; the old name works until the next release.",
                       key, path, RENAMED_SETTINGS[key])
    return RENAMED_SETTINGS.get(key, key)


def _unknown_key_sentence(key: str, command: str, allowed: Mapping[str, str]) -> str:
    """'an unknown setting 'epoch'; did you mean 'epochs'?', or whose setting it is."""
    if command == EXPERIMENT and key in EXPERIMENT_REFUSED:
        return f"the setting {key!r}, which experiment replaces by {EXPERIMENT_REFUSED[key]!r} (e.g. {EXPERIMENT_REFUSED[key]}: 0,1,2)."
    for other in (KFOLD, EXPERIMENT, PREDICT):
        if other != command and key in command_settings(other):
            return f"the setting {key!r} of {other}, which {command} does not take; its settings are {', '.join(allowed)}."
    match = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    hint = f"did you mean {match[0]!r}?" if match else f"noisystudent {command} --help lists the settings."
    return f"an unknown setting {key!r}; {hint}"


def _checked_value(key: str, value: Any, kind: str) -> Any:
    """``value`` in the form the setting takes; ConfigError naming ``key`` and the type expected."""
    if key == "split_ratio" and isinstance(value, str):
        return parse_split_ratio(value)
    if kind.split(" |")[0] == "float" and isinstance(value, str) and FLOAT_TEXT.match(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text; the flag takes it as a number
    if kind == "list":
        if isinstance(value, list) and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
            return ",".join(str(v) for v in value)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a list such as [0, 1, 2] or text such as '0,1,2'; got {value!r}.")
    if key in PREDICT_SETTINGS and kind == PREDICT_SETTINGS[key]:
        return _checked_plain(key, value, kind)
    return check_setting_type(key, value)


def _checked_plain(key: str, value: Any, kind: str) -> Any:
    ok = {"str": isinstance(value, str), "bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool)}[kind]
    if not ok:
        expected = {"str": "text", "bool": "true or false", "int": "a whole number"}[kind]
        raise ConfigError(f"{key} must be {expected}; got {value!r}.")
    return value


def _inline(value: Any) -> str:
    """One YAML scalar or flow list, quoted where YAML would misread it ('no', '1:2', 'none' stays text)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...")  # a lone scalar is dumped as a document with an end marker


def _plain(value: Any) -> Any:
    """The JSON form (a tuple becomes a list), as config.json holds it."""
    return json.loads(json.dumps(value))
