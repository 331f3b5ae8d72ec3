"""Run configuration: one flat dataclass whose field docs are the help text.

Its defaults are the C-NMC student study's protocol (the ``cnmc-study`` preset).

Every setting of ``noisystudent kfold`` lives here. ``config.json`` in the run
folder is ``asdict(config)`` plus the package version and data fingerprint.
Fields marked ``affects_results=False`` may change between a run and its
resume (where the output goes, how many workers decode images, ...); any
other difference makes ``--resume`` refuse.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from noisystudent.config.choices import (
    AMP,
    ARCHITECTURES,
    AUGMENTS,
    CLASS_WEIGHTS,
    COMPILE_MODES,
    EQUALIZE,
    FREEZE,
    METHODS,
    ONE_STAGE_METHODS,
    OPTIMIZERS,
    POOL_LABELS,
    PRIMARY_METRICS,
    PSEUDO_MODES,
    SAMPLERS,
    SCHEDULERS,
    SELECT,
    SELECT_METRICS,
    STUDENT_DATA,
    STUDENT_INIT,
    TTA,
    VOTING,
)
from noisystudent.config.parsing import parse_label_map, parse_progressive_resize
from noisystudent.errors import ConfigError

DEFAULT_POSITIVE = "all"  # ALL (leukaemic blast) is the positive class of C-NMC
BINARY_POSITIVE = "positive"  # --binary names the classes 'negative' and 'positive', whatever --positive says

def _opt(default: Any, help: str, affects_results: bool = True, **kwargs: Any) -> Any:
    metadata = {"help": help, "affects_results": affects_results}
    if callable(default) and not isinstance(default, (int, float, str, bool)):
        return field(default_factory=default, metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)




MAX_IMAGE_SIZE = 1024  # the cache holds N x 3 x S x S bytes: 3 MB per image at 1024 px
MAX_SEED = 2**32 - 1  # numpy and scikit-learn take seeds below 2**32
MAX_CONCURRENT = 64  # --concurrent: more processes than folds are never started; 64 bounds the claims' churn
MAX_ROUNDS = 20  # every round keeps a model per fold (65 MB for EfficientNet-B0); Noisy Student's gains flatten after 3


@dataclass(frozen=True)
class Bounds:
    """Allowed values of a numeric setting: low <= x <= high, or < where open; always finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high}")
        return " and ".join(parts)


