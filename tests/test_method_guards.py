"""The method itself: who sees which image with which target. Each test fails when the method is broken.

The trainer is replaced by a recorder and the teacher by a fake that is wrong on
every masked image, so these run in a second without training a model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from noisystudent import layout
from noisystudent.config.settings import make_config
from noisystudent.data.folds import assign_folds
from noisystudent.data.manifest import LABEL, PATH, PATIENT, ROLE, make_manifest
from noisystudent.inference.tables import prediction_table
from noisystudent.progress import NULL_PROGRESS
from noisystudent.run import pipeline
from noisystudent.training.trainer import build_model

CLASSES = ["all", "hem"]


class PathCache:
    """Stands in for the image cache: row i is the i-th path in sorted order."""

    def __init__(self, paths):
        self.paths = sorted(paths)
        self.lookup = {p: i for i, p in enumerate(self.paths)}

    def index_of(self, paths):
        return np.array([self.lookup[p] for p in paths], dtype=np.int64)


def _context(tmp_path, **settings):
    rows = [{PATH: f"/d/{label}/p{p}_{i}.png", LABEL: label, PATIENT: f"{label}{p}", "subset": "train"}
            for label in CLASSES for p in range(10) for i in range(3)]
    rows += [{PATH: f"/pool/q{i}.png", LABEL: "", PATIENT: "", "subset": "pool"} for i in range(4)]
    folds = assign_folds(make_manifest(rows), n_folds=2, test_fraction=0.2, seed=0)
    config = make_config("/d", preset="smoke", rounds=1, weights="none", **settings)
    cache = PathCache(folds[PATH].unique())
    return pipeline.RunContext(tmp_path, config, CLASSES, folds, cache, torch.device("cpu"), NULL_PROGRESS)


def _wrong_teacher(run_ctx, fold, round_):
    """Predictions whose class is the wrong one for every masked image (and right elsewhere)."""
    frame = pd.concat([pipeline.fold_rows(run_ctx.fold_table, fold, role).assign(**{layout.SPLIT: split})
                       for role, split in pipeline.SPLIT_OF_ROLE.items()], ignore_index=True)
    right = (frame[LABEL] == "all").to_numpy(float)
    p_all = np.where(frame[layout.SPLIT] == "masked", 0.9 - 0.8 * right, 0.1 + 0.8 * right)
    p_all = np.where(frame[LABEL] == "", 0.7, p_all)
    return prediction_table(frame[[PATH, LABEL, PATIENT, layout.SPLIT]], np.stack([p_all, 1 - p_all], axis=1), CLASSES)


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    def run(**settings):
        jobs = []
        monkeypatch.setattr(pipeline, "train_model", lambda job, *a, **k: jobs.append(job))
        monkeypatch.setattr(pipeline, "predict_round", _wrong_teacher)
        run_ctx = _context(tmp_path / f"run-{len(list(tmp_path.iterdir()))}", **settings)  # each call its own run folder
        pipeline.run_fold(run_ctx, 0)
        return run_ctx, {job.extra["round"]: job for job in jobs}
    return run


def _training_images(run_ctx, job) -> list[tuple[str, str]]:
    """(path, target class) of every row the job trains on, read through the cache's row order."""
    paths = [run_ctx.cache.paths[int(r)] for r in job.train_set.rows]
    targets = np.asarray(job.train_set.targets).argmax(axis=1)
    return [(p, CLASSES[t]) for p, t in zip(paths, targets)]


def test_teacher_trains_on_the_labelled_part_only_with_its_true_labels(recorded):
    run_ctx, jobs = recorded(pool=True)
    labelled = pipeline.fold_rows(run_ctx.fold_table, 0, "labelled")
    seen = _training_images(run_ctx, jobs[0])
    assert sorted(seen) == sorted(zip(labelled[PATH], labelled[LABEL]))
    others = run_ctx.fold_table[(run_ctx.fold_table[ROLE] != "labelled") | (run_ctx.fold_table["fold"] != 0)]
    assert not {p for p, _ in seen} & set(others.loc[others[ROLE].isin(["masked", "validation", "test", "pool"]) & ~others[PATH].isin(labelled[PATH]), PATH])


