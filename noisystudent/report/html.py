"""The report page: one self-contained HTML file (inline CSS, no scripts).

Images are referenced by file name, relative to the page, so the report folder
can be moved or zipped as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

import pandas as pd

SUMMARY_KEYS = [
    ("preset", "Preset"), ("data", "Data"), ("test", "Test set"), ("folds", "Folds"), ("rounds", "Student rounds"),
    ("arch", "Architecture"), ("student_arch", "Student architecture"), ("epochs", "Epochs per model"),
    ("image_size", "Image size"), ("positive", "Positive class"), ("voting", "Ensemble voting"),
    ("seed", "Seed"), ("version", "Package version"), ("data_fingerprint", "Data fingerprint"),
]

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
p.headline { font-size: 1.15em; background: #f3f6fa; border-left: 4px solid #4c72b0; padding: 0.7em 1em; }
ul.notes li { color: #8a5a00; }
table { border-collapse: collapse; margin: 0.6em 0 0.3em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
table.settings td, table.settings th { text-align: left; }
p.caption, figcaption { color: #555; font-size: 0.92em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
"""


@dataclass
class FigureEntry:
    """A plot on the page: file name in the report folder, heading and caption."""

    name: str
    title: str
    caption: str


@dataclass
class TableEntry:
    title: str
    caption: str
    frame: pd.DataFrame


def render_page(title: str, config: dict[str, Any], headline: str, notes: list[str],
                tables: list[TableEntry], figures: list[FigureEntry]) -> str:
    body = [
        f"<h1>{escape(title)}</h1>",
        _settings(config),
        f'<p class="headline">{escape(headline)}</p>',
        _notes(notes),
        "<h2>Tables</h2>" if tables else "",
        *(_table(entry) for entry in tables),
        "<h2>Figures</h2>" if figures else "",
        *(_figure(entry) for entry in figures),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def _settings(config: dict[str, Any]) -> str:
    rows = [(label, config[key]) for key, label in SUMMARY_KEYS if config.get(key) not in (None, "")]
    if not rows:
        return "<p>The run configuration (config.json) could not be read.</p>"
    cells = "".join(f"<tr><th>{escape(label)}</th><td>{escape(str(value))}</td></tr>" for label, value in rows)
    return f'<h2>Run</h2>\n<table class="settings">{cells}</table>'


def _notes(notes: list[str]) -> str:
    if not notes:
        return "<p>Every fold and round is complete; nothing is left out.</p>"
    items = "".join(f"<li>{escape(note)}</li>" for note in notes)
    return f'<h2>Left out</h2>\n<ul class="notes">{items}</ul>'


def _table(entry: TableEntry) -> str:
    html = entry.frame.to_html(float_format=lambda value: f"{value:.3f}", na_rep="–", escape=True, border=0)
    return f"<h3>{escape(entry.title)}</h3>\n{html}\n<p class=\"caption\">{escape(entry.caption)}</p>"


def _figure(entry: FigureEntry) -> str:
    return (
        f"<h3>{escape(entry.title)}</h3>\n<figure><img src=\"{escape(entry.name)}\" alt=\"{escape(entry.title)}\">"
        f"<figcaption>{escape(entry.caption)}</figcaption></figure>"
    )
