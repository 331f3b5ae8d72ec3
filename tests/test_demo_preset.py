"""The demo shows the method where it is expected to work: pretrained weights, few labels, a large masked pool."""

import pandas as pd
import pytest

from noisystudent.config.settings import make_config
from noisystudent.data.demo import DEMO_CELLS_PER_PATIENT, DEMO_PATIENTS_PER_CLASS
from noisystudent.data.folds import assign_folds
from noisystudent.data.manifest import make_manifest


def _demo_like_manifest() -> pd.DataFrame:
    """The demo data set's shape (patients x cells per class) without drawing a pixel."""
    rows = [{"path": f"/d/{label}_{p}_{c}.bmp", "label": label, "patient": f"{label}{p}", "subset": "train"}
            for label in ("all", "hem") for p in range(DEMO_PATIENTS_PER_CLASS) for c in range(DEMO_CELLS_PER_PATIENT)]
    return make_manifest(rows)


def test_the_demo_starts_from_imagenet_weights_that_need_no_network():
    config = make_config(None)
    assert (config.preset, config.arch, config.weights) == ("demo", "efficientnet-lite0", "imagenet")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_demo_fold_has_few_labels_and_a_masked_part_several_times_larger(seed):
    config = make_config(None, seed=seed)
    folds = assign_folds(_demo_like_manifest(), config.folds, config.split_ratio, config.test_fraction, config.seed)
    for fold in range(config.folds):
        roles = folds[folds["fold"] == fold]["role"].value_counts()
        assert roles["masked"] >= 3 * roles["labelled"]
    test_patients = folds.loc[folds["role"] == "test", "patient"].nunique()
    assert test_patients >= 10  # enough patients for the paired bootstrap to mean something
