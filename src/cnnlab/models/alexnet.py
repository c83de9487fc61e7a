"""AlexNet: the 2012 two-tower network and torchvision's single-tower variant.

* ``alexnet``: A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with Deep
  Convolutional Neural Networks", NIPS 2012. Architecture Sec. 3.5 and Figure 2; ReLU
  Sec. 3.1; the two GPUs Sec. 3.2 (here ``groups=2`` where a layer sees only its own GPU's
  maps: conv2, conv4, conv5); local response normalisation Sec. 3.3; overlapping pooling
  Sec. 3.4; dropout Sec. 4.2; initialisation Sec. 5. Input 227x227 (the paper's "224" does
  not give its 55x55 first layer).
* ``alexnet_tv``: ``torchvision.models.alexnet``, the single-tower network of A. Krizhevsky,
  "One weird trick for parallelizing convolutional neural networks", arXiv:1404.5997, 2014
  (64-192-384-256-256 filters, no LRN), with torchvision's parameter order.

Switches (both models): ``drop_rate`` (default 0.5, Sec. 4.2) is the p of the two dropout
layers. The head flattens a fixed 6x6 map, so there is no ``global_pool`` keyword;
``reset_classifier(0, "")`` bypasses it (``forward`` returns the pool5 map). ``feature_info``:
the last map at each stride, 4 (conv1), 8 (conv2), 16 (conv5) and 32 (pool5, the output of
``forward_features``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers import check_rate
from cnnlab.models.base import FullyConnectedHeadModel
from cnnlab.registry import register_model


class ConvSpec(NamedTuple):
    """One row of the layer table."""

    name: str
    out_chans: int
    kernel: int
    stride: int
    padding: int
    groups: int  # 2 = two GPU towers, each seeing only its own half of the input maps
    lrn: bool  # response normalisation after the ReLU
    pool: bool  # overlapping max-pool 3x3 stride 2 at the end


# Krizhevsky et al. 2012, Sec. 3.5 and Figure 2. Per-tower widths are half of out_chans
# (48-128-192-192-128 per GPU); conv3 is the one layer that reads both towers' maps.
ALEXNET_2012: tuple[ConvSpec, ...] = (
    ConvSpec("conv1", 96, 11, 4, 0, 1, lrn=True, pool=True),
    ConvSpec("conv2", 256, 5, 1, 2, 2, lrn=True, pool=True),
    ConvSpec("conv3", 384, 3, 1, 1, 1, lrn=False, pool=False),
    ConvSpec("conv4", 384, 3, 1, 1, 2, lrn=False, pool=False),
    ConvSpec("conv5", 256, 3, 1, 1, 2, lrn=False, pool=True),
)

# torchvision.models.alexnet: one tower, no LRN, padding 2 on conv1 for a 224x224 input.
ALEXNET_TV: tuple[ConvSpec, ...] = (
    ConvSpec("conv1", 64, 11, 4, 2, 1, lrn=False, pool=True),
    ConvSpec("conv2", 192, 5, 1, 2, 1, lrn=False, pool=True),
    ConvSpec("conv3", 384, 3, 1, 1, 1, lrn=False, pool=False),
    ConvSpec("conv4", 256, 3, 1, 1, 1, lrn=False, pool=False),
    ConvSpec("conv5", 256, 3, 1, 1, 1, lrn=False, pool=True),
)

FC_UNITS = 4096  # fc6 and fc7 (Sec. 3.5)
POOLED_SIDE = 6  # conv5's pooled map is 6x6 at the native size
DROPOUT = 0.5  # Sec. 4.2

# Sec. 3.3: b = a / (k + alpha * sum_{n neighbours} a^2)^beta with k=2, n=5, alpha=1e-4,
# beta=0.75. torch.nn.LocalResponseNorm divides alpha by n, so it gets n * alpha.
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75


@torch.fx.wrap  # a shape-dependent branch: torch.fx records the call instead of tracing it
def pad_to_window(x: torch.Tensor, window: int = 3) -> torch.Tensor:
    """``x`` padded with -inf at the bottom / right up to ``window`` x ``window``, if smaller."""
    short_h, short_w = max(0, window - x.shape[-2]), max(0, window - x.shape[-1])
    if short_h or short_w:
        x = F.pad(x, (0, short_w, 0, short_h), value=float("-inf"))
    return x


class OverlappingMaxPool(nn.MaxPool2d):
    """Max-pool 3x3 stride 2 (Sec. 3.4), that pools a map smaller than its window whole.

    On a map of at least 3x3 it is ``nn.MaxPool2d(3, 2)`` exactly, so the native shapes are
    the paper's (55 -> 27 -> 13 -> 6) and torchvision's. A smaller map (1x1 or 2x2, which
    inputs below ~63 px produce) is padded with -inf to the window, giving one output instead
    of an error; this lets the network take 32x32 images. ``ceil_mode`` alone would not do:
    it still fails on a 1x1 map.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_to_window(x))


def _features(
    table: tuple[ConvSpec, ...], in_chans: int
) -> tuple[nn.Sequential, list[dict[str, Any]]]:
    """The convolutional trunk of a layer table and its feature levels: the last map at each
    cumulative stride (the layer before each pool) and the last pool, the trunk's output."""
    features, info = nn.Sequential(), []
    chans, reduction, last = in_chans, 1, ""
    for i, row in enumerate(table, start=1):
        conv = nn.Conv2d(
            chans, row.out_chans, row.kernel, row.stride, row.padding, groups=row.groups
        )
        features.add_module(row.name, conv)
        features.add_module(f"relu{i}", nn.ReLU(inplace=True))
        chans, reduction, last = row.out_chans, reduction * row.stride, f"relu{i}"
        if row.lrn:
            features.add_module(
                f"norm{i}", nn.LocalResponseNorm(LRN_N, LRN_N * LRN_ALPHA, LRN_BETA, LRN_K)
            )
            last = f"norm{i}"
        if row.pool:
            info.append({"module": f"features.{last}", "num_chs": chans, "reduction": reduction})
            features.add_module(f"pool{i}", OverlappingMaxPool())
            reduction, last = reduction * 2, f"pool{i}"
    info.append({"module": f"features.{last}", "num_chs": chans, "reduction": reduction})
    return features, info


