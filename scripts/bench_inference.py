#!/usr/bin/env python
"""Inference throughput: model-only ceilings against `ensemble predict` end to end, in one process.

On the same images (synthetic C-NMC-like BMPs, or --image-dir):

1. model-only ceilings of ONE model on decoded uint8 batches already in memory
   (normalisation + forward + softmax): eager PyTorch, channels_last, on CUDA
   also bf16 autocast and torch.compile, ONNX Runtime fp32 and, on the CPU,
   int8-quantised ONNX Runtime (static QDQ, per channel, calibrated on the
   first batch) with its agreement with fp32 (identical calls, AUC difference);
2. the ONNX Runtime ceiling of the whole K-model graph (`ensemble export`);
3. `ensemble.predict` end to end from the image files (decode, models, vote),
   with the ONNX Runtime backend and with the eager PyTorch backend (today's path).

The models are K EfficientNet-B0 fold models of a synthetic run (random
weights, random BatchNorm statistics so outputs differ between images), or the
models of a real run (--run). The last line is

    ratio_end_to_end_vs_ort_ceiling=X speedup_vs_eager=Y

X = end to end / the ceiling of the K-model graph in the same backend
(ONNX Runtime; on CUDA without ONNX Runtime's CUDA provider: PyTorch bf16),
Y = end to end / end to end with eager PyTorch.

    python scripts/bench_inference.py --threads 2                  # the CPU figures of docs/throughput.md
    python scripts/bench_inference.py --device cuda --images 2048 --batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does
import numpy as np
from PIL import Image

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import torch

from noisystudent import models
from noisystudent.config.run_config import RunConfig
from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.data.preprocess import PreprocessSpec, load_preprocessed
from noisystudent.ensemble import classifier as ensemble
from noisystudent.inference import onnx_export, onnx_runtime
from noisystudent.models import checkpoint
from noisystudent.models.model_file import IDENTITY
from noisystudent.run.folder import run_identity, write_config

ARCH = "efficientnet-b0"
CLASSES = ["all", "hem"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--images", type=int, default=64, help="synthetic images (ignored with --image-dir)")
    p.add_argument("--image-dir", type=Path, default=None, help="use these images (class = parent folder name)")
    p.add_argument("--source-size", type=int, default=450, help="side of the synthetic BMPs (C-NMC: 450)")
    p.add_argument("--size", type=int, default=224, help="working resolution")
    p.add_argument("--folds", type=int, default=5, help="K models of the synthetic run")
    p.add_argument("--run", type=Path, default=None, help="a finished run to take the K models from (students)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: all cores)")
    p.add_argument("--repeats", type=int, default=1, help="timed passes over the images per ceiling")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 quantisation")
    p.add_argument("--no-eager-end-to-end", action="store_true", help="skip the slow eager end-to-end pass")
    p.add_argument("--compile", action="store_true", help="also torch.compile on the CPU (always tried on CUDA)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


# --- inputs -------------------------------------------------------------------------------------


def write_images(folder: Path, count: int, size: int) -> list[tuple[str, str]]:
    """(path, label) of ``count`` BMPs: a disc on black, a little redder for one class."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    found = []
    for i in range(count):
        label = CLASSES[i % 2]
        image = np.zeros((size, size, 3), np.uint8)
        cy, cx, r = size / 2 + rng.normal(0, size * 0.05), size / 2 + rng.normal(0, size * 0.05), size * rng.uniform(0.25, 0.35)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        colour = rng.integers((120, 60, 140), (200, 140, 230)) + (40 if label == "all" else 0) * np.array([1, 0, 0])
        image[disc] = np.clip(colour, 0, 255)
        image[disc] -= rng.integers(0, 20, (int(disc.sum()), 1), dtype=np.uint8)
        path = folder / label / f"UID_{i % 7 + 1}_{i}_1_{label}.bmp"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        found.append((str(path), label))
    return found


def folder_images(folder: Path) -> list[tuple[str, str]]:
    suffixes = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}
    return [(str(p), p.parent.name) for p in sorted(folder.rglob("*")) if p.suffix.lower() in suffixes]


def synthetic_run(folder: Path, folds: int, size: int) -> Path:
    """A run folder with K random EfficientNet-B0 teachers (round 0), as `ensemble` reads it."""
    config = RunConfig(arch=ARCH, folds=folds, rounds=0, image_size=size, weights="none", device="cpu")
    write_config(folder, config, "bench")
    for fold in range(folds):
        torch.manual_seed(fold)
        model = models.create_model(ARCH, len(CLASSES), weights="none")
        for module in model.modules():  # BN statistics that make outputs differ from image to image
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
                module.running_mean.uniform_(-0.2, 0.2)
        checkpoint.save(folder / f"fold-{fold}" / "round-0" / "model.pt", {
            "spec": models.model_spec(ARCH, len(CLASSES), 0.2, 0.2), "model": model.state_dict(), "classes": CLASSES,
            "positive": "all", "image_size": size,
            "preprocess": {"image_size": size, "crop_black": False, "crop_threshold": 10, "equalize": "none", "center_crop": 1.0},
            IDENTITY: run_identity(folder, fold, 0),  # where it lies: ensemble loading verifies it
        })
    return folder


