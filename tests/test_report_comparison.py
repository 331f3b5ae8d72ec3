"""The report's comparison table says, for each tested comparison, whether its interval excludes 0."""

import numpy as np
import pandas as pd

from noisystudent.report.evidence import comparison_frame


def _row(name, low, high, p=np.nan):
    return {"metric": "accuracy", "a_name": f"teacher {name}", "b_name": f"student {name}", "a": 0.8, "b": 0.85,
            "difference": 0.05, "low": low, "high": high, "unit": "patient", "units": 12, "mcnemar_p": p}


def test_only_an_interval_on_one_side_of_zero_excludes_it():
    table = pd.DataFrame([_row("up", 0.01, 0.09, 0.03), _row("across", -0.02, 0.12), _row("down", -0.2, -0.01),
                          {**_row("up", 0.0, 0.0), "metric": "auc"}])
    frame = comparison_frame(table)
    assert frame["interval excludes 0"].tolist() == ["yes", "no", "yes"]  # the auc row is not shown
    assert frame.loc[0, "95% interval"] == "+0.010 to +0.090" and frame.loc[0, "resampled"] == "12 patients"
    assert frame.loc[1, "McNemar p"] == ""


def test_no_comparison_no_table():
    assert comparison_frame(None).empty


def test_a_run_without_students_has_no_comparisons_to_read(tmp_path):
    from noisystudent.report.evidence import read_comparisons

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "comparison.csv").write_text("\n")  # what a --rounds 0 run writes
    assert read_comparisons(tmp_path) is None
