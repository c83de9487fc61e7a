"""cnnlab.analysis: profile, the paper figures it must reproduce, measured memory, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis import count_macs, gradient_norms, measure_memory, profile
from cnnlab.layers import DepthwiseSeparableConv

MIB = 2**20
WITH_REFERENCE = [
    n
    for n in cnnlab.list_models()
    if cnnlab.model_info(n)["reference_params"] or cnnlab.model_info(n)["reference_macs"]
]


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return cnnlab.create_model(name, **kwargs)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


# --- the counting rules -----------------------------------------------------------------


def test_small_cnn_by_hand():
    p = profile(small_cnn(), (3, 16, 16), batch_size=2)
    macs = 2 * (8 * 16 * 16 * 3 * 9 + 16 * 8 * 8 * 8 * 9 + 10 * 16)
    assert p.macs == macs and p.flops == 2 * macs
    # input, conv1, bn (not in place), pool, conv2, avgpool (8x8 -> 1x1), linear; ReLUs in place
    per_image = 3 * 256 + 8 * 256 + 8 * 256 + 8 * 64 + 16 * 64 + 16 + 10
    assert p.activations == 2 * per_image
    assert p.forward_bytes == 4 * p.activations
    assert p.params == p.trainable_params == 216 + 16 + 1168 + 170
    assert p.param_bytes == 4 * p.params and p.buffer_bytes == 4 * (8 + 8) + 8
    grads = 4 * p.trainable_params
    resident = p.forward_bytes + p.param_bytes + p.buffer_bytes + grads
    assert p.training_bytes == {"sgd_momentum": resident + grads, "adam": resident + 2 * grads}
    assert p.uncounted == {}
    assert set(p.to_dict()) >= {
        "params", "trainable_params", "macs", "flops", "activations", "forward_bytes",
        "training_bytes", "param_bytes", "layers", "uncounted",
    }  # fmt: skip


def test_in_place_and_views_add_no_activations():
    x_elems = 3 * 8 * 8
    relu_out = profile(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), (3, 8, 8))
    relu_in_place = profile(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True)), (3, 8, 8))
    assert relu_in_place.activations == x_elems + 256
    assert relu_out.activations == x_elems + 2 * 256
    views = profile(nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Identity()), (3, 8, 8))
    assert views.activations == x_elems


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_functional_ops_are_credited_to_their_module():
    p = profile(nn.Sequential(Residual()), (4, 5, 5))
    rows = {r.name: r for r in p.layers}
    assert rows["0.conv"].activations == 100
    assert rows["0"].activations == 200  # the conv output and the sum
    assert p.activations == 100 + 200


class Scale(nn.Module):
    """A layer profile does not know: its own parameter, an elementwise multiply."""

    def __init__(self, chans: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(chans, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class MatmulHead(nn.Module):
    """Its own weight and a matrix product that is not an nn.Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


def test_unknown_modules_are_listed_not_dropped():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), Scale(4), Scale(4), nn.AdaptiveAvgPool2d(1), MatmulHead()
    )
    p = profile(model, (3, 6, 6))
    assert p.uncounted == {"MatmulHead": 1, "Scale": 2}
    assert p.macs == 4 * 36 * 3  # the conv only: what could be counted
    assert p.params == 16 + 4 + 4 + 28  # every parameter is still counted


def test_profile_leaves_the_model_alone():
    model = small_cnn().train()
    before = [t.clone() for t in model.state_dict().values()]
    profile(model, (3, 16, 16))
    assert model.training
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))


def test_bad_input_size():
    with pytest.raises(ValueError, match="minimum is 32x32"):
        profile(_meta("vgg16"), (3, 16, 16))
    with pytest.raises(ValueError, match="positive"):
        profile(small_cnn(), (3, 0, 16))
    with pytest.raises(ValueError, match="forward pass failed"):
        profile(small_cnn(), (5, 16, 16))


# --- figures the papers quote -------------------------------------------------------------


