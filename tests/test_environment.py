"""Where a run ran: config.json's ``machine`` entry, kept from the first session, and one run.log line per session."""

from __future__ import annotations

import json
import os
import platform
import re
from importlib import metadata
from pathlib import Path

import torch

import noisystudent
from noisystudent import environment, layout
from noisystudent.config.settings import make_config, resume_config
from noisystudent.run import folder
from noisystudent.run.folder import check_run_folder, edited_keys, load_run_config, write_config
from noisystudent.run.session import run_log

REPO = Path(__file__).resolve().parents[1]
KEYS = {"torch_threads", "torch_interop_threads", "cpu", "cpu_count", "gpus", "cuda", "os", "python", "packages", "git_commit"}


def test_the_machine_entry_has_every_fact_with_plausible_values():
    machine = environment.describe_machine()
    assert set(machine) == KEYS
    assert machine["torch_threads"] == torch.get_num_threads() >= 1
    assert machine["torch_interop_threads"] == torch.get_num_interop_threads() >= 1
    assert machine["cpu_count"] == os.cpu_count()
    assert isinstance(machine["cpu"], str) and machine["cpu"].strip()
    assert (machine["gpus"] is None) == (machine["cuda"] is None) == (not torch.cuda.is_available())
    assert machine["python"] == platform.python_version() and machine["os"] == platform.platform()
    assert set(machine["packages"]) == {*environment.PACKAGES, "noisystudent"}
    assert machine["packages"]["torch"] == metadata.version("torch") and machine["packages"]["noisystudent"] == noisystudent.__version__
    json.dumps(machine)  # it goes into config.json as it is


def test_the_git_commit_is_the_checkouts_and_none_outside_one_or_without_git(tmp_path, monkeypatch):
    commit = environment.git_commit()
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", commit or ""), commit
    assert environment.git_commit(tmp_path) is None  # not a checkout
    (tmp_path / ".git").write_text("gitdir: /nowhere\n")  # looks like a worktree, is broken: git fails
    assert environment.git_commit(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert environment.git_commit(REPO) is None
    assert environment.describe_machine()["git_commit"] is None


def test_the_cpu_model_falls_back_to_platform_processor_without_proc_cpuinfo(monkeypatch):
    def no_file(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(environment, "open", no_file, raising=False)  # the module's open only
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert environment.cpu_model() == "arm"


def _config(tmp_path: Path) -> dict:
    return json.loads((tmp_path / layout.CONFIG).read_text())


def test_config_json_keeps_the_machine_of_the_session_that_created_the_run(tmp_path, monkeypatch):
    config = make_config(preset="smoke")
    write_config(tmp_path, config, "fingerprint")
    first = _config(tmp_path)["machine"]
    assert set(first) == KEYS
    monkeypatch.setattr(folder, "describe_machine", lambda: {"cpu": "another machine"})
    write_config(tmp_path, config, "fingerprint")  # a later session (resume, join)
    assert _config(tmp_path)["machine"] == first


def test_a_run_without_a_machine_entry_resumes_and_the_entry_is_not_a_setting(tmp_path):
    config = make_config(preset="smoke")
    write_config(tmp_path, config, "fingerprint")
    saved = _config(tmp_path)
    older = {k: v for k, v in saved.items() if k != "machine"}  # config.json of a version before the entry
    (tmp_path / layout.CONFIG).write_text(json.dumps(older))
    check_run_folder(tmp_path, config, resume=True)
    assert load_run_config(tmp_path) == config and resume_config(older) == config
    write_config(tmp_path, config, "fingerprint")
    assert _config(tmp_path)["machine"] is None  # not recorded; this session's machine is in run.log
    edited = {**saved, "machine": {"cpu": "edited"}}  # the entry is not compared with the settings' digest
    (tmp_path / layout.CONFIG).write_text(json.dumps(edited))
    assert edited_keys(edited) == [] and resume_config(edited) == config
    check_run_folder(tmp_path, config, resume=True)
    assert edited["settings_digest"] == folder.settings_digest(config.to_dict())


def test_every_session_says_in_run_log_where_it_runs(tmp_path):
    for _ in range(2):  # the session that created the run, then a resumed one
        with run_log(tmp_path):
            pass
    lines = [line for line in (tmp_path / layout.LOG).read_text().splitlines() if "Session machine:" in line]
    assert len(lines) == 2
    machine = environment.describe_machine()
    assert f"CPU {machine['cpu']} ({os.cpu_count()} logical)" in lines[0]
    assert f"torch threads {torch.get_num_threads()}/" in lines[0] and f"Python {platform.python_version()}" in lines[0]
    assert f"torch {machine['packages']['torch']}" in lines[0] and "onnxruntime " in lines[0]
