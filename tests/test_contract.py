"""The model interface every registered model keeps (after timm's tests/test_models.py)."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import cnnlab
from cnnlab.registry import accepted_keywords

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
        features = model.forward_features(x)
        assert features.shape[1] == model.num_features
        pooled = model.forward_head(features, pre_logits=True)
        assert tuple(pooled.shape) == (2, model.head_hidden_size)
        model.reset_classifier(5)
        assert model.num_classes == 5 and tuple(model(x).shape) == (2, 5)


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_zero_gives_pooled_features(name: str) -> None:
    model, x = _meta_model(name, num_classes=0)
    with torch.device("meta"):
        assert model.num_classes == 0 and tuple(model(x).shape) == (2, model.head_hidden_size)
        model.reset_classifier(3)
        assert tuple(model(x).shape) == (2, 3)
        model.reset_classifier(0)
        assert tuple(model(x).shape) == (2, model.head_hidden_size)
        assert not any(True for _ in model.get_classifier().parameters())


@pytest.mark.parametrize("name", MODELS)
def test_no_pooling_gives_the_feature_map(name: str) -> None:
    model, x = _meta_model(name)
    with torch.device("meta"):
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == model.forward_features(x).shape
        with pytest.raises(ValueError, match="global_pool"):
            model.reset_classifier(4, global_pool="")
        with pytest.raises(ValueError, match="global_pool"):
            model.reset_classifier(0, global_pool="mean")
    if "global_pool" in accepted_keywords(name):  # the pooled heads: also at creation
        bare, _ = _meta_model(name, num_classes=0, global_pool="")
        with torch.device("meta"):
            assert bare(x).shape == model.forward_features(x).shape


def _small_input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    side = model.input_size[1] if model.fixed_input_size else max(model.min_input_size, 32)
    return torch.randn(batch, model.input_size[0], side, side)


def _outputs(out: torch.Tensor | tuple) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple) else [out]  # GoogLeNet trains with aux outputs


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model(name, num_classes=42, in_chans=1).train()
    outputs = _outputs(model(_small_input(model)))
    assert all(tuple(o.shape) == (2, 42) and torch.isfinite(o).all() for o in outputs)
    sum(o.sum() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_torch_export_computes_what_the_model_does(name: str) -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model(name, num_classes=10).eval()
    x = _small_input(model)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def _side_after(model: torch.nn.Module, side: int) -> list[int]:
    with torch.device("meta"):
        return [f.shape[-1] for f in model(torch.empty(1, model.input_size[0], side, side))]


@pytest.mark.parametrize("name", [n for n in MODELS if n != "lenet_300_100"])
def test_features_only_maps_match_feature_info(name: str) -> None:
    with torch.device("meta"):
        model = cnnlab.create_model(name, features_only=True).eval()
        maps = model(torch.empty(2, *model.input_size))
    info = model.feature_info
    assert len(info) >= 3 and [m.shape[1] for m in maps] == info.channels()
    assert info.reduction() == sorted(info.reduction())
    side = model.input_size[-1]
    for level, reduction in enumerate(info.reduction()):  # stride r: r more pixels, one more
        grown = _side_after(model, side + reduction)[level]
        assert grown == _side_after(model, side)[level] + 1, (level, reduction)


def test_features_only_levels_and_refusals() -> None:
    model = cnnlab.create_model("resnet18", features_only=True, out_indices=(1, -1))
    assert model.feature_info.reduction() == [4, 32] and model.out_indices == (1, 4)
    maps = model(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 512, 2, 2)]
    assert not any("fc" in k for k in model.state_dict())  # the classifier is left out
    with pytest.raises(ValueError, match="no feature maps"):
        cnnlab.create_model("lenet_300_100", features_only=True)
    with pytest.raises(ValueError, match="5 feature levels"):
        cnnlab.create_model("resnet18", features_only=True, out_indices=(5,))
    with pytest.raises(ValueError, match="shallow to deep"):
        cnnlab.create_model("resnet18", features_only=True, out_indices=(3, 1))
    with pytest.raises(ValueError, match="needs features_only"):
        cnnlab.create_model("resnet18", out_indices=(1,))
    with pytest.raises(ValueError, match="expected a batch"):
        model(torch.randn(1, 1, 64, 64))


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
