"""Trained models predicting: batched probabilities, test-time augmentation, ONNX export and ONNX Runtime.

``predict_probs`` gives one model's class probabilities for rows of the image
cache (the trainer's validation); ``row_predictor`` does the same for kfold's
rounds and ``ensemble_predictor`` for uint8 pixels, each in ONNX Runtime or
eager PyTorch (``resolve_backend``); ``export_ensemble_bytes`` writes K models
and their vote as one ONNX graph; ``prediction_table`` lays one model's
probabilities out as a table. This stage sits below training, which
predicts every epoch. Callers above pass a ``ModelSet`` (and an
``ExportRecord``) of plain values: inference reads no object of theirs.
"""

from noisystudent.inference.backends import BACKENDS, ensemble_predictor, model_predictor, resolve_backend, row_predictor
from noisystudent.inference.model_set import ExportRecord, ModelSet
from noisystudent.inference.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from noisystudent.inference.onnx_export import export_ensemble_bytes, read_metadata, write_export
from noisystudent.inference.predict import predict_probs
from noisystudent.inference.tables import prediction_table
from noisystudent.inference.tta import N_VIEWS, predict_tta, tta_views

__all__ = [
    "BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD", "N_VIEWS", "ExportRecord", "ModelSet", "ensemble_predictor",
    "export_ensemble_bytes", "model_predictor", "normalize", "predict_probs", "predict_tta", "prediction_table",
    "read_metadata", "resolve_backend", "row_predictor", "tta_views", "write_export",
]
