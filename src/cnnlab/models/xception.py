"""Xception: Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions".

Figure 5 of the paper is ``ENTRY_FLOW``, ``MIDDLE_FLOW`` and ``EXIT_FLOW`` below: 36
convolutional layers in 14 modules, every module but the first and the last wrapped by a
linear residual connection (Sec. 3). Every convolution and separable convolution is followed by
batch normalization (Figure 5 caption). A separable convolution is a depthwise 3x3 conv then a
pointwise 1x1 conv with nothing in between: no BN, no ReLU (Sec. 2 and Sec. 4.7, where an
intermediate ReLU or ELU made results worse); that is what sets it apart from MobileNet's
:class:`cnnlab.layers.DepthwiseSeparableConv`, so it lives here as :class:`SeparableConv2d`.

Parameters and their order are those of timm's ``legacy_xception`` (the Keras port), so
``cnnlab.interop.from_timm("xception", state_dict)`` converts its weights by position.
299x299 input, 22,855,952 parameters; MACs registered below (Conv + Linear, batch 1).

Switches (timm's names): ``drop_rate`` (0.5, the dropout before the logistic regression layer
of Sec. 4.3), ``drop_path_rate`` (0.0: stochastic depth on the residual branch of the 12
residual modules, Huang et al. 2016; not in the paper) and ``global_pool`` (``"avg"``, the
paper's, ``"max"``, or ``""`` with ``num_classes=0``). ``feature_info`` lists the last map at
each stride: the stem (2), entry-flow modules 1 and 2 (4, 8), the middle flow (16) and the
exit convolutions (32, ``forward_features``).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.layers import ConvNormAct, GlobalPool, check_rate, drop_path_rates, stochastic_depth
from cnnlab.models.base import (
    NoClassifier,
    PooledHeadModel,
    check_head,
    replace_linear,
)
from cnnlab.registry import register_model

__all__ = [
    "ENTRY_FLOW",
    "EXIT_FLOW",
    "MIDDLE_FLOW",
    "SeparableConv2d",
    "Xception",
    "XceptionBlock",
]

# Chollet 2017, Figure 5. A module: (widths of its 3x3 separable convs, stride of the 3x3 max
# pool that closes it (1: no pool), whether it opens with a ReLU). The residual connection is
# the identity, or a 1x1 conv with the module's stride ("Conv 1x1, stride=2x2") where the width
# or size changes. The entry flow starts with "Conv 32, 3x3, stride=2x2" and "Conv 64, 3x3"
# (unpadded, 299 -> 149 -> 147), each followed by ReLU; so the first module opens without one.
ENTRY_FLOW: tuple[tuple[tuple[int, ...], int, bool], ...] = (
    ((128, 128), 2, False),
    ((256, 256), 2, True),
    ((728, 728), 2, True),
)
MIDDLE_FLOW: tuple[tuple[tuple[int, ...], int, bool], ...] = (((728, 728, 728), 1, True),) * 8
# The exit flow's residual module, then "SeparableConv 1536, 3x3; ReLU" and
# "SeparableConv 2048, 3x3; ReLU", global average pooling and the logistic regression layer.
EXIT_FLOW: tuple[tuple[tuple[int, ...], int, bool], ...] = (((728, 1024), 2, True),)
EXIT_CONVS: tuple[int, ...] = (1536, 2048)

PAPER = "Chollet, Xception: Deep Learning with Depthwise Separable Convolutions"


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 conv (one filter per channel) then pointwise 1x1 conv, no bias, no BN or
    activation between them (Chollet 2017, Sec. 2 and Sec. 4.7)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_chans, in_chans, kernel_size, padding=kernel_size // 2, groups=in_chans, bias=False
        )
        self.pointwise = nn.Conv2d(in_chans, out_chans, 1, bias=False)


class XceptionBlock(nn.Module):
    """One residual module of Figure 5: [ReLU, SeparableConv, BN] x n, optional 3x3 max pool,
    plus the residual (identity, or 1x1 conv + BN with the module's stride). ``drop_path``:
    the probability that training drops the module's branch, keeping only the residual
    (stochastic depth, Huang et al. 2016)."""

    def __init__(
        self,
        in_chans: int,
        widths: tuple[int, ...],
        stride: int,
        relu_first: bool,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.drop_path = drop_path
        out_chans = widths[-1]
        # Registered before the body, as in timm's legacy_xception, so weights convert by position.
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_chans != out_chans:
            self.shortcut = ConvNormAct(in_chans, out_chans, 1, stride, act=None)
        layers: list[nn.Module] = []
        chans = in_chans
        for i, width in enumerate(widths):
            if i > 0 or relu_first:
                # The first ReLU must not overwrite the block's input: the residual needs it.
                layers.append(nn.ReLU(inplace=i > 0))
            layers += [SeparableConv2d(chans, width), nn.BatchNorm2d(width)]
            chans = width
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return stochastic_depth(self.body(x), self.drop_path, self.training) + residual


def _flow(
    in_chans: int, modules: tuple[tuple[tuple[int, ...], int, bool], ...], drop_paths: list[float]
) -> nn.Sequential:
    """The residual modules of one flow, with their stochastic-depth rates in order."""
    blocks = []
    for (widths, stride, relu_first), drop_path in zip(modules, drop_paths, strict=True):
        blocks.append(XceptionBlock(in_chans, widths, stride, relu_first, drop_path))
        in_chans = widths[-1]
    return nn.Sequential(*blocks)


# The last map at each cumulative stride (module, channels, stride), shallow to deep: the stem's
# second conv (147x147 at 299), entry-flow modules 1 and 2 (74, 37), the middle flow (19; entry
# module 3 already reached stride 16) and the exit convolutions (10, forward_features' output).
FEATURE_LEVELS: tuple[tuple[str, int, int], ...] = (
    ("stem", 64, 2),
    ("entry_flow.0", ENTRY_FLOW[0][0][-1], 4),
    ("entry_flow.1", ENTRY_FLOW[1][0][-1], 8),
    ("middle_flow", MIDDLE_FLOW[-1][0][-1], 16),
    ("exit_convs", EXIT_CONVS[-1], 32),
)


class Xception(PooledHeadModel):
    """Entry flow, middle flow (8 modules), exit flow, global average pool, dropout, fc.

    Args:
        drop_rate: dropout before the fc; the paper's 0.5 "before the logistic regression
            layer" for ImageNet (Sec. 4.3, Regularization configuration). No parameters, no
            effect in eval mode.
        drop_path_rate: stochastic depth (Huang et al. 2016; not in the paper, whose residual
            connections Sec. 4.6 studies): the last of the 12 residual modules drops its
            branch with this probability, earlier ones linearly less (``drop_path_rates``).
        global_pool: ``"avg"`` (the paper's global average pooling, Figure 5), ``"max"``, or
            ``""`` with ``num_classes=0`` (``forward`` returns the final feature map).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        check_head(num_classes, global_pool)
        rates = drop_path_rates(drop_path_rate, len(ENTRY_FLOW + MIDDLE_FLOW + EXIT_FLOW))
        entry, middle = len(ENTRY_FLOW), len(ENTRY_FLOW + MIDDLE_FLOW)
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, 32, 3, stride=2, padding=0),
            ConvNormAct(32, 64, 3, padding=0),
        )
        self.entry_flow = _flow(64, ENTRY_FLOW, rates[:entry])
        self.middle_flow = _flow(ENTRY_FLOW[-1][0][-1], MIDDLE_FLOW, rates[entry:middle])
        self.exit_flow = _flow(MIDDLE_FLOW[-1][0][-1], EXIT_FLOW, rates[middle:])
        convs: list[nn.Module] = []
        chans = EXIT_FLOW[-1][0][-1]
        for width in EXIT_CONVS:
            convs += [SeparableConv2d(chans, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            chans = width
        self.exit_convs = nn.Sequential(*convs)
        self.num_features = chans
        self.feature_info = [
            {"module": m, "num_chs": c, "reduction": r} for m, c, r in FEATURE_LEVELS
        ]
        self.global_pool = GlobalPool(global_pool)
        self.dropout = nn.Dropout(check_rate("drop_rate", drop_rate))
        self.fc = replace_linear(NoClassifier(chans), num_classes)  # nn.Linear unless 0 classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry_flow(self.stem(x))
        x = self.middle_flow(x)
        return self.exit_convs(self.exit_flow(x))


@register_model(
    "xception",
    family="xception",
    paper=PAPER,
    year=2017,
    input_size=299,
    min_input_size=32,
    reference_params=22_855_952,
    reference_macs=8_357_403_496,
    source="params: paper Table 3, Keras, timm legacy_xception; MACs: our count (~8,400 M)",
)
def xception(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> Xception:
    """Xception at 299x299 (Chollet 2017, Figure 5)."""
    return Xception(num_classes=num_classes, in_chans=in_chans, **kwargs)
