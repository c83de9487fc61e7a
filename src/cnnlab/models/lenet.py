"""LeNet-5 (LeCun et al. 1998) and the two Caffe LeNets that Deep Compression prunes.

* ``lenet5``: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-Based Learning Applied to
  Document Recognition", Proc. IEEE 86(11), 1998, Sec. II.B and Figure 2; the connection
  table is Table I, the squashing function and the initialisation are Appendix A.
* ``lenet5_caffe`` (20-50-500-10) and ``lenet_300_100`` (784-300-100-10): the networks of
  S. Han, H. Mao, W. J. Dally, "Deep Compression", ICLR 2016, Tables 2 and 3, which are
  Caffe's ``examples/mnist/lenet.prototxt`` and the 300-100 multilayer perceptron of the
  1998 paper (Sec. III.C.2) with ReLU.

Switches (all three): ``drop_rate`` (default 0.0: neither paper uses dropout) is a dropout
before the last layer. The heads flatten a fixed-size map, so there is no ``global_pool``
keyword; ``reset_classifier(0, "")`` bypasses the head (``forward`` returns
``forward_features``). ``feature_info`` lists the last map at each stride; ``lenet_300_100``
has no feature maps (an empty list).
"""

from __future__ import annotations

import abc
import itertools
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.layers import check_rate
from cnnlab.models.base import NO_POOL, ClassifierModel, check_head, replace_linear
from cnnlab.registry import register_model

# LeNet-5, Sec. II.B / Figure 2: (layer, maps, kernel) on a 32x32 input.
#   C1 6@28x28 conv 5x5 | S2 6@14x14 subsample 2x2 | C3 16@10x10 conv 5x5 (Table I)
#   S4 16@5x5 subsample | C5 120@1x1 conv 5x5      | F6 84 | output 10 Euclidean RBF units
C1_MAPS, C3_MAPS, C5_MAPS, F6_UNITS, KERNEL = 6, 16, 120, 84, 5

# Table I: the S2 feature maps (rows 0-5) that each C3 feature map (0-15) combines. The first
# six take three contiguous maps, the next six four contiguous, the next three four
# discontinuous, and the last takes all six: 60 connections x 25 weights + 16 biases = 1,516.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip

# Appendix A: f(a) = A tanh(S a) with A = 1.7159 and S = 2/3, so that f(1) = 1 and f(-1) = -1.
TANH_A, TANH_S = 1.7159, 2.0 / 3.0

# Deep Compression's Caffe networks: (conv maps, conv kernel) then hidden fully-connected widths.
LENET5_CAFFE_CONVS: tuple[tuple[int, int], ...] = ((20, 5), (50, 5))
LENET5_CAFFE_HIDDEN = 500
LENET_300_100_HIDDEN: tuple[int, ...] = (300, 100)


class ScaledTanh(nn.Module):
    """The squashing function of Appendix A: ``f(a) = 1.7159 tanh(2a / 3)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TANH_A * torch.tanh(TANH_S * x)


class Subsampling(nn.Module):
    """S2 / S4 of Sec. II.B: per map, the sum of each 2x2 block times a trainable coefficient
    plus a trainable bias (two parameters per map); the squashing follows as a separate layer.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.pool(x) * 4.0  # the sum of the four inputs
        return total * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConnectionTableConv(nn.Module):
    """A convolution whose output map ``j`` sees only the input maps ``table[j]`` (Table I).

    The trainable weights are the table's connections alone (``sum(len(row)) * k * k``
    weights plus one bias per output map). The forward pass scatters them into a dense kernel
    whose unconnected entries are fixed zeros and runs one convolution: on a CPU that is
    several times faster than a grouped convolution per row length. :meth:`macs` counts the
    connections, not the zeros.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...], kernel_size: int) -> None:
        super().__init__()
        self.table = table
        self.in_channels = 1 + max(i for row in table for i in row)
        self.out_channels = len(table)
        self.kernel_size = (kernel_size, kernel_size)
        rows = [j for j, row in enumerate(table) for _ in row]
        cols = [i for row in table for i in row]
        self.weight = nn.Parameter(torch.empty(len(cols), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels))
        self.register_buffer("rows", torch.tensor(rows), persistent=False)
        self.register_buffer("cols", torch.tensor(cols), persistent=False)

    def dense_weight(self) -> torch.Tensor:
        """The (out, in, k, k) kernel with zeros where Table I has no connection."""
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, *self.kernel_size)
        return dense.index_put((self.rows, self.cols), self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)

    def macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Multiply-accumulates of the table's connections (cnnlab.analysis protocol)."""
        return output[:, 0].numel() * self.weight.numel()


