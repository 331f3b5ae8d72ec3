"""Data parallelism under ``torchrun``: one process per device, DistributedDataParallel, sharded prediction.

``torchrun --nproc-per-node N -m noisystudent kfold ...`` starts N processes
(ranks) that run the same pipeline on one run folder. Outside torchrun (no
``WORLD_SIZE`` > 1 in the environment) every function here is a no-op and the
single-process path is untouched, bit for bit.

The rules, and why:

- **One epoch, one order.** Every rank draws the epoch's order from the same
  generator (same seed), so sampling, oversampling and class balancing are
  exactly those of a single process. Each step takes the next ``--batch-size``
  rows of that order (the *global* batch) and gives rank r the r-th of N
  near-equal slices, so one epoch still shows every row (with its copies) once.
- **Learning rate: not scaled.** Each rank's loss is weighted by its share of
  the global batch before DDP averages the gradients, so a step is the step a
  single process takes on the whole batch; ``--lr`` keeps its meaning, and
  ``--batch-size`` is the global batch whatever N is.
- **BatchNorm.** On CUDA the model uses SyncBatchNorm (statistics over the
  global batch, as in one process). Gloo on CPU has no SyncBatchNorm, so each
  rank normalises over its slice; this, and the order in which gradients are
  summed, is why a CPU run under torchrun is close to, not equal to, a
  single-process run. Before predicting, the buffers (running statistics) of
  rank 0 are broadcast, so every rank predicts with the model rank 0 saves.
- **Noise.** Dropout, drop-connect and augmentation draws are seeded per rank
  (rank 0 keeps the single-process seeds), so ranks do not repeat one another's
  noise on different images.
- A global batch whose smallest slice would hold fewer than 2 images (only the
  last batch of an epoch, when fewer than 2N rows are left) is skipped: a
  BatchNorm layer in training mode cannot normalise a single image, and every
  rank must take every step.
- **Rank 0 alone writes** (claims, checkpoints, model.pt, predictions,
  pseudo-labels, results); the other ranks wait at a barrier and read.
- **Prediction is sharded**: rank r predicts the r-th contiguous slice of the
  rows and the slices are gathered in rank order, i.e. in the original order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from noisystudent.training import sampling

T = TypeVar("T")


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (NCCL for CUDA, Gloo for CPU); False outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in the one process that writes: rank 0 under torchrun, or the only process."""
    if active():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0  # also before the group exists (the CLI's output)


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (``LOCAL_RANK``) under torchrun; ``device`` otherwise."""
    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_parts() -> tuple:
    """Extra parts of a noise seed: none on rank 0 (the single-process seeds), the rank elsewhere."""
    return ("rank", rank()) if rank() else ()


def rank_generator(generator: torch.Generator) -> torch.Generator:
    """The augmentation generator of this rank: ``generator`` itself outside torchrun."""
    if not active():
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())  # same draw on every rank
    own = torch.Generator()
    own.manual_seed(seed + rank())
    return own


def local_batches(order: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, float]]:
    """(this rank's rows, loss weight) of every step of an epoch whose rows are ``order``."""
    steps = (local_slice(batch, batch_size) for batch in sampling.batches(order, batch_size, drop_last_if_single=True))
    return [part for part in steps if part is not None]


def local_slice(batch: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, float] | None:
    """(this rank's part of a global batch, its loss weight); None where a rank would get too few images."""
    if not active():
        return batch, 1.0
    slices = torch.tensor_split(batch, world())
    if min(len(part) for part in slices) < (2 if batch_size > 1 else 1):
        return None  # see the module docstring: every rank must take the step, none with a single image
    mine = slices[rank()]
    return mine, world() * len(mine) / len(batch)


def gather_cat(values: torch.Tensor) -> torch.Tensor:
    """The 1-D ``values`` of every rank, concatenated in rank order (their lengths may differ); itself alone otherwise."""
    if not active():
        return values
    counts = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(world())]
    dist.all_gather(counts, torch.tensor([len(values)], device=values.device))
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: len(values)] = values
    parts = [torch.empty_like(padded) for _ in range(world())]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(count.item())] for part, count in zip(parts, counts)])


def sum_over_ranks(*values: float | torch.Tensor) -> list[float]:
    """Each value summed over all ranks (the value itself outside torchrun)."""
    totals = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if active():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        totals = totals.to(device)
        dist.all_reduce(totals)
    return totals.cpu().tolist()


def wrap_model(model: torch.nn.Module, device: torch.device, some_frozen: bool) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun (``model`` itself otherwise).

    ``some_frozen``: parameters may be frozen for some epochs (backbone, head
    warm-up), so DDP must not wait for gradients they never get.
    """
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=some_frozen)


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """SyncBatchNorm under torchrun on CUDA (Gloo on CPU has none)."""
    if active() and device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before it predicts."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather_rows(predict: Callable[[torch.Tensor], np.ndarray], rows: torch.Tensor) -> np.ndarray:
    """``predict(rows)``, computed as one contiguous slice per rank and gathered in the original order."""
    if not active():
        return predict(rows)
    mine = predict(torch.tensor_split(rows, world())[rank()])
    parts: list = [None] * world()
    dist.all_gather_object(parts, mine)
    parts = [p for p in parts if p is not None and len(p)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
