import logging
from pathlib import Path

import pytest

from noisystudent.data.manifest import LABEL, MANIFEST_COLUMNS, PATH, PATIENT, SUBSET
from noisystudent.data.readers import SKIPPED, detect_format, read_cnmc, read_csv_manifest, read_dataset, read_folders
from noisystudent.errors import ConfigError, DataError

TRAIN = "C-NMC_Leukemia/training_data"


def cnmc_tree(root: Path, make_image, names: dict[str, list[str]]) -> Path:
    """root/C-NMC_Leukemia/training_data/<fold/class>/<name> for each name."""
    for folder, files in names.items():
        for name in files:
            make_image(root / TRAIN / folder / name, colour=(90, 40, 160))
    return root / "C-NMC_Leukemia"


@pytest.fixture
def small_cnmc(tmp_path, make_image) -> Path:
    return cnmc_tree(
        tmp_path,
        make_image,
        {
            "fold_0/all": ["UID_11_1_1_all.bmp", "UID_11_2_1_all.bmp", "UID_3_1_1_all.bmp"],
            "fold_0/hem": ["UID_h3_1_1_hem.bmp", "UID_H3_2_1_hem.bmp"],
            "fold_1/hem": ["UID_H10_1_1_hem.bmp"],
        },
    )


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- C-NMC ------------------------------------------------------------------


def test_cnmc_labels_patients_and_normalised_ids(small_cnmc):
    manifest = read_cnmc(small_cnmc)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest[LABEL].value_counts().to_dict() == {"all": 3, "hem": 3}
    assert sorted(set(zip(manifest[PATIENT], manifest[LABEL]))) == [("11", "all"), ("3", "all"), ("H10", "hem"), ("H3", "hem")]
    assert set(manifest[SUBSET]) == {"train"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in manifest[PATH])
    assert manifest[PATH].tolist() == sorted(manifest[PATH])


def test_cnmc_root_may_be_the_parent_folder(small_cnmc):
    assert read_cnmc(small_cnmc.parent).equals(read_cnmc(small_cnmc))


def test_cnmc_bad_file_name_is_named(tmp_path, make_image):
    root = cnmc_tree(tmp_path, make_image, {"fold_0/all": ["UID_1_1_1_all.bmp", "cell_7.bmp"], "fold_0/hem": ["UID_H1_1_1_hem.bmp"]})
    with pytest.raises(DataError, match="does not follow the C-NMC pattern") as caught:
        read_cnmc(root)
    assert str(root / "training_data/fold_0/all/cell_7.bmp") in str(caught.value)


def test_cnmc_name_contradicting_folder_is_an_error(tmp_path, make_image):
    root = cnmc_tree(tmp_path, make_image, {"fold_0/all": ["UID_1_1_1_all.bmp"], "fold_0/hem": ["UID_H1_1_1_all.bmp"]})
    with pytest.raises(DataError, match="UID_H1_1_1_all.bmp lies in the hem folder but its name says all"):
        read_cnmc(root)


def test_cnmc_preliminary_and_final_test_sets(small_cnmc, make_image):
    prelim = small_cnmc / "validation_data" / "C-NMC_test_prelim_phase_data"
    for name in ("1.bmp", "2.bmp", "3.bmp"):
        make_image(prelim / name)
    write_csv(
        small_cnmc / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv",
        "Patient_ID,new_names,labels\nUID_57_29_1_all.bmp,1.bmp,1\nUID_h49_3_2_hem.bmp,2.bmp,0\nP77,3.bmp,1\n",
    )
    make_image(small_cnmc / "testing_data" / "C-NMC_test_final_phase_data" / "9.bmp")
    manifest = read_cnmc(small_cnmc)
    test = manifest[manifest[SUBSET] == "test"].set_index(PATH)
    assert test.loc[str(prelim / "1.bmp"), [LABEL, PATIENT]].tolist() == ["all", "57"]
    assert test.loc[str(prelim / "2.bmp"), [LABEL, PATIENT]].tolist() == ["hem", "H49"]
    assert test.loc[str(prelim / "3.bmp"), [LABEL, PATIENT]].tolist() == ["all", "P77"]
    final = manifest[manifest[SUBSET] == "pool"]
    assert final[PATH].tolist() == [str(small_cnmc / "testing_data/C-NMC_test_final_phase_data/9.bmp")]
    assert final[[LABEL, PATIENT]].values.tolist() == [["", ""]]


