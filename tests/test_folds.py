import logging
from itertools import combinations

import pandas as pd
import pytest

from noisystudent.data.folds import FOLD_COLUMNS, assign_folds, check_no_patient_leakage, fold_frame, fold_ids, load_folds, save_folds
from noisystudent.data.manifest import (
    FOLD,
    LABEL,
    PATH,
    PATIENT,
    ROLE,
    ROLE_LABELLED,
    ROLE_POOL,
    ROLE_TEST,
    ROLE_MASKED,
    ROLE_VALIDATION,
    SHARED_FOLD,
    make_manifest,
)
from noisystudent.errors import ConfigError, DataError

CLASSES = ("all", "hem")
SPLIT_ROLES = (ROLE_LABELLED, ROLE_MASKED, ROLE_VALIDATION, ROLE_TEST)


def manifest(patients=20, images=5, subset="train", with_patient=True, prefix=""):
    rows = [
        {
            PATH: f"/data/{prefix}{label}/p{p}_{i}.png",
            LABEL: label,
            PATIENT: f"{prefix}{label[0].upper()}{p}" if with_patient else "",
            "subset": subset,
        }
        for label in CLASSES
        for p in range(patients)
        for i in range(images)
    ]
    return make_manifest(rows)


def roles_of_patients(folds, k):
    """{patient: set of roles} in fold k, test rows counted in every fold."""
    rows = folds[(folds[FOLD] == k) | (folds[ROLE] == ROLE_TEST)]
    rows = rows[rows[ROLE].isin(SPLIT_ROLES) & (rows[PATIENT] != "")]
    return rows.groupby(PATIENT)[ROLE].agg(set).to_dict()


def assert_no_patient_crosses(folds):
    for k in fold_ids(folds):
        for patient, roles in roles_of_patients(folds, k).items():
            for a, b in combinations(SPLIT_ROLES, 2):
                assert not {a, b} <= roles, f"patient {patient} is {a} and {b} in fold {k}"


def test_no_patient_crosses_labelled_masked_validation_test():
    folds = assign_folds(manifest(), n_folds=5, test_fraction=0.2, seed=3)
    assert set(folds[ROLE]) == set(SPLIT_ROLES)
    assert_no_patient_crosses(folds)
    # Each training image is validation in exactly one fold.
    validation = folds[folds[ROLE] == ROLE_VALIDATION]
    assert validation[PATH].is_unique
    trained = folds[folds[FOLD] != SHARED_FOLD][PATH].unique()
    assert set(validation[PATH]) == set(trained)


def test_default_sizes_are_40_40_20_and_every_class_in_every_part():
    folds = assign_folds(manifest(), n_folds=5)
    assert list(folds.columns) == FOLD_COLUMNS
    assert len(folds) == 200 * 5
    for k in range(5):
        for role, share in ((ROLE_LABELLED, 0.4), (ROLE_MASKED, 0.4), (ROLE_VALIDATION, 0.2)):
            part = fold_frame(folds, k, role)
            assert len(part) / 200 == pytest.approx(share, abs=0.05)
            assert set(part[LABEL]) == set(CLASSES)
    # 20 patients per class, 4 in validation, the other 16 split 8:8.
    part = fold_frame(folds, 0, ROLE_LABELLED)
    assert part.groupby(LABEL)[PATIENT].nunique().to_dict() == {"all": 8, "hem": 8}


def test_other_ratio_keeps_validation_at_one_over_k(caplog):
    with caplog.at_level(logging.WARNING, logger="noisystudent.data.folds"):
        folds = assign_folds(manifest(), n_folds=5, split_ratio=(3, 1, 1))
    assert not caplog.records  # validation share 1/5 matches K
    part = fold_frame(folds, 0, ROLE_LABELLED)
    assert part.groupby(LABEL)[PATIENT].nunique().to_dict() == {"all": 12, "hem": 12}
    assert len(fold_frame(folds, 0, ROLE_VALIDATION)) == 40


def test_validation_share_far_from_one_over_k_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="noisystudent.data.folds"):
        assign_folds(manifest(), n_folds=5, split_ratio=(1, 0, 1))
    assert len(caplog.records) == 1
    assert "1/5" in caplog.records[0].getMessage()


def test_masked_ratio_zero_gives_no_masked_rows():
    folds = assign_folds(manifest(), n_folds=4, split_ratio=(3, 0, 1))
    assert ROLE_MASKED not in set(folds[ROLE])
    assert len(fold_frame(folds, 2, ROLE_LABELLED)) == 150


