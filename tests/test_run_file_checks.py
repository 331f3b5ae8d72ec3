"""Every file a run trusts is verified before use (issue 27, point 4).

model.pt and checkpoint.pt against the run, fold and round where they lie;
folds.csv and pool.csv against the digests recorded when they were written;
the image cache's pixels against per-chunk hashes; config.json's own digest.
Each tampering ends in exit status 2 and one sentence. No write follows a
symbolic link out of the run folder, and Ctrl-C while model.pt is written
leaves the previous file in place and exits with 130.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import PATIENT_REGEX, assert_one_sentence, save_cell, tiny_flags, write_class_folders
from helpers import invoke_cli as invoke

from noisystudent import layout
from noisystudent.errors import CheckpointError, DataError
from noisystudent.models import checkpoint
from noisystudent.models.model_file import check_identity, model_identity

FLAGS = [
    "--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--rounds", "1", "--epochs", "1",
    "--image-size", "32", "--batch-size", "8", "--weights", "none", "--arch", "resnet18", "--device", "cpu",
    "--workers", "1", "--test-fraction", "0", "--quiet",  # 2 patients per class: no outer test set
]


def _interrupt(run_ctx, fold):
    raise KeyboardInterrupt


@pytest.fixture
def data(tmp_path) -> Path:
    return write_class_folders(tmp_path / "data", patients_per_class=2, images_per_patient=2, size=(16, 16))


@pytest.fixture
def started_run(tmp_path, data, monkeypatch) -> Path:
    """config.json, folds.csv and the cache written, then Ctrl-C before the first fold (no training)."""
    from noisystudent.run import pipeline

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "run_fold", _interrupt)
        assert invoke("kfold", data, "--out", run, *FLAGS)[0] == 130
    return run


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-fold, 1-round run (1 epoch at 32 px): the one training of this module."""
    root = tmp_path_factory.mktemp("finished")
    data = write_class_folders(root / "data", patients_per_class=4, images_per_patient=2, size=(16, 16))
    code, output = invoke("kfold", data, "--out", root / "run", *tiny_flags(epochs=1))
    assert code == 0, output
    return root / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run", symlinks=True))


# --- config.json's settings digest ---------------------------------------------------------------


def test_deleting_the_settings_digest_does_not_turn_the_edited_settings_guard_off(started_run, monkeypatch):
    path = started_run / layout.CONFIG
    document = json.loads(path.read_text())
    del document["settings_digest"]
    document["lr"] = 0.5
    path.write_text(json.dumps(document))
    assert_one_sentence(*_resume_past_checks(started_run, monkeypatch), f"{path} has no settings_digest")


def test_a_setting_missing_from_the_digest_counts_as_edited(started_run):
    from noisystudent.run.folder import edited_keys

    document = json.loads((started_run / layout.CONFIG).read_text())
    del document["settings_digest"]["lr"]
    assert edited_keys(document) == ["lr"]


# --- model files against where they lie ----------------------------------------------------------


IDENTITY = model_identity("run-a", "settings-a", 0, 1)


@pytest.mark.parametrize("recorded, message", [
    (None, "records no run, fold and round"),
    ({**IDENTITY, "fold": 1}, "belongs to fold 1, round 1, not to fold 0, round 1 where it lies"),
    ({**IDENTITY, "round": 0}, "belongs to fold 0, round 0, not to fold 0, round 1"),
    ({**IDENTITY, "run_id": "run-b"}, "belongs to another run (run id run-b, this run's is run-a)"),
    ({**IDENTITY, "settings": "settings-b"}, "was trained with other settings"),
])
def test_a_model_file_of_another_place_is_refused(recorded, message):
    payload = {"model": {}} if recorded is None else {"model": {}, "identity": recorded}
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_identity(payload, Path("R/fold-0/round-1/model.pt"), IDENTITY)
    check_identity({"identity": IDENTITY}, Path("R/fold-0/round-1/model.pt"), IDENTITY)  # its own place passes


@pytest.mark.slow
def test_a_model_copied_from_another_fold_is_refused_by_ensemble_predict_and_resume(run_copy, data, tmp_path):
    target = layout.round_dir(run_copy, 0, 1) / layout.MODEL
    shutil.copyfile(layout.round_dir(run_copy, 1, 1) / layout.MODEL, target)
    expected = f"The model file {target} belongs to fold 1, round 1, not to fold 0, round 1 where it lies"
    assert_one_sentence(*invoke("ensemble", "predict", run_copy, data, "--out", tmp_path / "p.csv", "--device", "cpu"), expected)
    assert_one_sentence(*invoke("kfold", "--out", run_copy, "--resume", "--quiet"), expected)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_a_model_without_its_identity_is_refused(run_copy, data, tmp_path):
    target = layout.round_dir(run_copy, 1, 1) / layout.MODEL
    payload = checkpoint.load(target)
    del payload["identity"]
    checkpoint.save_plain(target, payload)
    assert_one_sentence(*invoke("ensemble", "predict", run_copy, data, "--out", tmp_path / "p.csv", "--device", "cpu"),
                        f"The model file {target} records no run, fold and round")


