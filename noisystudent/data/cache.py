"""Decode once: the whole data set as one uint8 array on disk.

PIL decodes a 450x450 BMP at about 440 images/s per core, while the GPU trains
at thousands per second, so images are decoded and preprocessed exactly once,
in parallel, into ``cache_dir/images-<fingerprint>.npy`` (uint8, N x 3 x S x S)
and read back through a memory map. Training then gathers batches by row index
(on the GPU when the array fits there) and adds noise on the device.

The fingerprint covers every file's path, size and modification time, the
preprocessing settings and ``CACHE_VERSION``; changing any of them gives a new
file. The .npy is written under a temporary name and renamed when complete,
then a JSON sidecar (paths in row order, fingerprint, spec) is written the same
way (both through ``atomic.py``): a cache counts as complete only when both
exist, so an interrupted build leaves nothing that looks complete. Several
processes may share a cache folder; a build removes only the temporary files
of builds whose process has died.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisystudent import atomic, processes
from noisystudent.atomic import NO_SPACE_ERRNOS, no_space_message
from noisystudent.data import parallel
from noisystudent.data import preprocess as _preprocess
from noisystudent.data.pool import PoolFile
from noisystudent.data.preprocess import PreprocessSpec
from noisystudent.device import to_device
from noisystudent.errors import DataError, DiskFullError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
SERIAL_BELOW = 64  # smaller sets are decoded in-process: starting workers costs more
MAX_CHUNK = 256  # images per task sent to a worker process
IN_FLIGHT = 4  # tasks per worker submitted ahead of the results
# The pixels are hashed in blocks of this many bytes when the cache is built, and
# checked against those hashes each time a run opens it: a cache overwritten or
# edited since (the .npy header kept) is refused instead of trained on.
HASH_BLOCK = 16 * 2**20
HASH_THREADS = 4  # blocks hashed at once (HASH_THREADS x HASH_BLOCK bytes in memory)
# A device-resident cache may use the GPU memory that is free when it is placed
# (at the first batch: the model and optimizer already sit there) minus
# GPU_WORKING_SET for what training and prediction still allocate (activations
# for backward, cuDNN/compile workspaces, the eval batch, the allocator's
# fragmentation), and then only (1 - GPU_HEADROOM) of what is left. 16 GiB is
# an estimate with room to spare for EfficientNet-B0 at 224 px and batch 128 in
# bf16 (not yet measured on a GPU: scripts/gpu_check.sh prints the peaks).
GPU_WORKING_SET = 16 * 2**30  # bytes
GPU_HEADROOM = 0.1  # fraction of the free memory beyond the working set left unused
# With --concurrent N, N processes place their caches on one device, each
# measuring free memory before the others have allocated theirs: each reserves
# N working sets and takes a 1/N share of the rest (ImageCache.device_sharers).

Progress = Callable[[int, int], None]
# Why parallel decoding may fail where decoding in-process still works: a thread or
# process that cannot start (address space, thread or process limit), a worker killed
# (out of memory). A worker's DataError is not among them: it names a bad image.
WORKER_FAILURES = (BrokenProcessPool, RuntimeError, MemoryError, OSError)
WORKER_ERRNOS = {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
# Address space a process pool may need in this process (its two helper threads'
# stacks and malloc arenas, with room to spare): below it, a thread the pool cannot
# start would hang it, so threads (which adapt) decode instead.
PROCESS_POOL_SPACE = 2 * 2**30


def fingerprint_files(paths: Iterable[str]) -> str:
    """sha256 of the sorted (path, size, mtime_ns) of every file."""
    return fingerprint_sorted(sorted(str(p) for p in paths))


def fingerprint_sorted(paths: Iterable[str]) -> str:
    """``fingerprint_files`` of paths that come sorted: streamed, for a pool of millions."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise DataError(f"The image {path} cannot be read ({error.strerror or error}).") from error
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_fingerprint(paths: Iterable[str], spec: PreprocessSpec, pool: PoolFile | None = None) -> str:
    """Fingerprint of the cache of ``paths`` (then the ``pool``) preprocessed with ``spec``."""
    text = f"noisystudent-cache-v{CACHE_VERSION}\n{spec.key()}\n{fingerprint_files(paths)}"
    if pool is not None:  # a cache without a pool keeps the fingerprint it always had
        text += f"\npool {pool.count}\n{fingerprint_sorted(pool.paths())}"
    return hashlib.sha256(text.encode()).hexdigest()


