"""The whole run's progress and ETA: the arithmetic (noisystudent.eta), and what a run reports through it.

Work is models weighted by epochs x training images; finished models (resumed,
or by another process) count as done but never as speed; the rate is this
process's measured time only. Clocks are fakes: every number is exact.
"""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pandas as pd
import pytest

from noisystudent import layout
from noisystudent.cli.progress import remaining_text
from noisystudent.config.run_config import RunConfig
from noisystudent.data import manifest
from noisystudent.eta import RunEta, model_work
from noisystudent.progress import Progress
from noisystudent.run import claims
from noisystudent.run.whole_run import WholeRunProgress, model_images

# --- the arithmetic --------------------------------------------------------------------------


def test_work_is_epochs_times_images():
    assert model_work(10, 300) == 3000.0
    assert model_work(0, 0) == 1.0  # no model is free: an empty one still counts as one unit


def test_the_rate_is_measured_work_over_measured_time():
    eta = RunEta({"t": 1000.0, "s": 3000.0})
    eta.start(now=100.0)
    eta.credit("t", 0.5, now=150.0)  # 500 units in 50 s
    assert (eta.rate(), eta.fraction_done(), eta.eta_seconds()) == (10.0, 0.125, 350.0)
    eta.credit("t", 1.0, now=200.0)  # 500 more in 50 s
    assert (eta.rate(), eta.eta_seconds(), eta.models_done()) == (10.0, 300.0, 1)


def test_work_done_before_this_process_counts_as_done_but_not_as_speed():
    eta = RunEta({"t": 1000.0, "s": 3000.0})
    eta.credit("t", 1.0)  # finished before this session (resume)
    assert (eta.fraction_done(), eta.rate(), eta.eta_seconds()) == (0.25, None, None)
    eta.start(now=0.0)
    eta.credit("s", 0.5)  # the student's checkpoint: 5 of 10 epochs trained before
    eta.credit("s", 0.6, now=30.0)  # one epoch here: 300 units in 30 s
    assert (eta.rate(), eta.fraction_done(), eta.eta_seconds()) == pytest.approx((10.0, 0.7, 120.0))


def test_a_model_finished_by_another_process_shortens_the_eta_without_changing_the_rate():
    eta = RunEta({"a": 1000.0, "b": 1000.0, "c": 1000.0})
    eta.start(now=0.0)
    eta.credit("a", 0.5, now=100.0)  # 5 units/s
    before = eta.eta_seconds()
    eta.credit("c", 1.0)  # another process finished c
    assert (before, eta.eta_seconds(), eta.rate()) == (500.0, 300.0, 5.0)
    assert eta.eta_seconds(workers=2) == 150.0  # two processes, each at this process's rate


def test_credit_never_goes_back_and_ignores_unknown_models():
    eta = RunEta({"a": 100.0})
    eta.start(now=0.0)
    eta.credit("a", 0.5, now=10.0)
    eta.credit("a", 0.2, now=20.0)  # an older fraction: no work, but the time still passed
    eta.credit("zz", 1.0, now=30.0)
    assert (eta.fraction_done(), eta.measured_work, eta.measured_seconds) == (0.5, 50.0, 20.0)


def test_measured_credit_before_start_is_not_measured():
    eta = RunEta({"a": 100.0})
    eta.credit("a", 0.5, now=10.0)  # no start yet: no interval to measure
    assert (eta.fraction_done(), eta.rate()) == (0.5, None)


def test_eta_is_zero_when_done_and_unknown_without_measurements():
    eta = RunEta({"a": 100.0})
    assert eta.eta_seconds() is None
    eta.credit("a", 1.0)
    assert (eta.eta_seconds(), eta.fraction_done()) == (0.0, 1.0)
    assert RunEta({}).fraction_done() == 1.0


def test_remaining_text():
    now = datetime.datetime(2026, 1, 1, 23, 50)
    assert remaining_text(3723.4, now) == "1:02:03 (done ~00:52)"
    assert remaining_text(None, now) == "-:--:--"


# --- the run's progress ----------------------------------------------------------------------


