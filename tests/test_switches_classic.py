"""LeNet, AlexNet, VGG: widths, reset_classifier(0, ""), drop_rate and feature levels."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import cnnlab
from cnnlab.registry import accepted_keywords, model_info

VGGS = cnnlab.list_models("vgg*")
CONV_MODELS = ["lenet5", "lenet5_caffe", "alexnet", "alexnet_tv", *VGGS]
MODELS = [*CONV_MODELS, "lenet_300_100"]

# name -> (num_features: channels of forward_features, head_hidden_size: pre-logits width)
WIDTHS = {
    "lenet5": (120, 84),
    "lenet5_caffe": (50, 500),
    "lenet_300_100": (784, 100),
    "alexnet": (256, 4096),
    "alexnet_tv": (256, 4096),
    **{name: (512, 4096) for name in VGGS},
}

# One model per family: (module, channels, reduction), shallow to deep.
LEVELS = {
    "lenet5": [("features.act1", 6, 1), ("features.act3", 16, 2), ("features.act5", 120, 4)],
    "lenet5_caffe": [
        ("features.conv1", 20, 1),
        ("features.conv2", 50, 2),
        ("features.pool2", 50, 4),
    ],
    "alexnet": [
        ("features.norm1", 96, 4),
        ("features.norm2", 256, 8),
        ("features.relu5", 256, 16),
        ("features.pool5", 256, 32),
    ],
    "alexnet_tv": [
        ("features.relu1", 64, 4),
        ("features.relu2", 192, 8),
        ("features.relu5", 256, 16),
        ("features.pool5", 256, 32),
    ],
    "vgg16": [
        ("features.conv1_2_relu", 64, 1),
        ("features.conv2_2_relu", 128, 2),
        ("features.conv3_3_relu", 256, 4),
        ("features.conv4_3_relu", 512, 8),
        ("features.conv5_3_relu", 512, 16),
        ("features.pool5", 512, 32),
    ],
}


def _meta(name: str, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    with torch.device("meta"):
        model = cnnlab.create_model(name, **kwargs).eval()
        return model, torch.empty(2, *model.input_size)


def _dropouts(model: nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]


@pytest.mark.parametrize("name", MODELS)
def test_num_features_is_the_trunk_width_and_head_hidden_size_the_pre_logits(name: str) -> None:
    model, x = _meta(name, num_classes=7)
    assert (model.num_features, model.head_hidden_size) == WIDTHS[name]
    with torch.device("meta"):
        features = model.forward_features(x)
        assert features.shape[1] == model.num_features
        pre_logits = model.forward_head(features, pre_logits=True)
        assert tuple(pre_logits.shape) == (2, model.head_hidden_size)


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_without_pooling_returns_the_trunk_then_restores(name: str) -> None:
    model, x = _meta(name)
    with torch.device("meta"):
        model.reset_classifier(0, global_pool="")
        assert model.num_classes == 0 and model(x).shape == model.forward_features(x).shape
        model.reset_classifier(0)  # None keeps the bypass
        assert model(x).shape == model.forward_features(x).shape
        model.reset_classifier(3)  # a classifier brings the flattening head back
        assert tuple(model(x).shape) == (2, 3)
        model.reset_classifier(0)
        assert tuple(model(x).shape) == (2, model.head_hidden_size)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_caffe", "lenet_300_100", "alexnet_tv"])
def test_unpooled_forward_is_exactly_forward_features(name: str) -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model(name).eval()
    side = model.input_size[1] if model.fixed_input_size else 64
    x = torch.randn(2, model.input_size[0], side, side)
    fc = model.get_classifier()
    model.reset_classifier(0, "")
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_features(x))
        model.reset_classifier(4)
        assert tuple(model(x).shape) == (2, 4)
    assert type(model.get_classifier()) is type(fc)


@pytest.mark.parametrize("name", ["lenet5", "lenet_300_100", "alexnet", "vgg11_bn"])
@pytest.mark.parametrize("pool", ["avg", "max", "mean"])
def test_only_no_pooling_is_offered(name: str, pool: str) -> None:
    model, _ = _meta(name)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, pool)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, "")


@pytest.mark.parametrize("name", MODELS)
def test_keywords_drop_rate_only(name: str) -> None:
    assert "drop_rate" in accepted_keywords(name)
    for keyword in ("drop_path_rate", "global_pool"):
        with pytest.raises(ValueError, match="drop_rate"):  # the error names what it takes
            cnnlab.create_model(name, **{keyword: 0.1})
    for rate in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="drop_rate"):
            cnnlab.create_model(name, drop_rate=rate)


@pytest.mark.parametrize("name", ["alexnet", "alexnet_tv", *VGGS])
def test_drop_rate_is_the_p_of_both_dropout_layers(name: str) -> None:
    assert _dropouts(_meta(name)[0]) == [0.5, 0.5]  # AlexNet Sec. 4.2, VGG Sec. 3.1
    assert _dropouts(_meta(name, drop_rate=0.2)[0]) == [0.2, 0.2]


@pytest.mark.parametrize("name", ["lenet5", "lenet5_caffe", "lenet_300_100"])
def test_lenet_dropout_is_off_by_default(name: str) -> None:
    assert _dropouts(_meta(name)[0]) == [0.0]
    model = cnnlab.create_model(name, drop_rate=0.5).train()
    assert _dropouts(model) == [0.5]
    x = torch.randn(4, *model.input_size)
    assert not torch.equal(model(x), model(x))  # dropout before the last layer
    model.eval()
    assert torch.equal(model(x), model(x))


def test_vgg_without_dropout_trains_deterministically() -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model("vgg11", num_classes=10, drop_rate=0.0).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.classifier.drop6.p = model.classifier.drop7.p = 0.5
        assert not torch.equal(model(x), model(x))


def _sides(model: nn.Module, modules: list[str], side: int) -> dict[str, torch.Size]:
    extractor = create_feature_extractor(model, return_nodes={m: m for m in modules})
    with torch.device("meta"):
        return {
            k: v.shape
            for k, v in extractor(torch.empty(1, model.input_size[0], side, side)).items()
        }


@pytest.mark.parametrize("kwargs", [{}, {"in_chans": 2, "num_classes": 5}])
@pytest.mark.parametrize("name", CONV_MODELS)
def test_feature_levels_have_their_channels_and_exact_stride(name: str, kwargs: dict) -> None:
    model, x = _meta(name, **kwargs)
    info = model.feature_info
    modules = [level["module"] for level in info]
    side = model.input_size[-1]
    shapes = _sides(model, modules, side)
    assert [shapes[m][1] for m in modules] == [level["num_chs"] for level in info]
    with torch.device("meta"):
        assert shapes[modules[-1]] == model.forward_features(x[:1]).shape
    reductions = [level["reduction"] for level in info]
    assert reductions == sorted(set(reductions)) and info[-1]["num_chs"] == model.num_features
    for level in info:  # stride r: r more input pixels give exactly one more output pixel
        grown = _sides(model, [level["module"]], side + level["reduction"])[level["module"]]
        assert grown[-2:] == tuple(s + 1 for s in shapes[level["module"]][-2:]), level


@pytest.mark.parametrize("name", LEVELS)
def test_feature_levels_of_one_model_per_family(name: str) -> None:
    model, _ = _meta(name)
    keys = ("module", "num_chs", "reduction")
    assert [tuple(level[k] for k in keys) for level in model.feature_info] == LEVELS[name]


def test_last_level_is_the_trunk_output() -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model("lenet5_caffe").eval()
    extractor = create_feature_extractor(model, return_nodes={"features.pool2": "out"})
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(extractor(x)["out"], model.forward_features(x))


def test_lenet_300_100_has_no_feature_maps() -> None:
    model, x = _meta("lenet_300_100", in_chans=2)
    assert model.feature_info == [] and model.num_features == 2 * 28 * 28
    with torch.device("meta"):
        assert tuple(model.forward_features(x).shape) == (2, 2 * 28 * 28)


@pytest.mark.parametrize("name", MODELS)
def test_default_models_keep_their_parameters(name: str) -> None:
    model, _ = _meta(name)
    assert sum(p.numel() for p in model.parameters()) == model_info(name)["reference_params"]
