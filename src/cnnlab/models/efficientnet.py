"""EfficientNet-B0 (Tan & Le 2019), "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", ICML 2019, arXiv:1905.11946.

Table 1 (the B0 baseline found by architecture search) is ``B0_STAGES`` below: a 3x3 stride-2
stem, seven stages of MBConv blocks (the inverted residual of MobileNetV2 with
squeeze-and-excitation, Sec. 4; SiLU/"swish" activations), a 1x1 conv to 1280 channels,
pooling and a fully connected layer. Training regularisers as in Sec. 5.2: dropout 0.2 before
the classifier and stochastic depth ("drop connect") with survival probability 0.8 at the
last block, rising linearly with depth as in torchvision.

The zoo's contract (:class:`cnnlab.models.base.ClassifierModel`): ``global_pool`` (``"avg"``,
Table 1's "Pooling"; ``"max"``; ``""`` with no classifier), ``drop_rate``, ``drop_path_rate``
and ``feature_info``: the last block at strides 2, 4, 8, 16 and the 1x1 head conv at 32.

The parameters and buffers are registered in the order of ``torchvision.models.efficientnet_b0``
(with its BatchNorm eps 1e-5 and momentum 0.1), so ``cnnlab.interop.from_torchvision`` loads
its weights and the outputs agree.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.layers import ConvNormAct, GlobalPool, InvertedResidual, check_rate
from cnnlab.models.base import (
    NoClassifier,
    PooledHeadModel,
    check_head,
    last_per_reduction,
)
from cnnlab.registry import register_model

__all__ = ["EfficientNet", "efficientnet_b0"]

# Tan & Le 2019, Table 1, input 224x224x3.
# Stage 1: Conv3x3, resolution 224x224, 32 channels, 1 layer (stride 2).
B0_STEM = 32
B0_STAGES = [
    # MBConv expansion, kernel, stride of the first layer, channels, layers   stage, input size
    (1, 3, 1, 16, 1),  # 2, 112x112
    (6, 3, 2, 24, 2),  # 3, 112x112
    (6, 5, 2, 40, 2),  # 4, 56x56
    (6, 3, 2, 80, 3),  # 5, 28x28
    (6, 5, 1, 112, 3),  # 6, 14x14
    (6, 5, 2, 192, 4),  # 7, 14x14
    (6, 3, 1, 320, 1),  # 8, 7x7
]
# Stage 9: Conv1x1 & Pooling & FC, 7x7, 1280 channels.
B0_HEAD = 1280
SE_RATIO = 0.25  # squeeze width = block input width / 4 (Sec. 4, after MnasNet)


class EfficientNet(PooledHeadModel):
    """EfficientNet-B0: stem, 16 MBConv blocks in 7 stages, 1x1 conv, pool, FC (Table 1).

    ``drop_rate`` (0.2, Sec. 5.2) is dropout before the FC. ``drop_path_rate`` (0.2, Sec. 5.2:
    survival probability 0.8) is stochastic depth with torchvision's rule, kept so that the
    same seed draws torchvision's masks: block ``i`` of ``N``, counted from 0, drops its
    residual branch with probability ``rate * i / N`` (the first never, the last
    ``rate * 15 / 16``). ``global_pool``: ``"avg"`` (the paper's), ``"max"``, or ``""`` with
    ``num_classes=0``. ``feature_info``: ``stages.0`` (2), ``stages.1`` (4), ``stages.2`` (8),
    ``stages.4`` (16), then ``head`` (32), ``forward_features``' output; timm lists the last
    block (320 channels) at 32 instead.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.2,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        check_rate("drop_rate", drop_rate)
        check_rate("drop_path_rate", drop_path_rate)
        check_head(num_classes, global_pool)
        self.stem = ConvNormAct(in_chans, B0_STEM, 3, 2, act=nn.SiLU)
        self.stages = _stages(B0_STEM, drop_path_rate)
        self.num_features = B0_HEAD
        self.head = ConvNormAct(B0_STAGES[-1][3], B0_HEAD, 1, act=nn.SiLU)
        layers = [("stem", B0_STEM, 2)]
        layers += [(f"stages.{i}", row[3], row[2]) for i, row in enumerate(B0_STAGES)]
        self.feature_info = last_per_reduction([*layers, ("head", B0_HEAD, 1)])
        self.global_pool = GlobalPool(global_pool)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(B0_HEAD, num_classes) if num_classes else NoClassifier(B0_HEAD)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _stages(chans: int, drop_path_rate: float) -> nn.Sequential:
    """The seven MBConv stages of Table 1 from ``chans`` input channels, block ``index`` of
    ``total`` with stochastic depth ``drop_path_rate * index / total`` (torchvision's rule)."""
    total = sum(layers for *_, layers in B0_STAGES)
    index = 0
    stages: list[nn.Module] = []
    for expansion, kernel, stride, out_chans, layers in B0_STAGES:
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks.append(
                InvertedResidual(
                    chans,
                    out_chans,
                    stride if i == 0 else 1,
                    expansion,
                    kernel_size=kernel,
                    act=nn.SiLU,
                    se_ratio=SE_RATIO,
                    drop_path=drop_path_rate * index / total,
                )
            )
            chans, index = out_chans, index + 1
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages)


@register_model(
    "efficientnet_b0",
    family="efficientnet",
    paper="Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural "
    "Networks, ICML 2019, arXiv:1905.11946",
    year=2019,
    reference_params=5_288_548,
    reference_macs=385_814_752,
    source="torchvision meta (num_params, _ops 0.386 GMACs); paper Table 2: 5.3M / 0.39B",
)
def efficientnet_b0(
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float = 0.2,
    drop_path_rate: float = 0.2,
    global_pool: str = "avg",
) -> EfficientNet:
    """EfficientNet-B0 with dropout ``drop_rate``, stochastic depth ``drop_path_rate`` (both
    0.2, Sec. 5.2) and pooling ``global_pool``, as in :class:`EfficientNet`."""
    return EfficientNet(
        num_classes,
        in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        global_pool=global_pool,
    )
