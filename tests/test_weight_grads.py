"""Small-map weight gradients as forward convolutions (cnnlab.weight_grads): the same
gradients as PyTorch's, taken only where the rule says, and used by ``cnnlab train``."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, fit
from cnnlab.weight_grads import (
    MAX_INPUT_AREA,
    SmallMapWeightGrads,
    small_map_grads_wanted,
    small_map_weight_grads,
    weight_grad_as_forward,
)

CL = torch.channels_last


@pytest.mark.parametrize(
    ("n", "c", "k", "size", "kernel", "stride", "padding", "dilation", "layout"),
    [
        (8, 16, 32, 7, (3, 3), 1, 1, 1, CL),
        (8, 16, 32, 4, (3, 3), 2, 1, 1, torch.contiguous_format),
        (4, 8, 8, 6, (5, 5), 1, 2, 1, CL),
        (4, 8, 8, 5, (3, 3), 1, 0, 2, torch.contiguous_format),
        (4, 8, 8, 7, (3, 1), 2, 0, 1, CL),
        (4, 8, 8, 2, (3, 3), 1, 1, 1, CL),
        (4, 8, 8, 1, (3, 3), 2, 1, 1, torch.contiguous_format),
    ],
)  # fmt: skip
def test_weight_grad_as_forward_equals_onednn(n, c, k, size, kernel, stride, padding, dilation,
                                              layout) -> None:  # fmt: skip
    torch.manual_seed(0)
    x = torch.randn(n, c, size, size).contiguous(memory_format=layout)
    w = torch.randn(k, c, *kernel).contiguous(memory_format=layout)
    geometry = [stride] * 2, [padding] * 2, [dilation] * 2
    grad = torch.randn_like(torch.conv2d(x, w, None, *geometry))
    expected = torch.ops.aten.convolution_backward(
        grad, x, w, None, *geometry, False, [0, 0], 1, [False, True, False]
    )[1]  # fmt: skip
    got = weight_grad_as_forward(x, grad, w, *(tuple(g) for g in geometry))
    assert got.shape == w.shape
    assert got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


class SmallNet(nn.Module):
    """A 3x3 convolution on a 4x4 map (swapped), one on 8x8 (too large), a 1x1 (too small a
    kernel) and a depthwise one (grouped): only the first is taken the swapped way."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Conv2d(3, 8, 3, padding=1)
        self.small = nn.Conv2d(8, 16, 3, padding=1, bias=True)
        self.pointwise = nn.Conv2d(16, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.big(x)), 2)  # 8x8 -> 4x4
        x = self.depthwise(self.pointwise(torch.relu(self.small(x))))
        return self.head(x.mean((2, 3)))


def _grads(model: nn.Module, x: torch.Tensor, mode: bool) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with SmallMapWeightGrads() if mode else torch.enable_grad():
        loss = model(x).square().sum()
    loss.backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
def test_the_mode_gives_pytorchs_gradients(layout) -> None:
    torch.manual_seed(0)
    model = SmallNet().to(memory_format=layout)
    x = torch.randn(6, 3, 8, 8).contiguous(memory_format=layout)
    for ours, theirs in zip(_grads(copy.deepcopy(model), x, True), _grads(model, x, False),
                            strict=True):  # fmt: skip
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_the_hooks_enter_the_mode_only_for_small_inputs(monkeypatch) -> None:
    """The 8x8 convolution of SmallNet never enters the mode; the 4x4 one does, once."""
    entered, enter = [], SmallMapWeightGrads.__enter__
    monkeypatch.setattr(SmallMapWeightGrads, "__enter__",
                        lambda self: entered.append(1) or enter(self))  # fmt: skip
    model = SmallNet()
    with small_map_weight_grads(model):
        model(torch.randn(2, 3, 8, 8))
        assert len(entered) == 1
        model(torch.randn(2, 3, 32, 32))  # both maps too large
        assert len(entered) == 1


