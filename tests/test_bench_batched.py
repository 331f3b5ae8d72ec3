"""The batched-vs-sequential benchmark trains the same models both ways, so its speed-up compares like with like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_batched")


@pytest.mark.slow
def test_both_routes_train_the_same_models(bench, tmp_path: Path, capsys) -> None:
    threads = torch.get_num_threads()
    argv = ["--device", "cpu", "--models", "2", "--batch", "8", "--size", "32", "--steps", "1", "--warmup", "0",
            "--agree-steps", "2", "--threads", "1", "--json", str(tmp_path / "batched.json")]
    try:
        report = bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert [row["route"] for row in report["rows"]] == [bench.ROW_SEQUENTIAL, bench.ROW_BATCHED]
    assert all(row["images_per_s"] > 0 for row in report["rows"])
    assert report["batched_speedup"] == pytest.approx(
        report["rows"][1]["images_per_s"] / report["rows"][0]["images_per_s"])
    agree = report["agreement"]
    # Same weights, same batches, no random noise: the routes differ by rounding, not by what they compute.
    assert 0 < agree["difference_relative_to_update"] < 1e-3
    assert agree["max_probability_difference"] < 1e-5
    assert json.loads((tmp_path / "batched.json").read_text())["batched_speedup"] == report["batched_speedup"]
    assert capsys.readouterr().out.rstrip().endswith(f"batched_speedup={report['batched_speedup']:.2f} models=2 batch=8")


@pytest.mark.slow
def test_batched_route_keeps_batchnorm_statistics_per_model(bench) -> None:
    fold_models = bench.create_models(2, torch.device("cpu"), noise=False)
    images, targets = bench.synthetic_batches(2, 4, 32, torch.device("cpu"))
    images[1] += 3.0  # the second model's batch has another mean
    route = bench.Batched(fold_models, torch.device("cpu"), None)
    before = route.buffers["_bn0.running_mean"].clone()
    route.step(images, targets)
    moved = route.buffers["_bn0.running_mean"] - before
    assert moved.abs().sum(dim=1).min() > 0  # both models' statistics moved
    assert not torch.allclose(moved[0], moved[1], atol=1e-4)  # each by its own batch
    assert route.buffers["_bn0.num_batches_tracked"].tolist() == [1, 1]
    assert all(m._bn0.num_batches_tracked.item() == 0 for m in fold_models)  # the source models are left untouched


def test_fp16_is_refused_with_the_reason(bench, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--amp", "fp16"])
    assert "GradScaler" in capsys.readouterr().err
