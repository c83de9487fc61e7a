"""ResNet and its plain baselines: He et al. 2016, "Deep Residual Learning for Image Recognition".

Table 1 of the paper is ``STAGES`` and ``DEPTHS`` below: a 7x7/2 convolution (conv1), a 3x3/2
max pool, then four stages conv2_x .. conv5_x of basic blocks (two 3x3 convs, ResNet-18/34)
or bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4, ResNet-50/101/152, Sec. 4.1 "Deeper
Bottleneck Architectures"), global average pooling and a 1000-way fully connected layer.
Batch normalization follows every convolution, before the ReLU (Sec. 3.4). conv3_1, conv4_1 and
conv5_1 downsample with stride 2 (Table 1 caption); where the shape changes, the shortcut is a
1x1 convolution + BN projection, the paper's option B (Sec. 3.3, Table 3).

Two placements of that stride in a bottleneck:

* ``resnet50`` / ``resnet101`` / ``resnet152`` are "v1.5" (torchvision, timm): the stride sits on
  the 3x3 conv. Parameters and their order are torchvision's, so
  ``cnnlab.interop.from_torchvision`` converts their weights by position.
* ``resnet50_v1`` / ``resnet101_v1`` / ``resnet152_v1`` follow the paper: "downsampling is
  performed by conv3_1, conv4_1, and conv5_1 with a stride of 2", i.e. on the first 1x1 conv
  of the block. The same parameters; fewer MACs, since that 1x1 then runs at the reduced size.

``plain18`` / ``plain34`` are the plain baselines of Sec. 4.1 and Figure 3 (middle): the same
stacks with no shortcut connections at all (hence no projection convolutions either).

Figures (params; MACs at 224x224, Conv + Linear, batch 1) are registered with each model and
checked by ``tests/test_fidelity.py``; docs/models/resnet_xception.md prints them.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.layers import ConvNormAct
from cnnlab.models.base import ClassifierModel, replace_linear
from cnnlab.registry import register_model

__all__ = ["DEPTHS", "PRESETS", "STAGES", "BasicBlock", "Bottleneck", "ResNet"]

# He et al. 2016, Table 1. Each stage: (layer name, output size at 224x224, width, stride of its
# first block). The width is the number of 3x3 filters; a bottleneck block outputs 4x as many
# channels through its last 1x1 conv ("1x1, 256" in conv2_x).
STAGES: tuple[tuple[str, int, int, int], ...] = (
    ("conv2_x", 56, 64, 1),  # the 3x3/2 max pool before it already halved the size
    ("conv3_x", 28, 128, 2),
    ("conv4_x", 14, 256, 2),
    ("conv5_x", 7, 512, 2),
)

# Table 1 columns: depth -> (block type, blocks per stage conv2_x .. conv5_x).
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

PAPER = "He et al., Deep Residual Learning for Image Recognition"


def _shortcut(in_chans: int, out_chans: int, stride: int, residual: bool) -> nn.Module | None:
    """Identity (None) where shapes agree, else option B: 1x1 conv (stride) + BN (Sec. 3.3)."""
    if not residual or (stride == 1 and in_chans == out_chans):
        return None
    return ConvNormAct(in_chans, out_chans, 1, stride, act=None)


class BasicBlock(nn.Module):
    """Two 3x3 convs, the first with ``stride`` (Figure 2 / Figure 5 left; ResNet-18/34).

    ``residual=False`` drops the shortcut: the block of the plain nets of Sec. 4.1.
    """

    expansion = 1

    def __init__(self, in_chans: int, width: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = ConvNormAct(in_chans, width, 3, stride)
        self.conv2 = ConvNormAct(width, width, 3, act=None)
        # Registered after the body, as torchvision does, so weights convert by position.
        self.shortcut = _shortcut(in_chans, width, stride, residual)
        self.act = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv2.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if self.residual:
            out += x if self.shortcut is None else self.shortcut(x)  # in place, as torchvision
        return self.act(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (Sec. 4.1, Figure 5 right; ResNet-50/101/152).

    ``stride_on_3x3=True`` is v1.5 (torchvision); ``False`` puts the stride on the first 1x1
    conv as in the paper.
    """

    expansion = 4

    def __init__(
        self,
        in_chans: int,
        width: int,
        stride: int = 1,
        residual: bool = True,
        stride_on_3x3: bool = True,
    ) -> None:
        super().__init__()
        out_chans = width * self.expansion
        self.residual = residual
        self.conv1 = ConvNormAct(in_chans, width, 1, 1 if stride_on_3x3 else stride)
        self.conv2 = ConvNormAct(width, width, 3, stride if stride_on_3x3 else 1)
        self.conv3 = ConvNormAct(width, out_chans, 1, act=None)
        self.shortcut = _shortcut(in_chans, out_chans, stride, residual)
        self.act = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        if self.residual:
            out += x if self.shortcut is None else self.shortcut(x)  # in place, as torchvision
        return self.act(out)