def test_student_learns_the_teachers_labels_not_the_hidden_ones_and_rows_stay_aligned(recorded):
    run_ctx, jobs = recorded(student_data="pseudo", pseudo_mode="hard", pool=True)
    seen = dict(_training_images(run_ctx, jobs[1]))
    masked = pipeline.fold_rows(run_ctx.fold_table, 0, "masked")
    assert set(seen) == set(masked[PATH]) | set(pipeline.fold_rows(run_ctx.fold_table, 0, "pool")[PATH])
    # The fake teacher is wrong on every masked image: each target must be the wrong class,
    # and for the right image (a misaligned row would pair some image with another's target).
    for path, hidden in zip(masked[PATH], masked[LABEL]):
        assert seen[path] != hidden
    validation_or_test = pd.concat([pipeline.fold_rows(run_ctx.fold_table, 0, r) for r in ("validation", "test")])
    assert not set(seen) & set(validation_or_test[PATH])


def test_student_data_both_keeps_every_labelled_row_with_its_true_label(recorded):
    run_ctx, jobs = recorded(student_data="both", pseudo_mode="soft")
    seen = _training_images(run_ctx, jobs[1])
    labelled = pipeline.fold_rows(run_ctx.fold_table, 0, "labelled")
    assert set(zip(labelled[PATH], labelled[LABEL])) <= set(seen)
    pseudo = len(pipeline.fold_rows(run_ctx.fold_table, 0, "masked")) + len(pipeline.fold_rows(run_ctx.fold_table, 0, "pool"))
    assert len(seen) == len(labelled) + pseudo


def test_students_are_built_with_their_dropout_and_stochastic_depth(recorded):
    run_ctx, jobs = recorded()
    student = build_model(jobs[1], run_ctx.config, torch.device("cpu"))
    teacher = build_model(jobs[0], run_ctx.config, torch.device("cpu"))
    dropouts = [m.p for m in student.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and max(dropouts) == run_ctx.config.student_dropout == 0.5
    assert student._global_params.drop_connect_rate == run_ctx.config.student_drop_connect == 0.2
    assert max(m.p for m in teacher.modules() if isinstance(m, torch.nn.Dropout)) == run_ctx.config.teacher_dropout


def test_select_last_keeps_the_last_epochs_weights_and_best_keeps_the_best():
    from noisystudent.training.trainer import TrainState, _selected

    model = torch.nn.Linear(2, 2)
    best = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    state = TrainState(next_epoch=3, best_score=0.9, best_epoch=1, best_state=best,
                       history=[{layout.EPOCH: e} for e in (1, 2, 3)])
    kept = _selected(make_config("/d", select="last"), state, model)
    assert kept.best_epoch == 3 and torch.equal(kept.best_state["weight"], model.weight)
    assert _selected(make_config("/d", select="best"), state, model) is state


def test_the_control_arm_trains_its_students_on_the_labelled_part_with_the_students_noise(recorded):
    """--student-data labelled (the control arm): the student of Noisy Student in every respect but the pseudo-labels."""
    _, ns_jobs = recorded(student_data="both", pseudo_mode="soft", pool=True)
    run_ctx, jobs = recorded(student_data="labelled", pseudo_mode="soft", pool=True)
    labelled = pipeline.fold_rows(run_ctx.fold_table, 0, "labelled")
    seen = _training_images(run_ctx, jobs[1])
    assert sorted(seen) == sorted(zip(labelled[PATH], labelled[LABEL]))  # exactly the labelled images, true labels, once each
    for field in ("arch", "weights", "dropout", "drop_connect", "augment_level", "seed", "val_labels"):
        assert np.array_equal(getattr(jobs[1], field), getattr(ns_jobs[1], field)), field  # the students' noise and start
    assert (jobs[1].dropout, jobs[1].augment_level) == (run_ctx.config.student_dropout, run_ctx.config.student_augment)
    assert not (run_ctx.run / "fold-0" / "round-0" / "pseudo_labels.csv").exists()  # no pseudo-labels are made
