"""ResNet's switches (He et al. 2016): shortcut options A / B / C (Sec. 3.3, Sec. 4.1, Table 3)
and the CIFAR-10 networks of Sec. 4.2 with their plain twins (Table 6)."""

from __future__ import annotations

import pytest
import torch

import cnnlab
from cnnlab.layers import ConvNormAct
from cnnlab.models.resnet import ResNet

# Sec. 4.2 / Table 6: depth -> (n, the paper's parameter count as printed).
TABLE_6 = {
    20: (3, "0.27M"),
    32: (5, "0.46M"),
    44: (7, "0.66M"),
    56: (9, "0.85M"),
    110: (18, "1.7M"),
}
CIFAR = [f"{kind}{depth}" for kind in ("resnet", "plain") for depth in TABLE_6]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return cnnlab.create_model(name, **kwargs)


def _paper_rounding(count: int, printed: str) -> str:
    """Table 6's style: two decimals below 1M, one above."""
    return f"{count / 1e6:.2f}M" if printed.startswith("0.") else f"{count / 1e6:.1f}M"


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_params_exact_and_as_table_6(name: str) -> None:
    depth = int(name.removeprefix("resnet").removeprefix("plain"))
    n, printed = TABLE_6[depth]
    assert depth == 6 * n + 2
    count = _params(_meta(name))
    # conv1 (27*16 + 32), three stages of 2n 3x3 convs with BN, fc 64*10 + 10.
    assert count == 97_216 * n - 21_926 == cnnlab.model_info(name)["reference_params"]
    assert _paper_rounding(count, printed) == printed


def test_cifar_registry_metadata() -> None:
    info = cnnlab.model_info("resnet56")
    assert info["input_size"] == (3, 32, 32) and info["num_classes"] == 10
    assert info["defaults"]["shortcut"] == "A"
    assert "shortcut" not in cnnlab.model_info("plain56")["defaults"]


def test_option_a_resnet34_has_plain34_parameters() -> None:
    assert _params(_meta("resnet34", shortcut="A")) == _params(_meta("plain34")) == 21_623_848


def test_option_b_is_the_default_and_c_has_more_parameters() -> None:
    b, c = _params(_meta("resnet34")), _params(_meta("resnet34", shortcut="C"))
    assert b == _params(_meta("resnet34", shortcut="B")) == 21_797_672
    assert c > b
    assert _params(_meta("resnet50", shortcut="C")) > _params(_meta("resnet50"))


def test_option_c_adds_thirteen_projections_to_resnet34() -> None:
    """Sec. 4.1: C's gain comes from "many (thirteen) projection shortcuts" beyond B's three."""

    def projections(model: torch.nn.Module) -> int:
        return sum(isinstance(getattr(m, "shortcut", None), ConvNormAct) for m in model.modules())

    b, c = _meta("resnet34"), _meta("resnet34", shortcut="C")
    assert (projections(b), projections(c)) == (3, 16)
    assert projections(_meta("resnet34", shortcut="A")) == 0


def test_option_a_shortcut_pads_zeros_and_subsamples() -> None:
    model = ResNet(20, num_classes=10, shortcut="A").eval()
    block = model.conv3_x[0]  # 16 -> 32 channels, 32x32 -> 16x16
    x = torch.randn(2, 16, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert not out[:, 16:].any()
    assert not list(block.shortcut.parameters())


def test_option_c_projects_every_shortcut() -> None:
    model = ResNet(20, num_classes=10, shortcut="C")
    blocks = [b for stage in (model.conv2_x, model.conv3_x, model.conv4_x) for b in stage]
    assert all(b.shortcut is not None and b.shortcut.conv.kernel_size == (1, 1) for b in blocks)


@pytest.mark.parametrize("name", ["resnet20", "plain20"])
def test_forward_and_backward_at_32(name: str) -> None:
    model = cnnlab.create_model(name).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    features = model.forward_features(torch.zeros(1, 3, 32, 32))
    assert features.shape == (1, 64, 8, 8)
    assert model.forward_head(features, pre_logits=True).shape == (1, 64)


def test_unknown_shortcut_names_the_options() -> None:
    with pytest.raises(ValueError, match=r"'A', 'B', 'C'.*'D'"):
        cnnlab.create_model("resnet20", shortcut="D")


def test_plain_network_refuses_a_shortcut_option() -> None:
    with pytest.raises(ValueError, match="plain network has none"):
        cnnlab.create_model("plain20", shortcut="A")


def test_unknown_depth_names_both_tables() -> None:
    with pytest.raises(ValueError, match=r"Table 1.*Sec. 4.2"):
        ResNet(22)
