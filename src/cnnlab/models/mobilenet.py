"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018).

MobileNetV1, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv:1704.04861. Table 1 is ``V1_STEM`` and ``V1_BLOCKS`` below: a 3x3
stride-2 convolution, 13 depthwise separable convolutions (Sec. 3.1, Figure 3: depthwise 3x3,
BN, ReLU, pointwise 1x1, BN, ReLU), global average pooling and one fully connected layer. The
width multiplier ``alpha`` (Sec. 3.3) thins every layer to ``int(alpha * channels)``; the
resolution multiplier ``rho`` (Sec. 3.4) sets the native input side to ``round(224 * rho)``.

MobileNetV2, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381.
Table 2 is ``V2_BOTTLENECKS`` below, one ``[t, c, n, s]`` row per sequence of bottlenecks
(Table 1, Sec. 3.3: 1x1 expansion by ``t``, ReLU6, depthwise 3x3, ReLU6, linear 1x1
projection, residual when the shapes agree). Widths follow torchvision (every width scaled by
``alpha`` and rounded to a multiple of 8, the last 1x1 conv kept at 1280 below ``alpha`` 1),
and the parameters are registered in torchvision's order, so
``cnnlab.interop.from_torchvision("mobilenet_v2", sd)`` loads its weights. The resolution
multiplier ``rho`` (Sec. 4, Figure 5: inputs 96 to 224) sets the native input side as in V1;
``linear_bottleneck=False`` adds ReLU6 after every projection (the Sec. 6.4 ablation).

Both follow the zoo's contract (:class:`cnnlab.models.base.ClassifierModel`): ``global_pool``
(``"avg"``, the papers'; ``"max"``; ``""`` with no classifier), ``drop_rate`` (dropout before
the classifier), ``drop_path_rate`` on V2 only (V1 has no residual branch to drop), and
``feature_info``, the last layer at each stride 2, 4, 8, 16, 32, except that V2's stride-16
level is the expansion of "layer 15", where SSDLite attaches (V2 Sec. 6.3).

Every figure in ``docs/models/mobile.md`` comes from the command printed beside it there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cnnlab.layers import (
    ConvNormAct,
    DepthwiseSeparableConv,
    GlobalPool,
    InvertedResidual,
    check_rate,
    drop_path_rates,
)
from cnnlab.models.base import (
    NoClassifier,
    PooledHeadModel,
    check_head,
    last_per_reduction,
)
from cnnlab.registry import register_model

__all__ = [
    "V1_PRESETS",
    "V2_PRESETS",
    "MobileNetV1",
    "MobileNetV2",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
]

# MobileNetV1, Table 1 ("MobileNet Body Architecture"), input 224x224x3.
# Stem: Conv / s2, filter 3x3x3x32.
V1_STEM = (32, 2)  # (output channels, stride)
# Then "Conv dw / s" (3x3 depthwise) followed by "Conv / s1" (1x1 to ``channels``), 13 times.
V1_BLOCKS = [
    # (stride of the depthwise conv, output channels of the pointwise conv)  input of the dw conv
    (1, 64),  # 112x112x32
    (2, 128),  # 112x112x64
    (1, 128),  # 56x56x128
    (2, 256),  # 56x56x128
    (1, 256),  # 28x28x256
    (2, 512),  # 28x28x256
    (1, 512),  # 14x14x512  \
    (1, 512),  # 14x14x512   |
    (1, 512),  # 14x14x512   | "5x" in Table 1
    (1, 512),  # 14x14x512   |
    (1, 512),  # 14x14x512  /
    (2, 1024),  # 14x14x512
    (1, 1024),  # 7x7x1024 (Table 1 prints "s2"; its own 7x7 in and out sizes need s1)
]
# Then Avg Pool 7x7 / s1, FC 1024 x 1000, Softmax.

