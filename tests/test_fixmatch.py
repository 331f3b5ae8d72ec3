"""--method fixmatch: the loss counts only confident images, learns on their strong view, and never sees a hidden label."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import PATIENT_REGEX, invoke_cli, write_class_folders

from noisystudent import layout
from noisystudent.config.provenance import banner
from noisystudent.config.run_config import RunConfig
from noisystudent.config.settings import make_config
from noisystudent.data import manifest
from noisystudent.data.demo import generate_demo
from noisystudent.errors import ConfigError
from noisystudent.models import checkpoint
from noisystudent.report.settings_section import settings_section
from noisystudent.run import pipeline
from noisystudent.run.preflight import method_warnings
from noisystudent.training import fixmatch, trainer
from noisystudent.training.engine import StepContext, TrainSet
from noisystudent.training.fixmatch import FixMatchSettings, UnlabelledSet
from noisystudent.training.fixmatch_views import CUTOUT_SIDE, FixMatchViews, always_cutout
from noisystudent.training.seeding import make_generator

CPU = torch.device("cpu")


class Linear(torch.nn.Module):
    """Logits = a fixed linear map of the mean colour: no BatchNorm, so one forward pass equals three."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[8.0, -2.0, 0.0], [-8.0, 2.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _step() -> StepContext:
    model = Linear()
    return StepContext(optimizer=torch.optim.SGD(model.parameters(), lr=0.0), device=CPU)


def test_images_below_the_threshold_add_nothing_to_the_unlabelled_loss():
    weak = torch.tensor([[3.0, 0.0], [0.0, 0.2], [-4.0, 0.0], [0.1, 0.0]])  # confidences 0.953, 0.550, 0.982, 0.525
    strong = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.0], [-3.0, 3.0]])
    loss, used, _, pseudo = fixmatch.unlabelled_loss(weak, strong, torch.full((2,), 0.95))
    assert used.tolist() == [True, False, True, False] and pseudo.tolist() == [0, 1, 1, 0]
    expected = (F.cross_entropy(strong[[0]], torch.tensor([0])) + F.cross_entropy(strong[[2]], torch.tensor([1]))) / 4  # / (mu B)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    changed = strong.clone()
    changed[[1, 3]] = torch.tensor([[9.0, -9.0], [-9.0, 9.0]])  # what the unconfident images' strong views say is ignored
    assert float(fixmatch.unlabelled_loss(weak, changed, torch.full((2,), 0.95))[0]) == pytest.approx(float(expected), abs=1e-6)
    assert float(fixmatch.unlabelled_loss(weak, changed, torch.full((2,), 0.5))[0]) > 10 * float(expected)  # all count at 0.5


def test_the_step_loss_learns_the_weak_views_pseudo_label_on_the_strong_view():
    model, step = Linear(), _step()
    labelled = torch.rand(2, 3, 4, 4)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weak = torch.zeros(3, 3, 4, 4)
    weak[0, 0], weak[1, 1], weak[2, 2] = 1.0, 1.0, 0.1  # logits (8, -8) and (-2, 2): confident; (0, 0.1): not
    strong = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    settings = FixMatchSettings(threshold=0.95, mu=1, lambda_u=0.5)
    _, loss, values = fixmatch.step_loss(model, labelled, targets, weak, strong, torch.full((2,), 0.95), step, settings)
    with torch.no_grad():
        pseudo = model(weak).argmax(dim=1)
        unlabelled = F.cross_entropy(model(strong), pseudo, reduction="none") * torch.tensor([1.0, 1.0, 0.0])
        expected = F.cross_entropy(model(labelled), targets.argmax(dim=1)) + 0.5 * unlabelled.mean()
        on_weak = F.cross_entropy(model(labelled), targets.argmax(dim=1)) + 0.5 * (F.cross_entropy(model(weak), pseudo, reduction="none") * torch.tensor([1.0, 1.0, 0.0])).mean()
    assert values["used"].tolist() == [True, True, False]
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-5)
    assert abs(float(expected) - float(on_weak)) > 0.1  # the check tells the strong view from the weak one


