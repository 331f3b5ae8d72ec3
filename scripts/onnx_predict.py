#!/usr/bin/env python
"""Classify images with an ensemble exported by ``noisystudent ensemble export``.

Needs only numpy, pillow and onnxruntime: neither PyTorch nor noisystudent.
Everything besides the graph (classes, preprocessing, voting rule) is read
from the file's metadata. The output CSV has the columns of ``noisystudent
ensemble predict``: path, prob_<class>..., pred, agreement, vote_fold<k>...,
with the same probabilities (within 1e-4) and the same calls.

    python scripts/onnx_predict.py ensemble.onnx cells/ more.bmp --out predictions.csv

Copy this file anywhere: it imports nothing from this repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


# --- preprocessing: the same steps as noisystudent.data.images.load_rgb + preprocess.preprocess ---


REDUCE_ABOVE = 4  # as noisystudent.data.preprocess: sides above 4 x image_size are shrunk before padding


def load_rgb(path: Path, max_side: int | None = None) -> Image.Image:
    """8-bit RGB; transparency on black, 16-bit data scaled by 1/257 (as noisystudent.data.images).

    With ``max_side``, a larger image is first shrunk by an integer factor (box average) in its own mode.
    """
    with Image.open(path) as image:
        image.load()
        return _to_rgb(_reduce(image, max_side) if max_side else image)


def _reduce(image: Image.Image, max_side: int) -> Image.Image:
    factor = math.ceil(max(image.size) / max_side)
    if factor < 2:
        return image
    if image.mode in ("P", "PA", "1"):  # palette indices and bits cannot be averaged
        image = _to_rgb(image)
    elif image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        image = image.convert("I")
    return image.reduce(factor)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    return (image.convert("L") if image.mode == "1" else image).convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode != "F" and low >= 0 and high <= 65535:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def preprocess(image: Image.Image, spec: dict) -> np.ndarray:
    """Crop black borders, equalise, centre-crop, pad to a square with black, resize: uint8 (3, S, S)."""
    image = _reduce(image, REDUCE_ABOVE * spec["image_size"]).convert("RGB")
    if spec["crop_black"]:
        bright = np.asarray(image).max(axis=2) > spec["crop_threshold"]
        rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
        if rows.size:
            image = image.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    image = _equalize(image, spec["equalize"])
    fraction = spec["center_crop"]
    if fraction < 1:
        width, height = max(1, round(image.width * fraction)), max(1, round(image.height * fraction))
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    if image.width != image.height:
        side = max(image.size)
        square = Image.new("RGB", (side, side))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = square
    size = spec["image_size"]
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def _equalize(image: Image.Image, mode: str) -> Image.Image:
    if mode == "grey":
        grey = ImageOps.equalize(image.convert("L"))
        return Image.merge("RGB", (grey, grey, grey))
    if mode == "channels":
        return ImageOps.equalize(image)
    if mode == "luminance":
        y, cb, cr = image.convert("YCbCr").split()
        return Image.merge("YCbCr", (ImageOps.equalize(y), cb, cr)).convert("RGB")
    return image


# --- running the graph ---


def image_paths(inputs: list[str]) -> list[Path]:
    """Files as given; folders searched recursively for images, sorted."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        else:
            found.append(item)
    return found


def predict(model: str, paths: list[Path], batch_size: int = 64, threads: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, outputs over all images); images decode in threads while the previous batch runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["noisystudent"])
    decode = lambda path: preprocess(load_rgb(path, REDUCE_ABOVE * meta["preprocess"]["image_size"]), meta["preprocess"])  # noqa: E731
    names = [output.name for output in session.get_outputs()]
    parts: dict[str, list] = {name: [] for name in names}
    with ThreadPoolExecutor() as pool:
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        pending = [pool.submit(lambda b=b: np.stack(list(map(decode, b)))) for b in batches[:1]]
        for index in range(len(batches)):
            if index + 1 < len(batches):  # decode the next batch while this one runs
                pending.append(pool.submit(lambda b=batches[index + 1]: np.stack(list(map(decode, b)))))
            for name, value in zip(names, session.run(names, {meta["input"]: pending[index].result()})):
                parts[name].append(value)
            pending[index] = None  # free the pixels
    return meta, {name: np.concatenate(values) for name, values in parts.items()}


def write_csv(out: Path, paths: list[Path], meta: dict, outputs: dict[str, np.ndarray]) -> None:
    classes = meta["classes"]
    header = ["path", *(f"prob_{c}" for c in classes), "pred", "agreement", *(f"vote_fold{k}" for k in meta["folds"])]
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, path in enumerate(paths):
            votes = outputs["fold_probs"][i].argmax(axis=1)
            writer.writerow([str(path), *(repr(float(p)) for p in outputs["probs"][i]), classes[outputs["pred"][i]],
                             repr(float(outputs["agreement"][i])), *(classes[v] for v in votes)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ONNX file written by noisystudent ensemble export")
    parser.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--out", default="predictions.csv", help="per-image CSV")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: one per core)")
    args = parser.parse_args(argv)
    paths = image_paths(args.inputs)
    if not paths:
        print(f"No images found in {', '.join(args.inputs)}.", file=sys.stderr)
        return 2
    meta, outputs = predict(args.model, paths, args.batch_size, args.threads)
    write_csv(Path(args.out), paths, meta, outputs)
    print(f"{len(paths)} images -> {args.out} ({len(meta['folds'])} models, {meta['voting']} voting)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
