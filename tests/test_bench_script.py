"""The throughput benchmark runs end to end on CPU at tiny sizes, so it cannot rot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_throughput")


@pytest.mark.slow
def test_benchmark_reports_every_phase(bench, tmp_path: Path, capsys) -> None:
    threads = torch.get_num_threads()
    argv = ["--device", "cpu", "--images", "12", "--source-size", "40", "--size", "32", "--batch", "4",
            "--steps", "2", "--warmup", "1", "--threads", "1", "--workers", "1",
            "--cache-dir", str(tmp_path / "bench"), "--json", str(tmp_path / "bench.json")]
    try:
        report = bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    rows = {row["phase"]: row for row in report["rows"]}
    assert list(rows) == list(bench.ROWS)
    assert all(math.isfinite(row["value"]) and row["value"] > 0 for row in rows.values())
    assert "memory-efficient swish OFF" in rows[bench.ROW_MODEL]["note"]
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(report))
    assert "(b)/(a)" in capsys.readouterr().out
    # The BMPs stay in --cache-dir and are reused; the decoded cache is always rebuilt (and deleted).
    again = bench.main(argv[:-2])
    assert again["rows"][0]["note"] == "reused from --cache-dir" and again["rows"][1]["value"] > 0
    assert not list((tmp_path / "bench").glob("cache-*"))


def test_projection_formula(bench) -> None:
    args = bench.parse_args(["--protocol-images", "1000", "--protocol-epochs", "2", "--protocol-folds", "1",
                             "--protocol-rounds", "1"])
    # each model: 2 epochs * (400/100 train + 200/1000 validation + 0.5 checkpoint) + 600/1000 predictions;
    # pseudo students train on 400 images like the teacher; plus 1000/500 s decoding
    projected = bench.project_protocol(100.0, 1000.0, 500.0, 0.5, args, "pseudo")
    assert projected["seconds"] == pytest.approx(2 + 2 * (2 * (4 + 0.2 + 0.5) + 0.6))
    both = bench.project_protocol(100.0, 1000.0, 500.0, 0.5, args, "both")  # students: 800 images
    assert both["seconds"] - projected["seconds"] == pytest.approx(2 * 4)


@pytest.mark.slow
def test_protocol_slice_runs_the_real_pipeline_and_ends_with_the_projection(bench, tmp_path: Path, capsys) -> None:
    argv = ["--protocol", "cnmc-study", "--device", "cpu", "--images", "60", "--source-size", "24", "--size", "16",
            "--slice-epochs", "1", "--concurrent", "2", "--protocol-folds", "3", "--protocol-rounds", "1",
            "--protocol-epochs", "4", "--threads", "2", "--cache-dir", str(tmp_path / "bench")]
    threads = torch.get_num_threads()
    try:
        report = bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    measured, projected = report["measured"], report["projection"]
    assert measured["folds_in_wave"] == 2 and projected["waves"] == 2
    assert 0 < measured["epoch_seconds"] < measured["wall"] and measured["cache"] >= 0
    # 2 waves of (4 epochs scaled from the 1 measured + the rest), plus the cache once
    expected = measured["cache"] + 2 * (measured["epoch_seconds"] * 4 + measured["other_seconds"])
    assert projected["seconds"] == pytest.approx(expected)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"protocol_minutes={projected['minutes']:.1f} concurrency=2"


def test_protocol_projection_keeps_the_cache_once_and_scales_the_epochs(bench) -> None:
    protocol = bench._load_sibling("bench_protocol")
    args = bench.parse_args(["--protocol", "cnmc-study", "--slice-epochs", "2", "--protocol-epochs", "50",
                             "--protocol-folds", "5", "--concurrent", "2"])
    measured = {"cache": 30.0, "epoch_seconds": 8.0, "other_seconds": 12.0, "folds_in_wave": 2}
    projected = protocol.project(measured, args)
    assert projected["waves"] == 3 and projected["seconds"] == pytest.approx(30 + 3 * (8 * 25 + 12))