def test_flexmatch_thresholds_follow_each_classs_learning_effect_with_warm_up():
    learned = torch.tensor([0, 0, 0, 0, 1, 1, -1, -1, -1, -1, -1, -1])  # 4 and 2 learnt, 6 not yet: the warm-up divides by 6
    beta = torch.tensor([4 / 6, 2 / 6])
    torch.testing.assert_close(fixmatch.flex_thresholds(learned, 2, 0.95), 0.95 * beta / (2 - beta))
    torch.testing.assert_close(fixmatch.flex_thresholds(torch.tensor([0, 0, 0, 1]), 2, 0.9), torch.tensor([0.9, 0.9 * (1 / 3) / (5 / 3)]))
    assert fixmatch.flex_thresholds(torch.full((5,), -1), 2, 0.95).tolist() == [0.0, 0.0]  # FlexMatch starts permissive


def test_flexmatch_records_the_class_of_confident_images_only():
    learned = torch.full((5,), -1)
    values = {"confidence": torch.tensor([0.99, 0.5, 0.96]), "pseudo": torch.tensor([1, 0, 0])}
    fixmatch.record_learning(learned, torch.tensor([4, 0, 2]), values, threshold=0.95)
    assert learned.tolist() == [-1, -1, 0, -1, 1]


def test_the_strong_view_cuts_out_half_the_side_and_the_weak_view_does_not():
    white = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)
    params_generator = make_generator(0)
    cut = always_cutout(torch.ones(2, 3, 16, 16), params_generator)
    black = (cut[:, 0] == 0).sum(dim=(1, 2))
    assert black.max() == int(16 * CUTOUT_SIDE) ** 2 and black.min() > 0  # a full square inside, or clipped at a border
    views = FixMatchViews(image_size=16, mean=(0, 0, 0), std=(1, 1, 1), ops=1, magnitude=0)
    weak = views.weak(white, make_generator(1))
    assert weak.max() == 1.0 and (weak == 1.0).float().mean() > 0.6  # shifted by at most 12.5 % per axis
    assert (views.strong(white, make_generator(1)) == 0).float().mean() > 0.2  # the cut-out square, at least


def test_settings_are_the_papers_and_rounds_beyond_one_are_refused():
    config = RunConfig()
    assert (config.fixmatch_threshold, config.fixmatch_mu, config.fixmatch_lambda_u, config.fixmatch_flex) == (0.95, 7, 1.0, False)
    assert make_config("/d", method="fixmatch").rounds == 1  # one model after the teacher, implied
    assert make_config("/d", method="fixmatch", rounds=0).rounds == 0  # the upper arm of an experiment
    with pytest.raises(ConfigError, match="use --rounds 1"):
        make_config("/d", method="fixmatch", rounds=2)
    with pytest.raises(ConfigError, match="masked part"):
        make_config("/d", method="fixmatch", split_ratio="1:0:1")
    with pytest.raises(ConfigError, match="method must be one of noisy-student, fixmatch"):
        make_config("/d", method="mixmatch")


def test_the_command_line_refuses_fixmatch_with_several_rounds_in_one_sentence(tmp_path):
    code, line = invoke_cli("kfold", tmp_path, "--method", "fixmatch", "--rounds", "3", "--out", tmp_path / "run")
    assert code == 2 and "trains one model after the teacher; use --rounds 1" in line
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def fixmatch_run(tmp_path_factory):
    """A FixMatch run with FlexMatch thresholds on tiny cells; each job and the rows it loaded while training."""
    root = tmp_path_factory.mktemp("fixmatch")
    data = generate_demo(root / "data", n_patients_per_class=4, cells_per_patient=4, size=32, seed=3)
    config = RunConfig(data=str(data), folds=2, rounds=1, epochs=1, image_size=32, batch_size=4, weights="none", arch="resnet18",
                       method="fixmatch", fixmatch_mu=2, fixmatch_flex=True, fixmatch_threshold=0.5, test_fraction=0.25, eval_batch_size=64, workers=1)
    seen: dict[int, dict] = {}
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
        table = pipeline.run_kfold(config, root / "run")
    finally:
        pipeline.train_model = original
    return root / "run", seen, table


