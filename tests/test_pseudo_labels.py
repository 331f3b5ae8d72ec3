import logging

import numpy as np
import pandas as pd
import pytest
import torch

from noisystudent.errors import ConfigError, DataError
from noisystudent.layout import CONFIDENCE, COPIES, PRED, target_column
from noisystudent.run.pseudo_labels import (
    Selection,
    load_pseudo_labels,
    make_pseudo_labels,
    pseudo_label_columns,
    pseudo_label_summary,
    save_pseudo_labels,
    write_streamed,
)

CLASSES = ["all", "hem"]


def _paths(n):
    return [f"/data/img{i}.png" for i in range(n)]


def _targets(frame, classes=CLASSES):
    return frame[[target_column(c) for c in classes]].to_numpy()


def test_soft_targets_are_softmax_of_logits_over_temperature():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    frame = make_pseudo_labels(_paths(3), logits, CLASSES, mode="soft", temperature=1.0)
    expected = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=1).numpy()
    np.testing.assert_allclose(_targets(frame), expected, rtol=0, atol=1e-15)
    assert list(frame.columns) == pseudo_label_columns(CLASSES)
    assert frame[PRED].tolist() == ["all", "hem", "all"]
    assert frame[COPIES].tolist() == [1, 1, 1]
    np.testing.assert_allclose(frame[CONFIDENCE], expected.max(axis=1), atol=1e-15)


def test_temperature_flattens_targets_but_not_confidence():
    logits = np.array([[2.0, 0.0]])
    frame = make_pseudo_labels(_paths(1), logits, CLASSES, temperature=2.0)
    # softmax([1, 0]) = [e / (e + 1), 1 / (e + 1)]
    e = np.e
    np.testing.assert_allclose(_targets(frame)[0], [e / (e + 1), 1 / (e + 1)], atol=1e-15)
    # confidence is always taken at temperature 1: e^2 / (e^2 + 1)
    assert frame[CONFIDENCE].iloc[0] == pytest.approx(e**2 / (e**2 + 1), abs=1e-15)


def test_hard_targets_are_one_hot_of_argmax():
    logits = np.array([[0.2, 0.1, 0.0], [0.0, 0.0, 5.0], [-1.0, 3.0, 2.9]])
    frame = make_pseudo_labels(_paths(3), logits, ["a", "b", "c"], mode="hard", temperature=3.0)
    np.testing.assert_array_equal(_targets(frame, ["a", "b", "c"]), [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert frame[PRED].tolist() == ["a", "c", "b"]


def test_threshold_drops_exactly_the_unconfident_rows(caplog):
    # log-odds chosen so confidences are sigmoid(d): 0.5, 0.73, 0.88, 0.95, 0.6 (hem)
    logits = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 0.405]])
    with caplog.at_level(logging.INFO, logger="noisystudent.run.pseudo_labels"):
        frame = make_pseudo_labels(_paths(5), logits, CLASSES, threshold=0.7)
    assert frame["path"].tolist() == ["/data/img1.png", "/data/img2.png", "/data/img3.png"]
    assert "dropped 2 of 5" in caplog.text


def test_threshold_equal_to_confidence_keeps_the_row():
    logits = np.array([[0.0, 0.0]])  # confidence exactly 0.5
    assert len(make_pseudo_labels(_paths(1), logits, CLASSES, threshold=0.5)) == 1


def test_balance_caps_the_commoner_class_and_duplicates_the_rarer():
    # 10 'all' with confidence increasing with index, 3 'hem' likewise.
    all_logits = np.stack([np.linspace(1, 10, 10), np.zeros(10)], axis=1)
    hem_logits = np.stack([np.zeros(3), np.array([1.0, 3.0, 2.0])], axis=1)
    logits = np.concatenate([all_logits, hem_logits])
    frame = make_pseudo_labels(_paths(13), logits, CLASSES, balance=True)
    # target = round_half_up((10 + 3) / 2) = 7
    kept_all = frame[frame[PRED] == "all"]
    assert kept_all["path"].tolist() == [f"/data/img{i}.png" for i in range(3, 10)]  # 7 most confident
    assert kept_all[COPIES].tolist() == [1] * 7
    hem = frame[frame[PRED] == "hem"].set_index("path")[COPIES]
    # 7 = 3 * 2 + 1: every hem image twice, the most confident (img11) once more.
    assert hem.to_dict() == {"/data/img10.png": 2, "/data/img11.png": 3, "/data/img12.png": 2}
    assert frame[COPIES].dtype == np.int64


