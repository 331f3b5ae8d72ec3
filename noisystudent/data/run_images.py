"""Gathering every image a run uses into one manifest: training data, outer test set, unlabelled pool."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from noisystudent import layout
from noisystudent.config.run_config import RunConfig
from noisystudent.data import demo, readers
from noisystudent.data import manifest as schema  # column names and checks of the manifest
from noisystudent.data.label_names import apply_label_map, check_distinct_labels
from noisystudent.data.labels import apply_binary_mapping, parse_binary_mapping, positive_index_of
from noisystudent.errors import ConfigError, DataError

logger = logging.getLogger(__name__)
DEFAULT_POSITIVE = RunConfig.__dataclass_fields__["positive"].default  # 'all': C-NMC's blasts

@dataclass
class RunImages:
    manifest: pd.DataFrame
    classes: list[str]
    data_format: str
    skipped: list[str] = field(default_factory=list)


def load_run_images(config: RunConfig, run: Path) -> RunImages:
    """Read DATA (or generate the demo data), add --test and --unlabelled, apply --binary."""
    root = Path(config.data) if config.data else demo.generate_demo(Path(run) / layout.DEMO_DATA)
    manifest, data_format = readers.read_dataset(root, config.data_format, config.patient_regex, config.skip_unreadable)
    skipped = list(manifest.attrs.get("skipped", []))
    parts = [_without_pool(manifest) if not config.pool else manifest]
    if config.test:
        # not read_dataset: a test set may hold a single class (checked below against the training classes)
        test, _ = readers.read_manifest(Path(config.test), "auto", config.patient_regex)
        test = readers.drop_unreadable(test, config.skip_unreadable)
        skipped += list(test.attrs.get("skipped", []))
        parts.append(test[test[schema.SUBSET] != schema.SUBSET_UNLABELLED].assign(**{schema.SUBSET: schema.SUBSET_TEST}))
    if config.unlabelled:
        parts.append(_unlabelled_with_patients(readers.read_unlabelled(Path(config.unlabelled)), config.patient_regex))
    combined = apply_label_map(schema.make_manifest(pd.concat(parts, ignore_index=True)), config.label_map)
    check_distinct_labels(combined)
    if config.binary:
        mapping = parse_binary_mapping(config.binary, schema.class_names(combined))
        combined[schema.LABEL] = [apply_binary_mapping([lab], mapping)[0] if lab else "" for lab in combined[schema.LABEL]]
    schema.check_manifest(combined)
    classes = schema.class_names(combined[combined[schema.SUBSET] == schema.SUBSET_TRAIN])
    _check_labels(combined, classes)
    check_positive(config, classes)
    logger.info("data: %d images (%s format), classes %s", len(combined), data_format, ", ".join(classes))
    return RunImages(combined, classes, data_format, skipped)


def check_positive(config: RunConfig, classes: list[str]) -> None:
    """Fail now, not after the first epoch, on a positive class the data does not have.

    Two classes need one (the default 'all' fits C-NMC). With more classes it is
    optional: the default that names no class means no positive class (macro
    averages, no patient calls); a class named by the user must exist.
    """
    if len(classes) == 2:
        positive_index_of(classes, "positive" if config.binary else config.positive)
    elif config.positive not in classes and config.positive != DEFAULT_POSITIVE:
        raise ConfigError(f"--positive {config.positive!r} is not one of the classes {', '.join(classes)}; "
                          "name one of them, or leave --positive out for macro averages only.")
def _without_pool(manifest: pd.DataFrame) -> pd.DataFrame:
    """DATA without its own unlabelled images (C-NMC's final-phase test set): --no-pool, as the C-NMC study."""
    pool = manifest[schema.SUBSET] == schema.SUBSET_UNLABELLED
    if pool.any():
        logger.info("--no-pool: the %d unlabelled images that come with the data are not used.", int(pool.sum()))
    return manifest[~pool]


def _unlabelled_with_patients(pool: pd.DataFrame, patient_regex: str | None) -> pd.DataFrame:
    """--unlabelled images with patient ids from --patient-regex where a file name has one,
    so the leakage check can see a pool patient who is also a validation or test patient."""
    pattern = readers.compile_patient_regex(patient_regex)
    if pattern is None:
        return pool
    found = [pattern.search(Path(path).name) for path in pool[schema.PATH]]
    ids = [schema.normalise_patient(m.group(1)) if m and m.group(1) else "" for m in found]
    pool = pool.copy()
    pool[schema.PATIENT] = [given or found_id for given, found_id in zip(pool[schema.PATIENT], ids)]
    return pool


def _check_labels(manifest: pd.DataFrame, classes: list[str]) -> None:
    """Every labelled image (test set included) must carry one of the training classes."""
    unknown = manifest[(manifest[schema.LABEL] != "") & ~manifest[schema.LABEL].isin(classes)]
    if not unknown.empty:
        row = unknown.iloc[0]
        raise DataError(
            f"The {row[schema.SUBSET]} image {row[schema.PATH]} has the label {row[schema.LABEL]!r}, which no training image has "
            f"(training classes: {', '.join(classes)})."
        )
