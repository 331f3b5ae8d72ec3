import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisystudent.data.demo import MARKER, generate_demo
from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.data.readers import read_dataset
from noisystudent.errors import DataError


def files_and_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.bmp"))}


def nucleus_fraction(path: str) -> float:
    """Share of the cell's pixels clearly darker than its cytoplasm in green,
    the channel the purple nucleus absorbs most."""
    pixels = np.asarray(Image.open(path), dtype=float)
    cell, green = pixels.max(axis=2) > 20, pixels[..., 1]
    cytoplasm = np.percentile(green[cell], 90)
    return float((green[cell] < 0.85 * cytoplasm).mean())


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), n_patients_per_class=6, cells_per_patient=10, size=48, seed=0)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    first = generate_demo(tmp_path / "a", n_patients_per_class=2, cells_per_patient=3, size=24, seed=5)
    again = generate_demo(tmp_path / "b", n_patients_per_class=2, cells_per_patient=3, size=24, seed=5)
    other = generate_demo(tmp_path / "c", n_patients_per_class=2, cells_per_patient=3, size=24, seed=6)
    assert files_and_bytes(first) == files_and_bytes(again)
    assert files_and_bytes(first).keys() == files_and_bytes(other).keys()
    assert files_and_bytes(first) != files_and_bytes(other)


def test_layout_counts_patients_and_folds(demo):
    manifest, data_format = read_dataset(demo)
    assert data_format == "cnmc" and len(manifest) == 120
    per_class = manifest.groupby(LABEL)[PATIENT].unique().apply(sorted).to_dict()
    assert per_class == {"all": ["1", "2", "3", "4", "5", "6"], "hem": ["H1", "H2", "H3", "H4", "H5", "H6"]}
    assert (manifest.groupby(PATIENT).size() == 10).all()
    folds = manifest[PATH].str.extract(r"fold_(\d)/")[0]
    assert manifest.assign(fold=folds).groupby(PATIENT)["fold"].nunique().max() == 1
    assert sorted(folds.unique()) == ["0", "1", "2"]
    assert (demo / "training_data/fold_1/all/UID_2_4_1_all.bmp").is_file()  # cell 10 = image 4, cell 1


def test_images_are_rgb_cells_on_black(demo):
    for path in sorted(demo.rglob("*.bmp"))[::7]:
        pixels = np.asarray(Image.open(path))
        assert Image.open(path).mode == "RGB" and pixels.shape == (48, 48, 3)
        for corner in (pixels[:3, :3], pixels[:3, -3:], pixels[-3:, :3], pixels[-3:, -3:]):
            assert (corner == 0).all()
        cell_share = (pixels.max(axis=2) > 20).mean()
        assert 0.15 < cell_share < 0.6


def test_classes_differ_but_overlap(demo):
    manifest, _ = read_dataset(demo)
    fraction = manifest[PATH].map(nucleus_fraction)
    all_cells, hem_cells = fraction[manifest[LABEL] == "all"], fraction[manifest[LABEL] == "hem"]
    # ALL blasts have the larger nucleus, by a clear margin on average ...
    assert all_cells.mean() - hem_cells.mean() > 0.05
    # ... but single cells of the two classes overlap, so one threshold cannot separate them.
    assert hem_cells.max() > all_cells.min()
    accuracy = max(((fraction > t) == (manifest[LABEL] == "all")).mean() for t in fraction)
    assert 0.6 < accuracy < 0.97


def test_second_call_reuses_the_folder(demo):
    stamps = {p: p.stat().st_mtime_ns for p in demo.rglob("*.bmp")}
    again = generate_demo(demo.parent, n_patients_per_class=6, cells_per_patient=10, size=48, seed=0)
    assert again == demo
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*.bmp")} == stamps
    assert [p.name for p in demo.parent.iterdir()] == ["C-NMC_Leukemia"]  # no staging left


def test_other_parameters_replace_the_demo_folder(tmp_path):
    folder = generate_demo(tmp_path, n_patients_per_class=2, cells_per_patient=2, size=16)
    folder = generate_demo(tmp_path, n_patients_per_class=3, cells_per_patient=2, size=16)
    assert len(list(folder.rglob("*.bmp"))) == 12
    assert json.loads((folder / MARKER).read_text())["n_patients_per_class"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["C-NMC_Leukemia"]


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "C-NMC_Leukemia" / "training_data").mkdir(parents=True)
    with pytest.raises(DataError, match="does not hold generated demo data"):
        generate_demo(tmp_path, n_patients_per_class=2, cells_per_patient=2, size=16)