@pytest.mark.slow
def test_resume_does_not_call_a_fold_finished_whose_model_is_truncated(run_copy):
    target = layout.round_dir(run_copy, 0, 0) / layout.MODEL
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    assert_one_sentence(*invoke("kfold", "--out", run_copy, "--resume", "--quiet"),
                        f"The checkpoint {target} is truncated or corrupt")


@pytest.mark.slow
def test_a_checkpoint_of_another_fold_is_refused_on_resume(run_copy):
    (layout.round_dir(run_copy, 0, 1) / layout.MODEL).unlink()  # round 1 of fold 0 trains again, from its checkpoint
    (layout.round_dir(run_copy, 0, 1) / layout.PREDICTIONS).unlink()
    target = layout.round_dir(run_copy, 0, 1) / layout.CHECKPOINT
    shutil.copyfile(layout.round_dir(run_copy, 1, 1) / layout.CHECKPOINT, target)
    assert_one_sentence(*invoke("kfold", "--out", run_copy, "--resume", "--quiet"),
                        f"The checkpoint {target} belongs to fold 1, round 1, not to fold 0, round 1")


@pytest.mark.slow
def test_an_untampered_finished_run_resumes(run_copy):
    assert invoke("kfold", "--out", run_copy, "--resume", "--quiet")[0] == 0


# --- Ctrl-C while model.pt is written ------------------------------------------------------------


class _InterruptedFile:
    """A file whose writes are cut by Ctrl-C once ``after`` bytes are written, as SIGINT during torch.save."""

    def __init__(self, path, mode, after: int = 64):
        self.handle, self.after = open(path, mode), after

    def write(self, data) -> int:
        if self.handle.tell() + len(data) > self.after:
            raise KeyboardInterrupt
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_ctrl_c_while_a_model_file_is_written_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    checkpoint.save(target, {"model": {"w": torch.zeros(1000)}})
    before = target.read_bytes()
    monkeypatch.setattr(checkpoint, "open", _InterruptedFile, raising=False)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(target, {"model": {"w": torch.ones(1000)}})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


def test_ctrl_c_inside_torchs_own_writer_is_an_interruption_not_a_runtime_error(tmp_path):
    from noisystudent import atomic

    def torch_writer(temp):  # torch's C++ writer reports the KeyboardInterrupt of a callback as a RuntimeError
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0") from None

    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(tmp_path / "model.pt", torch_writer)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_while_model_pt_is_written_says_interrupted_and_exits_130(run_copy, monkeypatch):
    folder = layout.round_dir(run_copy, 0, 1)
    (folder / layout.MODEL).unlink()  # its checkpoint holds the last epoch: resuming only writes model.pt
    (folder / layout.PREDICTIONS).unlink()
    monkeypatch.setattr(checkpoint, "open", _InterruptedFile, raising=False)
    code, output = invoke("kfold", "--out", run_copy, "--resume", "--quiet")
    assert code == 130 and "Interrupted." in output, output
    assert sorted(p.name for p in folder.iterdir()) == [layout.CHECKPOINT, layout.HISTORY]


# --- folds.csv and pool.csv against their recorded digests ---------------------------------------


@pytest.fixture
def pool_run(tmp_path, data, monkeypatch) -> Path:
    """A started run with an unlabelled pool (pool.csv), interrupted before the first fold."""
    from noisystudent.run import pipeline

    pool = tmp_path / "pool"
    for i in range(3):
        save_cell(pool / f"q{i}_0.png", i % 2, seed=i, size=(16, 16))  # no patient of the labelled images
    run = tmp_path / "pool-run"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "run_fold", _interrupt)
        assert invoke("kfold", data, "--out", run, *FLAGS, "--pool-images", pool)[0] == 130
    return run


def _resume_past_checks(run, monkeypatch) -> tuple[int, str]:
    from noisystudent.run import pipeline

    monkeypatch.setattr(pipeline, "run_fold", _interrupt)
    return invoke("kfold", "--out", run, "--resume")


def test_folds_and_pool_digests_are_recorded_and_an_untouched_run_resumes(pool_run, monkeypatch):
    from noisystudent.run import digests

    recorded = json.loads((pool_run / layout.DIGESTS).read_text())
    assert recorded == {name: digests.file_sha256(pool_run / name) for name in (layout.FOLDS, layout.POOL)}
    assert _resume_past_checks(pool_run, monkeypatch)[0] == 130  # got past every check