# Upper bounds where a larger value is a typo that would otherwise fail only after the run
# folder exists: 1e12 epochs allocate a schedule (MemoryError), 1e308 overflows the update,
# 1e17 pseudo-labels per class allocate that many copies. Each is far beyond any real use.
MAX_EPOCHS, MAX_LR, MAX_WEIGHT_DECAY, MAX_PSEUDO_PER_CLASS = 100_000, 10.0, 1.0, 10_000_000
# Every numeric setting and its range, checked before anything is written.
POSITIVE, NON_NEGATIVE, AT_LEAST_ONE, FRACTION = Bounds(0, None, low_open=True), Bounds(0), Bounds(1), Bounds(0, 1, high_open=True)
RANGES: dict[str, Bounds] = {
    "test_fraction": Bounds(0, 0.9), "folds": Bounds(2), "seed": Bounds(0, MAX_SEED), "rounds": Bounds(0, MAX_ROUNDS),
    "pseudo_temperature": POSITIVE, "pseudo_threshold": Bounds(0, 1), "pseudo_per_class": Bounds(0, MAX_PSEUDO_PER_CLASS),
    "randaugment_ops": Bounds(1, 16), "randaugment_magnitude": Bounds(0, 30), "teacher_dropout": FRACTION, "student_dropout": FRACTION, "teacher_drop_connect": FRACTION, "student_drop_connect": FRACTION,
    "epochs": Bounds(1, MAX_EPOCHS), "batch_size": AT_LEAST_ONE, "lr": Bounds(0, MAX_LR, low_open=True), "momentum": FRACTION, "weight_decay": Bounds(0, MAX_WEIGHT_DECAY),
    "step_size": AT_LEAST_ONE, "gamma": Bounds(0, 1, low_open=True), "label_smoothing": FRACTION,
    "early_stopping": NON_NEGATIVE, "head_warmup_epochs": NON_NEGATIVE, "bn_momentum": Bounds(0, 1),
    "precise_bn_batches": NON_NEGATIVE, "hidden_units": Bounds(0, 65536), "image_size": Bounds(8, MAX_IMAGE_SIZE),
    "crop_threshold": Bounds(0, 255), "center_crop": Bounds(0.1, 1), "eval_batch_size": AT_LEAST_ONE,
    "workers": NON_NEGATIVE, "log_every": AT_LEAST_ONE, "concurrent": Bounds(1, MAX_CONCURRENT),
    "fixmatch_threshold": Bounds(0, 1), "fixmatch_mu": AT_LEAST_ONE, "fixmatch_lambda_u": NON_NEGATIVE,
    "mpl_uda_threshold": Bounds(0, 1), "mpl_uda_temperature": POSITIVE, "mpl_lambda_u": NON_NEGATIVE, "mpl_uda_steps": AT_LEAST_ONE,
    "mpl_mu": AT_LEAST_ONE, "mpl_student_wait_steps": NON_NEGATIVE, "mpl_baseline_decay": FRACTION,
    "mpl_finetune_epochs": Bounds(0, MAX_EPOCHS),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "teacher_augment": AUGMENTS, "student_augment": AUGMENTS,
    "pseudo_mode": PSEUDO_MODES, "student_data": STUDENT_DATA, "sampler": SAMPLERS,
    "equalize": EQUALIZE, "tta": TTA, "freeze": FREEZE, "voting": VOTING, "amp": AMP, "select_metric": SELECT_METRICS, "select": SELECT,
    "primary_metric": PRIMARY_METRICS, "compile_mode": COMPILE_MODES, "method": METHODS, "pool_labels": POOL_LABELS,
}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")


