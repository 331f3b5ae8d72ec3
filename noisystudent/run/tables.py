"""Reading the CSV tables of a run folder, one way for every reader.

Text columns (path, label, patient, split, pred and the result identifiers)
stay strings exactly as written: an empty label (a pool image) is "", and a
patient called "NA" stays "NA". Numeric columns read empty cells as NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.layout import EVAL_SPLIT, FOLD_COLUMN, MODEL_KIND, PRED, SPLIT, VOTING

TEXT_COLUMNS = (PATH, LABEL, PATIENT, SPLIT, PRED, MODEL_KIND, FOLD_COLUMN, EVAL_SPLIT, VOTING)
TABLE_CHUNK = 1 << 16  # rows per chunk of a table that may hold a whole unlabelled pool
MISSING = ["", "nan", "NaN", "NA", "N/A", "null"]


def read_table(path: str | Path) -> pd.DataFrame:
    """A run table with its text columns as strings and its numeric columns as numbers."""
    return pd.read_csv(path, **_read_options(path))


def read_table_chunks(path: str | Path, rows: int) -> Iterator[pd.DataFrame]:
    """``read_table`` ``rows`` rows at a time, for tables as large as an unlabelled pool."""
    with pd.read_csv(path, chunksize=rows, **_read_options(path)) as reader:
        yield from reader


def _read_options(path: str | Path) -> dict:
    header = pd.read_csv(path, nrows=0).columns
    text = [c for c in header if c in TEXT_COLUMNS]
    return {"dtype": {c: str for c in text}, "keep_default_na": False,
            "na_values": {c: MISSING for c in header if c not in TEXT_COLUMNS}}
