"""The ``noisystudent`` command line. The only module that touches argv, Typer and Rich."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made
# the demo 4x slower (707 s vs 155 s, scripts/bench_demo.sh); set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.text import Text

from noisystudent import __version__
from noisystudent.cli.progress import RichProgress
from noisystudent.config.config_file import EXPERIMENT, KFOLD, PREDICT, SECTIONS, merged_settings, read_config_file
from noisystudent.config.presets import DESCRIPTIONS
from noisystudent.config.provenance import banner, help_default
from noisystudent.config.run_config import RENAMED_SETTINGS, RunConfig
from noisystudent.config.settings import default_run_folder, make_config, resume_config
from noisystudent.errors import UserError, os_error_sentence, resource_error_sentence
from noisystudent.termination import Terminated, sigterm_as_interrupt

# No emoji codes: a user's ':b:' (in --split-ratio a:b:c, a path) is text. Values shown inside markup are escaped.
console = Console(stderr=True, emoji=False)
out = Console(emoji=False)

app = typer.Typer(
    help="Noisy Student k-fold training and ensembles for single-cell microscopy images (ALL vs HEM).",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
ensemble_app = typer.Typer(help="Combine the fold models of a run: predict new images, evaluate on labelled data.", no_args_is_help=True)
data_app = typer.Typer(help="Look at data sets before training.", no_args_is_help=True)
config_app = typer.Typer(help="Settings files (--config FILE.yaml): print a commented starting file.", no_args_is_help=True)
app.add_typer(ensemble_app, name="ensemble")
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")


def user_errors(command):
    """Turn a UserError, or a resource the system refused, into one red sentence and exit status 2, never a traceback."""
    resumable = command.__name__ == "kfold"  # the only command with --resume; others are simply run again

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_as_interrupt():  # kill, Slurm's time limit: stop as Ctrl-C does (workers too)
                return command(*args, **kwargs)
        except UserError as error:
            sentence = str(error)
        except KeyboardInterrupt as stop:
            said = "Stopped (SIGTERM)." if isinstance(stop, Terminated) else "Interrupted."
            console.print(Text.assemble((said, "yellow"), " ", _advice("Completed stages are saved; continue with --resume.", resumable)))
            raise typer.Exit(130) from None
        except OSError as error:
            sentence = os_error_sentence(error)
            if sentence is None:
                raise
        except (MemoryError, RuntimeError) as error:
            sentence = resource_error_sentence(error)
            if sentence is None:
                raise
        fail(_advice(sentence, resumable))

    return wrapper


def fail(sentence: str) -> None:
    """Print ``sentence`` after a red "Error:" and exit with status 2.

    A Text, not markup: a user's value such as ``a:b:c`` or ``[red]`` is shown as typed.
    """
    console.print(Text.assemble(("Error:", "bold red"), " ", sentence), highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def _advice(sentence: str, resumable: bool) -> str:
    """The library's advice to continue with --resume, as it applies to a command without that flag."""
    return sentence if resumable else sentence.replace("continue with --resume", "run the command again")


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
PSEUDO_FLAGS = {"preset": "Preset (default: cnmc-study with DATA, demo without): " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()) + "."}


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
    decls = [f"{flag}/--no-{flag[2:]}"] if _option_type(config_field) == Optional[bool] else [flag]
    # the default a preset puts in force, not only RunConfig's: --help must not promise what a preset replaces
    shown_default = "" if config_field.name == "preset" else f" {help_default(config_field.name)}"
    option = typer.Option(*decls, help=f"{help_text}{shown_default}", show_default=False, rich_help_panel=_panel(config_field.name))
    return inspect.Parameter(config_field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[_option_type(config_field), option])


def _panel(name: str) -> str:
    order = [f.name for f in fields(RunConfig)]
    index = order.index(name)
    for start, panel in reversed(SECTIONS):
        if index >= order.index(start):
            return panel
    return "Options"