class EuclideanRBF(nn.Module):
    """The output layer of Sec. II.B, eq. (7): ``y_i = sum_j (x_j - w_ij)^2``, returned as
    ``-y_i`` so the closest prototype gets the largest logit.

    The prototypes are fixed +-1 codes (the paper draws them as 7x12 bitmaps of the
    characters; here they are random +-1 codes), kept as a buffer: not trained, but saved.
    With logits ``-y``, cross-entropy is the paper's discriminative criterion, eq. (9), with
    the constant ``j`` taken to infinity.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        codes = torch.randint(0, 2, (num_classes, in_features)).float() * 2 - 1
        self.register_buffer("prototypes", codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x.unsqueeze(1) - self.prototypes).pow(2).sum(-1)


class LeNetBase(ClassifierModel):
    """What the three LeNets share: ``forward_features`` runs ``self.features`` (LeNet-300-100
    overrides it), and ``reset_classifier(0, "")`` bypasses the head, so that ``forward``
    returns ``forward_features``' output. The head's modules stay: a later
    ``reset_classifier(n)`` restores it with a fresh last layer."""

    features: nn.Module
    bypass_head: bool = False  # True after reset_classifier(0, ""): forward_head is identity

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh last layer of ``num_classes`` outputs (0: none). ``global_pool=""`` (only
        with 0 classes) bypasses the head; ``None`` keeps the current head, except that
        ``num_classes > 0`` always restores it (the hidden layers kept)."""
        check_head(num_classes, global_pool, NO_POOL)
        self.bypass_head = global_pool == "" or (self.bypass_head and not num_classes)
        self.num_classes = num_classes
        self._replace_last_layer(num_classes)

    @abc.abstractmethod
    def _replace_last_layer(self, num_classes: int) -> None:
        """Put a fresh last layer of ``num_classes`` outputs (0: none) in place."""


class LeNet5(LeNetBase):
    """LeNet-5 as in Sec. II.B and Figure 2 of LeCun et al. 1998 (32x32 input).

    Every layer up to F6 is followed by the scaled tanh (Sec. II.B: "units in layers up to F6
    ... passed through a sigmoid squashing function"; Appendix A). ``head="rbf"`` gives the
    paper's Euclidean RBF output (trainable parameters 60,000, as the paper says);
    ``head="linear"`` (default) a linear layer for cross-entropy training (60,850).

    ``num_features`` is C5's 120 maps, ``head_hidden_size`` F6's 84 units; ``drop_rate``
    (0.0, the paper has no dropout) drops F6's outputs. Feature levels: act1 (6 maps, stride
    1), act3 (16, 2), act5 (120, 4; the output of ``forward_features``).
    """

    fixed_input_size = True

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, head: str = "linear", drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if head not in ("linear", "rbf"):
            raise ValueError(f"head must be 'linear' or 'rbf', got {head!r}")
        self.num_classes = num_classes
        self.num_features = C5_MAPS
        self.head_type = head
        self.features = nn.Sequential()
        self.features.add_module("c1", nn.Conv2d(in_chans, C1_MAPS, KERNEL))
        self.features.add_module("act1", ScaledTanh())
        self.features.add_module("s2", Subsampling(C1_MAPS))
        self.features.add_module("act2", ScaledTanh())
        self.features.add_module("c3", ConnectionTableConv(C3_TABLE, KERNEL))
        self.features.add_module("act3", ScaledTanh())
        self.features.add_module("s4", Subsampling(C3_MAPS))
        self.features.add_module("act4", ScaledTanh())
        self.features.add_module("c5", nn.Conv2d(C3_MAPS, C5_MAPS, KERNEL))
        self.features.add_module("act5", ScaledTanh())
        self.feature_info = [
            {"module": "features.act1", "num_chs": C1_MAPS, "reduction": 1},
            {"module": "features.act3", "num_chs": C3_MAPS, "reduction": 2},
            {"module": "features.act5", "num_chs": C5_MAPS, "reduction": 4},
        ]
        self.f6 = nn.Linear(C5_MAPS, F6_UNITS)
        self.act6 = ScaledTanh()
        self.dropout = nn.Dropout(check_rate("drop_rate", drop_rate))
        self.head = self._make_head(num_classes)
        self._init_weights()

    @property
    def head_hidden_size(self) -> int:
        return F6_UNITS

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:  # no output layer: F6's 84 features
            return nn.Identity()
        if self.head_type == "rbf":
            return EuclideanRBF(F6_UNITS, num_classes)
        return nn.Linear(F6_UNITS, num_classes)

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Appendix A: weights (and biases) uniform in [-2.4 / F, 2.4 / F], F the unit's fan-in.
        for m in self.modules():
            if isinstance(m, ConnectionTableConv):  # each map's fan-in: its row of Table I
                start = 0  # the weights are stored row after row of the table
                for j, row in enumerate(m.table):
                    bound = 2.4 / (len(row) * KERNEL * KERNEL)
                    m.weight[start : start + len(row)].uniform_(-bound, bound)
                    m.bias[j].uniform_(-bound, bound)
                    start += len(row)
                continue
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.Linear):
                fan_in = m.in_features
            elif isinstance(m, Subsampling):
                fan_in = 4
            else:
                continue
            for p in (m.weight, m.bias):
                p.uniform_(-2.4 / fan_in, 2.4 / fan_in)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.bypass_head:
            return x
        x = self.dropout(self.act6(self.f6(x.flatten(1))))
        return x if pre_logits else self.head(x)

    def _replace_last_layer(self, num_classes: int) -> None:
        self.head = self._make_head(num_classes).to(self.weights_device)
        if isinstance(self.head, nn.Linear):
            bound = 2.4 / F6_UNITS
            with torch.no_grad():
                self.head.weight.uniform_(-bound, bound)
                self.head.bias.uniform_(-bound, bound)

    def get_classifier(self) -> nn.Module:
        """The output layer: linear, or the RBF layer whose fixed prototypes do not train."""
        return self.head


