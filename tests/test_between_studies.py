"""Two studies of one data set and seeds (e.g. two --method choices): B - A at the method level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import invoke_cli

from noisystudent.errors import ConfigError, RunFolderError
from noisystudent.experiment.between import compare_studies
from noisystudent.experiment.study import load_design

N = 40  # test images per seed, one patient each


def _study(folder: Path, right_per_seed: dict[int, int], voting: str = "majority") -> Path:
    """A study whose ns students are right on the first ``right`` of each seed's N test images (half each class)."""
    (folder).mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps({"seeds": sorted(right_per_seed), "arms": ["ns"], "primary_metric": "accuracy",
                                                   "voting": voting, "positive": "pos"}))
    for seed, right in right_per_seed.items():
        labels = np.array(["pos", "neg"] * (N // 2))
        called = np.where(np.arange(N) < right, labels, np.where(labels == "pos", "neg", "pos"))
        table = pd.DataFrame({"path": [f"/data/s{seed}/img{i}.png" for i in range(N)], "label": labels,
                              "patient": [f"p{i}" for i in range(N)], "prob_neg": (called == "neg") * 1.0,
                              "prob_pos": (called == "pos") * 1.0, "pred": called})
        results = folder / f"seed-{seed}" / "ns" / "results"
        results.mkdir(parents=True)
        table.to_csv(results / f"predictions_student_{voting}.csv", index=False)
    return folder


def test_b_minus_a_is_the_mean_over_seeds_of_each_seeds_difference(tmp_path):
    a = _study(tmp_path / "a", {0: 20, 1: 24, 2: 28})
    b = _study(tmp_path / "b", {0: 30, 1: 30, 2: 34})  # + 10, 6, 6 images of 40 right
    table = compare_studies(a, load_design(a), b, load_design(b))
    method = table[(table["metric"] == "accuracy") & (table["level"] == "method")].iloc[0]
    assert method["estimate"] == pytest.approx((10 + 6 + 6) / 3 / N)
    assert method["role"] == "primary" and method["seeds"] == 3 and method["low"] > 0 and method["verdict"] == "helped"
    per_seed = table[(table["metric"] == "accuracy") & (table["level"] == "seed")]
    assert list(per_seed["estimate"]) == pytest.approx([10 / N, 6 / N, 6 / N])
    assert list(per_seed["comparison"].unique()) == ["B - A (ns)"]


def test_only_shared_seeds_count_and_other_designs_or_images_are_refused(tmp_path):
    a = _study(tmp_path / "a", {0: 20, 1: 20})
    b = _study(tmp_path / "b", {1: 20, 2: 20})
    table = compare_studies(a, load_design(a), b, load_design(b))
    assert list(table[(table["level"] == "seed") & (table["metric"] == "accuracy")]["seed"]) == [1]
    soft = _study(tmp_path / "soft", {0: 20}, voting="soft")
    with pytest.raises(ConfigError, match="declare different comparisons"):
        compare_studies(a, load_design(a), soft, load_design(soft))
    other = _study(tmp_path / "other", {0: 20})
    table = pd.read_csv(other / "seed-0/ns/results/predictions_student_majority.csv")
    table["path"] = table["path"].str.replace("img", "cell")
    table.to_csv(other / "seed-0/ns/results/predictions_student_majority.csv", index=False)
    with pytest.raises(RunFolderError, match="not evaluated on the same test images"):
        compare_studies(a, load_design(a), other, load_design(other))


def test_the_cli_compares_two_studies_and_refuses_a_study_against_a_run(tmp_path):
    a = _study(tmp_path / "a", {0: 20, 1: 24})
    b = _study(tmp_path / "b", {0: 20, 1: 24})
    code, line = invoke_cli("compare", a, b, "--out", tmp_path / "ba.csv")
    assert code == 0 and "Study B - study A (ns arms, accuracy): +0.000" in line and "no detectable difference" in line, line
    assert pd.read_csv(tmp_path / "ba.csv")["comparison"].iloc[0] == "B - A (ns)"
    (tmp_path / "run").mkdir()
    code, line = invoke_cli("compare", a, tmp_path / "run")
    assert code == 2 and "compare two runs or two studies" in line, line
