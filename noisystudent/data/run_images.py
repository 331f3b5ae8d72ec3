"""Gathering every image a run uses: training data and outer test set in a manifest, the unlabelled pool in its file."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from noisystudent import layout
from noisystudent.config.run_config import DEFAULT_POSITIVE, RunConfig
from noisystudent.data import demo, duplicates, pool, readers
from noisystudent.data import manifest as schema  # column names and checks of the manifest
from noisystudent.data.label_names import apply_label_map, check_distinct_labels
from noisystudent.data.labels import apply_binary_mapping, parse_binary_mapping, positive_index_of
from noisystudent.data.cache import fingerprint_files, fingerprint_sorted
from noisystudent.data.pool import PoolFile
from noisystudent.errors import ConfigError, DataError
from noisystudent.progress import NULL_PROGRESS, Progress

logger = logging.getLogger(__name__)

@dataclass
class RunImages:
    """The labelled images (and outer test set) in ``manifest``; the unlabelled pool on disk in ``pool``."""

    manifest: pd.DataFrame
    classes: list[str]
    data_format: str
    skipped: list[str] = field(default_factory=list)
    pool: PoolFile | None = None
    twins: dict[str, str] = field(default_factory=dict)
    """Images with a copy (same pixels) among the labelled ones -> the first path of their copies (data/duplicates.py)."""

    def fingerprint(self) -> str:
        """The fingerprint of every image of the run, labelled and pool, as config.json keeps it.

        The pool's sorted file is merged with the sorted labelled paths, so the
        value equals that of the whole list sorted in memory (runs made before
        pool.csv resume with the fingerprint they saved).
        """
        paths = self.manifest[schema.PATH].tolist()
        if self.pool is None:
            return fingerprint_files(paths)
        return fingerprint_sorted(heapq.merge(sorted(paths), self.pool.paths()))


def load_run_images(config: RunConfig, run: Path, progress: Progress = NULL_PROGRESS, list_pool: bool = False) -> RunImages:
    """Read DATA (or generate the demo data), add --test, apply --binary; with ``list_pool``, list the pool into ``run``.

    The pool (--pool-images, and with --pool DATA's own unlabelled images) is
    listed a chunk at a time (data/pool.py), never held in memory; without
    ``list_pool`` it is not read (torchrun's other ranks open the file rank 0
    wrote). Files of the run's pool.csv (a resumed run) are not decoded again.
    """
    root = Path(config.data) if config.data else demo.generate_demo(Path(run) / layout.DEMO_DATA)
    progress.start("data", "reading and checking the images")  # minutes for a large data set: never silent
    manifest, data_format = readers.read_dataset(root, config.data_format, config.patient_regex, config.skip_unreadable)
    skipped = list(manifest.attrs.get("skipped", []))
    contents = dict(manifest.attrs.get(duplicates.CONTENTS, {}))
    own_pool = manifest[manifest[schema.SUBSET] == schema.SUBSET_POOL]
    if len(own_pool) and not config.pool:
        logger.info("--no-pool: the %d unlabelled images that come with the data are not used.", len(own_pool))
    parts = [manifest[manifest[schema.SUBSET] != schema.SUBSET_POOL]]
    if config.test:
        # not read_dataset: a test set may hold a single class (checked below against the training classes)
        test, _ = readers.read_manifest(Path(config.test), "auto", config.patient_regex)
        test = readers.drop_unreadable(test, config.skip_unreadable)
        skipped += list(test.attrs.get("skipped", []))
        contents.update(test.attrs.get(duplicates.CONTENTS, {}))
        parts.append(test[test[schema.SUBSET] != schema.SUBSET_POOL].assign(**{schema.SUBSET: schema.SUBSET_TEST}))
    combined = apply_label_map(schema.make_manifest(pd.concat(parts, ignore_index=True)), config.label_map)
    check_distinct_labels(combined)
    if config.binary:
        mapping = parse_binary_mapping(config.binary, schema.class_names(combined))
        combined[schema.LABEL] = [apply_binary_mapping([lab], mapping)[0] if lab else "" for lab in combined[schema.LABEL]]
    schema.check_manifest(combined)
    classes = schema.class_names(combined[combined[schema.SUBSET] == schema.SUBSET_TRAIN])
    _check_labels(combined, classes)
    check_positive(config, classes)
    twins = duplicates.find_twins(combined, contents)
    progress.stop("data")
    listed = None
    if list_pool and (config.pool_images or (config.pool and len(own_pool))):
        own = own_pool if config.pool else own_pool.iloc[:0]
        labelled = set(combined[schema.PATH])
        listed, pool_skipped = _list_pool(config, own, labelled, duplicates.by_content(contents, labelled), run, progress)
        skipped += pool_skipped
    logger.info("data: %d labelled images (%s format), classes %s%s", len(combined), data_format, ", ".join(classes),
                f"; an unlabelled pool of {listed.count} images" if listed else "")
    return RunImages(combined, classes, data_format, skipped, listed, twins)


def check_positive(config: RunConfig, classes: list[str]) -> None:
    """Fail now, not after the first epoch, on a positive class the data does not have.

    Two classes need one (the default 'all' fits C-NMC). With more classes it is
    optional: the default that names no class means no positive class (macro
    averages, no patient calls); a class named by the user must exist.
    """
    if len(classes) == 2:
        positive_index_of(classes, config.positive_class)
    elif config.positive not in classes and config.positive != DEFAULT_POSITIVE:
        raise ConfigError(f"--positive {config.positive!r} is not one of the classes {', '.join(classes)}; "
                          "name one of them, or leave --positive out for macro averages only.")
def _list_pool(config: RunConfig, own: pd.DataFrame, labelled: set[str], labelled_contents: dict[str, str], run: Path,
               progress: Progress) -> tuple[PoolFile, list]:
    """The run's pool listing from DATA's own unlabelled images (``own``) and --pool-images, streamed;
    copies of labelled images (``labelled_contents``: pixel digest -> path) are left out."""
    records = itertools.chain(zip(own[schema.PATH].tolist(), own[schema.PATIENT].tolist()),
                              _with_patients(readers.pool_records(config.pool_images), config.patient_regex)
                              if config.pool_images else ())
    source = f"The pool images {config.pool_images}" if config.pool_images else "The unlabelled images of the data"
    return pool.list_into_run(records, run, labelled, config.skip_unreadable, source, progress, labelled_contents)


def _with_patients(records: Iterable[tuple[str, str]], patient_regex: str | None) -> Iterator[tuple[str, str]]:
    """--pool-images records with patient ids from --patient-regex where a file name has one,
    so the leakage check can see a pool patient who is also a validation or test patient."""
    pattern = readers.compile_patient_regex(patient_regex)
    for path, given in records:
        match = pattern.search(os.path.basename(path)) if pattern is not None and not given else None
        yield path, given or (schema.normalise_patient(match.group(1)) if match and match.group(1) else "")


def _check_labels(manifest: pd.DataFrame, classes: list[str]) -> None:
    """Every labelled image (test set included) must carry one of the training classes."""
    unknown = manifest[(manifest[schema.LABEL] != "") & ~manifest[schema.LABEL].isin(classes)]
    if not unknown.empty:
        row = unknown.iloc[0]
        raise DataError(
            f"The {row[schema.SUBSET]} image {row[schema.PATH]} has the label {row[schema.LABEL]!r}, which no training image has "
            f"(training classes: {', '.join(classes)})."
        )
