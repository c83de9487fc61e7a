"""The switches and feature levels of MobileNetV1, MobileNetV2 and EfficientNet-B0: global_pool,
reset_classifier(n, global_pool), drop_rate, drop_path_rate and feature_info (timm's contract);
docs/models/mobile.md, "Switches and feature levels"."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torchvision.models.feature_extraction import create_feature_extractor

import cnnlab
from cnnlab.layers import InvertedResidual, drop_path_rates
from cnnlab.models.efficientnet import efficientnet_b0
from cnnlab.models.mobilenet import mobilenet_v1, mobilenet_v2

FAMILIES = ["mobilenet_v1", "mobilenet_v2", "efficientnet_b0"]
# name -> (module, channels, reduction) per level, shallow to deep (docs/models/mobile.md).
LEVELS = {
    "mobilenet_v1": [
        ("blocks.0", 64, 2),
        ("blocks.2", 128, 4),
        ("blocks.4", 256, 8),
        ("blocks.10", 512, 16),
        ("blocks.12", 1024, 32),
    ],
    "mobilenet_v2": [
        ("blocks.0", 16, 2),
        ("blocks.2", 24, 4),
        ("blocks.5", 32, 8),
        ("blocks.13.conv.0", 576, 16),  # the expansion of layer 15 (Sec. 6.3, SSDLite)
        ("head", 1280, 32),
    ],
    "efficientnet_b0": [
        ("stages.0", 16, 2),
        ("stages.1", 24, 4),
        ("stages.2", 40, 8),
        ("stages.4", 112, 16),
        ("head", 1280, 32),
    ],
}
SIDE = 64  # small inputs: every level still has a map of at least 2x2


def _model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return cnnlab.create_model(name, num_classes=10, **kwargs).eval()


def _levels(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    return [(lv["module"], lv["num_chs"], lv["reduction"]) for lv in model.feature_info]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_global_pool_is_the_pooling_of_the_head(name: str, pool: str) -> None:
    model = _model(name, global_pool=pool)
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        want = features.mean((2, 3)) if pool == "avg" else features.amax((2, 3))
        torch.testing.assert_close(pooled, want)
        assert model(x).shape == (2, 10)
    assert model.head_hidden_size == model.num_features == features.shape[1]
    assert torch.fx.symbolic_trace(model)(x).shape == (2, 10)


@pytest.mark.parametrize("name", FAMILIES)
def test_reset_classifier_without_pooling_returns_the_feature_map(name: str) -> None:
    model = _model(name)
    x = torch.randn(1, 3, SIDE, SIDE)
    model.reset_classifier(0, "")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x))
        model.reset_classifier(0, "max")
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(5)  # None keeps the max pool
        torch.testing.assert_close(
            model.forward_head(model.forward_features(x), pre_logits=True),
            model.forward_features(x).amax((2, 3)),
        )
        assert model(x).shape == (1, 5)


@pytest.mark.parametrize("builder", [mobilenet_v1, mobilenet_v2, efficientnet_b0])
def test_built_without_classifier_or_pooling(builder) -> None:
    model = builder(num_classes=0, global_pool="").eval()
    x = torch.randn(1, 3, SIDE, SIDE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x))
    assert not list(model.get_classifier().parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_invalid_heads_are_value_errors(name: str) -> None:
    for kwargs in ({"global_pool": ""}, {"global_pool": "min"}, {"drop_rate": 1.0}):
        with pytest.raises(ValueError):
            cnnlab.create_model(name, **kwargs)
    for kwargs in ({"drop_rate": -0.1}, {"drop_rate": True}, {"drop_rate": "0.1"}):
        with pytest.raises(ValueError, match="drop_rate"):
            cnnlab.create_model(name, **kwargs)
    model = _model(name)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "")
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "mean")


def test_drop_path_rate_only_where_there_are_residual_blocks() -> None:
    with pytest.raises(ValueError, match="drop_path_rate"):
        cnnlab.create_model("mobilenet_v1", drop_path_rate=0.1)  # no shortcut to drop
    for name in ("mobilenet_v2", "efficientnet_b0"):
        for rate in (1.0, -0.2, None):
            with pytest.raises(ValueError, match="drop_path_rate"):
                cnnlab.create_model(name, drop_path_rate=rate)


@pytest.mark.parametrize(
    ("name", "default"), [("mobilenet_v1", 0.0), ("mobilenet_v2", 0.2), ("efficientnet_b0", 0.2)]
)
def test_drop_rate_reaches_the_dropout(name: str, default: float) -> None:
    assert _model(name).dropout.p == default
    assert _model(name, drop_rate=0.3).dropout.p == 0.3


def _blocks(model: torch.nn.Module) -> list[InvertedResidual]:
    return [m for m in model.modules() if isinstance(m, InvertedResidual)]


def test_drop_path_rates_follow_the_documented_rules() -> None:
    v2 = _model("mobilenet_v2_035", drop_path_rate=0.34)  # the zoo's rule, rate * i / 17, i >= 1
    assert [b.drop_path for b in _blocks(v2)] == drop_path_rates(0.34, 17)
    assert all(b.drop_path == 0.0 for b in _blocks(_model("mobilenet_v2")))
    b0 = _model("efficientnet_b0")  # torchvision's rule: 0.2 * i / 16, i from 0
    assert [b.drop_path for b in _blocks(b0)] == [0.2 * i / 16 for i in range(16)]


def test_mobilenet_v2_drop_path_draws_in_training_only() -> None:
    x = torch.randn(4, 3, SIDE, SIDE)
    with torch.no_grad():
        plain = _model("mobilenet_v2_035", drop_rate=0.0).train()
        assert torch.equal(plain(x), plain(x))  # train-mode BN alone is deterministic
        model = _model("mobilenet_v2_035", drop_rate=0.0, drop_path_rate=0.5).train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(("name", "chans"), [("mobilenet_v2", 576), ("mobilenet_v2_035_96", 192)])
def test_mobilenet_v2_stride_16_is_the_expansion_of_layer_15(name: str, chans: int) -> None:
    """Sec. 6.3: SSDLite attaches to the expansion of layer 15 (Table 2: layer 1 is the stem
    conv, so layer 15 is the first, stride-2 block of the 160-channel row, blocks.13)."""
    model = _model(name)
    level = model.feature_info[3]
    assert level == {"module": "blocks.13.conv.0", "num_chs": chans, "reduction": 16}
    block = model.blocks[13]
    expand, depthwise = block.conv[0], block.conv[1]
    assert expand.conv.kernel_size == (1, 1) and expand.conv.out_channels == chans
    assert isinstance(expand.act, torch.nn.ReLU6)
    assert depthwise.conv.stride == (2, 2)
    assert model.blocks[12].conv[-1].conv.out_channels * 6 == chans  # t = 6 times layer 14's
    assert model.blocks[13].conv[-1].conv.out_channels == (160 if name == "mobilenet_v2" else 56)


@pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing")
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(n, {}) for n in FAMILIES] + [("mobilenet_v1", {"alpha": 0.5}), ("mobilenet_v2", {"t": 1})],
)
def test_feature_levels_have_their_channels_and_exact_stride(name: str, kwargs: dict) -> None:
    model = _model(name, in_chans=1, **kwargs)
    levels = _levels(model)
    if not kwargs:
        assert levels == LEVELS[name]
    elif "alpha" in kwargs:
        assert [c for _, c, _ in levels] == [c // 2 for _, c, _ in LEVELS[name]]
    else:  # t=1: no expansion layer in blocks.13, the last block at stride 16 stands in
        assert levels[3] == ("blocks.12", 96, 16)
    extractor = create_feature_extractor(model, {m: m for m, _, _ in levels})
    x = torch.randn(1, 1, SIDE, SIDE)
    with torch.no_grad():
        maps = extractor(x)
        torch.testing.assert_close(maps[levels[-1][0]], model.forward_features(x))
        for module, chans, reduction in levels:
            grown = extractor(torch.randn(1, 1, SIDE + reduction, SIDE + reduction))[module]
            assert maps[module].shape[1:] == (chans, SIDE // reduction, SIDE // reduction)
            assert grown.shape[-2:] == (SIDE // reduction + 1,) * 2, module
