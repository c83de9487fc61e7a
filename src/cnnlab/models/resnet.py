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

``shortcut`` chooses among the three shortcut options of Sec. 3.3 and Sec. 4.1 ("Identity vs.
Projection Shortcuts", Table 3): ``"A"`` zero-padding identity shortcuts (parameter-free), ``"B"``
projections only where the shape changes (the default, torchvision's), ``"C"`` projections
everywhere.

The CIFAR-10 networks of Sec. 4.2 (``resnet20`` .. ``resnet110`` and their plain twins
``plain20`` .. ``plain110``) are ``CIFAR_STAGES`` and ``CIFAR_DEPTHS``: a 3x3 conv with 16
filters, three stages of 2n 3x3 convs (16, 32, 64 filters at 32, 16, 8), global average
pooling and a 10-way fc; 6n+2 weighted layers, option A shortcuts.

Figures (params; MACs at 224x224, or 32x32 for the CIFAR nets, Conv + Linear, batch 1) are
registered with each model and checked by ``tests/test_fidelity.py``;
docs/models/resnet_xception.md prints them.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.layers import ConvNormAct, GlobalPool, check_rate, drop_path_rates, stochastic_depth
from cnnlab.models.base import PooledHeadModel, check_head
from cnnlab.registry import register_model

__all__ = [
    "CIFAR_DEPTHS",
    "CIFAR_PRESETS",
    "CIFAR_STAGES",
    "DEPTHS",
    "PRESETS",
    "SHORTCUTS",
    "STAGES",
    "BasicBlock",
    "Bottleneck",
    "PadShortcut",
    "ResNet",
]

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

# Sec. 4.2, the CIFAR-10 table: (our stage name, output map size at 32x32, filters, stride of
# its first block). The paper names no stages there; we keep Table 1's names. conv1 is
# "3x3 convolutions" with 16 filters and no pooling follows it.
CIFAR_STAGES: tuple[tuple[str, int, int, int], ...] = (
    ("conv2_x", 32, 16, 1),
    ("conv3_x", 16, 32, 2),
    ("conv4_x", 8, 64, 2),
)

# Sec. 4.2 / Table 6: depth 6n+2 -> n, the number of basic blocks (2n 3x3 convs) per stage.
CIFAR_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}

# Sec. 3.3 and Sec. 4.1 "Identity vs. Projection Shortcuts" (Table 3).
SHORTCUTS: dict[str, str] = {
    "A": "zero-padding identity for increasing dimensions (parameter-free)",
    "B": "projections where dimensions change, identity elsewhere",
    "C": "projections everywhere",
}

PAPER = "He et al., Deep Residual Learning for Image Recognition"


class PadShortcut(nn.Module):
    """Option A (Sec. 3.3): "the shortcut still performs identity mapping, with extra zero
    entries padded for increasing dimensions", taken "with a stride of 2" across feature maps
    of two sizes. Subsamples by ``stride`` and appends ``out_chans - in_chans`` zero channels;
    no parameters."""

    macs_free = True  # a strided view and zero padding (cnnlab.analysis counts no MACs)

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.extra = out_chans - in_chans
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra))


def _shortcut(
    in_chans: int, out_chans: int, stride: int, residual: bool, option: str = "B"
) -> nn.Module | None:
    """The shortcut of a block (Sec. 3.3): None (identity) where shapes agree, except that
    option C projects everywhere; where they differ, option A zero-pads (:class:`PadShortcut`)
    and options B and C project with a 1x1 conv (stride) + BN."""
    same = stride == 1 and in_chans == out_chans
    if not residual or (same and option != "C"):
        return None
    if option == "A":
        return PadShortcut(in_chans, out_chans, stride)
    return ConvNormAct(in_chans, out_chans, 1, stride, act=None)


