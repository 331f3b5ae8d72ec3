"""The pool benchmark: its generator and memory sampler are right, and it runs end to end at a tiny size."""

from __future__ import annotations

import json
import os

import pytest
from helpers import load_script
from PIL import Image


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_scale")


def test_pool_is_written_in_folders_of_a_thousand_and_only_once(bench, tmp_path):
    pool = bench.generate_pool(tmp_path / "pool", 1030, side=12, workers=1)
    folders = sorted(p for p in pool.iterdir() if p.is_dir())
    assert [len(list(f.glob("*.png"))) for f in folders] == [1000, 30]
    with Image.open(folders[1] / "cell-0001029.png") as image:
        assert image.size == (12, 12) and image.mode == "RGB"
    (folders[0] / "cell-0000000.png").unlink()
    bench.generate_pool(tmp_path / "pool", 1030, side=12, workers=1)  # complete: not written again
    assert len(list(folders[0].glob("*.png"))) == 999


def test_memory_fields_are_read_in_bytes(bench):
    status = bench._status(os.getpid())
    assert 0 < status["VmRSS"] <= status["VmHWM"] and status["VmRSS"] % 1024 == 0
    assert bench._status(2**31 - 1) == {}  # a process that is gone


@pytest.mark.slow
def test_benchmark_runs_a_fold_and_reports_time_and_memory(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench_scale.py", "--sizes", "150", "--scratch", str(tmp_path), "--image-size", "16",
                                     "--pseudo-per-class", "5", "--workers", "1", "--interval", "0.05", "--keep"])
    bench.main()
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    row = summary["rows"][0]
    assert row["pool"] == 150 and 0 < row["to_pseudo_s"] <= row["wall_s"]
    assert 100 < row["main_peak_mb"] < 20000 and row["tree_peak_mb"] >= row["main_peak_anon_mb"] > 0
    pseudo = (tmp_path / "run-150" / "fold-0" / "round-0" / "pseudo_labels.csv").read_text().splitlines()
    assert len(pseudo) > 1 and any("cell-" in line for line in pseudo)
