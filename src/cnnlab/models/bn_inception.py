"""BN-Inception (Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training
by Reducing Internal Covariate Shift"): the Inception variant of Sec. 4.1 and Figure 5.

Changes to GoogLeNet (the appendix's list to Figure 5, and Sec. 4.2.1), all built here:

- every 5x5 convolution becomes two consecutive 3x3 convolutions (the "double #3x3" columns);
- three inception modules at 28x28 (3a, 3b, 3c) instead of two;
- inside the modules the pooling branch is sometimes an average, sometimes a max pool
  (the "pool + proj" column);
- no pooling layers between modules: modules 3c and 4e reduce the grid themselves, with
  stride-2 convolutions and a stride-2 max pool and no 1x1 branch (#1x1 = 0, "pass through":
  the pooled input is concatenated without a projection);
- the first convolution is separable, with depth multiplier 8 (depthwise 7x7/2 into 8
  channels per input channel, then 1x1 to 64);
- batch normalisation on every convolution, before its ReLU (Sec. 3.2: the conv bias is
  dropped, BN's beta replaces it); no local response normalisation and no dropout
  (Sec. 4.2.1, "Remove Local Response Normalization", "Remove Dropout");
- no auxiliary classifiers (the paper describes none); the one fully connected layer is the
  classifier after the 7x7 average pool.

The paper does not give BN's epsilon, the average pool's padding rule or the initialisation:
we use PyTorch's BN defaults, average pools that do not count the padding (the "same" pools
of the DistBelief/TensorFlow lineage) and He initialisation.

Any input from 32x32 works: padded stride-2 layers keep ceil(n / 2), and the head pools
adaptively (the paper's 7x7 average pool at 224x224).

Switches (timm's names): ``drop_rate`` (0.0: Sec. 4.2.1 removes GoogLeNet's dropout) and
``global_pool`` (``"avg"``, the paper's, ``"max"``, or ``""`` with ``num_classes=0``); no
``drop_path_rate``, since the network has no residual connections. ``feature_info`` lists the
last map at each stride: conv1 (2), conv3 (4), inception 3b (8; 3c has stride 2), 4d (16; 4e
has stride 2) and 5b (32, ``forward_features``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from cnnlab.layers import ConvNormAct, GlobalPool, check_rate
from cnnlab.models.base import (
    NoClassifier,
    PooledHeadModel,
    check_head,
    replace_linear,
)
from cnnlab.registry import register_model

__all__ = ["FIGURE_5", "BNInception", "InceptionBN", "Row"]


class Row(NamedTuple):
    """One inception row of Figure 5."""

    name: str
    stride: int
    c1x1: int  # 0: no 1x1 branch (the stride-2 modules)
    c3x3_reduce: int
    c3x3: int
    d3x3_reduce: int
    d3x3: int  # width of both 3x3 convolutions of the double branch
    pool: str  # "avg" or "max", 3x3 with the module's stride
    pool_proj: int  # 0: pass through (the pooled input, no projection)


# Figure 5, from the first inception module down (the stem is written out in BNInception):
#   name  stride #1x1 #3x3red #3x3 dbl#3x3red dbl#3x3 pool  proj
FIGURE_5 = (
    Row("3a", 1, 64, 64, 64, 64, 96, "avg", 32),
    Row("3b", 1, 64, 64, 96, 64, 96, "avg", 64),
    Row("3c", 2, 0, 128, 160, 64, 96, "max", 0),
    Row("4a", 1, 224, 64, 96, 96, 128, "avg", 128),
    Row("4b", 1, 192, 96, 128, 96, 128, "avg", 128),
    Row("4c", 1, 160, 128, 160, 128, 160, "avg", 128),
    Row("4d", 1, 96, 128, 192, 160, 192, "avg", 128),
    Row("4e", 2, 0, 128, 192, 192, 256, "max", 0),
    Row("5a", 1, 352, 192, 320, 160, 224, "avg", 128),
    Row("5b", 1, 352, 192, 320, 192, 224, "max", 128),
)
DEPTH_MULTIPLIER = 8  # appendix: the first convolution is separable with depth multiplier 8

# The last map at each cumulative stride (module, stride), shallow to deep: conv1 (112x112 at
# 224), conv3 before the second max pool (56), then the module before each stride-2 one: 3b
# (28; 3c halves the grid), 4d (14; 4e halves it), and 5b (7, forward_features' output).
FEATURE_LEVELS: tuple[tuple[str, int], ...] = (
    ("stem.conv1", 2),
    ("stem.conv3", 4),
    ("blocks.inception3b", 8),
    ("blocks.inception4d", 16),
    ("blocks.inception5b", 32),
)


class InceptionBN(nn.Module):
    """An inception module of Figure 5: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool (-> 1x1).

    With ``row.stride == 2`` the last conv of each 3x3 branch and the max pool have stride 2,
    there is no 1x1 branch, and the pool branch passes its input through unprojected.
    """

    def __init__(self, in_chans: int, row: Row) -> None:
        super().__init__()
        s = row.stride
        self.branch1 = ConvNormAct(in_chans, row.c1x1, 1) if row.c1x1 else None
        self.branch2 = nn.Sequential(
            ConvNormAct(in_chans, row.c3x3_reduce, 1),
            ConvNormAct(row.c3x3_reduce, row.c3x3, 3, stride=s),
        )
        self.branch3 = nn.Sequential(
            ConvNormAct(in_chans, row.d3x3_reduce, 1),
            ConvNormAct(row.d3x3_reduce, row.d3x3, 3),
            ConvNormAct(row.d3x3, row.d3x3, 3, stride=s),
        )
        pool: nn.Module = (
            nn.MaxPool2d(3, s, padding=1)
            if row.pool == "max"
            else nn.AvgPool2d(3, s, padding=1, count_include_pad=False)
        )
        proj = [ConvNormAct(in_chans, row.pool_proj, 1)] if row.pool_proj else []
        self.branch4 = nn.Sequential(pool, *proj)
        self.out_chans = row.c1x1 + row.c3x3 + row.d3x3 + (row.pool_proj or in_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch2(x), self.branch3(x), self.branch4(x)]
        if self.branch1 is not None:
            branches.insert(0, self.branch1(x))
        return torch.cat(branches, dim=1)


class BNInception(PooledHeadModel):
    """The Inception network of the Batch Normalization paper (Sec. 4.1, Figure 5).

    Args:
        drop_rate: dropout before the fc; 0.0, since Sec. 4.2.1 ("Remove Dropout") drops
            GoogLeNet's 40%.
        global_pool: ``"avg"`` (the paper's 7x7 average pool, Figure 5), ``"max"``, or ``""``
            with ``num_classes=0`` (``forward`` returns the inception (5b) map).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        check_head(num_classes, global_pool)
        self.stem = _stem(in_chans)
        self.blocks = nn.Sequential()
        chans, widths = 192, {"stem.conv1": 64, "stem.conv3": 192}
        for row in FIGURE_5:
            block = InceptionBN(chans, row)
            self.blocks.add_module(f"inception{row.name}", block)
            chans = widths[f"blocks.inception{row.name}"] = block.out_chans
        self.num_features = chans
        self.feature_info = [
            {"module": m, "num_chs": widths[m], "reduction": r} for m, r in FEATURE_LEVELS
        ]
        self.global_pool = GlobalPool(global_pool)  # "avg" = avg pool 7x7/1 at 224x224
        self.dropout = nn.Dropout(check_rate("drop_rate", drop_rate))
        self.fc = replace_linear(NoClassifier(chans), num_classes)  # nn.Linear unless 0 classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def _stem(in_chans: int) -> nn.Sequential:
    """Figure 5, top: separable conv 7x7/2 (BN and ReLU after the pointwise part, as in a
    single separable convolution layer), max pool 3x3/2, conv 1x1 (#3x3 reduce) 64, conv 3x3
    192, max pool 3x3/2."""
    mid = in_chans * DEPTH_MULTIPLIER
    conv1 = OrderedDict(
        depthwise=nn.Conv2d(in_chans, mid, 7, 2, 3, groups=in_chans, bias=False),
        pointwise=nn.Conv2d(mid, 64, 1, bias=False),
        bn=nn.BatchNorm2d(64),
        act=nn.ReLU(inplace=True),
    )
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Sequential(conv1),
            pool1=nn.MaxPool2d(3, 2, padding=1),
            conv2=ConvNormAct(64, 64, 1),
            conv3=ConvNormAct(64, 192, 3),
            pool2=nn.MaxPool2d(3, 2, padding=1),
        )
    )


@register_model(
    "bn_inception",
    family="inception",
    paper="Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by "
    "Reducing Internal Covariate Shift",
    year=2015,
    reference_params=11_278_528,
    reference_macs=1_948_605_440,
    source="count from the paper's Figure 5 table (the text's 13.6M differs: "
    "docs/models/inception.md)",
)
def bn_inception(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> BNInception:
    """BN-Inception as in Figure 5 of the Batch Normalization paper (keywords: BNInception's)."""
    return BNInception(num_classes, in_chans, **kwargs)