# --- timing -------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceiling(predict, batches: list[np.ndarray], device: torch.device, repeats: int) -> tuple[float, np.ndarray]:
    """Images/s of ``predict`` over ``batches`` after one warm-up batch, and its outputs (K, N, C)."""
    predict(batches[0])
    sync(device)
    outputs, started = [], time.perf_counter()
    for _ in range(repeats):
        outputs = [predict(batch) for batch in batches]
    sync(device)
    seconds = time.perf_counter() - started
    return repeats * sum(len(b) for b in batches) / seconds, np.concatenate(outputs, axis=1)


def torch_predictor(model, device: torch.device, channels_last: bool, amp: torch.dtype | None, compiled: bool = False):
    """uint8 numpy batch -> (1, B, C), the eager path of the package with the given memory format and autocast."""
    mean, std = models.input_normalization(ARCH)
    shift = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    scale = 1 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model

    @torch.no_grad()
    def predict(pixels: np.ndarray) -> np.ndarray:
        x = (torch.from_numpy(pixels).to(device).float() - shift) * scale
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            probs = torch.softmax(forward(x).float(), dim=1)
        return probs.cpu().numpy()[None]

    return predict


def one_model_onnx(model, size: int) -> bytes:
    graph = onnx_export.build_graph([model], [models.input_normalization(ARCH)], "none", "soft")
    return onnx_export.export_graph(graph, size, {"format": onnx_export.EXPORT_FORMAT})


def quantized(model_bytes: bytes, calibration: np.ndarray, folder: Path) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights), calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{onnx_export.INPUT: calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.items, None)

    fp32, prepared, int8 = folder / "fp32.onnx", folder / "prep.onnx", folder / "int8.onnx"
    fp32.write_bytes(model_bytes)
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return int8


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else float("nan")


# --- the phases ---------------------------------------------------------------------------------


