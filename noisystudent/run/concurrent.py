"""``--concurrent N``: N fold models trained at once on one machine, as worker processes.

At the C-NMC study's batch of 15 one B0 keeps an H200 about a tenth busy: the
GPU waits on kernel launches, not on arithmetic. Several processes, each
training another fold on the same device, fill it (with CUDA MPS their kernels
run side by side; without it the driver time-slices them). The workers are
ordinary joiners of the run folder (docs/scale.md): each claims unfinished
folds under the run's lock, so the process route needs no new protocol and a
fold's results are those of a sequential run (bit-identical on a CPU at the
same thread count, tests/test_concurrent.py).

Why processes and not one batched module (``torch.func.stack_module_state`` +
``vmap``): the folds train on different images, with different samplers,
schedules, early stopping and pseudo-labels, and EfficientNet's BatchNorm and
stochastic depth keep per-model state that ``vmap`` would have to carry by
hand; a process per fold reuses everything (resume, claims, checkpoints) as it
is, and a crash costs one fold's current epoch, not all of them. Measured
(scripts/bench_batched.py, docs/throughput.md): on a CPU the vmap-ed module
trains at 0.72x the speed of the same models one after another.

On a GPU the processes share its memory: each image cache is placed for N
sharers (``ImageCache.device_sharers``, ``cache.device_cache_budget``).

The workers are started with ``python -c`` and read their settings from
stdin, so they never re-import the caller's ``__main__`` (a plain script
without a main guard works). Their console output goes to a temporary file,
shown in the log if a worker fails; their log records go to RUN/run.log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from noisystudent.errors import UserError
from noisystudent.termination import sigterm_as_interrupt

logger = logging.getLogger(__name__)

WORKER_ENTRY = "from noisystudent.run.pipeline import fold_worker_main; fold_worker_main()"
STOP_WAIT_S = 60.0  # how long a worker may take to release its claim after Ctrl-C before it is killed
MPS_PIPE = Path("/tmp/nvidia-mps")  # nvidia-cuda-mps-control's default pipe directory


@dataclass
class FoldWorkers:
    """The worker processes started for one run; ``wait`` returns the exit codes of those that failed."""

    processes: list[subprocess.Popen] = field(default_factory=list)
    outputs: list[IO[bytes]] = field(default_factory=list)

    def wait(self) -> list[int]:
        codes = [process.wait() for process in self.processes]
        for number, (code, output) in enumerate(zip(codes, self.outputs), start=1):
            if code != 0:
                logger.warning("Worker %d of --concurrent stopped with exit code %d; its unfinished folds are trained by "
                               "this process. Its last output:\n%s", number, code, _tail(output))
        return [code for code in codes if code != 0]

    def stop(self) -> None:
        """Ask every running worker to stop as Ctrl-C would (so it releases its claim), then make sure.

        SIGTERM, not SIGINT: a worker stops on it as on Ctrl-C (termination.py), and a shell that
        starts a job in the background makes it, and so its workers, ignore SIGINT.
        """
        running = [p for p in self.processes if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_threads(total: int, concurrent: int) -> int:
    """CPU threads per process when ``concurrent`` processes share ``total``: at least one each.

    >>> worker_threads(16, 4), worker_threads(2, 4)
    (4, 1)
    """
    return max(1, total // max(1, concurrent))


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """This process's torch CPU threads while other processes share the cores; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def payload(config: dict[str, Any], run: Path, only_folds: str | None, threads: int, sharers: int = 1) -> bytes:
    """What a worker reads from stdin: the run's settings, its folder, the folds it may take, its CPU threads,
    and how many processes share the device (for the image cache's share of GPU memory)."""
    return json.dumps({"config": config, "run": str(run), "only_folds": only_folds, "threads": threads,
                       "sharers": sharers}).encode()


def read_payload(stream: IO[bytes]) -> dict[str, Any]:
    return json.loads(stream.read().decode())


def run_worker(work: Callable[[dict[str, Any]], None]) -> None:
    """The body of a started process: ``work(job)`` on the job read from stdin, at the job's CPU threads.

    Exits 0 when done, 130 after Ctrl-C or SIGTERM (claims released on the way
    out), 2 with the sentence on stderr for a refused input, 1 on any other error.
    """
    job = read_payload(sys.stdin.buffer)
    torch.set_num_threads(job["threads"])
    try:
        with sigterm_as_interrupt():
            work(job)
    except KeyboardInterrupt:
        sys.exit(130)
    except UserError as error:
        print(error, file=sys.stderr)
        sys.exit(2)


@contextmanager
def fold_workers(config: dict[str, Any], run: Path, only_folds: str | None, count: int, threads: int,
                 sharers: int) -> Iterator[FoldWorkers]:
    """Start ``count`` workers that join ``run``; stop them if the caller leaves early (an error, Ctrl-C).

    ``sharers``: the processes on the device in all, this one and its workers included.
    """
    if count > 0:
        _log_sharing(config.get("device", "auto"), count + 1)
    job = payload(config, run, only_folds, threads, sharers=sharers)
    with start_processes(WORKER_ENTRY, [job] * count, threads) as workers:
        yield workers


@contextmanager
def start_processes(entry: str, jobs: list[bytes], threads: int) -> Iterator[FoldWorkers]:
    """One ``python -c entry`` process per job, each reading its job from stdin; all stopped if the caller leaves early."""
    workers = FoldWorkers()
    try:
        for job in jobs:
            output = tempfile.TemporaryFile(prefix="noisystudent-worker-")
            process = subprocess.Popen([sys.executable, "-c", entry], stdin=subprocess.PIPE, stdout=output,
                                       stderr=subprocess.STDOUT, env=_worker_environment(threads))
            workers.processes.append(process)
            workers.outputs.append(output)
            process.stdin.write(job)
            process.stdin.close()
        yield workers
    except BaseException:
        workers.stop()
        raise
    finally:
        for output in workers.outputs:
            output.close()


def _worker_environment(threads: int) -> dict[str, str]:
    """The caller's environment with OpenMP sized to the worker's share of the cores (read before torch starts)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def _log_sharing(device: str, processes: int) -> None:
    if device == "cpu" or not torch.cuda.is_available():
        logger.info("Training %d fold models at once on the CPU, %d threads each.", processes,
                    worker_threads(torch.get_num_threads(), processes))
    elif MPS_PIPE.exists() or os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        logger.info("Training %d fold models at once on one GPU through CUDA MPS.", processes)
    else:
        logger.info("Training %d fold models at once on one GPU, time-sliced by the driver; starting CUDA MPS "
                    "(nvidia-cuda-mps-control -d) lets their kernels run side by side.", processes)


def _tail(output: IO[bytes], limit: int = 2000) -> str:
    output.seek(0, os.SEEK_END)
    size = output.tell()
    output.seek(max(0, size - limit))
    return output.read().decode(errors="replace").strip() or "(nothing)"