@user_errors
def kfold(
    data: Optional[Path] = None,
    out: Optional[Path] = None,
    resume: bool = False,
    quiet: bool = False,
    only_folds: Optional[str] = None,
    join: bool = False,
    config_file: Optional[Path] = None,
    **settings: Any,
) -> None:
    """Train teachers and Noisy Students on patient-disjoint folds; evaluate folds and ensembles.

    Without DATA, generates the built-in synthetic demo data and runs the demo preset.
    """
    from noisystudent.cli.tables import print_results
    from noisystudent.evaluation.metrics import headline_class_rows
    from noisystudent.report.evidence import read_comparisons
    from noisystudent.report.tables import headline
    from noisystudent.run.folder import saved_config
    from noisystudent.run.pipeline import run_kfold

    setup_logging(quiet)
    data, settings = _with_config_file(config_file, KFOLD, data, settings)
    joining = join or only_folds is not None
    saved = saved_config(out) if (resume or joining) and out is not None else None
    if saved is not None:
        config = resume_config(saved, data, source=out / "config.json", **settings)
    else:  # a new run (or nothing to resume: the run folder check says so)
        config = make_config(data, **settings)
    run = out or default_run_folder(config)
    console.print(f"[bold]noisystudent kfold[/] -> {escape(str(run))}", highlight=False)
    console.print(banner(config), highlight=False, soft_wrap=True)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 alone shows progress and results
        run_kfold(config, run, resume=resume, only_folds=only_folds, join=join)
        return
    with RichProgress(console) as progress:
        table = run_kfold(config, run, resume=resume, progress=progress, only_folds=only_folds, join=join)
    if table is None:  # other folds are still being trained (or wait for a process that stopped): the log says which
        console.print(f"This process is done; the results follow when every fold is finished (noisystudent kfold --out {run} --resume).", markup=False)
        return
    metrics = headline_class_rows(table) if not table.empty else table
    print_results(out, table, run, headline=headline(metrics, read_comparisons(run), config.voting))


def _with_config_file(path: Optional[Path], command: str, data: Optional[Path], settings: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """DATA and the settings with --config's file under the flags given (on --resume the run's checks then apply)."""
    if path is None:
        return data, settings
    merged = merged_settings(read_config_file(path, command), settings)
    file_data = merged.pop("data", None)
    return (data if data is not None else file_data), merged


def _given_on_command_line(context: Optional[typer.Context], name: str) -> bool:
    """True when option ``name`` was typed (or set by an environment variable), not left at its default.

    Asks click's context where the value came from (compared by name: Typer may bundle its own click),
    so an option whose default is not None still yields to a config file only when it was not typed.
    """
    if context is None:  # called from Python: every argument counts as given
        return True
    source = context.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


CONTEXT = inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typer.Context)


def _file_option(command: str) -> inspect.Parameter:
    return inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option("--config", help=f"YAML file of {command} settings (name: value); flags given win over it"
                                     + ("." if command == PREDICT else ", it wins over --preset (noisystudent config show prints one)."),
                                     show_default=False)])


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
        inspect.Parameter("only_folds", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option("--only-folds", help="Train just these folds (e.g. 0,2) into the run folder, "
                                        "starting the run or joining it; other processes may train the others.", show_default=False)]),
        inspect.Parameter("join", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--join", help="Start the run in --out or join it if it exists, and train every fold no other "
                               "process has claimed (one process per GPU or machine).")]),
        _file_option(KFOLD),
    ]
    return inspect.Signature(base + [_option(f) for f in fields(RunConfig) if f.name not in KFOLD_SKIP] + _renamed_options())