def _caffe_xavier_(module: nn.Module) -> None:
    """Caffe's ``xavier`` filler (uniform, scale sqrt(3 / fan_in)) and zero biases, as in
    Caffe's LeNet prototxt files."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.uniform_(-math.sqrt(3 / fan_in), math.sqrt(3 / fan_in))
                m.bias.zero_()


class LeNet5Caffe(LeNetBase):
    """Caffe's LeNet (``examples/mnist/lenet.prototxt``), Deep Compression's "LeNet-5".

    conv 20@5x5, max-pool 2/2, conv 50@5x5, max-pool 2/2, fc 500 + ReLU, fc 10, on 28x28
    inputs; as in the prototxt there is no nonlinearity after the convolutions. 431,080
    parameters, 2.29 M MACs (Deep Compression Table 3: 431K).

    ``num_features`` is conv2's 50 maps, ``head_hidden_size`` fc1's 500 units; ``drop_rate``
    (0.0, the prototxt has no dropout) drops fc1's outputs. Feature levels: conv1 (20 maps,
    stride 1), conv2 (50, 2), pool2 (50, 4; the output of ``forward_features``).
    """

    fixed_input_size = True

    def __init__(self, num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential()
        self.feature_info: list[dict[str, Any]] = []
        chans, side, reduction = in_chans, 28, 1
        for i, (maps, kernel) in enumerate(LENET5_CAFFE_CONVS, start=1):
            self.features.add_module(f"conv{i}", nn.Conv2d(chans, maps, kernel))
            self.feature_info.append(
                {"module": f"features.conv{i}", "num_chs": maps, "reduction": reduction}
            )
            self.features.add_module(f"pool{i}", nn.MaxPool2d(2, 2))
            chans, side, reduction = maps, (side - kernel + 1) // 2, reduction * 2
        last = f"features.pool{len(LENET5_CAFFE_CONVS)}"
        self.feature_info.append({"module": last, "num_chs": chans, "reduction": reduction})
        self.num_features = chans
        self.fc1 = nn.Linear(chans * side * side, LENET5_CAFFE_HIDDEN)
        self.relu1 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(check_rate("drop_rate", drop_rate))
        self.fc2 = nn.Linear(LENET5_CAFFE_HIDDEN, num_classes)
        _caffe_xavier_(self)

    @property
    def head_hidden_size(self) -> int:
        return LENET5_CAFFE_HIDDEN

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.bypass_head:
            return x
        x = self.dropout(self.relu1(self.fc1(x.flatten(1))))
        return x if pre_logits else self.fc2(x)

    def _replace_last_layer(self, num_classes: int) -> None:
        self.fc2 = replace_linear(self.fc2, num_classes).to(self.weights_device)

    def get_classifier(self) -> nn.Module:
        return self.fc2


class LeNet300100(LeNetBase):
    """LeNet-300-100: a 784-300-100-10 perceptron with ReLU (Deep Compression Table 2;
    the 1998 paper, Sec. III.C.2, had the same sizes with sigmoid units).

    There is no convolutional trunk: ``forward_features`` flattens the image, so
    ``num_features`` is ``in_chans * 784`` and ``feature_info`` is empty; the head holds all
    three fully-connected layers (``head_hidden_size`` 100).
    ``drop_rate`` (0.0, none in the paper) drops the 100 hidden units' outputs.
    """

    fixed_input_size = True

    def __init__(self, num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        widths = (in_chans * 28 * 28, *LENET_300_100_HIDDEN)
        self.num_features = widths[0]
        self.feature_info = []  # no feature maps
        self.hidden = nn.Sequential()
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths), start=1):
            self.hidden.add_module(f"fc{i}", nn.Linear(n_in, n_out))
            self.hidden.add_module(f"relu{i}", nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(check_rate("drop_rate", drop_rate))
        self.fc = nn.Linear(widths[-1], num_classes)
        _caffe_xavier_(self)

    @property
    def head_hidden_size(self) -> int:
        return LENET_300_100_HIDDEN[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.bypass_head:
            return x
        x = self.dropout(self.hidden(x))
        return x if pre_logits else self.fc(x)

    def _replace_last_layer(self, num_classes: int) -> None:
        self.fc = replace_linear(self.fc, num_classes).to(self.weights_device)

    def get_classifier(self) -> nn.Module:
        return self.fc


_LECUN98 = (
    "LeCun, Bottou, Bengio, Haffner: Gradient-Based Learning Applied to Document Recognition "
    "(Proc. IEEE 1998)"
)
_HAN16 = "Han, Mao, Dally: Deep Compression (ICLR 2016)"


@register_model(
    "lenet5",
    family="lenet",
    in_chans=1,
    num_classes=10,
    paper=_LECUN98,
    year=1998,
    input_size=32,
    min_input_size=32,
    reference_params=60_850,
    reference_macs=326_520,
    source=(
        "paper Sec. II.B: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164 (= 60,000) plus "
        "the linear head 850; MACs are the 340,908 connections less 14,388 bias and "
        "subsampling connections (not Conv/Linear MACs)"
    ),
)
def lenet5(
    num_classes: int = 10, in_chans: int = 1, head: str = "linear", drop_rate: float = 0.0
) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998, Sec. II.B); ``head`` is "linear" or "rbf"; ``drop_rate``:
    dropout on F6's outputs (none in the paper)."""
    return LeNet5(num_classes, in_chans, head, drop_rate)


