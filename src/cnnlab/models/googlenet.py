"""GoogLeNet (Szegedy et al. 2015, "Going deeper with convolutions"), and torchvision's layout.

``googlenet`` is the network of the paper: Table 1 (below as ``TABLE_1``) and Figure 3.
Every convolution has a bias and a ReLU, there is no batch normalisation, the "#5x5" branch
really is 5x5, and local response normalisation (LRN) follows the first max pool and the
3x3 stem convolution (Figure 3). Pools are "S" (same) in Figure 3: 3x3/2 with padding 1.
The head is an average pool 7x7, dropout 40% and a linear layer (Table 1).

Two auxiliary classifiers (Sec. 5) sit on the outputs of inception (4a) and (4d): average
pool 5x5/3, 1x1 conv 128 + ReLU, FC 1024 + ReLU, dropout 70%, linear. They exist for
training only (their losses are added with weight 0.3): in training mode ``forward`` returns
``GoogLeNetOutputs(logits, aux1, aux2)``; in eval mode it returns the logits alone and never
runs them, so inference, ``count_macs`` and export leave them out.

``googlenet_tv`` is torchvision's ``GoogLeNet`` layer for layer, so its weights convert by
position (``cnnlab.interop.from_torchvision``): BN (eps 0.001) after every bias-free conv, no
LRN, a 3x3 conv in the "5x5" branch (a bug kept upstream for its pretrained weights,
pytorch/vision#906), ceil-mode pools without padding, a 2x2 pool before (5a), dropout 20%,
and auxiliary heads that pool adaptively to 4x4. Its output order is ours,
(logits, aux1, aux2), not torchvision's (logits, aux2, aux1).

Both accept any input from 32x32: the main head pools adaptively (the same as the paper's
7x7 average pool at 224x224), and an auxiliary head uses the paper's 5x5/3 pool only where
the map is at least 14x14, then pools adaptively to the 4x4 its FC layer needs (a no-op at
224x224, where the map is 14x14 and the 5x5/3 pool gives 4x4).

Switches (timm's names): ``drop_rate`` (0.4, Table 1's "dropout (40%)"; 0.2 for
``googlenet_tv``), ``aux_drop_rate`` (0.7, Sec. 5), ``aux_logits`` and ``global_pool``
(``"avg"``, Table 1's average pool, ``"max"``, or ``""`` with ``num_classes=0``; the aux heads
keep their own pooling). No ``drop_path_rate``: there are no residual connections.
``feature_info`` lists the last map at each stride: conv1 (2), the map before the second max
pool (4), inception 3b (8), 4e (16) and 5b (32, ``forward_features``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers import ConvNormAct, GlobalPool, check_rate
from cnnlab.models.base import (
    NoClassifier,
    PooledHeadModel,
    check_head,
    replace_linear,
)
from cnnlab.registry import register_model

__all__ = ["TABLE_1", "GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux", "Row"]


class Row(NamedTuple):
    """One inception row of Table 1: the widths of its four branches (Figure 2b)."""

    name: str
    c1x1: int
    c3x3_reduce: int
    c3x3: int
    c5x5_reduce: int
    c5x5: int
    pool_proj: int


MAX_POOL = "max pool 3x3/2"

# Table 1, from the first inception module down (the stem above it is written out in
# GoogLeNet.__init__): name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
TABLE_1: tuple[Row | str, ...] = (
    Row("3a", 64, 96, 128, 16, 32, 32),
    Row("3b", 128, 128, 192, 32, 96, 64),
    MAX_POOL,
    Row("4a", 192, 96, 208, 16, 48, 64),
    Row("4b", 160, 112, 224, 24, 64, 64),
    Row("4c", 128, 128, 256, 24, 64, 64),
    Row("4d", 112, 144, 288, 32, 64, 64),
    Row("4e", 256, 160, 320, 32, 128, 128),
    MAX_POOL,
    Row("5a", 256, 160, 320, 32, 128, 128),
    Row("5b", 384, 192, 384, 48, 128, 128),
)
AUX_AFTER = ("4a", "4d")  # Sec. 5: the auxiliary classifiers' inputs
AUX_POOL_SIDE = 4  # Sec. 5: 5x5/3 average pooling gives 4x4 at (4a) and (4d)

# The last map at each cumulative stride (module, stride), shallow to deep: conv1 (112x112 at
# 224), the stem's last map before its second max pool (56: LRN norm2 in the paper's layout,
# conv3 in torchvision's, which has no LRN), inception 3b, 4e and 5b (28, 14, 7), the modules
# before the max pools of Table 1 and the last one (forward_features' output).
FEATURE_LEVELS: tuple[tuple[str, int], ...] = (
    ("stem.conv1", 2),
    ("stem.norm2", 4),
    ("blocks.inception3b", 8),
    ("blocks.inception4e", 16),
    ("blocks.inception5b", 32),
)

# LRN hyper-parameters: the paper gives none; these are the Caffe reference model's
# (bvlc_googlenet: local_size 5, alpha 1e-4, beta 0.75).
LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}


class GoogLeNetOutputs(NamedTuple):
    """Training-mode output: the main logits first, then the heads on (4a) and (4d)."""

    logits: torch.Tensor
    aux1: torch.Tensor
    aux2: torch.Tensor


class Inception(nn.Module):
    """Figure 2(b): 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | max pool 3x3/1 -> 1x1, concatenated."""

    def __init__(self, in_chans: int, row: Row, batch_norm: bool, kernel_5x5: int = 5) -> None:
        super().__init__()
        conv = _conv_factory(batch_norm)
        self.branch1 = conv(in_chans, row.c1x1, 1)
        self.branch2 = nn.Sequential(
            conv(in_chans, row.c3x3_reduce, 1), conv(row.c3x3_reduce, row.c3x3, 3)
        )
        self.branch3 = nn.Sequential(
            conv(in_chans, row.c5x5_reduce, 1), conv(row.c5x5_reduce, row.c5x5, kernel_5x5)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), conv(in_chans, row.pool_proj, 1)
        )
        self.out_chans = row.c1x1 + row.c3x3 + row.c5x5 + row.pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], dim=1)


@torch.fx.wrap  # a shape-dependent branch: torch.fx records the call instead of tracing it
def aux_pool(x: torch.Tensor, paper_pool: bool) -> torch.Tensor:
    """The paper's 5x5/3 average pool where the map allows 4x4 from it (>= 14x14), then
    adaptive pooling to the 4x4 the FC layer takes (a no-op after the paper's pool at 14x14)."""
    if paper_pool and min(x.shape[-2:]) >= 3 * AUX_POOL_SIDE + 2:
        x = F.avg_pool2d(x, 5, stride=3)
    return F.adaptive_avg_pool2d(x, AUX_POOL_SIDE)


class InceptionAux(nn.Module):
    """Sec. 5: avg pool 5x5/3, 1x1 conv 128 + ReLU, FC 1024 + ReLU, dropout 70%, linear.

    ``paper_pool=False`` is torchvision's head: adaptive average pooling to 4x4 at any size.
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        batch_norm: bool,
        paper_pool: bool = True,
        drop_rate: float = 0.7,
    ) -> None:
        super().__init__()
        self.paper_pool = paper_pool
        self.conv = _conv_factory(batch_norm)(in_chans, 128, 1)
        self.fc1 = nn.Linear(128 * AUX_POOL_SIDE**2, 1024)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(check_rate("aux_drop_rate", drop_rate))
        self.fc2 = replace_linear(NoClassifier(1024), num_classes)  # nn.Linear unless 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(aux_pool(x, self.paper_pool)), 1)
        x = self.dropout(self.act(self.fc1(x)))
        return self.fc2(x)


class GoogLeNet(PooledHeadModel):
    """GoogLeNet, Szegedy et al. 2015: Table 1 and Figure 3 (``torchvision_layout=False``).

    ``torchvision_layout=True`` builds torchvision's variant instead (see the module
    docstring), with its parameters and buffers in torchvision's order. ``transform_input``
    (torchvision layout only) re-normalises ImageNet-normalised input to [-1, 1] as
    torchvision does for its pretrained weights.

    Args:
        aux_logits: build the two auxiliary classifiers of Sec. 5 (training only).
        drop_rate: dropout before the fc, Table 1's 40%.
        aux_drop_rate: dropout in the auxiliary heads, Sec. 5's 70%.
        global_pool: ``"avg"`` (Table 1's 7x7 average pool, adaptive), ``"max"``, or ``""``
            with ``num_classes=0`` (``forward`` returns the inception (5b) map); the
            auxiliary heads keep their own 5x5/3 average pools.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        drop_rate: float = 0.4,
        aux_drop_rate: float = 0.7,
        torchvision_layout: bool = False,
        transform_input: bool = False,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if transform_input and not (torchvision_layout and in_chans == 3):
            raise ValueError("transform_input needs the torchvision layout and 3 input channels")
        check_head(num_classes, global_pool)
        check_rate("aux_drop_rate", aux_drop_rate)  # also without aux heads
        tv = torchvision_layout
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.stem = _stem(in_chans, tv)
        self.blocks, chans = _inception_blocks(tv)
        if aux_logits:
            aux_in = {"4a": 512, "4d": 528}
            self.aux1 = InceptionAux(aux_in["4a"], num_classes, tv, not tv, aux_drop_rate)
            self.aux2 = InceptionAux(aux_in["4d"], num_classes, tv, not tv, aux_drop_rate)
        else:
            self.aux1 = self.aux2 = None
        self.num_features = chans
        self.feature_info = _feature_info(self, tv)
        self.global_pool = GlobalPool(global_pool)  # "avg" = Table 1's avg pool 7x7/1 at 224
        self.dropout = nn.Dropout(check_rate("drop_rate", drop_rate))
        self.fc = replace_linear(NoClassifier(chans), num_classes)  # nn.Linear unless 0 classes
        _init_weights(self, tv)

    def _trunk(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.transform_input:
            x = _transform_input(x)
        x = self.stem(x)
        aux: list[torch.Tensor] = []
        heads = {f"inception{AUX_AFTER[0]}": self.aux1, f"inception{AUX_AFTER[1]}": self.aux2}
        for name, block in self.blocks.items():
            x = block(x)
            if with_aux and name in heads:
                aux.append(heads[name](x))
        return x, aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x, with_aux=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        """Logits; in training mode with aux heads ``GoogLeNetOutputs(logits, aux1, aux2)``."""
        if not (self.training and self.aux_logits):
            return super().forward(x)
        self.check_input_eagerly(x)
        features, (aux1, aux2) = self._trunk(x, with_aux=True)
        return GoogLeNetOutputs(self.forward_head(features), aux1, aux2)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New main classifier and, where present, new last layers of both aux heads;
        ``global_pool`` replaces the main head's pooling only."""
        super().reset_classifier(num_classes, global_pool)
        for head in (self.aux1, self.aux2):
            if head is not None:
                head.fc2 = replace_linear(head.fc2, num_classes)

    def get_classifier(self) -> nn.Module:
        """``fc``, with the last layers of the aux heads where present (all three replaced by
        ``reset_classifier``, so all three train when the backbone is frozen)."""
        if self.aux1 is None or self.aux2 is None:
            return self.fc
        return nn.ModuleList([self.fc, self.aux1.fc2, self.aux2.fc2])


def _feature_info(model: GoogLeNet, tv: bool) -> list[dict[str, int | str]]:
    """``FEATURE_LEVELS`` with their channels. LRN keeps conv3's 192 channels; torchvision's
    stem has no LRN, so its level at stride 4 is conv3 itself."""
    levels = []
    for name, reduction in FEATURE_LEVELS:
        if name == "stem.norm2":
            chans = model.stem.conv3.conv.out_channels
            name = "stem.conv3" if tv else name
        else:
            module = model.get_submodule(name)
            chans = module.out_chans if isinstance(module, Inception) else module.conv.out_channels
        levels.append({"module": name, "num_chs": chans, "reduction": reduction})
    return levels


def _pool(tv: bool, kernel: int = 3) -> nn.MaxPool2d:
    """A max pool of stride 2: Figure 3's "S" pools keep ceil(n / 2); torchvision's are
    ceil-mode, unpadded."""
    if tv:
        return nn.MaxPool2d(kernel, stride=2, ceil_mode=True)
    return nn.MaxPool2d(kernel, stride=2, padding=1)


def _stem(in_chans: int, tv: bool) -> nn.Sequential:
    """Figure 3, bottom: conv 7x7/2, max pool, LRN, conv 1x1 (#3x3 reduce), conv 3x3, LRN,
    max pool. torchvision has no LRN."""
    conv = _conv_factory(batch_norm=tv)
    stem: OrderedDict[str, nn.Module] = OrderedDict()
    stem["conv1"] = conv(in_chans, 64, 7, stride=2)
    stem["pool1"] = _pool(tv)
    if not tv:
        stem["norm1"] = nn.LocalResponseNorm(**LRN)
    stem["conv2"] = conv(64, 64, 1)
    stem["conv3"] = conv(64, 192, 3)
    if not tv:
        stem["norm2"] = nn.LocalResponseNorm(**LRN)
    stem["pool2"] = _pool(tv)
    return nn.Sequential(stem)


def _inception_blocks(tv: bool) -> tuple[nn.ModuleDict, int]:
    """Table 1 from (3a) to (5b): the inception modules and the max pools between them, and
    the channels the last one returns."""
    blocks = nn.ModuleDict()
    chans, pools = 192, 2
    for row in TABLE_1:
        if row == MAX_POOL:
            pools += 1
            # torchvision pools 2x2/2 before (5a), Table 1 3x3/2 (same size at 224).
            blocks[f"pool{pools}"] = _pool(tv, 2 if tv and pools == 4 else 3)
            continue
        block = Inception(chans, row, batch_norm=tv, kernel_5x5=3 if tv else 5)
        blocks[f"inception{row.name}"] = block
        chans = block.out_chans
    return blocks, chans


def _conv_factory(batch_norm: bool):
    """Paper: conv + bias + ReLU. torchvision: conv (no bias) + BN (eps 0.001) + ReLU."""

    def conv(in_chans: int, out_chans: int, kernel: int, stride: int = 1) -> ConvNormAct:
        return ConvNormAct(in_chans, out_chans, kernel, stride, norm=batch_norm, bn_eps=1e-3)

    return conv


def _transform_input(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``transform_input``: ImageNet mean/std normalisation to (x - 0.5) / 0.5."""
    mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return x * (std / 0.5) + (mean - 0.5) / 0.5


def _init_weights(model: nn.Module, torchvision_layout: bool) -> None:
    """torchvision's scheme for its layout; the paper states none, so He init for ours."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and torchvision_layout:
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_model(
    "googlenet",
    family="inception",
    paper="Szegedy et al., Going deeper with convolutions",
    year=2015,
    reference_params=13_378_280,
    reference_macs=1_582_671_872,
    source="count from the paper's Table 1 + Sec. 5 aux heads (6,998,552 without them); "
    "paper: ~6.8M, 1.5G multiply-adds budget",
)
def googlenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    """The paper's GoogLeNet with both auxiliary heads (``aux_logits=False`` drops them)."""
    return GoogLeNet(num_classes, in_chans, **kwargs)


@register_model(
    "googlenet_tv",
    family="inception",
    paper="Szegedy et al., Going deeper with convolutions (torchvision variant)",
    year=2015,
    reference_params=6_624_904,
    reference_macs=1_498_376_192,
    source="torchvision GoogLeNet_Weights.IMAGENET1K_V1 meta: 6,624,904 params, 1.498 GFLOPS",
)
def googlenet_tv(
    num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = False, **kwargs
) -> GoogLeNet:
    """torchvision's GoogLeNet; no aux heads by default (its pretrained ones were never trained)."""
    kwargs.setdefault("drop_rate", 0.2)
    return GoogLeNet(num_classes, in_chans, aux_logits, torchvision_layout=True, **kwargs)
