#!/usr/bin/env python
"""Throughput of the real data path against the model-only ceiling, in one process.

Steps, in order (see docs/throughput.md for what each number means):

0. write N synthetic C-NMC-like BMPs (a stained cell on black, SOURCE x SOURCE
   px) to local disk in parallel, then decode them with ``cache.build_cache``
   into the uint8 cache at SIZE px (decode images/s);
a. model-only ceiling: EfficientNet-B0 training steps (forward, backward, SGD)
   on a synthetic float batch already on the device;
b. full training step through the real data path: ``engine.train_one_epoch``
   over cache rows (cache.batch -> strong augment -> the same step), and b/a;
c. inference / pseudo-labelling: ``predict.predict_probs`` over the cache;
d. peak GPU memory of each phase;

then projects the full C-NMC protocol (5 folds x teacher + 3 students) from
(b), (c) and the decode rate. ``main(argv)`` returns everything as a dict.

    python scripts/bench_throughput.py --device cuda --json bench.json
    python scripts/bench_throughput.py --device cuda --compile
    python scripts/bench_throughput.py --device cuda --protocol cnmc-study --concurrent 5

``--protocol cnmc-study`` instead times a real slice of the protocol (one wave
of ``--concurrent`` folds, ``--slice-epochs`` epochs of each model, through
``noisystudent kfold``) and projects the whole from it (scripts/bench_protocol.py);
its last line is ``protocol_minutes=X concurrency=N``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

# build_cache's decode workers (forkserver) re-import this file as __mp_main__: keep torch out of them.
if __name__ != "__mp_main__":
    if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
    import torch

    from noisystudent import models
    from noisystudent.config.run_config import RunConfig
    from noisystudent.data.cache import build_cache
    from noisystudent.data.preprocess import PreprocessSpec
    from noisystudent.device import amp_dtype, resolve_device
    from noisystudent.inference.predict import predict_probs
    from noisystudent.models import checkpoint
    from noisystudent.training import engine, optim
    from noisystudent.training.augment import create_augment
    from noisystudent.training.compiling import prediction_graphs
    from noisystudent.training.engine import StepContext, TrainSet

ARCH = "efficientnet-b0"
NUM_CLASSES = 2
LOG_EVERY = 20  # RunConfig.log_every default: the loop's periodic host sync
# C-NMC protocol (RunConfig defaults, split_ratio 2:2:1, no outer test set).
LABELLED, UNLABELLED, VALIDATION = 0.4, 0.4, 0.2
IMAGES_MARKER = ".bench-images.json"

# Table rows, in order (the smoke test checks these names).
ROW_GENERATE = "0. write synthetic BMPs"
ROW_DECODE = "0. decode into cache"
ROW_MODEL = "(a) model-only train step"
ROW_FULL = "(b) full train step (cache -> augment -> step)"
ROW_RATIO = "(b)/(a)"
ROW_INFER = "(c) inference / pseudo-labelling"
ROW_CHECKPOINT = "checkpoint.pt write per epoch"
ROW_PROJECT = "protocol projection, student_data={}"
STUDENT_DATA = ("both", "pseudo")
ROWS = (ROW_GENERATE, ROW_DECODE, ROW_MODEL, ROW_FULL, ROW_RATIO, ROW_INFER, ROW_CHECKPOINT,
        *(ROW_PROJECT.format(mode) for mode in STUDENT_DATA))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--images", type=int, default=10000, help="synthetic images written and cached")
    p.add_argument("--source-size", type=int, default=450, help="side of the BMPs on disk (C-NMC: 450)")
    p.add_argument("--size", type=int, default=224, help="training resolution = cache side")
    p.add_argument("--batch", type=int, default=128, help="training batch size of (a) and (b)")
    p.add_argument("--eval-batch", type=int, default=None, help="batch of (c); default 1024 on GPU, 128 on CPU")
    p.add_argument("--steps", type=int, default=50, help="timed training steps of (a) and (b)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, cuDNN autotuning)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"), help="autocast dtype on GPU; CPU is fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the training model, as --compile does")
    p.add_argument("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark (the package does not)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=0, help="threads writing BMPs and processes decoding (0: all cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="keep the BMPs here and reuse them next time (default: a temporary folder, deleted)")
    p.add_argument("--protocol-images", type=int, default=10000, help="images of the projected protocol (C-NMC: ~10k)")
    p.add_argument("--protocol-epochs", type=int, default=50)
    p.add_argument("--protocol-folds", type=int, default=5)
    p.add_argument("--protocol-rounds", type=int, default=3, help="students after the teacher")
    p.add_argument("--protocol", choices=("cnmc-study",), default=None,
                   help="time a real slice of this preset's protocol with noisystudent kfold and project it")
    p.add_argument("--concurrent", type=int, default=1, help="with --protocol: fold models trained at once (kfold --concurrent)")
    p.add_argument("--slice-epochs", type=int, default=2, help="with --protocol: epochs of each model in the measured slice")
    p.add_argument("--infer-repeats", type=int, default=3, help="timed passes of (c) over the cache; the median is kept")
    args = p.parse_args(argv)
    if min(args.images, args.batch, args.steps, args.size, args.source_size, args.concurrent, args.slice_epochs,
           args.infer_repeats) < 1 or args.warmup < 0:
        p.error("--images, --batch, --steps, --size, --source-size, --concurrent, --slice-epochs and --infer-repeats "
                "must be positive, --warmup >= 0.")
    return args


# --- 0. synthetic images and the cache ---------------------------------------------------------------


def draw_cell(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """One (size, size, 3) uint8 image: a pale disc (cytoplasm) with a darker nucleus, on black."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    cy, cx = size / 2 + rng.normal(0, size * 0.05, 2)
    radius = size * rng.uniform(0.27, 0.35)
    cell = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    nucleus_r = radius * rng.uniform(0.6, 0.85)
    ny, nx = (cy, cx) + (radius - nucleus_r) * rng.uniform(-0.5, 0.5, 2)
    nucleus = (yy - ny) ** 2 + (xx - nx) ** 2 < nucleus_r**2
    image[cell] = rng.integers((170, 140, 200), (200, 170, 230))
    image[nucleus] = rng.integers((60, 20, 90), (120, 70, 150))
    image[cell] -= rng.integers(0, 16, (int(cell.sum()), 1), dtype=np.uint8)  # grain, background stays black
    return image


