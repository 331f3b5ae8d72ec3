"""The Cells section: image grids of the cells a haematologist should look at.

Each grid is computed from the prediction tables the run already holds (so a
run made before galleries existed still gets them), written to
``RUN/results/gallery_*.csv`` (atomically; every row, not only those shown),
and drawn as at most ``THUMBNAILS`` cells, most confident first. Thumbnails
are read from the run's image cache at the working resolution, never decoded
from the originals, and embedded as inline PNGs, so the page stays one file of
bounded size: ``THUMBNAILS`` x grids x (one PNG of image_size² pixels).
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from noisystudent.atomic import write_csv
from noisystudent.data.cache import ImageCache
from noisystudent.errors import DataError
from noisystudent.layout import CACHE, CONFIDENCE, FOLD_COLUMN, PRED, PROB_PREFIX, ROUND, SPLIT, SPLIT_MASKED, STUDENT, TEACHER, results_dir
from noisystudent.report.html import TableEntry, table_html
from noisystudent.report.run_reader import RunContents

log = logging.getLogger(__name__)

THUMBNAILS = 24  # cells drawn per grid: the page's size does not grow with the run
PATH, PATIENT, LABEL, CALL, PREVIOUS = "path", "patient", "label", "call", "previous_call"
TEST_ERRORS = "gallery_test_errors.csv"
PSEUDO_WRONG = "gallery_pseudo_wrong.csv"
PSEUDO_CHANGED = "gallery_pseudo_changed.csv"
PATIENTS = "gallery_patients.csv"
CELL_COLUMNS = [PATH, PATIENT, LABEL, CALL, CONFIDENCE]


@dataclass
class Grid:
    """One grid on the page: its rows (most confident first) and what they are."""

    title: str
    caption: str
    rows: pd.DataFrame


def gallery_html(data: RunContents) -> str:
    """The Cells section (grids and per-patient table); writes the gallery CSVs to RUN/results/."""
    grids = [*test_error_grids(data), *pseudo_wrong_grids(data), *pseudo_changed_grids(data)]
    cache = open_cache(data)
    parts = ['<h2 id="cells">Cells</h2>', _cache_note(cache, data)]
    parts += [grid_html(grid, cache) for grid in grids] or ["<p>The run has no predictions yet: there are no cells to show.</p>"]
    patients = patient_summary(data)
    if not patients.empty:
        parts.append(table_html(TableEntry(
            "Cells per patient", f"Per patient, from {PATIENTS}: its cells, the fraction called each class and its label "
            "(the commonest label of its cells).", patients)))
    return "\n".join(part for part in parts if part)


# --- the tables behind the grids -------------------------------------------------


def test_error_grids(data: RunContents) -> list[Grid]:
    """The outer-test cells the final students' ensemble (the run's --voting) gets wrong."""
    voting, table = final_ensemble(data)
    if table is None:
        return []
    wrong = _called(table)
    wrong = _most_confident(wrong[wrong[LABEL] != wrong[CALL]][CELL_COLUMNS])
    _write(data, TEST_ERRORS, wrong)
    return [Grid(f"Outer-test cells the final ensemble ({voting} voting) gets wrong",
                 f"{len(wrong)} wrong of {len(table)} test cells, most confident first; confidence: the ensemble's "
                 f"mean probability of its call. All of them: results/{TEST_ERRORS}.", wrong)]


def final_ensemble(data: RunContents) -> tuple[str, pd.DataFrame | None]:
    """The run's --voting rule and its ensemble of the final models: the students, or the teachers of a run without rounds."""
    voting = str(data.config.get("voting", "majority"))
    final = STUDENT if int(data.config.get("rounds", 0) or 0) else TEACHER
    return voting, data.ensembles.get((final, voting))


