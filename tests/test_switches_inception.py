"""The model contract's switches for GoogLeNet, BN-Inception and Xception: ``global_pool``,
``reset_classifier(n, global_pool)``, ``drop_rate`` / ``drop_path_rate``, ``feature_info`` and
GoogLeNet's ``aux_logits=False`` (docs/models/inception.md, docs/models/resnet_xception.md)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import cnnlab
from cnnlab.layers import drop_path_rates
from cnnlab.models.bn_inception import BNInception
from cnnlab.models.googlenet import GoogLeNet, GoogLeNetOutputs
from cnnlab.models.xception import Xception, XceptionBlock

NAMES = ["googlenet", "googlenet_tv", "bn_inception", "xception"]
SIDE = 64  # small inputs: every stride-32 map is still 2x2

# The default models' levels: (module, channels, reduction), shallow to deep.
LEVELS = {
    "googlenet": [
        ("stem.conv1", 64, 2),
        ("stem.norm2", 192, 4),
        ("blocks.inception3b", 480, 8),
        ("blocks.inception4e", 832, 16),
        ("blocks.inception5b", 1024, 32),
    ],
    "googlenet_tv": [
        ("stem.conv1", 64, 2),
        ("stem.conv3", 192, 4),
        ("blocks.inception3b", 480, 8),
        ("blocks.inception4e", 832, 16),
        ("blocks.inception5b", 1024, 32),
    ],
    "bn_inception": [
        ("stem.conv1", 64, 2),
        ("stem.conv3", 192, 4),
        ("blocks.inception3b", 320, 8),
        ("blocks.inception4d", 608, 16),
        ("blocks.inception5b", 1024, 32),
    ],
    "xception": [
        ("stem", 64, 2),
        ("entry_flow.0", 128, 4),
        ("entry_flow.1", 256, 8),
        ("middle_flow", 728, 16),
        ("exit_convs", 2048, 32),
    ],
}


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return cnnlab.create_model(name, **kwargs)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_global_pool_max_and_no_pooling(name: str) -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model(name, num_classes=4, global_pool="max").eval()
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        features = model.forward_features(x)
        assert torch.equal(model.forward_head(features, pre_logits=True), features.amax((2, 3)))
        model.reset_classifier(0, "")
        assert torch.equal(model(x), features)
        model.reset_classifier(0, "avg")
        assert torch.allclose(model(x), features.mean((2, 3)), atol=1e-6)
        model.reset_classifier(3)  # keeps the pool
        assert tuple(model(x).shape) == (2, 3) and model.global_pool.pool_type == "avg"
    assert model.num_features == model.head_hidden_size == features.shape[1]


@pytest.mark.parametrize("cls", [GoogLeNet, BNInception, Xception])
def test_no_classes_and_no_pooling_at_construction(cls: type) -> None:
    with torch.device("meta"):
        model = cls(num_classes=0, global_pool="").eval()
        x = torch.empty(1, 3, SIDE, SIDE)
        assert model(x).shape == model.forward_features(x).shape
    assert not any(True for _ in model.get_classifier().parameters())


@pytest.mark.parametrize("name", NAMES)
def test_invalid_heads_and_rates_raise(name: str) -> None:
    with pytest.raises(ValueError, match="needs num_classes=0"):
        _meta(name, global_pool="")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        _meta(name, global_pool="avgmax")
    for rate in (1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match="drop_rate must be a number"):
            _meta(name, drop_rate=rate)
    model = _meta(name, num_classes=0)
    with pytest.raises(ValueError, match="needs num_classes=0"):
        model.reset_classifier(5, "")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(0, "token")


@pytest.mark.parametrize("name", ["googlenet", "googlenet_tv", "bn_inception"])
def test_no_drop_path_rate_without_residual_connections(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} does not take 'drop_path_rate'"):
        _meta(name, drop_path_rate=0.1)


@pytest.mark.parametrize(
    ("name", "default"), [("googlenet", 0.4), ("googlenet_tv", 0.2), ("bn_inception", 0.0),
                          ("xception", 0.5)]
)  # fmt: skip
def test_drop_rate_defaults_and_reaches_the_dropout(name: str, default: float) -> None:
    assert _meta(name).dropout.p == default
    assert _meta(name, drop_rate=0.25).dropout.p == 0.25


def test_googlenet_aux_drop_rate_reaches_the_aux_heads() -> None:
    model = _meta("googlenet", aux_drop_rate=0.5)
    assert model.aux1.dropout.p == model.aux2.dropout.p == 0.5
    for aux in (True, False):
        with pytest.raises(ValueError, match="aux_drop_rate must be a number"):
            _meta("googlenet", aux_logits=aux, aux_drop_rate=1.5)


def test_xception_drop_path_rate_follows_the_linear_decay_rule() -> None:
    blocks = [m for m in _meta("xception", drop_path_rate=0.3).modules()
              if isinstance(m, XceptionBlock)]  # fmt: skip
    assert [b.drop_path for b in blocks] == drop_path_rates(0.3, 12)
    assert all(b.drop_path == 0.0 for b in _meta("xception").modules()
               if isinstance(b, XceptionBlock))  # fmt: skip
    with pytest.raises(ValueError, match="drop_path_rate must be a number"):
        _meta("xception", drop_path_rate=1.0)


def test_xception_drop_path_is_random_in_training_only() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = cnnlab.create_model("xception", num_classes=5, drop_rate=0.0, drop_path_rate=0.5)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # train mode: branches dropped at random
        model.eval()
        assert torch.equal(model(x), model(x))
        plain = cnnlab.create_model("xception", num_classes=5, drop_rate=0.0)
        assert torch.equal(plain(x), plain(x))  # train mode, no drop path: deterministic


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing")
def test_feature_levels(name: str) -> None:
    """Channels, and the exact stride rule: input side + reduction grows the map by one."""
    torch.manual_seed(0)
    model = cnnlab.create_model(name, num_classes=7, in_chans=1).eval()
    info = model.feature_info
    assert [(i["module"], i["num_chs"], i["reduction"]) for i in info] == LEVELS[name]
    extractor = create_feature_extractor(model, return_nodes=[i["module"] for i in info])
    x = torch.randn(1, 1, SIDE, SIDE)
    with torch.no_grad():
        maps = extractor(x)
        assert torch.equal(maps[info[-1]["module"]], model.forward_features(x))
        for level in info:
            _, chans, height, width = maps[level["module"]].shape
            grown = extractor(torch.randn(1, 1, SIDE + level["reduction"], SIDE))
            assert chans == level["num_chs"]
            assert tuple(grown[level["module"]].shape[-2:]) == (height + 1, width)
    assert info[-1]["num_chs"] == model.num_features


def test_googlenet_tv_without_aux_heads_counts_as_torchvision() -> None:
    for aux in (False, True):
        with torch.device("meta"):
            theirs = torchvision.models.googlenet(aux_logits=aux, init_weights=False)
        assert _params(_meta("googlenet_tv", aux_logits=aux)) == _params(theirs)
    assert _params(_meta("googlenet_tv")) == 6_624_904


def test_googlenet_without_aux_heads_differs_by_exactly_their_params() -> None:
    full, bare = _meta("googlenet"), _meta("googlenet", aux_logits=False)
    assert bare.aux1 is None and bare.aux2 is None
    aux = _params(full.aux1) + _params(full.aux2)
    assert _params(full) - _params(bare) == aux == 6_379_728
    assert _params(bare) == 6_998_552


@pytest.mark.parametrize("name", ["googlenet", "googlenet_tv"])
def test_googlenet_without_aux_heads_returns_logits_in_training(name: str) -> None:
    x = torch.randn(2, 3, SIDE, SIDE)
    model = cnnlab.create_model(name, num_classes=6, aux_logits=False).train()
    out = model(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 6)
    outputs = cnnlab.create_model(name, num_classes=6, aux_logits=True).train()(x)
    assert isinstance(outputs, GoogLeNetOutputs)
