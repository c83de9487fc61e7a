"""VGG: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015.

Configurations A, B, D, E of Table 1 (VGG-11, -13, -16, -19): 3x3 convolutions with stride
and padding 1, 2x2 max-pools with stride 2, ReLU after every layer, then FC-4096, FC-4096
(dropout 0.5 on both, Sec. 3.1) and FC-classes (Sec. 2.1). The ``_bn`` variants add
BatchNorm after every convolution (not in the paper; torchvision's ``vgg*_bn``). Parameter
order and initialisation follow ``torchvision.models.vgg``, so its weights convert by position.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.base import ClassifierModel, replace_linear
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


class VGG(ClassifierModel):
    """VGG of Table 1 (column ``cfg``), layers named as the paper's ``conv<stage>_<n>``.

    An adaptive average pool to 7x7 (identity at 224x224, as in torchvision) lets inputs down
    to 32x32 (a 1x1 map after the fifth pool) reach fc6.
    """

    def __init__(
        self, cfg: str, num_classes: int = 1000, in_chans: int = 3, batch_norm: bool = False
    ) -> None:
        super().__init__()
        if cfg not in CFGS:
            raise ValueError(f"unknown VGG configuration {cfg!r}; one of {', '.join(CFGS)}")
        self.num_classes = num_classes
        self.num_features = FC_UNITS  # the pre-logits width
        self.features = nn.Sequential()
        chans, stage, n = in_chans, 1, 1
        for v in CFGS[cfg]:
            if v == "M":
                self.features.add_module(f"pool{stage}", nn.MaxPool2d(2, 2))
                stage, n = stage + 1, 1
                continue
            self.features.add_module(f"conv{stage}_{n}", nn.Conv2d(chans, v, 3, padding=1))
            if batch_norm:
                self.features.add_module(f"bn{stage}_{n}", nn.BatchNorm2d(v))
            self.features.add_module(f"relu{stage}_{n}", nn.ReLU(inplace=True))
            chans, n = v, n + 1
        self.avgpool = nn.AdaptiveAvgPool2d(POOLED_SIDE)
        self.classifier = nn.Sequential()
        self.classifier.add_module("fc6", nn.Linear(chans * POOLED_SIDE**2, FC_UNITS))
        self.classifier.add_module("relu6", nn.ReLU(inplace=True))
        self.classifier.add_module("drop6", nn.Dropout(DROPOUT))
        self.classifier.add_module("fc7", nn.Linear(FC_UNITS, FC_UNITS))
        self.classifier.add_module("relu7", nn.ReLU(inplace=True))
        self.classifier.add_module("drop7", nn.Dropout(DROPOUT))
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x).flatten(1)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        fc8 = replace_linear(self.classifier.fc8, num_classes).to(self.weights_device)
        if isinstance(fc8, nn.Linear):
            with torch.no_grad():
                nn.init.normal_(fc8.weight, 0.0, 0.01)
                nn.init.zeros_(fc8.bias)
        self.classifier.fc8 = fc8

    def get_classifier(self) -> nn.Module:
        return self.classifier.fc8


_SIMONYAN15 = (
    "Simonyan, Zisserman: Very Deep Convolutional Networks for Large-Scale Image Recognition "
    "(ICLR 2015)"
)


def vgg(
    num_classes: int = 1000, in_chans: int = 3, cfg: str = "D", batch_norm: bool = False
) -> VGG:
    """VGG of Table 1 column ``cfg`` (A: VGG-11, B: -13, D: -16, E: -19), optionally with BN."""
    return VGG(cfg, num_classes, in_chans, batch_norm)


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
        cfg=_cfg,
        batch_norm=_bn,
    )(vgg)
