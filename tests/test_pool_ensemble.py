"""--pool-labels ensemble: each round's pool pseudo-labels are the average of its K fold models, shared by every fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PATIENT_REGEX, save_cell, write_class_folders

from noisystudent import layout
from noisystudent.config.run_config import RunConfig
from noisystudent.config.settings import make_config
from noisystudent.data.manifest import PATH
from noisystudent.errors import ConfigError, RunFolderError
from noisystudent.models import checkpoint
from noisystudent.run import evidence, pipeline, pool_ensemble, pseudo_labels

CLASSES = ["benign", "malignant"]


def _config(data, **changes) -> RunConfig:
    settings = dict(data=str(data), patient_regex=PATIENT_REGEX, positive="malignant", folds=2, rounds=2, epochs=1,
                    image_size=16, batch_size=8, weights="none", arch="resnet18", test_fraction=0.25, eval_batch_size=64,
                    workers=1, student_data="both", pseudo_mode="soft", pool_labels="ensemble", select="last",
                    pool_images=str(data.parent / "pool"))
    return RunConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool-ensemble")
    for i in range(6):
        save_cell(root / "pool" / f"cell-{i}.png", i % 2, seed=200 + i, size=(16, 16))
    return write_class_folders(root / "data", patients_per_class=6, images_per_patient=2, size=(16, 16))


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, data):
    run, order = tmp_path_factory.mktemp("run") / "run", []
    original = pipeline.train_model

    def spy(job, *args, **kwargs):
        order.append((job.extra["round"], job.extra["fold"]))
        return original(job, *args, **kwargs)

    pipeline.train_model = spy
    try:
        table = pipeline.run_kfold(_config(data), run)
    finally:
        pipeline.train_model = original
    return run, order, table


def _probs(path) -> np.ndarray:
    return pd.read_csv(path)[[layout.prob_column(c) for c in CLASSES]].to_numpy()


@pytest.mark.slow
def test_every_folds_round_comes_before_any_folds_next_round(ensemble_run):
    _, order, _ = ensemble_run
    assert order == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


@pytest.mark.slow
def test_the_pool_is_labelled_by_the_average_of_the_rounds_fold_models_and_the_masked_part_by_its_own(ensemble_run):
    run, _, _ = ensemble_run
    for round_ in (0, 1):
        average = pd.read_csv(layout.pool_ensemble_file(run, round_))
        folds = [layout.round_dir(run, k, round_) / layout.POOL_PREDICTIONS for k in (0, 1)]
        np.testing.assert_allclose(_probs(layout.pool_ensemble_file(run, round_)), (_probs(folds[0]) + _probs(folds[1])) / 2, atol=1e-12)
        assert not np.allclose(_probs(folds[0]), _probs(folds[1]))  # two different models: the average is not either one
        expected = pseudo_labels.softmax(np.log(_probs(layout.pool_ensemble_file(run, round_))))
        for fold in (0, 1):
            labels = pd.read_csv(layout.round_dir(run, fold, round_) / layout.PSEUDO_LABELS).set_index(PATH)
            targets = labels[[c for c in labels if c.startswith(layout.TARGET_PREFIX)]]
            np.testing.assert_allclose(targets.loc[average[PATH]].to_numpy(), expected, atol=1e-6)  # the same for every fold
            own = pd.read_csv(layout.round_dir(run, fold, round_) / layout.PREDICTIONS)
            masked = own[own[layout.SPLIT] == layout.SPLIT_MASKED].set_index(PATH)
            np.testing.assert_allclose(targets.loc[masked.index].to_numpy(),
                                       masked[[layout.prob_column(c) for c in CLASSES]].to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_students_validation_rows_are_marked_selection_biased_and_the_test_set_is_not(ensemble_run):
    _, _, table = ensemble_run
    rows = table[table[layout.FOLD_COLUMN].astype(str).isin(["0", "1"])]
    validation, test = rows[rows[layout.EVAL_SPLIT] == "validation"], rows[rows[layout.EVAL_SPLIT] == "test"]
    assert validation[validation[layout.ROUND] >= 1][layout.SELECTION_BIASED].all()
    assert not validation[validation[layout.ROUND] == 0][layout.SELECTION_BIASED].any()  # --select last: the teachers saw nothing
    assert not table[table[layout.EVAL_SPLIT] == "test"][layout.SELECTION_BIASED].any() and len(test)


@pytest.mark.slow
def test_processes_that_take_turns_on_single_folds_end_where_one_process_ends(tmp_path, data, ensemble_run):
    reference, _, _ = ensemble_run
    run, config, calls = tmp_path / "run", _config(data), 0
    table = None
    while table is None:  # each call trains its fold as far as the other fold's models allow, then stops
        table = pipeline.run_kfold(config, run, only_folds=str(calls % 2))
        calls += 1
        assert calls <= 8
    assert calls > 2  # the processes met at every round
    for fold in (0, 1):
        mine, theirs = (checkpoint.load(layout.round_dir(r, fold, 2) / layout.MODEL)["model"] for r in (run, reference))
        for name, tensor in theirs.items():
            torch.testing.assert_close(mine[name], tensor, rtol=0, atol=0, msg=name)


def test_ensemble_pool_labels_are_refused_with_fixmatch():
    with pytest.raises(ConfigError, match="--pool-labels ensemble averages"):
        make_config("/d", method="fixmatch", pool_labels="ensemble")


def test_the_average_is_written_once_a_chunk_at_a_time_and_refuses_pools_in_different_orders(tmp_path):
    frame = pd.DataFrame({PATH: [f"p{i}.png" for i in range(5)], "label": "", "patient": "x", layout.SPLIT: "pool"})
    probs = [np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.6, 0.4], [0.0, 1.0]]), np.array([[0.7, 0.3], [0.4, 0.6], [0.1, 0.9], [0.6, 0.4], [1.0, 0.0]])]
    for fold, p in enumerate(probs):
        folder = layout.round_dir(tmp_path, fold, 0)
        folder.mkdir(parents=True)
        frame.assign(**{layout.prob_column(c): p[:, i] for i, c in enumerate(CLASSES)}).to_csv(folder / layout.POOL_PREDICTIONS, index=False)
        (folder / layout.PREDICTIONS).write_text("path\n")
    assert pool_ensemble.round_ready(tmp_path, 0, 0, needs_pool=True) and not pool_ensemble.round_ready(tmp_path, 0, 1, needs_pool=True)
    out = pool_ensemble.write_average(tmp_path, 2, 0, CLASSES, chunk=2)
    np.testing.assert_allclose(_probs(out), (probs[0] + probs[1]) / 2)
    assert pd.read_csv(out)[layout.PRED].tolist() == ["benign", "malignant", "malignant", "benign", "benign"]
    shuffled = frame.iloc[::-1].assign(**{layout.prob_column(c): probs[1][:, i] for i, c in enumerate(CLASSES)})
    shuffled.to_csv(layout.round_dir(tmp_path, 1, 0) / layout.POOL_PREDICTIONS, index=False)
    assert pool_ensemble.write_average(tmp_path, 2, 0, CLASSES) == out  # written once: not recomputed
    out.unlink()
    with pytest.raises(RunFolderError, match="different orders"):
        pool_ensemble.write_average(tmp_path, 2, 0, CLASSES)


def test_only_students_that_learnt_from_the_averaged_pool_have_their_validation_rows_marked():
    table = pd.DataFrame({layout.EVAL_SPLIT: ["validation", "validation", "test"], layout.ROUND: [0, 1, 1],
                          layout.FOLD_COLUMN: ["0", "0", "0"], layout.MODEL_KIND: ["teacher", "student", "student"]})
    marked = evidence._saw_other_folds(table, _config(Path("/d/x")))
    assert marked.tolist() == [False, True, True]  # mark_rows keeps only the validation rows of these
    assert not evidence._saw_other_folds(table, _config(Path("/d/x"), student_data="labelled")).any()  # the control arm
    assert not evidence._saw_other_folds(table, _config(Path("/d/x"), pool_labels="fold")).any()
