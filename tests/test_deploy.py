"""cnnlab.deploy: BatchNorm folding on hand-made modules and on every zoo model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.deploy import fuse, fuse_with_report
from cnnlab.layers import ConvNormAct


def _perturb_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters (fresh BNs fold to identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.8)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


class Bottleneck(nn.Module):
    """Conv -> BN pairs in hand-written forward code, plus a residual (ResNet style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class Unfoldable(nn.Module):
    """BNs that must stay: one after a pooling layer, one whose conv output is also reused."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.bn_after_pool = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_shared_input = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_after_pool(self.pool(x))
        y = self.conv(x)
        return self.bn_shared_input(y) + y


class WithAux(nn.Module):
    """An auxiliary head used only in training mode (GoogLeNet style)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ConvNormAct(3, 6)
        self.aux = nn.Sequential(nn.Flatten(), nn.Linear(6 * 8 * 8, 2))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(6 * 8 * 8, 2), nn.BatchNorm1d(2)
        )

    def forward(self, x: torch.Tensor):
        x = self.body(x)
        if self.training:
            return self.head(x), self.aux(x)
        return self.head(x)


def test_folds_sequential_and_custom_forward_code() -> None:
    model = _perturb_batchnorm(nn.Sequential(ConvNormAct(4, 4), Bottleneck(), ConvNormAct(4, 4)))
    x = torch.randn(2, 4, 8, 8)
    fused, report = fuse_with_report(model)
    assert len(report.folded) == 4 and not report.left
    assert _count(fused, nn.BatchNorm2d) == 0
    assert ("1.conv1", "1.bn1") in report.folded
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=0)
    assert _count(model, nn.BatchNorm2d) == 4  # the original is untouched


def test_fold_is_exact_to_float_rounding_with_extreme_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_var.copy_(torch.logspace(-4, 2, 8))
        model[1].running_mean.uniform_(-3, 3)
    model = model.double()  # in float64 the folded model must agree to ~1e-12 relative
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        exact = model(x)
        assert (fuse(model)(x) - exact).abs().max() < 1e-10 * exact.abs().max()


def test_leaves_what_cannot_be_folded_and_says_why() -> None:
    model = _perturb_batchnorm(Unfoldable())
    fused, report = fuse_with_report(model)
    assert not report.folded
    assert "not a convolution" in report.left["bn_after_pool"]
    assert "also used elsewhere" in report.left["bn_shared_input"]
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))


def test_shared_module_is_not_folded() -> None:
    conv, bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
    model = _perturb_batchnorm(nn.Sequential(conv, bn, conv, bn))
    fused, report = fuse_with_report(model)
    assert not report.folded and report.left
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))


def test_drops_dropout_and_unused_aux_head_and_folds_linear_bn() -> None:
    model = _perturb_batchnorm(WithAux())
    fused, report = fuse_with_report(model)
    assert fused.aux is None and "aux" in report.dropped
    assert _count(fused, nn.Dropout) == 0
    assert ("head.2", "head.3") in report.folded and _count(fused, nn.BatchNorm1d) == 0
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))
    assert not fused.training


_BIG = {"resnet101", "resnet101_v1", "resnet152", "resnet152_v1", "vgg19", "vgg19_bn"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in _BIG else n for n in cnnlab.list_models()],
)
def test_every_zoo_model_folds_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = _perturb_batchnorm(cnnlab.create_model(name))
    chans, native, _ = model.input_size
    side = native if getattr(model, "fixed_input_size", False) else max(model.min_input_size, 32)
    fused, report = fuse_with_report(model)
    assert not report.left, report.summary()  # every BN in the zoo follows its conv
    assert _count(fused, nn.modules.batchnorm._BatchNorm) == 0
    assert _count(fused, nn.modules.dropout._DropoutNd) == 0
    x = torch.randn(2, chans, side, side)
    with torch.no_grad():
        expected = model(x)
        diff = (fused(x) - expected).abs().max().item()
    # 1e-4 for logits of order 1; deep random-weight ResNets reach logits in the thousands,
    # where float32 itself only resolves ~1e-7 relative, so the bound scales with them.
    assert diff < 1e-4 * max(1.0, expected.abs().max().item())