def test_balance_breaks_confidence_ties_by_seed_not_file_order():
    logits = np.array([[50.0, 0.0]] * 6 + [[0.0, 50.0]] * 2)  # all confidences equal (1.0)
    picks = {
        seed: tuple(make_pseudo_labels(_paths(8), logits, CLASSES, balance=True, seed=seed)["path"])
        for seed in range(6)
    }
    assert all(len(p) == 4 + 2 for p in picks.values())  # target 4: 4 'all' + 2 'hem' (2 copies each)
    assert len(set(picks.values())) > 1
    again = make_pseudo_labels(_paths(8), logits, CLASSES, balance=True, seed=3)
    assert tuple(again["path"]) == picks[3]


def test_class_without_images_warns(caplog):
    logits = np.array([[2.0, 0.0], [3.0, 0.0]])
    with caplog.at_level(logging.WARNING, logger="noisystudent.run.pseudo_labels"):
        frame = make_pseudo_labels(_paths(2), logits, CLASSES, balance=True)
    assert "'hem'" in caplog.text
    assert frame[COPIES].tolist() == [1, 1]


def test_bad_settings_and_shapes_are_refused():
    logits = np.zeros((2, 2))
    with pytest.raises(ConfigError):
        make_pseudo_labels(_paths(2), logits, CLASSES, mode="fuzzy")
    with pytest.raises(ConfigError):
        make_pseudo_labels(_paths(2), logits, CLASSES, temperature=0.0)
    with pytest.raises(ValueError):
        make_pseudo_labels(_paths(3), logits, CLASSES)


def test_summary_counts_and_confidence():
    logits = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    summary = pseudo_label_summary(make_pseudo_labels(_paths(3), logits, CLASSES), CLASSES)
    high = np.exp(3) / (np.exp(3) + 1)
    assert summary["images"] == 3 and summary["epoch_images"] == 3
    assert summary["count_all"] == 2 and summary["count_hem"] == 1
    assert summary["mean_confidence"] == pytest.approx((0.5 + 2 * high) / 3)
    assert summary["share_confident"] == pytest.approx(2 / 3)
    assert summary["mean_confidence_hem"] == pytest.approx(high)


def test_csv_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(13, 2)) * 3
    frame = make_pseudo_labels(_paths(13), logits, CLASSES, temperature=1.7, balance=True)
    path = tmp_path / "round-0" / "pseudo_labels.csv"
    save_pseudo_labels(frame, path)
    assert [p.name for p in path.parent.iterdir()] == ["pseudo_labels.csv"]  # no temp file left
    pd.testing.assert_frame_equal(pd.read_csv(path), frame, check_exact=False, rtol=1e-15, atol=0)
    paths, targets, copies = load_pseudo_labels(path, CLASSES)
    assert paths == frame["path"].tolist()
    assert targets.dtype == np.float32 and copies.dtype == np.int64
    np.testing.assert_allclose(targets, _targets(frame).astype(np.float32), rtol=1e-7, atol=0)
    np.testing.assert_array_equal(copies, frame[COPIES].to_numpy())


def _write(tmp_path, frame):
    path = tmp_path / "pseudo_labels.csv"
    frame.to_csv(path, index=False)
    return path


def _good_frame():
    return make_pseudo_labels(_paths(2), np.array([[1.0, 0.0], [0.0, 2.0]]), CLASSES)


def test_missing_column_is_a_data_error_naming_the_file(tmp_path):
    path = _write(tmp_path, _good_frame().drop(columns=[COPIES]))
    with pytest.raises(DataError, match="pseudo_labels.csv.*'copies'"):
        load_pseudo_labels(path, CLASSES)


def test_targets_not_summing_to_one_is_a_data_error(tmp_path):
    frame = _good_frame()
    frame.loc[1, target_column("hem")] += 1e-3
    with pytest.raises(DataError, match="img1.png"):
        load_pseudo_labels(_write(tmp_path, frame), CLASSES)


