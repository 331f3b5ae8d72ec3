"""noisystudent: Noisy Student k-fold training for single-cell microscopy images.

The public face of the package; a notebook needs only these names::

    import noisystudent as ns

    config = ns.make_config("/data/C-NMC_Leukemia", preset="cnmc-study", epochs=10, device="cuda")
    table = ns.run_kfold(config, "runs/cnmc")                 # results/metrics.csv as a DataFrame
    ensemble = ns.load_ensemble("runs/cnmc", models="students")
    prediction = ns.predict(ensemble, ns.resolve_inputs(["new_cells/"]), rule="majority")
    ns.export_folder(ensemble, "shared/cnmc-model")             # safetensors + config.json + model card
    ns.write_report("runs/cnmc")                              # runs/cnmc/report/report.html

Names are imported on first use, so ``import noisystudent`` (and the command
line's ``--help``) does not pay for torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # settings
    "RunConfig": "noisystudent.config.run_config",
    "make_config": "noisystudent.config.settings",
    "resume_config": "noisystudent.config.settings",
    "read_config_file": "noisystudent.config.config_file",
    "preset_settings": "noisystudent.config.presets",
    "PRESETS": "noisystudent.config.presets",
    # data
    "read_dataset": "noisystudent.data.readers",
    "inspect_dataset": "noisystudent.data.inspection",
    "generate_demo": "noisystudent.data.demo",
    "resolve_inputs": "noisystudent.data.loose_files",
    # models
    "create_model": "noisystudent.models",
    "load_model_file": "noisystudent.models.model_file",
    # the k-fold run
    "run_kfold": "noisystudent.run.pipeline",
    "write_results": "noisystudent.run.results",
    "adopt_run": "noisystudent.run.adopt",
    # did the method help? seeds x arms, two-level bootstrap
    "run_experiment": "noisystudent.experiment.study",
    # ensembles of a finished run
    "load_ensemble": "noisystudent.ensemble.classifier",
    "predict": "noisystudent.ensemble.classifier",
    "evaluate": "noisystudent.ensemble.classifier",
    "read_labelled": "noisystudent.ensemble.classifier",
    "export_folder": "noisystudent.ensemble.classifier",
    # evaluation
    "binary_metrics": "noisystudent.evaluation.metrics",
    "multiclass_metrics": "noisystudent.evaluation.metrics",
    "vote": "noisystudent.evaluation.voting",
    "paired_bootstrap": "noisystudent.evaluation.statistics",
    "mcnemar_exact": "noisystudent.evaluation.statistics",
    "holm": "noisystudent.evaluation.statistics",
    "compare_predictions": "noisystudent.evaluation.comparison",
    "compare_runs": "noisystudent.run.evidence",
    # report
    "write_report": "noisystudent.report",
    # errors a user can cause
    "UserError": "noisystudent.errors",
    "ConfigError": "noisystudent.errors",
    "DataError": "noisystudent.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'noisystudent' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # import once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
