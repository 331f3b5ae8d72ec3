"""What RandAugment costs on the CPU: images/s of the augmentation alone and its share of a student's training step.

Usage: python scripts/bench_randaugment.py   (batch 32 at 64 px, 2 threads, EfficientNet-B0; figures in docs/options.md)

Each time is the fastest of several batches: the one least disturbed by other processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from noisystudent import models
from noisystudent.training.augment import create_augment

BATCH, SIZE, THREADS = 32, 64, 2


def fastest(work: Callable[[], object], repeats: int = 10) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    images = torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    strong, with_randaugment = create_augment("strong"), create_augment("strong", True)
    model = models.create_model("efficientnet-b0", 2, weights="none")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, labels = strong(images, generator), torch.zeros(BATCH, dtype=torch.long)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()

    t_strong = fastest(lambda: strong(images, generator))
    t_both = fastest(lambda: with_randaugment(images, generator))
    t_step = fastest(step, 5)
    t_rand = t_both - t_strong
    print(f"batch {BATCH} at {SIZE} px, {THREADS} threads: strong {BATCH / t_strong:.0f} img/s, RandAugment alone "
          f"{BATCH / t_rand:.0f} img/s, B0 forward+backward {BATCH / t_step:.0f} img/s; "
          f"RandAugment = {t_rand / (t_step + t_both):.0%} of a student step")


if __name__ == "__main__":
    main()