class AlexNet(FullyConnectedHeadModel):
    """The 2012 AlexNet (Krizhevsky et al., Sec. 3.5 and Figure 2), 60,965,224 parameters.

    conv1 96@11x11/4 -> ReLU -> LRN -> pool; conv2 256@5x5 (two towers) -> ReLU -> LRN ->
    pool; conv3 384@3x3; conv4 384@3x3 (towers); conv5 256@3x3 (towers) -> pool; fc6 4096,
    fc7 4096 (ReLU, then dropout 0.5 on their outputs, Sec. 4.2); fc8. An adaptive average
    pool to 6x6 (identity at 227x227) lets inputs down to 32x32 reach fc6. Initialisation as
    in Sec. 5: weights N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere.
    ``drop_rate`` is the p of drop6 and drop7 (0.5, Sec. 4.2); the head is
    :class:`FullyConnectedHeadModel`'s.
    """

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = DROPOUT
    ) -> None:
        super().__init__()
        drop_rate = check_rate("drop_rate", drop_rate)
        self.num_classes = num_classes
        self.features, self.feature_info = _features(ALEXNET_2012, in_chans)
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
        ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
        for name, m in [*self.features.named_children(), *self.classifier.named_children()]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0.0, 0.01)
                m.bias.fill_(1.0 if name in ones else 0.0)

    @torch.no_grad()
    def _init_fc8(self, fc8: nn.Linear) -> None:
        fc8.weight.normal_(0.0, 0.01)  # Sec. 5: N(0, 0.01), fc8's bias 0
        fc8.bias.zero_()


class AlexNetTV(FullyConnectedHeadModel):
    """torchvision's AlexNet (one tower, 64-192-384-256-256, no LRN), 61,100,840 parameters.

    Same layers and parameter order as ``torchvision.models.alexnet`` (dropout before fc6 and
    fc7, as there), and the same outputs wherever torchvision runs; its pools also take the
    maps below 3x3 that inputs under 63 px produce (see :class:`OverlappingMaxPool`).
    PyTorch's default initialisation, as in torchvision. ``drop_rate`` is the p of drop6 and
    drop7 (torchvision's 0.5, after Sec. 4.2 of the 2012 paper); the head is
    :class:`FullyConnectedHeadModel`'s.
    """

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = DROPOUT
    ) -> None:
        super().__init__()
        drop_rate = check_rate("drop_rate", drop_rate)
        self.num_classes = num_classes
        self.features, self.feature_info = _features(ALEXNET_TV, in_chans)
        self.num_features = chans = self.feature_info[-1]["num_chs"]
        self.avgpool = nn.AdaptiveAvgPool2d(POOLED_SIDE)
        self.classifier = nn.Sequential()
        self.classifier.add_module("drop6", nn.Dropout(drop_rate))
        self.classifier.add_module("fc6", nn.Linear(chans * POOLED_SIDE**2, FC_UNITS))
        self.classifier.add_module("relu6", nn.ReLU(inplace=True))
        self.classifier.add_module("drop7", nn.Dropout(drop_rate))
        self.classifier.add_module("fc7", nn.Linear(FC_UNITS, FC_UNITS))
        self.classifier.add_module("relu7", nn.ReLU(inplace=True))
        self.classifier.add_module("fc8", nn.Linear(FC_UNITS, num_classes))


_KRIZHEVSKY12 = (
    "Krizhevsky, Sutskever, Hinton: ImageNet Classification with Deep Convolutional "
    "Neural Networks (NIPS 2012)"
)


@register_model(
    "alexnet",
    family="alexnet",
    paper=_KRIZHEVSKY12,
    year=2012,
    input_size=227,
    min_input_size=32,
    reference_params=60_965_224,
    reference_macs=724_406_816,
    source=(
        "paper Sec. 3.5 and Figure 2, counted layer by layer; MobileNet paper Table 9 "
        "(60M params, 720M mult-adds)"
    ),
    train_lr=0.01,  # paper Sec. 5; cnnlab's default 0.05 diverges within 12 steps
)
def alexnet(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = DROPOUT) -> AlexNet:
    """The 2012 two-tower AlexNet with LRN (Krizhevsky et al. 2012, Sec. 3.5); ``drop_rate``:
    dropout after fc6 and fc7 (0.5, Sec. 4.2)."""
    return AlexNet(num_classes, in_chans, drop_rate)


@register_model(
    "alexnet_tv",
    family="alexnet",
    paper="Krizhevsky: One weird trick for parallelizing convolutional neural networks (2014)",
    year=2014,
    input_size=224,
    min_input_size=32,
    reference_params=61_100_840,
    reference_macs=714_188_480,
    source="torchvision AlexNet_Weights.IMAGENET1K_V1 meta (61,100,840 params, 0.71 GFLOPS)",
)
def alexnet_tv(num_classes: int = 1000, in_chans: int = 3, drop_rate: float = DROPOUT) -> AlexNetTV:
    """torchvision's single-tower AlexNet, parameter order as ``torchvision.models.alexnet``;
    ``drop_rate``: dropout before fc6 and fc7 (0.5)."""
    return AlexNetTV(num_classes, in_chans, drop_rate)