def test_cnmc_preliminary_unknown_label_names_line(small_cnmc, make_image):
    make_image(small_cnmc / "validation_data" / "C-NMC_test_prelim_phase_data" / "1.bmp")
    labels = write_csv(
        small_cnmc / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv",
        "Patient_ID,new_names,labels\nUID_57_29_1_all.bmp,1.bmp,2\n",
    )
    with pytest.raises(DataError) as caught:
        read_cnmc(small_cnmc)
    assert str(caught.value) == f"Unknown label '2' on line 2 of {labels}; expected 1 (all) or 0 (hem)."


# --- one folder per class ------------------------------------------------------


def test_folders_reads_classes_and_warns_about_other_files(class_folders, make_image, caplog):
    make_image(class_folders / "benign" / "UPPER.JPG")
    make_image(class_folders / "benign" / "mixed.TiFf")
    (class_folders / "benign" / "README.txt").write_text("notes")
    (class_folders / "benign" / ".DS_Store").write_text("junk")
    with caplog.at_level(logging.WARNING, logger="noisystudent.data.readers"):
        manifest = read_folders(class_folders)
    assert manifest[LABEL].value_counts().to_dict() == {"benign": 6, "malignant": 4}
    names = {Path(p).name for p in manifest[PATH]}
    assert {"UPPER.JPG", "mixed.TiFf"} <= names and "README.txt" not in names
    assert "1 entries in" in caplog.text and "README.txt" in caplog.text and ".DS_Store" not in caplog.text
    assert set(manifest[PATIENT]) == {""}


def test_folders_patient_regex(class_folders):
    manifest = read_folders(class_folders, patient_regex=r"^(p\d+)_")
    assert sorted(manifest[PATIENT].unique()) == ["P01", "P02", "P03", "P04"]


def test_folders_name_not_matching_regex_is_named(class_folders, make_image):
    odd = make_image(class_folders / "malignant" / "scan.png")
    with pytest.raises(DataError) as caught:
        read_folders(class_folders, patient_regex=r"^p(\d)")
    assert str(caught.value) == f"The file name {odd} does not match the patient regex '^p(\\\\d)'."


@pytest.mark.parametrize("regex", [r"^p\d", r"(p)(\d)", r"(p\d"])
def test_folders_regex_needs_exactly_one_group(class_folders, regex):
    with pytest.raises(ConfigError, match="patient regex"):
        read_folders(class_folders, patient_regex=regex)


def test_empty_class_folder_is_named(class_folders):
    (class_folders / "unknown").mkdir()
    with pytest.raises(DataError) as caught:
        read_folders(class_folders)
    assert str(caught.value) == f"The class folder {class_folders / 'unknown'} contains no images."


def test_single_class_is_refused(tmp_path, make_image):
    make_image(tmp_path / "only" / "a.png")
    make_image(tmp_path / "only" / "b.png")
    with pytest.raises(DataError, match=r"single class \(only\)"):
        read_dataset(tmp_path)


# --- CSV ---------------------------------------------------------------------


@pytest.fixture
def csv_images(tmp_path, make_image) -> Path:
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        make_image(tmp_path / "imgs" / name)
    return tmp_path / "imgs"


def test_csv_relative_and_absolute_paths(csv_images):
    csv = write_csv(
        csv_images / "list.csv",
        f"path,label,patient,subset\na.png,x,p1,\nsub/d.png,y,P2,test\n{csv_images / 'b.png'},y,p3,train\nc.png,,,unlabelled\n",
    )
    manifest = read_csv_manifest(csv, classes=["x", "y"])
    rows = manifest.set_index(PATH)
    assert rows.loc[str(csv_images / "a.png")].tolist() == ["x", "P1", "train"]
    assert rows.loc[str(csv_images / "sub/d.png")].tolist() == ["y", "P2", "test"]
    assert rows.loc[str(csv_images / "b.png")].tolist() == ["y", "P3", "train"]
    assert rows.loc[str(csv_images / "c.png")].tolist() == ["", "", "pool"]


