#!/usr/bin/env python
"""Peak memory (RSS) of `noisystudent ensemble predict` for a small and a large number of images.

Writes a synthetic run (K random EfficientNet-B0 models, as bench_inference.py)
and COUNT small PNGs per count, runs the real CLI in a child process under
/usr/bin/time and prints its peak RSS and wall time. Memory is bounded by the
batch size when the two peaks are within 20 % of each other.

    python scripts/bench_predict_memory.py --counts 260 20000 --size 48 --backend onnx
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))


def write_pngs(folder: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(count)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"UID_{i % 50}_{i}_1_all.png")
    return folder


def peak_rss(run: Path, images: Path, out: Path, backend: str, batch: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `ensemble predict` process."""
    command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "noisystudent.cli.main", "ensemble", "predict", str(run),
               str(images), "--models", "teachers", "--backend", backend, "--batch-size", str(batch), "--out", str(out), "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return int(done.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[260, 20000])
    parser.add_argument("--size", type=int, default=48, help="side of the images and of the models' input")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--backend", default="onnx")
    args = parser.parse_args()
    from bench_inference import synthetic_run

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("NOISYSTUDENT_CACHE_DIR", str(tmp / "onnx-cache"))
        run = synthetic_run(tmp / "run", args.folds, args.size)
        peaks = []
        for count in args.counts:
            images = write_pngs(tmp / f"images-{count}", count, args.size)
            peak_rss(run, write_pngs(tmp / "warm", 2, args.size), tmp / "warm.csv", args.backend, args.batch)  # export cached
            rss, seconds = peak_rss(run, images, tmp / f"p{count}.csv", args.backend, args.batch)
            peaks.append(rss)
            print(f"{count} images: peak RSS {rss:.0f} MiB, {seconds:.1f} s ({args.backend}, batch {args.batch}, "
                  f"{args.folds} models, {args.size} px, load {os.getloadavg()[0]:.2f})", flush=True)
        print(f"peak_rss_ratio_largest_vs_smallest={peaks[-1] / peaks[0]:.3f}")


if __name__ == "__main__":
    main()
