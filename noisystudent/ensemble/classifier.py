"""The K fold models of a finished run as one classifier for new images.

``load_ensemble`` loads the teachers (round 0) or the final students (round
``config.rounds``) of every fold, checking that each belongs to the run and
that all share classes and preprocessing. The run folder is only read.

``predict_fold_probs`` streams the images in batches: a thread pool decodes and
preprocesses the next few batches (``prefetch``; no disk cache: nothing is
written) while every fold model predicts the current one, in ONNX Runtime or
PyTorch (``backends``). ``predict`` votes (``results.vote_table``)
and summarises per patient; ``evaluate`` does the same on a labelled data set
and computes the metrics of every fold model and of each voting rule.

Files (written atomically, never inside the run folder):

- predict: one row per image: path, label (when any is known), patient,
  prob_<class> (mean over the fold models), pred, agreement (fraction of the
  models whose vote is pred), vote_fold<k>; and ``<stem>_patients.csv`` for
  known patients: patient, n_cells, fraction_<positive>, mean_prob_<positive>,
  call (positive when fraction >= 0.5), label (majority of known cell labels).
- evaluate: the metrics CSV (model, fold, round, voting, metrics, counts) and
  ``<stem>_predictions.csv`` with the same identifying columns and one row per
  image and model, so that each metrics row is recomputed by
  ``metrics.metrics_from_predictions(rows_of(predictions, fold, voting), ...)``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from noisystudent import __version__, atomic, layout
from noisystudent.config.choices import CALIBRATIONS
from noisystudent.config.run_config import TTA, VOTING, RunConfig, config_from_saved
from noisystudent.data.label_names import apply_label_map
from noisystudent.data.labels import parse_binary_mapping
from noisystudent.data.loose_files import name_fields
from noisystudent.data.manifest import LABEL, PATH, PATIENT
from noisystudent.data.prefetch import DecodedBatch, decoded_batches
from noisystudent.data.preprocess import PreprocessSpec
from noisystudent.data.readers import read_manifest
from noisystudent.device import resolve_device
from noisystudent.ensemble import model_card, model_folder
from noisystudent.errors import CheckpointError, ConfigError, DataError, OutputError, RunFolderError
from noisystudent.evaluation import calibration as calib
from noisystudent.evaluation import metrics
from noisystudent.inference.backends import BatchPredictor, ensemble_predictor
from noisystudent.inference.model_set import ExportRecord, ModelSet
from noisystudent.inference.tables import prediction_table
from noisystudent.models import input_normalization
from noisystudent.models.model_file import load_model_file
from noisystudent.progress import NULL_PROGRESS, Progress
from noisystudent.run import calibration, results
from noisystudent.run.folder import load_run_config, run_identity, saved_config
from noisystudent.safe_paths import check_output_file

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 32768  # images per forward pass at most (--batch-size)
N_CELLS = "n_cells"
CALL = "call"
ENSEMBLE = results.ENSEMBLE
# model (teacher/student), fold (0..K-1 or "ensemble"), round, voting ("" for a single fold model)
EVAL_ID_COLUMNS = [layout.MODEL_KIND, layout.FOLD_COLUMN, layout.ROUND, layout.VOTING]


@dataclass
class FoldModel:
    fold: int
    path: Path
    model: torch.nn.Module
    normalization: tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) its arch expects


@dataclass
class Ensemble:
    run: Path
    config: RunConfig
    round: int  # 0: teachers, config.rounds: final students
    members: list[FoldModel]
    classes: list[str]
    spec: PreprocessSpec
    device: torch.device
    # (tta, backend) -> batch predictor, built once per loaded ensemble (an ONNX Runtime session takes seconds)
    predictors: dict = field(default_factory=dict, repr=False)
    # {"temperature": T of the ensemble, "folds": {"<k>": T of fold model k}}, fitted on validation (run/calibration.py);
    # a model folder's from its config.json, a run's read on first use; None where none is known
    fitted_temperatures: dict | None = field(default=None, repr=False)
    calibration: str = "none"  # the default --calibration: none for a run, the export's choice for a model folder
    is_folder: bool = False  # loaded from an exported model folder rather than a run folder

    def temperatures(self) -> dict | None:
        """The temperatures of this ensemble and its fold models; None when the run has no validation predictions."""
        if self.fitted_temperatures is None and not self.is_folder:
            self.fitted_temperatures = run_temperatures(self.run, self.config, self.round, self.classes)
        return self.fitted_temperatures

    def predictor(self, tta: str, backend: str) -> BatchPredictor:
        if (tta, backend) not in self.predictors:
            self.predictors[(tta, backend)] = ensemble_predictor(self.model_set(), self.export_record(), tta, backend)
        return self.predictors[(tta, backend)]

    def model_set(self) -> ModelSet:
        """The fold models as inference runs them."""
        return ModelSet(tuple(m.model for m in self.members), tuple(m.normalization for m in self.members), self.device,
                        self.config.amp, self.config.channels_last, self.spec.image_size)

    def export_record(self) -> ExportRecord:
        """Where the fold models come from, as an ONNX export records it."""
        return ExportRecord(
            run=self.run, files=tuple(m.path for m in self.members), folds=tuple(m.fold for m in self.members),
            kind=self.kind, round=self.round,
            architecture=self.config.student_architecture if self.round else self.config.arch,
            classes=tuple(self.classes), positive=self.positive, preprocess=asdict(self.spec), voting=self.config.voting,
        )

    @property
    def kind(self) -> str:
        return layout.model_kind(self.round)

    @property
    def positive(self) -> str | None:
        """Positive class of metrics and patient calls; None for >2 classes without one."""
        positive = results.evaluation_positive(self.config, self.classes)
        if positive is None and self.config.positive in self.classes:
            positive = self.config.positive
        return positive


@dataclass
class FoldProbs:
    images: pd.DataFrame  # path, label, patient of the images predicted (unreadable ones left out)
    probs: np.ndarray  # (models, images, classes)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


@dataclass
class Prediction:
    table: pd.DataFrame  # one row per image
    patients: pd.DataFrame  # one row per known patient (empty when none is known)
    skipped: list[tuple[str, str]]


@dataclass
class Evaluation:
    predictions: pd.DataFrame  # one row per image and model (fold models, then each voting rule)
    metrics: pd.DataFrame  # one row per fold model and voting rule
    skipped: list[tuple[str, str]]
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)  # ECE, Brier, NLL per fold model and ensemble, before/after


# --- loading --------------------------------------------------------------------------


def load_ensemble(run: Path, models: str = "students", device: str | torch.device = "auto") -> Ensemble:
    """The K fold models of ``run``: teachers (round 0) or students (the final round).

    Each fold's model.pt is loaded and checked to belong to the run (its
    architecture) and to share classes and preprocessing with the others. The
    run folder is only read.

    Args:
        run: A run folder of :func:`run_kfold` whose folds have finished, or a
            model folder of :func:`export_folder` (read with json and
            safetensors only; it holds the models it was exported with).
        models: ``"students"`` (default: the final round's students) or
            ``"teachers"`` (round 0); a model folder ignores it (with a warning
            when it differs).
        device: ``"auto"`` (default: CUDA when available, else CPU),
            ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or a ``torch.device``.

    Returns:
        Ensemble: ``members`` (one FoldModel per fold: fold, path, model in
        eval mode), ``classes`` (output order), ``config`` (the run's
        RunConfig), ``round``, ``spec`` (preprocessing) and ``device``; the
        input of :func:`predict` and :func:`evaluate`.

    Raises:
        ConfigError: ``models`` or ``device`` is invalid.
        RunFolderError: ``run`` holds no run (no config.json).
        CheckpointError: A fold has no model.pt of that round (unfinished run),
            or a model file is unreadable or does not belong to the run; in a
            model folder, a weights file is missing, changed or does not fit.

    Example:
        >>> import noisystudent as ns
        >>> ensemble = ns.load_ensemble("runs/demo", models="teachers", device="cpu")  # doctest: +SKIP
        >>> len(ensemble.members), ensemble.classes  # doctest: +SKIP
        (3, ['all', 'hem'])
    """
    kind = checked_models(models)
    run = Path(run)
    if model_folder.is_model_folder(run):
        return load_model_folder(run, kind, device)
    config = load_run_config(run)
    round_ = 0 if kind == layout.TEACHER else config.rounds
    device = resolve_device(device) if isinstance(device, str) else device
    members, payloads = [], []
    for fold in range(config.folds):
        path = layout.round_dir(run, fold, round_) / layout.MODEL
        if not path.is_file():
            raise CheckpointError(_missing_message(run, fold, round_))
        model, payload = load_model_file(path, device, config.channels_last, run_identity(run, fold, round_))
        _check_arch(payload, path, config, round_)
        members.append(FoldModel(fold, path, model, input_normalization(payload["spec"]["arch"])))
        payloads.append(payload)
    classes, spec = _shared_classes_and_spec(members, payloads, config)
    logger.info("ensemble of %d %ss (round %d) from %s on %s", len(members), layout.model_kind(round_), round_, run, device)
    return Ensemble(run, config, round_, members, classes, spec, device)


def load_model_folder(folder: Path, kind: str, device: str | torch.device = "auto") -> Ensemble:
    """The ensemble of an exported model folder (:func:`export_folder`): json and safetensors only, nothing unpickled."""
    document = model_folder.read_document(folder)
    settings = {**document["settings"], "voting": document["voting"], "tta": document["tta"]}  # the export's choices
    config = config_from_saved(Path(folder) / model_folder.CONFIG, settings)
    device = resolve_device(device) if isinstance(device, str) else device
    if kind != document["kind"]:
        logger.warning("The model folder %s holds %ss; --models %ss does not apply to it.", folder, document["kind"], kind)
    normalization = (tuple(document["normalization"]["mean"]), tuple(document["normalization"]["std"]))
    members = [FoldModel(m.fold, m.path, m.model, normalization)
               for m in model_folder.read_members(folder, document, device, config.channels_last)]
    temperatures = None
    if document.get("temperature") is not None:
        temperatures = {"temperature": float(document["temperature"]), "folds": document.get("fold_temperatures") or {}}
    logger.info("ensemble of %d %ss from the model folder %s on %s", len(members), document["kind"], folder, device)
    return Ensemble(Path(folder), config, int(document["round"]), members, list(document["classes"]),
                    PreprocessSpec(**document["preprocess"]), device, fitted_temperatures=temperatures,
                    calibration=document.get("calibration", "none"), is_folder=True)


def run_temperatures(run: Path, config: RunConfig, round_: int, classes: list[str]) -> dict | None:
    """{"temperature", "folds"} of the models of ``round_``: results/calibration.json, else fitted now from the
    validation predictions (runs made before it existed; nothing is written). None without them."""
    saved = (calibration.read_calibration(run) or {}).get("models", {}).get(layout.model_kind(round_))
    if saved is None or saved.get("round") != round_:
        saved = calibration.fit_kind(results.collect_predictions(run, config), round_, config.folds, classes)
    return None if saved is None else {"temperature": float(saved["temperature"]), "folds": saved["folds"]}


def _missing_message(run: Path, fold: int, round_: int) -> str:
    kind = layout.model_kind(round_)
    where = Path(f"fold-{fold}", f"round-{round_}", layout.MODEL)
    advice = "finish the run with kfold --resume" + (" or use --models teachers" if round_ > 0 else "")
    return f"Fold {fold} of the run {run} has no finished {kind} ({where} is missing); {advice}."


def _check_arch(payload: dict, path: Path, config: RunConfig, round_: int) -> None:
    expected = config.student_architecture if round_ > 0 else config.arch
    found = payload["spec"].get("arch")
    if found != expected:
        raise CheckpointError(
            f"The model file {path} was built for the architecture {found}, but the {layout.model_kind(round_)}s "
            f"of this run are {expected}; it does not belong to this run."
        )


def _shared_classes_and_spec(members: list[FoldModel], payloads: list[dict], config: RunConfig):
    """Classes and preprocessing of the first model, after checking that every other model has the same."""
    found = [(_payload_classes(p, m.path), _payload_spec(p, m.path, config)) for m, p in zip(members, payloads)]
    first_path = members[0].path
    for member, (classes, spec) in zip(members[1:], found[1:]):
        if classes != found[0][0]:
            raise CheckpointError(f"The model file {member.path} predicts the classes {', '.join(classes)} but "
                                  f"{first_path} predicts {', '.join(found[0][0])}; the fold models must share their classes.")
        if spec != found[0][1]:
            raise CheckpointError(f"The model file {member.path} expects images preprocessed as {spec.key()} but "
                                  f"{first_path} expects {found[0][1].key()}; the fold models must share their preprocessing.")
    return found[0]


def _payload_classes(payload: dict, path: Path) -> list[str]:
    classes = payload.get("classes")
    if not classes or len(classes) != payload["spec"].get("num_classes"):
        raise CheckpointError(f"The model file {path} does not name the classes of its outputs; it was not written by noisystudent kfold.")
    return [str(c) for c in classes]


def _payload_spec(payload: dict, path: Path, config: RunConfig) -> PreprocessSpec:
    stored = payload.get("preprocess")
    try:
        if stored is None:  # older model files: the run's settings at the stored size
            return PreprocessSpec.from_config(config, payload.get("image_size"))
        return PreprocessSpec(**stored)
    except (TypeError, ConfigError) as error:
        raise CheckpointError(f"The model file {path} has unusable preprocessing settings ({error}).") from error


# --- streaming prediction -------------------------------------------------------------


def predict_fold_probs(
    ensemble: Ensemble,
    images: pd.DataFrame,
    tta: str | None = None,
    batch_size: int | None = None,
    skip_unreadable: bool = False,
    workers: int | None = None,
    progress: Progress = NULL_PROGRESS,
    backend: str = "auto",
) -> FoldProbs:
    """Every fold model's probabilities for ``images`` (a table with a path column).

    ``tta`` and ``batch_size`` default to the run's settings; ``backend`` is
    auto, onnx or torch (``backends``). Images are decoded by a thread pool a
    few batches ahead of the models (``prefetch``), so memory is bounded by the
    batch size. An unreadable image stops with DataError naming it, or with
    ``skip_unreadable`` is logged and left out (listed in ``skipped``).
    """
    tta = checked_tta(tta or ensemble.config.tta)
    batch_size = batch_size or ensemble.config.eval_batch_size
    predictor = ensemble.predictor(tta, backend)
    paths = images[PATH].tolist()
    kept, parts, skipped = [], [], []
    progress.start("predict", f"{len(ensemble.members)} {ensemble.kind}s predicting", total=len(paths))
    try:
        for batch in decoded_batches(paths, ensemble.spec, batch_size, workers):
            skipped += _unreadable(batch, paths, skip_unreadable)
            if batch.rows:
                kept += batch.rows
                parts.append(predictor(batch.pixels))
            progress.update("predict", completed=batch.start + batch.size)
    finally:
        progress.stop("predict")
    if not parts:
        raise DataError(f"None of the {len(paths)} images could be read.")
    return FoldProbs(images.iloc[kept].reset_index(drop=True), np.concatenate(parts, axis=1), skipped)


def checked_tta(mode: str) -> str:
    if mode not in TTA:
        raise ConfigError(f"--tta must be one of {', '.join(TTA)}; got {mode!r}.")
    return mode


def _unreadable(batch: DecodedBatch, paths: list[str], skip: bool) -> list[tuple[str, str]]:
    """(path, reason) of the batch's unreadable images; DataError for the first unless ``skip``."""
    if batch.unreadable and not skip:
        raise DataError(batch.unreadable[0][1])
    for _, reason in batch.unreadable:
        logger.warning("Skipped: %s", reason)
    return [(paths[i], reason) for i, reason in batch.unreadable]


# --- predict ----------------------------------------------------------------------------


def predict(
    ensemble: Ensemble, images: pd.DataFrame, rule: str | None = None, progress: Progress = NULL_PROGRESS,
    calibration: str | None = None, **options,
) -> Prediction:
    """Ensemble predictions per image and per known patient; ``options`` go to predict_fold_probs.

    Every fold model predicts every image (decoded in batches, nothing is
    written), the models vote, and images of the same known patient are
    summarised into a patient call. Known labels are mapped with the run's
    label_map and binary settings.

    Args:
        ensemble: From :func:`load_ensemble`.
        images: Table with a ``path`` column and optionally ``label`` and
            ``patient`` (as :func:`resolve_inputs` returns).
        rule: Voting rule ``"majority"`` or ``"soft"``; default ``None``: the
            run's ``voting`` setting.
        progress: Receives progress events; default ``NULL_PROGRESS`` ignores them.
        calibration: ``"none"`` (the mean probability of the fold models) or
            ``"temperature"`` (it scaled by the ensemble's temperature, fitted
            on validation: run/calibration.py); default ``None``: none for a
            run, the export's choice for a model folder. Calls do not change.
        **options: Passed to ``predict_fold_probs``: ``tta`` (none, flips,
            dihedral, five_crop, ten_crop; default: the run's), ``batch_size``
            (default: the run's eval_batch_size), ``skip_unreadable`` (default
            ``False``: the first unreadable image stops with DataError),
            ``workers`` (decoding threads) and ``backend`` (``"auto"``: ONNX
            Runtime on a CPU when installed, else PyTorch; ``"onnx"``; ``"torch"``).

    Returns:
        Prediction: ``table``, one row per readable image: path, label (only
        when some label is known), patient, ``prob_<class>`` (mean over the
        fold models), pred, agreement (fraction of models voting pred) and
        ``vote_fold<k>``; ``patients``, one row per known patient (patient,
        n_cells, ``fraction_<positive>``, ``mean_prob_<positive>``, call, and label
        when known; empty without patients or positive class); ``skipped``,
        (path, reason) of unreadable images left out.

    Raises:
        ConfigError: Unknown ``rule``, ``tta``, ``backend`` or ``calibration``, or
            a temperature asked for where the run has none.
        DataError: An image cannot be read (without ``skip_unreadable``), or none can.

    Example:
        >>> import noisystudent as ns
        >>> ensemble = ns.load_ensemble("runs/demo")  # doctest: +SKIP
        >>> prediction = ns.predict(ensemble, ns.resolve_inputs(["new_cells/"]), rule="soft")  # doctest: +SKIP
        >>> prediction.table[["path", "pred", "agreement"]].head()  # doctest: +SKIP
    """
    rule = checked_rule(rule or ensemble.config.voting)
    temperature = ensemble_temperature(ensemble, calibration)
    images = prepare_labels(ensemble, images, strict=False)
    fold_probs = predict_fold_probs(ensemble, images, progress=progress, **options)
    table = results.vote_table(fold_probs.images[[PATH, LABEL, PATIENT]], fold_probs.probs, ensemble.classes, rule)
    table = calibrated(table, ensemble.classes, temperature)
    patients = patient_table(table, ensemble.positive, ensemble.classes)
    if ensemble.positive is None and (table[PATIENT] != "").any():
        logger.warning("No patient table: the run's positive class %r is not one of its classes %s.",
                       ensemble.config.positive, ", ".join(ensemble.classes))
    if (table[LABEL] == "").all():
        table = table.drop(columns=LABEL)
    return Prediction(table, patients, fold_probs.skipped)


def check_calibration_name(mode: str | None) -> None:
    """``--calibration`` is none, temperature or not given; checked before any file is read."""
    if mode is not None and mode not in CALIBRATIONS:
        raise ConfigError(f"--calibration must be one of {', '.join(CALIBRATIONS)}; got {mode!r}.")


def checked_calibration(mode: str | None, ensemble: Ensemble) -> str:
    """``mode`` (default: the ensemble's own), checked; a temperature must be known for ``"temperature"``."""
    mode = mode or ensemble.calibration
    check_calibration_name(mode)
    if mode == "temperature" and ensemble.temperatures() is None:
        raise ConfigError(f"{ensemble.run} has no temperature: it is fitted on the validation predictions of every fold, "
                          "which this ensemble lacks; use --calibration none.")
    return mode


def ensemble_temperature(ensemble: Ensemble, mode: str | None) -> float | None:
    """The temperature the ensemble's mean probability is scaled by under ``mode``; None for none."""
    return ensemble.temperatures()["temperature"] if checked_calibration(mode, ensemble) == "temperature" else None


def calibrated(table: pd.DataFrame, classes: list[str], temperature: float | None) -> pd.DataFrame:
    """``table`` with its prob_<class> columns scaled by ``temperature`` (unchanged for None); calls and votes stay."""
    if temperature is None:
        return table
    columns = [layout.prob_column(c) for c in classes]
    return table.assign(**dict(zip(columns, calib.scaled(table[columns].to_numpy(), temperature).T)))


def checked_rule(rule: str) -> str:
    if rule not in VOTING:
        raise ConfigError(f"--voting must be one of {', '.join(VOTING)}; got {rule!r}.")
    return rule


def prepare_labels(ensemble: Ensemble, images: pd.DataFrame, strict: bool) -> pd.DataFrame:
    """Apply the run's --label-map and --binary mapping to known labels; with ``strict``, refuse labels the run does not know."""
    images = apply_label_map(images, ensemble.config.label_map, require_all=False).copy()
    if ensemble.config.binary and (images[LABEL] != "").any():
        mapping = parse_binary_mapping(ensemble.config.binary, sorted(set(images[LABEL]) - {""}))
        images[LABEL] = [mapping[label] if label else "" for label in images[LABEL]]
    unknown = images[(images[LABEL] != "") & ~images[LABEL].isin(ensemble.classes)]
    if strict and not unknown.empty:
        row = unknown.iloc[0]
        raise DataError(f"The image {row[PATH]} has the label {row[LABEL]!r}, which is not one of the run's classes "
                        f"{', '.join(ensemble.classes)}.")
    return images


def patient_table(predictions: pd.DataFrame, positive: str | None, classes: list[str]) -> pd.DataFrame:
    """Per patient: cells, fraction called ``positive``, its mean probability, the call, and the majority label."""
    known = predictions[predictions[PATIENT] != ""]
    if known.empty or positive is None:
        return pd.DataFrame()
    groups = known.groupby(PATIENT, sort=True)
    others = [c for c in classes if c != positive]
    negative = others[0] if len(others) == 1 else f"not_{positive}"
    fraction = groups[layout.PRED].apply(lambda p: float((p == positive).mean()))
    table = pd.DataFrame({
        PATIENT: fraction.index.astype(str),
        N_CELLS: groups.size().to_numpy(),
        f"fraction_{positive}": fraction.to_numpy(),
        f"mean_prob_{positive}": groups[layout.prob_column(positive)].mean().to_numpy(),
    })
    table[CALL] = np.where(table[f"fraction_{positive}"] >= 0.5, positive, negative)
    if LABEL in known.columns and (known[LABEL] != "").any():
        table[LABEL] = groups[LABEL].apply(_majority_label).to_numpy()
    return table


def _majority_label(labels: pd.Series) -> str:
    """Most frequent known label (ties: the alphabetically first); "" when none is known."""
    known = labels[labels != ""]
    return "" if known.empty else str(known.value_counts().sort_index().idxmax())


# --- evaluate ---------------------------------------------------------------------------


def read_labelled(ensemble: Ensemble, data: Path, data_format: str = "auto", patient_regex: str | None = None) -> pd.DataFrame:
    """path, label, patient of the labelled images of a data set (any layout readers understands).

    The images :func:`evaluate` takes. Unlabelled images are left out (and
    counted in the log); labels are mapped with the run's label_map and binary
    settings; a missing patient id is taken from a C-NMC style file name.
    Images are not decoded here.

    Args:
        ensemble: From :func:`load_ensemble`; gives the run's classes and label mapping.
        data: A data set in any layout :func:`read_dataset` understands.
        data_format: ``"auto"`` (default), ``"cnmc"``, ``"folders"`` or ``"csv"``.
        patient_regex: Regex with one group for the patient id (folders
            layout); default ``None``.

    Returns:
        pandas.DataFrame: Columns ``path``, ``label`` and ``patient``, one row
        per labelled image.

    Raises:
        DataError: The data set cannot be read, has no labelled images, or has a
            label (after mapping) that is not one of the run's classes.
        ConfigError: ``data_format`` or ``patient_regex`` is invalid.

    Example:
        >>> import noisystudent as ns
        >>> ensemble = ns.load_ensemble("runs/demo")  # doctest: +SKIP
        >>> images = ns.read_labelled(ensemble, "/data/C-NMC_test_prelim")  # doctest: +SKIP
        >>> images.columns.tolist()  # doctest: +SKIP
        ['path', 'label', 'patient']
    """
    manifest, _ = read_manifest(data, data_format, patient_regex)
    labelled = manifest[manifest[LABEL] != ""]
    if labelled.empty:
        raise DataError(f"The data set {data} has no labelled images to evaluate on.")
    if len(labelled) < len(manifest):
        logger.info("%d unlabelled images of %s are not evaluated.", len(manifest) - len(labelled), data)
    images = labelled[[PATH, LABEL, PATIENT]].reset_index(drop=True)
    from_names = [name_fields(p)[0] for p in images[PATH]]
    images[PATIENT] = images[PATIENT].where(images[PATIENT] != "", pd.Series(from_names, dtype=object))
    return prepare_labels(ensemble, images, strict=True)


def evaluate(
    ensemble: Ensemble, images: pd.DataFrame, rules: tuple[str, ...] = results.VOTING_RULES,
    progress: Progress = NULL_PROGRESS, calibration: str | None = None, **options,
) -> Evaluation:
    """Metrics of every fold model and of each voting rule on labelled ``images``.

    Every fold model predicts every image once; the metrics of each fold model
    and of each voting rule are computed from those predictions by the same
    code as results/metrics.csv, so each metrics row can be recomputed from the
    returned predictions.

    Args:
        ensemble: From :func:`load_ensemble`.
        images: Labelled images: columns ``path``, ``label``, ``patient``
            (e.g. from :func:`read_labelled`).
        rules: Voting rules to evaluate; default ``("majority", "soft")``.
        progress: Receives progress events; default ``NULL_PROGRESS`` ignores them.
        calibration: ``"none"`` or ``"temperature"``: the probabilities of the
            predictions table (each fold model by its own temperature, the
            ensembles by theirs); default as for :func:`predict`.
        **options: ``tta``, ``batch_size``, ``skip_unreadable``, ``workers`` and
            ``backend``, as for :func:`predict`.

    Returns:
        Evaluation: ``metrics``, one row per fold model and per voting rule
        (columns model, fold, round, voting, class, the metrics and counts);
        ``predictions``, one row per image and model with the same identifying
        columns; ``skipped``, (path, reason) of unreadable images left out;
        ``calibration``, ECE (15 bins), Brier score and NLL of every fold model
        and of the ensemble's mean probability, before (``none``) and, when
        the temperatures are known, after (``temperature``) scaling.

    Raises:
        ConfigError: Unknown rule, ``tta`` or ``backend``.
        DataError: An image cannot be read (without ``skip_unreadable``), or none can.

    Example:
        >>> import noisystudent as ns
        >>> ensemble = ns.load_ensemble("runs/demo")  # doctest: +SKIP
        >>> evaluation = ns.evaluate(ensemble, ns.read_labelled(ensemble, "/data/test_set"))  # doctest: +SKIP
        >>> evaluation.metrics[["fold", "voting", "accuracy", "auc"]]  # doctest: +SKIP
    """
    rules = tuple(checked_rule(r) for r in rules)
    scaled = ensemble_temperature(ensemble, calibration) is not None
    fold_probs = predict_fold_probs(ensemble, images, progress=progress, **options)
    base = fold_probs.images[[PATH, LABEL, PATIENT]]
    temperatures = _member_temperatures(ensemble) if scaled else {}
    tables = []
    for m, member in enumerate(ensemble.members):
        table = calibrated(prediction_table(base, fold_probs.probs[m], ensemble.classes), ensemble.classes, temperatures.get(member.fold))
        tables.append(_identified(ensemble, member.fold, "", table))
    for rule in rules:
        table = calibrated(results.vote_table(base, fold_probs.probs, ensemble.classes, rule), ensemble.classes, temperatures.get(ENSEMBLE))
        tables.append(_identified(ensemble, ENSEMBLE, rule, table))
    rows = [row for t in tables for row in _metrics_rows(t, ensemble)]
    columns = EVAL_ID_COLUMNS + [metrics.CLASS_COLUMN] + metrics.METRIC_COLUMNS + metrics.COUNT_COLUMNS
    table = metrics.with_integer_counts(pd.DataFrame(rows, columns=columns))
    return Evaluation(pd.concat(tables, ignore_index=True), table, fold_probs.skipped, calibration_table(ensemble, base, fold_probs.probs))


def _member_temperatures(ensemble: Ensemble) -> dict:
    """{fold: its own temperature, ENSEMBLE: the ensemble's}; a fold without one (older exports) takes the ensemble's."""
    fitted = ensemble.temperatures() or {}
    folds = fitted.get("folds") or {}
    found = {m.fold: float(folds.get(str(m.fold), fitted["temperature"])) for m in ensemble.members}
    return {**found, ENSEMBLE: float(fitted["temperature"])}


def calibration_table(ensemble: Ensemble, images: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """ECE, Brier score and NLL of each fold model and of the ensemble's mean probability, before and after scaling."""
    labels = images[LABEL].map({c: i for i, c in enumerate(ensemble.classes)}).to_numpy()
    known = ~pd.isna(labels)
    labels = labels[known].astype(int)
    scored = [(m.fold, probs[i][known]) for i, m in enumerate(ensemble.members)] + [(ENSEMBLE, probs.mean(axis=0)[known])]
    temperatures = _member_temperatures(ensemble) if ensemble.temperatures() is not None else {}
    rows = []
    for fold, p in scored:
        for mode, t in (("none", None), ("temperature", temperatures.get(fold))):
            if mode == "none" or t is not None:
                ident = {layout.MODEL_KIND: ensemble.kind, layout.FOLD_COLUMN: fold, layout.ROUND: ensemble.round,
                         layout.CALIBRATION_COLUMN: mode, layout.TEMPERATURE: 1.0 if t is None else t}
                rows.append({**ident, **calib.calibration_summary(p if t is None else calib.scaled(p, t), labels)})
    return pd.DataFrame(rows)


def _identified(ensemble: Ensemble, fold: int | str, voting: str, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` preceded by the columns that identify its model, as in the metrics table."""
    ids = pd.DataFrame({layout.MODEL_KIND: ensemble.kind, layout.FOLD_COLUMN: fold, layout.ROUND: ensemble.round,
                        layout.VOTING: voting}, index=table.index, columns=EVAL_ID_COLUMNS).astype({layout.FOLD_COLUMN: object})
    return pd.concat([ids, table], axis=1)


def _metrics_rows(table: pd.DataFrame, ensemble: Ensemble) -> list[dict]:
    """One row per class column value: the positive class, or macro, weighted and each class."""
    positive = results.evaluation_positive(ensemble.config, ensemble.classes)
    ident = table.iloc[0][EVAL_ID_COLUMNS].to_dict()
    return [{**ident, **values} for values in metrics.metric_rows_from_predictions(table, ensemble.classes, positive)]


def rows_of(predictions: pd.DataFrame, fold, voting: str) -> pd.DataFrame:
    """The rows of an evaluation predictions table that one metrics row was computed from."""
    chosen = predictions[(predictions[layout.FOLD_COLUMN].astype(str) == str(fold)) & (predictions[layout.VOTING].fillna("") == voting)]
    return chosen.reset_index(drop=True)


# --- output files -----------------------------------------------------------------------


def checked_models(models: str) -> str:
    """The kind ('student' or 'teacher') of ``--models students|teachers`` (the singular is an alias)."""
    kind = layout.model_set_kind(models)
    if kind is None:
        raise ConfigError(f"--models must be students or teachers; got {models!r}.")
    return kind


def check_options(models: str, tta: str | None, batch_size: int | None, rules: list[str], device: str) -> None:
    """The options of predict / evaluate, checked before any file is read."""
    checked_models(models)
    if tta is not None:
        checked_tta(tta)
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(f"--batch-size must be a whole number between 1 and {MAX_BATCH_SIZE}; got {batch_size}.")
    for rule in rules:
        checked_rule(rule)
    resolve_device(device)


def check_outside_run(out: Path, run: Path) -> None:
    """Refuse an output path inside the run folder: ensemble commands never write there."""
    if Path(out).resolve().is_relative_to(Path(run).resolve()):
        raise RunFolderError(f"The output {out} lies inside the run folder {run}, which ensemble commands only read; "
                             "choose an --out outside it.")


def check_outputs(out: Path, run: Path, inputs: list[Path], companion: Path) -> None:
    """Before any work: ``out`` and its ``companion`` file must be regular files, no input, outside RUN and DATA."""
    check_outside_run(out, run)
    folders = [Path(run), *(p for p in inputs if Path(p).is_dir())]
    files = [p for p in inputs if not Path(p).is_dir()]
    for path in (Path(out), companion):
        check_output_file(path, files, folders)


def check_not_an_image(out: Path, images: pd.DataFrame) -> None:
    """``out`` must not be one of the images to predict (e.g. listed in a CSV manifest)."""
    resolved = str(Path(out).resolve())
    if any(str(Path(p).resolve()) == resolved for p in images[PATH]):
        raise OutputError(f"The output {out} is one of the images to predict; choose another --out.")


def patients_path(out: Path) -> Path:
    return Path(out).with_name(f"{Path(out).stem}_patients.csv")


def predictions_path(metrics_out: Path) -> Path:
    return Path(metrics_out).with_name(f"{Path(metrics_out).stem}_predictions.csv")


def write_prediction(prediction: Prediction, out: Path) -> list[Path]:
    """Write the per-image CSV and, when patients are known, ``<stem>_patients.csv``; return the paths."""
    atomic.write_csv(Path(out), prediction.table, for_people=True)
    written = [Path(out)]
    if not prediction.patients.empty:
        atomic.write_csv(patients_path(out), prediction.patients, for_people=True)
        written.append(patients_path(out))
    return written


def calibration_path(metrics_out: Path) -> Path:
    return Path(metrics_out).with_name(f"{Path(metrics_out).stem}_calibration.csv")


def write_evaluation(evaluation: Evaluation, out: Path) -> list[Path]:
    """Write the metrics CSV, ``<stem>_predictions.csv`` and ``<stem>_calibration.csv`` beside it; return the paths."""
    atomic.write_csv(predictions_path(out), evaluation.predictions, for_people=True)
    atomic.write_csv(calibration_path(out), evaluation.calibration, for_people=True)
    atomic.write_csv(Path(out), evaluation.metrics, for_people=True)
    return [Path(out), predictions_path(out), calibration_path(out)]


# --- the shareable model folder ----------------------------------------------------------


def export_folder(ensemble: Ensemble, out: Path, tta: str | None = None, rule: str | None = None,
                  calibration: str | None = None) -> Path:
    """Write the ensemble as a model folder: safetensors weights, config.json and a README.md model card.

    ``load_ensemble(out)`` and ``noisystudent ensemble predict OUT ...`` read
    it back (json and safetensors only: nothing is unpickled) and predict as
    the run folder does (within 1e-5).

    Args:
        ensemble: From :func:`load_ensemble` of a run folder.
        out: A new or empty folder outside the run folder.
        tta: Test-time augmentation the folder predicts with by default (default: the run's).
        rule: Voting rule ``"majority"`` or ``"soft"`` (default: the run's).
        calibration: ``"none"`` or ``"temperature"``: the folder's default
            ``--calibration`` (default ``None``: none). The temperatures are
            stored whenever the run has them.

    Returns:
        Path: ``out``.

    Raises:
        OutputError: ``out`` is a file, a non-empty folder, or inside the run folder.
        ConfigError: An invalid option, an ensemble loaded from a model folder,
            or a temperature asked for where the run has none.

    Example:
        >>> import noisystudent as ns
        >>> ns.export_folder(ns.load_ensemble("runs/demo"), "shared/demo-model", calibration="temperature")  # doctest: +SKIP
        >>> ns.load_ensemble("shared/demo-model").calibration  # doctest: +SKIP
        'temperature'
    """
    if ensemble.is_folder:
        raise ConfigError(f"{ensemble.run} is already a model folder; copy it instead of exporting it again.")
    model_folder.check_destination(Path(out), ensemble.run)
    document = folder_document(ensemble, checked_tta(tta or ensemble.config.tta), checked_rule(rule or ensemble.config.voting),
                               checked_calibration(calibration, ensemble))
    card = model_card.model_card(ensemble.run, document, saved_config(ensemble.run) or {})
    return model_folder.write_folder(Path(out), document, [(m.fold, m.model) for m in ensemble.members], card)


def folder_document(ensemble: Ensemble, tta: str, rule: str, mode: str) -> dict:
    """A model folder's config.json, less its members' files (model_folder.write_folder adds them)."""
    fitted = ensemble.temperatures()
    mean, std = ensemble.members[0].normalization
    settings = {**ensemble.config.to_dict(), "voting": rule, "tta": tta}
    return {
        "format": model_folder.FORMAT, "format_version": model_folder.FORMAT_VERSION,
        "models": f"{ensemble.kind}s", "kind": ensemble.kind, "round": ensemble.round, "folds": [m.fold for m in ensemble.members],
        "architecture": ensemble.export_record().architecture, "classes": list(ensemble.classes), "positive": ensemble.positive,
        "input_size": ensemble.spec.image_size, "preprocess": asdict(ensemble.spec),
        "input": "RGB uint8 preprocessed as `preprocess`, then (x / 255 - mean) / std per channel",
        "normalization": {"mean": list(mean), "std": list(std)},
        "voting": rule, "tta": tta, "calibration": mode,
        "temperature": fitted["temperature"] if fitted else None,
        "fold_temperatures": fitted["folds"] if fitted else None,
        "temperature_fitted_on": calibration.FITTED_ON if fitted else None,
        "settings": settings, "noisystudent_version": __version__, "exported_from": Path(ensemble.run).resolve().name,
    }