def _write_chunk(folder: Path, start: int, stop: int, size: int) -> list[str]:
    rng = np.random.default_rng(start)
    grid = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = grid[:, None], grid[None, :]
    paths = []
    for index in range(start, stop):
        label = "all" if index % 3 else "hem"  # about 2:1, as in C-NMC
        path = folder / label / f"UID_{index // 30 + 1}_{index // 3 % 10 + 1}_{index % 3 + 1}_{label}.bmp"
        Image.fromarray(draw_cell(rng, size, yy, xx)).save(path, format="BMP")
        paths.append(str(path))
    return paths


def synthetic_images(folder: Path, count: int, size: int, workers: int) -> tuple[list[str], float | None]:
    """Write ``count`` BMPs under ``folder`` (reused when already there); (paths, seconds or None)."""
    params = {"count": count, "size": size}
    marker = folder / IMAGES_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return json.loads(marker.read_text())["paths"], None
    shutil.rmtree(folder, ignore_errors=True)
    for label in ("all", "hem"):
        (folder / label).mkdir(parents=True, exist_ok=True)
    chunk = max(1, min(256, math.ceil(count / (4 * workers))))
    started = time.perf_counter()
    # Threads suffice: numpy and the file writes release the GIL, and no process needs torch.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(lambda s: _write_chunk(folder, s, min(s + chunk, count), size), range(0, count, chunk))
        paths = [path for part in parts for path in part]
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps({"params": params, "paths": paths}))
    return paths, seconds