def test_vgg16_params_macs_activations():
    p = profile(_meta("vgg16"), (3, 224, 224))
    assert p.params == 138_357_544
    assert round(p.macs / 1e9, 2) == 15.47
    # input + every conv, pool and FC output (ReLU in place): 58.1 MiB in fp32
    assert p.activations == 15_237_608
    assert f"{p.forward_bytes / MIB:.1f}" == "58.1"


def _mobilenet_groups(model: nn.Module, p) -> dict[str, tuple[int, int]]:
    """(MACs, weights) of MobileNetV1 Table 2's rows: first conv, depthwise, 1x1, FC.

    The paper's parameter shares count weights only (no FC bias, no BN): they sum to 100%.
    """
    modules = dict(model.named_modules())
    groups = {"conv": [0, 0], "depthwise": [0, 0], "pointwise": [0, 0], "fc": [0, 0]}
    convs = [r for r in p.layers if r.type == "Conv2d"]
    for r in convs:
        conv = modules[r.name]
        if r is convs[0]:
            kind = "conv"
        else:
            kind = "depthwise" if conv.groups == conv.in_channels > 1 else "pointwise"
            assert kind == "depthwise" or conv.kernel_size == (1, 1)
        groups[kind][0] += r.macs
        groups[kind][1] += conv.weight.numel()
    for r in p.layers:
        if r.type == "Linear":
            groups["fc"][0] += r.macs
            groups["fc"][1] += modules[r.name].weight.numel()
    return {k: (v[0], v[1]) for k, v in groups.items()}


def test_mobilenet_v1_table_2():
    model = _meta("mobilenet_v1")
    p = profile(model, (3, 224, 224))
    groups = _mobilenet_groups(model, p)
    macs = sum(g[0] for g in groups.values())
    params = sum(g[1] for g in groups.values())
    assert macs == p.macs
    shares = {
        k: (round(100 * m / macs, 2), round(100 * n / params, 2)) for k, (m, n) in groups.items()
    }
    # Table 2 prints 1.19% for the first conv, whose column then sums to 99.29%; the count
    # 112*112*32*27 = 10,838,016 mult-adds is 1.91% of 568.7M: the paper transposed two digits.
    paper = {
        "pointwise": (94.86, 74.59),
        "depthwise": (3.06, 1.06),
        "conv": (1.91, 0.02),
        "fc": (0.18, 24.33),
    }
    assert shares == paper


def _conv_only(p) -> tuple[int, int]:
    convs = [r for r in p.layers if r.type == "Conv2d"]
    return sum(r.macs for r in convs), sum(r.params for r in convs)


@pytest.mark.parametrize(
    ("chans", "side", "paper"),
    [(512, 14, (52.3, 0.27)), (384, 14, (29.6, 0.15)), (384, 10, (15.1, 0.15))],
)
def test_mobilenet_v1_table_3(chans, side, paper):
    """14x14x512 -> 512 layer; with alpha = 0.75; then rho = 0.714 (14 -> 10)."""
    separable = _conv_only(profile(DepthwiseSeparableConv(chans, chans), (chans, side, side)))
    assert round(separable[0] / 1e6, 1) == paper[0]
    assert round(separable[1] / 1e6, 2) == paper[1]
    standard = profile(nn.Conv2d(512, 512, 3, padding=1, bias=False), (512, 14, 14))
    assert (round(standard.macs / 1e6), round(standard.params / 1e6, 2)) == (462, 2.36)


