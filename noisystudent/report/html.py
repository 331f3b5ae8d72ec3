"""The report page: one self-contained HTML file (inline CSS, no scripts).

Figures are referenced by file name, relative to the page, so the report folder
can be moved or zipped as a whole; the cell thumbnails are inline PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any, Sequence

import pandas as pd

from noisystudent.report.tables import display_name

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
table.labels2 td:nth-child(2), table.labels2 th:nth-child(2), table.labels3 td:nth-child(-n+3), table.labels3 th:nth-child(-n+3) { text-align: left; }
table.settings td, table.settings th { text-align: left; white-space: normal; } p, figcaption { overflow-wrap: anywhere; } tr.given td { background: #fff6d6; }
div.scroll { overflow-x: auto; max-width: 100%; } details { margin: 0.4em 0 1em; } summary { cursor: pointer; color: #4c72b0; }
p.warning { background: #fdecea; border-left: 4px solid #c44e52; padding: 0.6em 1em; }
@media (max-width: 700px) { body { margin: 0.5em auto; } table { font-size: 0.8em; } h1 { font-size: 1.3em; } }
p.caption, figcaption { color: #555; font-size: 0.92em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
div.cells { display: grid; grid-template-columns: repeat(auto-fill, minmax(100px, 1fr)); gap: 0.6em; margin: 0.6em 0; }
figure.cell { margin: 0; font-size: 0.78em; color: #333; overflow-wrap: anywhere; }
figure.cell img { width: 100%; image-rendering: pixelated; display: block; }
div.nothumb { aspect-ratio: 1; background: #f3f3f3; color: #888; display: flex; align-items: center; justify-content: center; text-align: center; }
"""


LABEL_COLUMNS = ("Fold", "Model", "Part", "Class")  # columns of names, not numbers

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
                tables: list[TableEntry], figures: list[FigureEntry], warnings: Sequence[str] = (),
                before: Sequence[str] = (), after: Sequence[str] = ()) -> str:
    """The page; ``before`` (HTML blocks) replaces the short settings table, ``after`` follows the tables."""
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="headline">{escape(headline)}</p>',
        *(f'<p class="warning">{escape(w)}</p>' for w in warnings),
        *(before or [_settings(config)]),
        "<h2>Results</h2>" if tables else "",
        *(table_html(entry) for entry in tables),
        *after,
        "<h2>Figures</h2>" if figures else "",
        *(_figure(entry) for entry in figures),
        _notes(notes),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
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


def table_html(entry: TableEntry) -> str:
    """One header row of reader's names (no pandas index row), scrollable on a narrow screen."""
    frame = entry.frame if isinstance(entry.frame.index, pd.RangeIndex) else entry.frame.reset_index()
    frame = _dashes_for_missing_integers(frame.rename(columns=lambda column: display_name(str(column))))
    labels = sum(1 for column in frame.columns[:3] if str(column) in LABEL_COLUMNS)  # left-aligned, like text
    html = frame.to_html(float_format=lambda value: f"{value:.3f}", na_rep="–", escape=True, border=0, index=False,
                         classes=f"labels{labels}")
    return (f"<h3>{escape(entry.title)}</h3>\n<div class=\"scroll\">{html}</div>\n"
            f"<p class=\"caption\">{escape(entry.caption)}</p>")


def _dashes_for_missing_integers(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer columns print <NA> for a missing value; the page prints – for every missing number."""
    frame = frame.copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.Int64Dtype):
            frame[column] = [("–" if pd.isna(v) else str(int(v))) for v in frame[column]]
    return frame


def _figure(entry: FigureEntry) -> str:
    return (
        # a link to the full-size image: on a phone a wide figure is shrunk below legibility
        f"<h3>{escape(entry.title)}</h3>\n<figure><a href=\"{escape(entry.name)}\"><img src=\"{escape(entry.name)}\" alt=\"{escape(entry.title)}\"></a>"
        f"<figcaption>{escape(entry.caption)}</figcaption></figure>"
    )
