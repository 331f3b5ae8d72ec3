"""The ``noisystudent`` command line. The only module that touches argv, Typer and Rich."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made
# the demo 4x slower (707 s vs 155 s, scripts/bench_demo.sh); set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from . import __version__
from .config import RunConfig
from .errors import UserError
from .presets import DESCRIPTIONS, preset_settings
from .cli_progress import RichProgress

console = Console(stderr=True)
out = Console()

app = typer.Typer(
    help="Noisy Student k-fold training and ensembles for single-cell microscopy images (ALL vs HEM).",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
ensemble_app = typer.Typer(help="Combine the fold models of a run: predict new images, evaluate on labelled data.", no_args_is_help=True)
data_app = typer.Typer(help="Look at data sets before training.", no_args_is_help=True)
app.add_typer(ensemble_app, name="ensemble")
app.add_typer(data_app, name="data")


def user_errors(command):
    """Turn a UserError into one red sentence and exit status 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            console.print(f"[bold red]Error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Completed stages are saved; continue with --resume.")
            raise typer.Exit(130) from None
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" while writing {error.filename}" if error.filename else ""
            console.print(f"[bold red]Error:[/] No space left on device{where}; free some space and continue with --resume.",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def setup_logging(quiet: bool) -> None:
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)  # the run log lowers the logger's level to INFO
    package = logging.getLogger("noisystudent")
    package.handlers = [handler]
    package.setLevel(logging.WARNING if quiet else logging.INFO)
    package.propagate = False


@app.callback(invoke_without_command=True)
def root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        out.print(f"noisystudent {__version__}")
        raise typer.Exit()


# --- kfold: one option per RunConfig field, generated so that help and config never drift apart ---

