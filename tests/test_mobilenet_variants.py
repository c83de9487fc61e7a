"""MobileNetV2's two switches (Sandler et al. 2018): the resolution multiplier ``rho``
(Sec. 4, Figure 5) and the linear bottleneck (Sec. 3.2, the Sec. 6.4 ablation)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis import count_macs
from cnnlab.layers import InvertedResidual

# name -> (alpha, native side, MACs); MACs from `cnnlab models 'mobilenet_v2*' --json`.
RHO_PRESETS = {
    "mobilenet_v2_100_192": (1.0, 192, 221_316_608),
    "mobilenet_v2_100_160": (1.0, 160, 154_083_200),
    "mobilenet_v2_100_128": (1.0, 128, 99_074_048),
    "mobilenet_v2_100_96": (1.0, 96, 56_289_152),
    "mobilenet_v2_035_96": (0.35, 96, 11_934_128),
}
# TF-slim's checkpoint table (millions of MACs, rounded), for the width 1.0 rows.
TF_SLIM_MMACS = {192: 221, 160: 154, 128: 99, 96: 56}


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return cnnlab.create_model(name, **kwargs)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(RHO_PRESETS))
def test_rho_preset_native_size_and_macs(name):
    alpha, side, macs = RHO_PRESETS[name]
    model = _meta(name)
    assert model.input_size == (3, side, side)
    assert cnnlab.model_info(name)["input_size"] == (3, side, side)
    assert count_macs(model, model.input_size) == macs
    assert cnnlab.model_info(name)["reference_macs"] == macs
    # The preset is the builder with alpha and rho = side / 224, nothing else.
    built = _meta("mobilenet_v2", alpha=alpha, rho=side / 224)
    assert built.input_size == model.input_size
    assert count_macs(built, built.input_size) == macs


@pytest.mark.parametrize("side", sorted(TF_SLIM_MMACS))
def test_width_one_macs_round_to_the_published_table(side):
    model = _meta("mobilenet_v2", rho=side / 224)
    assert round(count_macs(model, model.input_size) / 1e6) == TF_SLIM_MMACS[side]


def test_macs_scale_with_the_area_except_the_classifier():
    """Every map side is a multiple of 32 at these sizes, so conv MACs scale by rho^2."""
    fc = 1280 * 1000
    full = count_macs(_meta("mobilenet_v2"), (3, 224, 224)) - fc
    small = RHO_PRESETS["mobilenet_v2_100_96"][2] - fc
    assert small * 224**2 == full * 96**2


@pytest.mark.parametrize(("alpha", "rho"), [(1.0, 96 / 224), (0.35, 96 / 224), (1.4, 0.5)])
def test_rho_leaves_the_parameters_alone(alpha, rho):
    plain = _meta("mobilenet_v2", alpha=alpha)
    scaled = _meta("mobilenet_v2", alpha=alpha, rho=rho)
    assert _params(scaled) == _params(plain)
    assert [k for k, _ in scaled.named_parameters()] == [k for k, _ in plain.named_parameters()]


def test_rho_preset_runs_at_its_native_size():
    model = cnnlab.create_model("mobilenet_v2_035_96", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *model.input_size)).shape == (2, 10)


@pytest.mark.parametrize("rho", [0, -0.5, 1.01, 2, math.nan, math.inf, True, "0.5", None, 0.1])
def test_bad_rho_is_a_value_error(rho):
    with pytest.raises(ValueError, match="rho"):
        cnnlab.create_model("mobilenet_v2", rho=rho)


def _projections(model: nn.Module) -> list[nn.Module]:
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17  # Table 2: n = 1 + 2 + 3 + 4 + 3 + 3 + 1
    return [block.conv[-1] for block in blocks]


def test_default_projection_is_linear():
    for projection in _projections(_meta("mobilenet_v2")):
        assert not hasattr(projection, "act")
        assert isinstance(projection[-1], nn.BatchNorm2d)


def test_non_linear_bottleneck_puts_relu6_after_every_projection():
    for projection in _projections(_meta("mobilenet_v2", linear_bottleneck=False)):
        assert isinstance(projection.act, nn.ReLU6)
        assert projection[-1] is projection.act
        assert isinstance(projection[-2], nn.BatchNorm2d)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v2_035_96"])
def test_non_linear_bottleneck_adds_no_parameter(name):
    linear = _meta(name)
    non_linear = _meta(name, linear_bottleneck=False)
    assert _params(non_linear) == _params(linear)
    assert list(non_linear.state_dict()) == list(linear.state_dict())
    assert count_macs(non_linear, non_linear.input_size) == count_macs(linear, linear.input_size)


def test_non_linear_bottleneck_changes_the_outputs():
    torch.manual_seed(0)
    linear = cnnlab.create_model("mobilenet_v2_035_96", num_classes=10).eval()
    for bn in linear.modules():  # as if trained: the fresh BNs pass a near-constant signal
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.normal_(bn.bias, 0.0, 0.5)
    non_linear = cnnlab.create_model("mobilenet_v2_035_96", num_classes=10, linear_bottleneck=False)
    non_linear.load_state_dict(linear.state_dict())
    non_linear.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        a, b = linear(x), non_linear(x)
        # Same weights, so the difference is the ReLU6 after the projections alone.
        assert torch.equal(linear.stem(x), non_linear.stem(x))
    assert not torch.allclose(a, b)
    assert (non_linear.blocks[0](non_linear.stem(x)) >= 0).all()


def test_linear_bottleneck_must_be_a_bool():
    with pytest.raises(ValueError, match="linear_bottleneck"):
        cnnlab.create_model("mobilenet_v2", linear_bottleneck="no")


def test_block_switch_is_shared():
    """The option lives on the shared block; its default is the linear projection."""
    block = InvertedResidual(8, 8, 1, 6, linear_bottleneck=False)
    assert isinstance(block.conv[-1].act, nn.ReLU6)
    assert not hasattr(InvertedResidual(8, 8, 1, 6).conv[-1], "act")
