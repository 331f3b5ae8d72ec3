"""``--concurrent N``: several fold models trained at once, as worker processes joining the run.

The process route must not change a single number: each fold's files equal,
byte for byte, those of a sequential run at the same CPU thread count per
model (every stage seeds itself from (seed, fold, round)).
"""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_SETTINGS, run_files, subprocess_env, tiny_flags, torch_threads, write_class_folders
from typer.testing import CliRunner

from noisystudent import layout, processes
from noisystudent.cli.commands import app
from noisystudent.config.run_config import RunConfig
from noisystudent.errors import ConfigError
from noisystudent.run import claims, concurrent, pipeline
from noisystudent.run.preflight import check_before_writing

FLAGS = tiny_flags(epochs=1, image_size=16, test_fraction=0.25, folds=3)


@contextmanager
def _package_log(caplog, level: str):
    """The package's records in ``caplog``, also after a CLI test set ``propagate = False`` on its logger."""
    package = logging.getLogger("noisystudent")
    reaches_root = package.propagate  # then caplog's root handler sees each record already: add none (no doubles)
    if not reaches_root:
        package.addHandler(caplog.handler)
    try:
        with caplog.at_level(level, logger="noisystudent"):
            yield
    finally:
        if not reaches_root:
            package.removeHandler(caplog.handler)


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _models(run: Path) -> dict[str, dict]:
    return {str(p.relative_to(run)): torch.load(p, map_location="cpu", weights_only=False)["model"]
            for p in sorted(run.glob("fold-*/round-*/" + layout.MODEL))}


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): 3 folds of tiny images trained one at a time, on one thread."""
    root = tmp_path_factory.mktemp("sequential")
    data = write_class_folders(root / "data", patients_per_class=6, images_per_patient=2, size=(16, 16))
    with torch_threads(1):
        assert _invoke("kfold", data, "--out", root / "one", *FLAGS).exit_code == 0
    return data, root / "one"


def _assert_same_run(reference: Path, run: Path) -> None:
    expected, got = run_files(reference), run_files(run)
    assert sorted(got) == sorted(expected) and len([n for n in got if n.endswith(layout.PREDICTIONS)]) == 6
    assert all(got[name] == expected[name] for name in expected), [n for n in expected if got[n] != expected[n]]
    theirs, mine = _models(reference), _models(run)
    assert sorted(mine) == sorted(theirs)
    assert all(torch.equal(mine[m][k], theirs[m][k]) for m in theirs for k in theirs[m])


@pytest.mark.slow
def test_three_folds_two_at_a_time_equal_one_at_a_time(tmp_path, sequential_run):
    data, reference = sequential_run
    with torch_threads(2):  # two processes, one thread each: the sequential run's arithmetic
        result = _invoke("kfold", data, "--out", tmp_path / "two", *FLAGS, "--concurrent", "2")
    assert result.exit_code == 0, result.output
    _assert_same_run(reference, tmp_path / "two")
    log = (tmp_path / "two" / layout.LOG).read_text()
    assert "Training 2 fold models at once on the CPU, 1 threads each." in log
    assert len({line.split(" INFO ")[0] for line in log.splitlines() if "Session machine" in line}) >= 1
    assert log.count("Session machine") == 2  # this process and one worker appended to run.log
    assert log.count("Wrote the results") == 1  # results once
    assert not list((tmp_path / "two").rglob(claims.CLAIM)) and not list((tmp_path / "two").rglob("*.tmp"))


@pytest.mark.slow
def test_sigterm_stops_the_workers_too_and_the_resumed_run_equals_one_at_a_time(tmp_path, sequential_run):
    """kill, or a scheduler's time limit, sends SIGTERM to the main process alone: no worker may train on orphaned."""
    data, reference = sequential_run
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "noisystudent.cli", "kfold", str(data), "--out", str(run), *FLAGS, "--concurrent", "2"]
    env = {**subprocess_env(), "OMP_NUM_THREADS": "2"}  # two processes, one thread each
    main = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while len(list(run.glob("fold-*/" + claims.CLAIM))) < 2 and main.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until both processes train a fold
    workers = _children(main.pid)
    assert workers and main.poll() is None, "the run ended before both processes held a fold"
    main.send_signal(signal.SIGTERM)
    output, _ = main.communicate(timeout=120)
    assert main.returncode == 130, output
    assert "Stopped (SIGTERM). Completed stages are saved; continue with --resume." in " ".join(output.split())
    assert not any(processes.is_alive(pid) for pid in workers), "a worker trains on after the main process stopped"
    assert not list(run.rglob(claims.CLAIM))  # every claim released
    resumed = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _assert_same_run(reference, run)


