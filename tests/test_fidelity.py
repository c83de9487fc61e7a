"""The zoo against the reference figures (docs/reference/architectures.md).

The figures live in the registry (``model_info``), each with its source; this file only
checks them. MACs are counted two ways: our Conv/Linear hooks, and PyTorch's own
``FlopCounterMode`` (which reports FLOPs = 2 x MACs and also sees functional convolutions).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cnnlab
from cnnlab.analysis import count_macs

WITH_PARAMS = [n for n in cnnlab.list_models() if cnnlab.model_info(n)["reference_params"]]
WITH_MACS = [n for n in cnnlab.list_models() if cnnlab.model_info(n)["reference_macs"]]


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return cnnlab.create_model(name, **kwargs)


def trainable_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_params_exact(name):
    assert trainable_params(_meta_model(name)) == cnnlab.model_info(name)["reference_params"]


@pytest.mark.parametrize("name", WITH_MACS)
def test_macs_within_half_percent(name):
    model = _meta_model(name)
    macs = count_macs(model, model.input_size)
    reference = cnnlab.model_info(name)["reference_macs"]
    assert abs(macs - reference) / reference < 0.005, f"{macs:,} vs {reference:,}"


@pytest.mark.parametrize("name", WITH_MACS)
def test_macs_agree_with_torch_flop_counter(name):
    model = _meta_model(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros((1, *model.input_size), device="meta"))
    ours, theirs = count_macs(model, model.input_size), counter.get_total_flops() // 2
    if any(callable(getattr(m, "macs", None)) for m in model.modules()):
        # A layer that counts its own cost (LeNet-5's C3 connection table) may run a dense
        # kernel with fixed zeros: PyTorch's counter sees the zeros, ours the connections.
        assert ours < theirs
    else:
        assert ours == theirs


def test_coverage_of_the_reference_table():
    """Every model of the reference table that we implement carries its figures."""
    expected = {
        "lenet5_caffe",
        "lenet_300_100",
        "alexnet",
        "alexnet_tv",
        "googlenet",
        "googlenet_tv",
        "xception",
        "mobilenet_v1",
        "mobilenet_v2",
        "efficientnet_b0",
        *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
        *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
        *(f"resnet{d}_v1" for d in (50, 101, 152)),
    }
    assert expected <= set(WITH_PARAMS)
    assert expected <= set(WITH_MACS)


@pytest.mark.parametrize(("aux_logits", "params"), [(False, 6_998_552), (True, 13_378_280)])
def test_googlenet_with_and_without_aux_heads(aux_logits, params):
    """Paper Table 1 counted without and with both auxiliary classifiers (Sec. 5)."""
    assert trainable_params(_meta_model("googlenet", aux_logits=aux_logits)) == params