def test_csv_unknown_column_is_named(csv_images):
    csv = write_csv(csv_images / "list.csv", "path,label,stain\na.png,x,giemsa\n")
    with pytest.raises(DataError, match=r"unknown column\(s\) stain;"):
        read_csv_manifest(csv)


def test_csv_without_path_column(csv_images):
    csv = write_csv(csv_images / "list.csv", "label\nx\n")
    with pytest.raises(DataError, match="has no 'path' column"):
        read_csv_manifest(csv)


def test_csv_unknown_label_names_label_and_line(csv_images):
    csv = write_csv(csv_images / "list.csv", "path,label\na.png,x\nb.png,z\n")
    with pytest.raises(DataError) as caught:
        read_csv_manifest(csv, classes=["x", "y"])
    assert str(caught.value) == f"Unknown label 'z' on line 3 of {csv}; expected one of x, y."


def test_csv_duplicate_path_is_named_even_when_spelled_differently(csv_images):
    csv = write_csv(csv_images / "list.csv", "path,label\na.png,x\nb.png,y\n./a.png,x\n")
    with pytest.raises(DataError) as caught:
        read_csv_manifest(csv)
    assert str(caught.value) == f"The image {csv_images / 'a.png'} is listed twice in {csv}, on lines 2 and 4."


def test_csv_missing_file_names_path_and_line(csv_images):
    csv = write_csv(csv_images / "list.csv", "path,label\na.png,x\nnope.png,y\n")
    with pytest.raises(DataError) as caught:
        read_csv_manifest(csv)
    assert str(caught.value) == f"The image {csv_images / 'nope.png'} listed on line 3 of {csv} does not exist."


def test_csv_empty_label_only_for_unlabelled(csv_images):
    csv = write_csv(csv_images / "list.csv", "path,label\na.png,x\nb.png,\n")
    with pytest.raises(DataError, match="line 3 .* has no label"):
        read_csv_manifest(csv)
    pool = read_csv_manifest(csv, allow_unlabelled=True)
    assert pool.set_index(PATH).loc[str(csv_images / "b.png"), SUBSET] == "pool"
    assert pool.set_index(PATH).loc[str(csv_images / "a.png"), SUBSET] == "train"


# --- format detection and read_dataset -------------------------------------------


def test_detect_format_of_each_layout(small_cnmc, class_folders, csv_images, tmp_path):
    csv = write_csv(csv_images / "list.CSV", "path,label\na.png,x\n")
    assert detect_format(small_cnmc) == "cnmc"
    assert detect_format(small_cnmc.parent) == "cnmc"
    assert detect_format(class_folders) == "folders"
    assert detect_format(csv) == "csv"
    with pytest.raises(DataError, match="is a file but not a CSV file"):
        detect_format(csv_images / "a.png")


def test_missing_data_path(tmp_path):
    with pytest.raises(DataError) as caught:
        read_dataset(tmp_path / "nowhere")
    assert str(caught.value) == f"The data path {tmp_path / 'nowhere'} does not exist."


def test_read_dataset_logs_the_detected_format(small_cnmc, caplog):
    with caplog.at_level(logging.INFO, logger="noisystudent.data.readers"):
        manifest, data_format = read_dataset(small_cnmc.parent)
    assert data_format == "cnmc" and len(manifest) == 6
    assert "cnmc layout (detected)" in caplog.text
    assert manifest.attrs[SKIPPED] == []


def test_read_dataset_with_explicit_format_and_csv(csv_images):
    csv = write_csv(csv_images / "list.csv", "path,label\na.png,x\nb.png,y\n")
    manifest, data_format = read_dataset(csv, data_format="csv")
    assert data_format == "csv" and manifest[LABEL].tolist() == ["x", "y"]
    with pytest.raises(ConfigError, match="data_format"):
        read_dataset(csv, data_format="excel")