@pytest.mark.parametrize(
    ("m", "n", "k", "side"), [(512, 512, 3, 14), (32, 64, 3, 112), (16, 24, 5, 9)]
)
def test_depthwise_separable_cost_ratio(m, n, k, side):
    """MobileNets Sec. 3.1: separable / standard = 1/N + 1/Dk^2, exactly."""
    separable = _conv_only(profile(DepthwiseSeparableConv(m, n, kernel_size=k), (m, side, side)))
    standard = profile(nn.Conv2d(m, n, k, padding=k // 2, bias=False), (m, side, side))
    assert math.isclose(separable[0] / standard.macs, 1 / n + 1 / k**2, rel_tol=1e-12)


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_reference_rows(name):
    """Every reference figure the registry carries (model_info), reproduced by profile."""
    info = cnnlab.model_info(name)
    model = _meta(name)
    p = profile(model, tuple(model.input_size))
    if info["reference_params"]:
        assert p.trainable_params == info["reference_params"]
    if info["reference_macs"]:
        assert abs(p.macs - info["reference_macs"]) / info["reference_macs"] < 0.005
        assert p.macs == count_macs(model, tuple(model.input_size))


# --- measured memory ------------------------------------------------------------------


def test_measured_memory_against_the_analytic_figures():
    model = small_cnn()
    p = profile(model, (3, 32, 32), batch_size=4, measure=True)
    held = p.measured["forward_held_bytes"]
    analytic = p.forward_bytes - p.input_bytes  # the input predates the measurement
    # Every counted activation is alive at the end of a recording forward pass; what autograd
    # keeps beyond them (max-pool indices, BN statistics) is less than as much again.
    assert analytic <= held <= 2 * analytic
    assert p.measured["forward_peak_bytes"] >= held
    # A training step ends holding a gradient and a momentum buffer per parameter.
    grads = 4 * p.trainable_params
    assert p.measured["training_peak_bytes"] >= 2 * grads
    measured = measure_memory(model, (3, 32, 32), 4)
    assert measured["forward_held_bytes"] == held


# --- gradient flow --------------------------------------------------------------------


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g))] * n


def test_gradient_norms_layers_and_steps():
    report = gradient_norms(small_cnn(), _batches(), steps=3, lr=0.05)
    assert report.layers == ["0", "4", "8"]
    assert len(report.init) == len(report.final) == 3
    assert all(v > 0 for v in report.init)
    assert len(report.losses) == 4 and len(report.total_norms) == 3
    assert report.losses[-1] < report.losses[0]  # the same batch: SGD must fit it


def test_clipping_bounds_the_update():
    model = small_cnn()
    before = [p.detach().clone() for p in model.parameters()]
    report = gradient_norms(model, _batches(), steps=1, lr=0.1, clip_grad_norm=1e-3)
    assert report.total_norms[0] > 1e-3
    with torch.no_grad():
        moved = torch.sqrt(
            sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
        )
    assert float(moved) <= 0.1 * 1e-3 * 1.0001  # one step moves at most lr x clip


def test_sigmoid_vanishes_where_relu_does_not():
    """A deep stack of sigmoids starves its first layer (the seeds' vanishing gradient)."""

    def deep(act: type[nn.Module]) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = 3 * 16 * 16
        for _ in range(10):
            layers += [nn.Linear(width, 64), act()]
            width = 64
        model = nn.Sequential(*layers, nn.Linear(64, 10))
        for m in model.modules():  # the same He init for both (He et al. 2015)
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        return model

    torch.manual_seed(0)
    sigmoid = gradient_norms(deep(nn.Sigmoid), _batches(1))
    torch.manual_seed(0)
    relu = gradient_norms(deep(nn.ReLU), _batches(1))
    assert sigmoid.init[0] / sigmoid.init[-1] < 1e-3
    assert relu.init[0] / relu.init[-1] > 1e-2


@pytest.mark.parametrize("name", ["alexnet", "googlenet", "resnet18", "ssdlite_mobilenet_v2"])
def test_models_built_and_counted_on_meta_match_real_ones(name: str) -> None:
    """build_on_meta and count_macs skip value-only calls on meta (initialisation, BatchNorm,
    LRN); the shapes and MAC counts must be those of the real model, on the CPU."""
    from cnnlab.registry import build_on_meta

    torch.manual_seed(0)
    real, meta = cnnlab.create_model(name), build_on_meta(name)
    shapes = {k: v.shape for k, v in real.state_dict().items()}
    assert {k: v.shape for k, v in meta.state_dict().items()} == shapes
    assert all(v.is_meta for v in meta.state_dict().values())
    size = tuple(real.input_size)
    assert count_macs(meta, size) == count_macs(real, size, device="cpu") > 0