def _rows_of(entry: dict, fold: int, role: str) -> set[int]:
    run_ctx = entry["run_ctx"]
    return set(run_ctx.rows(pipeline.fold_rows(run_ctx.fold_table, fold, role)[manifest.PATH]).tolist())


@pytest.mark.slow
def test_fixmatch_learns_from_the_masked_part_without_its_labels_and_never_loads_the_test_set(fixmatch_run):
    _, seen, _ = fixmatch_run
    for fold in (0, 1):
        entry = seen[1, fold]
        job = entry["job"]
        assert [f.name for f in fields(job.unlabelled)] == ["rows"]  # nothing but cache rows: no label can travel
        assert set(job.unlabelled.rows.tolist()) == _rows_of(entry, fold, manifest.ROLE_MASKED)
        assert set(job.train_set.rows.tolist()) == _rows_of(entry, fold, manifest.ROLE_LABELLED)  # labels only here
        loaded = set(torch.cat(entry["loaded"]).tolist())
        assert _rows_of(entry, fold, manifest.ROLE_MASKED) <= loaded
        assert not loaded & _rows_of(entry, fold, manifest.ROLE_TEST)  # the outer test set is never reached
        assert seen[0, fold]["job"].unlabelled is None  # the teacher is the supervised model


@pytest.mark.slow
def test_a_fixmatch_run_fills_the_usual_run_folder_and_compares_with_its_teacher(fixmatch_run):
    run, _, table = fixmatch_run
    assert set(table[table["fold"] == "ensemble"]["model"]) == {"teacher", "student"}
    assert (run / "results" / "comparison.csv").exists()
    history = pd.read_csv(layout.round_dir(run, 0, 1) / layout.HISTORY)
    assert history[layout.UNLABELLED_USED].between(0, 1).all()
    assert not (layout.round_dir(run, 0, 0) / layout.PSEUDO_LABELS).exists()  # FixMatch makes its own, every step
    assert pd.read_csv(run / "results" / "pseudo_label_quality.csv").empty  # no teacher's pseudo-labels were learnt from
    saved = checkpoint.load(layout.round_dir(run, 0, 1) / layout.CHECKPOINT)["train_state"]["learned"]
    assert len(saved) == len(seen_masked(run, 0)) and (saved >= 0).all()  # FlexMatch's record (two classes: all >= 0.5)
    assert json.loads((run / "config.json").read_text())["method"] == "fixmatch"


def seen_masked(run, fold: int) -> pd.DataFrame:
    folds = pd.read_csv(run / layout.FOLDS)
    return folds[(folds[manifest.FOLD] == fold) & (folds[manifest.ROLE] == manifest.ROLE_MASKED)]


@pytest.mark.slow
def test_the_fixmatch_epoch_updates_flexmatchs_record_and_steps_once_per_labelled_batch():
    model = Linear()
    step = StepContext(optimizer=torch.optim.SGD(model.parameters(), lr=0.01), device=CPU)
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labelled = TrainSet(torch.arange(4), torch.eye(2)[[0, 1, 0, 1]])
    unlabelled = UnlabelledSet(torch.arange(4, 20))
    learned = fixmatch.new_learning_state(unlabelled)
    stats = fixmatch.train_one_epoch(model, lambda rows: images[rows], labelled, unlabelled, FixMatchViews(8), step,
                                     make_generator(0), 2, FixMatchSettings(threshold=0.6, mu=3, flex=True), learned)
    assert stats["images"] == 4 and 0 <= stats["unlabelled_used"] <= 1
    assert (learned >= 0).sum() > 0  # confident images now hold their class