def _children(pid: int) -> list[int]:
    """Pids of ``pid``'s child processes (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/<pid>/stat: the parent's pid
            found.append(int(stat.parent.name))
    return found


def test_worker_threads_share_the_cores_and_never_drop_to_zero():
    assert [concurrent.worker_threads(16, n) for n in (1, 2, 3, 4, 32)] == [16, 8, 5, 4, 1]


def test_the_payload_round_trips_the_settings():
    config = RunConfig(folds=3, epochs=2, split_ratio=(1, 2, 1))
    job = concurrent.read_payload(io.BytesIO(concurrent.payload(config.to_dict(), Path("runs/x"), "0,2", 3, sharers=4)))
    assert RunConfig.from_dict(job["config"]) == config
    assert (job["run"], job["only_folds"], job["threads"], job["sharers"]) == ("runs/x", "0,2", 3, 4)


def test_every_process_places_its_image_cache_as_one_of_the_sharers(tmp_path, monkeypatch):
    """The main process and each worker size their GPU cache for all N processes, not for the device alone."""
    data = write_class_folders(tmp_path / "data", patients_per_class=6, images_per_patient=2, size=(16, 16))
    config = RunConfig(**{**TINY_SETTINGS, "data": str(data), "folds": 3, "image_size": 16, "concurrent": 3})
    seen, started = [], []

    @contextmanager
    def fake_workers(worker_config, run, only_folds, count, threads, sharers=None):
        started.append((worker_config["concurrent"], count, sharers))
        yield concurrent.FoldWorkers()

    monkeypatch.setattr(pipeline.concurrent, "fold_workers", fake_workers)
    monkeypatch.setattr(pipeline, "train_folds", lambda run_ctx, wanted: seen.append(run_ctx.cache.device_sharers))
    monkeypatch.setattr(pipeline.session, "finish", lambda run_ctx, recompute: None)
    pipeline.run_kfold(config, tmp_path / "run")
    assert started == [(1, 2, 3)] and seen == [3]  # workers never start workers of their own
    # --concurrent 5 over 3 folds (as an experiment's runs side by side): 5 processes share the device
    pipeline.run_kfold(replace(config, concurrent=5), tmp_path / "five")
    assert started[-1] == (1, 2, 5) and seen[-1] == 5

    job = concurrent.payload({**config.to_dict(), "concurrent": 1}, tmp_path / "run", None, 1, sharers=3)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(job)))
    pipeline.fold_worker_main()
    assert seen[-1] == 3


def test_a_failed_worker_is_reported_with_its_last_output(caplog):
    workers = concurrent.FoldWorkers()
    for code in (0, 3):
        output = tempfile.TemporaryFile()
        script = f"import sys; print('worker says {code}'); sys.exit({code})"
        workers.processes.append(subprocess.Popen([sys.executable, "-c", script], stdout=output, stderr=subprocess.STDOUT))
        workers.outputs.append(output)
    with _package_log(caplog, "WARNING"):
        assert workers.wait() == [3]
    assert "Worker 2 of --concurrent stopped with exit code 3" in caplog.text and "worker says 3" in caplog.text
    assert "worker says 0" not in caplog.text


def test_stop_interrupts_running_workers_even_where_sigint_is_ignored():
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job a shell started with &: SIGINT ignored\n"
        "from noisystudent.termination import sigterm_as_interrupt\n"
        "try:\n"
        "    with sigterm_as_interrupt():\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    raise SystemExit(130)\n"
    )
    workers = concurrent.FoldWorkers()
    workers.processes.append(subprocess.Popen([sys.executable, "-c", script], env=subprocess_env(),
                                              stdout=subprocess.PIPE, text=True))
    workers.outputs.append(tempfile.TemporaryFile())
    assert workers.processes[0].stdout.readline().strip() == "ready"
    started = time.monotonic()
    workers.stop()
    assert workers.processes[0].returncode == 130 and time.monotonic() - started < 10  # stopped, not killed after 60 s
    workers.processes[0].stdout.close()


def test_concurrent_is_bounded_and_refused_under_torchrun(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="concurrent must be a whole number"):
        RunConfig(concurrent=0)
    with pytest.raises(ConfigError, match="concurrent"):
        RunConfig(concurrent=65)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="cannot run under torchrun"):
        check_before_writing(RunConfig(concurrent=2, data=None), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- CUDA graphs (--compile-mode reduce-overhead) ---------------------------------------


def test_cuda_graphs_are_asked_for_on_cuda_only_and_the_fallback_is_said(caplog):
    from noisystudent.training import compiling

    with _package_log(caplog, "INFO"):
        assert compiling.compile_options("reduce-overhead", torch.device("cuda"), {}) == {"mode": "reduce-overhead"}
        assert compiling.compile_options("reduce-overhead", torch.device("cpu"), {"backend": "eager"}) == {"backend": "eager"}
        assert compiling.compile_options("reduce-overhead", torch.device("cpu"), {}) == {}
        assert compiling.compile_options("default", torch.device("cuda"), {}) == {}
    assert caplog.text.count("need a CUDA device; compiling for cpu without them") == 2


def test_compile_mode_needs_compile():
    with pytest.raises(ConfigError, match="only with --compile"):
        RunConfig(compile_mode="reduce-overhead")
    with pytest.raises(ConfigError, match="compile_mode must be one of default, reduce-overhead"):
        RunConfig(compile=True, compile_mode="max-autotune")


@pytest.mark.slow
def test_reduce_overhead_on_a_cpu_trains_resumes_and_equals_the_eager_run(tmp_path, monkeypatch):
    from noisystudent.training import trainer

    monkeypatch.setattr(trainer, "COMPILE_OPTIONS", {"backend": "eager"})  # the compile path without code generation
    data = write_class_folders(tmp_path / "data", patients_per_class=4, images_per_patient=3, size=(16, 16))
    flags = tiny_flags(quiet=False, epochs=2, image_size=16, test_fraction=0, batch_size=5)  # 5, 5, partial batches
    with torch_threads(1):
        assert _invoke("kfold", data, "--out", tmp_path / "eager", *flags).exit_code == 0
        graphs = _invoke("kfold", data, "--out", tmp_path / "graphs", *flags, "--compile", "--compile-mode", "reduce-overhead")
        assert graphs.exit_code == 0, graphs.output
        (tmp_path / "graphs" / layout.RESULTS / layout.METRICS).unlink()
        for model in (tmp_path / "graphs").glob("fold-1/round-1/*"):
            model.unlink()  # the last student again, from scratch, on resume
        resumed = _invoke("kfold", "--out", tmp_path / "graphs", "--resume", "--compile", "--compile-mode", "reduce-overhead")
    assert resumed.exit_code == 0, resumed.output
    assert "need a CUDA device; compiling for cpu without them" in (tmp_path / "graphs" / layout.LOG).read_text()
    expected, got = run_files(tmp_path / "eager"), run_files(tmp_path / "graphs")
    assert sorted(got) == sorted(expected)
    assert all(got[name] == expected[name] for name in expected), [n for n in expected if got[n] != expected[n]]


def test_prediction_graphs_take_the_full_batches_and_the_model_the_partial_one():
    from noisystudent.inference.predict import predict_probs
    from noisystudent.training import compiling

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    calls = []

    class Recording(torch.nn.Module):  # stands in for the CUDA-graph module: same weights, counts its batches
        def forward(self, x):
            calls.append(len(x))
            return model(x)

    cache = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    load = lambda rows: cache[rows]  # noqa: E731
    rows = torch.arange(10)
    plain = predict_probs(model, load, rows, torch.device("cpu"), batch_size=4)
    graphed = predict_probs(model, load, rows, torch.device("cpu"), batch_size=4, full_batch_model=Recording())
    assert calls == [4, 4] and np.array_equal(plain, graphed)  # the partial batch of 2 went to the model
    assert compiling.prediction_graphs(model, True, "reduce-overhead", torch.device("cpu"), {}) is None
    assert compiling.prediction_graphs(model, False, "reduce-overhead", torch.device("cuda"), {}) is None
    assert compiling.prediction_graphs(model, True, "default", torch.device("cuda"), {}) is None