def timed_cache(paths: list[str], size: int, folder: Path, workers: int):
    """Decode ``paths`` into a fresh cache in ``folder``; (cache, seconds)."""
    started = time.perf_counter()
    cache = build_cache(paths, PreprocessSpec(image_size=size), folder, workers=workers)
    return cache, time.perf_counter() - started


# --- model and timing helpers ------------------------------------------------------------------------


def create_bench_model(device: torch.device):
    """B0 as the trainer builds it (create_model's memory_efficient_swish=False), on ``device``."""
    model = models.create_model(ARCH, NUM_CLASSES, weights="none").to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # RunConfig.channels_last defaults to True
    return model


def swish_note(model: torch.nn.Module) -> str:
    from efficientnet_pytorch.utils import MemoryEfficientSwish

    slow = sum(isinstance(m, MemoryEfficientSwish) for m in model.modules())
    return "memory-efficient swish OFF (plain Swish)" if slow == 0 else f"WARNING: {slow} MemoryEfficientSwish modules"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def peak_memory(device: torch.device, out: dict):
    """Record torch.cuda.max_memory_allocated (GiB) of the block in ``out['peak_gib']`` (None on CPU)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield
    out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn, device: torch.device) -> float:
    """Seconds of ``fn()`` including the device work it queued."""
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


# --- (a) model only ----------------------------------------------------------------------------------


def bench_model_only(model, ctx: StepContext, args) -> dict:
    """Training steps on one synthetic float batch that never leaves the device."""
    images = torch.randn(args.batch, 3, args.size, args.size, device=ctx.device)
    targets = torch.eye(NUM_CLASSES, device=ctx.device)[torch.arange(args.batch, device=ctx.device) % NUM_CLASSES]
    model.train()

    def steps(count: int) -> None:
        for _ in range(count):
            engine._train_step(model, images, targets, ctx)  # the step train_one_epoch runs

    out: dict = {}
    steps(args.warmup)
    with peak_memory(ctx.device, out):
        seconds = timed(lambda: steps(args.steps), ctx.device)
    return {**out, "seconds": seconds, "images_per_s": args.steps * args.batch / seconds}


# --- (b) full step -----------------------------------------------------------------------------------


def _train_set(cache_rows: int, count: int) -> TrainSet:
    rows = torch.arange(count, dtype=torch.long) % cache_rows
    targets = torch.eye(NUM_CLASSES)[rows % NUM_CLASSES]
    return TrainSet(rows, targets)


def bench_full_step(model, cache, ctx: StepContext, args) -> dict:
    """engine.train_one_epoch over cache rows with the students' strong noise, whole batches only."""
    augment = create_augment("strong", image_size=args.size)
    load_batch = lambda rows: cache.batch(rows, ctx.device)  # noqa: E731  (session.RunContext.load_batch)
    generator = torch.Generator().manual_seed(0)

    def epoch(steps: int) -> None:
        train_set = _train_set(len(cache), steps * args.batch)
        engine.train_one_epoch(model, load_batch, train_set, augment, ctx, generator, args.batch, log_every=LOG_EVERY)

    warm = max(args.warmup, 1)
    epoch(1)  # first use makes the augmentation's constants on the device (syncs once, not counted)
    out: dict = {"warmup_steps": warm, "host_syncs": count_host_syncs(lambda: epoch(warm), ctx.device)}
    with peak_memory(ctx.device, out):
        seconds = timed(lambda: epoch(args.steps), ctx.device)
    return {**out, "seconds": seconds, "images_per_s": args.steps * args.batch / seconds}


def count_host_syncs(fn, device: torch.device) -> int | None:
    """Run ``fn`` (the warm-up) with CUDA sync debugging on; the synchronisations seen, or None on CPU."""
    if device.type != "cuda":
        fn()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


