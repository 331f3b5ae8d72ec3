#!/usr/bin/env python
"""The demo's numbers in docs/results.md, rendered from a run folder, written there and checked.

Usage (from the repository root, after ``bash scripts/demo.sh``)::

    python scripts/demo_numbers.py runs/demo                            # print the block
    python scripts/demo_numbers.py runs/demo --write docs/results.md    # replace the block in the file
    python scripts/demo_numbers.py runs/demo --check docs/results.md    # exit 1 when a number differs (CI)

The block sits between ``<!-- demo-numbers:start -->`` and ``<!-- demo-numbers:end -->``. It
is a caption (the run's seed and outer test set) and one table: a column per metric of
RUN/results/comparison.csv, and per comparison there its two sides, the difference with its
interval (the verdict and McNemar's p in the row's name), then the pseudo-labels' fold mean
(each fold in brackets) from the ``split=masked`` rows of RUN/results/metrics.csv. Both files
are read by column name, so metrics added or removed show up as columns. The line that says
where the run was made (commit, machine: config.json's ``machine``) is not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd

START, END = "<!-- demo-numbers:start -->", "<!-- demo-numbers:end -->"
SOURCE_PREFIX = "Written by"  # the line naming commit and machine: left out of --check
WRITE_COMMAND = "python scripts/demo_numbers.py runs/demo --write docs/results.md"
# columns of results/comparison.csv (docs/metrics.md) and results/metrics.csv
METRIC, A, B, DIFFERENCE, LOW, HIGH = "metric", "a", "b", "difference", "low", "high"
A_NAME, B_NAME, VERDICT, MCNEMAR_P, IMAGES, UNITS, UNIT = "a_name", "b_name", "verdict", "mcnemar_p", "images", "units", "unit"
MODEL, FOLD, ROUND, SPLIT, MASKED, MEAN = "model", "fold", "round", "split", "masked", "mean"


class DemoNumbersError(Exception):
    """A problem a user can fix, said in one sentence."""


def render(run: Path) -> str:
    """The block for ``run`` (markers included)."""
    comparison, metrics, config = _read_run(run)
    names = list(dict.fromkeys(comparison[METRIC]))
    pairs = list(dict.fromkeys(zip(comparison[A_NAME], comparison[B_NAME])))
    rows = [["quantity", *names], ["---"] * (len(names) + 1)]
    for a_name, b_name in pairs:
        table = comparison[(comparison[A_NAME] == a_name) & (comparison[B_NAME] == b_name)].set_index(METRIC)
        rows.append([a_name, *(_value(table, name, A) for name in names)])
        rows.append([b_name, *(_value(table, name, B) for name in names)])
        rows.append([_difference_name(table, a_name, b_name), *(_difference(table, name) for name in names)])
    rows.extend(_pseudo_label_rows(metrics, names))
    first = comparison.iloc[0]
    caption = (f"Seed {config.get('seed')} (`bash scripts/demo.sh`), outer test set of {int(first[IMAGES])} images of "
               f"{int(first[UNITS])} {first[UNIT]}s; intervals: 95%, paired bootstrap over {first[UNIT]}s "
               f"(`results/comparison.csv`); pseudo-labels: `split=masked` rows of `results/metrics.csv`.")
    table = "\n".join("| " + " | ".join(cells) + " |" for cells in rows)
    return "\n".join([START, caption, "", table, "", _source_line(config), END])


def _read_run(run: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    paths = [run / "results" / "comparison.csv", run / "results" / "metrics.csv", run / "config.json"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DemoNumbersError(f"{missing[0]} is missing; run the demo first (bash scripts/demo.sh).")
    comparison = pd.read_csv(paths[0])
    if comparison.empty:
        raise DemoNumbersError(f"{paths[0]} holds no comparison; the demo run did not finish.")
    return comparison, pd.read_csv(paths[1]), json.loads(paths[2].read_text())


def _number(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    value = round(float(value), 3) + 0.0  # + 0.0: no "-0.000"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _value(table: pd.DataFrame, name: str, side: str) -> str:
    return _number(table.at[name, side]) if name in table.index else "—"


def _difference(table: pd.DataFrame, name: str) -> str:
    if name not in table.index or pd.isna(table.at[name, DIFFERENCE]):
        return "—"
    low, high = table.at[name, LOW], table.at[name, HIGH]
    excludes = low > 0 or high < 0
    return (f"{_number(table.at[name, DIFFERENCE], True)} [{_number(low, True)}, {_number(high, True)}] "
            + ("**excludes 0**" if excludes else "includes 0"))


def _difference_name(table: pd.DataFrame, a_name: str, b_name: str) -> str:
    first = table.iloc[0]
    details = [str(first[VERDICT])] if VERDICT in table and pd.notna(first[VERDICT]) else []
    if MCNEMAR_P in table and pd.notna(first[MCNEMAR_P]):
        details.append(f"McNemar p {first[MCNEMAR_P]:.2f}")
    return f"{b_name} - {a_name}" + (f": {', '.join(details)}" if details else "")


def _pseudo_label_rows(metrics: pd.DataFrame, names: list[str]) -> list[list[str]]:
    """Per round that made pseudo-labels: the fold mean of each metric, each fold's value in brackets."""
    masked = metrics[metrics[SPLIT] == MASKED]
    rows = []
    for (round_, model), group in masked.groupby([ROUND, MODEL], sort=True):  # in the order the rounds ran
        folds = group[group[FOLD].astype(str).str.fullmatch(r"\d+")].sort_values(FOLD, key=lambda f: f.astype(int))
        mean = group[group[FOLD].astype(str) == MEAN]
        cells = []
        for name in names:
            if name not in group or mean.empty or pd.isna(mean[name].iloc[0]):
                cells.append("—")
                continue
            cells.append(f"{_number(mean[name].iloc[0])} ({', '.join(_number(v) for v in folds[name])})")
        rows.append([f"pseudo-labels of the round-{round_} {model}, fold mean (each fold)", *cells])
    return rows