def model_ceilings(model, batches, labels, device, args, folder: Path, rows: list) -> dict:
    """One model: eager, channels_last (bf16 and compiled on CUDA), ONNX Runtime fp32 and int8."""
    found = {}
    variants = [("eager fp32", False, None, False), ("eager fp32 channels_last", True, None, False)]
    if device.type == "cuda":
        variants += [("eager bf16 channels_last", True, torch.bfloat16, False), ("compiled bf16 channels_last", True, torch.bfloat16, True)]
    elif args.compile:
        variants += [("compiled fp32 channels_last", True, None, True)]
    for name, channels_last, amp, compiled in variants:
        try:
            found[name], _ = ceiling(torch_predictor(model, device, channels_last, amp, compiled), batches, device, args.repeats)
        except Exception as error:  # e.g. no compiler toolchain: report, go on
            rows.append((f"1 model: {name}", None, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"))
            continue
        rows.append((f"1 model: {name}", found[name], ""))
    model_bytes = one_model_onnx(model.cpu(), args.size)
    provider = ort_providers(device)
    if provider is None:
        rows.append(("1 model: ONNX Runtime fp32", None, f"skipped: this onnxruntime has no {device.type.upper()} provider"))
    else:
        session = onnx_runtime.OrtEnsemble(model_bytes, args.threads, provider)
        found["ort fp32"], fp32 = ceiling(session, batches, device, args.repeats)
        rows.append((f"1 model: ONNX Runtime fp32 ({provider[0]})", found["ort fp32"], ""))
        if not args.no_int8 and device.type == "cpu":
            int8_session = onnx_runtime.OrtEnsemble(quantized(model_bytes, batches[0], folder), args.threads)
            found["ort int8"], int8 = ceiling(int8_session, batches, device, args.repeats)
            same = float((fp32[0].argmax(1) == int8[0].argmax(1)).mean())
            auc_fp32, auc_int8 = auc(labels, fp32[0][:, 0]), auc(labels, int8[0][:, 0])
            found.update(int8_identical_calls=same, auc_fp32=auc_fp32, auc_int8=auc_int8)
            rows.append(("1 model: ONNX Runtime int8 (QDQ)", found["ort int8"],
                         f"identical calls {same:.3f}, AUC fp32 {auc_fp32:.4f} int8 {auc_int8:.4f} (diff {auc_int8 - auc_fp32:+.4f})"))
    return found


def ort_providers(device: torch.device) -> list[str] | None:
    try:
        return onnx_runtime.providers_for(device.type)
    except Exception:
        return None


def ensemble_phase(run: Path, images: list[tuple[str, str]], batches, device, args, rows: list) -> dict:
    """The K-model graph's ceiling, then ensemble.predict end to end from files with each backend."""
    found = {}
    table = ensemble_table(images)
    started = time.perf_counter()
    models_ = ensemble.load_ensemble(run, "teachers" if args.run is None else "students", device)
    found["load_s"] = time.perf_counter() - started
    k = len(models_.members)
    backend = "onnx" if ort_providers(device) else "torch"
    started = time.perf_counter()
    predictor = models_.predictor(models_.config.tta, backend)  # exports (first time), builds the session
    found["export_s"] = time.perf_counter() - started
    rows.append((f"ensemble load / first export+session ({backend})", None, f"{found['load_s']:.1f} s / {found['export_s']:.1f} s"))
    found["ceiling_k"], _ = ceiling(predictor, batches, device, args.repeats)
    rows.append((f"{k} models: {'ONNX Runtime graph' if backend == 'onnx' else 'PyTorch'} ceiling", found["ceiling_k"], ""))
    found["end_to_end"] = end_to_end(models_, table, backend, args)
    rows.append((f"{k} models: ensemble predict end to end ({backend})", found["end_to_end"], "decode + models + vote, from files"))
    if not args.no_eager_end_to_end:
        found["end_to_end_eager"] = end_to_end(models_, table, "torch", args)
        rows.append((f"{k} models: ensemble predict end to end (eager PyTorch)", found["end_to_end_eager"], "today's path"))
    found["backend"], found["k"] = backend, k
    return found


def ensemble_table(images: list[tuple[str, str]]):
    import pandas as pd

    return pd.DataFrame({PATH: [p for p, _ in images], LABEL: [""] * len(images), PATIENT: [""] * len(images)})


def end_to_end(models_, table, backend: str, args) -> float:
    """Images/s of ensemble.predict from files; the predictor (export, session) is built before, once per ensemble."""
    ensemble.predict(models_, table.head(args.batch), backend=backend, batch_size=args.batch)  # warm-up
    started = time.perf_counter()
    ensemble.predict(models_, table, backend=backend, batch_size=args.batch)
    return len(table) / (time.perf_counter() - started)


# --- main ---------------------------------------------------------------------------------------


def print_rows(rows: list, header: str) -> None:
    print(header)
    for name, value, note in rows:
        shown = f"{value:9.1f} img/s" if value is not None else " " * 15
        print(f"  {name:<58} {shown}  {note}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    args.threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        folder = Path(tmp)
        os.environ.setdefault(onnx_runtime.CACHE_ENV, str(folder / "onnx-cache"))
        images = folder_images(args.image_dir) if args.image_dir else write_images(folder / "images", args.images, args.source_size)
        spec = PreprocessSpec(image_size=args.size)
        pixels = np.stack([load_preprocessed(p, spec) for p, _ in images])
        batches = [pixels[i : i + args.batch] for i in range(0, len(pixels), args.batch)]
        labels = np.array([label == "all" for _, label in images], dtype=int)
        run = args.run or synthetic_run(folder / "run", args.folds, args.size)
        model = ensemble.load_ensemble(run, "teachers" if args.run is None else "students", "cpu").members[0].model
        rows: list = []
        load = os.getloadavg()
        single = model_ceilings(model, batches, labels, device, args, folder, rows)
        whole = ensemble_phase(run, images, batches, device, args, rows)
    load_after = os.getloadavg()
    eager = single.get("eager fp32")
    ratio = whole["end_to_end"] / whole["ceiling_k"]
    speedup = whole["end_to_end"] / whole["end_to_end_eager"] if "end_to_end_eager" in whole else float("nan")
    report = {"device": str(device), "threads": args.threads, "images": len(images), "size": args.size, "batch": args.batch,
              "k": whole["k"], "backend": whole["backend"], "load_before": load, "load_after": load_after,
              "rows": [{"name": n, "images_per_s": v, "note": note} for n, v, note in rows], **single, **whole,
              "ratio_end_to_end_vs_ort_ceiling": ratio, "speedup_vs_eager": speedup}
    print_rows(rows, f"{len(images)} images, {args.size} px, batch {args.batch}, {args.threads} threads, {device}, "
                     f"load average {load[0]:.2f} -> {load_after[0]:.2f}; 1-model eager ceiling {eager or float('nan'):.1f} img/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"ratio_end_to_end_vs_ort_ceiling={ratio:.3f} speedup_vs_eager={speedup:.2f}")
    return report


if __name__ == "__main__":
    main()
