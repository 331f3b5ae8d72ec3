"""Recognise which architecture a state dict was saved from, to explain a refused file."""

from __future__ import annotations

import re
from functools import lru_cache

import torch
from efficientnet_pytorch.utils import get_model_params, round_filters, round_repeats

from noisystudent.models.architectures import EFFICIENTNETS

# (blocks in layer3, bottleneck blocks?) -> torchvision ResNet
_RESNETS = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50",
            (23, True): "resnet101", (36, True): "resnet152"}


def guess_architecture(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Name of the architecture these weights fit, or None when unrecognised."""
    if "_conv_head.weight" in state_dict:
        return _guess_efficientnet(state_dict)
    if "layer1.0.conv1.weight" in state_dict:
        return _guess_resnet(state_dict)
    return None


def _guess_efficientnet(state_dict: dict[str, torch.Tensor]) -> str | None:
    blocks = _count_indices(state_dict, r"_blocks\.(\d+)\.")
    head = state_dict["_conv_head.weight"].shape[0]
    if not any("_se_reduce" in key for key in state_dict):
        return "efficientnet-lite0" if (blocks, head) == (16, 1280) else None
    return _efficientnet_signatures().get((blocks, head))


@lru_cache(maxsize=1)
def _efficientnet_signatures() -> dict[tuple[int, int], str]:
    """(number of MBConv blocks, head channels) of each EfficientNet-B*."""
    signatures = {}
    for arch in EFFICIENTNETS:
        blocks_args, params = get_model_params(arch, None)
        blocks = sum(round_repeats(args.num_repeat, params) for args in blocks_args)
        signatures[(blocks, round_filters(1280, params))] = arch
    return signatures


def _guess_resnet(state_dict: dict[str, torch.Tensor]) -> str | None:
    blocks = _count_indices(state_dict, r"layer3\.(\d+)\.")
    return _RESNETS.get((blocks, "layer1.0.conv3.weight" in state_dict))


def _count_indices(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0
