"""Weight gradients of small-map convolutions, computed as forward convolutions.

A convolution's weight gradient is itself a convolution: of the input with batch and channels
swapped, by the output gradient (batch and channels swapped too) as the kernel, the stride
becoming its dilation, cropped to the kernel's size. The sum is the same; only its order, so
the last bits, differ. On AVX2 CPUs oneDNN 3.x runs the weight gradient with its older
``jit:avx2`` kernel, which falls to 8-60 GFLOP/s on 2x2 and 1x1 maps, while its forward
kernel keeps 100-150 GFLOP/s on the same sums: ResNet-18's training step at 32 px spends 179
of its 239 ms of convolutions there (docs/performance.md, ``benchmarks/conv_grads.py``).

:class:`SmallMapWeightGrads` is a ``TorchFunctionMode``: inside it, every ``conv2d`` that
trains an ungrouped kernel larger than 1x1 on an input map of at most
``MAX_INPUT_AREA`` pixels (fp32, CPU, no autocast) gets its weight gradient the swapped way;
its forward pass and input gradient stay oneDNN's. :func:`small_map_weight_grads` enters
it only inside the forward pass of a model's convolutions that could qualify, so that the
rest of the model runs without its per-call Python cost; ``cnnlab train`` does that where
:func:`small_map_grads_wanted` says so (``--small-map-grads``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlab.errors import CnnlabError

__all__ = [
    "MAX_INPUT_AREA",
    "SMALL_MAP_GRADS",
    "SmallMapWeightGrads",
    "small_map_grads_wanted",
    "small_map_weight_grads",
    "weight_grad_as_forward",
]

# Input maps up to 7x7: the swapped form won on every layer measured there (EPYC, 32 and
# 224 px) and lost at 8x8 with 64 channels (docs/performance.md).
MAX_INPUT_AREA = 49
SMALL_MAP_GRADS = ("auto", "on", "off")
Pair = tuple[int, int]


def small_map_grads_wanted(setting: str, device: torch.device) -> bool:
    """Whether ``--small-map-grads`` (``auto``, ``on`` or ``off``) applies on ``device``:
    only CPUs; ``auto`` only where PyTorch's CPU capability is AVX2 (x86 without AVX-512,
    the kind of CPU it was measured on; elsewhere oneDNN runs other kernels)."""
    if setting not in SMALL_MAP_GRADS:
        raise CnnlabError(f"--small-map-grads must be one of {', '.join(SMALL_MAP_GRADS)}, "
                          f"got {setting!r}")  # fmt: skip
    if device.type != "cpu" or setting == "off":
        return False
    return setting == "on" or torch.backends.cpu.get_cpu_capability() == "AVX2"


def weight_grad_as_forward(
    x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, stride: Pair, padding: Pair,
    dilation: Pair,
) -> torch.Tensor:  # fmt: skip
    """The gradient of ``weight`` (K, C, kh, kw) in a convolution of ``x`` (N, C, H, W)
    whose output gradient is ``grad`` (N, K, Ho, Wo), as one forward convolution, in
    ``weight``'s memory format."""
    kernel = weight.shape[2:]
    layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else (
        torch.contiguous_format)  # fmt: skip
    xt = x.transpose(0, 1).contiguous(memory_format=layout)
    gt = grad.transpose(0, 1).contiguous(memory_format=layout)
    out = torch.conv2d(xt, gt, None, dilation, padding, stride)
    return out[..., : kernel[0], : kernel[1]].transpose(0, 1).contiguous(memory_format=layout)


class _Conv2d(torch.autograd.Function):
    """``conv2d`` (groups 1) whose weight gradient is :func:`weight_grad_as_forward`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: Pair, padding: Pair, dilation: Pair) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, padding, dilation
        return torch.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_as_forward(x, grad, weight, stride, padding, dilation)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def _conv2d_args(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: Any = 1) -> tuple[Any, ...]:  # fmt: skip
    """``torch.conv2d``'s arguments, however they were passed."""
    return input, weight, bias, stride, padding, dilation, groups


def _pair(value: int | tuple[int, ...] | list[int]) -> Pair:
    return (value, value) if isinstance(value, int) else (value[0], value[-1])


def _swappable(x: Any, weight: Any, padding: Any, groups: Any) -> bool:
    """Whether the weight gradient of this conv2d call is taken the swapped way."""
    return (
        isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
        and x.dim() == 4 and x.shape[2] * x.shape[3] <= MAX_INPUT_AREA
        and groups == 1 and weight.shape[2] * weight.shape[3] > 1
        and not isinstance(padding, str) and weight.requires_grad and torch.is_grad_enabled()
        and x.device.type == weight.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    )  # fmt: skip


class SmallMapWeightGrads(TorchFunctionMode):
    """Inside this mode, the weight gradients of small-map convolutions are taken as forward
    convolutions (module docstring); every other call runs unchanged."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:  # fmt: skip
        kwargs = kwargs or {}
        if func is torch.conv2d:
            x, weight, bias, stride, padding, dilation, groups = _conv2d_args(*args, **kwargs)
            if _swappable(x, weight, padding, groups):
                return _Conv2d.apply(x, weight, bias, _pair(stride), _pair(padding),
                                     _pair(dilation))  # fmt: skip
        return func(*args, **kwargs)


@contextlib.contextmanager
def small_map_weight_grads(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While inside, each of ``model``'s ``nn.Conv2d`` with an ungrouped kernel larger than
    1x1 runs its forward pass in :class:`SmallMapWeightGrads` when its input map is small
    enough (hooks, removed on leaving); the rest of the model never enters the mode.
    ``enabled=False``: nothing changes."""
    if not enabled:
        yield
        return
    mode, entered = SmallMapWeightGrads(), []

    def enter(conv: nn.Module, args: tuple) -> None:  # a returned value would replace args
        x = args[0] if args else None
        small = isinstance(x, torch.Tensor) and x.dim() == 4 and (
            x.shape[2] * x.shape[3] <= MAX_INPUT_AREA)  # fmt: skip
        if small:
            mode.__enter__()
        entered.append(small)

    def leave(*_: Any) -> None:
        if entered.pop():
            mode.__exit__(None, None, None)

    handles = []
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d) and conv.groups == 1 and math.prod(conv.kernel_size) > 1:
            handles.append(conv.register_forward_pre_hook(enter))
            handles.append(conv.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
