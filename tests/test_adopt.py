"""``noisystudent adopt``: a run made before verified run files resumes and predicts again, once adopted."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import PATIENT_REGEX, invoke_cli, write_class_folders

from noisystudent import layout
from noisystudent.errors import RunFolderError
from noisystudent.models import checkpoint
from noisystudent.models.model_file import IDENTITY
from noisystudent.run.adopt import adopt_run

FLAGS = ["--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--rounds", "1", "--epochs", "1",
         "--image-size", "16", "--batch-size", "8", "--weights", "none", "--arch", "resnet18", "--device", "cpu",
         "--workers", "1", "--test-fraction", "0", "--quiet"]


def _make_it_old(run) -> None:
    """What an earlier noisystudent left: no run_id, settings_digest or digests.json; model files without identity."""
    document = json.loads((run / layout.CONFIG).read_text())
    for key in ("run_id", "settings_digest"):
        document.pop(key)
    (run / layout.CONFIG).write_text(json.dumps(document))
    (run / layout.DIGESTS).unlink()
    for path in run.glob("fold-*/round-*/*.pt"):
        payload = checkpoint.load(path)
        payload.pop(IDENTITY)
        payload.pop("version")
        checkpoint.save(path, payload)


@pytest.mark.slow
def test_an_old_run_is_refused_then_adopted_and_predicts_as_before(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=4, images_per_patient=2, size=(16, 16))
    run = tmp_path / "run"
    assert invoke_cli("kfold", data, "--out", run, *FLAGS)[0] == 0
    code, line = invoke_cli("ensemble", "predict", run, data / "benign", "--out", tmp_path / "before.csv", "--device", "cpu")
    assert code == 0, line
    weights = {p: checkpoint.load(p)["model"] for p in run.glob("fold-*/round-*/model.pt")}
    _make_it_old(run)
    code, line = invoke_cli("ensemble", "predict", run, data / "benign", "--out", tmp_path / "refused.csv", "--device", "cpu")
    assert code == 2 and ("cannot be verified" in line or "records no run" in line), line
    code, line = invoke_cli("adopt", run)
    assert code == 0 and "config.json: run_id, settings_digest" in line and "digests.json: folds.csv" in line, line
    assert line.count("identity") == 8  # 2 folds x 2 rounds x (model.pt, checkpoint.pt)
    assert all(torch.equal(checkpoint.load(p)["model"][k], weights[p][k]) for p in weights for k in weights[p])
    code, line = invoke_cli("ensemble", "predict", run, data / "benign", "--out", tmp_path / "after.csv", "--device", "cpu")
    assert code == 0, line
    assert (tmp_path / "after.csv").read_text() == (tmp_path / "before.csv").read_text()
    assert invoke_cli("kfold", "--out", run, "--resume", "--quiet")[0] == 0
    assert "nothing to adopt" in invoke_cli("adopt", run)[1]


@pytest.mark.slow
def test_a_model_file_that_records_another_fold_is_not_relabelled(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=4, images_per_patient=2, size=(16, 16))
    run = tmp_path / "run"
    assert invoke_cli("kfold", data, "--out", run, *FLAGS)[0] == 0
    shutil.copy(run / "fold-1" / "round-1" / layout.MODEL, run / "fold-0" / "round-1" / layout.MODEL)
    code, line = invoke_cli("adopt", run)
    assert code == 2 and "belongs to fold 1, round 1" in line, line


def test_a_folder_without_a_run_is_refused(tmp_path):
    code, line = invoke_cli("adopt", tmp_path)
    assert code == 2 and "holds no run" in line, line
    with pytest.raises(RunFolderError, match="nothing to adopt"):
        adopt_run(tmp_path)