# MobileNetV2, Table 2, input 224x224x3: conv2d 3x3 32 /2, then the bottleneck rows, then
# conv2d 1x1 1280, avgpool 7x7, conv2d 1x1 k (a fully connected layer).
V2_STEM = 32
V2_BOTTLENECKS = [
    # t (expansion), c (output channels), n (repeats), s (stride of the first)
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
V2_HEAD = 1280

_V1_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``divisor`` or 90%.

    The rounding of the TF-slim MobileNetV2 code that torchvision and Keras copy.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _check_multiplier(name: str, value: float, upper: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value <= 0 or (upper is not None and value > upper):
        bound = f"in (0, {upper:g}]" if upper is not None else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _native_side(rho: float) -> int:
    """The input side ``round(224 * rho)`` of a resolution multiplier ``rho`` in (0, 1]."""
    _check_multiplier("rho", rho, upper=1.0)
    side = round(224 * rho)
    if side < 32:
        raise ValueError(f"rho={rho} gives a {side}x{side} input, below the 32x32 minimum")
    return side


class MobileNetV1(PooledHeadModel):
    """MobileNetV1: a standard 3x3 conv, 13 depthwise separable convs, pool, FC (Table 1).

    ``alpha`` is the width multiplier of Sec. 3.3: layer widths are ``int(alpha * c)`` (as in
    Keras; the paper only writes ``alpha * M``). ``act`` is ``"relu"`` (the paper) or
    ``"relu6"`` (Keras, TF-slim and timm). ``drop_rate`` is dropout before the FC: 0 by
    default, since the paper trains with "less regularization" than large models and names no
    dropout (Sec. 3.2). ``global_pool``: ``"avg"`` (Table 1's "Avg Pool"), ``"max"``, or ``""``
    with ``num_classes=0``. There is no ``drop_path_rate``: no block has a residual branch.
    ``feature_info``: the last layer at each stride, ``blocks.0`` (2) ... ``blocks.12`` (32).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        alpha: float = 1.0,
        act: str = "relu",
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        _check_multiplier("alpha", alpha)
        if act not in _V1_ACTS:
            raise ValueError(f"act must be one of {', '.join(_V1_ACTS)}, got {act!r}")
        check_head(num_classes, global_pool)
        act_layer = _V1_ACTS[act]
        stem_chans, stem_stride = V1_STEM
        chans = _v1_width(alpha, stem_chans)
        self.stem = ConvNormAct(in_chans, chans, 3, stem_stride, act=act_layer)
        layers = [("stem", chans, stem_stride)]
        blocks: list[nn.Module] = []
        for stride, out_chans in V1_BLOCKS:
            out_chans = _v1_width(alpha, out_chans)
            blocks.append(DepthwiseSeparableConv(chans, out_chans, stride, act=act_layer))
            layers.append((f"blocks.{len(blocks) - 1}", out_chans, stride))
            chans = out_chans
        self.blocks = nn.Sequential(*blocks)
        self.num_features = chans
        self.feature_info = last_per_reduction(layers)
        self.global_pool = GlobalPool(global_pool)
        self.dropout = nn.Dropout(check_rate("drop_rate", drop_rate))
        self.fc = _classifier(chans, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def _v1_width(alpha: float, chans: int) -> int:
    """``int(alpha * chans)`` (Sec. 3.3, Keras' rounding); no channel left is a ValueError."""
    thinned = int(alpha * chans)
    if thinned < 1:
        raise ValueError(f"alpha={alpha} thins a {chans}-channel layer to no channels")
    return thinned


def _classifier(chans: int, num_classes: int) -> nn.Module:
    """The FC, or for 0 classes none (:class:`NoClassifier`): ``forward`` gives the features."""
    return nn.Linear(chans, num_classes) if num_classes else NoClassifier(chans)


class MobileNetV2(PooledHeadModel):
    """MobileNetV2: conv, 17 inverted residual bottlenecks, 1x1 conv, pool, FC (Table 2).

    ``alpha`` is the width multiplier (Sec. 6.1, widths rounded to multiples of 8); ``t``,
    when given, replaces the expansion factor of every expanding row of Table 2 (the paper
    keeps one constant rate, 6, in Sec. 4; the first bottleneck keeps ``t = 1``).
    ``linear_bottleneck=False`` puts ReLU6 after every 1x1 projection, the non-linear
    bottleneck that Sec. 6.4 (Figure 6a) compares with the linear one of Sec. 3.2.

    ``drop_rate``: dropout before the FC, 0.2 as torchvision (TF-slim's reference: keep
    probability 0.8); the paper names none. ``drop_path_rate``: stochastic depth (Huang et al.
    2016; not in the paper), the zoo's rule :func:`cnnlab.layers.drop_path_rates` over the 17
    blocks in depth order (block ``i`` of 17, from 1: ``rate * i / 17``); only the 10 blocks
    with a shortcut use theirs. ``global_pool``: ``"avg"`` (Table 2's avgpool), ``"max"``, or
    ``""`` with ``num_classes=0``. ``feature_info``: the last block at strides 2, 4, 8; at 16 the
    expansion of "layer 15" (``blocks.13.conv.0``), where SSDLite attaches (Sec. 6.3); at 32 the
    final 1x1 conv, ``forward_features``' output.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        alpha: float = 1.0,
        t: float | None = None,
        drop_rate: float = 0.2,
        linear_bottleneck: bool = True,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        _check_multiplier("alpha", alpha)
        if not isinstance(linear_bottleneck, bool):
            raise ValueError(f"linear_bottleneck must be True or False, got {linear_bottleneck!r}")
        if t is not None:
            _check_multiplier("t", t)
        check_rate("drop_rate", drop_rate)
        check_head(num_classes, global_pool)
        chans = make_divisible(V2_STEM * alpha)
        self.stem = ConvNormAct(in_chans, chans, 3, 2, act=nn.ReLU6)
        block = {"act": nn.ReLU6, "linear_bottleneck": linear_bottleneck}
        self.blocks, layers = _v2_blocks(chans, alpha, t, drop_path_rate, **block)
        self.num_features = make_divisible(V2_HEAD * max(1.0, alpha))
        self.head = ConvNormAct(layers[-1][1], self.num_features, 1, act=nn.ReLU6)
        layers = [("stem", chans, 2), *layers, ("head", self.num_features, 1)]
        self.feature_info = _ssdlite_level(self.blocks, layers, last_per_reduction(layers))
        self.global_pool = GlobalPool(global_pool)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = _classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _v2_blocks(
    chans: int, alpha: float, t: float | None, drop_path_rate: float, **block: Any
) -> tuple[nn.Sequential, list[tuple[str, int, int]]]:
    """The 17 bottlenecks of Table 2 from ``chans`` input channels, and one
    ``(module, output channels, stride)`` per block."""
    rates = iter(drop_path_rates(drop_path_rate, sum(n for _, _, n, _ in V2_BOTTLENECKS)))
    blocks: list[nn.Module] = []
    layers: list[tuple[str, int, int]] = []
    for row_t, c, n, s in V2_BOTTLENECKS:
        expansion = t if t is not None and row_t != 1 else row_t
        out_chans = make_divisible(c * alpha)
        for i in range(n):
            stride = s if i == 0 else 1
            blocks.append(
                InvertedResidual(
                    chans, out_chans, stride, expansion, drop_path=next(rates), **block
                )
            )
            layers.append((f"blocks.{len(blocks) - 1}", out_chans, stride))
            chans = out_chans
    return nn.Sequential(*blocks), layers


def _ssdlite_level(
    blocks: nn.Sequential, layers: list[tuple[str, int, int]], levels: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``levels`` with the stride-16 one moved to the expansion (1x1 conv, BN, ReLU6) of the
    block that goes from stride 16 to 32: Table 2's "layer 15" (layer 1 is the stem), where
    Sec. 6.3 attaches SSDLite's first layer. With ``t=1`` that block has no expansion and the
    last block at stride 16 stays."""
    reduction = 1
    for module, _, stride in layers:
        if reduction == 16 and stride == 2:
            block = blocks[int(module.split(".")[1])]
            if len(block.conv) == 3:  # expansion, depthwise, projection
                expand = {"module": f"{module}.conv.0", "reduction": 16}
                expand["num_chs"] = block.conv[0].conv.out_channels
                return [expand if lv["reduction"] == 16 else lv for lv in levels]
        reduction *= stride
    return levels


_V1 = {
    "family": "mobilenet",
    "paper": "Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile "
    "Vision Applications, arXiv:1704.04861",
    "year": 2017,
}
_V1_SOURCE = "paper Tables 6-7 (mult-adds, params); Keras trainable count"


def mobilenet_v1(
    num_classes: int = 1000, in_chans: int = 3, rho: float = 1.0, **kwargs: Any
) -> MobileNetV1:
    """:class:`MobileNetV1` (its keywords: ``alpha``, ``act``, ``drop_rate``, ``global_pool``)
    with resolution multiplier ``rho``.

    ``rho`` in (0, 1] sets ``model.input_size`` to ``round(224 * rho)`` pixels a side
    (Sec. 3.4: 0.857 -> 192, 0.714 -> 160, 0.571 -> 128); the layers do not depend on it.
    """
    side = _native_side(rho)
    model = MobileNetV1(num_classes, in_chans, **kwargs)
    model.input_size = (in_chans, side, side)
    return model


_V2 = {
    "family": "mobilenet",
    "paper": "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, "
    "arXiv:1801.04381",
    "year": 2018,
}
# Sec. 4 and Figure 5 run every width at 96-224 px but print no figure per point, so the
# resolution presets carry our count. TF-slim's checkpoint table (which the seed article's
# alpha 0.35 / rho 0.43 row copies) gives 221/154/99/56M MACs for 1.0 at 192/160/128/96 (ours
# round to the same) and 11M for 0.35 at 96 (ours: 11.9M).
_V2_RHO_SOURCE = "our count (paper Figure 5 plots the point, prints no figure)"


def mobilenet_v2(
    num_classes: int = 1000, in_chans: int = 3, rho: float = 1.0, **kwargs: Any
) -> MobileNetV2:
    """:class:`MobileNetV2` (its keywords: ``alpha``, ``t``, ``linear_bottleneck``, the drop
    rates, ``global_pool``; Sec. 3.2, 6.4) with resolution multiplier ``rho``.

    ``rho`` in (0, 1] sets ``model.input_size`` to ``round(224 * rho)`` pixels a side, as for
    V1; Sec. 4 and Figure 5 run every width at 96, 128, 160, 192 and 224 (``rho`` 0.429,
    0.571, 0.714, 0.857, 1). The network is fully convolutional: only the MACs change.
    """
    side = _native_side(rho)
    model = MobileNetV2(num_classes, in_chans, **kwargs)
    model.input_size = (in_chans, side, side)
    return model


# The presets, one row each: name -> (width multiplier alpha, input side, reference params,
# reference MACs, source of the reference figures). The side sets rho = side / 224.
V1_PRESETS: dict[str, tuple[float, int, int, int, str]] = {
    "mobilenet_v1": (1.0, 224, 4_231_976, 568_740_352, _V1_SOURCE),
    "mobilenet_v1_075": (0.75, 224, 2_585_560, 325_400_448, _V1_SOURCE),
    "mobilenet_v1_050": (0.5, 224, 1_331_592, 149_497_088, _V1_SOURCE),
    "mobilenet_v1_025": (0.25, 224, 470_072, 41_030_272, _V1_SOURCE),
    "mobilenet_v1_100_192": (1.0, 192, 4_231_976, 418_121_728, _V1_SOURCE),
    "mobilenet_v1_100_160": (1.0, 160, 4_231_976, 290_675_200, _V1_SOURCE),
    "mobilenet_v1_100_128": (1.0, 128, 4_231_976, 186_400_768, _V1_SOURCE),
}
_TV_COUNT = "torchvision.models.mobilenet_v2(width_mult={}) count (params, count_macs)"
V2_PRESETS: dict[str, tuple[float, int, int, int, str]] = {
    "mobilenet_v2": (1.0, 224, 3_504_872, 300_774_272,
                     "torchvision meta (num_params, _ops 0.301 GMACs); paper Table 6: 3.4M / 300M"),
    "mobilenet_v2_140": (1.4, 224, 6_108_776, 582_195_824,
                         "paper Table 6 (585M mult-adds); every implementation's 6.11M params"),
    "mobilenet_v2_075": (0.75, 224, 2_636_424, 209_069_792, _TV_COUNT.format(0.75)),
    "mobilenet_v2_050": (0.5, 224, 1_968_680, 97_131_840, _TV_COUNT.format(0.5)),
    "mobilenet_v2_035": (0.35, 224, 1_677_128, 59_285_808, _TV_COUNT.format(0.35)),
    "mobilenet_v2_100_192": (1.0, 192, 3_504_872, 221_316_608, _V2_RHO_SOURCE),
    "mobilenet_v2_100_160": (1.0, 160, 3_504_872, 154_083_200, _V2_RHO_SOURCE),
    "mobilenet_v2_100_128": (1.0, 128, 3_504_872, 99_074_048, _V2_RHO_SOURCE),
    "mobilenet_v2_100_96": (1.0, 96, 3_504_872, 56_289_152, _V2_RHO_SOURCE),
    "mobilenet_v2_035_96": (0.35, 96, 1_677_128, 11_934_128, _V2_RHO_SOURCE),
}  # fmt: skip

_TABLES = ((mobilenet_v1, _V1, V1_PRESETS), (mobilenet_v2, _V2, V2_PRESETS))
for _builder, _family, _presets in _TABLES:
    for _name, (_alpha, _side, _params, _macs, _source) in _presets.items():
        register_model(
            _name, **_family, input_size=_side, reference_params=_params, reference_macs=_macs,
            source=_source, alpha=_alpha, rho=_side / 224,
        )(_builder)  # fmt: skip