def test_deterministic_and_seed_changes_folds():
    first = assign_folds(manifest(), seed=7)
    again = assign_folds(manifest(), seed=7)
    pd.testing.assert_frame_equal(first, again)
    other = assign_folds(manifest(), seed=8)
    assert not first[ROLE].equals(other[ROLE])


def test_no_patient_ids_falls_back_per_image_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="noisystudent.data.folds"):
        folds = assign_folds(manifest(with_patient=False), n_folds=5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "patient id" in warnings[0].getMessage()
    for k in range(5):
        counts = fold_frame(folds, k, ROLE_VALIDATION)[LABEL].value_counts().to_dict()
        assert counts == {"all": 20, "hem": 20}  # stratified per image
        labelled = fold_frame(folds, k, ROLE_LABELLED)[LABEL].value_counts().to_dict()
        assert labelled == {"all": 40, "hem": 40}


def test_partly_missing_patients_become_own_groups(caplog):
    frame = manifest()
    frame.loc[frame.index[:3], PATIENT] = ""
    with caplog.at_level(logging.WARNING, logger="noisystudent.data.folds"):
        folds = assign_folds(frame, n_folds=5)
    assert "3 training images have no patient id" in caplog.text
    assert_no_patient_crosses(folds)
    assert folds.loc[folds[PATH] == frame[PATH][0], PATIENT].tolist() == [""] * 5


def test_fewer_patients_than_folds_names_the_class():
    frame = manifest(patients=5)
    frame = frame[~((frame[LABEL] == "hem") & frame[PATIENT].isin(["H3", "H4"]))]
    with pytest.raises(DataError, match=r"^Only 3 patients have label 'hem'; 5 folds need at least 5\.$"):
        assign_folds(frame, n_folds=5)


def test_test_fraction_holds_out_whole_patients():
    folds = assign_folds(manifest(), n_folds=5, test_fraction=0.25, seed=1)
    test = folds[folds[ROLE] == ROLE_TEST]
    assert (test[FOLD] == SHARED_FOLD).all()
    assert test.groupby(LABEL)[PATIENT].nunique().to_dict() == {"all": 5, "hem": 5}
    assert len(test) == 50
    trained = set(folds.loc[folds[FOLD] != SHARED_FOLD, PATIENT])
    assert not trained & set(test[PATIENT])
    assert len(trained) == 30


def test_test_and_pool_subsets_are_shared_rows():
    frame = pd.concat(
        [manifest(), manifest(patients=2, subset="test", prefix="t"), manifest(patients=1, subset="pool", prefix="u")],
        ignore_index=True,
    )
    frame.loc[frame["subset"] == "pool", LABEL] = ""
    folds = assign_folds(frame, n_folds=5)
    assert len(fold_frame(folds, 3, ROLE_TEST)) == 20
    pool = fold_frame(folds, 0, ROLE_POOL)
    assert len(pool) == 10 and (pool[FOLD] == SHARED_FOLD).all() and (pool[LABEL] == "").all()
    assert len(folds) == 200 * 5 + 20 + 10


def test_test_patient_also_in_training_is_leakage():
    leaked = manifest(patients=1, subset="test", prefix="x")
    leaked[PATIENT] = "A0"
    frame = pd.concat([manifest(), leaked], ignore_index=True)
    with pytest.raises(DataError, match=r"Patient 'A0' appears as both"):
        assign_folds(frame, n_folds=5)


def test_check_no_patient_leakage_names_patient_and_roles():
    folds = assign_folds(manifest(), n_folds=5)
    broken = folds.copy()
    row = broken.index[(broken[FOLD] == 2) & (broken[PATIENT] == "A1")][0]
    other = "validation" if broken.loc[row, ROLE] != ROLE_VALIDATION else "labelled"
    broken.loc[row, ROLE] = other
    with pytest.raises(DataError, match=r"Patient 'A1' appears as both .* in fold 2\."):
        check_no_patient_leakage(broken)


def test_fold_without_a_class_in_labelled_part_is_an_error():
    # Mixed-label patients: every 'hem' image belongs to a mostly-'all' patient, so the
    # patient-wise labelled:masked split (1:3) can leave a fold's labelled part without 'hem'.
    rows = [{PATH: f"/a/{p}_{i}.png", LABEL: "all", PATIENT: f"P{p}", "subset": "train"} for p in range(10) for i in range(5)]
    rows += [{PATH: f"/h/{p}.png", LABEL: "hem", PATIENT: f"P{p}", "subset": "train"} for p in range(5)]
    with pytest.raises(DataError, match=r"^Fold 0 has no 'hem' images in its labelled part"):
        assign_folds(make_manifest(rows), n_folds=5, split_ratio=(1, 3, 1), seed=2)


def test_two_folds_of_two_patients_keep_both_classes_in_each_part():
    folds = assign_folds(manifest(patients=3, images=3), n_folds=2, split_ratio=(1, 1, 1))
    for k in range(2):
        assert set(fold_frame(folds, k, ROLE_VALIDATION)[LABEL]) == set(CLASSES)
        assert set(fold_frame(folds, k, ROLE_LABELLED)[LABEL]) == set(CLASSES)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="at least 2"):
        assign_folds(manifest(), n_folds=1)
    with pytest.raises(ConfigError, match="split_ratio"):
        assign_folds(manifest(), split_ratio=(0, 1, 1))


