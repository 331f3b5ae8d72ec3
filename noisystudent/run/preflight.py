"""Checks of a kfold run's settings against the file system and the machine, before anything is written.

``RunConfig.__post_init__`` checks each value on its own (types, finite
numbers, ranges, choices). What needs the disk or torch is checked here:
the data paths exist, a ``--weights`` file exists and holds only tensors, the
cache folder is a folder, the device exists, and the run folder (with its
``.lock``, ``run.log`` and ``results``) can be used and does not lie inside
the data. ``run_kfold`` calls :func:`check_before_writing` before it creates
the run folder, so a refused command leaves no trace.
"""

from __future__ import annotations

import os
from pathlib import Path

from noisystudent import layout
from noisystudent.config.choices import ONE_STAGE_METHODS
from noisystudent.config.run_config import RunConfig
from noisystudent.data.parallel import address_space_left, address_space_used
from noisystudent.errors import ConfigError, DataError, RunFolderError
from noisystudent.safe_paths import check_output_folder, file_kind, refuse_links_below

# Entries of a run folder and the kind each must be.
RUN_FILES = (layout.CONFIG, layout.LOG, ".lock", layout.FOLDS, layout.POOL, layout.DIGESTS)
RUN_FOLDERS = (layout.RESULTS, layout.CACHE, layout.REPORT, layout.TENSORBOARD)
# Address space a tiny CPU run maps beyond torch's own (measured: 1.0 GB at 32 px, workers 1),
# with room for a real one; below it a run would fail in an allocation or a thread start.
MIN_ADDRESS_SPACE = 3 * 2**29  # 1.5 GiB


def check_before_writing(config: RunConfig, run: Path) -> None:
    """Every check that does not need the data read; raises a UserError naming the problem."""
    inputs = _check_inputs(config)
    check_output_folder(run, inputs)
    check_run_entries(run)
    if config.cache_dir:
        check_output_folder(Path(config.cache_dir), inputs, flag="--cache-dir")
    if config.concurrent > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--concurrent starts processes of its own and cannot run under torchrun; use one or the other.")
    _check_weights(config)
    from noisystudent.device import resolve_device  # imports torch

    resolve_device(config.device)
    check_address_space()


def check_address_space() -> None:
    """Refuse an address-space limit (``ulimit -v``) that leaves less than MIN_ADDRESS_SPACE beyond what is mapped.

    Called once torch is imported (it maps about 3.3 GB by itself): a smaller
    limit would fail later in an allocation or a thread start, after the run
    folder exists. Where the limit is unknown (no /proc) nothing is checked.
    """
    left = address_space_left()
    if left is not None and left < MIN_ADDRESS_SPACE:
        used = address_space_used()
        raise ConfigError(
            f"The address-space limit (ulimit -v) of {(used + left) / 2**30:.1f} GiB leaves {max(left, 0) / 2**30:.1f} GiB beyond the "
            f"{used / 2**30:.1f} GiB that torch and the libraries map already; a run needs at least {MIN_ADDRESS_SPACE / 2**30:.1f} GiB more: "
            f"raise it (ulimit -v unlimited, or ulimit -v {int((used + MIN_ADDRESS_SPACE) / 1024) + 1})."
        )


def method_warnings(config: RunConfig) -> list[str]:
    """Settings that run but depart from Noisy Student as Xie et al. describe it, one sentence each (logged at the start)."""
    from noisystudent.models.architectures import PARAMETERS_M  # imports torch

    warnings = []
    teacher, student = config.arch, config.student_architecture
    if config.method in ONE_STAGE_METHODS:
        return _one_stage_warnings(config)
    if config.rounds > 0 and PARAMETERS_M[student] < PARAMETERS_M[teacher]:
        warnings.append(f"The students ({student}, {PARAMETERS_M[student]:g}M parameters) are smaller than the teacher ({teacher}, "
                        f"{PARAMETERS_M[teacher]:g}M); Noisy Student's students are equal or larger, so they may not learn more than it.")
    if config.randaugment and config.teacher_augment == "strong":
        warnings.append("--randaugment noises the students only; the teacher trains with --teacher-augment strong without it.")
    return warnings


def _one_stage_warnings(config: RunConfig) -> list[str]:
    """Noisy Student's pseudo-label and noise settings that a FixMatch or Meta Pseudo Labels run does not use."""
    unused = [flag for flag, value in (("--pseudo-threshold", config.pseudo_threshold), ("--pseudo-per-class", config.pseudo_per_class),
                                       ("--pseudo-balance", config.pseudo_balance), ("--randaugment", config.randaugment)) if value]
    if not unused or config.rounds == 0 or config.student_data == "labelled":
        return []
    return [f"--method {config.method} makes its own pseudo-labels and views every step: {', '.join(unused)} do not apply "
            "(its strong view always has RandAugment, at --randaugment-ops and --randaugment-magnitude)."]


def check_run_entries(run: Path) -> None:
    """The files and folders a session opens in RUN must be of the right kind, and none a symbolic link."""
    run = Path(run)
    if run.is_dir():
        for path in [run / name for name in (*RUN_FILES, *RUN_FOLDERS)] + sorted(run.glob("fold-*")) + sorted(run.glob("fold-*/*")):
            refuse_links_below(path, run)  # run.log and .lock are not written atomically: checked here
    for name in RUN_FILES:
        kind = file_kind(Path(run) / name)
        if kind is not None:
            raise RunFolderError(f"{Path(run) / name} is {kind}, not a file; the folder {run} is not a usable run folder.")
    for name in RUN_FOLDERS:
        path = Path(run) / name
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path} is a file, not a folder; the folder {run} is not a usable run folder.")


def _check_inputs(config: RunConfig) -> list[Path]:
    """DATA, --test and --pool-images must exist; returns them."""
    inputs = []
    for flag, value in (("data path", config.data), ("--test path", config.test), ("--pool-images path", config.pool_images)):
        if value is None:
            continue
        path = Path(value)
        if not path.exists():
            raise DataError(f"The {flag} {path} does not exist.")
        kind = file_kind(path)
        if kind not in (None, "a folder"):  # reading a FIFO would wait forever
            raise DataError(f"The {flag} {path} is {kind}, not a file or folder.")
        inputs.append(path)
    return inputs


def _check_weights(config: RunConfig) -> None:
    """A --weights file must exist and hold weights loadable without running code (read once, now);
    ImageNet weights (for the teacher, or students with --student-init imagenet) must be cached or downloadable now,
    before any data work."""
    _check_imagenet(config)
    if config.weights in ("imagenet", "none"):
        return
    path = Path(config.weights)
    if not path.exists():
        raise ConfigError(f"The weights file {path} does not exist; pass --weights imagenet, none or an existing file.")
    from noisystudent.models.weights import extract_state_dict, read_torch_file  # imports torch

    extract_state_dict(read_torch_file(path), path)


def _check_imagenet(config: RunConfig) -> None:
    students = config.rounds > 0 and (config.student_init or config.weights) == "imagenet"
    archs = ([config.arch] if config.weights == "imagenet" else []) + ([config.student_architecture] if students else [])
    if archs:
        from noisystudent.models.pretrained import ensure_imagenet  # imports torch

        for arch in dict.fromkeys(archs):
            ensure_imagenet(arch)