# --- (c) inference -----------------------------------------------------------------------------------


def bench_inference(model, cache, ctx: StepContext, args, eval_batch: int) -> dict:
    """predict_probs (eval mode, as the pipeline predicts; CUDA graphs with --compile on CUDA) over every cache row."""
    load_batch = lambda rows: cache.batch(rows, ctx.device)  # noqa: E731
    channels_last = ctx.device.type == "cuda"
    rows = torch.arange(len(cache), dtype=torch.long)

    # with --compile on CUDA, full batches replay a CUDA graph, as kfold --compile --compile-mode reduce-overhead predicts
    graphs = prediction_graphs(model.eval(), args.compile, "reduce-overhead", ctx.device, {})

    def predict(selection: torch.Tensor) -> None:
        predict_probs(model, load_batch, selection, ctx.device, eval_batch, amp_dtype=ctx.amp_dtype, image_size=args.size,
                      channels_last=channels_last, full_batch_model=graphs)

    # Warm-up: full batches (cuDNN picks its kernels per shape, autotuning too with --cudnn-benchmark) and the
    # partial last batch's shape, so no selection or allocation happens while timed.
    predict(rows[: eval_batch * 3])
    predict(rows[len(rows) - len(rows) % eval_batch:] if len(rows) % eval_batch else rows[:eval_batch])
    out: dict = {}
    with peak_memory(ctx.device, out):
        times = sorted(timed(lambda: predict(rows), ctx.device) for _ in range(args.infer_repeats))
    model.train()
    seconds = times[len(times) // 2]
    return {**out, "seconds": seconds, "images_per_s": len(rows) / seconds}


def bench_checkpoint(model, ctx: StepContext, folder: Path, repeats: int = 3) -> float:
    """Median seconds of the trainer's per-epoch checkpoint.save (model, optimizer, best weights, RNG; fsync'd)."""
    best = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        checkpoint.save(folder / "checkpoint.pt", {
            "model": model.state_dict(), "optimizer": ctx.optimizer.state_dict(), "rng": checkpoint.capture_rng_state(),
            "train_state": {"best_state": best},
        })
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


# --- projection --------------------------------------------------------------------------------------

PROJECTION_FORMULA = (
    "T = N/decode + folds * sum over models m [ epochs * (f_train(m) * N / b + f_val * N / c + k) + f_pred * N / c ]; "
    "f_train = {lab:g} teacher, {both:g} students (both) or {pseudo:g} (pseudo); f_val = {val:g}; f_pred = {pred:g} "
    "(validation + unlabelled predicted after each model); k = checkpoint write per epoch"
).format(lab=LABELLED, both=LABELLED + UNLABELLED, pseudo=UNLABELLED, val=VALIDATION, pred=VALIDATION + UNLABELLED)


def project_protocol(train_ips: float, infer_ips: float, decode_ips: float, checkpoint_s: float, args,
                     student_data: str) -> dict:
    """Seconds of the whole k-fold protocol from measured rates (ignores start-up and result tables)."""
    n, epochs = args.protocol_images, args.protocol_epochs
    student_fraction = LABELLED + UNLABELLED if student_data == "both" else UNLABELLED
    fractions = [LABELLED] + [student_fraction] * args.protocol_rounds
    per_epoch = VALIDATION * n / infer_ips + checkpoint_s
    per_model = [epochs * (f * n / train_ips + per_epoch) + (VALIDATION + UNLABELLED) * n / infer_ips for f in fractions]
    seconds = n / decode_ips + args.protocol_folds * sum(per_model)
    return {"seconds": seconds, "minutes": seconds / 60, "student_data": student_data}


# --- report ------------------------------------------------------------------------------------------


def _row(name: str, value: float | None, unit: str, seconds: float | None = None,
         peak_gib: float | None = None, note: str = "") -> dict:
    return {"phase": name, "value": value, "unit": unit, "seconds": seconds, "peak_gib": peak_gib, "note": note}


def build_rows(gen_s, decode_s, n, model_only, full, infer, checkpoint_s, projections, notes) -> list[dict]:
    rows = [
        _row(ROW_GENERATE, n / gen_s if gen_s else None, "img/s", gen_s, note="" if gen_s else "reused from --cache-dir"),
        _row(ROW_DECODE, n / decode_s, "img/s", decode_s, note=notes["cache"]),
        _row(ROW_MODEL, model_only["images_per_s"], "img/s", model_only["seconds"], model_only["peak_gib"], notes["model"]),
        _row(ROW_FULL, full["images_per_s"], "img/s", full["seconds"], full["peak_gib"], notes["full"]),
        _row(ROW_RATIO, full["images_per_s"] / model_only["images_per_s"], "ratio", note="target >= 0.85 on one H100"),
        _row(ROW_INFER, infer["images_per_s"], "img/s", infer["seconds"], infer["peak_gib"], notes["infer"]),
        _row(ROW_CHECKPOINT, checkpoint_s, "s", checkpoint_s, note="model + optimizer + best weights, fsync'd"),
    ]
    for p in projections:
        rows.append(_row(ROW_PROJECT.format(p["student_data"]), p["minutes"], "min", p["seconds"], note="target <= 45 min"))
    return rows


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("phase", "value", "unit", "seconds", "peak GiB", "note"):
        table.add_column(column, justify="right" if column in ("value", "seconds", "peak GiB") else "left")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        table.add_row(r["phase"], fmt(r["value"], {"ratio": ".3f", "s": ".2f"}.get(r["unit"], ",.1f")), r["unit"],
                      fmt(r["seconds"], ".2f"), fmt(r["peak_gib"], ".2f"), r["note"])
    Console(width=200).print(table)


def write_json(path: Path, report: dict) -> None:
    temp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temp.write_text(json.dumps(report, indent=2))
    os.replace(temp, path)


# --- main --------------------------------------------------------------------------------------------


@contextmanager
def workspace(cache_dir: Path | None):
    """(images folder, fresh cache folder); the cache is always rebuilt so decoding is measured."""
    root = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    root.mkdir(parents=True, exist_ok=True)
    cache_folder = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
    try:
        yield root / "images", cache_folder
    finally:
        shutil.rmtree(cache_folder if cache_dir else root, ignore_errors=True)


def step_context(model, device: torch.device, amp: str) -> StepContext:
    optimizer = optim.create_optimizer(model.parameters(), RunConfig(), device)  # SGD, momentum 0.9, fused on CUDA
    return StepContext(optimizer=optimizer, device=device, amp_dtype=amp_dtype(amp, device),
                       channels_last=device.type == "cuda")


def settings(args, device: torch.device, eval_batch: int) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__, "arch": ARCH, "images": args.images, "source_size": args.source_size,
        "size": args.size, "batch": args.batch, "eval_batch": eval_batch, "steps": args.steps, "warmup": args.warmup,
        "amp": str(amp_dtype(args.amp, device) or "fp32").removeprefix("torch."),
        "channels_last": device.type == "cuda", "compile": args.compile,
        "cudnn_benchmark": args.cudnn_benchmark, "augment": "strong", "optimizer": "SGD momentum (fused on CUDA)",
        "protocol": {"images": args.protocol_images, "epochs": args.protocol_epochs, "folds": args.protocol_folds,
                     "rounds": args.protocol_rounds, "formula": PROJECTION_FORMULA},
    }


