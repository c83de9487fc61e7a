"""create_model's keywords: unknown ones are named, ``init`` re-initialises the weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.registry import accepted_keywords


def test_unknown_keyword_names_it_and_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"resnet18 does not take 'drop_rat'.*zero_init_residual"):
        cnnlab.create_model("resnet18", drop_rat=0.2)
    assert "alpha" in accepted_keywords("mobilenet_v2")
    assert "aux_logits" in accepted_keywords("googlenet")
    assert "drop_path_rate" not in accepted_keywords("lenet5_caffe")


def test_every_accepted_keyword_reaches_the_model() -> None:
    with torch.device("meta"):
        assert not cnnlab.create_model("googlenet", aux_logits=False).aux_logits
        assert cnnlab.create_model("mobilenet_v1", alpha=0.5).num_features == 512


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize("scheme", ["he", "xavier", "normal"])
def test_init_schemes(scheme: str) -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model("vgg11", num_classes=10, init=scheme)
    conv = model.features.conv3_1  # 128 -> 256 channels, 3x3
    fan_in, fan_out = 128 * 9, 256 * 9
    expected = {"he": math.sqrt(2 / fan_out), "xavier": math.sqrt(2 / (fan_in + fan_out)),
                "normal": 0.01}[scheme]  # fmt: skip
    assert float(conv.weight.detach().std()) == pytest.approx(expected, rel=0.05)
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert all(not b.detach().any() for b in biases if b is not None)


def test_default_init_is_the_papers_and_bad_init_is_refused() -> None:
    torch.manual_seed(0)
    a = _weights(cnnlab.create_model("resnet18"))
    torch.manual_seed(0)
    b = _weights(cnnlab.create_model("resnet18", init=None))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="init must be one of he, xavier, normal"):
        cnnlab.create_model("resnet18", init="orthogonal")


def test_he_init_starts_a_small_classifier_near_chance() -> None:
    """He's fan-out on a 10-class linear layer (std sqrt(2 / 10)) gave VGG-11 logits of several
    units and a first loss far above ln 10; linear layers take the fan-in (forward) case."""
    torch.manual_seed(0)
    model = cnnlab.create_model("vgg11", num_classes=10, in_chans=1, init="he").eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in linears:
        expected = math.sqrt(2 / layer.in_features)
        assert float(layer.weight.detach().std()) == pytest.approx(expected, rel=0.05)
    with torch.no_grad():
        logits = model(torch.randn(16, 1, 32, 32))
    loss = nn.functional.cross_entropy(logits, torch.randint(0, 10, (16,)))
    assert float(loss) < 3.0  # ln 10 = 2.30


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet18", {"num_classes": 10**9}), ("vgg16", {"num_classes": 10**7}),
     ("mobilenet_v2", {"alpha": 1e6})],
)  # fmt: skip
def test_weights_larger_than_memory_are_refused_before_allocating(name: str, kwargs: dict) -> None:
    """Before, PyTorch's allocator failed with a RuntimeError (resnet18 at 10**9 classes), or
    MobileNetV2 at alpha 1e6 took several GB of memory before failing."""
    with pytest.raises(ValueError, match=r"GiB of weights; .* GiB of memory is free"):
        cnnlab.create_model(name, **kwargs)


@pytest.mark.parametrize("keyword", ["num_classes", "in_chans"])
def test_a_bool_is_not_a_size(keyword: str) -> None:
    with pytest.raises(ValueError, match=f"{keyword} must be"):
        cnnlab.create_model("resnet18", **{keyword: True})
