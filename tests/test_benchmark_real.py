"""scripts/benchmark_real.py: a thin caller of noisystudent experiment, whose sample is fixed and tables are read back."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark_real")


def test_a_task_becomes_one_experiment_with_the_protocols_flags(bench, tmp_path):
    command = bench.experiment_command(tmp_path / "data", tmp_path / "binary", [0, 1, 2], "ns,control,upper",
                                       bench.PROTOCOLS["cpu-small"] + bench.task_flags("Benign=negative,rest=positive"))
    assert command[3:8] == ["experiment", str(tmp_path / "data"), "--out", str(tmp_path / "binary"), "--seeds"]
    assert command[8:11] == ["0,1,2", "--arms", "ns,control,upper"]
    assert command[command.index("--image-size") + 1] == "32" and command[-4:] == ["--binary", "Benign=negative,rest=positive",
                                                                                     "--positive", "positive"]


def test_a_binary_task_names_the_mapped_positive_class(bench):
    assert bench.task_flags("classes") == []
    assert bench.task_flags("Benign=negative,rest=positive") == ["--binary", "Benign=negative,rest=positive", "--positive", "positive"]


def test_the_sample_is_the_same_whatever_the_seed_of_the_runs(bench, tmp_path):
    from PIL import Image

    for label in ("x", "y"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (4, 4)).save(tmp_path / "data" / label / f"{i}.png")
    first = pd.read_csv(bench.subsample(tmp_path / "data", 2, tmp_path))
    again = pd.read_csv(bench.subsample(tmp_path / "data", 2, tmp_path))
    assert len(first) == 4 and first["label"].value_counts().to_dict() == {"x": 2, "y": 2}
    assert first.equals(again)


def test_a_pool_fraction_drops_the_labels_of_that_part_of_each_class(bench, tmp_path):
    from PIL import Image

    for label, count in (("x", 10), ("y", 4)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(tmp_path / "data" / label / f"{i}.png")
    table = pd.read_csv(bench.with_pool(tmp_path / "data", 0.5, tmp_path), keep_default_na=False)
    pool = table[table["subset"] == "pool"]
    assert len(pool) == 7 and set(pool["label"]) == {""}
    assert table[table["subset"] != "pool"]["label"].value_counts().to_dict() == {"x": 5, "y": 2}
    assert table.equals(pd.read_csv(bench.with_pool(tmp_path / "data", 0.5, tmp_path), keep_default_na=False))  # the same every time


def test_the_tables_are_read_back_from_the_study(bench):
    table = pd.DataFrame([
        {"comparison": "students - teachers", "level": "method", "seed": None, "metric": "balanced_accuracy", "role": "primary",
         "estimate": 0.0312, "low": -0.01, "high": 0.07, "excludes_zero": False, "verdict": "no detectable difference"},
        {"comparison": "students - teachers", "level": "seed", "seed": 2.0, "metric": "balanced_accuracy", "role": "primary",
         "estimate": 0.05, "low": 0.01, "high": 0.09, "excludes_zero": True, "verdict": None},
        {"comparison": "students - teachers", "level": "method", "seed": None, "metric": "accuracy", "role": "secondary",
         "estimate": 0.5, "low": 0.4, "high": 0.6, "excludes_zero": True, "verdict": "helped"}])
    lines = bench.study_lines(table).splitlines()
    assert lines[2] == "| students - teachers | method | +0.031 | [-0.010, +0.070] | no detectable difference |"
    assert lines[3] == "| students - teachers | seed 2 | +0.050 | [+0.010, +0.090] | excludes 0 |" and len(lines) == 4
    arms = pd.DataFrame({"seed": [0, 1, 0], "ensemble": ["teachers", "teachers", "students"], "metric": "balanced_accuracy",
                         "value": [0.8, 0.7, 0.9]})
    assert bench.arms_lines(arms).splitlines()[2:] == ["| teachers | 0.800 | 0.700 |", "| students | 0.900 | nan |"]


def test_flags_after_the_double_dash_reach_every_run_wherever_data_stands():
    bench = load_script("benchmark_real")
    for argv in (["DATA", "--task", "classes", "--seeds", "0", "1", "--", "--method", "fixmatch"],
                 ["--task", "classes", "DATA", "--seeds", "0", "1", "--", "--method", "fixmatch"]):
        args = bench.parse_args(argv)
        assert (args.data, args.seeds, args.kfold_flags) == ("DATA", [0, 1], ["--method", "fixmatch"])
    assert bench.parse_args(["DATA"]).kfold_flags == []
