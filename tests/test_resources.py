"""Plain scripts and exhausted resources: a script without a main guard, a thread the system refuses,
memory, file descriptors and a ``ulimit -v`` end in a working run or one sentence with exit status 2.
"""

from __future__ import annotations

import errno
import resource
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, cli_command, invoke_cli, subprocess_env, write_class_folders

from noisystudent.atomic import no_space_message
from noisystudent.data import parallel
from noisystudent.data.images import probe_images
from noisystudent.data.prefetch import decoded_batches
from noisystudent.data.preprocess import PreprocessSpec
from noisystudent.errors import DiskFullError, os_error_sentence, resource_error_sentence

GUARDLESS_DECODE = """
import sys
from noisystudent.data.cache import build_cache
from noisystudent.data.preprocess import PreprocessSpec
paths = sys.argv[1:-1]
cache = build_cache(paths, PreprocessSpec(image_size=16), sys.argv[-1], workers=2)
print("ROWS", len(cache), int(cache.read_rows(cache.index_of(paths)).sum() > 0))
"""


def run_script(tmp_path, source: str, *args: str, preexec_fn=None, timeout: float = 240) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script), *args], env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn, cwd=tmp_path)


def test_a_script_without_main_guard_builds_the_cache_with_threads(tmp_path):
    """Worker processes would import the script again and run it twice: before the fix, BrokenProcessPool."""
    data = write_class_folders(tmp_path / "data", patients_per_class=5, images_per_patient=8)  # 80 > SERIAL_BELOW
    paths = sorted(str(p) for p in data.rglob("*.png"))
    result = run_script(tmp_path, GUARDLESS_DECODE, *paths, str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ROWS 80 1" in result.stdout
    assert "decoding images with threads" in result.stderr and "Traceback" not in result.stderr


def test_processes_allowed_reads_the_main_script(tmp_path):
    guarded = tmp_path / "guarded.py"
    guarded.write_text("import noisystudent\n\nif __name__ == '__main__':\n    main()\n")
    plain = tmp_path / "plain.py"
    plain.write_text("import noisystudent as ns\nns.run_kfold(None, 'runs/x')\n")
    (tmp_path / "broken.py").write_text("if (:\n")
    assert parallel.has_main_guard(str(guarded))
    assert not parallel.has_main_guard(str(plain)) and not parallel.has_main_guard(str(tmp_path / "broken.py"))
    assert not parallel.has_main_guard(str(tmp_path / "missing.py"))
    assert parallel.processes_allowed()  # under pytest: the package's own __main__


@pytest.fixture
def no_new_threads(monkeypatch):
    """Every thread start fails as it does when ``ulimit -v`` leaves no room for another stack."""

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)


def test_thread_pools_work_without_any_thread(tmp_path, make_noise, no_new_threads):
    paths = [str(make_noise(tmp_path / f"{i}.png", size=12, seed=i)) for i in range(5)]
    infos = probe_images(paths, workers=4)
    assert [(i.width, i.height, i.error or None) for i in infos] == [(12, 12, None)] * 5
    batches = list(decoded_batches(paths, PreprocessSpec(image_size=8), batch_size=2, workers=3))
    assert [b.pixels.shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]


def test_thread_pool_goes_on_with_the_threads_it_got(monkeypatch):
    started, original = [], threading.Thread.start

    def second_refused(self):
        if started:
            raise RuntimeError("can't start new thread")
        started.append(self)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", second_refused)
    with parallel.Threads(max_workers=4) as pool:
        results = list(pool.map(lambda x: x * x, range(20)))
    assert results == [x * x for x in range(20)] and len(started) == 1


def test_resource_errors_are_one_sentence_each():
    assert resource_error_sentence(RuntimeError("can't start new thread")).startswith("The system refused to start another thread")
    torch_message = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                     "to allocate 2048000 bytes. Error code 12 (Cannot allocate memory)")
    sentence = resource_error_sentence(RuntimeError(torch_message))
    assert sentence.startswith("Out of memory (can't allocate memory: you tried to allocate 2048000 bytes; address-space limit ")
    assert sentence.endswith("then continue with --resume.") and sentence.count(". ") == 0
    assert resource_error_sentence(MemoryError()).startswith("Out of memory (MemoryError;")
    assert resource_error_sentence(RuntimeError("shape mismatch")) is None  # a bug keeps its traceback
    emfile = os_error_sentence(OSError(errno.EMFILE, "Too many open files", "/data/a.png"))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert emfile == (f"Too many open files (opening /data/a.png): the limit is {limit}; raise it (ulimit -n) "
                      "or lower --workers, then continue with --resume.")


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("can't start new thread"),
                                   OSError(errno.EMFILE, "Too many open files", "/x/y.png")])
def test_cli_ends_resource_exhaustion_in_one_sentence(tmp_path, monkeypatch, error):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr("noisystudent.run.pipeline.run_kfold", exhausted)
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2)
    code, output = invoke_cli("kfold", data, "--out", tmp_path / "run", "--preset", "smoke", "--quiet")
    sentence = output.split("Error: ", 1)[-1]
    assert code == 2 and sentence.endswith("then continue with --resume.") and sentence.count(". ") == 0, output