def run_phases(args, device: torch.device, cache, eval_batch: int, folder: Path) -> tuple[dict, dict, dict, float, str]:
    model = create_bench_model(device)
    note = swish_note(model)
    ctx = step_context(model, device, args.amp)
    training_model = torch.compile(model) if args.compile else model  # as trainer._run_epochs does
    cache.tensor(device)  # place the cache (on the GPU when it fits) before anything is timed
    model_only = bench_model_only(training_model, ctx, args)
    full = bench_full_step(training_model, cache, ctx, args)
    infer = bench_inference(model, cache, ctx, args, eval_batch)
    return model_only, full, infer, bench_checkpoint(model, ctx, folder), note


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.protocol:
        return main_protocol(args)
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.workers or os.cpu_count() or 1
    eval_batch = args.eval_batch or (1024 if device.type == "cuda" else 128)
    with workspace(args.cache_dir) as (image_folder, cache_folder):
        paths, gen_s = synthetic_images(image_folder, args.images, args.source_size, workers)
        cache, decode_s = timed_cache(paths, args.size, cache_folder, workers)
        storage = cache.tensor(device)
        model_only, full, infer, checkpoint_s, swish = run_phases(args, device, cache, eval_batch, cache_folder)
        del cache, storage
    rates = (full["images_per_s"], infer["images_per_s"], args.images / decode_s, checkpoint_s)
    projections = [project_protocol(*rates, args, mode) for mode in STUDENT_DATA]
    syncs, warm = full["host_syncs"], full["warmup_steps"]
    notes = {
        "cache": f"{args.source_size} px BMP -> {args.size} px uint8, {workers} worker(s)",
        "model": f"{ARCH}, batch {args.batch}, {swish}",
        "full": "strong augment" + ("" if syncs is None else f", {syncs} host syncs in a {warm}-step epoch"),
        "infer": f"predict_probs, batch {eval_batch}, eval mode, "
                 f"{'CUDA graphs' if args.compile and device.type == 'cuda' else 'uncompiled'}, median of {args.infer_repeats} after warm-up",
    }
    report = {"settings": settings(args, device, eval_batch),
              "rows": build_rows(gen_s, decode_s, args.images, model_only, full, infer, checkpoint_s, projections, notes)}
    print_table(report["rows"], f"noisystudent throughput on {report['settings']['device_name']}")
    print(f"Projection: {PROJECTION_FORMULA}; b = (b), c = (c), decode = 0. decode rate; "
          f"N = {args.protocol_images}, epochs = {args.protocol_epochs}, folds = {args.protocol_folds}, "
          f"{args.protocol_rounds} students; measured at batch {args.batch}.")
    if args.json:
        write_json(args.json, report)
    return report


