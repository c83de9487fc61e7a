"""The interface every cnnlab model has (after timm): features, head, classifier reset."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from cnnlab.layers import GLOBAL_POOLS, GlobalPool


class ClassifierModel(nn.Module, abc.ABC):
    """An image classifier split into ``forward_features`` and ``forward_head``.

    Every model has the same four methods, so tools need no per-model special cases, and
    the attributes of timm's models:

    * ``num_classes``; ``num_features``, the channels ``forward_features`` returns;
      ``head_hidden_size``, the width ``forward`` returns once ``reset_classifier(0)`` removed
      the last layer (``num_features`` unless the head has hidden layers: LeNet, AlexNet, VGG);
    * ``feature_info``: the feature maps ``features_only=True`` returns, one dict per level
      (``module``, ``num_chs``, ``reduction``), shallow to deep; empty where there are none;
    * ``input_size`` (C, H, W), the native size, and ``min_input_size``, the smallest side the
      model accepts (both set by :func:`cnnlab.create_model`).
    """

    input_size: tuple[int, int, int] | None = None
    min_input_size: int | None = None
    fixed_input_size: bool = False  # True where a flattening layer needs exactly input_size
    num_features: int
    feature_info: list[dict[str, Any]]

    @property
    def head_hidden_size(self) -> int:
        return self.num_features

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional trunk: image batch to the last feature map."""

    @abc.abstractmethod
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling and classifier; ``pre_logits=True`` stops before the last linear layer."""

    @abc.abstractmethod
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the last linear layer with a fresh one of ``num_classes`` outputs; 0 removes
        it, and ``forward`` returns the ``(N, head_hidden_size)`` pre-logits features.

        ``global_pool`` (``"avg"``, ``"max"``; ``""`` only with 0 classes: ``forward`` then
        returns the unpooled ``forward_features`` map) replaces the pooling; ``None`` keeps it.
        Heads that flatten a fixed-size map (LeNet, AlexNet, VGG) take only ``""``."""

    @abc.abstractmethod
    def get_classifier(self) -> nn.Module:
        """The final classifier layer(s), those ``reset_classifier`` replaces (timm's name);
        fine-tuning with a frozen backbone trains exactly their parameters."""

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` for an input the model cannot take (shape, channels, size)."""
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}")
        if self.input_size is not None and x.shape[1] != self.input_size[0]:
            raise ValueError(
                f"{type(self).__name__} expects {self.input_size[0]} input channels, "
                f"got {x.shape[1]}"
            )
        if self.fixed_input_size and self.input_size and tuple(x.shape[-2:]) != self.input_size[1:]:
            raise ValueError(
                f"{type(self).__name__} takes exactly {self.input_size[1]}x{self.input_size[2]} "
                f"inputs, got {x.shape[-2]}x{x.shape[-1]}"
            )
        minimum = self.min_input_size or 1
        if x.shape[-2] < minimum or x.shape[-1] < minimum:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than the minimum "
                f"{minimum}x{minimum} that {type(self).__name__} supports"
            )

    @property
    def weights_device(self) -> torch.device:
        """Where the model's parameters live (a new classifier is built there)."""
        return next(self.parameters()).device

    def check_input_eagerly(self, x: torch.Tensor) -> None:
        """:meth:`check_input`, except while torch.compile / torch.export or torch.fx trace the
        model: the check is Python control flow on the input's shape, a symbolic value there."""
        if not (torch.compiler.is_compiling() or is_fx_symbolic_tracing()):
            self.check_input(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_eagerly(x)
        return self.forward_head(self.forward_features(x))


def last_per_reduction(layers: Iterable[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """``feature_info`` levels from ``(module, output channels, stride)`` in forward order: one
    level per cumulative stride (reduction), the last module that outputs at it."""
    levels: list[dict[str, Any]] = []
    reduction = 1
    for module, chans, stride in layers:
        reduction *= stride
        level = {"module": module, "num_chs": chans, "reduction": reduction}
        if levels and levels[-1]["reduction"] == reduction:
            levels[-1] = level
        else:
            levels.append(level)
    return levels


class NoClassifier(nn.Identity):
    """What ``reset_classifier(0)`` leaves in place of the last linear layer: the features pass
    through; it remembers their width so that a later ``reset_classifier(n)`` can rebuild it."""

    macs_free = True

    def __init__(self, in_features: int, has_bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.has_bias = in_features, has_bias


def replace_linear(old: nn.Linear | NoClassifier, num_classes: int) -> nn.Module:
    """A fresh ``nn.Linear`` with ``old``'s input width and ``num_classes`` outputs; for 0
    classes a :class:`NoClassifier`: the model then returns its pre-logits features (timm's
    ``reset_classifier(0)``)."""
    bias = old.has_bias if isinstance(old, NoClassifier) else old.bias is not None
    if num_classes == 0:
        return NoClassifier(old.in_features, bias)
    return nn.Linear(old.in_features, num_classes, bias=bias)


NO_POOL = ("",)  # what heads that flatten a fixed-size map offer: no head at all


def check_head(
    num_classes: int, global_pool: str | None, pools: tuple[str, ...] = GLOBAL_POOLS
) -> None:
    """Raise ``ValueError`` for a head ``reset_classifier`` cannot build: a pool the model does
    not offer (``pools``), or no pooling (``""``) in front of a classifier."""
    if global_pool is None:
        return
    if global_pool not in pools:
        raise ValueError(
            f"global_pool must be one of {', '.join(map(repr, pools))} here, got {global_pool!r}"
        )
    if global_pool == "" and num_classes:
        raise ValueError("global_pool='' (no pooling) needs num_classes=0 (no classifier)")


class FullyConnectedHeadModel(ClassifierModel):
    """AlexNet's and VGG's shape: ``forward_features`` runs ``self.features``; the head is an
    adaptive average pool to a fixed map (``self.avgpool``), flatten, then
    ``self.classifier`` (fc6, fc7 with their ReLUs and dropouts, fc8).

    ``num_features`` is the width of the last conv map, ``head_hidden_size`` that of fc7 (what
    ``reset_classifier(0)`` leaves ``forward`` returning). ``reset_classifier(0, "")`` bypasses
    the whole head, keeping its modules: a later ``reset_classifier(n)`` restores it with a
    fresh fc8.
    """

    features: nn.Sequential
    avgpool: nn.AdaptiveAvgPool2d
    classifier: nn.Sequential
    bypass_head: bool = False  # True after reset_classifier(0, ""): forward_head is identity

    @property
    def head_hidden_size(self) -> int:
        return self.classifier.fc7.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.bypass_head:
            return x
        x = self.avgpool(x).flatten(1)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh fc8 of ``num_classes`` outputs (0: none). ``global_pool=""`` (only with 0
        classes) bypasses the flattening head; ``None`` keeps the current head, except that
        ``num_classes > 0`` always restores the flattening head (fc6 and fc7 kept)."""
        check_head(num_classes, global_pool, NO_POOL)
        self.bypass_head = global_pool == "" or (self.bypass_head and not num_classes)
        self.num_classes = num_classes
        fc8 = replace_linear(self.classifier.fc8, num_classes).to(self.weights_device)
        if isinstance(fc8, nn.Linear):
            self._init_fc8(fc8)
        self.classifier.fc8 = fc8

    def _init_fc8(self, fc8: nn.Linear) -> None:
        """Initialise a new fc8 (PyTorch's default unless a subclass says otherwise)."""

    def get_classifier(self) -> nn.Module:
        return self.classifier.fc8


class PooledHeadModel(ClassifierModel):
    """The head of GoogLeNet onwards: global pooling (``self.global_pool``, a
    :class:`~cnnlab.layers.GlobalPool`), dropout (``self.dropout``), one linear layer
    (``self.fc``); ``reset_classifier`` replaces the pool where told and the linear layer."""

    global_pool: GlobalPool
    dropout: nn.Dropout
    fc: nn.Module

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        check_head(num_classes, global_pool)
        if global_pool is not None:
            self.global_pool = GlobalPool(global_pool)
        self.num_classes = num_classes
        self.fc = replace_linear(self.fc, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc
