"""A tiny classifier for the training tests, registered as ``tiny`` / ``tiny_aux`` on demand.

``tiny_aux`` returns ``(logits, aux1, aux2)`` as a namedtuple in training mode, as GoogLeNet
does; both have dropout (so resuming must restore the RNG) and batch norm (running stats).
"""

from __future__ import annotations

from collections import namedtuple

import torch
from torch import nn

from cnnlab import registry
from cnnlab.models.base import ClassifierModel

AuxOutputs = namedtuple("AuxOutputs", ["logits", "aux1", "aux2"])


class TinyNet(ClassifierModel):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, aux: bool = False,
                 bn: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(8 * 16, num_classes)
        if aux:
            self.aux1 = nn.Linear(8 * 16, num_classes)
            self.aux2 = nn.Linear(8 * 16, num_classes)
        self.aux = aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(self.drop(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(8 * 16, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        f = self.forward_features(x)
        logits = self.forward_head(f)
        if self.aux and self.training:
            return AuxOutputs(logits, self.aux1(f), self.aux2(f))
        return logits


def _entry(name: str, **defaults) -> registry.ModelEntry:
    """A registry entry for TinyNet, made by ``register_model`` and taken out again."""
    registry.register_model(
        name, family="test", paper="test", year=2024, input_size=16, min_input_size=4,
        num_classes=10, **defaults,
    )(TinyNet)  # fmt: skip
    return registry._REGISTRY.pop(name)


TINY_MODELS = {
    "tiny": _entry("tiny"),
    "tiny_aux": _entry("tiny_aux", aux=True),
    "tiny_nobn": _entry("tiny_nobn", bn=False),
}


def register_tiny() -> None:
    """Register the tiny models (for subprocesses; tests use the ``tiny_models`` fixture)."""
    registry._REGISTRY.update(TINY_MODELS)


def test_tiny_aux_returns_namedtuple_in_training_only() -> None:
    model = TinyNet(aux=True)
    out = model(torch.randn(2, 3, 16, 16))
    assert isinstance(out, AuxOutputs) and out.logits.shape == (2, 10)
    assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 10)