@dataclass
class RunConfig:
    """Every setting of a k-fold Noisy Student run, checked on creation.

    One flat dataclass: each field is a setting of ``noisystudent kfold`` (the
    flag is the field name with ``-`` for ``_``), and each field's
    ``metadata["help"]`` is its help text, shown by ``--help`` and listed with
    its default in docs/api.md. The defaults are the C-NMC student study's
    protocol (the ``cnmc-study`` preset). Build one with :func:`make_config`
    (preset + settings) rather than directly; ``config.json`` in a run folder is
    ``to_dict()`` plus provenance.

    Args:
        <field>: One keyword per field, all optional, grouped as data,
            folds, method, noise, optimisation, images and execution. Each
            field's meaning and default are its help text
            (``dataclasses.fields(RunConfig)``; the table in docs/api.md).
            Fields marked ``affects_results=False`` (device, workers,
            cache_dir, ...) may change on resume; any other change makes
            ``--resume`` refuse.

    Raises:
        ConfigError: A value has the wrong type (an int for a float is
            accepted), lies out of range, is not one of a setting's choices,
            or settings contradict each other (e.g. ``student_init="teacher"``
            with another ``student_arch``).

    Example:
        >>> import noisystudent as ns
        >>> config = ns.RunConfig(folds=3, epochs=10, lr=1)
        >>> config.folds, config.epochs, config.lr, config.arch
        (3, 10, 1.0, 'efficientnet-b0')
        >>> config.student_architecture  # no student_arch: the teacher's
        'efficientnet-b0'
        >>> ns.RunConfig.from_dict(config.to_dict()) == config
        True
    """

    # --- data ---
    data: str | None = _opt(None, "Data set folder or CSV; none generates the built-in demo data.")
    data_format: str = _opt("auto", "Layout of DATA: auto, cnmc, folders or csv.")
    patient_regex: str | None = _opt(None, "Regex with one group that extracts the patient id from a file name (folders layout).")
    pool_images: str | None = _opt(None, "Folder or CSV of pool images (no labels needed) to pseudo-label in every fold.")
    test: str | None = _opt(None, "Labelled data set held out as the outer test set.")
    test_fraction: float = _opt(0.2, "Fraction of patients (per class) held out as the outer test set when DATA has none and no --test is given; 0: no test set, every number selection-biased.")
    positive: str = _opt(DEFAULT_POSITIVE, "Positive class of two-class data (sensitivity, PPV, F1 and AUC are about it); optional with more "
                                "classes, where metrics are per class and macro/weighted averages, and it names the class of patient calls.")
    binary: str | None = _opt(None, "Map classes to a binary task, e.g. 'Benign=negative,rest=positive'.")
    label_map: str | None = _opt(None, "Rename labels first, e.g. 'ALL=all,Hem=hem' for class folders that differ only in case.")
    pool: bool = _opt(False, "Pseudo-label the unlabelled images that come with DATA (C-NMC's final-phase test set) in every fold.")
    skip_unreadable: bool = _opt(False, "Skip (and report) unreadable images instead of stopping.")
    # --- folds ---
    folds: int = _opt(5, "Number of patient-disjoint, class-stratified folds.")
    split_ratio: tuple[float, float, float] = _opt((2.0, 2.0, 1.0), "labelled : masked : validation inside each fold.")
    seed: int = _opt(0, "Seed of folds, initialisation, sampling and augmentation.")
    # --- method ---
    method: str = _opt("noisy-student", "Semi-supervised method of the models after the teacher: noisy-student (iterated "
                                         "self-training, --rounds students), fixmatch (one FixMatch model, round 1) or "
                                         "meta-pseudo-labels (one Meta Pseudo Labels student, round 1; docs/methods.md).")
    rounds: int = _opt(3, "Noisy Student rounds after the teacher (round 0); at most 20; --method fixmatch or meta-pseudo-labels: 1 (implied) or 0.")
    arch: str = _opt("efficientnet-b0", "Teacher architecture.")
    student_arch: str | None = _opt(None, "Student architecture (default: same as teacher).")
    weights: str = _opt("imagenet", "Initial weights: imagenet, none, or a file.")
    student_init: str | None = _opt(None, "Students start from random weights (scratch), the ImageNet weights (imagenet) or the previous "
                                          "round's model (teacher); unset: as the teacher, from --weights (imagenet, none or the file).")
    student_data: str = _opt("pseudo", "Student trains on labelled + pseudo-labelled images (both), pseudo-labelled only (pseudo), "
                                                  "or the labelled part only (labelled: the control arm of noisystudent experiment); "
                                                  "with --method fixmatch or meta-pseudo-labels only labelled (the control) changes anything.")
    pseudo_mode: str = _opt("hard", "Pseudo-labels as probabilities (soft) or one-hot (hard).")
    pseudo_temperature: float = _opt(1.0, "Temperature applied to teacher logits for soft pseudo-labels.")
    pseudo_threshold: float = _opt(0.0, "Drop pseudo-labelled images whose top probability is below this.")
    pseudo_balance: bool = _opt(False, "Balance pseudo-labelled classes: duplicate the rarer, cap the commoner.")
    pseudo_per_class: int = _opt(0, "Give each class exactly this many pseudo-labelled images (the most confident; the rarer "
                                    "repeated), as Xie et al. do; bounds the students' epochs for a large pool (0: off).")
    pool_labels: str = _opt("fold", "Pseudo-label the pool with each fold's own model (fold) or with the average of that round's "
                                   "K fold models, computed once for every fold's student (ensemble; the masked parts stay "
                                   "labelled by their own fold's model, and students' validation rows become selection-biased).")
    # --- FixMatch (Sohn et al. 2020; --method fixmatch) ---
    fixmatch_threshold: float = _opt(0.95, "FixMatch: an unlabelled image counts only where the model's top probability on its "
                                           "weak view reaches this (tau; the paper: 0.95).")
    fixmatch_mu: int = _opt(7, "FixMatch: unlabelled images per labelled image in each step (mu; the paper: 7).")
    fixmatch_lambda_u: float = _opt(1.0, "FixMatch: weight of the unlabelled loss (lambda_u; the paper: 1).")
    fixmatch_flex: bool = _opt(False, "FixMatch: class-wise thresholds from each class's learning effect, with FlexMatch's "
                                      "warm-up and convex mapping (Zhang et al. 2021), for imbalanced data.")
    # --- Meta Pseudo Labels (Pham et al. 2021; --method meta-pseudo-labels) ---
    mpl_uda_threshold: float = _opt(0.95, "Meta Pseudo Labels: the teacher's UDA loss counts an unlabelled image only where its "
                                          "sharpened weak-view probability reaches this (the reference: 0.95).")
    mpl_uda_temperature: float = _opt(0.7, "Meta Pseudo Labels: temperature of the teacher's UDA targets (the reference: 0.7).")
    mpl_lambda_u: float = _opt(1.0, "Meta Pseudo Labels: weight of the teacher's UDA loss once ramped up (the reference: 1; "
                                    "8 on CIFAR-10).")
    mpl_uda_steps: int = _opt(500, "Meta Pseudo Labels: steps over which the UDA weight ramps linearly up to --mpl-lambda-u "
                                   "(the reference: 5000 of 300,000 steps on CIFAR-10).")
    mpl_mu: int = _opt(7, "Meta Pseudo Labels: unlabelled images per labelled image in each step (mu; the reference: 7).")
    mpl_student_wait_steps: int = _opt(50, "Meta Pseudo Labels: steps before the student's feedback reaches the teacher "
                                           "(the reference: 3000 of 300,000 on CIFAR-10).")
    mpl_baseline_decay: float = _opt(0.99, "Meta Pseudo Labels: decay of the moving-average baseline subtracted from the "
                                           "student's feedback (the reference: 0.99).")
    mpl_teacher_lr: float | None = _opt(None, "Meta Pseudo Labels: the teacher's learning rate, following --lr's schedule "
                                              "(default: --lr; the reference: the student's, 0.05 on CIFAR-10).")
    mpl_finetune_epochs: int = _opt(1, "Meta Pseudo Labels: epochs fine-tuning the student on the labelled part alone after "
                                       "the --epochs trained with its teacher, as the paper does (kekmodel/MPL-pytorch: 625 "
                                       "epochs at lr 3e-5 on CIFAR-10); 0: none.")
    # --- noise ---
    teacher_augment: str = _opt("light", "Augmentation when training the teacher: none, light or strong.")
    student_augment: str = _opt("strong", "Augmentation (input noise) when training students.")
    randaugment: bool = _opt(False, "Add RandAugment (16 operations, geometric ones included, as Xie et al.) to the students' "
                                    "augmentation at any level; never to the teacher.")
    randaugment_ops: int = _opt(2, "RandAugment operations per image (N).")
    randaugment_magnitude: float = _opt(6.0, "RandAugment magnitude M on Xie et al.'s scale (10 = level 1, e.g. rotation 30 degrees; "
                                            "they used 6 for EfficientNet-B2 up to 27 for B7).")
    teacher_dropout: float = _opt(0.2, "Dropout before the classifier of the teacher.")
    student_dropout: float = _opt(0.5, "Dropout before the classifier of students (model noise).")
    teacher_drop_connect: float = _opt(0.2, "Stochastic depth rate of the teacher.")
    student_drop_connect: float = _opt(0.2, "Stochastic depth rate of students (model noise).")
    # --- optimisation ---
    epochs: int = _opt(50, "Epochs per model.")
    batch_size: int = _opt(15, "Training batch size.")
    lr: float = _opt(1e-3, "Learning rate.")
    momentum: float = _opt(0.9, "SGD momentum.")
    weight_decay: float = _opt(0.0, "Weight decay.")
    optimizer: str = _opt("sgd", "sgd, adam or adamw.")
    scheduler: str = _opt("step", "step, cosine, plateau or none.")
    step_size: int = _opt(7, "Epochs between learning-rate decays (step schedule).")
    gamma: float = _opt(0.1, "Learning-rate decay factor (step and plateau schedules).")
    label_smoothing: float = _opt(0.0, "Label smoothing of the cross-entropy.")
    class_weights: str = _opt("none", "Loss weights: none, balanced (inverse frequency), or comma-separated numbers.")
    sampler: str = _opt("none", "Class balancing of batches: none, oversample (minority) or undersample (majority).")
    early_stopping: int = _opt(0, "Stop after this many epochs without improvement of the selection metric (0: never).")
    select_metric: str | None = _opt(None, "Validation metric that picks the best epoch (and drives early stopping and the "
                                           "plateau schedule); default: the primary metric.")
    select: str = _opt("best", "Keep each model's best epoch on its validation part (best; validation numbers then selection-biased) or its last epoch (last).")
    freeze: str = _opt("none", "none (fine-tune all) or backbone (train only the head).")
    head_warmup_epochs: int = _opt(0, "Epochs training only the head before fine-tuning all.")
    bn_momentum: float = _opt(0.1, "BatchNorm running-statistics momentum (efficientnet-pytorch's own 0.01 needs thousands of steps).")
    precise_bn_batches: int = _opt(0, "After each epoch, recompute BatchNorm statistics on this many clean training batches (0: off).")
    hidden_units: int = _opt(0, "Add a hidden layer of this width to the classifier head (0: none).")
    progressive_resize: str | None = _opt(None, "Stages 'size:epochs,size:epochs'; overrides --image-size per epoch.")
    # --- images ---
    image_size: int = _opt(224, "Working resolution in pixels (square).")
    crop_black: bool = _opt(False, "Crop all-black border rows and columns before resizing.")
    crop_threshold: int = _opt(10, "Grey level below which a border pixel counts as black.")
    equalize: str = _opt("none", "Histogram equalisation: none, grey, channels or luminance.")
    center_crop: float = _opt(1.0, "Keep this central fraction of each side before resizing.")
    tta: str = _opt("none", "Test-time augmentation for evaluation: none, flips, dihedral, five_crop, ten_crop.")
    voting: str = _opt("majority", "Ensemble rule: majority or soft; its ensembles make the primary comparison.")
    primary_metric: str = _opt("balanced_accuracy", "Metric of the one primary comparison (final students vs teachers, "
                                                    "--voting ensembles, outer test set); every other comparison is secondary.")
    # --- execution (do not change results) ---
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N.", affects_results=False)
    amp: str = _opt("auto", "Mixed precision: auto (bf16 on GPUs with native bf16, else fp16), bf16, fp16 or off.")
    channels_last: bool = _opt(True, "Use channels_last memory format on GPU.", affects_results=False)
    compile: bool = _opt(False, "torch.compile the training model.", affects_results=False)
    compile_mode: str = _opt("default", "torch.compile mode with --compile: default, or reduce-overhead (CUDA graphs: each full "
                                        "batch's step replayed with one launch; on a CPU it falls back to default and says so).",
                             affects_results=False)
    eval_batch_size: int = _opt(256, "Batch size for evaluation and pseudo-labelling.", affects_results=False)
    workers: int = _opt(0, "Processes decoding images into the cache (0: all cores).", affects_results=False)
    concurrent: int = _opt(1, "Fold models trained at once on this machine, each in its own process on the same device "
                              "(a GPU that small batches leave mostly idle; docs/throughput.md); in an experiment, N above the folds also "
                              "trains several runs at once; 1: one at a time.", affects_results=False)
    cache_dir: str | None = _opt(None, "Folder of the decoded-image cache (default: RUN/cache).", affects_results=False)
    tensorboard: bool = _opt(True, "Write TensorBoard event files under RUN/tensorboard (losses, validation metrics, learning "
                                    "rate, images/s, pseudo-label accuracy) when the tensorboard package is installed.",
                             affects_results=False)
    log_every: int = _opt(20, "Steps between synchronising loss values for progress display.", affects_results=False)
    preset: str = _opt("cnmc-study", "Name of the preset these settings came from.", affects_results=False)

    def __post_init__(self) -> None:
        # Types first: a hand-edited config.json may hold "fast" for lr or 3.5 for epochs.
        for config_field in fields(self):
            setattr(self, config_field.name, _checked_type(config_field.name, getattr(self, config_field.name), str(config_field.type)))
        _check_arch("arch", self.arch)
        if self.student_arch is not None:
            _check_arch("student_arch", self.student_arch)
        for name, choices in CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        if self.student_init == LEGACY_STUDENT_INIT:  # old runs' config.json: the same as unset
            self.student_init = None
        if self.student_init is not None:
            _check_choice("student_init", self.student_init, STUDENT_INIT)
        if self.student_init == "teacher" and self.student_arch not in (None, self.arch):
            raise ConfigError("student_init teacher needs students of the teacher's architecture; drop --student-arch or use --student-init imagenet.")
        for name, bounds in RANGES.items():
            _check_range(name, getattr(self, name), bounds)
        if self.scheduler == "plateau" and self.gamma >= 1:
            raise ConfigError(f"gamma must be < 1 with the plateau schedule; got {self.gamma}.")
        _check_device(self.device)
        if self.mpl_teacher_lr is not None:
            _check_range("mpl_teacher_lr", self.mpl_teacher_lr, Bounds(0, MAX_LR, low_open=True))
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"compile_mode {self.compile_mode} takes effect only with --compile; add --compile.")
        if self.method in ONE_STAGE_METHODS and self.rounds > 1:
            raise ConfigError(f"--method {self.method} trains one model after the teacher; use --rounds 1 (or 0), got {self.rounds}.")
        if (len(self.split_ratio) != 3 or not all(map(math.isfinite, self.split_ratio)) or min(self.split_ratio) < 0
                or self.split_ratio[0] <= 0 or self.split_ratio[2] <= 0):
            raise ConfigError(f"split_ratio must be three non-negative numbers labelled:masked:validation with labelled and validation > 0, got {self.split_ratio}.")
        _check_class_weights(self.class_weights)
        if self.pool_labels == "ensemble" and self.method in ONE_STAGE_METHODS:
            raise ConfigError(f"--pool-labels ensemble averages the fold models' pseudo-labels of Noisy Student; --method {self.method} makes its own.")
        if self.method in ONE_STAGE_METHODS and self.rounds > 0 and self.student_data != "labelled" and not self.split_ratio[1] \
                and not (self.pool or self.pool_images):
            raise ConfigError(f"--method {self.method} learns from images without labels: give the folds a masked part "
                              "(--split-ratio L:M:V with M > 0) or a pool (--pool, --pool-images).")
        if self.label_map:
            parse_label_map(self.label_map)
        if self.progressive_resize:
            parse_progressive_resize(self.progressive_resize, self.epochs, self.image_size)

    @property
    def student_architecture(self) -> str:
        """The students' architecture: ``student_arch``, or the teacher's ``arch`` when that is None."""
        return self.student_arch or self.arch

    @property
    def selection_metric(self) -> str:
        """The metric that picks each model's epoch: ``select_metric``, or ``primary_metric`` when that is None."""
        return self.select_metric or self.primary_metric

    @property
    def positive_class(self) -> str:
        """The class binary metrics are about: ``positive`` after --binary, else --positive."""
        return positive_class_of(vars(self))

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (``dataclasses.asdict``), as written to config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A RunConfig from field values (e.g. a parsed config.json); ConfigError names the first unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown setting {unknown[0]!r} in the configuration.")
        return cls(**values)


