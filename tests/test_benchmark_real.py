"""scripts/benchmark_real.py: its bounds share folds with the Noisy Student run, and its sample is fixed."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import load_script

from noisystudent.data.folds import assign_folds
from noisystudent.data.manifest import make_manifest


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark_real")


def test_the_upper_bound_folds_the_masked_part_into_the_labelled_part(bench):
    assert bench.upper_bound_flags(["--split-ratio", "1:5:3"]) == ["--rounds", "0", "--split-ratio", "6:0:3"]
    assert bench.upper_bound_flags([]) == ["--rounds", "0", "--split-ratio", "4:0:1"]  # RunConfig's 2:2:1


def test_the_upper_bound_run_has_the_same_test_and_validation_images_and_labels_all_the_rest(bench):
    rows = [{"path": f"/d/{label}{p}_{c}.png", "label": label, "patient": f"{label}{p}", "subset": "train"}
            for label in ("a", "b") for p in range(12) for c in range(3)]
    manifest = make_manifest(rows)
    ns = assign_folds(manifest, 3, (1, 5, 3), 0.2, seed=4)
    upper = assign_folds(manifest, 3, (6, 0, 3), 0.2, seed=4)
    for role in ("test", "validation"):
        assert set(map(tuple, ns[ns["role"] == role][["fold", "path"]].values)) == \
            set(map(tuple, upper[upper["role"] == role][["fold", "path"]].values))
    trained = ns["role"].isin(["labelled", "masked"])
    assert set(map(tuple, ns[trained][["fold", "path"]].values)) == \
        set(map(tuple, upper[upper["role"] == "labelled"][["fold", "path"]].values))
    assert not (upper["role"] == "masked").any()


def test_a_changed_flag_appears_once_with_its_new_value(bench):
    flags = ["--rounds", "1", "--split-ratio", "1:5:3", "--lr", "1e-3"]
    assert bench.overridden(flags, bench.upper_bound_flags(flags)) == ["--rounds", "0", "--split-ratio", "6:0:3", "--lr", "1e-3"]
    assert bench.overridden(["--lr", "1"], ["--rounds", "0"]) == ["--lr", "1", "--rounds", "0"]


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