class ResNet(ClassifierModel):
    """A network of Table 1: conv1, max pool, conv2_x .. conv5_x, average pool, fc.

    Args:
        depth: 18, 34, 50, 101 or 152 (a column of Table 1).
        residual: False builds the plain network of Sec. 4.1 (no shortcuts).
        stride_on_3x3: bottleneck stride on the 3x3 (v1.5) or on the first 1x1 (paper, v1).
        zero_init_residual: start every block's last BN at gamma = 0, so each residual block
            begins as the identity (Goyal et al. 2017); not in the paper.
    """

    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 1000,
        in_chans: int = 3,
        residual: bool = True,
        stride_on_3x3: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}")
        if zero_init_residual and not residual:
            raise ValueError("zero_init_residual needs shortcuts; a plain network has none")
        kind, blocks_per_stage = DEPTHS[depth]
        # conv1: 7x7, 64, stride 2, then 3x3 max pool, stride 2 (Table 1).
        self.conv1 = ConvNormAct(in_chans, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = 64
        for (name, _, width, stride), n_blocks in zip(STAGES, blocks_per_stage, strict=True):
            blocks: list[nn.Module] = []
            for i in range(n_blocks):
                s = stride if i == 0 else 1
                if kind == "basic":
                    block = BasicBlock(chans, width, s, residual)
                else:
                    block = Bottleneck(chans, width, s, residual, stride_on_3x3)
                blocks.append(block)
                chans = width * block.expansion
            setattr(self, name, nn.Sequential(*blocks))
        self.num_features = chans
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He et al. 2015 initialization, as the paper (Sec. 3.4) and torchvision use.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv2_x(x)
        x = self.conv3_x(x)
        x = self.conv4_x(x)
        return self.conv5_x(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = replace_linear(self.fc, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc


# name -> (depth, residual, stride_on_3x3, params, MACs at 224x224 from cnnlab.analysis.count_macs,
# where those figures come from). MACs: torchvision's meta for v1.5 (1,814.1 / 3,663.8 /
# 4,089.2 / 7,801.4 / 11,513.6 M), the paper's 1.8 / 3.6 / 3.8 / 7.6 / 11.3 G "FLOPs" (Table 1,
# multiply-adds) for v1; the plain nets' figures are our count of Table 1 without the shortcuts
# (the projections of conv3_1, conv4_1, conv5_1: 173,824 params, 19.3 M MACs).
PRESETS: dict[str, tuple[int, bool, bool, int, int, str]] = {
    "resnet18": (18, True, True, 11_689_512, 1_814_073_344, "torchvision meta; paper Table 1"),
    "resnet34": (34, True, True, 21_797_672, 3_663_761_408, "torchvision meta; paper Table 1"),
    "resnet50": (50, True, True, 25_557_032, 4_089_184_256, "torchvision meta (v1.5)"),
    "resnet101": (101, True, True, 44_549_160, 7_801_405_440, "torchvision meta (v1.5)"),
    "resnet152": (152, True, True, 60_192_808, 11_513_626_624, "torchvision meta (v1.5)"),
    "resnet50_v1": (50, True, False, 25_557_032, 3_857_973_248, "paper Table 1 (3.8G)"),
    "resnet101_v1": (101, True, False, 44_549_160, 7_570_194_432, "paper Table 1 (7.6G)"),
    "resnet152_v1": (152, True, False, 60_192_808, 11_282_415_616, "paper Table 1 (11.3G)"),
    "plain18": (18, False, True, 11_515_688, 1_794_805_760, "our count of Table 1, no shortcuts"),
    "plain34": (34, False, True, 21_623_848, 3_644_493_824, "our count; paper Sec. 3.3: 3.6G"),
}


def _build_resnet(num_classes: int, in_chans: int, **kwargs) -> ResNet:
    return ResNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


for _name, (_depth, _residual, _stride_3x3, _params, _macs, _source) in PRESETS.items():
    register_model(
        _name,
        family="resnet",
        paper=PAPER,
        year=2016,
        input_size=224,
        min_input_size=32,
        reference_params=_params,
        reference_macs=_macs,
        source=_source,
        depth=_depth,
        residual=_residual,
        stride_on_3x3=_stride_3x3,
    )(_build_resnet)
