"""Weights converted from torchvision / timm give the reference model's outputs."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import cnnlab
from cnnlab.interop import TIMM_NAMES, TORCHVISION_NAMES, from_timm, from_torchvision

# Native-size comparison for one net per family would cost minutes on two cores; the
# conversion is size-independent, so the fast tests use a small input and one slow test
# runs resnet50 at 224.
SIDE = 64
# timm model keyword arguments that make its architecture equal to ours, per cnnlab name.
TIMM_KWARGS: dict[str, dict] = {"xception": {}, "mobilenet_v1": {"act_layer": torch.nn.ReLU}}
# torchvision's GoogLeNet warns unless told which initialisation to use.
TORCHVISION_KWARGS: dict[str, dict] = {"googlenet_tv": {"init_weights": True}}


def _randomise_norms(model: torch.nn.Module) -> None:
    """Random BN statistics and affine terms, so that a mixed-up BN cannot pass unnoticed."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _assert_same_outputs(name: str, theirs: torch.nn.Module, state_dict: dict, side: int) -> None:
    ours = cnnlab.create_model(name).eval()
    ours.load_state_dict(state_dict, strict=True)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert (expected - got).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", sorted(TORCHVISION_NAMES))
def test_from_torchvision(name):
    torch.manual_seed(0)
    builder = getattr(torchvision.models, TORCHVISION_NAMES[name])
    theirs = builder(**TORCHVISION_KWARGS.get(name, {})).eval()
    _randomise_norms(theirs)
    _assert_same_outputs(name, theirs, from_torchvision(name, theirs.state_dict()), SIDE)


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_from_timm(name):
    torch.manual_seed(0)
    theirs = timm.create_model(TIMM_NAMES[name], pretrained=False, **TIMM_KWARGS[name]).eval()
    _randomise_norms(theirs)
    _assert_same_outputs(name, theirs, from_timm(name, theirs.state_dict()), SIDE)


@pytest.mark.slow
def test_from_torchvision_native_size():
    theirs = torchvision.models.resnet50().eval()
    _randomise_norms(theirs)
    _assert_same_outputs("resnet50", theirs, from_torchvision("resnet50", theirs.state_dict()), 224)


def test_state_dict_that_does_not_fit_names_keys_and_shapes():
    other = torchvision.models.resnet34().state_dict()
    with pytest.raises(ValueError, match=r"layer\d\.\d+\..*\(.*\) does not fit|tensors"):
        from_torchvision("resnet18", other)
    wrong = dict(torchvision.models.resnet18().state_dict())
    wrong["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight \(64, 64, 5, 5\) does not fit"):
        from_torchvision("resnet18", wrong)


def test_names_without_counterpart():
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        from_torchvision("googlenet", {})
    with pytest.raises(ValueError, match="no timm counterpart"):
        from_timm("resnet18", {})


def test_num_classes_and_channels_follow_the_state_dict():
    theirs = torchvision.models.resnet18(num_classes=10)
    theirs.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    converted = from_torchvision("resnet18", theirs.state_dict())
    ours = cnnlab.create_model("resnet18", num_classes=10, in_chans=1)
    ours.load_state_dict(converted)