class Recorder(Progress):
    def __init__(self) -> None:
        self.run_updates: list[dict] = []
        self.passed: list[tuple] = []

    def start(self, key, description, total=None):
        self.passed.append(("start", key))

    def update(self, key, completed=None, description=None, **info):
        if key == "run":
            self.run_updates.append({"completed": completed, **info})
        else:
            self.passed.append(("update", key, completed))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fold_table(folds: int = 2, labelled: int = 10, masked: int = 30) -> pd.DataFrame:
    rows = []
    for fold in range(folds):
        rows += [{manifest.FOLD: fold, manifest.ROLE: manifest.ROLE_LABELLED}] * labelled
        rows += [{manifest.FOLD: fold, manifest.ROLE: manifest.ROLE_MASKED}] * masked
        rows += [{manifest.FOLD: fold, manifest.ROLE: manifest.ROLE_VALIDATION}] * 5
    rows += [{manifest.FOLD: manifest.SHARED_FOLD, manifest.ROLE: manifest.ROLE_TEST}] * 7
    return pd.DataFrame(rows)


def test_model_images_follow_student_data():
    table = _fold_table()
    for student_data, expected in (("labelled", 10), ("pseudo", 30 + 4), ("both", 10 + 30 + 4)):
        config = RunConfig(student_data=student_data)
        assert (model_images(config, table, 1, 0, 4, 2), model_images(config, table, 1, 1, 4, 2)) == (10, expected)
    assert model_images(RunConfig(student_data="both", pseudo_per_class=6), table, 0, 2, 4, 2) == 10 + 12


def _finish(run, fold, round_):
    folder = layout.round_dir(run, fold, round_)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / layout.MODEL).write_bytes(b"model")


def _train(progress: WholeRunProgress, clock: Clock, fold: int, round_: int, epochs: range, seconds: float, start_at: int = 0):
    """The events run_fold and the trainer send for one model: model, epoch start, resume point, each epoch."""
    progress.update("model", fold=fold, round=round_)
    progress.start("epoch", "model")
    progress.update("epoch", completed=start_at)
    for epoch in epochs:
        clock.now += seconds
        progress.update("epoch", completed=epoch)


def test_a_run_reports_its_share_done_and_eta_from_its_own_epochs(tmp_path):
    config = RunConfig(folds=2, rounds=1, epochs=4, student_data="pseudo")  # teachers 4 x 10 = 40, students 4 x 30 = 120
    clock, recorder = Clock(), Recorder()
    progress = WholeRunProgress(recorder, tmp_path, config, _fold_table(), n_classes=2, clock=clock)
    progress.begin()
    assert recorder.run_updates[-1] == {"completed": 0.0, "models": "0/4 done", "eta_seconds": None}
    _train(progress, clock, 0, 0, range(1, 3), seconds=2.0)  # 2 epochs of the first teacher: 20 units in 4 s
    assert recorder.run_updates[-1] == {"completed": 6.2, "models": "0/4 done", "eta_seconds": (320 - 20) / 5}
    assert ("update", "epoch", 2) in recorder.passed  # the events still reach the bars


def test_a_resumed_run_counts_finished_models_and_checkpointed_epochs_as_done_not_as_speed(tmp_path):
    config = RunConfig(folds=2, rounds=1, epochs=4, student_data="pseudo")
    _finish(tmp_path, 0, 0)
    _finish(tmp_path, 0, 1)  # fold 0 done before this session: 160 of 320 units
    clock, recorder = Clock(), Recorder()
    clock.now = 1000.0
    progress = WholeRunProgress(recorder, tmp_path, config, _fold_table(), n_classes=2, clock=clock)
    progress.begin()
    assert recorder.run_updates[-1] == {"completed": 50.0, "models": "2/4 done", "eta_seconds": None}
    _train(progress, clock, 1, 0, range(3, 4), seconds=10.0, start_at=2)  # resumed at epoch 2; epoch 3 takes 10 s
    # measured: 10 units in 10 s; done: 160 + 30; left: 130 units at 1 unit/s
    assert recorder.run_updates[-1] == {"completed": 59.4, "models": "2/4 done", "eta_seconds": 130.0}