def test_the_hooks_scope_the_mode_to_convolutions_and_go_away() -> None:
    torch.manual_seed(0)
    model, x = SmallNet(), torch.randn(6, 3, 8, 8)
    expected = _grads(copy.deepcopy(model), x, False)
    backward_of = {}
    for name in ("big", "small"):
        getattr(model, name).register_forward_hook(
            lambda m, i, out, name=name: backward_of.update({name: type(out.grad_fn).__name__})
        )
    with small_map_weight_grads(model):
        got = _grads(model, x, False)
        assert torch._C._len_torch_function_stack() == 0  # left after each convolution
        with pytest.raises(RuntimeError):
            model(torch.randn(6, 4, 8, 8))  # a convolution that fails
        assert torch._C._len_torch_function_stack() == 0
    assert "_Conv2d" in backward_of["small"] and "_Conv2d" not in backward_of["big"]
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert all(
        len(m._forward_pre_hooks) == 0 and len(m._forward_hooks) == (m in (model.big, model.small))
        for m in model.modules()
    )


def _taken(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    with SmallMapWeightGrads():
        y = conv(x)
    return y.grad_fn is not None and "_Conv2d" in type(y.grad_fn).__name__


def test_only_small_ungrouped_trained_kernels_are_swapped() -> None:
    side = int(MAX_INPUT_AREA**0.5)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    assert _taken(conv, torch.randn(2, 4, side, side))
    assert not _taken(conv, torch.randn(2, 4, side + 1, side + 1))  # map too large
    assert not _taken(nn.Conv2d(4, 4, 1), torch.randn(2, 4, 4, 4))  # 1x1 kernel
    assert not _taken(nn.Conv2d(4, 4, 3, groups=2), torch.randn(2, 4, 4, 4))
    assert not _taken(nn.Conv2d(4, 4, 3, padding="same"), torch.randn(2, 4, 4, 4))
    assert not _taken(conv.double(), torch.randn(2, 4, 4, 4, dtype=torch.float64))
    frozen = nn.Conv2d(4, 4, 3).requires_grad_(False)
    assert not _taken(frozen, torch.randn(2, 4, 4, 4, requires_grad=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _taken(nn.Conv2d(4, 4, 3), torch.randn(2, 4, 4, 4))
    with torch.no_grad():
        assert not _taken(nn.Conv2d(4, 4, 3), torch.randn(2, 4, 4, 4))


def test_keyword_arguments_reach_the_convolution() -> None:
    x, w = torch.randn(2, 4, 5, 5), torch.randn(6, 4, 3, 3, requires_grad=True)
    with SmallMapWeightGrads():
        y = torch.conv2d(input=x, weight=w, stride=2, padding=1)
    torch.testing.assert_close(y, torch.conv2d(x, w, None, 2, 1))
    y.sum().backward()
    expected = torch.autograd.grad(torch.conv2d(x, w, None, 2, 1).sum(), w)[0]
    torch.testing.assert_close(w.grad, expected)


def test_when_it_is_wanted(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert small_map_grads_wanted("auto", cpu)
    assert not small_map_grads_wanted("auto", cuda) and not small_map_grads_wanted("on", cuda)
    assert not small_map_grads_wanted("off", cpu)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert not small_map_grads_wanted("auto", cpu)
    assert small_map_grads_wanted("on", cpu)
    with pytest.raises(CnnlabError, match="--small-map-grads must be one of auto, on, off"):
        small_map_grads_wanted("yes", cpu)
    with pytest.raises(ValueError, match="small_map_grads must be one of"):
        TrainConfig(model="resnet20", small_map_grads="yes")


def test_training_uses_it_where_asked(tmp_path, monkeypatch) -> None:
    """``cnnlab train`` enters the mode with ``on`` and not with ``off``; the two runs train
    alike (the same sums in another order)."""
    entered, enter = [], SmallMapWeightGrads.__enter__
    monkeypatch.setattr(SmallMapWeightGrads, "__enter__",
                        lambda self: entered.append(1) or enter(self))  # fmt: skip
    weights = {}
    for setting in ("on", "off"):
        entered.clear()
        cfg = TrainConfig(model="resnet20", data="synthetic", epochs=1, limit=64, batch_size=16,
                          img_size=8, small_map_grads=setting)  # fmt: skip
        fit(cfg, tmp_path / setting, progress=False, tensorboard=False)
        assert bool(entered) == (setting == "on")
        weights[setting] = load_file(tmp_path / setting / "last.safetensors")
    for name, tensor in weights["off"].items():
        torch.testing.assert_close(weights["on"][name], tensor, rtol=1e-3, atol=1e-5)
