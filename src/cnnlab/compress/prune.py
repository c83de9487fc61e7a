"""Magnitude pruning with masks that hold under any training loop.

Han et al., "Learning both Weights and Connections" (2015) and Deep Compression (ICLR 2016,
section 2): remove every connection whose magnitude is below ``quality x std`` of its layer,
retrain the survivors with the mask fixed, repeat. Zhu & Gupta, "To prune, or not to prune"
(2017, eq. 1) give the gradual alternative: sparsity ramps up as ``s_f (1 - (1 - t/n)^3)``.

A mask is a ``torch.nn.utils.parametrize`` parametrization: the layer's ``weight`` becomes
``where(mask, original, 0)``. Whatever the optimizer does to the stored original (momentum,
weight decay), the weight the network computes with keeps exactly 0.0 at pruned positions, so
the training engineer's ``train_one_epoch`` (or any loop) needs no hook. Build the optimizer
*after* :func:`prune` (the parameter is re-registered).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "Masked",
    "gradual_sparsity",
    "layer_kind",
    "masks_for_sparsity",
    "parse_per_layer",
    "prunable_layers",
    "prune",
    "quality_to_sparsity",
    "resolve_per_layer",
    "sensitivity",
    "strip",
]


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv and Linear layer that has a weight, by qualified name, in model order."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and m.weight is not None
    }


def layer_kind(module: nn.Module) -> str:
    """``"conv"`` or ``"fc"``: the paper gives them different bit widths."""
    return "fc" if isinstance(module, nn.Linear) else "conv"


def resolve_per_layer(
    spec: float | Mapping[str, float] | None, names: Iterable[str], what: str
) -> dict[str, float]:
    """Per-layer values from one number or ``{pattern: value}`` (shell patterns, last wins).

    The pattern ``"*"`` (or a plain number) sets the default; layers no pattern matches are
    left out (not pruned).
    """
    names = list(names)
    if spec is None:
        return {}
    if isinstance(spec, int | float):
        spec = {"*": float(spec)}
    out: dict[str, float] = {}
    for pattern, value in spec.items():
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"{what} pattern {pattern!r} matches no layer (layers: {names})")
        for n in hits:
            out[n] = float(value)
    return out


def parse_per_layer(values: list[str] | None, what: str, cast: type = float) -> Any:
    """``["0.9", "conv1=0.4"]`` -> ``{"*": 0.9, "conv1": 0.4}`` (None when not given)."""
    if not values:
        return None
    out: dict[str, Any] = {}
    for item in values:
        pattern, sep, value = item.rpartition("=")
        try:
            out[pattern if sep else "*"] = cast(value)
        except ValueError:
            raise ValueError(f"--{what} takes VALUE or LAYER_PATTERN=VALUE, got {item!r}") from None
    return out


def quality_to_sparsity(model: nn.Module, quality: Mapping[str, float]) -> dict[str, float]:
    """The fraction of each layer below ``quality x std(weights)`` (Deep Compression, sec. 2)."""
    layers = prunable_layers(model)
    out = {}
    for name, q in quality.items():
        if q < 0:
            raise ValueError(f"quality must be >= 0, got {q} for {name!r}")
        w = layers[name].weight.detach()
        out[name] = float((w.abs() < q * w.std()).float().mean())
    return out


def masks_for_sparsity(model: nn.Module, sparsity: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the ``sparsity`` fraction of smallest-magnitude weights per layer.

    Weights already at zero (pruned earlier) are the smallest, so masks only ever grow.
    """
    layers = prunable_layers(model)
    masks = {}
    for name, s in sparsity.items():
        if not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s} for {name!r}")
        w = layers[name].weight.detach().reshape(-1)
        n_prune = round(s * w.numel())
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[torch.argsort(w.abs(), stable=True)[:n_prune]] = False
        keep &= w != 0
        masks[name] = keep.reshape(layers[name].weight.shape)
    return masks


class Masked(nn.Module):
    """Parametrization ``weight = where(mask, original, 0)``: pruned weights stay exactly 0."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype))


def strip(module: nn.Module) -> None:
    """Bake a layer's weight parametrization (mask or sharing) into a plain parameter."""
    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


@torch.no_grad()
def prune(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Hold ``masks`` on their layers (replacing any earlier mask); returns ``model``."""
    layers = prunable_layers(model)
    for name, mask in masks.items():
        module = layers[name]
        if mask.shape != module.weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}")
        strip(module)
        module.weight.mul_(mask)
        parametrize.register_parametrization(
            module, "weight", Masked(mask.to(module.weight.device))
        )
    return model


def gradual_sparsity(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Zhu & Gupta's cubic ramp: the sparsity after each of ``steps`` pruning steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


@torch.no_grad()
def sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    fractions: Iterable[float] = (0.0, 0.25, 0.5, 0.75, 0.85, 0.9, 0.95),
    layers: Iterable[str] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """Accuracy vs fraction pruned, one layer at a time (Han et al. 2015, figure 6).

    ``evaluate(model) -> accuracy``; each layer is pruned alone by magnitude, evaluated and
    restored. Returns ``{layer: [(fraction, accuracy), ...]}``.
    """
    all_layers = prunable_layers(model)
    names = list(layers) if layers is not None else list(all_layers)
    fractions = list(fractions)
    curves: dict[str, list[tuple[float, float]]] = {}
    for name in names:
        if name not in all_layers:
            raise ValueError(f"unknown layer {name!r}; prunable layers: {list(all_layers)}")
        if parametrize.is_parametrized(all_layers[name]):
            raise ValueError(f"layer {name!r} is already pruned; run sensitivity on a plain model")
        weight = all_layers[name].weight
        saved = weight.detach().clone()
        curve = []
        for f in fractions:
            mask = masks_for_sparsity(model, {name: f})[name]
            weight.mul_(mask)
            curve.append((f, float(evaluate(model))))
            weight.copy_(saved)
        curves[name] = curve
    return curves