def test_models_another_process_finishes_count_as_done_and_its_claim_as_a_worker(tmp_path, monkeypatch):
    config = RunConfig(folds=2, rounds=1, epochs=4, student_data="pseudo")
    other = claims.Claim("elsewhere", 4242, None, 0.0)
    monkeypatch.setattr(claims, "read_claim", lambda run, fold: other if fold == 1 else None)
    monkeypatch.setattr(claims, "is_stale", lambda claim: False)
    clock, recorder = Clock(), Recorder()
    progress = WholeRunProgress(recorder, tmp_path, config, _fold_table(), n_classes=2, clock=clock)
    progress.begin()
    _train(progress, clock, 0, 0, range(1, 2), seconds=5.0)  # 10 units in 5 s
    assert recorder.run_updates[-1]["models"] == "0/4 done (2 processes)"
    assert recorder.run_updates[-1]["eta_seconds"] == pytest.approx(310 / (2 * 2))
    _finish(tmp_path, 1, 0)  # the other process finishes its teacher
    clock.now += 5.0
    progress.update("epoch", completed=2)
    # done: 20 units here + its 40; measured: 20 units in 10 s; two processes at that rate
    assert recorder.run_updates[-1] == {"completed": 18.8, "models": "1/4 done (2 processes)", "eta_seconds": (320 - 60) / (2 * 2)}


def test_early_stopping_credits_the_skipped_epochs_without_counting_them_as_speed(tmp_path):
    config = RunConfig(folds=2, rounds=1, epochs=4, student_data="pseudo")
    clock, recorder = Clock(), Recorder()
    progress = WholeRunProgress(recorder, tmp_path, config, _fold_table(), n_classes=2, clock=clock)
    progress.begin()
    _train(progress, clock, 0, 0, range(1, 2), seconds=5.0)  # 10 units in 5 s, then early stopping
    _finish(tmp_path, 0, 0)
    progress.update("model", fold=0, round=1)
    assert recorder.run_updates[-1] == {"completed": 12.5, "models": "1/4 done", "eta_seconds": (320 - 40) / 2}


def test_run_kfold_reports_the_whole_run_through_every_model(tmp_path, monkeypatch):
    """The real pipeline (folds, claims, run_fold) with training and prediction replaced by instant fakes."""
    from helpers import PATIENT_REGEX, write_class_folders

    from noisystudent.run import pipeline

    def train_model(job, config, load_batch, device, progress):
        progress.start("epoch", job.name, total=config.epochs)
        progress.update("epoch", completed=0)
        for epoch in range(config.epochs):
            progress.update("epoch", completed=epoch + 1)
        (job.out_dir / layout.MODEL).write_bytes(b"model")

    monkeypatch.setattr(pipeline, "train_model", train_model)
    monkeypatch.setattr(pipeline, "_model_job", lambda run_ctx, fold, round_, name: SimpleNamespace(
        name=name, out_dir=layout.round_dir(run_ctx.run, fold, round_)))
    monkeypatch.setattr(pipeline, "predict_round", lambda run_ctx, fold, round_: pd.DataFrame({layout.PRED: ["a", "b"]}))
    monkeypatch.setattr(pipeline, "_pseudo_labels", lambda *args: None)
    monkeypatch.setattr(pipeline, "warn_if_single_class", lambda *args: False)
    data = write_class_folders(tmp_path / "data", patients_per_class=3, images_per_patient=2, size=(16, 16))
    config = RunConfig(data=str(data), patient_regex=PATIENT_REGEX, positive="malignant", folds=2, rounds=2, epochs=3,
                       arch="resnet18", weights="none", image_size=16, device="cpu", workers=1, test_fraction=0)
    recorder = Recorder()
    assert pipeline.run_kfold(config, tmp_path / "run", progress=recorder) is None  # no predictions.csv: not finished
    updates = recorder.run_updates
    assert updates[0]["completed"] == 0.0 and updates[-1] == {"completed": 100.0, "models": "6/6 done", "eta_seconds": 0.0}
    assert [u["completed"] for u in updates] == sorted(u["completed"] for u in updates)  # never backwards
    assert all(u["eta_seconds"] is not None for u in updates[3:])  # known from the first measured epoch on
