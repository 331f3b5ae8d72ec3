"""Split a model into backbone and classifier head; freeze and unfreeze the backbone.

The head is the classifier module named by :func:`classifier_name` (``_fc``
for EfficientNets, ``fc`` for ResNets); everything else is the backbone. A
frozen backbone also keeps its BatchNorm running statistics: call
:func:`set_train_mode` instead of ``model.train()`` so those layers stay in
eval mode while the head trains.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from noisystudent.models.architectures import is_efficientnet, unwrap


def classifier_name(model: nn.Module) -> str:
    """Attribute name of the classifier head (what head warm-up trains)."""
    return "_fc" if is_efficientnet(model) else "fc"


def is_head_key(name: str, head: str) -> bool:
    return name == head or name.startswith(head + ".")


def head_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    head = classifier_name(model)
    return (p for name, p in unwrap(model).named_parameters() if is_head_key(name, head))


def backbone_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    head = classifier_name(model)
    return (p for name, p in unwrap(model).named_parameters() if not is_head_key(name, head))


def freeze_backbone(model: nn.Module) -> None:
    """Stop gradients to everything but the head; see :func:`set_train_mode` for BatchNorm."""
    for parameter in backbone_parameters(model):
        parameter.requires_grad_(False)
    for parameter in head_parameters(model):
        parameter.requires_grad_(True)


def unfreeze_all(model: nn.Module) -> None:
    for parameter in unwrap(model).parameters():
        parameter.requires_grad_(True)


def is_backbone_frozen(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in backbone_parameters(model))


def set_train_mode(model: nn.Module, frozen: bool) -> nn.Module:
    """``model.train()``, then, if the backbone is ``frozen``, its BatchNorm layers back to eval.

    Dropout and drop-connect stay active everywhere (they are the model noise).
    """
    model.train()
    if frozen:
        head = classifier_name(model)
        for name, module in unwrap(model).named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not is_head_key(name, head):
                module.eval()
    return model
