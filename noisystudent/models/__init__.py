"""Classifier models: build by name, load weights, freeze the backbone.

``create_model`` builds EfficientNet-B0..B7, EfficientNet-Lite0 or a ResNet
with a fresh head; ``model_spec``/``build_from_spec`` store and rebuild its
shape; ``load_weights`` loads a file and reports what did not fit.
"""

from noisystudent.models.architectures import ARCHITECTURES, check_arch
from noisystudent.models.factory import build_from_spec, create_model, describe_model, input_normalization, model_spec
from noisystudent.models.freezing import (
    backbone_parameters,
    classifier_name,
    freeze_backbone,
    head_parameters,
    is_backbone_frozen,
    set_train_mode,
    unfreeze_all,
)
from noisystudent.models.pretrained import load_imagenet
from noisystudent.models.weights import LoadReport, load_weights, read_torch_file

__all__ = [
    "ARCHITECTURES",
    "LoadReport",
    "backbone_parameters",
    "build_from_spec",
    "check_arch",
    "classifier_name",
    "create_model",
    "describe_model",
    "freeze_backbone",
    "head_parameters",
    "input_normalization",
    "is_backbone_frozen",
    "load_imagenet",
    "load_weights",
    "model_spec",
    "read_torch_file",
    "set_train_mode",
    "unfreeze_all",
]