def result_keys() -> list[str]:
    """Names of the settings whose change changes the results."""
    return [f.name for f in fields(RunConfig) if f.metadata.get("affects_results", True)]


def differing_result_keys(saved: dict[str, Any], current: RunConfig) -> list[str]:
    """Result-affecting settings that differ between a saved config and this one.

    A setting the saved config lacks (a run made before the setting existed) counts as its default.
    """
    now, default = (json.loads(json.dumps(c.to_dict())) for c in (current, RunConfig()))  # same JSON normalisation as saved
    return [key for key in result_keys() if _saved_value(saved, key, default) != now.get(key)]


def _saved_value(saved: dict[str, Any], key: str, default: dict[str, Any]) -> Any:
    """A setting of a saved config.json as this version reads it: missing -> its default; student_init 'weights' -> unset."""
    value = saved.get(key, default.get(key))
    return None if key == "student_init" and value == LEGACY_STUDENT_INIT else value


def check_setting_type(name: str, value: Any) -> Any:
    """``value`` if it has setting ``name``'s type (an int for a float becomes a float, a list of numbers a tuple).

    Raises:
        ConfigError: ``value`` has another type; the message names the setting and the type expected.

    Example:
        >>> check_setting_type("lr", 1), check_setting_type("split_ratio", [3, 1, 1])
        (1.0, (3.0, 1.0, 1.0))
    """
    annotation = next(str(f.type) for f in fields(RunConfig) if f.name == name)
    return _checked_type(name, value, annotation)


