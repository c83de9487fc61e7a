"""Multiply-accumulates (MACs) of Conv and Linear layers, counted from shapes.

Conventions of ``docs/reference/architectures.md``: only convolutions and linear layers
count, batch 1; FLOPs = 2 x MACs. Counting hooks read shapes only, so a forward pass on the
``meta`` device counts a model at no compute cost.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from cnnlab.registry import ShapesOnly

# Layers whose MACs `layer_macs` counts from their shapes.
COUNTED_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)


def counts_macs(module: nn.Module) -> bool:
    """Whether :func:`layer_macs` counts ``module``: a Conv, Linear or Bilinear layer, or a
    custom layer that says its own cost through a method ``macs(inputs, output) -> int``."""
    return isinstance(module, COUNTED_TYPES) or callable(getattr(module, "macs", None))


def layer_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """MACs of one call of a layer that :func:`counts_macs` (whole batch); 0 for any other."""
    own = getattr(module, "macs", None)
    if callable(own):
        return int(own(inputs, output))
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # Every input element is scattered into (out_channels / groups) * prod(kernel) outputs.
        return (
            inputs[0].numel()
            * (module.out_channels // module.groups)
            * math.prod(module.kernel_size)
        )
    if isinstance(module, nn.modules.conv._ConvNd):
        # Every output element needs (in_channels / groups) * prod(kernel) multiply-adds.
        return (
            output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        )
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Bilinear):
        return output.numel() * module.in1_features * module.in2_features
    return 0


@torch.no_grad()
def count_macs(
    model: nn.Module, input_size: tuple[int, ...], device: str | torch.device = "meta"
) -> int:
    """Total Conv + Linear MACs of one forward pass at batch 1 for an input of ``input_size``.

    The model is run in eval mode (GoogLeNet's auxiliary heads are not counted) and restored
    to its previous mode. ``device="meta"`` counts from shapes without computing.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += layer_macs(module, inputs, output)

    was_training = model.training
    counted = model if device != "meta" else meta_copy(model)
    handles = [m.register_forward_hook(hook) for m in counted.modules()]
    try:
        counted.eval()
        with ShapesOnly():
            counted(torch.zeros((1, *input_size), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def meta_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it is already on ``meta``, otherwise a ``meta`` copy.

    The deep copy maps every parameter and buffer straight to an empty ``meta`` tensor, so the
    weights are never copied (VGG-16's 553 MB included).
    """
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "meta" for t in tensors):
        return model
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)