def _source_line(config: dict) -> str:
    machine = config.get("machine") or {}
    commit = f"commit {machine['git_commit'][:7]}" if machine.get("git_commit") else "an unrecorded commit"
    packages = machine.get("packages") or {}
    where = (f" on {machine.get('cpu')} ({machine.get('cpu_count')} logical CPUs, {machine.get('torch_threads')} torch threads, "
             f"torch {packages.get('torch')})") if machine else ""
    return (f"{SOURCE_PREFIX} `{WRITE_COMMAND}` from a demo run at {commit}{where}; "
            "CI checks every number above against its own demo run.")


def block_of(text: str, doc: Path) -> tuple[int, int]:
    """Where the block (markers included) starts and ends in ``text``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise DemoNumbersError(f"{doc} has no demo-numbers block ({START} ... {END}); add the markers where it belongs.")
    return start, end + len(END)


def write(run: Path, doc: Path) -> None:
    text = doc.read_text()
    start, end = block_of(text, doc)
    doc.write_text(text[:start] + render(run) + text[end:])


def first_difference(documented: str, rendered: str) -> str | None:
    """The first number (or line) where ``documented`` differs from ``rendered``, in words; None when equal."""
    doc_lines = [line for line in documented.splitlines() if not line.startswith(SOURCE_PREFIX)]
    run_lines = [line for line in rendered.splitlines() if not line.startswith(SOURCE_PREFIX)]
    header = next((line for line in run_lines if line.startswith("| quantity")), "")
    for doc_line, run_line in zip(doc_lines, run_lines):
        if doc_line == run_line:
            continue
        doc_cells, run_cells = _cells(doc_line), _cells(run_line)
        if doc_line.startswith("|") and run_line.startswith("|") and len(doc_cells) == len(run_cells) and doc_cells[0] == run_cells[0]:
            column, doc_cell, run_cell = next((h, d, r) for h, d, r in zip(_cells(header), doc_cells, run_cells) if d != r)
            return f"{run_cells[0]}, {column}: the documented {doc_cell} differs from the run's {run_cell}"
        return f"the documented line '{doc_line}' differs from the run's '{run_line}'"
    if len(doc_lines) != len(run_lines):
        return f"the documented block has {len(doc_lines)} lines, the run's {len(run_lines)}"
    return None


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def check(run: Path, doc: Path) -> str | None:
    """One sentence naming the first documented number that the run does not reproduce; None when all agree."""
    text = doc.read_text()
    start, end = block_of(text, doc)
    difference = first_difference(text[start:end], render(run))
    if difference is None:
        return None
    return f"{doc}'s demo numbers differ from {run}: {difference}; regenerate them with {WRITE_COMMAND}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the demo's run folder (runs/demo)")
    parser.add_argument("--check", type=Path, metavar="DOC", help="exit 1 when DOC's block differs from the run's numbers")
    parser.add_argument("--write", type=Path, metavar="DOC", help="replace DOC's block with the run's numbers")
    args = parser.parse_args(argv)
    try:
        if args.write:
            write(args.run, args.write)
            print(f"demo_numbers: wrote the demo numbers of {args.run} into {args.write}")
        if args.check:
            problem = check(args.run, args.check)
            if problem:
                print(problem, file=sys.stderr)
                return 1
            print(f"demo_numbers: {args.check} matches {args.run}")
        if not args.write and not args.check:
            print(render(args.run))
    except (DemoNumbersError, OSError) as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