def test_an_edited_folds_csv_stops_the_run(started_run, monkeypatch):
    path = started_run / layout.FOLDS
    text = path.read_text()
    path.write_text(text.replace(",validation\n", ",labelled\n", 1))  # a validation image moved into training
    assert path.read_text() != text
    assert_one_sentence(*_resume_past_checks(started_run, monkeypatch),
                        f"{path} was changed after the run wrote it (its SHA-256 differs from the one in digests.json)")


def test_an_edited_pool_csv_stops_the_run(pool_run, monkeypatch):
    path = pool_run / layout.POOL
    path.write_text(path.read_text() + path.read_text().splitlines()[-1] + "\n")
    assert_one_sentence(*_resume_past_checks(pool_run, monkeypatch), f"{path} was changed after the run wrote it")


def test_a_folds_csv_without_a_recorded_digest_is_refused(started_run, monkeypatch):
    (started_run / layout.DIGESTS).unlink()
    assert_one_sentence(*_resume_past_checks(started_run, monkeypatch),
                        f"{started_run / layout.FOLDS} has no digest in {started_run / layout.DIGESTS}")


# --- the image cache's pixels against the hashes recorded at build --------------------------------


def _cache_file(run: Path) -> Path:
    return next((run / layout.CACHE).glob("images-*.npy"))


def test_overwritten_cache_pixels_stop_the_resume(started_run, monkeypatch):
    import numpy as np

    npy = _cache_file(started_run)
    array = np.load(npy, mmap_mode="r+")  # the header kept, the pixels replaced by random values
    array[...] = np.random.default_rng(0).integers(0, 256, array.shape, dtype=np.uint8)
    array.flush()
    del array
    assert_one_sentence(*_resume_past_checks(started_run, monkeypatch),
                        f"The image cache {npy} has changed since it was built (its bytes 0 to 16,777,216 differ")


def test_a_cache_without_pixel_hashes_is_decoded_again(started_run, monkeypatch):
    npy = _cache_file(started_run)
    sidecar = npy.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    del record["pixel_hashes"]
    sidecar.write_text(json.dumps(record))
    assert _resume_past_checks(started_run, monkeypatch)[0] == 130  # got past every check
    assert "pixel_hashes" in json.loads(sidecar.read_text())  # rebuilt, with its hashes


def test_pixel_hashes_cover_every_block_of_the_pixels(tmp_path, monkeypatch):
    import numpy as np

    from noisystudent.data import cache

    monkeypatch.setattr(cache, "HASH_BLOCK", 1000)
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((3, 3, 20, 20), np.uint8))  # 3600 bytes: 4 blocks
    hashes = cache.pixel_hashes(path)
    assert len(hashes) == 4
    array = np.load(path, mmap_mode="r+")
    array[2, 2, 19, 19] = 1  # the last byte
    array.flush()
    del array
    with pytest.raises(DataError, match=r"its bytes 3,000 to 4,000 differ"):
        cache.check_pixels(path, hashes)


# --- no write through a symbolic link out of the run folder --------------------------------------


@pytest.mark.parametrize("name", [layout.RESULTS, layout.CACHE, "fold-0", "run.log"])
def test_kfold_refuses_a_link_inside_the_run_folder(started_run, tmp_path, name, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metrics.csv").write_text("precious\n")
    link = started_run / name
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(elsewhere / "metrics.csv" if name == "run.log" else elsewhere)
    assert_one_sentence(*_resume_past_checks(started_run, monkeypatch),
                        f"{link} is a symbolic link (to {elsewhere}", f"would write outside {started_run}")
    assert [p.name for p in elsewhere.iterdir()] == ["metrics.csv"]
    assert (elsewhere / "metrics.csv").read_text() == "precious\n"


def test_report_refuses_a_report_folder_that_is_a_link(started_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (started_run / layout.REPORT).symlink_to(elsewhere)
    assert_one_sentence(*invoke("report", started_run), f"{started_run / layout.REPORT} is a symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_no_atomic_write_leaves_a_confined_folder_through_a_link(tmp_path):
    from noisystudent import atomic
    from noisystudent.errors import OutputError

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run / "fold-0").mkdir(parents=True)
    elsewhere.mkdir()
    (run / "fold-0" / "round-1").symlink_to(elsewhere)
    with atomic.confined_to(run), pytest.raises(OutputError, match="round-1 is a symbolic link"):
        atomic.write_text(run / "fold-0" / "round-1" / "model.pt", "x")
    atomic.write_text(run / "fold-0" / "round-1" / "model.pt", "x")  # outside confined_to: a user's own links are followed
    assert (elsewhere / "model.pt").read_text() == "x"