def test_unreadable_or_non_numeric_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="cannot be read"):
        load_pseudo_labels(tmp_path / "absent.csv", CLASSES)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv"):
        load_pseudo_labels(tmp_path / "empty.csv", CLASSES)
    frame = _good_frame()
    frame[target_column("all")] = ["x", "0.5"]
    with pytest.raises(DataError, match="not numbers"):
        load_pseudo_labels(_write(tmp_path, frame), CLASSES)
    frame = _good_frame()
    frame[COPIES] = [1, 0]
    with pytest.raises(DataError, match="copies"):
        load_pseudo_labels(_write(tmp_path, frame), CLASSES)


def test_per_class_gives_every_class_exactly_that_many_copies_from_the_most_confident():
    # 6 confident-to-less 'all' images, 2 'hem' images; 3 per class: top 3 'all' once, 'hem' 2 + 1 copies
    logits = np.array([[6.0, 0.0], [5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    frame = make_pseudo_labels(_paths(8), logits, CLASSES, mode="hard", per_class=3)
    assert frame.groupby(PRED)[COPIES].sum().to_dict() == {"all": 3, "hem": 3}
    assert frame.loc[frame[PRED] == "all", "path"].tolist() == _paths(3)
    assert frame.loc[frame[PRED] == "hem", COPIES].tolist() == [2, 1]  # the more confident one repeated once more
    # --pseudo-balance alone balances to the mean count, round(4) = 4
    assert make_pseudo_labels(_paths(8), logits, CLASSES, balance=True).groupby(PRED)[COPIES].sum().to_dict() == {"all": 4, "hem": 4}


def _probability_tables(rng, n, classes, chunk):
    """predictions-like tables (path, prob_<c>) of n images cut into chunks of ``chunk`` rows."""
    probs = rng.dirichlet(np.ones(len(classes)) * 0.5, size=n)
    probs[rng.random(n) < 0.2] = probs[0]  # equal confidences: the seeded tie-break must matter
    frame = pd.DataFrame({"path": _paths(n), **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}})
    return [frame.iloc[start : start + chunk] for start in range(0, n, chunk)], frame


@pytest.mark.parametrize("settings", [
    {"mode": "soft", "temperature": 0.7}, {"mode": "hard", "threshold": 0.6},
    {"mode": "soft", "balance": True, "threshold": 0.5, "seed": 3}, {"mode": "hard", "per_class": 40, "seed": 1},
])
def test_streamed_pseudo_labels_write_the_same_file_as_the_whole_table(tmp_path, settings):
    classes = ["a", "b", "c"]
    chunks, whole = _probability_tables(np.random.default_rng(7), 301, classes, chunk=64)
    logits = np.log(np.clip(whole[[f"prob_{c}" for c in classes]].to_numpy(), 1e-30, 1.0))
    save_pseudo_labels(make_pseudo_labels(whole["path"].tolist(), logits, classes, **settings), tmp_path / "whole.csv")
    kept = write_streamed(lambda: iter(chunks), classes, tmp_path / "streamed.csv", **settings)
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert kept == len(pd.read_csv(tmp_path / "whole.csv")) > 0


def test_streamed_pseudo_labels_write_nothing_when_no_image_passes(tmp_path):
    chunks, _ = _probability_tables(np.random.default_rng(0), 50, CLASSES, chunk=16)
    assert write_streamed(lambda: iter(chunks), CLASSES, tmp_path / "none.csv", threshold=1.0) == 0
    assert not (tmp_path / "none.csv").exists()


@pytest.mark.parametrize("per_class, bound", [(5, 10), (0, None)])
def test_per_class_remembers_at_most_that_many_images_per_class_whatever_the_pool(per_class, bound):
    rng = np.random.default_rng(0)
    selection = Selection(CLASSES, 0.5, balance=True, seed=0, per_class=per_class)
    for _ in range(40):  # 40,000 images in chunks of 1,000
        selection.add(rng.uniform(0.4, 1.0, 1000), rng.integers(0, 2, 1000))
        assert bound is None or selection.remembered <= bound
    selection.finish()
    copies = np.concatenate([selection.copies(start, np.ones(1000), np.zeros(1000, np.int64)) for start in range(0, 40_000, 1000)])
    assert copies.sum() == 2 * (per_class or int(np.floor(selection.counts.mean() + 0.5)))
    assert bound is not None or selection.remembered == selection.counts.sum()  # the mean needs every kept image
