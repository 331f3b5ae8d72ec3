"""Reading the CSV tables of a run folder, one way for every reader.

Text columns (path, label, patient, split, pred and the result identifiers)
stay strings exactly as written: an empty label (a pool image) is "", and a
patient called "NA" stays "NA". Numeric columns read empty cells as NaN.
The tables of a ``results`` folder were written for people, with formula-like
text escaped (spreadsheet.py); they are read back unescaped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.layout import EVAL_SPLIT, FOLD_COLUMN, MODEL_KIND, PRED, RESULTS, SPLIT, VOTING
from noisystudent.spreadsheet import unescape_formulas

TEXT_COLUMNS = (PATH, LABEL, PATIENT, SPLIT, PRED, MODEL_KIND, FOLD_COLUMN, EVAL_SPLIT, VOTING)
TABLE_CHUNK = 1 << 16  # rows per chunk of a table that may hold a whole unlabelled pool
MISSING = ["", "nan", "NaN", "NA", "N/A", "null"]


def read_table(path: str | Path) -> pd.DataFrame:
    """A run table with its text columns as strings and its numeric columns as numbers."""
    return _unescaped(pd.read_csv(path, **_read_options(path)), path)


def read_table_chunks(path: str | Path, rows: int) -> Iterator[pd.DataFrame]:
    """``read_table`` ``rows`` rows at a time, for tables as large as an unlabelled pool."""
    with pd.read_csv(path, chunksize=rows, **_read_options(path)) as reader:
        for chunk in reader:
            yield _unescaped(chunk, path)


def _read_options(path: str | Path) -> dict:
    header = pd.read_csv(path, nrows=0).columns
    text = [c for c in header if c in TEXT_COLUMNS]
    return {"dtype": {c: str for c in text}, "keep_default_na": False,
            "na_values": {c: MISSING for c in header if c not in TEXT_COLUMNS}}


def _unescaped(table: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    return unescape_formulas(table) if Path(path).parent.name == RESULTS else table