KFOLD_SKIP = {"data"}  # the positional argument
PSEUDO_FLAGS = {"preset": "Preset: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()) + "."}


def _option_type(config_field) -> Any:
    if config_field.name == "split_ratio":
        return Optional[str]
    annotation = str(config_field.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if annotation.startswith(name):
            return Optional[kind]
    return Optional[str]


def _option(config_field) -> inspect.Parameter:
    flag = "--" + config_field.name.replace("_", "-")
    help_text = PSEUDO_FLAGS.get(config_field.name, config_field.metadata["help"])
    default = config_field.default if config_field.default is not MISSING else None
    decls = [f"{flag}/--no-{flag[2:]}"] if _option_type(config_field) == Optional[bool] else [flag]
    option = typer.Option(*decls, help=f"{help_text} (default: {default})", show_default=False, rich_help_panel=_panel(config_field.name))
    return inspect.Parameter(config_field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[_option_type(config_field), option])


def _panel(name: str) -> str:
    order = [f.name for f in fields(RunConfig)]
    index = order.index(name)
    for start, panel in reversed([("data", "Data"), ("folds", "Folds"), ("rounds", "Noisy Student"), ("teacher_augment", "Noise"),
                                  ("epochs", "Optimisation"), ("image_size", "Images"), ("device", "Execution")]):
        if index >= order.index(start):
            return panel
    return "Options"


def build_config(data: Optional[Path], given: dict[str, Any]) -> RunConfig:
    """Preset defaults, then the flags the user gave; no data means the demo preset."""
    given = _given_settings(given)
    preset = given.get("preset") or ("demo" if data is None else "cnmc-study")
    values = preset_settings(preset)
    values.update(given)
    values["data"] = str(data.resolve()) if data is not None else None
    return RunConfig(**values)


def _given_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The flags the user actually gave (Typer passes None for the others), parsed."""
    given = {k: v for k, v in settings.items() if v is not None}
    if "split_ratio" in given:
        given["split_ratio"] = _parse_ratio(given["split_ratio"])
    return given


def _parse_ratio(text: str) -> tuple[float, float, float]:
    from .errors import ConfigError

    try:
        parts = tuple(float(x) for x in text.replace(",", ":").split(":"))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ConfigError(f"--split-ratio must look like 2:2:1 (labelled:unlabelled:validation); got {text!r}.")
    return parts


def default_run_folder(config: RunConfig) -> Path:
    name = "demo" if config.data is None else Path(config.data).stem or "run"
    return Path("runs") / name


@user_errors
def kfold(
    data: Optional[Path] = None,
    out: Optional[Path] = None,
    resume: bool = False,
    quiet: bool = False,
    **settings: Any,
) -> None:
    """Train teachers and Noisy Students on patient-disjoint folds; evaluate folds and ensembles.

    Without DATA, generates the built-in synthetic demo data and runs the demo preset.
    """
    from .pipeline import run_kfold
    from .cli_tables import print_results

    setup_logging(quiet)
    if resume and out is not None:
        config = _resume_config(out, data, settings)
    else:
        config = build_config(data, settings)
    run = out or default_run_folder(config)
    console.print(f"[bold]noisystudent kfold[/] -> {run}  (preset {config.preset}: {DESCRIPTIONS.get(config.preset, 'custom settings')})", highlight=False)
    with RichProgress(console) as progress:
        table = run_kfold(config, run, resume=resume, progress=progress)
    print_results(out, table, run)


def _resume_config(run: Path, data: Optional[Path], settings: dict[str, Any]) -> RunConfig:
    """On --resume, start from the saved settings; flags given now override (and are checked)."""
    from .run_folder import META_KEYS, saved_config

    saved = saved_config(run)
    if saved is None:
        return build_config(data, settings)  # the pipeline says there is nothing to resume
    values = {k: v for k, v in saved.items() if k not in META_KEYS}
    given = _given_settings(settings)
    if data is not None:
        given["data"] = str(data.resolve())
    values.update(given)
    return RunConfig(**values)


def _kfold_signature() -> inspect.Signature:
    base = [
        inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
            Optional[Path], typer.Argument(help="Data set: C-NMC folder, class folders, or CSV manifest. Omit for the demo.", show_default=False)]),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option("--out", "-o", help="Run folder (default: runs/<data name> or runs/demo).", show_default=False)]),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--quiet", "-q", help="Only warnings and errors in the log output.")]),
    ]
    return inspect.Signature(base + [_option(f) for f in fields(RunConfig) if f.name not in KFOLD_SKIP])


kfold.__signature__ = _kfold_signature()
kfold.__annotations__ = {p.name: p.annotation for p in kfold.__signature__.parameters.values()}
app.command("kfold")(kfold)


@app.command()
@user_errors
def report(run: Annotated[Path, typer.Argument(help="Run folder.")]) -> None:
    """Write RUN/report/: loss curves, confusion matrices, ROC curves, pseudo-label histograms, report.html."""
    from .report import write_report

    path = write_report(run)
    out.print(f"Report written to {path}")


@data_app.command("inspect")
@user_errors
def data_inspect(
    path: Annotated[Path, typer.Argument(help="Data set folder or CSV manifest.")],
    data_format: Annotated[str, typer.Option("--format", help="auto, cnmc, folders or csv.")] = "auto",
    patient_regex: Annotated[Optional[str], typer.Option(help="Regex with one group extracting the patient from file names.")] = None,
) -> None:
    """Print the detected format, counts per class and per patient, image sizes, and problems found."""
    from .inspect_data import inspect_dataset
    from .cli_tables import print_inspection

    setup_logging(quiet=True)
    print_inspection(out, inspect_dataset(path, data_format, patient_regex))


@data_app.command("demo")
@user_errors
def data_demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the synthetic C-NMC-like data set into.")],
    seed: Annotated[int, typer.Option(help="Seed of the generator.")] = 0,
) -> None:
    """Write the built-in synthetic demo data set (C-NMC layout) to OUT_DIR."""
    from .demo_data import generate_demo

    root = generate_demo(out_dir, seed=seed)
    out.print(f"Demo data written to {root}")


# Options shared by the ensemble commands.
RunArgument = Annotated[Path, typer.Argument(help="Run folder of a finished kfold run (only read).")]
ModelsOption = Annotated[str, typer.Option(help="students (the final round) or teachers (round 0).")]
TtaOption = Annotated[Optional[str], typer.Option(help="Test-time augmentation: none, flips, dihedral, five_crop, ten_crop (default: the run's).", show_default=False)]
BatchSizeOption = Annotated[Optional[int], typer.Option(help="Images per forward pass (default: the run's --eval-batch-size).", show_default=False)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
SkipUnreadableOption = Annotated[bool, typer.Option("--skip-unreadable", help="Skip (and list) unreadable images instead of stopping.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors in the log output.")]
BackendOption = Annotated[str, typer.Option(help="auto (ONNX Runtime on a CPU when the onnx extra is installed, else PyTorch), onnx or torch.")]


@ensemble_app.command("predict")
@user_errors
def ensemble_predict(
    run: RunArgument,
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (searched recursively) or CSV manifests (path[, label][, patient]).", show_default=False)],
    voting: Annotated[Optional[str], typer.Option(help="majority or soft (default: the run's --voting).", show_default=False)] = None,
    models: ModelsOption = "students",
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Per-image CSV; patients go to <stem>_patients.csv beside it.")] = Path("predictions.csv"),
    tta: TtaOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = "auto",
    skip_unreadable: SkipUnreadableOption = False,
    backend: BackendOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Predict new images by a vote of the K fold models of RUN: one row per image, one per patient."""
    from . import ensemble
    from .cli_tables import print_prediction_summary
    from .inputs import resolve_inputs

    setup_logging(quiet)
    ensemble.check_outside_run(out_path, run)
    images = resolve_inputs(inputs)
    models_ = ensemble.load_ensemble(run, models, device)
    with RichProgress(console) as progress:
        prediction = ensemble.predict(models_, images, voting, progress=progress, tta=tta, batch_size=batch_size,
                                      skip_unreadable=skip_unreadable, backend=backend)
    written = ensemble.write_prediction(prediction, out_path)
    print_prediction_summary(out, prediction, models_, voting)
    out.print("Written: " + ", ".join(str(p) for p in written), highlight=False)


@ensemble_app.command("evaluate")
@user_errors
def ensemble_evaluate(
    run: RunArgument,
    data: Annotated[Path, typer.Argument(help="Labelled data set: C-NMC folder, class folders, or CSV manifest.")],
    voting: Annotated[Optional[list[str]], typer.Option(help="majority and/or soft; repeat for both (default: both).", show_default=False)] = None,
    models: ModelsOption = "students",
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Metrics CSV; per-image predictions go to <stem>_predictions.csv beside it.")] = Path("metrics.csv"),
    data_format: Annotated[str, typer.Option("--format", help="auto, cnmc, folders or csv.")] = "auto",
    patient_regex: Annotated[Optional[str], typer.Option(help="Regex with one group extracting the patient from file names (folders layout).", show_default=False)] = None,
    tta: TtaOption = None,
    batch_size: BatchSizeOption = None,
    device: DeviceOption = "auto",
    skip_unreadable: SkipUnreadableOption = False,
    backend: BackendOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Evaluate each fold model of RUN and their votes on a labelled data set."""
    from . import ensemble
    from .cli_tables import results_table
    from .results import VOTING_RULES

    setup_logging(quiet)
    ensemble.check_outside_run(out_path, run)
    models_ = ensemble.load_ensemble(run, models, device)
    images = ensemble.read_labelled(models_, data, data_format, patient_regex)
    with RichProgress(console) as progress:
        evaluation = ensemble.evaluate(models_, images, tuple(voting or VOTING_RULES), progress=progress, tta=tta,
                                       batch_size=batch_size, skip_unreadable=skip_unreadable, backend=backend)
    written = ensemble.write_evaluation(evaluation, out_path)
    out.print(results_table(evaluation.metrics, f"{data} ({len(images) - len(evaluation.skipped)} images)"))
    out.print(f"Skipped unreadable images: {len(evaluation.skipped)}")
    out.print("Written: " + ", ".join(str(p) for p in written), highlight=False)


@ensemble_app.command("export")
@user_errors
def ensemble_export(
    run: RunArgument,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The ONNX file to write.")] = Path("ensemble.onnx"),
    voting: Annotated[Optional[str], typer.Option(help="majority or soft (default: the run's --voting).", show_default=False)] = None,
    models: ModelsOption = "students",
    tta: TtaOption = None,
    quiet: QuietOption = False,
) -> None:
    """Export the K fold models of RUN, their normalisation and the vote as one ONNX file (docs/onnx.md)."""
    from . import ensemble, onnx_backend, onnx_export
    from .errors import ConfigError

    setup_logging(quiet)
    if not onnx_backend.available():
        raise ConfigError(f"Exporting needs onnx and onnxruntime; {onnx_backend.INSTALL_HINT}.")
    ensemble.check_outside_run(out_path, run)
    models_ = ensemble.load_ensemble(run, models, "cpu")
    rule, tta_mode = ensemble.checked_rule(voting or models_.config.voting), ensemble.checked_tta(tta or models_.config.tta)
    onnx_export.write_export(onnx_export.export_ensemble_bytes(models_, tta_mode, rule), out_path)
    out.print(f"Written: {out_path} ({len(models_.members)} {models_.kind}s, {rule} voting, tta {tta_mode}, "
              f"{models_.spec.image_size} px; run it with scripts/onnx_predict.py)", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
