"""A model that calls every image one class is named in a warning (run/collapse.py)."""

import logging

import pandas as pd

from noisystudent import layout
from noisystudent.run.collapse import single_class, warn_if_single_class


def _predictions(test_preds, validation_preds=("all", "hem")):
    rows = [("test", p) for p in test_preds] + [("validation", p) for p in validation_preds]
    return pd.DataFrame(rows, columns=[layout.SPLIT, layout.PRED])


def test_a_model_calling_every_test_image_one_class_is_found():
    assert single_class(_predictions(["hem", "hem", "hem"])) == ("test", "hem", 3)


def test_a_model_with_two_classes_on_the_test_set_passes_even_if_validation_is_one_class():
    assert single_class(_predictions(["all", "hem"], validation_preds=("hem", "hem"))) is None


def test_without_a_test_set_the_validation_part_is_checked():
    assert single_class(_predictions([], validation_preds=("all", "all"))) == ("validation", "all", 2)


def test_the_warning_names_the_model_and_the_class(caplog):
    with caplog.at_level(logging.WARNING, logger="noisystudent"):
        assert warn_if_single_class(_predictions(["all"] * 4), "The fold 1 teacher")
    assert "fold 1 teacher" in caplog.text and "'all' for all 4 test images" in caplog.text
    caplog.clear()
    assert not warn_if_single_class(_predictions(["all", "hem"]), "The fold 1 teacher")
    assert caplog.text == ""
