"""Which images a run uses as evidence: the default outer test set, the unlabelled pool, and its patients."""

from __future__ import annotations

import pytest
from helpers import PATIENT_REGEX, save_cell, write_class_folders, write_csv

from noisystudent.config.presets import PRESETS
from noisystudent.config.run_config import RunConfig
from noisystudent.config.settings import make_config
from noisystudent.data.manifest import PATIENT, SUBSET
from noisystudent.data.run_images import load_run_images
from noisystudent.run.tables import read_table


def test_defaults_hold_out_a_fifth_of_patients_without_pool_as_the_study():
    config = RunConfig()
    assert (config.test_fraction, config.pool, config.select) == (0.2, False, "best")
    assert PRESETS["cnmc-study"] == {}  # RunConfig's defaults are the study's protocol
    assert make_config("x", preset="noisy-student").pool and make_config("x", preset="noisy-student").randaugment


def _csv_with_pool(root):
    rows = [{"path": str(save_cell(root / f"p{p}_{i}.png", p % 2, seed=p * 10 + i)), "label": "ab"[p % 2], "patient": f"p{p}"}
            for p in range(4) for i in range(2)]
    rows += [{"path": str(save_cell(root / f"q{i}.png", 0, seed=99 + i)), "label": "", "patient": "q", "subset": "pool"}
             for i in range(3)]
    return write_csv(root / "data.csv", rows, ["path", "label", "patient", "subset"])


@pytest.mark.parametrize("pool", [False, True])
def test_pool_flag_keeps_or_drops_the_unlabelled_images_of_the_data(tmp_path, pool):
    config = make_config(_csv_with_pool(tmp_path), preset="smoke", pool=pool, positive="a")
    images = load_run_images(config, tmp_path, list_pool=True)
    assert not (images.manifest[SUBSET] == "pool").any()  # the pool lives in its file, never in the manifest
    assert (images.pool.count if images.pool else 0) == (3 if pool else 0)
    if pool:
        assert read_table(images.pool.path)[PATIENT].tolist() == ["Q"] * 3 and images.pool.patients() == {"Q"}


def test_unlabelled_folder_gets_patient_ids_from_the_regex(tmp_path):
    data = write_class_folders(tmp_path / "data")
    extra = tmp_path / "extra"
    save_cell(extra / "p01_9.png", 0, seed=101)  # seed 0 would copy data/benign/p01_0.png, and be left out
    save_cell(extra / "loose.png", 0, seed=102)
    config = make_config(data, preset="smoke", patient_regex=PATIENT_REGEX, pool_images=str(extra), positive="malignant")
    pool = load_run_images(config, tmp_path, list_pool=True).pool
    table = read_table(pool.path).set_index(read_table(pool.path)["path"].map(lambda p: p.split("/")[-1]))
    assert table.loc["p01_9.png", PATIENT] == "P01" and table.loc["loose.png", PATIENT] == ""


def test_offline_imagenet_weights_stop_the_run_before_any_data_is_read(tmp_path, monkeypatch):
    import time

    from noisystudent.errors import CheckpointError
    from noisystudent.models import pretrained
    from noisystudent.run import pipeline, session

    def offline(url):
        raise OSError("network is unreachable")

    monkeypatch.setattr(pretrained, "download_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(session, "load_run_images", lambda *a: pytest.fail("the data was read before the weights"))
    config = make_config(write_class_folders(tmp_path / "data"), weights="imagenet", patient_regex=PATIENT_REGEX, positive="malignant")
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="could not be downloaded"):
        pipeline.run_kfold(config, tmp_path / "run")
    assert time.perf_counter() - started < 5 and not (tmp_path / "run").exists()


def test_reading_the_data_and_assigning_folds_are_never_silent(tmp_path):
    """A 10,000-class run printed nothing for 5 minutes: reading the images and assigning the folds now show as tasks."""
    from noisystudent.progress import Progress
    from noisystudent.run import session

    class Recorder(Progress):
        def __init__(self):
            self.events = []

        def start(self, key, description, total=None):
            self.events.append(("start", key, description))

        def stop(self, key):
            self.events.append(("stop", key))

    config = make_config(write_class_folders(tmp_path / "data"), preset="smoke", patient_regex=PATIENT_REGEX,
                         positive="malignant", folds=2)
    recorder = Recorder()
    images = load_run_images(config, tmp_path, recorder)
    session._load_or_assign_folds(tmp_path, images, config, recorder)
    assert recorder.events == [("start", "data", "reading and checking the images"), ("stop", "data"),
                               ("start", "folds", "assigning 32 images of 2 classes to 2 folds"), ("stop", "folds")]