def help_of(name: str) -> str:
    for f in fields(RunConfig):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(name)


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:  # None: an optional choice left to its default (select_metric)
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


def _check_range(name: str, value: float, bounds: Bounds) -> None:
    if not bounds.holds(value):
        kind = "a whole number" if isinstance(value, int) else "a finite number"
        raise ConfigError(f"{name} must be {kind} {bounds.describe()}; got {_shown(value)}.")


def _shown(value: Any) -> str:
    """The value as the user gave it, a 400-digit number shortened."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _check_device(name: str) -> None:
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"device must be auto, cpu, mps, cuda or cuda:N (N a GPU number); got {name!r}.")


def _checked_type(name: str, value: Any, annotation: str) -> Any:
    """``value`` if it has the field's type (an int for a float field becomes a float); else ConfigError."""
    kind, optional = annotation.split(" |")[0].strip(), annotation.endswith("| None")
    if value is None and optional:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool" and isinstance(value, bool) or kind == "str" and isinstance(value, str):
        return value
    if kind == "int" and number and isinstance(value, int) and abs(value) < 2**63:  # torch and numpy take 64-bit ints
        return value
    if kind == "float" and number:
        try:
            return float(value)
        except OverflowError:
            pass
    if kind.startswith("tuple") and isinstance(value, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        try:
            return tuple(float(x) for x in value)  # JSON gives lists
        except OverflowError:
            pass
    expected = {"bool": "true or false", "int": "a whole number of at most 18 digits", "float": "a number", "str": "text"}.get(kind, "three numbers")
    raise ConfigError(f"{name} must be {expected}{' or empty' if optional else ''}; got {_shown(value)}.")


def _check_arch(name: str, value: str) -> None:
    if value not in ARCHITECTURES:
        raise ConfigError(f"{name} must be one of {', '.join(ARCHITECTURES)}; got {value!r}.")


def _check_class_weights(spec: str) -> None:
    """none, balanced, or non-negative numbers, not all zero (their count is checked against the classes later)."""
    if spec.strip() in CLASS_WEIGHTS:
        return
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ConfigError(f"class_weights must be {', '.join(CLASS_WEIGHTS)} or comma-separated numbers; got {spec!r}.") from None
    if any(not math.isfinite(v) or v < 0 for v in values) or not any(values):
        raise ConfigError(f"class_weights must be non-negative numbers, not all zero; got {spec!r}.")


def positive_class_of(settings: Mapping[str, Any]) -> str:
    """``RunConfig.positive_class`` of settings as config.json saves them (a missing --positive is the default)."""
    return BINARY_POSITIVE if settings.get("binary") else settings.get("positive", DEFAULT_POSITIVE)


# Settings renamed since 0.1 (old name -> new): config.json of older runs is read with the new names,
# and the command line still takes the old flag for one release, with a deprecation warning.
RENAMED_SETTINGS = {"unlabelled": "pool_images"}
# student_init 'weights' (students start from --weights) of runs made before 0.2 is now unset (None): the same start.
LEGACY_STUDENT_INIT = "weights"


def with_current_names(document: dict[str, Any]) -> dict[str, Any]:
    """A config.json document with renamed settings under their new names, in its settings digest too."""
    renamed = {RENAMED_SETTINGS.get(k, k): v for k, v in document.items()}
    if isinstance(renamed.get("settings_digest"), dict):
        renamed["settings_digest"] = {RENAMED_SETTINGS.get(k, k): v for k, v in renamed["settings_digest"].items()}
    return renamed


def load_config_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"The run configuration {path} cannot be read ({error}).") from error
    if not isinstance(document, dict):
        raise ConfigError(f"The run configuration {path} is not a JSON object of settings.")
    return with_current_names(document)


def config_from_saved(path: Path, values: dict[str, Any]) -> RunConfig:
    """A RunConfig from settings read from ``path``; a bad value is named with the file."""
    try:
        return RunConfig.from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"The run configuration {path} holds an unusable setting: {error}") from None