def pseudo_wrong_tables(data: RunContents) -> pd.DataFrame:
    """Masked cells whose call by round r's models (their pseudo-label for round r + 1) differs from the hidden label."""
    frames = []
    for (fold, round_), table in sorted(data.predictions.items()):
        cells = _called(_masked(table))
        cells = cells[cells[LABEL] != cells[CALL]][CELL_COLUMNS].assign(**{FOLD_COLUMN: fold, ROUND: round_})
        frames.append(cells)
    return _most_confident(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame(columns=[*CELL_COLUMNS, FOLD_COLUMN, ROUND])


def pseudo_wrong_grids(data: RunContents) -> list[Grid]:
    wrong = pseudo_wrong_tables(data)
    if not data.predictions or not any(len(_masked(t)) for t in data.predictions.values()):
        return []
    _write(data, PSEUDO_WRONG, wrong)
    return [Grid(f"Masked cells most confidently pseudo-labelled wrong by the {_model_name(r)} models",
                 f"Round {r}'s fold models on their masked cells (hidden label against call), folds pooled, most confident "
                 f"first: {int((wrong[ROUND] == r).sum())} wrong. All of them: results/{PSEUDO_WRONG}.", wrong[wrong[ROUND] == r])
            for r in sorted({r for _, r in data.predictions})]


def pseudo_changed_tables(data: RunContents) -> pd.DataFrame:
    """Masked cells whose call changed between round r - 1 and round r of the same fold."""
    frames = []
    for (fold, round_), table in sorted(data.predictions.items()):
        before = data.predictions.get((fold, round_ - 1))
        if before is None:
            continue
        now, then = _called(_masked(table)), _called(_masked(before))[[PATH, CALL]].rename(columns={CALL: PREVIOUS})
        merged = now.merge(then, on=PATH, how="inner")
        frames.append(merged[merged[CALL] != merged[PREVIOUS]][[*CELL_COLUMNS, PREVIOUS]].assign(**{FOLD_COLUMN: fold, ROUND: round_}))
    columns = [*CELL_COLUMNS, PREVIOUS, FOLD_COLUMN, ROUND]
    return _most_confident(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame(columns=columns)


def pseudo_changed_grids(data: RunContents) -> list[Grid]:
    changed = pseudo_changed_tables(data)
    rounds = sorted({r for f, r in data.predictions if (f, r - 1) in data.predictions})
    if not rounds:
        return []
    _write(data, PSEUDO_CHANGED, changed)
    return [Grid(f"Masked cells whose pseudo-label changed from round {r - 1} to round {r}",
                 f"{int((changed[ROUND] == r).sum())} cells, most confident (in round {r}) first; each caption gives "
                 f"the call of round {r - 1} (was) and of round {r} (now). All of them: results/{PSEUDO_CHANGED}.", changed[changed[ROUND] == r])
            for r in rounds]


def patient_summary(data: RunContents) -> pd.DataFrame:
    """Per patient of the final ensemble's test cells (else the final round's pooled validation cells): cells,
    fraction called positive (or called each class), patient label; written to results/gallery_patients.csv."""
    _, table = final_ensemble(data)
    if table is None:
        parts = [t[t[SPLIT] == "validation"] for (f, r), t in data.predictions.items() if r == data.final_round and SPLIT in t]
        table = pd.concat(parts, ignore_index=True) if parts else None
    if table is None or PATIENT not in table or table[PATIENT].isna().all() or table.empty:
        return pd.DataFrame()
    table = _called(table)
    table[PATIENT] = table[PATIENT].astype(str)
    classes = [data.positive_class] if data.positive_class else data.classes
    groups = table.groupby(PATIENT, sort=True)
    frame = pd.DataFrame({"cells": groups.size(), LABEL: groups[LABEL].agg(lambda s: s.mode().iloc[0] if len(s.mode()) else "")})
    for name in classes:
        frame[f"called_{name}"] = groups[CALL].agg(lambda s, name=name: float((s == name).mean()))
    frame = frame.reset_index()
    _write(data, PATIENTS, frame)
    return frame


def _called(table: pd.DataFrame) -> pd.DataFrame:
    """path, patient, label, call, confidence (the probability of the call) of a prediction table."""
    frame = pd.DataFrame({PATH: table[PATH].astype(str),
                          PATIENT: table[PATIENT].fillna("").astype(str) if PATIENT in table else "",
                          LABEL: table[LABEL].fillna("").astype(str), CALL: table[PRED].fillna("").astype(str)})
    probs = table[[c for c in table.columns if c.startswith(PROB_PREFIX)]].to_numpy(dtype=float)
    names = [c[len(PROB_PREFIX):] for c in table.columns if c.startswith(PROB_PREFIX)]
    index = pd.Index(names).get_indexer(frame[CALL])
    frame[CONFIDENCE] = np.where(index >= 0, probs[np.arange(len(frame)), np.maximum(index, 0)], np.nan)
    return frame


def _masked(table: pd.DataFrame) -> pd.DataFrame:
    return table[table[SPLIT] == SPLIT_MASKED] if SPLIT in table else table.iloc[:0]


def _most_confident(frame: pd.DataFrame) -> pd.DataFrame:
    """Most confident first; ties by path, so that the order is the same on every machine."""
    return frame.sort_values([CONFIDENCE, PATH], ascending=[False, True], kind="mergesort").reset_index(drop=True)


def _model_name(round_: int) -> str:
    return "teacher (round 0)" if round_ == 0 else f"round-{round_} student"


def _write(data: RunContents, name: str, frame: pd.DataFrame) -> None:
    folder = results_dir(data.run)
    folder.mkdir(exist_ok=True)
    write_csv(folder / name, frame)


# --- thumbnails -------------------------------------------------------------------


def open_cache(data: RunContents) -> ImageCache | None:
    """The run's image cache (--cache-dir, else RUN/cache), or None where it is missing or unreadable."""
    folder = Path(data.config.get("cache_dir") or data.run / CACHE)
    size = data.config.get("image_size")
    for npy in sorted(folder.glob("images-*.npy"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            cache = ImageCache.open(npy)
        except (OSError, ValueError, KeyError, DataError) as error:  # a half-deleted or foreign cache: try the next
            log.warning("cannot open the image cache %s: %s", npy, error)
            continue
        if size is None or cache.image_size == int(size):  # a shared --cache-dir may hold other runs' resolutions
            return cache
    return None


def thumbnails(cache: ImageCache | None, paths: list[str]) -> list[str | None]:
    """A PNG data URI per path, None where the cache lacks it."""
    if cache is None or not paths:
        return [None] * len(paths)
    rows = cache.index_of(paths, missing_ok=True)
    images = cache.read_rows(np.where(rows >= 0, rows, 0))
    return [_data_uri(image) if row >= 0 else None for row, image in zip(rows, images)]


def _data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cache_note(cache: ImageCache | None, data: RunContents) -> str:
    if cache is not None:
        return (f"<p class=\"caption\">Cells at the working resolution ({cache.image_size} px, as the models saw them), "
                f"from the image cache; at most {THUMBNAILS} per grid. Caption: true label, call, confidence of the call, patient.</p>")
    return ("<p class=\"warning\">The image cache is missing (deleted, or written elsewhere): the grids list their cells "
            "without images. A new run with the same data and --cache-dir rebuilds it.</p>")


def grid_html(grid: Grid, cache: ImageCache | None) -> str:
    shown = grid.rows.head(THUMBNAILS)
    images = thumbnails(cache, shown[PATH].tolist())
    cells = "".join(_cell_html(row, image) for row, image in zip(shown.to_dict("records"), images))
    body = f'<div class="cells">{cells}</div>' if cells else "<p>None.</p>"
    return f"<h3>{escape(grid.title)}</h3>\n{body}\n<p class=\"caption\">{escape(grid.caption)}</p>"


def _cell_html(row: dict, image: str | None) -> str:
    call = f"was {row[PREVIOUS]}, now {row[CALL]}" if PREVIOUS in row else f"called {row[CALL]}"
    where = f" · fold&nbsp;{escape(str(row[FOLD_COLUMN]))}" if FOLD_COLUMN in row else ""  # no line break inside "fold 2"
    picture = (f'<img src="{image}" alt="{escape(row[PATH])}">' if image
               else '<div class="nothumb">no image in the cache</div>')
    text = (f"true {escape(str(row[LABEL]))}, {escape(str(call))}<br>{row[CONFIDENCE]:.2f} · "
            f"patient&nbsp;{escape(str(row[PATIENT]) or '–')}{where}")
    return f'<figure class="cell" title="{escape(str(row[PATH]))}">{picture}<figcaption>{text}</figcaption></figure>'
