"""--method meta-pseudo-labels: the student's feedback steers the teacher the right way, and no hidden label is seen."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import fields

import pandas as pd
import pytest
import torch
from helpers import PATIENT_REGEX, invoke_cli, write_class_folders

from noisystudent import layout
from noisystudent.config.run_config import RunConfig
from noisystudent.config.settings import make_config
from noisystudent.data import manifest
from noisystudent.data.demo import generate_demo
from noisystudent.errors import ConfigError
from noisystudent.models import checkpoint
from noisystudent.run import pipeline
from noisystudent.training import meta_pseudo_labels as mpl
from noisystudent.training import trainer
from noisystudent.training.engine import StepContext
from noisystudent.training.losses import soft_cross_entropy

CPU = torch.device("cpu")
RED = torch.zeros(1, 3, 2, 2)
RED[:, 0] = 1.0  # mean colour (1, 0, 0)


class Linear(torch.nn.Module):
    """Logits = a linear map of the mean colour: no BatchNorm and no dropout, so every step is exact."""

    def __init__(self, weight: list[list[float]]) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _teacher(weight: list[list[float]], lr: float = 0.1) -> mpl.Teacher:
    model = Linear(weight)
    return mpl.Teacher(model, torch.optim.SGD(model.parameters(), lr=lr), torch.zeros(()))


def _student() -> tuple[Linear, StepContext]:
    student = Linear([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    return student, StepContext(optimizer=torch.optim.SGD(student.parameters(), lr=0.5), device=CPU)


def _teacher_log_prob_after(teacher_weight: list[list[float]], wait: int) -> tuple[float, dict]:
    """The teacher's log-probability of its pseudo-label on the unlabelled red image after one step.

    The labelled image is red, of class 0; so is the unlabelled one, whose
    pseudo-label the teacher's weights decide: a student taught class 0 there
    lowers its labelled loss, one taught class 1 raises it.
    """
    teacher = _teacher(teacher_weight)
    student, step = _student()
    pseudo = int(teacher.model(RED).argmax())
    settings = mpl.MplSettings(uda_threshold=0.99, lambda_u=0.0, mu=1, student_wait_steps=wait)
    values = mpl.mpl_step(student, teacher, RED, torch.tensor([[1.0, 0.0]]), RED, RED, step, settings)
    with torch.no_grad():
        return float(torch.log_softmax(teacher.model(RED), dim=1)[0, pseudo]), values


@pytest.mark.slow
@pytest.mark.parametrize("pseudo_label, helps", [(0, True), (1, False)])
def test_the_feedback_reinforces_a_pseudo_label_that_lowers_the_students_labelled_loss(pseudo_label, helps):
    weight = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]] if pseudo_label == 0 else [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    with_feedback, values = _teacher_log_prob_after(weight, wait=0)
    without, waiting = _teacher_log_prob_after(weight, wait=10)  # the same step, the feedback term 0
    assert int(values["pseudo"]) == pseudo_label and float(waiting["h"]) == 0.0
    assert (float(values["h"]) > 0) == helps and abs(float(values["h"])) > 1e-3  # the student's labelled loss fell, or rose
    effect = with_feedback - without  # what the feedback term alone did to the teacher's belief in its pseudo-label
    assert abs(effect) > 1e-4
    assert (effect > 0) == helps  # reinforced where it helped the student, discouraged where it hurt


@pytest.mark.slow
def test_while_the_student_waits_the_teacher_learns_from_its_supervised_and_uda_losses_alone():
    weight = [[2.0, -1.0, 0.5], [-1.0, 1.0, 0.0]]
    labelled, targets = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.eye(2)[[0, 1, 0]]
    weak, strong = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)), torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    weak[0, 0], weak[1] = 5.0, 0.0  # a confident weak view (the UDA loss counts it) and a uniform one (it does not)
    settings = mpl.MplSettings(uda_threshold=0.6, uda_temperature=0.7, lambda_u=2.0, uda_steps=4, mu=1, student_wait_steps=5)
    teacher = _teacher(weight)
    expected = copy.deepcopy(teacher.model)
    student, step = _student()
    values = mpl.mpl_step(student, teacher, labelled, targets, weak, strong, step, settings)
    optimizer = torch.optim.SGD(expected.parameters(), lr=0.1)
    consistency, used = mpl.uda_loss(expected(weak), expected(strong), 0.6, 0.7)
    loss = soft_cross_entropy(expected(labelled), targets) + 2.0 * (1 / 4) * consistency  # the ramp's first step
    loss.backward()
    optimizer.step()
    assert used.tolist() == [True, False] and float(values["h"]) == 0.0 and teacher.steps == 1
    for name, parameter in teacher.model.state_dict().items():
        torch.testing.assert_close(parameter, expected.state_dict()[name], rtol=0, atol=1e-6, msg=name)


def test_the_baseline_is_a_moving_average_of_the_feedback_and_the_uda_weight_ramps_up():
    h, baseline = mpl.feedback(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(0.5), 0.9, True)
    assert float(baseline) == pytest.approx(0.9 * 0.5 + 0.1 * 1.0) and float(h) == pytest.approx(1.0 - 0.55)
    h, waited = mpl.feedback(torch.tensor(2.0), torch.tensor(1.0), torch.tensor(0.5), 0.9, False)
    assert float(h) == 0.0 and float(waited) == float(baseline)  # the baseline keeps learning while the student waits
    settings = mpl.MplSettings(lambda_u=8.0, uda_steps=4)
    assert [mpl.uda_weight(settings, s) for s in (0, 1, 3, 100)] == [2.0, 4.0, 8.0, 8.0]


def test_settings_note_the_references_values_and_rounds_beyond_one_are_refused():
    config = RunConfig()
    assert (config.mpl_uda_threshold, config.mpl_uda_temperature, config.mpl_mu, config.mpl_baseline_decay) == (0.95, 0.7, 7, 0.99)
    assert config.mpl_teacher_lr is None and config.mpl_finetune_epochs == 1
    assert make_config("/d", method="meta-pseudo-labels").rounds == 1  # one student after the teacher, implied
    with pytest.raises(ConfigError, match="use --rounds 1"):
        make_config("/d", method="meta-pseudo-labels", rounds=2)
    with pytest.raises(ConfigError, match="mpl_teacher_lr must be"):
        make_config("/d", method="meta-pseudo-labels", mpl_teacher_lr=0.0)
    with pytest.raises(ConfigError, match="pool-labels ensemble"):
        make_config("/d", method="meta-pseudo-labels", pool_labels="ensemble")
    for name in ("mpl_uda_threshold", "mpl_uda_temperature", "mpl_lambda_u", "mpl_uda_steps", "mpl_mu", "mpl_student_wait_steps",
                 "mpl_baseline_decay", "mpl_teacher_lr", "mpl_finetune_epochs"):
        assert "reference" in RunConfig.__dataclass_fields__[name].metadata["help"] or "paper" in RunConfig.__dataclass_fields__[name].metadata["help"]


@pytest.mark.parametrize("command", ["kfold", "experiment"])
def test_help_groups_meta_pseudo_labels_settings_in_their_own_panel(command):
    code, text = invoke_cli(command, "--help")
    assert code == 0
    fixmatch_panel, panel, noise = (text.index(f"─ {name} ─") for name in ("FixMatch", "Meta Pseudo Labels", "Noise"))
    assert fixmatch_panel < panel < min(text.index(f"--mpl-{name}") for name in ("uda-threshold", "finetune-epochs", "student-wait-steps")) < noise
    assert "meta-pseudo-labels" in text


def _mpl_config(data, **changes) -> RunConfig:
    settings = dict(data=str(data), folds=2, rounds=1, epochs=2, image_size=32, batch_size=4, weights="none", arch="resnet18",
                    method="meta-pseudo-labels", mpl_mu=2, mpl_uda_threshold=0.5, mpl_uda_steps=2, mpl_student_wait_steps=1,
                    mpl_finetune_epochs=1, test_fraction=0.25, eval_batch_size=64, workers=1)
    return RunConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def mpl_run(tmp_path_factory):
    """A Meta Pseudo Labels run on tiny cells; each job and the cache rows it loaded while training."""
    root = tmp_path_factory.mktemp("mpl")
    data = generate_demo(root / "data", n_patients_per_class=4, cells_per_patient=4, size=32, seed=3)
    seen: dict[tuple[int, int], dict] = {}
    original = pipeline.train_model

    def spy(job, config, load_batch, *args, **kwargs):
        loaded: list[torch.Tensor] = []

        def recording(rows):
            loaded.append(rows.clone())
            return load_batch(rows)

        seen[job.extra["round"], job.extra["fold"]] = {"job": job, "loaded": loaded, "run_ctx": load_batch.__self__}
        return original(job, config, recording, *args, **kwargs)

    pipeline.train_model = spy
    try:
        table = pipeline.run_kfold(_mpl_config(data), root / "run")
    finally:
        pipeline.train_model = original
    return root / "run", seen, table


def _rows_of(entry: dict, fold: int, role: str) -> set[int]:
    run_ctx = entry["run_ctx"]
    return set(run_ctx.rows(pipeline.fold_rows(run_ctx.fold_table, fold, role)[manifest.PATH]).tolist())


@pytest.mark.slow
def test_the_mpl_student_and_teacher_learn_from_the_masked_part_without_its_labels_and_never_load_the_test_set(mpl_run):
    run, seen, _ = mpl_run
    for fold in (0, 1):
        entry = seen[1, fold]
        job = entry["job"]
        assert [f.name for f in fields(job.unlabelled)] == ["rows"]  # nothing but cache rows: no label can travel
        assert set(job.unlabelled.rows.tolist()) == _rows_of(entry, fold, manifest.ROLE_MASKED)
        assert set(job.train_set.rows.tolist()) == _rows_of(entry, fold, manifest.ROLE_LABELLED)  # labels only here
        assert job.mpl_teacher == layout.round_dir(run, fold, 0) / layout.MODEL  # the teacher starts as round 0
        loaded = set(torch.cat(entry["loaded"]).tolist())
        assert _rows_of(entry, fold, manifest.ROLE_MASKED) <= loaded
        assert not loaded & _rows_of(entry, fold, manifest.ROLE_TEST)  # the outer test set is never reached
        assert seen[0, fold]["job"].unlabelled is None and seen[0, fold]["job"].mpl_teacher is None


@pytest.mark.slow
def test_an_mpl_run_fills_the_usual_run_folder_and_fine_tunes_its_student_last(mpl_run):
    run, _, table = mpl_run
    assert set(table[table["fold"] == "ensemble"]["model"]) == {"teacher", "student"}
    assert (run / "results" / "comparison.csv").exists()
    history = pd.read_csv(layout.round_dir(run, 0, 1) / layout.HISTORY)
    assert history[layout.EPOCH].tolist() == [1, 2, 3]  # --epochs 2 with the teacher, then 1 fine-tune epoch
    assert history["teacher_loss"].iloc[:2].notna().all() and history["teacher_loss"].iloc[2:].isna().all()
    assert history["mpl_feedback"].iloc[:2].map(lambda v: v == v).all()
    assert not (layout.round_dir(run, 0, 0) / layout.PSEUDO_LABELS).exists()  # the MPL teacher makes its own, every step
    saved = checkpoint.load(layout.round_dir(run, 0, 1) / layout.CHECKPOINT)["train_state"]["mpl"]
    assert saved["steps"] > 0 and set(saved) == {"model", "optimizer", "baseline", "steps"}
    round0 = checkpoint.load(layout.round_dir(run, 0, 0) / layout.MODEL)["model"]
    assert any(not torch.equal(saved["model"][k], round0[k]) for k in round0 if round0[k].is_floating_point())  # it trained
    assert json.loads((run / "config.json").read_text())["method"] == "meta-pseudo-labels"


@pytest.mark.slow
def test_an_mpl_student_resumed_after_its_first_epoch_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    data = generate_demo(tmp_path / "data", n_patients_per_class=3, cells_per_patient=4, size=32, seed=5)
    config = _mpl_config(data, test_fraction=0)
    first_epoch = tmp_path / "after-epoch-1"
    original = trainer._save_checkpoint

    def keep_first(job, training):  # the round-1 model of fold 0 as an interruption after its first epoch leaves it
        original(job, training)
        if job.extra["round"] == 1 and job.extra["fold"] == 0 and training.state.next_epoch == 1:
            shutil.copytree(job.out_dir, first_epoch)

    monkeypatch.setattr(trainer, "_save_checkpoint", keep_first)
    pipeline.run_kfold(config, tmp_path / "run")
    monkeypatch.setattr(trainer, "_save_checkpoint", original)
    folder = layout.round_dir(tmp_path / "run", 0, 1)
    reference = checkpoint.load(folder / layout.MODEL)["model"]
    reference_teacher = checkpoint.load(folder / layout.CHECKPOINT)["train_state"]["mpl"]
    shutil.rmtree(folder)
    shutil.copytree(first_epoch, folder)
    pipeline.run_kfold(config, tmp_path / "run", resume=True)
    resumed = checkpoint.load(folder / layout.MODEL)["model"]
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    teacher = checkpoint.load(folder / layout.CHECKPOINT)["train_state"]["mpl"]
    assert teacher["steps"] == reference_teacher["steps"] and torch.equal(teacher["baseline"], reference_teacher["baseline"])
    for name, tensor in reference_teacher["model"].items():
        torch.testing.assert_close(teacher["model"][name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_an_experiment_runs_meta_pseudo_labels_against_its_teachers_and_the_control(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=6, images_per_patient=3)
    flags = ["--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--epochs", "1", "--image-size", "32",
             "--batch-size", "4", "--weights", "none", "--arch", "resnet18", "--device", "cpu", "--workers", "1",
             "--test-fraction", "0.34", "--method", "meta-pseudo-labels", "--mpl-mu", "2", "--mpl-finetune-epochs", "1", "--quiet"]
    code, line = invoke_cli("experiment", data, "--out", tmp_path / "study", "--seeds", "3", "--arms", "ns,control", *flags)
    assert code == 0, line
    ns, control = (json.loads((tmp_path / "study" / "seed-3" / arm / "config.json").read_text()) for arm in ("ns", "control"))
    assert (ns["method"], ns["rounds"], control["student_data"]) == ("meta-pseudo-labels", 1, "labelled")
    assert len(pd.read_csv(layout.round_dir(tmp_path / "study" / "seed-3" / "ns", 0, 1) / layout.HISTORY)) == 2  # 1 + fine-tune
    arms = pd.read_csv(tmp_path / "study" / "results" / "arms.csv")
    assert "students (Meta Pseudo Labels)" in set(arms["ensemble"])
    study_table = pd.read_csv(tmp_path / "study" / "results" / "study.csv")
    assert set(study_table["comparison"]) == {"students - teachers", "students - control"}
