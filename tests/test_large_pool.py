"""An unlabelled pool is streamed: predicted and pseudo-labelled a chunk at a time, with the same results."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import PATIENT_REGEX, save_image, write_class_folders

from noisystudent import layout
from noisystudent.config.run_config import RunConfig
from noisystudent.data.manifest import LABEL, PATH
from noisystudent.report.build import write_report
from noisystudent.run import digests, pipeline, pseudo_labels, session
from noisystudent.run.tables import read_table

CLASSES = ["benign", "malignant"]
POOL_IMAGES = 23


def _pool(folder):
    """POOL_IMAGES tinted cells in three 'slides' (sub-folders), plus a note that is not an image."""
    rng = np.random.default_rng(5)
    for i in range(POOL_IMAGES):
        save_image(folder / f"slide-{i % 3}" / f"cell-{i:02d}.png", colour=tuple(int(v) for v in rng.integers(0, 256, 3)), size=(24, 24))
    (folder / "slide-0" / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    data = write_class_folders(root / "data", patients_per_class=4, images_per_patient=3)
    config = RunConfig(
        data=str(data), pool_images=str(_pool(root / "pool")), patient_regex=PATIENT_REGEX, positive="malignant",
        folds=2, rounds=1, epochs=1, image_size=32, batch_size=8, weights="none", arch="resnet18", test_fraction=0,
        optimizer="adamw", lr=0.003, scheduler="cosine",
        device="cpu", workers=1, eval_batch_size=4, pseudo_mode="soft", pseudo_temperature=2.0, pseudo_per_class=9,
    )
    chunk = pipeline.POOL_CHUNK
    pipeline.POOL_CHUNK = 5  # several chunks of the pool table, the last one short
    try:
        pipeline.run_kfold(config, root / "run")
    finally:
        pipeline.POOL_CHUNK = chunk
    return root / "run", config, root / "pool"


@pytest.mark.slow
def test_pool_predictions_are_written_apart_and_only_where_a_next_round_needs_them(pool_run):
    run, config, pool = pool_run
    pool_paths = sorted(str(path) for path in pool.rglob("*.png"))
    assert read_table(run / layout.POOL)[PATH].tolist() == pool_paths  # the pool list, sorted, the note left out
    assert "pool" not in set(read_table(run / layout.FOLDS)["role"])  # the pool is not in folds.csv
    for fold in range(config.folds):
        teacher, student = layout.round_dir(run, fold, 0), layout.round_dir(run, fold, 1)
        table = read_table(teacher / layout.POOL_PREDICTIONS)
        assert table[PATH].tolist() == pool_paths  # every pool image once, in the pool's order, across the chunks
        assert set(table[layout.SPLIT]) == {"pool"} and (table[LABEL] == "").all()
        np.testing.assert_allclose(table[[layout.prob_column(c) for c in CLASSES]].sum(axis=1), 1.0, atol=1e-5)
        for folder in (teacher, student):
            assert "pool" not in set(read_table(folder / layout.PREDICTIONS)[layout.SPLIT])
        assert not (student / layout.POOL_PREDICTIONS).exists()  # the last round labels nobody


@pytest.mark.slow
def test_streamed_pseudo_labels_equal_those_of_the_whole_table(pool_run, tmp_path):
    run, config, _ = pool_run
    for fold in range(config.folds):
        teacher = layout.round_dir(run, fold, 0)
        predictions = read_table(teacher / layout.PREDICTIONS)
        whole = pd.concat([predictions[predictions[layout.SPLIT] == "masked"], read_table(teacher / layout.POOL_PREDICTIONS)])
        expected = pseudo_labels.make_pseudo_labels(
            whole[PATH].tolist(), pseudo_labels.teacher_logits(whole, CLASSES), CLASSES, mode="soft", temperature=2.0,
            per_class=9, seed=pipeline.derive_seed(config.seed, "pseudo", fold, 0),
        )
        pseudo_labels.save_pseudo_labels(expected, tmp_path / f"expected-{fold}.csv")
        written = teacher / layout.PSEUDO_LABELS
        assert written.read_bytes() == (tmp_path / f"expected-{fold}.csv").read_bytes()
        table = read_table(written)
        assert table.groupby(layout.PRED)[layout.COPIES].sum().to_dict() == dict.fromkeys(set(table[layout.PRED]), 9)
        assert table[PATH].str.contains("cell-").any()  # pool images are among them


@pytest.mark.slow
def test_report_of_a_pool_run_counts_the_pool(pool_run):
    run, _, _ = pool_run
    page = write_report(run).read_text()
    assert "unlabelled pool" in page and f">{POOL_IMAGES}<" in page


@pytest.mark.slow
def test_resume_makes_the_same_pseudo_labels_from_the_saved_pool_predictions(pool_run, tmp_path):
    run, config, _ = pool_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "results", ignore_errors=True)
    before = (layout.round_dir(run, 0, 0) / layout.PSEUDO_LABELS).read_bytes()
    (layout.round_dir(copy, 0, 0) / layout.PSEUDO_LABELS).unlink()  # fold 0 stopped after predicting the pool
    (layout.round_dir(copy, 1, 0) / layout.POOL_PREDICTIONS).unlink()  # fold 1: pseudo-labels made, pool file gone
    for fold in range(config.folds):
        shutil.rmtree(layout.round_dir(copy, fold, 1))
    pipeline.run_kfold(config, copy, resume=True)
    assert (layout.round_dir(copy, 0, 0) / layout.PSEUDO_LABELS).read_bytes() == before
    assert not (layout.round_dir(copy, 1, 0) / layout.POOL_PREDICTIONS).exists()  # not predicted again for nothing
    assert (layout.round_dir(copy, 1, 1) / layout.PREDICTIONS).exists()


def _as_made_before_the_pool_file(run, pool_paths):
    """The run folder as versions before pool.csv wrote it: the pool as rows of folds.csv, no pool.csv."""
    folds = read_table(run / layout.FOLDS)
    pool = pd.DataFrame({PATH: pool_paths, LABEL: "", "patient": "", "subset": "pool", "fold": -1, "role": "pool"})
    pd.concat([folds, pool], ignore_index=True).to_csv(run / layout.FOLDS, index=False)
    (run / layout.POOL).unlink()
    digests.record(run, layout.FOLDS, digests.file_sha256(run / layout.FOLDS))  # a legacy layout, with its digest


@pytest.mark.slow
def test_a_run_with_its_pool_in_folds_csv_resumes_with_the_same_pseudo_labels(pool_run, tmp_path, monkeypatch):
    run, config, pool = pool_run
    monkeypatch.setattr(pipeline, "POOL_CHUNK", 5)  # the pool predicted in the same batches as the first time
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _as_made_before_the_pool_file(copy, read_table(run / layout.POOL)[PATH].tolist())
    teacher = layout.round_dir(copy, 0, 0)
    before = (teacher / layout.PSEUDO_LABELS).read_bytes()
    for name in (layout.PSEUDO_LABELS, layout.POOL_PREDICTIONS):
        (teacher / name).unlink()
    shutil.rmtree(layout.round_dir(copy, 0, 1))
    pipeline.run_kfold(config, copy, resume=True)  # same data fingerprint: the pool is listed, found equal, and left in folds.csv
    assert (teacher / layout.PSEUDO_LABELS).read_bytes() == before
    assert not (copy / layout.POOL).exists() and not list(copy.glob(".pool*"))
    assert (layout.round_dir(copy, 0, 1) / layout.PREDICTIONS).exists()


def test_a_changed_pool_is_refused_on_resume_and_the_run_keeps_its_pool_list(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=4, images_per_patient=3)
    pool = _pool(tmp_path / "pool")
    config = RunConfig(data=str(data), pool_images=str(pool), patient_regex=PATIENT_REGEX, positive="malignant", folds=2,
                       image_size=16, weights="none", test_fraction=0, device="cpu", workers=1)
    run = tmp_path / "run"
    run.mkdir()
    run_ctx = session.prepare_run(config, run, resume=False, join=False, progress=pipeline.NULL_PROGRESS)  # no training
    assert run_ctx.pool.count == POOL_IMAGES and len(run_ctx.cache) == len(run_ctx.fold_table["path"].unique()) + POOL_IMAGES
    before = (run / layout.POOL).read_bytes()
    save_image(pool / "slide-9" / "new.png", size=(24, 24))
    with pytest.raises(pipeline.ConfigError, match="have changed since it began"):
        session.prepare_run(config, run, resume=True, join=False, progress=pipeline.NULL_PROGRESS)
    assert (run / layout.POOL).read_bytes() == before and not list(run.glob(".pool*"))
