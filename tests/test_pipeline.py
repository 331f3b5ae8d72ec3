"""The Noisy Student loop: noise where it belongs, and each student learns its teacher's labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import load_script

from noisystudent import layout
from noisystudent.config.run_config import RunConfig
from noisystudent.data.demo import generate_demo
from noisystudent.data.manifest import PATH
from noisystudent.inference.predict import predict_probs
from noisystudent.run import pipeline, pseudo_labels
from noisystudent.training import engine
from noisystudent.training.augment import create_augment, normalize
from noisystudent.training.engine import StepContext, TrainSet
from noisystudent.training.seeding import make_generator


class Recorder(torch.nn.Module):
    """A tiny classifier that remembers every input batch it sees."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, classes)
        self.dropout = torch.nn.Dropout(0.5)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


def _images(n: int = 8, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.slow
def test_student_batches_are_noised_and_teacher_predictions_are_not():
    images = _images()
    model = Recorder()
    train_set = TrainSet(torch.arange(8), torch.eye(2)[torch.tensor([0, 1] * 4)])
    step = StepContext(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device=torch.device("cpu"))
    model.train()
    engine.train_one_epoch(model, lambda rows: images[rows], train_set, create_augment("strong", image_size=16), step,
                           make_generator(1), batch_size=8)
    seen = model.inputs[0]
    clean = normalize(images)
    # every training image was changed by the noise (order is shuffled, so compare as sets of rows)
    distances = torch.cdist(seen.flatten(1), clean.flatten(1))
    assert distances.min(dim=1).values.min() > 1.0

    model.inputs.clear()
    first = predict_probs(model, lambda rows: images[rows], torch.arange(8), torch.device("cpu"), batch_size=8)
    second = predict_probs(model, lambda rows: images[rows], torch.arange(8), torch.device("cpu"), batch_size=8)
    assert torch.equal(model.inputs[0], clean)  # the teacher sees the clean images ...
    assert not model.training  # ... in eval mode: no dropout
    np.testing.assert_array_equal(first, second)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real two-round run on tiny synthetic cells (students on pseudo-labels only)."""
    root = tmp_path_factory.mktemp("pipeline")
    data = generate_demo(root / "data", n_patients_per_class=4, cells_per_patient=4, size=32, seed=3)
    config = RunConfig(
        data=str(data), folds=2, rounds=2, epochs=1, image_size=32, batch_size=8, weights="none",
        student_data="pseudo", pseudo_mode="soft", pseudo_temperature=2.0, eval_batch_size=64, workers=1,
    )
    jobs = []
    original = pipeline.train_model

    def spy(job, *args, **kwargs):
        jobs.append(job)
        return original(job, *args, **kwargs)

    pipeline.train_model = spy
    try:
        table = pipeline.run_kfold(config, root / "run")
    finally:
        pipeline.train_model = original
    return root / "run", config, jobs, table


@pytest.mark.slow
def test_each_student_trains_on_the_previous_rounds_pseudo_labels(tiny_run):
    run, config, jobs, _ = tiny_run
    classes = ["all", "hem"]
    students = [job for job in jobs if job.extra["round"] > 0]
    assert len(students) == config.folds * config.rounds
    for job in students:
        fold, round_ = job.extra["fold"], job.extra["round"]
        teacher_dir = layout.round_dir(run, fold, round_ - 1)
        paths, targets, _ = pseudo_labels.load_pseudo_labels(teacher_dir / layout.PSEUDO_LABELS, classes)
        np.testing.assert_array_equal(job.train_set.targets.numpy(), targets)
        # and those labels are the teacher's own predictions, softened by the temperature
        predictions = pd.read_csv(teacher_dir / layout.PREDICTIONS, keep_default_na=False).set_index(PATH).loc[paths]
        probs = predictions[[layout.prob_column(c) for c in classes]].to_numpy()
        expected = pseudo_labels.softmax(np.log(probs), temperature=2.0)
        np.testing.assert_allclose(targets, expected, atol=1e-6)
        assert set(predictions[layout.SPLIT]) <= {"masked", "pool"}


@pytest.mark.slow
def test_noise_settings_differ_between_teacher_and_students(tiny_run):
    _, config, jobs, _ = tiny_run
    teacher = next(job for job in jobs if job.extra["round"] == 0)
    student = next(job for job in jobs if job.extra["round"] == 1)
    assert (teacher.augment_level, teacher.dropout) == (config.teacher_augment, config.teacher_dropout)
    assert (student.augment_level, student.dropout, student.drop_connect) == ("strong", 0.5, 0.2)


@pytest.mark.slow
def test_run_folder_holds_every_artifact(tiny_run):
    run, config, _, table = tiny_run
    saved = json.loads((run / layout.CONFIG).read_text())
    assert saved["rounds"] == 2 and saved["data_fingerprint"]
    assert saved["machine"]["packages"]["noisystudent"] and saved["machine"]["cpu_count"] >= 1
    folds = pd.read_csv(run / layout.FOLDS)
    assert set(folds["role"]) >= {"labelled", "masked", "validation"}
    for fold in range(config.folds):
        for round_ in range(config.rounds + 1):
            out = layout.round_dir(run, fold, round_)
            for name in (layout.MODEL, layout.CHECKPOINT, layout.HISTORY, layout.PREDICTIONS):
                assert (out / name).is_file(), out / name
            assert (out / layout.PSEUDO_LABELS).is_file() == (round_ < config.rounds)
            history = pd.read_csv(out / layout.HISTORY)
            assert list(history[layout.EPOCH]) == [1] and history[layout.IMAGES_PER_S].iloc[0] > 0
    metrics = pd.read_csv(run / layout.RESULTS / layout.METRICS, dtype={"fold": str})
    assert set(metrics["fold"]) >= {"0", "1", "mean", "variance", "oof"}
    for column in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        assert column in metrics.columns
    assert len(table) == len(metrics)


@pytest.mark.slow
def test_the_demo_numbers_script_reads_a_real_run_folder(tiny_run):
    """scripts/demo_numbers.py on real results: every comparison and each round's pseudo-labels become rows."""
    run = tiny_run[0]
    rows = [line for line in load_script("demo_numbers").render(run).splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| quantity | balanced_accuracy | accuracy |")
    assert sum(" - teacher ensemble (majority)" in row for row in rows) == 1
    assert [row.split(" |")[0] for row in rows if "pseudo-labels" in row] == [
        "| pseudo-labels of the round-0 teacher, fold mean (each fold)", "| pseudo-labels of the round-1 student, fold mean (each fold)"]


def test_precise_batchnorm_sets_running_stats_to_the_mean_of_clean_batches():
    images = _images(n=12, size=8)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    model.train()
    engine.recalibrate_batchnorm(model, lambda rows: images[rows], torch.arange(12), normalize,
                                 make_generator(0), batch_size=4, max_batches=3)
    clean = normalize(images)
    expected = clean.mean(dim=(0, 2, 3))  # three equal batches: the average of batch means is the mean
    torch.testing.assert_close(model[0].running_mean, expected, rtol=1e-5, atol=1e-5)
    assert model[0].momentum == 0.1  # restored after the cumulative average
