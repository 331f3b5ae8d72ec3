"""Copies of one image under two names, found by their pixels: refused across training and test, kept together in folds, left out of the pool."""

from __future__ import annotations

import shutil

import pytest
from helpers import invoke_cli, save_cell, tiny_flags, write_class_folders, write_csv
from PIL import Image

from noisystudent.config.settings import make_config
from noisystudent.data import readers
from noisystudent.data.duplicates import CONTENTS, find_twins
from noisystudent.data.folds import assign_folds
from noisystudent.data.manifest import PATH, ROLE
from noisystudent.data.run_images import load_run_images
from noisystudent.errors import DataError
from noisystudent.run.tables import read_table


def _reencoded_copy(source, target):
    """The same pixels in another format and under another name: a path comparison cannot see it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).save(target)
    return target


def test_a_copy_of_a_training_image_in_the_test_set_is_refused_naming_both(tmp_path):
    data = write_class_folders(tmp_path / "data")
    test_rows = [{"path": str(save_cell(tmp_path / "test" / f"t{i}.png", i % 2, seed=500 + i)), "label": ["benign", "malignant"][i % 2]}
                 for i in range(3)]
    copy = _reencoded_copy(data / "malignant" / "p05_1.png", tmp_path / "test" / "renamed.bmp")
    test_csv = write_csv(tmp_path / "test.csv", test_rows + [{"path": str(copy), "label": "malignant"}])
    code, output = invoke_cli("kfold", data, "--test", test_csv, "--out", tmp_path / "run", *tiny_flags())
    assert code == 2
    assert (f"The training image {data / 'malignant' / 'p05_1.png'} and the test image {copy} have the same pixels" in output)
    assert not (tmp_path / "run").exists()


def test_copies_among_the_training_images_share_every_fold_part_even_without_patient_ids(tmp_path, caplog):
    data = write_class_folders(tmp_path / "data", patients_per_class=6, images_per_patient=1)
    first, copy = data / "benign" / "p01_0.png", data / "benign" / "zz_copy.png"
    shutil.copyfile(first, copy)
    manifest, _ = readers.read_dataset(data)  # no patient regex: no patient ids
    twins = find_twins(manifest, manifest.attrs[CONTENTS])
    assert twins == {str(first): str(first), str(copy): str(first)}
    assert f"(e.g. {first} and {copy})" in caplog.text
    for seed in range(4):
        folds = assign_folds(manifest, n_folds=3, test_fraction=0.2, seed=seed, twins=twins)
        roles = folds[folds[PATH].isin(twins)].groupby("fold")[ROLE].nunique()
        assert (roles == 1).all()  # never one copy in the labelled part and the other in validation or test


def test_copies_with_two_patient_ids_are_refused():
    import pandas as pd

    images = pd.DataFrame({"path": ["/a.png", "/b.png"], "label": ["x", "x"], "patient": ["P1", "P2"], "subset": ["train", "train"]})
    with pytest.raises(DataError, match=r"The images /a.png \(patient P1\) and /b.png \(patient P2\) have the same pixels"):
        find_twins(images, {"/a.png": "d", "/b.png": "d"})


def test_a_pool_image_without_patient_id_that_copies_a_labelled_image_is_left_out(tmp_path, caplog):
    data = write_class_folders(tmp_path / "data")
    extra = tmp_path / "extra"
    save_cell(extra / "new.png", 0, seed=900)
    copy = _reencoded_copy(data / "benign" / "p02_3.png", extra / "IMG_0001.bmp")
    config = make_config(data, preset="smoke", pool_images=str(extra), positive="malignant")
    pool = load_run_images(config, tmp_path, list_pool=True).pool
    assert read_table(pool.path)[PATH].tolist() == [str(extra / "new.png")]
    assert (f"1 unlabelled images have the same pixels as a labelled or test image (e.g. {copy} and "
            f"{data / 'benign' / 'p02_3.png'}) and are left out of the pool") in caplog.text
    assert "1 unlabelled images have no patient id: the pool is checked against the labelled and test images by their pixels only" in caplog.text
