"""scripts/demo_numbers.py: docs/results.md's demo block is rendered from a run folder, written, and checked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import load_script

demo_numbers = load_script("demo_numbers")

DOC = f"""# Results

Before the block.

{demo_numbers.START}
stale
{demo_numbers.END}

After the block.
"""


def _comparison_rows(a_name: str, b_name: str, values: dict, p: float) -> list[dict]:
    return [{"metric": metric, "a": a, "b": b, "difference": b - a, "low": low, "high": high, "a_name": a_name, "b_name": b_name,
             "unit": "patient", "units": 12, "images": 72, "verdict": "no detectable difference", "mcnemar_p": p}
            for metric, (a, b, low, high) in values.items()]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A hand-made run folder: config.json, results/comparison.csv and results/metrics.csv of a finished demo."""
    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"seed": 0, "machine": {"git_commit": "a" * 40, "cpu": "Test CPU", "cpu_count": 2,
                                                                         "torch_threads": 2, "packages": {"torch": "2.14.1"}}}))
    comparison = [
        *_comparison_rows("teacher ensemble (majority)", "student ensemble (majority, round 1)",
                          {"accuracy": (0.847222, 0.833333, -0.138889, 0.097222), "auc": (0.880401, 0.923611, 0.011, 0.114200)}, 1.0),
        *_comparison_rows("teacher (mean of 3 folds)", "student round 1 (mean of 3 folds)",
                          {"accuracy": (0.791667, 0.791667, -0.087963, 0.074074), "auc": (0.858796, 0.836934, -0.076733, 0.032119)},
                          float("nan")),
    ]
    pd.DataFrame(comparison).to_csv(run / "results" / "comparison.csv", index=False)
    masked = [{"model": "teacher", "fold": fold, "round": 0, "split": "masked", "voting": "", "accuracy": acc, "auc": float("nan")}
              for fold, acc in (("0", 0.756410), ("1", 0.75), ("2", 0.724359), ("mean", 0.743590), ("variance", 0.000288))]
    test = [{"model": "teacher", "fold": "mean", "round": 0, "split": "test", "voting": "", "accuracy": 0.791667, "auc": 0.86}]
    pd.DataFrame(masked + test).to_csv(run / "results" / "metrics.csv", index=False)
    return run


def _rows(block: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for cells in (demo_numbers._cells(line) for line in block.splitlines() if line.startswith("|"))}


def test_the_block_has_a_column_per_compared_metric_and_the_numbers_as_displayed(run):
    block = demo_numbers.render(run)
    assert block.startswith(demo_numbers.START) and block.endswith(demo_numbers.END)
    rows = _rows(block)
    assert rows["quantity"] == ["accuracy", "auc"]
    assert rows["teacher ensemble (majority)"] == ["0.847", "0.880"]
    assert rows["student ensemble (majority, round 1)"] == ["0.833", "0.924"]
    assert rows["student ensemble (majority, round 1) - teacher ensemble (majority): no detectable difference, McNemar p 1.00"] == [
        "-0.014 [-0.139, +0.097] includes 0", "+0.043 [+0.011, +0.114] **excludes 0**"]
    assert rows["student round 1 (mean of 3 folds) - teacher (mean of 3 folds): no detectable difference"][0] == (
        "+0.000 [-0.088, +0.074] includes 0")  # no "-0.000", no McNemar for fold means
    assert rows["pseudo-labels of the round-0 teacher, fold mean (each fold)"] == ["0.744 (0.756, 0.750, 0.724)", "—"]
    assert "72 images of 12 patients" in block and "commit aaaaaaa on Test CPU" in block


def test_write_replaces_only_the_block_and_check_passes_then_names_the_first_changed_number(run, tmp_path, capsys):
    doc = tmp_path / "results.md"
    doc.write_text(DOC)
    assert demo_numbers.main([str(run), "--check", str(doc)]) == 1  # the stale block
    assert demo_numbers.main([str(run), "--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Results\n\nBefore the block.\n\n") and text.endswith("\n\nAfter the block.\n") and "stale" not in text
    assert demo_numbers.main([str(run), "--write", str(doc), "--check", str(doc)]) == 0 and doc.read_text() == text  # rerunnable
    capsys.readouterr()

    comparison = pd.read_csv(run / "results" / "comparison.csv")
    comparison.loc[1, "b"] = 0.95  # auc of the student ensemble (majority): 0.924 -> 0.950
    comparison.to_csv(run / "results" / "comparison.csv", index=False)
    assert demo_numbers.main([str(run), "--check", str(doc)]) == 1
    message = capsys.readouterr().err.strip()
    assert message == (f"{doc}'s demo numbers differ from {run}: student ensemble (majority, round 1), auc: the documented 0.924 "
                       "differs from the run's 0.950; regenerate them with python scripts/demo_numbers.py runs/demo --write "
                       "docs/results.md.")


def test_check_ignores_where_the_run_was_made_but_not_the_caption(run, tmp_path, capsys):
    doc = tmp_path / "results.md"
    doc.write_text(DOC)
    demo_numbers.main([str(run), "--write", str(doc)])
    config = json.loads((run / "config.json").read_text())
    config["machine"]["git_commit"] = "b" * 40  # CI's run is made at a later commit
    (run / "config.json").write_text(json.dumps(config))
    assert demo_numbers.main([str(run), "--check", str(doc)]) == 0
    config["seed"] = 1
    (run / "config.json").write_text(json.dumps(config))
    assert demo_numbers.main([str(run), "--check", str(doc)]) == 1
    assert "the documented line 'Seed 0 (" in capsys.readouterr().err


def test_a_missing_run_or_block_is_one_sentence(run, tmp_path, capsys):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n")
    assert demo_numbers.main([str(run), "--check", str(doc)]) == 2
    assert capsys.readouterr().err.strip() == (f"{doc} has no demo-numbers block ({demo_numbers.START} ... {demo_numbers.END}); "
                                               "add the markers where it belongs.")
    doc.write_text(DOC)
    assert demo_numbers.main([str(tmp_path / "nothing"), "--check", str(doc)]) == 2
    assert "comparison.csv is missing; run the demo first (bash scripts/demo.sh)." in capsys.readouterr().err


def test_the_documented_block_is_the_scripts_own_output():
    """docs/results.md holds one block, in the form the script renders (the numbers are checked by CI)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    assert text.count(demo_numbers.START) == 1 and text.count(demo_numbers.END) == 1
    start, end = demo_numbers.block_of(text, Path("docs/results.md"))
    block = text[start:end]
    assert "| quantity | balanced_accuracy | accuracy |" in block and "pseudo-labels of the round-0 teacher" in block
    assert any(line.startswith(demo_numbers.SOURCE_PREFIX) for line in block.splitlines())
