#!/usr/bin/env python
"""Large unlabelled pools: time and peak memory of one fold at 10k, 100k and 1M pool images.

For each pool size this script generates that many small PNG files (once, in
--scratch), then runs the real command line on them in a child process:

    python -m noisystudent kfold LABELLED --pool-images POOL --out RUN --only-folds 0 ...

so the pool is listed (sorted and checked into RUN/pool.csv), decoded into the cache, predicted by
the teacher (streamed into pool_predictions.csv) and pseudo-labelled (streamed
into pseudo_labels.csv); with --pseudo-per-class the student then trains on a
fixed number of pseudo-labelled images per class, as in Xie et al. 2020, so
the whole fold finishes. Meanwhile the process tree's memory is sampled from
/proc (Linux only) every --interval seconds.

One line per size, then a JSON summary:

    pool=1000000 wall_s=... to_pseudo_s=... s_per_1k=... main_peak_mb=... tree_peak_mb=...

main_peak_mb is the kfold process's own peak resident set (VmHWM: anonymous
memory plus the file pages it maps); tree_peak_mb is the largest sampled sum
over the process and its decoding workers. to_pseudo_s is the time until the
teacher's pseudo_labels.csv exists (read + cache + predict + pseudo-label).

    python scripts/bench_scale.py                              # 10k, 100k, 1M (docs/scale.md)
    python scripts/bench_scale.py --sizes 2000,20000 --keep    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from noisystudent import layout
from noisystudent.data.demo import generate_demo

FILES_PER_FOLDER = 1000  # a lab's pool comes as many folders (slides), not one folder of a million files
GENERATED = ".complete"  # marker: the pool folder holds all its files


def main() -> None:
    args = _parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    labelled = generate_demo(scratch / "labelled", n_patients_per_class=6, cells_per_patient=10, size=args.file_size)
    rows = []
    for size in args.sizes:
        pool = generate_pool(scratch / f"pool-{size}", size, args.file_size, args.workers)
        row = run_one(labelled, pool, scratch / f"run-{size}", size, args)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        if not args.keep:
            shutil.rmtree(scratch / f"run-{size}", ignore_errors=True)
    print(json.dumps({"settings": _settings(args), "rows": rows}, indent=2))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated pool sizes")
    parser.add_argument("--scratch", default="/tmp/noisystudent-bench-scale", help="folder for the generated images and runs")
    parser.add_argument("--file-size", type=int, default=40, help="side of the generated PNG files in pixels")
    parser.add_argument("--image-size", type=int, default=32, help="working resolution (--image-size of kfold)")
    parser.add_argument("--pseudo-per-class", type=int, default=500, help="student's pseudo-labelled images per class")
    parser.add_argument("--eval-batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=0, help="processes generating and decoding images (0: all cores)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between memory samples")
    parser.add_argument("--stop-at-pseudo", action="store_true", help="stop each run once the teacher's pseudo-labels exist")
    parser.add_argument("--keep", action="store_true", help="keep each run folder")
    parser.add_argument("--extra", default="", help="more kfold options, e.g. '--device cuda'")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    return args


def _settings(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("sizes", "scratch")} | {"cores": os.cpu_count()}


# --- the pool ---------------------------------------------------------------


def generate_pool(folder: Path, count: int, side: int, workers: int) -> Path:
    """``count`` PNG cells in folders of FILES_PER_FOLDER; kept for the next call."""
    if (folder / GENERATED).exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    starts = range(0, count, FILES_PER_FOLDER)
    tasks = [(folder / f"slide-{start // FILES_PER_FOLDER:05d}", start, min(start + FILES_PER_FOLDER, count), side) for start in starts]
    began = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for task in tasks:
            _write_folder(task)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_folder, tasks, chunksize=4))
    (folder / GENERATED).write_text(str(count))
    print(f"generated {count} images in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return folder


def _write_folder(task) -> None:
    folder, start, stop, side = task
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[:side, :side]
    for index in range(start, stop):
        # a dark round cell on a light background, its size and stain drawn at random
        radius = rng.uniform(0.25, 0.45) * side
        cy, cx = rng.uniform(0.4, 0.6, size=2) * side
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        pixels = np.full((side, side, 3), 230, np.uint8)
        pixels[inside] = rng.integers(60, 200, size=3)
        Image.fromarray(pixels).save(folder / f"cell-{index:07d}.png", compress_level=1)


# --- one run ------------------------------------------------------------------


def run_one(labelled: Path, pool: Path, run: Path, size: int, args) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    command = [
        sys.executable, "-m", "noisystudent", "kfold", str(labelled), "--pool-images", str(pool), "--out", str(run),
        "--folds", "2", "--only-folds", "0", "--rounds", "1", "--epochs", "1", "--weights", "none",
        "--image-size", str(args.image_size), "--batch-size", "32", "--eval-batch-size", str(args.eval_batch_size),
        *(["--pseudo-per-class", str(args.pseudo_per_class)] if args.pseudo_per_class else []), "--workers", str(args.workers), "--quiet", *args.extra.split(),
    ]
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = MemorySampler(process, args.interval, layout.round_dir(run, 0, 0) / layout.PSEUDO_LABELS, args.stop_at_pseudo)
    sampler.start()
    _, stderr = process.communicate()
    wall = time.perf_counter() - began
    sampler.stop()
    if process.returncode != 0 and not (args.stop_at_pseudo and sampler.pseudo_at is not None):
        sys.exit(f"kfold failed on the {size}-image pool (exit {process.returncode}):\n{stderr[-3000:]}")
    to_pseudo = None if sampler.pseudo_at is None else sampler.pseudo_at - began
    return {
        "pool": size,
        "wall_s": round(wall, 1),
        "to_pseudo_s": None if to_pseudo is None else round(to_pseudo, 1),
        "s_per_1k": None if to_pseudo is None else round(1000 * to_pseudo / size, 3),
        "main_peak_mb": round(sampler.main_peak / 2**20),
        "tree_peak_mb": round(sampler.tree_peak / 2**20),
        "main_peak_anon_mb": round(sampler.main_anon_peak / 2**20),
    }


class MemorySampler(threading.Thread):
    """Peak resident memory of a process and of its whole tree, sampled from /proc."""

    def __init__(self, process: subprocess.Popen, interval: float, watch: Path, stop_there: bool) -> None:
        super().__init__(daemon=True)
        self.process, self.pid, self.interval, self.watch, self.stop_there = process, process.pid, interval, watch, stop_there
        self.main_peak = self.tree_peak = self.main_anon_peak = 0
        self.pseudo_at: float | None = None
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            status = _status(self.pid)
            if status:
                self.main_peak = max(self.main_peak, status.get("VmHWM", 0))
                self.main_anon_peak = max(self.main_anon_peak, status.get("RssAnon", 0))
                tree = sum(_status(p).get("VmRSS", 0) for p in _descendants(self.pid)) + status.get("VmRSS", 0)
                self.tree_peak = max(self.tree_peak, tree)
            if self.pseudo_at is None and self.watch.exists():
                self.pseudo_at = time.perf_counter()
                if self.stop_there:
                    self.process.terminate()
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def _status(pid: int) -> dict[str, int]:
    """Memory fields of /proc/PID/status in bytes; {} once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


if __name__ == "__main__":
    main()
