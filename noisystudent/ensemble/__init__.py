"""The K fold models of a finished run as one classifier: load, predict new images, evaluate on labelled ones, export."""

from noisystudent.ensemble.classifier import (
    Ensemble,
    Evaluation,
    Prediction,
    evaluate,
    export_folder,
    load_ensemble,
    predict,
    read_labelled,
)

__all__ = ["Ensemble", "Evaluation", "Prediction", "evaluate", "export_folder", "load_ensemble", "predict", "read_labelled"]
