"""The unlabelled pool on disk: listed, sorted with bounded memory, checked and looked up a chunk at a time."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import save_image, truncate

from noisystudent.data import pool as pool_module
from noisystudent.data.pool import PoolFile, external_sort, write_pool
from noisystudent.data.readers import pool_records
from noisystudent.errors import DataError, DiskFullError
from noisystudent.progress import Progress
from noisystudent.run.tables import read_table


def _records(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"/slides/{rng.randrange(10**9):09d}/cell-{i}.png", f"P{i % 7}") for i in range(count)]


@pytest.mark.parametrize("chunk, fan_in", [(10_000, 64), (37, 64), (5, 3)])
def test_external_sort_equals_sorted_for_one_run_many_runs_and_merge_levels(tmp_path, monkeypatch, chunk, fan_in):
    monkeypatch.setattr(pool_module, "MERGE_FAN_IN", fan_in)
    records = _records(400)
    records.append(("/slides/with, a comma \"and quotes\"/cell.png", ""))  # CSV quoting survives a run file
    assert list(external_sort(iter(records), tmp_path, chunk)) == sorted(records)
    assert bool(list(tmp_path.iterdir())) == (chunk < len(records))  # one chunk: sorted in memory, no run file


def test_external_sort_holds_at_most_one_chunk(tmp_path):
    taken = []

    def counted():
        for index, record in enumerate(_records(100)):
            taken.append(index)
            yield record

    merged = external_sort(counted(), tmp_path, 10)
    assert len(taken) == 100 and len(list(tmp_path.glob("run-*.csv"))) == 10  # ten sorted runs on disk
    assert next(merged) == min(_records(100))


def _pool_folder(root: Path) -> Path:
    save_image(root / "b" / "x.png")
    save_image(root / "a" / "deeper" / "y.bmp")
    save_image(root / ".hidden" / "z.png")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_a_folder_is_listed_recursively_sorted_without_hidden_files_or_other_entries(tmp_path, caplog):
    folder = _pool_folder(tmp_path / "pool")
    pool, skipped = write_pool(pool_records(folder), tmp_path / "pool.csv", set(), skip_unreadable=False, workers=1)
    table = read_table(pool.path)
    assert table["path"].tolist() == [str(folder / "a" / "deeper" / "y.bmp"), str(folder / "b" / "x.png")]
    assert table["patient"].tolist() == ["", ""] and pool.count == 2 and skipped == []
    assert "1 entries" in caplog.text and "notes.txt" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool", "pool.csv"]  # no scratch folder left


def test_a_csv_pool_drops_labels_keeps_patients_and_resolves_relative_paths(tmp_path):
    for name in ("a.png", "b.png"):
        save_image(tmp_path / "images" / name)
    csv = tmp_path / "images" / "pool.csv"
    csv.write_text("path,label,patient\nb.png,x,p9\na.png,,\n")
    pool, _ = write_pool(pool_records(csv), tmp_path / "pool.csv", set(), skip_unreadable=False, workers=1)
    table = read_table(pool.path)
    assert table.values.tolist() == [[str(tmp_path / "images" / "a.png"), ""], [str(tmp_path / "images" / "b.png"), "P9"]]


def test_duplicates_labelled_images_and_empty_pools_are_refused(tmp_path):
    image = str(save_image(tmp_path / "x.png"))
    with pytest.raises(DataError, match="listed more than once"):
        write_pool(iter([(image, ""), (image, "")]), tmp_path / "pool.csv", set(), False, 1)
    with pytest.raises(DataError, match="both a labelled image and in the pool"):
        write_pool(iter([(image, "")]), tmp_path / "pool.csv", {image}, False, 1)
    with pytest.raises(DataError, match="The folder pool contains no readable images"):
        write_pool(iter([]), tmp_path / "pool.csv", set(), False, 1, source="The folder pool")
    assert not (tmp_path / "pool.csv").exists()  # a refused pool leaves no file
    assert not list(tmp_path.glob(".pool-sort-*"))


def test_unreadable_files_stop_the_listing_or_are_skipped_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "CHECK_CHUNK", 2)  # the bad file is in the second chunk
    paths = [str(save_image(tmp_path / f"c{i}.png", size=(16, 16))) for i in range(5)]
    truncate(Path(paths[3]), keep=0.3)
    records = [(path, "") for path in paths]
    with pytest.raises(DataError, match="c3.png"):
        write_pool(iter(records), tmp_path / "pool.csv", set(), False, 1)
    pool, skipped = write_pool(iter(records), tmp_path / "pool.csv", set(), True, 1)
    assert read_table(pool.path)["path"].tolist() == paths[:3] + paths[4:] and pool.count == 4
    assert [path for path, _ in skipped] == [paths[3]]


def test_positions_are_found_in_one_pass_in_any_order(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "READ_CHUNK", 3)
    paths = [str(save_image(tmp_path / "pool" / f"c{i:02d}.png")) for i in range(10)]
    pool, _ = write_pool(((p, "") for p in reversed(paths)), tmp_path / "pool.csv", set(), False, 1)
    assert PoolFile.open(pool.path) == pool
    wanted = [paths[7], paths[0], paths[7], paths[9]]
    np.testing.assert_array_equal(pool.positions(wanted), [7, 0, 7, 9])
    with pytest.raises(DataError, match="elsewhere.png"):
        pool.positions([paths[1], "/x/elsewhere.png"])
    assert pool.patients() == set()


def test_listing_and_checking_report_progress_with_the_listed_total(tmp_path, monkeypatch):
    monkeypatch.setattr(pool_module, "CHECK_CHUNK", 2)
    events = []

    class Recorder(Progress):
        def start(self, key, description, total=None):
            events.append(("start", description, total))

        def update(self, key, completed=None, description=None, **info):
            events.append(("update", completed))

    records = [(str(save_image(tmp_path / f"c{i}.png")), "") for i in range(5)]
    write_pool(iter(records), tmp_path / "pool.csv", set(), False, 1, progress=Recorder())
    assert ("start", "checking the unlabelled pool", 5) in events
    assert events[-1] == ("update", 5) and ("update", 2) in events  # listed two at a time, checked chunk by chunk


def test_a_resumed_listing_decodes_only_the_files_the_earlier_listing_lacks(tmp_path, monkeypatch):
    paths = [str(save_image(tmp_path / "pool" / f"c{i}.png")) for i in range(6)]
    first, _ = write_pool(((p, "") for p in paths[:4]), tmp_path / "first.csv", set(), False, 1)
    probed = []
    real = pool_module.check_images
    monkeypatch.setattr(pool_module, "check_images", lambda batch, workers: probed.extend(batch) or real(batch, workers))
    again, _ = write_pool(((p, "") for p in paths), tmp_path / "again.csv", set(), False, 1, checked=first)
    assert probed == paths[4:] and again.count == 6
    assert read_table(again.path)["path"].tolist() == paths


def test_a_full_disk_while_sorting_is_one_sentence_and_leaves_no_scratch(tmp_path, monkeypatch):
    def full(records, scratch):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pool_module, "SORT_CHUNK", 10)  # 30 records: sorted runs go to disk
    monkeypatch.setattr(pool_module, "_write_run", full)
    with pytest.raises(DiskFullError, match="while sorting the unlabelled pool"):
        write_pool(iter(_records(30)), tmp_path / "pool.csv", set(), False, 1)
    assert list(tmp_path.iterdir()) == []
