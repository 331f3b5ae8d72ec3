"""Several processes on one run folder: fold claims, stale claims, results written once.

Two real processes (``--only-folds 0`` and ``--only-folds 1``) started at the
same moment share one run folder; their files must equal, byte for byte, those
of one process that ran both folds with the same seed (every stage seeds
itself from (seed, fold, round), and each process runs torch on one thread).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ForkingCli, run_files, tiny_flags, torch_threads, write_class_folders
from typer.testing import CliRunner

from noisystudent import atomic, layout, processes
from noisystudent.cli.commands import app
from noisystudent.errors import ConfigError
from noisystudent.run import claims

FLAGS = tiny_flags(epochs=1, image_size=16, test_fraction=0.25)  # with an outer test set: ensembles too
LOUD = tiny_flags(quiet=False, epochs=1, image_size=16, test_fraction=0.25)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("parallel") / "data", patients_per_class=6, images_per_patient=2, size=(16, 16))


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fake_claim(run: Path, fold: int, pid: int, host: str | None = None) -> None:
    path = claims.claim_path(run, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = claims.process_start(pid)
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "process_start": start, "claimed_at": time.time()}))


def _models(run: Path) -> dict[str, dict]:
    return {str(p.relative_to(run)): torch.load(p, map_location="cpu", weights_only=False)["model"]
            for p in sorted(run.glob("fold-*/round-*/" + layout.MODEL))}


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


# --- claims without training ------------------------------------------------------------


def test_a_claim_of_a_live_process_is_respected_and_a_dead_ones_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _fake_claim(tmp_path, 0, holder.pid)
        _fake_claim(tmp_path, 1, _dead_pid())
        (layout.round_dir(tmp_path, 1, 0)).mkdir(parents=True)
        half_written = layout.round_dir(tmp_path, 1, 0) / ".checkpoint.pt.ab12cd.tmp"
        half_written.write_bytes(b"partial")
        assert claims.claim_fold(tmp_path, 0).pid == holder.pid  # held: not taken
        assert claims.claim_fold(tmp_path, 1) is None  # stale: taken over ...
        assert claims.read_claim(tmp_path, 1).is_mine()
        assert not half_written.exists()  # ... with the dead holder's temporary files
        assert f"process {socket.gethostname()}:{holder.pid}" in claims.holder_sentence(0, claims.read_claim(tmp_path, 0))
    finally:
        holder.kill()
        holder.wait()
    assert claims.is_stale(claims.read_claim(tmp_path, 0))  # its process has gone now
    claims.release_fold(tmp_path, 1)
    assert not claims.claim_path(tmp_path, 1).exists()


def test_a_claim_from_another_machine_is_never_judged_stale_here(tmp_path):
    _fake_claim(tmp_path, 0, _dead_pid(), host="gpu-node-17")
    holder = claims.claim_fold(tmp_path, 0)
    assert holder.host == "gpu-node-17"
    assert "remove .claim in that fold's folder by hand" in claims.holder_sentence(0, holder)


def test_a_reused_pid_is_not_taken_for_the_claimant(tmp_path):
    _fake_claim(tmp_path, 0, os.getppid())
    saved = json.loads(claims.claim_path(tmp_path, 0).read_text())
    claims.claim_path(tmp_path, 0).write_text(json.dumps({**saved, "process_start": "1"}))  # started at another time
    assert claims.is_stale(claims.read_claim(tmp_path, 0))


def test_claims_and_temporary_files_ask_one_liveness_check(tmp_path, monkeypatch):
    asked = []

    def is_alive(pid, start=None, on_other_host=False):
        asked.append((pid, start))
        return True

    monkeypatch.setattr(processes, "is_alive", is_alive)
    _fake_claim(tmp_path, 0, os.getppid())
    assert not claims.is_stale(claims.read_claim(tmp_path, 0))
    with atomic.atomic_path(tmp_path / "results.csv") as temp:
        temp.write_text("partial")
        assert atomic.remove_stale_temps(tmp_path) == [] and temp.exists()
    assert asked == [(os.getppid(), processes.process_start(os.getppid())), (os.getpid(), processes.process_start(os.getpid()))]


@pytest.mark.parametrize("spec", ["2", "0,x", "-1", ""])
def test_only_folds_outside_the_run_is_refused_before_anything_is_written(tmp_path, data, spec):
    result = _invoke("kfold", data, "--out", tmp_path / "run", *FLAGS, "--only-folds", spec)
    assert result.exit_code == 2 and "--only-folds" in result.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError):
        claims.select_folds(spec, 2)


# --- real processes ---------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_on_two_folds_equal_one_process(tmp_path, data):
    server = ForkingCli()
    try:
        reference = server.start(["kfold", str(data), "--out", str(tmp_path / "one"), *FLAGS], tmp_path / "one.log")
        shared = tmp_path / "shared"
        workers = [server.start(["kfold", str(data), "--out", str(shared), *FLAGS, "--only-folds", str(fold)], tmp_path / f"w{fold}.log")
                   for fold in (0, 1)]
        codes = [server.wait(pid) for pid in [reference, *workers]]
    finally:
        server.close()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("one", "w0", "w1")}
    assert codes == [0, 0, 0], logs
    expected, got = run_files(tmp_path / "one"), run_files(shared)
    assert sorted(got) == sorted(expected) and len([n for n in got if n.endswith(layout.PREDICTIONS)]) == 4
    for name in expected:
        assert got[name] == expected[name], name
    theirs, mine = _models(tmp_path / "one"), _models(shared)
    assert sorted(mine) == sorted(theirs)
    assert all(torch.equal(mine[m][k], theirs[m][k]) for m in theirs for k in theirs[m])
    assert (shared / layout.LOG).read_text().count("Wrote the results") == 1  # results once, by the last finisher
    assert not list(shared.rglob(claims.CLAIM)) and not list(shared.rglob("*.tmp"))


@pytest.mark.slow
def test_a_joining_session_skips_a_held_fold_takes_over_a_stale_one_and_resume_finishes(tmp_path, data):
    run = tmp_path / "run"
    with torch_threads(1):
        assert _invoke("kfold", data, "--out", run, *FLAGS, "--only-folds", "0").exit_code == 0  # config, folds, cache, fold 0
        _fake_claim(run, 0, _dead_pid())  # a finished fold whose process was killed before it let go
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            _fake_claim(run, 1, holder.pid)
            joined = _invoke("kfold", data, "--out", run, *LOUD, "--join")
            assert joined.exit_code == 0
            text = " ".join(joined.output.split())
            assert f"fold 1 is being trained by process {socket.gethostname()}:{holder.pid}" in text
            assert "the results follow when every fold is finished" in text
            assert not (run / layout.RESULTS / layout.METRICS).exists()
        finally:
            holder.kill()
            holder.wait()
        resumed = _invoke("kfold", "--out", run, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "which is no longer running; this process" in " ".join(resumed.output.split())
    assert (run / layout.RESULTS / layout.METRICS).exists()
    assert not list(run.rglob(claims.CLAIM))
