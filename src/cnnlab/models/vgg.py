"""VGG: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015.

Configurations A, B, D, E of Table 1 (VGG-11, -13, -16, -19): 3x3 convolutions with stride
and padding 1, 2x2 max-pools with stride 2, ReLU after every layer, then FC-4096, FC-4096
(dropout 0.5 on both, Sec. 3.1) and FC-classes (Sec. 2.1). The ``_bn`` variants add
BatchNorm after every convolution (not in the paper; torchvision's ``vgg*_bn``). Parameter
order and initialisation follow ``torchvision.models.vgg``, so its weights convert by position.

Switches: ``drop_rate`` (default 0.5, Sec. 3.1) is the p of both dropout layers. The head
flattens a fixed 7x7 map, so it has no ``global_pool`` keyword; ``reset_classifier(0, "")``
bypasses it (``forward`` returns the pool5 map). ``feature_info``: the map before each
max-pool (reductions 1 .. 16) and pool5 (32), the output of ``forward_features``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnlab.layers import check_rate
from cnnlab.models.base import FullyConnectedHeadModel
from cnnlab.registry import register_model

# Table 1, read top to bottom: conv3 output channels, "M" = maxpool 2x2/2.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}  # fmt: skip
DEPTH_TO_CFG = {11: "A", 13: "B", 16: "D", 19: "E"}

FC_UNITS = 4096  # Sec. 2.1: "the first two have 4096 channels each"
POOLED_SIDE = 7  # 224 / 2^5
DROPOUT = 0.5  # Sec. 3.1


def _features(
    cfg: list[int | str], in_chans: int, batch_norm: bool
) -> tuple[nn.Sequential, list[dict[str, Any]]]:
    """The convolutional trunk of a Table 1 column and its feature levels: the last map of
    each stage (its ReLU, right before the stage's max-pool) and pool5, the trunk's output."""
    features, info = nn.Sequential(), []
    chans, stage, n, reduction = in_chans, 1, 1, 1
    for v in cfg:
        if v == "M":
            last = f"features.conv{stage}_{n - 1}_relu"
            info.append({"module": last, "num_chs": chans, "reduction": reduction})
            features.add_module(f"pool{stage}", nn.MaxPool2d(2, 2))
            stage, n, reduction = stage + 1, 1, reduction * 2
            continue
        features.add_module(f"conv{stage}_{n}", nn.Conv2d(chans, v, 3, padding=1))
        if batch_norm:
            features.add_module(f"bn{stage}_{n}", nn.BatchNorm2d(v))
        # Not "relu1_1": torchvision's tracer strips a trailing _<digits> from node names, so
        # create_feature_extractor could not name such a module (see feature_info).
        features.add_module(f"conv{stage}_{n}_relu", nn.ReLU(inplace=True))
        chans, n = v, n + 1
    info.append({"module": f"features.pool{stage - 1}", "num_chs": chans, "reduction": reduction})
    return features, info


class VGG(FullyConnectedHeadModel):
    """VGG of Table 1 (column ``cfg``), layers named as the paper's ``conv<stage>_<n>`` (their
    ReLUs ``conv<stage>_<n>_relu``, BatchNorms ``bn<stage>_<n>``).

    An adaptive average pool to 7x7 (identity at 224x224, as in torchvision) lets inputs down
    to 32x32 (a 1x1 map after the fifth pool) reach fc6.

    ``num_features`` is the width of the pool5 map (512), ``head_hidden_size`` that of fc7
    (4096), what ``reset_classifier(0)`` leaves ``forward`` returning. ``reset_classifier(0,
    "")`` bypasses the whole head (avgpool, flatten, fc6, fc7), keeping its modules: a later
    ``reset_classifier(n)`` restores it with a fresh fc8. ``drop_rate`` is the p of drop6 and
    drop7 (0.5, Sec. 3.1).
    """

    def __init__(
        self,
        cfg: str,
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = False,
        drop_rate: float = DROPOUT,
    ) -> None:
        super().__init__()
        if cfg not in CFGS:
            raise ValueError(f"unknown VGG configuration {cfg!r}; one of {', '.join(CFGS)}")
        drop_rate = check_rate("drop_rate", drop_rate)
        self.num_classes = num_classes
        self.features, self.feature_info = _features(CFGS[cfg], in_chans, batch_norm)
        self.num_features = chans = self.feature_info[-1]["num_chs"]
        self.avgpool = nn.AdaptiveAvgPool2d(POOLED_SIDE)
        self.classifier = nn.Sequential()
        self.classifier.add_module("fc6", nn.Linear(chans * POOLED_SIDE**2, FC_UNITS))
        self.classifier.add_module("relu6", nn.ReLU(inplace=True))
        self.classifier.add_module("drop6", nn.Dropout(drop_rate))
        self.classifier.add_module("fc7", nn.Linear(FC_UNITS, FC_UNITS))
        self.classifier.add_module("relu7", nn.ReLU(inplace=True))
        self.classifier.add_module("drop7", nn.Dropout(drop_rate))
        self.classifier.add_module("fc8", nn.Linear(FC_UNITS, num_classes))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        # torchvision's: He normal (fan-out) convolutions, N(0, 0.01) linear layers, zero biases.
        # The paper trained A from N(0, 0.01) and initialised deeper nets from it (Sec. 3.1).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def _init_fc8(self, fc8: nn.Linear) -> None:
        nn.init.normal_(fc8.weight, 0.0, 0.01)
        nn.init.zeros_(fc8.bias)


_SIMONYAN15 = (
    "Simonyan, Zisserman: Very Deep Convolutional Networks for Large-Scale Image Recognition "
    "(ICLR 2015)"
)


def vgg(
    num_classes: int = 1000,
    in_chans: int = 3,
    cfg: str = "D",
    batch_norm: bool = False,
    drop_rate: float = DROPOUT,
) -> VGG:
    """VGG of Table 1 column ``cfg`` (A: VGG-11, B: -13, D: -16, E: -19), optionally with BN;
    ``drop_rate``: dropout after fc6 and fc7 (0.5, Sec. 3.1)."""
    return VGG(cfg, num_classes, in_chans, batch_norm, drop_rate)


# name: (Table 1 column, BatchNorm, params, MACs at 224x224), as torchvision's meta gives them
# (reference table); BN adds parameters but no MACs under our convention.
VARIANTS: dict[str, tuple[str, bool, int, int]] = {
    "vgg11": ("A", False, 132_863_336, 7_609_090_048),
    "vgg11_bn": ("A", True, 132_868_840, 7_609_090_048),
    "vgg13": ("B", False, 133_047_848, 11_308_466_176),
    "vgg13_bn": ("B", True, 133_053_736, 11_308_466_176),
    "vgg16": ("D", False, 138_357_544, 15_470_264_320),
    "vgg16_bn": ("D", True, 138_365_992, 15_470_264_320),
    "vgg19": ("E", False, 143_667_240, 19_632_062_464),
    "vgg19_bn": ("E", True, 143_678_248, 19_632_062_464),
}

for _name, (_cfg, _bn, _params, _macs) in VARIANTS.items():
    register_model(
        _name,
        family="vgg",
        paper=_SIMONYAN15,
        year=2015,
        reference_params=_params,
        reference_macs=_macs,
        source=f"paper Table 1 column {_cfg} and Table 2; torchvision {_name} meta",
        train_lr=0.01,  # paper Sec. 3.1; at 0.05 and batch 16 the BN variants diverge in 9 steps
        cfg=_cfg,
        batch_norm=_bn,
    )(vgg)
