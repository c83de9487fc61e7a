"""The model interface every registered model keeps (after timm's tests/test_models.py)."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import cnnlab

MODELS = cnnlab.list_models()


def _meta_model(name: str, **kwargs) -> tuple[torch.nn.Module, torch.Tensor]:
    with torch.device("meta"):
        model = cnnlab.create_model(name, **kwargs).eval()
        return model, torch.empty(2, *model.input_size)


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_and_num_features(name: str) -> None:
    model, x = _meta_model(name, num_classes=7)
    assert model.num_classes == 7
    with torch.device("meta"):
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert tuple(pooled.shape) == (2, model.num_features)
        model.reset_classifier(5)
        assert model.num_classes == 5 and tuple(model(x).shape) == (2, 5)


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_zero_gives_pooled_features(name: str) -> None:
    model, x = _meta_model(name, num_classes=0)
    with torch.device("meta"):
        assert model.num_classes == 0 and tuple(model(x).shape) == (2, model.num_features)
        model.reset_classifier(3)
        assert tuple(model(x).shape) == (2, 3)
        model.reset_classifier(0)
        assert tuple(model(x).shape) == (2, model.num_features)
        assert not any(True for _ in model.get_classifier().parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing")
def test_fx_traces_every_model(name: str) -> None:
    model, x = _meta_model(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.device("meta"):
        assert tuple(traced(x).shape) == (2, model.num_classes)
    _, nodes = get_graph_node_names(model)
    extractor = create_feature_extractor(model, return_nodes={nodes[-2]: "before"})
    with torch.device("meta"):
        assert "before" in extractor(x)


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "mobilenet_v2", "googlenet", "lenet5"])
def test_traced_model_computes_what_the_model_does(name: str) -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model(name, num_classes=10).eval()
    side = 32 if name == "lenet5" else 64  # lenet5 takes exactly 32x32
    x = torch.randn(2, model.input_size[0], side, side)
    with torch.no_grad():
        assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))
