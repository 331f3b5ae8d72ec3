"""The inference benchmark runs end to end on CPU at tiny sizes, so it cannot rot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import load_script

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra)")

@pytest.mark.slow
def test_bench_inference_reports_every_row_and_the_last_line(tmp_path: Path, capsys) -> None:
    bench = load_script("bench_inference")
    threads = torch.get_num_threads()
    try:
        report = bench.main(["--images", "6", "--source-size", "40", "--size", "32", "--folds", "2", "--batch", "3",
                             "--threads", "1", "--json", str(tmp_path / "bench.json")])
    finally:
        torch.set_num_threads(threads)
    names = [row["name"] for row in report["rows"]]
    assert names[:4] == ["1 model: eager fp32", "1 model: eager fp32 channels_last",
                         "1 model: ONNX Runtime fp32 (CPUExecutionProvider)", "1 model: ONNX Runtime int8 (QDQ)"]
    assert names[-2:] == ["2 models: ensemble predict end to end (onnx)", "2 models: ensemble predict end to end (eager PyTorch)"]
    assert 0 <= report["int8_identical_calls"] <= 1
    assert all(math.isfinite(report[k]) and report[k] > 0 for k in ("ceiling_k", "end_to_end", "end_to_end_eager", "ort fp32"))
    assert json.loads((tmp_path / "bench.json").read_text())["k"] == 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"ratio_end_to_end_vs_ort_ceiling={report['ratio_end_to_end_vs_ort_ceiling']:.3f} "
                    f"speedup_vs_eager={report['speedup_vs_eager']:.2f}")