def test_save_and_load_round_trip_keeps_patient_strings(tmp_path):
    frame = manifest(patients=6, images=2)
    frame[PATIENT] = frame[PATIENT].str.replace("A", "0").str.replace("H", "1")  # '01', '11', ...
    frame.loc[frame.index[0], PATIENT] = ""
    folds = assign_folds(frame, n_folds=3)
    path = tmp_path / "run" / "folds.csv"
    save_folds(folds, path)
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temp file left
    loaded = load_folds(path)
    pd.testing.assert_frame_equal(loaded, folds, check_dtype=False)
    assert loaded[FOLD].dtype.kind == "i"
    assert "01" in set(loaded[PATIENT]) and "" in set(loaded[PATIENT])


def test_load_folds_missing_column(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("path,label\n/a.png,all\n")
    with pytest.raises(DataError, match="lacks the column 'patient'"):
        load_folds(path)


def test_fold_frame_selects_fold_and_role():
    folds = assign_folds(manifest(), n_folds=5)
    part = fold_frame(folds, 4, ROLE_VALIDATION)
    assert (part[FOLD] == 4).all() and (part[ROLE] == ROLE_VALIDATION).all()
    assert list(part.index) == list(range(len(part)))
    with pytest.raises(ValueError):
        fold_frame(folds, 0, "training")


def test_test_fraction_holds_out_nothing_when_the_data_has_a_test_set():
    frame = pd.concat([manifest(), manifest(patients=2, subset="test", prefix="t")], ignore_index=True)
    folds = assign_folds(frame, n_folds=5, test_fraction=0.2)
    test = folds[folds[ROLE] == ROLE_TEST]
    assert set(test[PATIENT]) == {"tA0", "tA1", "tH0", "tH1"}  # only the given test set


def test_test_fraction_hold_out_is_class_stratified_and_patient_disjoint():
    folds = assign_folds(manifest(), n_folds=5, test_fraction=0.2, seed=0)
    test = folds[folds[ROLE] == ROLE_TEST]
    assert test.groupby(LABEL)[PATIENT].nunique().to_dict() == {"all": 4, "hem": 4}
    assert not set(test[PATIENT]) & set(folds.loc[folds[FOLD] != SHARED_FOLD, PATIENT])


@pytest.mark.parametrize("role_of_twin", ["test", "validation"])
def test_pool_patient_who_is_also_evaluated_is_leakage(role_of_twin):
    folds = assign_folds(manifest(), n_folds=5, test_fraction=0.2, seed=0)
    evaluated = folds[folds[ROLE] == role_of_twin].iloc[0]
    pool = pd.DataFrame([{PATH: "/pool/x.png", LABEL: "", PATIENT: evaluated[PATIENT], "subset": "pool",
                          FOLD: SHARED_FOLD, ROLE: ROLE_POOL}])
    with pytest.raises(DataError, match=rf"Patient '{evaluated[PATIENT]}' appears as both pool and {role_of_twin}"):
        check_no_patient_leakage(pd.concat([folds, pool], ignore_index=True))


def test_pool_patient_seen_only_in_training_parts_is_allowed():
    folds = assign_folds(manifest(), n_folds=5, test_fraction=0.2, seed=0)
    never_evaluated = set(folds[PATIENT]) - set(folds.loc[folds[ROLE].isin([ROLE_VALIDATION, ROLE_TEST]), PATIENT])
    assert not never_evaluated  # every training patient is validation in some fold ...
    pool = pd.DataFrame([{PATH: "/pool/x.png", LABEL: "", PATIENT: "NEW", "subset": "pool", FOLD: SHARED_FOLD, ROLE: ROLE_POOL}])
    check_no_patient_leakage(pd.concat([folds, pool], ignore_index=True))  # ... so only new patients may be pool
