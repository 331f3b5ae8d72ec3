"""Text cells a spreadsheet would run as formulas, escaped in the CSVs that people open.

A label such as ``=HYPERLINK("http://example.org", "click")`` written as it is
into a CSV becomes a live formula when the file is opened in Excel or
LibreOffice ("CSV injection", OWASP). So in the tables written for people
(``results/``, ``study/results/``, the ``--out`` files of ``ensemble predict``,
``ensemble evaluate`` and ``compare``) a text cell that begins with = + - @, a
tab or a carriage return, after any number of apostrophes, gets one apostrophe
more in front: spreadsheets show such a cell as the text it holds, and
``unescape_formulas`` removes exactly that apostrophe, so the tool reads its
own files back unchanged (run/tables.py). Numbers are never touched: -0.5
stays a number. pandas does not quote a carriage return inside a cell (it
writes lines ending in a bare newline), so a table that holds one is written
with every text cell quoted (``quoting``), or the cell would split its row. The run's own working files (folds.csv, predictions.csv, ...)
are not escaped: the tool reads them, people rarely open them.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable

import pandas as pd

_NEEDS_ESCAPE = re.compile(r"^'*[=+\-@\t\r]")
_ESCAPED = re.compile(r"^'+[=+\-@\t\r]")


def escape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every formula-like text cell prefixed by an apostrophe (a copy when one is)."""
    return _map_text(frame, _NEEDS_ESCAPE, lambda text: "'" + text)


def quoting(frame: pd.DataFrame) -> int:
    """The ``to_csv`` quoting that keeps every cell of ``frame`` whole: text quoted where one holds a carriage return."""
    for column in frame.columns:
        values = frame[column]
        if (values.dtype == object or pd.api.types.is_string_dtype(values)) and \
                values.map(lambda value: isinstance(value, str) and "\r" in value).any():
            return csv.QUOTE_NONNUMERIC
    return csv.QUOTE_MINIMAL


def unescape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """The inverse of ``escape_formulas``: ``unescape_formulas(escape_formulas(f))`` equals ``f``."""
    return _map_text(frame, _ESCAPED, lambda text: text[1:])


def _map_text(frame: pd.DataFrame, pattern: re.Pattern, change: Callable[[str], str]) -> pd.DataFrame:
    result = frame
    for column in frame.columns:
        values = frame[column]
        if values.dtype != object and not pd.api.types.is_string_dtype(values):
            continue
        hit = values.map(lambda value: isinstance(value, str) and pattern.match(value) is not None).astype(bool)
        if hit.any():
            result = result.copy() if result is frame else result
            result.loc[hit, column] = values[hit].map(change)
    return result
