import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisystudent.data import cache as cache_module
from noisystudent.data.cache import ImageCache, build_cache, cache_fingerprint, fingerprint_files
from noisystudent.data.images import load_rgb
from noisystudent.data.preprocess import PreprocessSpec, preprocess
from noisystudent.errors import DataError

SPEC = PreprocessSpec(image_size=16, crop_black=True)


def _write_images(folder, count, seed=0, size=24):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = np.zeros((size, size, 3), np.uint8)
        pixels[3 : size - 2, 4 : size - 3] = rng.integers(0, 256, size=(size - 5, size - 7, 3))
        path = folder / f"cell_{i:03d}.bmp"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def _cache_files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_build_gives_the_pixels_of_preprocess(tmp_path):
    paths = _write_images(tmp_path / "data", 5)
    cache = build_cache(paths, SPEC, tmp_path / "cache")
    assert cache.array.shape == (5, 3, 16, 16) and cache.array.dtype == np.uint8
    assert cache.paths == paths and len(cache) == 5 and cache.image_size == 16
    for row, path in enumerate(paths):
        np.testing.assert_array_equal(cache.array[row], preprocess(load_rgb(path), SPEC))
    names = _cache_files(tmp_path / "cache")
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".npy")
    sidecar = json.loads((tmp_path / "cache" / names[0]).read_text())
    assert sidecar["paths"] == paths and sidecar["fingerprint"] == cache_fingerprint(paths, SPEC)


def test_second_build_reuses_without_decoding(tmp_path):
    paths = _write_images(tmp_path / "data", 4)
    first = build_cache(paths, SPEC, tmp_path / "cache")
    files = {name: os.stat(tmp_path / "cache" / name) for name in _cache_files(tmp_path / "cache")}
    calls = []
    second = build_cache(list(reversed(paths)), SPEC, tmp_path / "cache", progress=lambda d, t: calls.append((d, t)))
    again = {name: os.stat(tmp_path / "cache" / name) for name in _cache_files(tmp_path / "cache")}
    # a decode would have written a new .npy and renamed it into place: another inode and mtime
    assert {n: (s.st_ino, s.st_mtime_ns) for n, s in again.items()} == {n: (s.st_ino, s.st_mtime_ns) for n, s in files.items()}
    assert second.paths == paths  # order of the build; look rows up by path
    np.testing.assert_array_equal(second.array, first.array)
    np.testing.assert_array_equal(second.index_of(reversed(paths)), [3, 2, 1, 0])
    assert calls == [(4, 4)]


def test_fingerprint_changes_with_size_mtime_and_spec(tmp_path):
    paths = _write_images(tmp_path / "data", 3)
    before = fingerprint_files(paths)
    assert fingerprint_files(list(reversed(paths))) == before
    stat = os.stat(paths[0])
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    touched = fingerprint_files(paths)
    assert touched != before
    with open(paths[1], "ab") as handle:
        handle.write(b"\0")
    assert fingerprint_files(paths) not in (before, touched)
    assert cache_fingerprint(paths, SPEC) != cache_fingerprint(paths, PreprocessSpec(image_size=17, crop_black=True))
    with pytest.raises(DataError, match="missing.bmp"):
        fingerprint_files([str(tmp_path / "missing.bmp")])


def test_changed_file_rebuilds(tmp_path):
    paths = _write_images(tmp_path / "data", 3)
    build_cache(paths, SPEC, tmp_path / "cache")
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(paths[2])
    os.utime(paths[2], ns=(0, 10**9))  # a different mtime even on coarse clocks
    rebuilt = build_cache(paths, SPEC, tmp_path / "cache")
    assert np.all(rebuilt.array[2] == 90)
    assert len(_cache_files(tmp_path / "cache")) == 4  # old and new cache side by side


def test_interrupted_build_leaves_nothing_complete_and_is_cleaned(tmp_path):
    paths = _write_images(tmp_path / "data", 3)
    cache_dir = tmp_path / "cache"
    decoded = []

    def interrupt_after_two(done, total):  # one process decodes one image per chunk here
        decoded.append(done)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(paths, SPEC, cache_dir, workers=1, progress=interrupt_after_two)
    assert decoded == [1, 2]  # stopped in the middle of the build
    assert _cache_files(cache_dir) == []
    # A temp file of a build killed outright (dead pid), and a final .npy without sidecar.
    stem = f"images-{cache_fingerprint(paths, SPEC)[:24]}"
    (cache_dir / f"{stem}.npy.tmp-999999999").write_bytes(b"partial")
    np.save(cache_dir / f"{stem}.npy", np.zeros((3, 3, 16, 16), np.uint8))
    cache = build_cache(paths, SPEC, cache_dir)
    assert _cache_files(cache_dir) == [f"{stem}.json", f"{stem}.npy"]
    np.testing.assert_array_equal(cache.array[0], preprocess(load_rgb(paths[0]), SPEC))


