"""The model card (README.md) of an exported model folder, written from the run folder it comes from.

What a colleague needs before trusting the models: the data (images and
patients per part and class), the protocol, the outer-test metrics with their
95 % patient-bootstrap intervals (``comparison.score_interval``, the same
resampling as results/comparison.csv), calibration before and after, the
intended use, the limitations, and the package version and commit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noisystudent import layout
from noisystudent.data.folds import load_folds
from noisystudent.data.manifest import LABEL, PATIENT, ROLE, ROLES
from noisystudent.environment import git_commit
from noisystudent.evaluation.comparison import score_interval
from noisystudent.run import calibration
from noisystudent.run.tables import read_table

CARD_METRICS = ("balanced_accuracy", "accuracy", "sensitivity", "specificity", "auc", "f1", "mcc")


def model_card(run: Path, document: dict[str, Any], run_document: dict[str, Any]) -> str:
    """The markdown model card of a folder described by ``document`` (its config.json), exported from ``run``."""
    sections = [_header(document), _data(run), _protocol(document), _metrics(run, document), _calibration(run, document),
                _use(document), _provenance(document, run_document)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(document: dict[str, Any]) -> str:
    classes = ", ".join(document["classes"])
    positive = f"; positive class **{document['positive']}**" if document.get("positive") else ""
    return (f"# noisystudent ensemble: {len(document['folds'])} {document['models']} ({document['architecture']})\n\n"
            f"Classifies single-cell microscopy images into {classes}{positive}, by a {document['voting']} vote of "
            f"{len(document['folds'])} fold models at {document['input_size']} px (test-time augmentation: "
            f"{document['tta']}; probabilities calibrated: {document['calibration']}).\n\n"
            "```bash\nnoisystudent ensemble predict THIS_FOLDER cells/ --out predictions.csv\n```\n\n"
            "or in Python: `ns.predict(ns.load_ensemble(\"THIS_FOLDER\"), ns.resolve_inputs([\"cells/\"]))`.")


def _data(run: Path) -> str:
    path = Path(run) / layout.FOLDS
    if not path.is_file():
        return ""
    folds = load_folds(path)
    rows = []
    for role in [r for r in ROLES if r in set(folds[ROLE])]:
        part = folds[folds[ROLE] == role]
        counts = ", ".join(f"{label or 'unlabelled'} {n}" for label, n in part[LABEL].value_counts().sort_index().items())
        patients = part[PATIENT][part[PATIENT] != ""].nunique()
        rows.append(f"| {role} | {len(part)} | {patients or 'unknown'} | {counts} |")
    return ("## Data\n\nImages per part of the run, summed over the folds for the parts that change with the fold "
            "(labelled, masked, validation); patients never cross parts within a fold.\n\n"
            "| part | images | patients | per class |\n|---|---|---|---|\n" + "\n".join(rows))


def _protocol(document: dict[str, Any]) -> str:
    s = document["settings"]
    split = ":".join(f"{x:g}" for x in s["split_ratio"])
    test = "given as test data" if s.get("test") else f"{s['test_fraction']:.0%} of the patients"
    return ("## Protocol\n\n"
            f"{s['folds']} patient-disjoint folds; a teacher per fold then {s['rounds']} round(s) of noised students "
            f"({document['models']} of round {document['round']} exported); {s['arch']} / students {s.get('student_arch') or s['arch']}, "
            f"weights {s['weights']}, {s['epochs']} epochs, {s['optimizer']} lr {s['lr']}, split {split} "
            f"(labelled : masked : validation), model selection `--select {s['select']}`, outer test set: "
            f"{test}. Every setting: `settings` in config.json.")


def _metrics(run: Path, document: dict[str, Any]) -> str:
    kind, rule = document["kind"], document["voting"]
    path = layout.results_dir(run) / f"predictions_{kind}_{rule}.csv"
    if not path.is_file():
        return "## Outer test set\n\nThe run has no outer-test predictions of this ensemble (no outer test set)."
    table = read_table(path)
    intervals = score_interval([table], document["classes"], document.get("positive"), majority=rule == "majority").set_index("metric")
    lines = [f"| {m} | {_number(intervals.loc[m, 'value'])} | {_number(intervals.loc[m, 'low'])} – {_number(intervals.loc[m, 'high'])} |"
             for m in CARD_METRICS if m in intervals.index and np.isfinite(intervals.loc[m, "value"])]
    return (f"## Outer test set\n\n{len(table)} images no model trained or was selected on; 95 % percentile intervals "
            "of 2,000 bootstrap resamples of patients (of images when patients are unknown).\n\n"
            "| metric | value | 95 % interval |\n|---|---|---|\n" + "\n".join(lines))


def _calibration(run: Path, document: dict[str, Any]) -> str:
    path = layout.results_dir(run) / layout.CALIBRATION_TABLE
    if document.get("temperature") is None or not path.is_file():
        return ""
    table = pd.read_csv(path)
    rows = table[(table[layout.MODEL_KIND] == document["kind"]) & (table[layout.FOLD_COLUMN].astype(str) == calibration.ENSEMBLE)]
    lines = [f"| {r.calibration} | {_number(r.ece)} | {_number(r.brier)} | {_number(r.nll)} |" for r in rows.itertuples()]
    return ("## Calibration\n\n"
            f"One temperature, T = {document['temperature']:.3f}, fitted on the pooled out-of-fold validation predictions "
            "(never the test set) and applied to the ensemble's mean probability (`--calibration temperature`). "
            "Outer test set, mean probability, ECE with 15 bins:\n\n"
            "| calibration | ECE | Brier | NLL |\n|---|---|---|---|\n" + "\n".join(lines))


def _use(document: dict[str, Any]) -> str:
    return ("## Intended use\n\nResearch on single-cell microscopy images like the training data: the same stain, "
            f"magnification and cell segmentation, preprocessed as `preprocess` in config.json, at {document['input_size']} px. "
            "It is not a medical device and must not make a diagnosis on its own.\n\n"
            "## Limitations\n\n- The numbers above hold for the run's outer test set only; other sites, stains, scanners "
            "or segmentations shift the images and the numbers, and calibration first of all.\n"
            "- The temperature was fitted on single fold models' validation predictions; the ensemble's mean is less "
            "confident than one model, so check calibration on data of your own before reading probabilities as risks.\n"
            "- Patient calls (fraction of cells called positive >= 0.5) were not validated clinically.")


def _provenance(document: dict[str, Any], run_document: dict[str, Any]) -> str:
    trained = (run_document.get("machine") or {}).get("git_commit") or "unknown"
    return ("## Provenance\n\n"
            f"- exported by noisystudent {document['noisystudent_version']}, git commit {git_commit() or 'unknown'}\n"
            f"- trained with noisystudent {run_document.get('created_with', 'unknown')}, git commit {trained}\n"
            f"- weights: `fold-<k>/model.safetensors` (read without unpickling), described in config.json")


def _number(value: Any) -> str:
    return "–" if value is None or not np.isfinite(float(value)) else f"{float(value):.3f}"