def test_unreadable_images_stop_or_are_skipped_and_reported(class_folders, make_noise, make_truncated, caplog):
    cut = make_truncated(make_noise(class_folders / "benign" / "cut.png", size=64))
    text = class_folders / "malignant" / "text.png"
    text.write_text("not a picture")
    with pytest.raises(DataError) as caught:
        read_dataset(class_folders)
    assert str(caught.value) == f"The image {cut} cannot be read: it is truncated."

    with caplog.at_level(logging.WARNING, logger="noisystudent.data.readers"):
        manifest, _ = read_dataset(class_folders, skip_unreadable=True)
    assert len(manifest) == 8 and str(cut) not in set(manifest[PATH])
    assert [path for path, _ in manifest.attrs[SKIPPED]] == [str(cut), str(text)]
    assert "not an image file" in manifest.attrs[SKIPPED][1][1]
    assert str(cut) in caplog.text and str(text) in caplog.text


# --- the real C-NMC sample ---------------------------------------------------------


def test_real_cnmc_sample(cnmc_sample):
    manifest, data_format = read_dataset(cnmc_sample / "C-NMC_Leukemia")
    assert data_format == "cnmc" and len(manifest) == 59
    counts = manifest.groupby(LABEL).agg(images=(PATH, "size"), patients=(PATIENT, "nunique"))
    # The sample's README says 13 ALL patients, but its file names carry 14 ids
    # (1 2 3 4 5 11 13 16 18 21 23 24 25 53); the HEM ids h3 and H3 must merge.
    assert counts.to_dict("index") == {"all": {"images": 30, "patients": 14}, "hem": {"images": 29, "patients": 13}}
    assert "H3" in set(manifest[PATIENT]) and "h3" not in set(manifest[PATIENT])
    parent, parent_format = read_dataset(cnmc_sample)
    assert parent_format == "cnmc" and parent.equals(manifest)


# --- inspect_dataset (builds on the readers) ------------------------------------------


def test_inspect_collects_every_problem_without_stopping(class_folders, make_image, make_noise, make_truncated):
    from noisystudent.data.inspection import inspect_dataset

    cut = make_truncated(make_noise(class_folders / "benign" / "p01_9.png", size=64))
    text = class_folders / "malignant" / "p03_9.png"
    text.write_text("oops")
    make_image(class_folders / "malignant" / "p01_7.png", colour=90, size=(12, 10), mode="L")  # P01 in both classes
    report = inspect_dataset(class_folders, patient_regex=r"^(p\d+)_")
    assert report.format == "folders" and report.n_images == 11
    assert report.subset_counts.loc["train"].to_dict() == {"benign": 5, "malignant": 6}
    assert report.patient_counts.loc["P01"].to_dict() == {"benign": 3, "malignant": 1}
    assert report.size_counts.values.tolist() == [[8, 6, 8], [12, 10, 1]]
    assert dict(report.mode_counts.values.tolist()) == {"RGB": 8, "L": 1}
    assert report.problems[:2] == [
        f"The image {cut} cannot be read: it is truncated.",
        f"The image {text} cannot be read: it is not an image file in a format that can be decoded.",
    ]
    assert "Patient P01 has images of several classes (benign, malignant)." in report.problems
    assert any(p.startswith("The images have mixed colour modes (RGB: 8, L: 1)") for p in report.problems)


def test_inspect_reports_single_class_leakage_and_missing_patients(tmp_path, make_image):
    from noisystudent.data.inspection import inspect_dataset

    for name in ("a.png", "b.png", "c.png"):
        make_image(tmp_path / name)
    csv = write_csv(tmp_path / "l.csv", "path,label,patient,subset\na.png,x,p1,train\nb.png,x,P1,test\nc.png,x,,train\n")
    report = inspect_dataset(csv)
    assert report.subset_counts.to_dict("index") == {"test": {"x": 1}, "train": {"x": 2}}
    assert report.problems == [
        "The training data has a single class (x); at least two are needed.",
        "Patient P1 appears in both the train and the test subset.",
        "Class x has training images of only 1 patient; patient-disjoint folds need at least 2.",
        "1 labelled images have no patient id, so folds split images rather than patients and scores may be optimistic.",
    ]
    assert report.patient_counts.index.tolist() == ["P1", "(unknown)"]


def test_inspect_orders_patients_naturally(small_cnmc):
    from noisystudent.data.inspection import inspect_dataset

    report = inspect_dataset(small_cnmc)
    assert report.patient_counts.index.tolist() == ["3", "11", "H3", "H10"]
    assert report.problems == []
