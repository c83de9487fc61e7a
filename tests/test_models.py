"""Every registered model: interface, forward / backward, gradients, determinism (timm-style)."""

from __future__ import annotations

import pytest
import torch

import cnnlab
from cnnlab.models.base import ClassifierModel

ALL = cnnlab.list_models()
# The paper-size presets differ from their base model only in numbers; one of each suffices
# for the costly native-size pass.
NATIVE = [n for n in ALL if not any(n.startswith(p) for p in ("mobilenet_v1_", "mobilenet_v2_"))]


def _logits_and_loss(out) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = list(out) if isinstance(out, tuple) else [out]  # GoogLeNet: (logits, aux1, aux2)
    return outputs[0], sum(o.float().pow(2).mean() for o in outputs)


def _forward_backward(model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> None:
    model.train()
    logits, loss = _logits_and_loss(model(x))
    assert logits.shape == (x.shape[0], num_classes)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"non-finite gradients: {bad[:5]}"


def test_registry_is_populated():
    assert len(ALL) >= 30


@pytest.mark.parametrize("name", ALL)
def test_smallest_input_grey(name):
    """The minimum input size with one channel: what Fashion-MNIST training uses."""
    model = cnnlab.create_model(name, num_classes=7, in_chans=1)
    assert isinstance(model, ClassifierModel)
    side = model.min_input_size
    assert side <= 32
    _forward_backward(model, torch.randn(2, 1, side, side), 7)


@pytest.mark.slow
@pytest.mark.parametrize("name", NATIVE)
def test_native_size(name):
    model = cnnlab.create_model(name, num_classes=10)
    _forward_backward(model, torch.randn(2, *model.input_size), 10)


@pytest.mark.parametrize("name", ALL)
def test_interface(name):
    """Eval determinism, features + head == forward, reset_classifier, too-small input."""
    model = cnnlab.create_model(name, num_classes=5, in_chans=1).eval()
    side = model.min_input_size
    x = torch.randn(2, 1, side, side)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor), "eval mode returns the logits alone"
        assert torch.equal(out, model(x))
        assert torch.allclose(model.forward_head(model.forward_features(x)), out, atol=1e-6)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.dim() == 2 and pre.shape[0] == 2
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        with pytest.raises(ValueError, match=r"smaller than the minimum|exactly"):
            model(torch.randn(1, 1, side - 1, side - 1))
        with pytest.raises(ValueError, match="channels"):
            model(torch.randn(1, 3, side, side))


@pytest.mark.parametrize("name", ALL)
def test_metadata(name):
    info = cnnlab.model_info(name)
    for key in ("paper", "year", "input_size", "reference_params", "reference_macs", "source"):
        assert key in info
    assert info["paper"] and 1989 <= info["year"] <= 2026
    if info["reference_params"] is not None or info["reference_macs"] is not None:
        assert info["source"], "a reference figure names its source"


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match=r"did you mean.*resnet50"):
        cnnlab.create_model("resnet05")


def test_list_models_pattern():
    assert cnnlab.list_models("vgg1?") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert cnnlab.list_models("no-such-*") == []


@pytest.mark.parametrize("kwargs", [{"num_classes": -1}, {"num_classes": 2.5}, {"in_chans": -1}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        cnnlab.create_model("resnet18", **kwargs)