def main_protocol(args) -> dict:
    """``--protocol cnmc-study``: one measured wave of the real protocol, projected; last line protocol_minutes=X concurrency=N."""
    protocol = _load_sibling("bench_protocol")
    if args.threads:
        torch.set_num_threads(args.threads)
    with workspace(args.cache_dir) as (image_folder, cache_folder):
        data = protocol.write_cnmc_like(image_folder, args.images, args.source_size, draw_cell)
        measured = protocol.measure(data, cache_folder / "run", args)
    projected = protocol.project(measured, args)
    device = resolve_device(args.device)
    report = {"settings": {**settings(args, device, args.eval_batch or 0), "protocol_slice": {
        "preset": args.protocol, "concurrent": args.concurrent, "slice_epochs": args.slice_epochs}},
        "measured": measured, "projection": projected}
    print(f"Measured one wave of {measured['folds_in_wave']} fold(s) x {args.protocol_rounds + 1} models x "
          f"{args.slice_epochs} epochs on {args.images} images: {measured['wall']:.1f} s (cache {measured['cache']:.1f} s, "
          f"epochs {measured['epoch_seconds']:.1f} s, the rest {measured['other_seconds']:.1f} s); projected to "
          f"{args.protocol_folds} folds x {args.protocol_epochs} epochs in {projected['waves']} wave(s).")
    if args.json:
        write_json(args.json, report)
    print(f"protocol_minutes={projected['minutes']:.1f} concurrency={args.concurrent}")
    return report


def _load_sibling(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
