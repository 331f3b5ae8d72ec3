#!/usr/bin/env python
"""K fold models trained one after another against K models batched into one module (vmap), on one device.

This is the measurement behind the route ``kfold --concurrent N`` takes (worker
processes, one fold each): a batched route would train the K fold models as
one module, ``torch.func.stack_module_state`` + ``functional_call`` under
``vmap``, so that every kernel launch serves all K models. In one process, on
the same synthetic batches (``--batch`` images per model, the cnmc-study
preset's 15 by default), it times:

1. sequential: the package's training step (``engine._train_step``: forward
   under autocast, soft cross-entropy, backward, SGD momentum) for each model
   in turn: what one process does per fold;
2. batched: one ``vmap``-ed forward and backward of all K models and one SGD
   step on the stacked parameters (the same optimizer, on stacked tensors);

and how far the two routes' weights are apart after ``--agree-steps`` steps
from the same weights on the same batches, in fp32 with dropout and stochastic
depth off (their random masks cannot match: vmap draws them per model in one
call). ``vmap`` runs each convolution of K models as one grouped convolution,
which sums in another order, so the routes agree within a tolerance, not bit
for bit. The last line is ``batched_speedup=X models=K batch=B``.

    python scripts/bench_batched.py --device cuda --models 5 --batch 15 --size 224
    python scripts/bench_batched.py --device cpu --size 64 --steps 3     # what the CPU can say
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from noisystudent import models
from noisystudent.config.run_config import RunConfig
from noisystudent.device import amp_dtype, autocast, resolve_device
from noisystudent.training import engine, optim
from noisystudent.training.engine import StepContext
from noisystudent.training.losses import soft_cross_entropy

ARCH = "efficientnet-b0"
NUM_CLASSES = 2
ROW_SEQUENTIAL = "sequential: K models, one training step each"
ROW_BATCHED = "batched: K models as one vmap-ed module"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--models", type=int, default=5, help="K fold models trained together (default 5, the study's folds)")
    p.add_argument("--batch", type=int, default=15, help="images per model per step (default 15, the cnmc-study preset)")
    p.add_argument("--size", type=int, default=224, help="image size in px (default 224)")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each route (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    p.add_argument("--agree-steps", type=int, default=2, help="steps of the fp32 agreement check (default 2)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="autocast of the timed steps: auto (bf16 on a GPU that has it, off on CPU), bf16, fp16 or off")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    args = p.parse_args(argv)
    if min(args.models, args.batch, args.size, args.steps, args.agree_steps) < 1 or args.warmup < 0:
        p.error("--models, --batch, --size, --steps and --agree-steps must be at least 1, --warmup at least 0")
    if args.amp == "fp16":
        p.error("--amp fp16 needs a GradScaler per model, which the batched route does not have; use bf16 or off")
    return args


# --- the two routes ----------------------------------------------------------------------------------


def create_models(count: int, device: torch.device, noise: bool) -> list[torch.nn.Module]:
    """``count`` B0s as the trainer builds them (seeded 0..count-1), with or without dropout and stochastic depth."""
    rate = 0.2 if noise else 0.0
    built = []
    for seed in range(count):
        torch.manual_seed(seed)
        built.append(models.create_model(ARCH, NUM_CLASSES, weights="none", dropout=rate, drop_connect=rate)
                     .to(device).train())
    return built


def synthetic_batches(count: int, batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch per model: images (K, B, 3, S, S) and one-hot targets (K, B, C), fixed by seed."""
    generator = torch.Generator().manual_seed(1234)
    images = torch.randn(count, batch, 3, size, size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (count, batch), generator=generator)
    return images.to(device), torch.nn.functional.one_hot(labels, NUM_CLASSES).float().to(device)


class Sequential:
    """Each model with its own optimizer, stepped in turn by the package's training step."""

    def __init__(self, fold_models: list[torch.nn.Module], device: torch.device, dtype: torch.dtype | None):
        channels_last = device.type == "cuda"  # as RunConfig.channels_last on a GPU
        self.models = [m.to(memory_format=torch.channels_last) if channels_last else m for m in fold_models]
        self.contexts = [StepContext(optimizer=optim.create_optimizer(m.parameters(), RunConfig(), device), device=device,
                                     amp_dtype=dtype, channels_last=channels_last) for m in self.models]

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        for k, (model, context) in enumerate(zip(self.models, self.contexts)):
            engine._train_step(model, images[k], targets[k], context)

    def weights(self) -> list[dict[str, torch.Tensor]]:
        return [dict(m.named_parameters()) for m in self.models]


