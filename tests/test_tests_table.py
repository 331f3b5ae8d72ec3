"""tests/README.md maps each package module to the tests that exercise it, and stays current."""

from __future__ import annotations

from helpers import load_script

table_script = load_script("tests_table")


def test_the_table_in_tests_readme_is_current():
    assert table_script.main(["--check"]) == 0, "tests/README.md is out of date: run python scripts/tests_table.py"


def test_every_module_names_at_least_one_test_file():
    modules = table_script.module_names()
    covered = {m: [] for m in modules}
    for test_file in sorted(table_script.TESTS.glob("test_*.py")):
        for module in table_script.exercised(test_file, set(modules)):
            covered[module].append(test_file.name)
    untested = [m for m in modules if not covered[m] and m not in table_script.THROUGH]
    assert not untested, f"modules that no test imports and no entry of THROUGH names: {untested}"
    stale = [m for m in table_script.THROUGH if m not in covered or covered[m]]
    assert not stale, f"THROUGH entries for modules that are gone or now imported by a test: {stale}"
    missing = [t for tests in table_script.THROUGH.values() for t in tests if not (table_script.TESTS / t).is_file()]
    assert not missing, f"THROUGH names test files that do not exist: {missing}"


def test_a_module_is_found_through_its_package_and_the_public_face(tmp_path):
    test_file = tmp_path / "test_x.py"
    test_file.write_text("import noisystudent as ns\nfrom noisystudent.models import create_model\nns.run_kfold\n")
    found = table_script.exercised(test_file, set(table_script.module_names()))
    package = "noisystudent."  # split, so that this file does not count as naming the modules itself
    assert found == {package + "models.factory", package + "run.pipeline"}
