"""``experiment --concurrent N`` above one run's folds: runs of a study side by side, numbers unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import PATIENT_REGEX, invoke_cli, run_files, torch_threads, write_class_folders

from noisystudent import layout
from noisystudent.experiment import lanes

FLAGS = ["--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--rounds", "1", "--epochs", "1",
         "--image-size", "16", "--batch-size", "8", "--weights", "none", "--arch", "resnet18", "--device", "cpu",
         "--workers", "1", "--test-fraction", "0.34", "--quiet"]
RUNS = [(3, "ns"), (3, "control"), (4, "ns"), (4, "control")]


def _log_span(run: Path) -> tuple[str, str]:
    """Time stamps of the first and the last line of a run's run.log."""
    lines = [line[:23] for line in (run / layout.LOG).read_text().splitlines() if line[:4].isdigit()]
    return lines[0], lines[-1]


@pytest.mark.slow
def test_two_runs_at_a_time_give_the_studys_numbers_of_one_run_at_a_time(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=6, images_per_patient=3, size=(16, 16))
    argv = ["experiment", data, "--seeds", "3,4", "--arms", "ns,control", *FLAGS]
    code, line = invoke_cli(*argv, "--out", tmp_path / "one")  # invoke_cli: one torch thread
    assert code == 0, line
    code, line = invoke_cli(*argv, "--out", tmp_path / "lanes", "--concurrent", "4")  # 2 runs x 2 folds, a thread each
    assert code == 0, line
    one, side_by_side = tmp_path / "one", tmp_path / "lanes"
    for name in ("study.csv", "arms.csv"):
        assert (side_by_side / "results" / name).read_bytes() == (one / "results" / name).read_bytes(), name
    for seed, arm in RUNS:
        expected, got = run_files(one / f"seed-{seed}" / arm), run_files(side_by_side / f"seed-{seed}" / arm)
        assert sorted(got) == sorted(expected)
        assert all(got[name] == expected[name] for name in expected), (seed, arm)
    # the second lane began seed 4 while the first still trained seed 3; one at a time never overlaps
    assert _log_span(side_by_side / "seed-4" / "ns")[0] < _log_span(side_by_side / "seed-3" / "ns")[1]
    assert _log_span(one / "seed-4" / "ns")[0] > _log_span(one / "seed-3" / "control")[1]


def test_lanes_hold_whole_runs_and_start_at_their_share_of_the_list():
    assert [lanes.lane_count(n, 5, 9) for n in (1, 5, 9, 10, 15, 100)] == [1, 1, 1, 2, 3, 9]
    assert [lanes.lane_order(RUNS, lane, 3)[0] for lane in range(3)] == [(3, "ns"), (3, "control"), (4, "ns")]
    assert all(sorted(lanes.lane_order(RUNS, lane, 3)) == sorted(RUNS) for lane in range(3))  # every lane sees every run


def test_a_lane_reads_its_runs_and_threads_from_its_payload(monkeypatch):
    import io
    import sys

    from noisystudent.config.run_config import RunConfig

    walked = []
    monkeypatch.setattr(lanes, "run_lane", lambda config, study, runs: walked.append((config.folds, str(study), runs)))
    job = lanes.lane_payload(RunConfig(folds=3), Path("studies/s"), RUNS[2:], threads=1)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(job)))
    with torch_threads(2):
        lanes.lane_main()
    assert walked == [(3, "studies/s", [(4, "ns"), (4, "control")])]
