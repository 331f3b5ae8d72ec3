"""Trained models predicting: batched probabilities, test-time augmentation, ONNX export and ONNX Runtime.

``predict_probs`` gives one model's class probabilities for rows of the image
cache (the trainer's validation, kfold's predictions); ``ensemble_predictor``
and ``model_predictor`` run trained models on uint8 pixels in ONNX Runtime or
eager PyTorch (``resolve_backend``); ``export_ensemble_bytes`` writes K models
and their vote as one ONNX graph. This stage sits below training, which
predicts every epoch, and reads no object of the stages above it.
"""

from noisystudent.inference.backends import BACKENDS, ensemble_predictor, model_predictor, resolve_backend
from noisystudent.inference.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from noisystudent.inference.onnx_export import export_ensemble_bytes, read_metadata, write_export
from noisystudent.inference.predict import predict_probs
from noisystudent.inference.tta import N_VIEWS, predict_tta, tta_views

__all__ = [
    "BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD", "N_VIEWS", "ensemble_predictor", "export_ensemble_bytes",
    "model_predictor", "normalize", "predict_probs", "predict_tta", "read_metadata", "resolve_backend", "tta_views",
    "write_export",
]