@register_model(
    "lenet5_caffe",
    family="lenet",
    in_chans=1,
    num_classes=10,
    paper=_HAN16,
    year=2016,
    input_size=28,
    min_input_size=28,
    reference_params=431_080,
    reference_macs=2_293_000,
    source="Deep Compression Table 3 (431K weights); Caffe examples/mnist/lenet.prototxt",
    train_lr=0.01,  # Caffe's lenet_solver.prototxt; cnnlab's default 0.05 diverges in 7 steps
)
def lenet5_caffe(num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0) -> LeNet5Caffe:
    """Caffe's 20-50-500-10 LeNet (Deep Compression Table 3); ``drop_rate``: dropout on fc1's
    outputs (none in the prototxt)."""
    return LeNet5Caffe(num_classes, in_chans, drop_rate)


@register_model(
    "lenet_300_100",
    family="lenet",
    in_chans=1,
    num_classes=10,
    paper=_HAN16,
    year=2016,
    input_size=28,
    min_input_size=28,
    reference_params=266_610,
    reference_macs=266_200,
    source="Deep Compression Table 2 (267K weights); LeCun et al. 1998 Sec. III.C.2",
)
def lenet_300_100(num_classes: int = 10, in_chans: int = 1, drop_rate: float = 0.0) -> LeNet300100:
    """The 784-300-100-10 perceptron (Deep Compression Table 2); ``drop_rate``: dropout on the
    100 hidden units' outputs (none in the paper)."""
    return LeNet300100(num_classes, in_chans, drop_rate)