def _writer_in_the_middle(target: Path) -> tuple[subprocess.Popen, Path]:
    """A process writing ``target`` through atomic_path, stopped in the middle; and its temporary file."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom noisystudent import atomic\n"
            "with atomic.atomic_path(Path(sys.argv[1])) as temp:\n"
            "    temp.write_bytes(b'partial'); print(temp, flush=True); time.sleep(120)\n")
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(root)})
    return child, Path(child.stdout.readline().strip())


def test_a_build_removes_the_temporary_files_of_dead_builds_and_keeps_a_live_ones(tmp_path):
    paths = _write_images(tmp_path / "data", 3)
    npy = tmp_path / "cache" / f"images-{cache_fingerprint(paths, SPEC)[:24]}.npy"
    live, live_temp = _writer_in_the_middle(npy)  # e.g. another run sharing --cache-dir
    dead, dead_temp = _writer_in_the_middle(npy.with_suffix(".json"))
    dead.kill()  # kill -9: its temporary file stays behind
    dead.wait()
    older = {pid: npy.with_name(f"{npy.name}.tmp-{pid}") for pid in (live.pid, dead.pid, os.getpid())}  # earlier versions' names
    for path in older.values():
        path.write_bytes(b"partial")
    try:
        assert live_temp.name.startswith(f".{npy.name}.{live.pid}-") and dead_temp.exists()
        build_cache(paths, SPEC, tmp_path / "cache")
        assert live_temp.exists() and older[live.pid].exists()
        assert not dead_temp.exists() and not older[dead.pid].exists() and not older[os.getpid()].exists()
    finally:
        live.kill()
        live.wait()


def test_unreadable_image_names_the_file(tmp_path):
    paths = _write_images(tmp_path / "data", 2)
    bad = tmp_path / "data" / "broken.bmp"
    bad.write_bytes(b"BM not really a bitmap")
    with pytest.raises(DataError, match="broken.bmp"):
        build_cache(paths + [str(bad)], SPEC, tmp_path / "cache")
    assert _cache_files(tmp_path / "cache") == []


def test_parallel_equals_serial_and_reports_progress(tmp_path, monkeypatch):
    paths = _write_images(tmp_path / "data", 12)
    serial = build_cache(paths, SPEC, tmp_path / "serial", workers=1)
    monkeypatch.setattr(cache_module, "SERIAL_BELOW", 0)
    monkeypatch.setattr(cache_module, "MAX_CHUNK", 2)
    calls = []
    parallel = build_cache(paths, SPEC, tmp_path / "parallel", workers=2, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(parallel.array, serial.array)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 12 and len(done) == 6 and {t for _, t in calls} == {12}


def test_parallel_worker_error_is_a_data_error(tmp_path, monkeypatch):
    paths = _write_images(tmp_path / "data", 4)
    bad = tmp_path / "data" / "broken.bmp"
    bad.write_bytes(b"garbage")
    monkeypatch.setattr(cache_module, "SERIAL_BELOW", 0)
    with pytest.raises(DataError, match="broken.bmp"):
        build_cache(paths + [str(bad)], SPEC, tmp_path / "cache", workers=2)
    assert _cache_files(tmp_path / "cache") == []


def test_serial_progress_counts_up(tmp_path, monkeypatch):
    paths = _write_images(tmp_path / "data", 7)
    monkeypatch.setattr(cache_module, "MAX_CHUNK", 3)
    calls = []
    build_cache(paths, SPEC, tmp_path / "cache", workers=1, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 7), (4, 7), (6, 7), (7, 7)]  # about four chunks per worker


def test_index_of_tensor_and_batch_on_cpu(tmp_path):
    paths = _write_images(tmp_path / "data", 4)
    cache = build_cache(paths, SPEC, tmp_path / "cache")
    rows = cache.index_of([paths[2], paths[0]])
    assert rows.dtype == np.int64 and rows.tolist() == [2, 0]
    with pytest.raises(DataError, match="elsewhere.bmp"):
        cache.index_of(["/x/elsewhere.bmp"])
    whole = cache.tensor("cpu")
    assert whole.dtype == torch.uint8 and whole.shape == (4, 3, 16, 16)
    assert np.shares_memory(whole.numpy(), cache.array)  # no copy of the memory map
    batch = cache.batch(torch.as_tensor(rows), "cpu")
    assert batch.shape == (2, 3, 16, 16)
    assert torch.equal(batch, torch.from_numpy(np.asarray(cache.array[[2, 0]])))


def test_read_rows_equals_the_array_for_any_order_and_repeats(tmp_path):
    paths = _write_images(tmp_path / "data", 12)
    cache = build_cache(paths, SPEC, tmp_path / "cache")
    for rows in ([5, 6, 7, 8], [11, 0, 3, 3, 4, 10, 9, 1], [7], list(range(12))[::-1]):
        np.testing.assert_array_equal(cache.read_rows(np.array(rows)), np.asarray(cache.array[rows]))
    assert cache.read_rows(np.array([], dtype=np.int64)).shape == (0, 3, 16, 16)
    with pytest.raises(IndexError, match="outside the image cache of 12"):
        cache.read_rows(np.array([3, 12]))


def test_open_reads_sidecar(tmp_path):
    paths = _write_images(tmp_path / "data", 2)
    built = build_cache(paths, SPEC, tmp_path / "cache")
    opened = ImageCache.open(built.npy_path)
    assert opened.paths == paths and opened.fingerprint == built.fingerprint


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
@pytest.mark.parametrize("headroom", [0.2, 1.0])  # 1.0: nothing fits, batches go through pinned memory
def test_batch_on_cuda_matches_and_does_not_sync(tmp_path, monkeypatch, headroom):
    monkeypatch.setattr(cache_module, "GPU_HEADROOM", headroom)
    paths = _write_images(tmp_path / "data", 6)
    cache = build_cache(paths, SPEC, tmp_path / "cache")
    resident = cache.tensor("cuda").is_cuda
    assert resident == (headroom < 1)
    rows = torch.tensor([5, 1, 3])
    rows = rows.cuda() if resident else rows
    cache.batch(rows, "cuda")  # warm up allocators
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = cache.batch(rows, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.is_cuda and torch.equal(batch.cpu(), torch.from_numpy(np.asarray(cache.array[[5, 1, 3]])))