class ImageCache:
    """A complete cache: ``array[i]`` is the preprocessed image ``paths[i]``; the pool's images follow.

    The ``pool_count`` images of an unlabelled pool are rows ``pool_start`` +
    their position in the pool file: they have no path index, so that a pool
    of millions costs no memory here.
    """

    def __init__(self, npy_path: Path, paths: list[str], fingerprint: str, pool_count: int = 0) -> None:
        self.npy_path = Path(npy_path)
        self.paths = list(paths)
        self.fingerprint = fingerprint
        self.pool_start, self.pool_count = len(self.paths), int(pool_count)
        # Copy-on-write map: read-only on disk but writable for torch.from_numpy.
        self.array: np.ndarray = np.load(self.npy_path, mmap_mode="c")
        expected = (len(self.paths) + self.pool_count, 3)
        if self.array.dtype != np.uint8 or self.array.ndim != 4 or self.array.shape[:2] != expected:
            raise DataError(f"The image cache {self.npy_path} does not match its sidecar; delete it.")
        # a hash index in pandas' C tables: about a fifth of a dict's memory per path, for pools of millions
        self._rows = pd.Index(self.paths, dtype=object)
        self._storage: dict[torch.device, torch.Tensor] = {}
        self._offset, self._row_bytes = int(self.array.offset), int(np.prod(self.array.shape[1:]))

    # Processes placing a cache on the same device at once (kfold --concurrent N); set before the first batch.
    device_sharers: int = 1

    @classmethod
    def open(cls, npy_path: Path) -> "ImageCache":
        """Open a complete cache from its .npy path (the sidecar lies next to it)."""
        sidecar = json.loads(_sidecar_path(Path(npy_path)).read_text())
        if sidecar.get("version") != CACHE_VERSION:
            raise DataError(f"The image cache {npy_path} was written by another version.")
        return cls(Path(npy_path), sidecar["paths"], sidecar["fingerprint"], sidecar.get("pool", 0))

    def __len__(self) -> int:
        return self.pool_start + self.pool_count

    @property
    def image_size(self) -> int:
        return int(self.array.shape[-1])

    def index_of(self, paths: Iterable[str], missing_ok: bool = False) -> np.ndarray:
        """Rows of ``paths`` (int64) among the indexed (non-pool) images; DataError naming the first
        unknown path, or -1 for it with ``missing_ok``."""
        paths = [str(p) for p in paths]
        rows = self._rows.get_indexer(pd.Index(paths, dtype=object)).astype(np.int64)
        if (rows < 0).any() and not missing_ok:
            raise DataError(f"The image {paths[int(np.argmax(rows < 0))]} is not in the image cache.")
        return rows

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The whole cache as a uint8 tensor, placed once per device.

        CPU: the memory map itself (no copy). CUDA: a copy on the device when
        it fits in ``device_cache_budget`` (free memory less the training
        working set ``GPU_WORKING_SET`` and ``GPU_HEADROOM``); otherwise the
        memory map stays on the host and ``batch`` gathers each batch into
        pinned memory and copies it asynchronously (pinning the whole array
        would cost up to twice its size: PyTorch rounds pinned blocks up to a
        power of two).
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._storage:
            self._storage[device] = self._place(device)
        return self._storage[device]

    def batch(self, rows: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``rows`` as uint8 (B, 3, S, S) on ``device``, without a host sync.

        Pass ``rows`` on the device when the cache fits there, on the CPU
        otherwise (moving CUDA rows to the CPU would synchronise).
        """
        device = torch.device(device)
        if device.type == "cpu":
            return torch.from_numpy(self.read_rows(rows.numpy()))
        storage = self.tensor(device)
        if storage.device.type == device.type:
            return storage.index_select(0, to_device(rows, storage.device))
        # Pinned staging blocks come from PyTorch's caching host allocator,
        # which keeps each one until its asynchronous copy has finished.
        staged = torch.empty((rows.numel(), *storage.shape[1:]), dtype=torch.uint8, pin_memory=True)
        self.read_rows(rows.cpu().numpy(), out=staged.numpy())
        return staged.to(device, non_blocking=True)

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images ``rows`` as uint8 (B, 3, S, S), read from the file with pread, one read per run of consecutive rows.

        Not through the memory map: the pages of a mapped file that a process has
        read count towards its resident memory until the kernel needs them, so
        a pass over a cache of a million images would show up as gigabytes of
        resident memory. Read this way they stay in the page cache, shared and
        reclaimable, and the process holds one batch.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.array.shape[1:]), np.uint8) if out is None else out
        if not len(rows):
            return out
        if not hasattr(os, "pread"):  # Windows: through the memory map
            out[...] = self.array[rows]
            return out
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"Rows {rows.min()}..{rows.max()} are outside the image cache of {len(self)} images.")
        flat = out.reshape(len(rows), self._row_bytes)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        starts = np.flatnonzero(np.r_[True, np.diff(ordered) != 1])
        handle = os.open(self.npy_path, os.O_RDONLY)
        try:
            for start, stop in zip(starts, np.r_[starts[1:], len(ordered)]):
                size = int(stop - start) * self._row_bytes
                data = os.pread(handle, size, self._offset + int(ordered[start]) * self._row_bytes)
                if len(data) != size:
                    raise DataError(f"The image cache {self.npy_path} is shorter than its sidecar says; delete it.")
                flat[order[start:stop]] = np.frombuffer(data, np.uint8).reshape(-1, self._row_bytes)
        finally:
            os.close(handle)
        return out

    def _place(self, device: torch.device) -> torch.Tensor:
        host = torch.from_numpy(self.array)
        if device.type == "cpu":
            return host
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = device_cache_budget(free, sharers=self.device_sharers)
            if host.nbytes <= budget:
                log.info("Image cache on %s (%.2f GiB).", device, host.nbytes / 2**30)
                return host.to(device)
            log.info("Image cache stays in host memory (%.2f GiB): more than the %.2f GiB %s can spare "
                     "beside a %.0f GiB training working set%s.", host.nbytes / 2**30, budget / 2**30, device,
                     GPU_WORKING_SET / 2**30,
                     f" for each of {self.device_sharers} processes" if self.device_sharers > 1 else "")
            return host
        return host.to(device)


def device_cache_budget(free_bytes: int, working_set: int | None = None, headroom: float | None = None,
                        sharers: int = 1) -> float:
    """Bytes of GPU memory a device-resident cache may take when ``free_bytes`` are free.

    ``sharers`` processes placing caches on the device at once each reserve
    every process's working set and take an equal share of what is left.
    """
    working_set = GPU_WORKING_SET if working_set is None else working_set
    headroom = GPU_HEADROOM if headroom is None else headroom
    sharers = max(1, sharers)
    return max(0.0, free_bytes - working_set * sharers) * (1 - headroom) / sharers


def build_cache(
    paths: Sequence[str],
    spec: PreprocessSpec,
    cache_dir: Path,
    workers: int = 0,
    progress: Progress | None = None,
    pool: PoolFile | None = None,
) -> ImageCache:
    """Open the cache of ``paths`` (then the ``pool``, in its order) under ``spec``, decoding it first if needed.

    Rows follow ``paths`` when the cache is built; a cache found on disk keeps
    the order it was built with, so always look rows up with ``index_of``.
    ``workers`` = 0 uses every core. Unreadable images raise DataError.
    """
    paths = [str(p) for p in paths]
    if not paths and pool is None:
        raise DataError("There are no images to decode.")
    if len(set(paths)) != len(paths):
        raise DataError("The list of images to decode contains duplicates.")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = cache_fingerprint(paths, spec, pool)
    npy_path = cache_dir / f"images-{fingerprint[:24]}.npy"
    _remove_stale_temps(npy_path)
    cache = _open_complete(npy_path, fingerprint)
    if cache is None:
        pool_count = pool.count if pool is not None else 0
        try:
            hashes = _decode_all(_Rows(paths, pool), spec, npy_path, workers, progress)
            _write_sidecar(npy_path, paths, fingerprint, spec, pool_count, hashes)
        except DiskFullError as error:  # name the cache the user knows, also when its sidecar did not fit
            raise DiskFullError(no_space_message(npy_path)) from error
        cache = ImageCache(npy_path, paths, fingerprint, pool_count)
    elif progress is not None:
        progress(len(cache), len(cache))
    return cache


class _Rows:
    """The images to decode in row order: ``paths``, then the pool's, read from its file as the chunks need them."""

    def __init__(self, paths: list[str], pool: PoolFile | None) -> None:
        self.paths, self.pool = paths, pool

    def __len__(self) -> int:
        return len(self.paths) + (self.pool.count if self.pool is not None else 0)

    def chunks(self, workers: int) -> Iterator[tuple[int, list[str]]]:
        """(first row, paths) of about four chunks per worker, at most MAX_CHUNK rows, in row order."""
        pool_paths = self.pool.paths() if self.pool is not None else iter(())
        size = _chunk_size(len(self), workers)
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            part = self.paths[start:stop]
            part += list(itertools.islice(pool_paths, stop - start - len(part)))
            yield start, part


def _sidecar_path(npy_path: Path) -> Path:
    return npy_path.with_suffix(".json")


def _open_complete(npy_path: Path, fingerprint: str) -> ImageCache | None:
    """The cache at ``npy_path`` if it is complete, matches and its pixels are the ones decoded, else None."""
    if not (npy_path.exists() and _sidecar_path(npy_path).exists()):
        return None
    try:
        cache = ImageCache.open(npy_path)
        recorded = json.loads(_sidecar_path(npy_path).read_text())
    except (OSError, ValueError, KeyError, DataError) as error:
        log.warning("Rebuilding the image cache %s: %s", npy_path, error)
        return None
    if cache.fingerprint != fingerprint:
        return None
    if recorded.get("hash_block") != HASH_BLOCK or not isinstance(recorded.get("pixel_hashes"), list):
        # derived data: a cache without hashes (an older version's) is decoded again, never trusted unverified
        log.warning("Rebuilding the image cache %s: it records no hashes of its pixels.", npy_path)
        return None
    check_pixels(npy_path, recorded["pixel_hashes"])
    return cache


def pixel_hashes(npy_path: Path) -> list[str]:
    """SHA-1 of each HASH_BLOCK bytes of the pixels of a .npy (its header excluded), in order.

    Blocks are hashed on up to HASH_THREADS threads (hashlib releases the GIL);
    where no thread can be started (a tight address-space limit) on this one.
    """
    offset = int(np.load(npy_path, mmap_mode="r").offset)  # where the header ends
    starts = range(offset, os.path.getsize(npy_path), HASH_BLOCK)
    handle = os.open(npy_path, os.O_RDONLY)

    def one(start: int) -> str:
        return hashlib.sha1(_read_block(handle, start), usedforsecurity=False).hexdigest()

    try:
        try:
            threads = min(HASH_THREADS, os.cpu_count() or 1) if hasattr(os, "pread") else 1
            with parallel.Threads(max_workers=threads, thread_name_prefix="hash") as pool:
                return list(pool.map(one, starts))
        except RuntimeError:  # can't start new thread
            return [one(start) for start in starts]
    finally:
        os.close(handle)


def _read_block(handle: int, start: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(handle, HASH_BLOCK, start)
    os.lseek(handle, start, os.SEEK_SET)  # Windows: no pread, and one thread (pixel_hashes)
    return os.read(handle, HASH_BLOCK)


def check_pixels(npy_path: Path, recorded: list[str]) -> None:
    """DataError when the pixels of ``npy_path`` are not the ones its build hashed (edited, overwritten, truncated)."""
    found = pixel_hashes(npy_path)
    if found == recorded:
        return
    first = next((i for i, (a, b) in enumerate(zip(found, recorded)) if a != b), min(len(found), len(recorded)))
    raise DataError(
        f"The image cache {npy_path} has changed since it was built (its bytes {first * HASH_BLOCK:,} to "
        f"{(first + 1) * HASH_BLOCK:,} differ from the hash recorded in its .json); delete both files to decode the images again."
    )


def _remove_stale_temps(npy_path: Path) -> None:
    """Delete temporary files of this cache left by builds that died (another live build's are kept)."""
    for target in (npy_path, _sidecar_path(npy_path)):
        for temp in atomic.remove_stale_temps_of(target) + _remove_old_temps(target):
            log.info("Removing %s left by an interrupted build.", temp)


def _remove_old_temps(target: Path) -> list[Path]:
    """Delete ``<target>.tmp-<pid>`` files, as earlier versions named their temporary files, whose process is gone."""
    removed = []
    for temp in target.parent.glob(f"{glob.escape(target.name)}.tmp-*"):
        pid = temp.name.rsplit("-", 1)[-1]
        # this version never writes such a name: one with this process's pid had it before us
        if not pid.isdigit() or int(pid) == os.getpid() or not processes.is_alive(int(pid)):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def _decode_all(rows: _Rows, spec: PreprocessSpec, npy_path: Path, workers: int, progress: Progress | None) -> list[str]:
    """Decode every image into a temporary .npy, then rename it into place; return its ``pixel_hashes``."""
    shape = (len(rows), 3, spec.image_size, spec.image_size)
    # the temporary file stays in place while the worker processes write into it through their memory maps
    with atomic.atomic_path(npy_path) as temp:
        array = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=shape)
        del array  # header written; workers open the file themselves
        reserve_space(temp, npy_path)
        workers = workers or os.cpu_count() or 1
        log.info("Decoding %d images into %s with %d process(es).", len(rows), npy_path.name, workers)
        if workers == 1 or len(rows) < SERIAL_BELOW:
            _decode_serial(rows, spec, temp, progress)
        else:
            try:
                _decode_parallel(rows, spec, temp, workers, progress)
            except WORKER_FAILURES as error:
                if isinstance(error, OSError) and error.errno not in WORKER_ERRNOS:
                    raise
                # a worker could not start or died (out of memory, a process limit): every row is decoded again, here
                log.warning("Parallel decoding failed (%s: %s); decoding in this process instead.", type(error).__name__, error)
                _decode_serial(rows, spec, temp, progress)
        return pixel_hashes(temp)


def reserve_space(temp: Path, target: Path) -> None:
    """Allocate every block of the sparse .npy before any image is written into its memory map.

    A store through a memory map into a sparse file on a full disk cannot fail
    politely: the kernel kills the process with SIGBUS (exit 135, no message).
    Allocating first turns a full disk into ENOSPC here, and one sentence.
    """
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        _check_free_space(temp, target)
        return
    handle = os.open(temp, os.O_RDWR)
    try:
        os.posix_fallocate(handle, 0, os.fstat(handle).st_size)
    except OSError as error:
        if error.errno in NO_SPACE_ERRNOS:
            raise DiskFullError(no_space_message(target)) from error
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        _check_free_space(temp, target)  # the file system cannot allocate ahead: compare with the free space
    finally:
        os.close(handle)


def _check_free_space(temp: Path, target: Path) -> None:
    stats = os.statvfs(temp.parent)
    if stats.f_bavail * stats.f_frsize < os.path.getsize(temp):
        raise DiskFullError(no_space_message(target))


def _chunk_size(count: int, workers: int) -> int:
    """Rows per decoding task: about four tasks per worker, at most MAX_CHUNK rows."""
    return max(1, min(MAX_CHUNK, math.ceil(count / (4 * workers))))


def _decode_serial(rows: _Rows, spec: PreprocessSpec, temp: Path, progress: Progress | None) -> None:
    done = 0
    for start, paths in rows.chunks(1):
        done += _preprocess.decode_into(temp, start, paths, spec)
        if progress is not None:
            progress(done, len(rows))


def _decode_parallel(rows: _Rows, spec: PreprocessSpec, temp: Path, workers: int, progress: Progress | None) -> None:
    """Chunks sent to worker processes, at most IN_FLIGHT per worker pending: the task list is never whole in memory."""
    executor = _executor(min(workers, math.ceil(len(rows) / _chunk_size(len(rows), workers))))
    pending: set[Future] = set()
    done = 0
    try:
        for start, paths in rows.chunks(workers):
            pending.add(executor.submit(_preprocess.decode_into, str(temp), start, paths, spec))
            if len(pending) >= IN_FLIGHT * workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                done = _collect(finished, done, len(rows), progress)
        _collect(as_completed(pending), done, len(rows), progress)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _executor(workers: int) -> Executor:
    """Worker processes, or threads where processes would run the caller's script again."""
    if not parallel.processes_allowed():
        log.warning("The main script has no `if __name__ == \"__main__\":` guard, which worker processes need "
                    "(they import it again); decoding images with threads instead. Add the guard for full speed.")
        return parallel.Threads(max_workers=workers, thread_name_prefix="decode")
    left = parallel.address_space_left()
    if left is not None and left < PROCESS_POOL_SPACE:
        log.info("The address-space limit leaves %.1f GiB; decoding images with threads.", left / 2**30)
        return parallel.Threads(max_workers=workers, thread_name_prefix="decode")
    # forkserver/spawn: safe after CUDA or threads started, and the workers
    # import only the preprocessing module (numpy + PIL), not torch.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _collect(finished: Iterable[Future], done: int, total: int, progress: Progress | None) -> int:
    for future in finished:
        done += future.result()  # re-raises a worker's DataError
        if progress is not None:
            progress(done, total)
    return done


def _write_sidecar(npy_path: Path, paths: list[str], fingerprint: str, spec: PreprocessSpec, pool_count: int,
                   hashes: list[str]) -> None:
    record = {"version": CACHE_VERSION, "fingerprint": fingerprint, "spec": asdict(spec), "paths": paths,
              "hash_block": HASH_BLOCK, "pixel_hashes": hashes}
    if pool_count:  # the pool's paths are the pool file's, in its order (the fingerprint covers them)
        record["pool"] = pool_count
    atomic.write_text(_sidecar_path(npy_path), json.dumps(record))