@pytest.mark.slow
def test_an_experiment_runs_fixmatch_against_its_teachers_and_the_control(tmp_path):
    data = write_class_folders(tmp_path / "data", patients_per_class=6, images_per_patient=3)
    flags = ["--patient-regex", PATIENT_REGEX, "--positive", "malignant", "--folds", "2", "--epochs", "1", "--image-size", "32",
             "--batch-size", "4", "--weights", "none", "--arch", "resnet18", "--device", "cpu", "--workers", "1",
             "--test-fraction", "0.34", "--method", "fixmatch", "--fixmatch-mu", "2", "--quiet"]
    code, line = invoke_cli("experiment", data, "--out", tmp_path / "study", "--seeds", "3", "--arms", "ns,control", *flags)
    assert code == 0, line
    ns, control = (json.loads((tmp_path / "study" / "seed-3" / arm / "config.json").read_text()) for arm in ("ns", "control"))
    assert (ns["method"], ns["rounds"], control["student_data"]) == ("fixmatch", 1, "labelled")
    arms = pd.read_csv(tmp_path / "study" / "results" / "arms.csv")
    assert "students (FixMatch)" in set(arms["ensemble"])
    study_table = pd.read_csv(tmp_path / "study" / "results" / "study.csv")
    assert set(study_table["comparison"]) == {"students - teachers", "students - control"}


@pytest.mark.slow
def test_a_fixmatch_model_resumed_from_its_first_epoch_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    data = generate_demo(tmp_path / "data", n_patients_per_class=3, cells_per_patient=4, size=32, seed=5)
    config = RunConfig(data=str(data), folds=2, rounds=1, epochs=2, image_size=32, batch_size=4, weights="none", arch="resnet18",
                       method="fixmatch", fixmatch_mu=2, fixmatch_flex=True, fixmatch_threshold=0.6, test_fraction=0,
                       eval_batch_size=64, workers=1)
    first_epoch = tmp_path / "after-epoch-1"
    original = trainer._save_checkpoint

    def keep_first(job, training):  # the round-1 model of fold 0 as an interruption after its first epoch leaves it
        original(job, training)
        if job.extra["round"] == 1 and job.extra["fold"] == 0 and training.state.next_epoch == 1:
            shutil.copytree(job.out_dir, first_epoch)

    monkeypatch.setattr(trainer, "_save_checkpoint", keep_first)
    pipeline.run_kfold(config, tmp_path / "run")
    monkeypatch.setattr(trainer, "_save_checkpoint", original)
    reference = checkpoint.load(layout.round_dir(tmp_path / "run", 0, 1) / layout.MODEL)["model"]
    shutil.rmtree(layout.round_dir(tmp_path / "run", 0, 1))
    shutil.copytree(first_epoch, layout.round_dir(tmp_path / "run", 0, 1))
    pipeline.run_kfold(config, tmp_path / "run", resume=True)
    resumed = checkpoint.load(layout.round_dir(tmp_path / "run", 0, 1) / layout.MODEL)["model"]
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_noisy_student_settings_that_fixmatch_ignores_are_named_at_the_start():
    warnings = method_warnings(make_config("/d", preset="noisy-student", method="fixmatch"))
    assert len(warnings) == 1 and "--pseudo-threshold, --pseudo-per-class, --randaugment do not apply" in warnings[0]
    assert method_warnings(make_config("/d", method="fixmatch")) == []
    assert method_warnings(make_config("/d", preset="noisy-student", method="fixmatch", student_data="labelled")) == []  # the control


def test_the_reports_settings_section_and_the_banner_name_the_method_first():
    config = make_config("/d", method="fixmatch", fixmatch_flex=True)
    html = settings_section(config.to_dict())
    key_table = html.split("<details>")[0]
    assert "<code>--method</code></td><td>fixmatch</td><td>given" in key_table
    assert "--fixmatch-flex" in html.split("<details>")[1]  # every other setting, collapsed
    assert banner(config).startswith("preset cnmc-study: method fixmatch*, ")


@pytest.mark.parametrize("command", ["kfold", "experiment"])
def test_help_groups_each_methods_settings_in_its_own_panel(command):
    code, text = invoke_cli(command, "--help")
    assert code == 0
    method, noisy, fixmatch_panel, noise = (text.index(f"─ {name} ─") for name in ("Method", "Noisy Student", "FixMatch", "Noise"))
    assert method < text.index("--method ", method) < noisy < text.index("--pseudo-mode") < fixmatch_panel
    assert fixmatch_panel < min(text.index(f"--fixmatch-{name}") for name in ("threshold", "mu", "lambda-u", "flex")) < noise
