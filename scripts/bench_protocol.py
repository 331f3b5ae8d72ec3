"""A measured slice of the C-NMC protocol (``bench_throughput.py --protocol cnmc-study``), projected to the whole.

The slice is real: ``noisystudent kfold`` with the cnmc-study preset (batch 15,
SGD, 3 rounds, 2:2:1, pseudo-labelled students) on synthetic C-NMC-like
images in the C-NMC layout, ``--concurrent N`` fold models at once, for
``--slice-epochs`` epochs of each model of the first N folds (one wave). Every
stage runs as in a real run: cache, training, validation, checkpoints,
predictions, pseudo-labels. The projection keeps what does not grow with epochs
(the cache, per-model predictions and start-up) and scales the epochs:

    T = cache + waves * (epoch_seconds * epochs / slice_epochs + other_seconds)

with waves = ceil(folds / N), epoch_seconds the slowest of the wave's folds'
summed history.csv epoch times (training + validation), other_seconds the
wave's wall time minus that. The first epochs include warm-up (cuDNN,
compilation), so the projection errs long.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

IMAGES_PER_PATIENT = 100  # C-NMC: about 10,000 cells of 118 patients
MIN_PATIENTS = 30  # small test slices still need patients of both classes in every fold


def write_cnmc_like(folder: Path, count: int, size: int, draw_cell) -> Path:
    """``count`` BMPs in the C-NMC layout, patients of one class each (2 ALL : 1 HEM); reused when present."""
    marker = folder / f".cnmc-like-{count}-{size}"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    per_patient = max(1, min(IMAGES_PER_PATIENT, count // MIN_PATIENTS))
    rng = np.random.default_rng(0)
    grid = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = grid[:, None], grid[None, :]
    for index in range(count):
        patient = index // per_patient + 1
        label = "hem" if patient % 3 == 0 else "all"
        path = folder / "training_data" / f"fold_{patient % 3}" / label / f"UID_{patient}_{index % 50 + 1}_{index % 7 + 1}_{label}.bmp"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_cell(rng, size, yy, xx)).save(path, format="BMP")
    marker.write_text("done")
    return folder


def measure(data: Path, run: Path, args) -> dict:
    """Run one wave of the protocol slice; the seconds the projection needs."""
    from noisystudent import make_config, run_kfold

    folds = min(args.concurrent, args.protocol_folds)
    config = make_config(str(data), preset="cnmc-study", epochs=args.slice_epochs, folds=args.protocol_folds,
                         rounds=args.protocol_rounds, image_size=args.size, weights="none", device=args.device,
                         concurrent=folds, test_fraction=0, workers=args.workers or 0, compile=args.compile,
                         compile_mode="reduce-overhead" if args.compile else "default")
    started = time.perf_counter()
    run_kfold(config, run, only_folds=",".join(map(str, range(folds))))
    wall = time.perf_counter() - started
    cache = _cache_seconds(run)
    epoch_seconds = max(_epoch_seconds(run, fold) for fold in range(folds))
    return {"wall": wall, "cache": cache, "epoch_seconds": epoch_seconds, "other_seconds": max(0.0, wall - cache - epoch_seconds),
            "folds_in_wave": folds}


def project(measured: dict, args) -> dict:
    """Minutes of the whole protocol from one measured wave (formula in the module docstring)."""
    waves = math.ceil(args.protocol_folds / measured["folds_in_wave"])
    per_wave = measured["epoch_seconds"] * args.protocol_epochs / args.slice_epochs + measured["other_seconds"]
    seconds = measured["cache"] + waves * per_wave
    return {"seconds": seconds, "minutes": seconds / 60, "waves": waves}


def _epoch_seconds(run: Path, fold: int) -> float:
    return float(sum(pd.read_csv(p)["seconds"].sum() for p in sorted(run.glob(f"fold-{fold}/round-*/history.csv"))))


def _cache_seconds(run: Path) -> float:
    """The cache build's seconds: from folds.csv (written just before it) to the cache's last file."""
    written = [p.stat().st_mtime for p in (run / "cache").rglob("*") if p.is_file()]
    return max(0.0, max(written) - (run / "folds.csv").stat().st_mtime) if written else 0.0
