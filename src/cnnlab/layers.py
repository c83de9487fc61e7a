"""The shared building blocks; the model files compose them.

Keep this file to blocks that at least two families use, or that a paper names as a unit
(the depthwise separable convolution of MobileNet Sec. 3.1, the inverted residual of
MobileNetV2 Sec. 3.3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ActLayer = Callable[[], nn.Module]


INITS = ("he", "xavier", "normal")


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every Conv / Linear weight of ``model`` (biases to zero; norms untouched):

    * ``"he"``: He et al., "Delving Deep into Rectifiers" (ICCV 2015, Sec. 2.2): convolutions
      N(0, 2 / fan_out), what ResNet uses; linear layers N(0, 2 / fan_in), the forward case
      (a 10-class head's fan_out is 10: weights of std sqrt(2 / 10), logits of several units);
    * ``"xavier"``: U(+-sqrt(6 / (fan_in + fan_out))), Glorot & Bengio (AISTATS 2010, eq. 16);
    * ``"normal"``: N(0, 0.01^2), the fixed Gaussian of AlexNet (Krizhevsky et al. 2012, Sec. 5)
      and of VGG's shallow nets (Simonyan & Zisserman 2015, Sec. 3.1).
    """
    if scheme not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {scheme!r}")
    for module in model.modules():
        if not isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
            continue
        if scheme == "he":
            mode = "fan_in" if isinstance(module, nn.Linear) else "fan_out"
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
        elif scheme == "xavier":
            nn.init.xavier_uniform_(module.weight)
        else:
            nn.init.normal_(module.weight, 0.0, 0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric padding that keeps the spatial size at stride 1 (odd kernels)."""
    return dilation * (kernel_size - 1) // 2


class ConvNormAct(nn.Sequential):
    """Conv2d, then optional BatchNorm, then optional activation (children conv, bn, act).

    Without a norm layer the convolution has a bias, as in the pre-BN papers (AlexNet, VGG,
    GoogLeNet); with one it has none, since BN's beta makes it redundant (Ioffe & Szegedy 2015,
    Sec. 3.2).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        norm: bool = True,
        act: ActLayer | None = nn.ReLU,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = same_padding(kernel_size)
        self.conv = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=not norm
        )
        if norm:
            self.bn = nn.BatchNorm2d(out_chans, eps=bn_eps, momentum=bn_momentum)
        if act is not None:
            self.act = _make_act(act)


def _make_act(act: ActLayer) -> nn.Module:
    module = act()
    if hasattr(module, "inplace"):
        module.inplace = True
    return module


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise k x k conv (one filter per channel) then pointwise 1x1 conv, each with BN.

    MobileNets (Howard et al. 2017), Sec. 3.1 and Figure 3: cost
    ``Dk^2*M*Df^2 + M*N*Df^2`` instead of ``Dk^2*M*N*Df^2``, a ratio of ``1/N + 1/Dk^2``.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: ActLayer | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(
            in_chans, in_chans, kernel_size, stride, groups=in_chans, act=act
        )
        self.pointwise = ConvNormAct(in_chans, out_chans, 1, act=act)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global pool, reduce, expand, gate."""

    def __init__(
        self,
        chans: int,
        squeeze_chans: int,
        act: ActLayer = nn.SiLU,
        gate: ActLayer = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(chans, squeeze_chans, 1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze_chans, chans, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.expand(self.act(self.reduce(scale))))
        return x * scale


def check_rate(name: str, value: float) -> float:
    """``value`` as a probability in [0, 1), or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """Stochastic depth's linear decay rule (Huang et al. 2016, Sec. 3): block ``i`` of ``N``
    drops its residual branch with probability ``rate * i / N``, the last one with ``rate``."""
    check_rate("drop_path_rate", rate)
    return [rate * (i + 1) / num_blocks for i in range(num_blocks)]


GLOBAL_POOLS = ("avg", "max", "")


class GlobalPool(nn.Module):
    """Global pooling to ``(N, C)``: ``"avg"`` (Lin et al., Network in Network, Sec. 3.2, the
    head of GoogLeNet onwards), ``"max"``, or ``""``: no pooling, the map passes unchanged (timm's
    ``global_pool=""``, for heads that are removed)."""

    macs_free = True  # pooling costs no multiply-accumulates (cnnlab.analysis)

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        if pool_type not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be 'avg', 'max' or '', got {pool_type!r}")
        self.pool_type = pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "avg":
            return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.pool_type == "max":
            return nn.functional.adaptive_max_pool2d(x, 1).flatten(1)
        return x

    def extra_repr(self) -> str:
        return repr(self.pool_type)


def stochastic_depth(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Drop whole residual branches per sample (Huang et al. 2016), scaled to keep the mean."""
    if drop_prob == 0.0 or not training:
        return x
    if drop_prob >= 1.0:
        return torch.zeros_like(x)
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class InvertedResidual(nn.Module):
    """MobileNetV2's block (Sandler et al. 2018, Sec. 3.3, Table 1), also EfficientNet's MBConv.

    1x1 expansion by ``expand_ratio`` (omitted when it is 1), depthwise k x k conv with
    ``stride``, optional squeeze-excite, then a linear 1x1 projection (no activation, the
    "linear bottleneck" of Sec. 3.2). The input is added back when stride is 1 and the widths
    agree. ``linear_bottleneck=False`` puts ``act`` after the projection too (before the
    addition): the non-linear bottleneck of the Sec. 6.4 ablation (Figure 6a).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int,
        expand_ratio: float,
        kernel_size: int = 3,
        act: ActLayer = nn.ReLU6,
        se_ratio: float = 0.0,
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        linear_bottleneck: bool = True,
    ) -> None:
        super().__init__()
        hidden = round(in_chans * expand_ratio)
        if hidden < 1:
            raise ValueError(
                f"expansion {expand_ratio} of {in_chans} channels leaves no hidden channel"
            )
        self.use_residual = stride == 1 and in_chans == out_chans
        self.drop_path = drop_path
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_chans, hidden, 1, act=act, **norm))
        layers.append(
            ConvNormAct(hidden, hidden, kernel_size, stride, groups=hidden, act=act, **norm)
        )
        if se_ratio > 0:
            layers.append(SqueezeExcite(hidden, max(1, int(in_chans * se_ratio)), act=act))
        project_act = None if linear_bottleneck else act
        layers.append(ConvNormAct(hidden, out_chans, 1, act=project_act, **norm))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.use_residual:
            return x + stochastic_depth(out, self.drop_path, self.training)
        return out
