"""``gradient_norms`` / ``cnnlab gradients``: GoogLeNet's auxiliary losses counted as in
training (0.3 each, Szegedy et al. 2015 Sec. 5) or left out, and every weight layer the MAC
counter counts covered (LeNet-5's C3 included)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis import gradient_norms
from cnnlab.analysis.gradients import AUX_WEIGHT, random_batches
from cnnlab.analysis.macs import counts_macs
from cnnlab.cli import main


class TwoHeads(nn.Module):
    """A trunk with a main head and one auxiliary head (GoogLeNet's output shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(12, 8)
        self.head = nn.Linear(8, 10)
        self.aux = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.trunk(x.flatten(1)))
        return self.head(h), self.aux(h)


def _batch() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return random_batches((3, 2, 2), 10, batch_size=6, seed=3)


def _manual_norms(model: nn.Module, weight: float) -> dict[str, float]:
    (x, y), = _batch()  # fmt: skip
    model.zero_grad(set_to_none=True)
    logits, aux = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    (loss + weight * nn.functional.cross_entropy(aux, y)).backward()
    norms = {n: float(m.weight.grad.norm()) for n, m in model.named_modules() if n}
    model.zero_grad(set_to_none=True)
    return norms


@pytest.mark.parametrize("weight", [AUX_WEIGHT, 0.0, 1.0])
def test_aux_loss_is_weighted_as_asked(weight: float) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    expected = _manual_norms(model, weight)
    report = gradient_norms(model, _batch(), aux_weight=weight)
    got = dict(zip(report.layers, report.init, strict=True))
    assert got == pytest.approx(expected, rel=1e-6)
    assert report.aux_weight == weight and report.aux_outputs == 1
    assert (got["aux"] == 0.0) == (weight == 0.0)


def test_default_weight_is_googlenets_training_weight() -> None:
    assert AUX_WEIGHT == 0.3
    torch.manual_seed(0)
    report = gradient_norms(TwoHeads(), _batch())
    assert report.aux_weight == 0.3 and report.to_dict()["aux_outputs"] == 1


@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf")])
def test_bad_aux_weight_is_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="aux_weight"):
        gradient_norms(TwoHeads(), _batch(), aux_weight=weight)


def _googlenet_norms(weight: float) -> dict[str, float]:
    torch.manual_seed(0)
    model = cnnlab.create_model(
        "googlenet", num_classes=10, in_chans=1, drop_rate=0.0, aux_drop_rate=0.0
    )
    batches = random_batches((1, 64, 64), 10, batch_size=4, seed=0)
    report = gradient_norms(model, batches, aux_weight=weight)
    assert report.aux_outputs == 2
    return dict(zip(report.layers, report.init, strict=True))


def test_googlenet_aux_heads_get_gradient_and_feed_the_lower_layers() -> None:
    with_aux, without = _googlenet_norms(AUX_WEIGHT), _googlenet_norms(0.0)
    aux_layers = [n for n in with_aux if n.startswith(("aux1.", "aux2."))]
    assert len(aux_layers) == 6  # a 1x1 conv and two FC layers per head
    assert all(with_aux[n] > 0 for n in aux_layers)
    assert all(without[n] == 0.0 for n in aux_layers)
    # the layers above inception (4d) see no auxiliary loss: the same gradient either way
    assert with_aux["blocks.inception5b.branch1.conv"] == pytest.approx(
        without["blocks.inception5b.branch1.conv"], rel=1e-5
    )
    assert with_aux["fc"] == pytest.approx(without["fc"], rel=1e-5)
    # the layers below (4a) receive the auxiliary losses' gradient too
    assert with_aux["stem.conv1.conv"] != pytest.approx(without["stem.conv1.conv"], rel=1e-3)


def test_every_layer_the_mac_counter_counts_is_covered() -> None:
    torch.manual_seed(0)
    model = cnnlab.create_model("lenet5", num_classes=10)
    report = gradient_norms(model, random_batches((1, 32, 32), 10, batch_size=4))
    counted = [n for n, m in model.named_modules() if counts_macs(m) and hasattr(m, "weight")]
    assert sorted(report.layers) == sorted(counted)
    c3 = next(n for n in report.layers if n.endswith("c3"))
    assert type(model.get_submodule(c3)).__name__ == "ConnectionTableConv"
    assert report.init[report.layers.index(c3)] > 0
    assert report.layers.index(c3) == 1  # forward order: C1, C3, C5, F6, output


class OwnMacs(nn.Module):
    """A custom layer that states its own MACs, as LeNet-5's C3 does."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.weight

    def macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        return output.numel()


def test_a_custom_layer_with_its_own_macs_is_covered() -> None:
    model = nn.Sequential(OwnMacs(), nn.Linear(12, 10))
    report = gradient_norms(model, _batch())
    assert report.layers == ["0", "1"] and report.init[0] > 0


def test_cli_aux_weight(capsys) -> None:
    argv = ["gradients", "googlenet", "--input", "1x64x64", "--batch-size", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out  # 3 stem convs, 9 x 6 inception convs, fc, 2 x 3 aux
    assert "googlenet: 64 weight layers, mean ||dL/dW|| at init; 2 auxiliary losses x 0.3" in out
    assert main([*argv, "--json"]) == 0
    default = json.loads(capsys.readouterr().out)["googlenet"]
    assert main([*argv, "--aux-weight", "0", "--json"]) == 0
    off = json.loads(capsys.readouterr().out)["googlenet"]
    assert default["aux_weight"] == 0.3 and off["aux_weight"] == 0.0
    aux = [i for i, n in enumerate(off["layers"]) if n.startswith("aux")]
    assert aux and all(off["init"][i] == 0.0 for i in aux)
    assert all(default["init"][i] > 0 for i in aux)


def test_cli_refuses_a_negative_aux_weight(capsys) -> None:
    assert main(["gradients", "googlenet", "--aux-weight", "-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--aux-weight must be >= 0" in err