def _renamed_options() -> list[inspect.Parameter]:
    """The old flags of renamed settings, hidden from --help; make_config warns and maps them to the new name."""
    return [inspect.Parameter(old, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--" + old.replace("_", "-"), hidden=True)]) for old in RENAMED_SETTINGS]


kfold.__signature__ = _kfold_signature()
kfold.__annotations__ = {p.name: p.annotation for p in kfold.__signature__.parameters.values()}
app.command("kfold")(kfold)


# --- experiment: every arm of every seed, then the method-level answer ---

EXPERIMENT_SKIP = {"data", "seed"}  # the positional argument; --seeds replaces --seed


@user_errors
def experiment(
    data: Optional[Path] = None,
    out: Optional[Path] = None,
    seeds: str = "0,1,2",
    arms: str = "ns,control,upper",
    quiet: bool = False,
    config_file: Optional[Path] = None,
    context: Optional[typer.Context] = None,
    **settings: Any,
) -> None:
    """Did the method (--method: Noisy Student, FixMatch, Meta Pseudo Labels) help? Run each arm (ns, control, upper) for each seed and answer over seeds and patients.

    Every arm of every seed is an ordinary run folder STUDY/seed-<s>/<arm>/ (resumable, joinable);
    the answer is in STUDY/results/study.csv and STUDY/report/report.html. Running it again continues.
    """
    from noisystudent.experiment import run_experiment

    setup_logging(quiet)
    data, settings = _with_config_file(config_file, EXPERIMENT, data, settings)
    file_seeds, file_arms = settings.pop("seeds", None), settings.pop("arms", None)  # a file's; a flag typed wins
    seeds = file_seeds if file_seeds is not None and not _given_on_command_line(context, "seeds") else seeds
    arms = file_arms if file_arms is not None and not _given_on_command_line(context, "arms") else arms
    config = make_config(data, **settings)
    study = out or Path(str(default_run_folder(config)) + "-study")
    console.print(f"[bold]noisystudent experiment[/] -> {escape(str(study))} (seeds {seeds}; arms {arms})", highlight=False)
    console.print(banner(config), highlight=False, soft_wrap=True)
    with RichProgress(console) as progress:
        result = run_experiment(config, study, _numbers(seeds, "--seeds"), _names(arms), progress=progress)
    print_study(result)


def _numbers(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{flag} takes whole numbers separated by commas or spaces (e.g. 0,1,2); got {text!r}.") from None


def _names(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split()]


def print_study(result: Any) -> None:
    from noisystudent.cli.tables import print_study_table

    print_study_table(result, out)


def _experiment_signature() -> inspect.Signature:
    kfold_base = {p.name: p for p in _kfold_signature().parameters.values()}
    base = [
        kfold_base["data"].replace(annotation=Annotated[Optional[Path], typer.Argument(
            help="Data set: C-NMC folder, class folders, or CSV manifest. Omit for the demo data.", show_default=False)]),
        kfold_base["out"].replace(annotation=Annotated[Optional[Path], typer.Option(
            "--out", "-o", help="Study folder (default: runs/<data name>-study).", show_default=False)]),
        inspect.Parameter("seeds", inspect.Parameter.KEYWORD_ONLY, default="0,1,2", annotation=Annotated[
            str, typer.Option("--seeds", help="Seeds to run, e.g. 0,1,2 (at least two for an answer about the method).")]),
        inspect.Parameter("arms", inspect.Parameter.KEYWORD_ONLY, default="ns,control,upper", annotation=Annotated[
            str, typer.Option("--arms", help="Arms of each seed: ns (the --method run: Noisy Student, FixMatch or Meta Pseudo Labels), control (the students without "
                              "pseudo-labels), upper (true labels for the masked part); ns is required.")]),
        kfold_base["quiet"],
        _file_option(EXPERIMENT),
        CONTEXT,
    ]
    return inspect.Signature(base + [p for name, p in kfold_base.items() if name not in {"data", "out", "resume", "quiet", "only_folds",
                                                                                       "join", "config_file", *EXPERIMENT_SKIP}])


experiment.__signature__ = _experiment_signature()
experiment.__annotations__ = {p.name: p.annotation for p in experiment.__signature__.parameters.values()}
app.command("experiment")(experiment)


@app.command()
@user_errors
def report(run: Annotated[Path, typer.Argument(help="Run folder.")]) -> None:
    """Write RUN/report/: loss curves, confusion matrices, ROC curves, pseudo-label histograms, report.html."""
    from noisystudent.report import write_report

    path = write_report(run)
    out.print(f"Report written to {path}", markup=False)


@app.command()
@user_errors
def adopt(run: Annotated[Path, typer.Argument(help="A run folder written by an earlier noisystudent.")]) -> None:
    """Record what a run made before verified run files lacks (run id, digests, model identities), so it resumes and predicts.

    The files are recorded as they are now: adopt only a run you trust.
    """
    from noisystudent.run.adopt import adopt_run

    done = adopt_run(run)
    if not done:
        out.print(f"{run} already records everything; nothing to adopt.", markup=False)
        return
    out.print(f"Adopted {run}: recorded " + "; ".join(done) + ".", markup=False)


@app.command()
@user_errors
def compare(
    run_a: Annotated[Path, typer.Argument(help="The reference run folder (A), or a study folder (noisystudent experiment --out).")],
    run_b: Annotated[Path, typer.Argument(help="The run folder compared with it (B), evaluated on the same outer test set; or a "
                                               "second study of the same data and seeds (e.g. another --method).")],
    models: Annotated[str, typer.Option(help="Ensembles to compare: students (the final round) or teachers (round 0).")] = "students",
    voting: Annotated[str, typer.Option(help="Ensemble rule: majority or soft (two studies: their declared rule).")] = "majority",
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resamples.")] = 0,
    arm: Annotated[str, typer.Option(help="Two studies: the arm to compare: ns (each study's method), control, upper or teachers.")] = "ns",
    out_csv: Annotated[Optional[Path], typer.Option("--out", help="Also write the table to this CSV file.")] = None,
) -> None:
    """B minus A on the shared outer test set: paired bootstrap over patients (95% intervals) and McNemar's exact test.

    Two study folders: B minus A for the method, a two-level bootstrap over their shared seeds and test patients.
    """
    from noisystudent.evaluation.comparison import comparison_table
    from noisystudent.experiment.between import check_pair, is_study

    if voting not in ("majority", "soft"):  # --models is checked by compare_runs
        raise typer.BadParameter("--voting must be majority or soft.")
    check_pair(run_a, run_b)
    if out_csv is not None:
        from noisystudent.safe_paths import check_output_file

        check_output_file(out_csv, flag="--out")
    if is_study(run_a):
        table = _compare_studies(run_a, run_b, arm)
    else:
        from noisystudent.cli.tables import print_comparison
        from noisystudent.run.evidence import compare_runs

        comparison = compare_runs(run_a, run_b, voting=voting, models=models, seed=seed)
        print_comparison(comparison, out)
        table = comparison_table(comparison)
    if out_csv is not None:
        from noisystudent.atomic import write_csv

        write_csv(out_csv, table, for_people=True)
        out.print(f"Table written to {out_csv}", markup=False)


def _compare_studies(study_a: Path, study_b: Path, arm: str) -> Any:
    from noisystudent.cli.tables import print_primary_rows
    from noisystudent.experiment.between import ARMS_KINDS, compare_studies
    from noisystudent.experiment.study import load_design

    if arm not in ARMS_KINDS:
        raise typer.BadParameter(f"--arm must be one of {', '.join(ARMS_KINDS)}.")
    table = compare_studies(study_a, load_design(study_a), study_b, load_design(study_b), arm)
    print_primary_rows(table, out)
    method = table[(table["role"] == "primary") & (table["level"] == "method")].iloc[0]
    out.print(f"Study B - study A ({arm} arms, {method['metric']}): {method['estimate']:+.3f} "
              f"[{method['low']:+.3f}, {method['high']:+.3f}] over {int(method['seeds'])} seeds: {method['verdict']}.", markup=False)
    return table


@data_app.command("inspect")
@user_errors
def data_inspect(
    path: Annotated[Path, typer.Argument(help="Data set folder or CSV manifest.")],
    data_format: Annotated[str, typer.Option("--format", help="auto, cnmc, folders or csv.")] = "auto",
    patient_regex: Annotated[Optional[str], typer.Option(help="Regex with one group extracting the patient from file names.")] = None,
) -> None:
    """Print the detected format, counts per class and per patient, image sizes, and problems found."""
    from noisystudent.cli.tables import print_inspection
    from noisystudent.data.inspection import inspect_dataset

    setup_logging(quiet=True)
    print_inspection(out, inspect_dataset(path, data_format, patient_regex))


@data_app.command("demo")
@user_errors
def data_demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the synthetic C-NMC-like data set into.")],
    seed: Annotated[int, typer.Option(help="Seed of the generator.")] = 0,
) -> None:
    """Write the built-in synthetic demo data set (C-NMC layout) to OUT_DIR."""
    from noisystudent.data.demo import generate_demo
    from noisystudent.safe_paths import check_output_folder

    check_output_folder(out_dir, flag="OUT_DIR")
    root = generate_demo(out_dir, seed=seed)
    out.print(f"Demo data written to {root}", markup=False)


# --- ensemble: predict and evaluate share their options and setup ---

RunArgument = Annotated[Path, typer.Argument(help="Run folder of a finished kfold run (only read).")]


@dataclass
class EnsembleOptions:
    """What every ensemble command takes besides its own arguments."""

    models: str
    tta: Optional[str]
    batch_size: Optional[int]
    device: str
    skip_unreadable: bool
    backend: str
    calibration: Optional[str]


def _keyword(name: str, default: Any, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


ENSEMBLE_OPTIONS = [
    _keyword("models", "students", Annotated[str, typer.Option(help="students (the final round) or teachers (round 0).")]),
    _keyword("tta", None, Annotated[Optional[str], typer.Option(
        help="Test-time augmentation: none, flips, dihedral, five_crop, ten_crop (default: the run's).", show_default=False)]),
    _keyword("batch_size", None, Annotated[Optional[int], typer.Option(
        help="Images per forward pass (default: the run's --eval-batch-size).", show_default=False)]),
    _keyword("device", "auto", Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]),
    _keyword("skip_unreadable", False, Annotated[bool, typer.Option(
        "--skip-unreadable", help="Skip (and list) unreadable images instead of stopping.")]),
    _keyword("backend", "auto", Annotated[str, typer.Option(
        help="auto (ONNX Runtime on a CPU when the onnx extra is installed, else PyTorch), onnx or torch.")]),
    _keyword("calibration", None, Annotated[Optional[str], typer.Option(
        help="none (the fold models' mean probability) or temperature (scaled by the temperature fitted on validation; "
             "docs/deploy.md) (default: none; a model folder's: its export's).", show_default=False)]),
    _keyword("quiet", False, Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors in the log output.")]),
]


def ensemble_command(name: str, config_command: Optional[str] = None):
    """Register ``command(run, ..., options: EnsembleOptions)`` as ``noisystudent ensemble NAME`` with the shared options.

    With ``config_command`` it also takes ``--config FILE``: the file's settings replace the options left at their defaults.
    """

    def register(command):
        @functools.wraps(command)
        def wrapper(*args: Any, quiet: bool, config_file: Optional[Path] = None, context: Optional[typer.Context] = None,
                    **kwargs: Any) -> None:
            setup_logging(quiet)
            if config_file is not None:
                from_file = read_config_file(config_file, config_command)
                kwargs.update({k: v for k, v in from_file.items() if not _given_on_command_line(context, k)})
            shared = {f.name: kwargs.pop(f.name) for f in fields(EnsembleOptions)}
            return command(*args, options=EnsembleOptions(**shared), **kwargs)

        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]
        extra = [_file_option(config_command), CONTEXT] if config_command else []
        wrapper.__signature__ = inspect.Signature(own + ENSEMBLE_OPTIONS + extra)
        wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
        return ensemble_app.command(name)(user_errors(wrapper))

    return register


@ensemble_command("predict", config_command=PREDICT)
def ensemble_predict(
    run: RunArgument,
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders (searched recursively) or CSV manifests (path[, label][, patient]).", show_default=False)],
    voting: Annotated[Optional[str], typer.Option(help="majority or soft (default: the run's --voting).", show_default=False)] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Per-image CSV; patients go to <stem>_patients.csv beside it.")] = Path("predictions.csv"),
    *,
    options: EnsembleOptions,
) -> None:
    """Predict new images by a vote of the K fold models of RUN: one row per image, one per patient."""
    from noisystudent.cli.tables import print_prediction_summary
    from noisystudent.data.loose_files import resolve_inputs
    from noisystudent.ensemble import classifier as ensemble

    ensemble.check_options(options.models, options.tta, options.batch_size, [voting] if voting else [], options.device)
    ensemble.check_calibration_name(options.calibration)
    ensemble.check_outputs(out_path, run, inputs, ensemble.patients_path(out_path))
    images = resolve_inputs(inputs)
    ensemble.check_not_an_image(out_path, images)
    models = ensemble.load_ensemble(run, options.models, options.device)
    with RichProgress(console) as progress:
        prediction = ensemble.predict(models, images, voting, progress=progress, calibration=options.calibration, tta=options.tta,
                                      batch_size=options.batch_size, skip_unreadable=options.skip_unreadable, backend=options.backend)
    written = ensemble.write_prediction(prediction, out_path)
    print_prediction_summary(out, prediction, models, voting)
    out.print("Written: " + ", ".join(str(p) for p in written), highlight=False)


@ensemble_command("evaluate")
def ensemble_evaluate(
    run: RunArgument,
    data: Annotated[Path, typer.Argument(help="Labelled data set: C-NMC folder, class folders, or CSV manifest.")],
    voting: Annotated[Optional[list[str]], typer.Option(help="majority and/or soft; repeat for both (default: both).", show_default=False)] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Metrics CSV; per-image predictions go to <stem>_predictions.csv beside it.")] = Path("metrics.csv"),
    data_format: Annotated[str, typer.Option("--format", help="auto, cnmc, folders or csv.")] = "auto",
    patient_regex: Annotated[Optional[str], typer.Option(help="Regex with one group extracting the patient from file names (folders layout).", show_default=False)] = None,
    *,
    options: EnsembleOptions,
) -> None:
    """Evaluate each fold model of RUN and their votes on a labelled data set."""
    from noisystudent.cli.tables import results_table
    from noisystudent.ensemble import classifier as ensemble
    from noisystudent.run.results import VOTING_RULES

    ensemble.check_options(options.models, options.tta, options.batch_size, voting or [], options.device)
    ensemble.check_calibration_name(options.calibration)
    ensemble.check_outputs(out_path, run, [data], ensemble.predictions_path(out_path))
    ensemble.check_outputs(out_path, run, [data], ensemble.calibration_path(out_path))
    models = ensemble.load_ensemble(run, options.models, options.device)
    images = ensemble.read_labelled(models, data, data_format, patient_regex)
    with RichProgress(console) as progress:
        evaluation = ensemble.evaluate(models, images, tuple(voting or VOTING_RULES), progress=progress, calibration=options.calibration,
                                       tta=options.tta, batch_size=options.batch_size, skip_unreadable=options.skip_unreadable,
                                       backend=options.backend)
    written = ensemble.write_evaluation(evaluation, out_path)
    from noisystudent.cli.tables import class_scope, per_class_table
    from noisystudent.evaluation.metrics import headline_class_rows, one_vs_rest_rows

    main, per_class = headline_class_rows(evaluation.metrics), one_vs_rest_rows(evaluation.metrics)
    out.print(results_table(main, f"{data} ({len(images) - len(evaluation.skipped)} images): {class_scope(main)}"))
    if not per_class.empty:
        out.print(per_class_table(per_class))
    out.print(f"Skipped unreadable images: {len(evaluation.skipped)}")
    out.print("Written: " + ", ".join(str(p) for p in written), highlight=False)


@ensemble_app.command("export")
@user_errors
def ensemble_export(
    run: RunArgument,
    out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="The ONNX file, or the new or empty model folder, to write "
                                                     "(default: ensemble.onnx, or ensemble-model/).", show_default=False)] = None,
    export_format: Annotated[str, typer.Option("--format", help="onnx (one graph, docs/onnx.md) or folder (safetensors weights, "
                                               "config.json and a model card, docs/deploy.md).")] = "onnx",
    voting: Annotated[Optional[str], typer.Option(help="majority or soft (default: the run's --voting).", show_default=False)] = None,
    models: Annotated[str, typer.Option(help="students (the final round) or teachers (round 0).")] = "students",
    tta: Annotated[Optional[str], typer.Option(help="Test-time augmentation inside the graph (default: the run's).", show_default=False)] = None,
    calibration: Annotated[Optional[str], typer.Option(help="The model folder's default --calibration: none or temperature "
                                                       "(default: none).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors in the log output.")] = False,
) -> None:
    """Export the K fold models of RUN as one ONNX file (docs/onnx.md) or a shareable model folder (docs/deploy.md)."""
    from noisystudent.config.choices import EXPORT_FORMATS
    from noisystudent.ensemble import classifier as ensemble
    from noisystudent.errors import ConfigError
    from noisystudent.inference import onnx_export, onnx_runtime

    setup_logging(quiet)
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(EXPORT_FORMATS)}; got {export_format!r}.")
    ensemble.check_calibration_name(calibration)
    if export_format == "folder":
        return _export_folder(run, out_path or Path("ensemble-model"), voting, models, tta, calibration)
    if calibration == "temperature":
        raise ConfigError("The ONNX graph gives the fold models' mean probability; --calibration temperature applies to "
                          "--format folder (or to ensemble predict).")
    out_path = out_path or Path("ensemble.onnx")
    if not onnx_runtime.available():
        raise ConfigError(f"Exporting needs onnx and onnxruntime; {onnx_runtime.INSTALL_HINT}.")
    ensemble.check_options(models, tta, None, [voting] if voting else [], "cpu")
    ensemble.check_outputs(out_path, run, [], out_path)
    models_ = ensemble.load_ensemble(run, models, "cpu")
    rule, tta_mode = ensemble.checked_rule(voting or models_.config.voting), ensemble.checked_tta(tta or models_.config.tta)
    onnx_export.write_export(onnx_export.export_ensemble_bytes(models_.model_set(), models_.export_record(), tta_mode, rule), out_path)
    out.print(f"Written: {out_path} ({len(models_.members)} {models_.kind}s, {rule} voting, tta {tta_mode}, "
              f"{models_.spec.image_size} px; run it with scripts/onnx_predict.py)", highlight=False)


@config_app.command("show")
@user_errors
def config_show(preset: Annotated[str, typer.Option(help="The preset whose settings the file starts from: " + ", ".join(DESCRIPTIONS) + ".")] = "cnmc-study") -> None:
    """Print a commented YAML file of every kfold setting (each with its help), to edit and pass as --config FILE.yaml."""
    from noisystudent.config.config_file import starting_file

    typer.echo(starting_file(preset), nl=False)


def _export_folder(run: Path, out_path: Path, voting: Optional[str], models: str, tta: Optional[str],
                   calibration: Optional[str]) -> None:
    from noisystudent.ensemble import classifier as ensemble
    from noisystudent.ensemble import model_folder

    ensemble.check_options(models, tta, None, [voting] if voting else [], "cpu")
    model_folder.check_destination(out_path, run)
    loaded = ensemble.load_ensemble(run, models, "cpu")
    ensemble.export_folder(loaded, out_path, tta, voting, calibration)
    out.print(f"Written: {out_path}/ ({len(loaded.members)} {loaded.kind}s as safetensors, config.json, README.md; "
              f"predict with noisystudent ensemble predict {out_path} IMAGES)", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