def test_report_advice_names_no_resume_flag(tmp_path, monkeypatch):
    """report, compare and ensemble have no --resume: a full disk says to run the command again."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "report" / "report.html"))

    monkeypatch.setattr("noisystudent.report.write_report", full)
    code, output = invoke_cli("report", tmp_path / "run")
    assert code == 2 and output == f"Error: No space left on device while writing {tmp_path / 'run/report/report.html'}; free some space and run the command again."


def test_user_text_is_shown_as_typed_not_as_rich_markup(tmp_path):
    code, output = invoke_cli("kfold", tmp_path / "data", "--out", tmp_path / "run", "--split-ratio", "a:b:c")
    assert code == 2 and "got 'a:b:c'" in output, output
    code, output = invoke_cli("kfold", tmp_path / "[red]data[/]", "--out", tmp_path / "run")
    assert code == 2 and "[red]data[/]" in output, output
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2)
    code, output = invoke_cli("kfold", data, "--out", tmp_path / "run:b:[bold]", "--preset", "smoke", "--weights", tmp_path / "no.pt")
    assert code == 2 and f"noisystudent kfold -> {tmp_path / 'run:b:[bold]'}" in output, output


@pytest.mark.parametrize("flag,value,bound", [
    ("--epochs", "1000000000000", "<= 100000"), ("--lr", "1e308", "<= 10.0"),
    ("--weight-decay", "1e308", "<= 1.0"), ("--pseudo-per-class", "100000000000000000", "<= 10000000"),
])
def test_sizes_that_cannot_be_allocated_are_refused_before_the_run_folder(tmp_path, flag, value, bound):
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2)
    code, output = invoke_cli("kfold", data, "--out", tmp_path / "run", "--preset", "smoke", flag, value)
    assert code == 2 and bound in output and value.rstrip("0") in output.replace("1e+308", "1e308"), output
    assert not (tmp_path / "run").exists()


def limit_address_space(kib: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (kib * 1024, resource.getrlimit(resource.RLIMIT_AS)[1]))

    return apply


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmSize comes from /proc")
def test_a_4_gb_address_space_limit_is_refused_before_the_run_folder(tmp_path):
    """``ulimit -v 4000000``: before the fix, RuntimeError: can't start new thread, after the run folder was made."""
    data = write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2)
    result = subprocess.run(cli_command(data, tmp_path / "run"), env=subprocess_env(), capture_output=True, text=True,
                            timeout=240, preexec_fn=limit_address_space(4_000_000), cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Error: The address-space limit (ulimit -v) of 3.8 GiB leaves" in result.stderr
    assert "raise it (ulimit -v unlimited, or ulimit -v " in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_tight_address_space_decodes_with_threads(monkeypatch):
    """A process pool whose helper thread cannot start hangs; under a tight limit threads decode instead."""
    monkeypatch.setattr(parallel, "address_space_left", lambda: 2**29)
    from noisystudent.data import cache

    assert isinstance(cache._executor(2), parallel.Threads)
    monkeypatch.setattr(parallel, "address_space_left", lambda: None)
    executor = cache._executor(2)
    assert not isinstance(executor, parallel.Threads)
    executor.shutdown()


def test_address_space_left_follows_the_limit():
    used = parallel.address_space_used()
    if used is None:
        pytest.skip("no /proc")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    expected = None if soft == resource.RLIM_INFINITY else soft - used
    left = parallel.address_space_left()
    assert (left is None) == (expected is None) and (left is None or abs(left - expected) < 2**26)
    assert np.isfinite(used) and used > 0


def limit_open_files(count: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    return apply


def test_too_few_file_descriptors_end_in_one_sentence_and_a_resumable_run(tmp_path):
    """``ulimit -n 10``: decoding falls back to this process, then the cache cannot open: one sentence, exit 2."""
    data = write_class_folders(tmp_path / "data", patients_per_class=5, images_per_patient=8)
    command = cli_command(data, tmp_path / "run")
    command[command.index("--workers") + 1] = "2"
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=240,
                            preexec_fn=limit_open_files(10), cwd=REPO)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Error: Too many open files (opening " in result.stderr and "the limit is 10; raise it (ulimit -n)" in result.stderr
    # Out of descriptors while the images are checked (before config.json): no run folder is left, run it again;
    # later (the cache): config.json is kept and kfold --resume continues from it.
    assert not (tmp_path / "run").exists() or (tmp_path / "run" / "config.json").is_file()


def test_ensemble_export_disk_full_advice_names_no_resume_flag(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise DiskFullError(no_space_message(Path("/out/ensemble.onnx")))

    monkeypatch.setattr("noisystudent.inference.onnx_runtime.available", lambda: True)
    monkeypatch.setattr("noisystudent.ensemble.classifier.check_options", full)
    code, output = invoke_cli("ensemble", "export", tmp_path, "--out", tmp_path / "e.onnx")
    assert code == 2 and "--resume" not in output and output.endswith("Free some space and run the command again."), output