class Batched:
    """The K models as stacked tensors: one vmap-ed forward/backward and one optimizer step for all of them.

    channels_last does not apply: vmap's inputs are 5-D (K, B, C, H, W).
    """

    def __init__(self, fold_models: list[torch.nn.Module], device: torch.device, dtype: torch.dtype | None):
        self.params, self.buffers = stack_module_state(fold_models)  # copies: the source models stay untouched
        self.optimizer = optim.create_optimizer(list(self.params.values()), RunConfig(), device)
        skeleton = copy.deepcopy(fold_models[0]).to("meta")  # the module's code, without weights of its own

        def loss(params, buffers, images, targets):
            with autocast(device, dtype):
                logits = functional_call(skeleton, (params, buffers), (images,))
            return soft_cross_entropy(logits, targets)

        # randomness="different": each model draws its own dropout and stochastic-depth masks
        self.gradients = vmap(grad_and_value(loss), randomness="different")

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        grads, _ = self.gradients(self.params, self.buffers, images, targets)  # BatchNorm stats update in place
        for name, param in self.params.items():
            param.grad = grads[name]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def weights(self) -> list[dict[str, torch.Tensor]]:
        return [{name: stacked[k] for name, stacked in self.params.items()} for k in range(len(self))]

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]


# --- measurement -------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_route(route, images: torch.Tensor, targets: torch.Tensor, args, device: torch.device) -> dict:
    """Images per second of ``route`` over ``--steps`` steps after ``--warmup`` (K x B images a step)."""
    for _ in range(args.warmup):
        route.step(images, targets)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        route.step(images, targets)
    sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"seconds": seconds, "images_per_s": args.steps * images.shape[0] * images.shape[1] / seconds,
            "peak_gib": peak}


def agreement(args, device: torch.device) -> dict:
    """How far the routes are apart after ``--agree-steps`` fp32 steps without random noise.

    Weights: the largest absolute difference, and the difference of all
    weights as one vector relative to how far training moved them (scale-free:
    1.0 would mean the routes disagree as much as the steps changed anything).
    Predictions: the largest difference of class probabilities on the
    batches, in eval mode.
    """
    images, targets = synthetic_batches(args.models, args.batch, args.size, device)
    start = [{n: p.detach().clone() for n, p in m.named_parameters()}
             for m in create_models(args.models, device, noise=False)]
    sequential = Sequential(create_models(args.models, device, noise=False), device, None)
    batched = Batched(create_models(args.models, device, noise=False), device, None)
    for _ in range(args.agree_steps):
        sequential.step(images, targets)
        batched.step(images, targets)
    gaps, moved, worst = 0.0, 0.0, 0.0
    for initial, alone, together in zip(start, sequential.weights(), batched.weights()):
        for name, value in alone.items():
            gap = value.detach() - together[name].detach()
            worst = max(worst, gap.abs().max().item())
            gaps += gap.pow(2).sum().item()
            moved += (value.detach() - initial[name]).pow(2).sum().item()
    return {"steps": args.agree_steps, "max_abs_weight_difference": worst,
            "difference_relative_to_update": (gaps / moved) ** 0.5 if moved else 0.0,
            "max_probability_difference": probability_gap(sequential, batched, images)}


@torch.no_grad()
def probability_gap(sequential: "Sequential", batched: "Batched", images: torch.Tensor) -> float:
    """Largest |p_sequential - p_batched| over the models' own images, both in eval mode."""
    worst = 0.0
    for k, model in enumerate(sequential.models):
        model.eval()
        state = {**{n: t[k] for n, t in batched.params.items()}, **{n: t[k] for n, t in batched.buffers.items()}}
        alone = model(images[k]).softmax(1)
        together = functional_call(model, state, (images[k],)).softmax(1)
        worst = max(worst, (alone - together).abs().max().item())
    return worst


def settings(args, device: torch.device) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "arch": ARCH, "models": args.models,
        "batch": args.batch, "size": args.size, "steps": args.steps, "warmup": args.warmup,
        "amp": str(amp_dtype(args.amp, device) or "fp32").removeprefix("torch."),
        "noise": "dropout 0.2, stochastic depth 0.2 (timed); none (agreement, fp32)",
    }


def print_report(report: dict) -> None:
    print(f"{report['settings']['device_name']}, torch {report['settings']['torch']}, {report['settings']['models']} x "
          f"B0, batch {report['settings']['batch']} per model, {report['settings']['size']} px, "
          f"amp {report['settings']['amp']}")
    for row in report["rows"]:
        peak = f", peak {row['peak_gib']:.2f} GiB" if row["peak_gib"] is not None else ""
        print(f"  {row['route']:<45} {row['images_per_s']:>10.1f} img/s  ({row['seconds']:.2f} s{peak})")
    agree = report["agreement"]
    print(f"  agreement after {agree['steps']} fp32 steps: max |weight difference| {agree['max_abs_weight_difference']:.2e}, "
          f"{agree['difference_relative_to_update']:.2e} of the update, max |probability difference| "
          f"{agree['max_probability_difference']:.2e}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = amp_dtype(args.amp, device)
    images, targets = synthetic_batches(args.models, args.batch, args.size, device)
    rows = []
    for name, route in ((ROW_SEQUENTIAL, Sequential), (ROW_BATCHED, Batched)):
        timing = time_route(route(create_models(args.models, device, noise=True), device, dtype), images, targets,
                            args, device)
        rows.append({"route": name, **timing})
        del route
        if device.type == "cuda":
            torch.cuda.empty_cache()
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    report = {"settings": settings(args, device), "rows": rows, "agreement": agreement(args, device),
              "batched_speedup": speedup}
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"batched_speedup={speedup:.2f} models={args.models} batch={args.batch}")
    return report


if __name__ == "__main__":
    main()
