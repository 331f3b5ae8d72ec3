"""The report's Settings section: every setting in force, rendered from config.json, overrides marked.

A reader who sees students fall to chance must be able to see why (hard
pseudo-labels only? 1 epoch?), so nothing is picked out and the rest hidden:
the settings that define the method come first, every other one follows in a
collapsed list, and the section links to config.json itself.
"""

from __future__ import annotations

from dataclasses import fields
from html import escape
from typing import Any

from noisystudent.config.provenance import GIVEN, KEY_SETTINGS, PRESET, origin, shown
from noisystudent.config.run_config import RunConfig, help_of

META = (("version", "Package version"), ("data_fingerprint", "Data fingerprint"))
ORIGIN_WORDS = {GIVEN: "given", PRESET: "preset", "default": "default"}


def settings_section(config: dict[str, Any], link: str = "../config.json") -> str:
    """HTML: a key-settings table, a collapsed table of all others, and a link to config.json."""
    if not config:
        return "<h2>Settings</h2>\n<p>The run configuration (config.json) could not be read.</p>"
    names = [f.name for f in fields(RunConfig) if f.name in config]
    key = [n for n in ("preset", "data", "test", *KEY_SETTINGS) if n in config]
    rest = [n for n in names if n not in key]
    given = [n for n in names if n != "data" and origin(config, n) == GIVEN]
    intro = (f"Preset <b>{escape(str(config.get('preset', '?')))}</b>; "
             f"{len(given)} setting{'s' if len(given) != 1 else ''} given on the command line "
             f"(marked <b>given</b>) override it. Every setting is recorded in "
             f'<a href="{escape(link)}">config.json</a>.')
    meta = ", ".join(f"{label} {escape(str(config[k]))}" for k, label in META if config.get(k))
    return "\n".join([
        "<h2>Settings</h2>", f"<p>{intro}</p>", _table(config, key),
        f"<details><summary>All {len(rest)} other settings</summary>{_table(config, rest)}</details>",
        f'<p class="caption">{meta}</p>' if meta else "",
    ])


def _table(config: dict[str, Any], names: list[str]) -> str:
    header = "<tr><th>Setting</th><th>Value</th><th>Source</th><th>Meaning</th></tr>"
    rows = "".join(_row(config, name) for name in names)
    return f'<div class="scroll"><table class="settings">{header}{rows}</table></div>'


def _row(config: dict[str, Any], name: str) -> str:
    source = ORIGIN_WORDS[origin(config, name)] if name != "data" else "given"
    mark = ' class="given"' if source == "given" and name != "data" else ""
    flag = "--" + name.replace("_", "-") if name != "data" else "DATA"
    value = "built-in demo data" if name == "data" and not config.get(name) else shown(config.get(name))
    return (f"<tr{mark}><td><code>{escape(flag)}</code></td><td>{escape(value)}</td><td>{source}</td>"
            f"<td>{escape(help_of(name))}</td></tr>")