class BasicBlock(nn.Module):
    """Two 3x3 convs, the first with ``stride`` (Figure 2 / Figure 5 left; ResNet-18/34).

    ``residual=False`` drops the shortcut: the block of the plain nets of Sec. 4.1.
    ``shortcut`` is the option of Sec. 3.3: ``"A"``, ``"B"`` or ``"C"``. ``drop_path`` is the
    probability that training drops the residual branch (stochastic depth, Huang et al. 2016).
    """

    expansion = 1

    def __init__(
        self,
        in_chans: int,
        width: int,
        stride: int = 1,
        residual: bool = True,
        shortcut: str = "B",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.residual, self.drop_path = residual, drop_path
        self.conv1 = ConvNormAct(in_chans, width, 3, stride)
        self.conv2 = ConvNormAct(width, width, 3, act=None)
        # Registered after the body, as torchvision does, so weights convert by position.
        self.shortcut = _shortcut(in_chans, width, stride, residual, shortcut)
        self.act = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv2.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = stochastic_depth(self.conv2(self.conv1(x)), self.drop_path, self.training)
        if self.residual:
            out += x if self.shortcut is None else self.shortcut(x)  # in place, as torchvision
        return self.act(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (Sec. 4.1, Figure 5 right; ResNet-50/101/152).

    ``stride_on_3x3=True`` is v1.5 (torchvision); ``False`` puts the stride on the first 1x1
    conv as in the paper. ``shortcut`` is the option of Sec. 3.3: ``"A"``, ``"B"`` or ``"C"``;
    ``drop_path`` as in :class:`BasicBlock`.
    """

    expansion = 4

    def __init__(
        self,
        in_chans: int,
        width: int,
        stride: int = 1,
        residual: bool = True,
        stride_on_3x3: bool = True,
        shortcut: str = "B",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        out_chans = width * self.expansion
        self.residual, self.drop_path = residual, drop_path
        self.conv1 = ConvNormAct(in_chans, width, 1, 1 if stride_on_3x3 else stride)
        self.conv2 = ConvNormAct(width, width, 3, stride if stride_on_3x3 else 1)
        self.conv3 = ConvNormAct(width, out_chans, 1, act=None)
        self.shortcut = _shortcut(in_chans, out_chans, stride, residual, shortcut)
        self.act = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        out = stochastic_depth(out, self.drop_path, self.training)
        if self.residual:
            out += x if self.shortcut is None else self.shortcut(x)  # in place, as torchvision
        return self.act(out)


def _check_options(
    depth: int, residual: bool, shortcut: str, zero_init_residual: bool, drop_path_rate: float
) -> None:
    """Refuse a depth of neither table, an unknown shortcut option, or options a plain net
    cannot have."""
    if depth not in DEPTHS and depth not in CIFAR_DEPTHS:
        raise ValueError(
            f"ResNet depth must be one of {sorted(DEPTHS)} (ImageNet, Table 1) or "
            f"{sorted(CIFAR_DEPTHS)} (CIFAR-10, Sec. 4.2), got {depth!r}"
        )
    if shortcut not in SHORTCUTS:
        raise ValueError(
            f"shortcut must be one of {', '.join(map(repr, SHORTCUTS))} (Sec. 3.3), "
            f"got {shortcut!r}"
        )
    for option, needs in (
        (shortcut != "B", f"shortcut={shortcut!r}"),
        (zero_init_residual, "zero_init_residual"),
        (check_rate("drop_path_rate", drop_path_rate) > 0, "drop_path_rate"),
    ):
        if option and not residual:
            raise ValueError(f"{needs} needs shortcuts; a plain network has none")


def _stage(
    kind: str, chans: int, width: int, stride: int, drop_paths: list[float], **options
) -> tuple[nn.Sequential, int]:
    """One block per ``drop_paths`` entry, the first with ``stride`` (conv3_1, conv4_1, ...
    downsample, Table 1 caption and Sec. 4.2); returns the stage and its output channels.
    ``options``: ``residual``, ``shortcut`` and, for bottlenecks, ``stride_on_3x3``."""
    blocks: list[nn.Module] = []
    for i, drop_path in enumerate(drop_paths):
        s = stride if i == 0 else 1
        if kind == "basic":
            options.pop("stride_on_3x3", None)
            block: nn.Module = BasicBlock(chans, width, s, drop_path=drop_path, **options)
        else:
            block = Bottleneck(chans, width, s, drop_path=drop_path, **options)
        blocks.append(block)
        chans = width * block.expansion
    return nn.Sequential(*blocks), chans


class ResNet(PooledHeadModel):
    """A network of Table 1 or of Sec. 4.2, chosen by ``depth``.

    Table 1 (ImageNet): conv1 (7x7/2, 64), a 3x3/2 max pool, conv2_x .. conv5_x, average pool,
    fc. Sec. 4.2 (CIFAR-10): conv1 (3x3, 16), conv2_x .. conv4_x of n basic blocks each,
    average pool, fc. One class serves both: they differ only in the stem and the stage
    table; blocks, shortcuts, initialisation and head are the same.

    Args:
        depth: 18, 34, 50, 101 or 152 (a column of Table 1), or 20, 32, 44, 56, 110 (6n+2
            layers, Sec. 4.2).
        residual: False builds the plain network of Sec. 4.1 (no shortcuts).
        stride_on_3x3: bottleneck stride on the 3x3 (v1.5) or on the first 1x1 (paper, v1).
        zero_init_residual: start every block's last BN at gamma = 0, so each residual block
            begins as the identity (Goyal et al. 2017); not in the paper.
        shortcut: ``"A"``, ``"B"`` or ``"C"``, the options of Sec. 3.3 / Table 3 (``SHORTCUTS``).
        drop_rate: dropout before the fc (the paper has none).
        drop_path_rate: stochastic depth (Huang et al. 2016, not in the paper): the last block
            drops its residual branch with this probability, earlier ones linearly less.
        global_pool: ``"avg"`` (the paper's), ``"max"``, or ``""`` with ``num_classes=0``.
    """

    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 1000,
        in_chans: int = 3,
        residual: bool = True,
        stride_on_3x3: bool = True,
        zero_init_residual: bool = False,
        shortcut: str = "B",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        _check_options(depth, residual, shortcut, zero_init_residual, drop_path_rate)
        if depth in DEPTHS:
            kind, blocks_per_stage = DEPTHS[depth]
            stages, stem = STAGES, ("conv1", "maxpool")
            # conv1: 7x7, 64, stride 2, then 3x3 max pool, stride 2 (Table 1).
            self.conv1 = ConvNormAct(in_chans, 64, 7, 2)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.feature_info = [{"module": "conv1", "num_chs": 64, "reduction": 2}]
        else:
            kind, stages, stem = "basic", CIFAR_STAGES, ("conv1",)
            blocks_per_stage = (CIFAR_DEPTHS[depth],) * len(stages)
            # "The first layer is 3x3 convolutions" with 16 filters (Sec. 4.2); no pooling.
            self.conv1 = ConvNormAct(in_chans, 16, 3)
            self.feature_info = []
        self.trunk = (*stem, *(s[0] for s in stages))  # what forward_features runs, in order
        chans = self.conv1.conv.out_channels
        rates = iter(drop_path_rates(drop_path_rate, sum(blocks_per_stage)))
        reduction = self.feature_info[0]["reduction"] * 2 if self.feature_info else 1
        options = {"residual": residual, "stride_on_3x3": stride_on_3x3, "shortcut": shortcut}
        for (name, _, width, stride), n in zip(stages, blocks_per_stage, strict=True):
            drop_paths = [next(rates) for _ in range(n)]
            stage, chans = _stage(kind, chans, width, stride, drop_paths, **options)
            setattr(self, name, stage)
            reduction *= stride
            self.feature_info.append({"module": name, "num_chs": chans, "reduction": reduction})
        self.num_features = chans
        check_head(num_classes, global_pool)
        self.global_pool = GlobalPool(global_pool)
        self.dropout = nn.Dropout(check_rate("drop_rate", drop_rate))
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
        for name in self.trunk:
            x = getattr(self, name)(x)
        return x


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


# Sec. 4.2 / Table 6, the CIFAR-10 networks: name -> (depth 6n+2, residual, params, MACs at
# 32x32 from cnnlab.analysis.count_macs). Both are our exact counts: params 97,216 n - 21,926
# (derived in docs/models/resnet_xception.md), which round to Table 6's 0.27M, 0.46M, 0.66M,
# 0.85M and 1.7M; MACs 14,155,776 n - 1,916,288 (the paper gives none). The plain twins
# (Sec. 4.2, Figure 6 left) have the same figures: option A shortcuts have no parameters.
CIFAR_PRESETS: dict[str, tuple[int, bool, int, int]] = {
    "resnet20": (20, True, 269_722, 40_551_040),
    "resnet32": (32, True, 464_154, 68_862_592),
    "resnet44": (44, True, 658_586, 97_174_144),
    "resnet56": (56, True, 853_018, 125_485_696),
    "resnet110": (110, True, 1_727_962, 252_887_680),
    "plain20": (20, False, 269_722, 40_551_040),
    "plain32": (32, False, 464_154, 68_862_592),
    "plain44": (44, False, 658_586, 97_174_144),
    "plain56": (56, False, 853_018, 125_485_696),
    "plain110": (110, False, 1_727_962, 252_887_680),
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

# Sec. 4.2: "we use identity shortcuts in all cases (i.e., option A)"; the plain twins have none.
# Total stride 4, so 4x4 inputs reach conv4_x at 1x1 (the ImageNet nets' 32 at stride 32).
for _name, (_depth, _residual, _params, _macs) in CIFAR_PRESETS.items():
    register_model(
        _name,
        family="resnet",
        paper=PAPER,
        year=2016,
        input_size=32,
        num_classes=10,
        min_input_size=4,
        reference_params=_params,
        reference_macs=_macs,
        source="our count of Sec. 4.2; params round to paper Table 6",
        depth=_depth,
        residual=_residual,
        **({"shortcut": "A"} if _residual else {}),
    )(_build_resnet)
