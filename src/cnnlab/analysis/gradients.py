"""Gradient flow: per-layer gradient norms at initialisation and after some training steps.

The norm of each Conv/Linear weight gradient, from the input side to the output side, shows
what the seeds describe: in a deep plain network the early layers receive smaller gradients
than in the same network with residual connections (He et al. 2016, Sec. 4.1, Figure 4
discusses the degradation of ``plain34`` against ``resnet34``); a network without batch norm
(VGG-19) against the same with it (Ioffe & Szegedy 2015). ``clip_grad_norm`` caps the total
norm before each step (Pascanu et al. 2013) and the report records the norm it saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.io import atomic_path

__all__ = ["GradientReport", "gradient_norms", "plot_gradients", "random_batches"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class GradientReport:
    """Per-layer gradient norms of one model; lists follow ``layers`` (input to output)."""

    layers: list[str]  # qualified names of the Conv/Linear layers, in forward order
    init: list[float]  # ||dL/dW|| on the first batch, before any update
    final: list[float] | None  # the same on the next batch after ``steps`` updates
    losses: list[float]  # loss of every step, then of the final batch
    total_norms: list[float]  # total gradient norm of every step, before clipping
    steps: int
    clip_grad_norm: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def random_batches(
    input_size: tuple[int, ...], num_classes: int, batch_size: int = 8, seed: int = 0
) -> list[Batch]:
    """One fixed random batch (standard-normal images, uniform labels): data of its own."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((batch_size, *input_size), generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return [(images, labels)]


def _forever(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Iterate ``batches`` again and again (a DataLoader reshuffles on each pass)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("no batches to compute gradients on")


def _weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.weight.requires_grad
    ]


def gradient_norms(
    model: nn.Module,
    batches: Iterable[Batch],
    steps: int = 0,
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    clip_grad_norm: float | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> GradientReport:
    """Weight-gradient norm of every Conv/Linear layer at init and after ``steps`` SGD steps.

    ``batches`` yields ``(images, labels)`` and is cycled as needed. The model trains in train
    mode with SGD (``lr``, ``momentum``); ``clip_grad_norm`` clips the total norm before each
    step. Layers are listed in forward order (the order they run), so a plot reads from the
    input (left) to the output (right).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if clip_grad_norm is not None and clip_grad_norm <= 0:
        raise ValueError(f"clip_grad_norm must be positive, got {clip_grad_norm}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    model.to(device).train()
    layers = _weighted_layers(model)
    order: dict[nn.Module, int] = {}

    def record(module: nn.Module, _: tuple) -> None:  # a pre-hook's return would replace input
        order.setdefault(module, len(order))

    handles = [m.register_forward_pre_hook(record) for _, m in layers]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    stream = _forever(batches)
    losses: list[float] = []
    total_norms: list[float] = []

    def backward() -> None:
        images, labels = next(stream)
        optimizer.zero_grad(set_to_none=True)
        out = model(images.to(device))
        logits = out[0] if isinstance(out, (tuple, list)) else out
        loss = loss_fn(logits, labels.to(device))
        loss.backward()
        losses.append(float(loss.detach()))

    def norms() -> list[float]:
        return [
            float(m.weight.grad.norm()) if m.weight.grad is not None else 0.0 for _, m in ordered
        ]

    try:
        backward()
        for h in handles:
            h.remove()
        ordered = sorted(layers, key=lambda item: order.get(item[1], len(order)))
        init = norms()
        for step in range(steps):
            if step > 0:
                backward()
            limit = clip_grad_norm if clip_grad_norm is not None else float("inf")
            total_norms.append(float(nn.utils.clip_grad_norm_(params, limit)))
            optimizer.step()
        final = None
        if steps:
            backward()
            final = norms()
    finally:
        for h in handles:
            h.remove()
        optimizer.zero_grad(set_to_none=True)
    return GradientReport(
        layers=[name for name, _ in ordered],
        init=init,
        final=final,
        losses=losses,
        total_norms=total_norms,
        steps=steps,
        clip_grad_norm=clip_grad_norm,
    )


def plot_gradients(reports: dict[str, GradientReport], path: str | Path) -> Path:
    """One line per model: gradient norm (log) by layer depth, at init and after training."""
    from cnnlab.analysis.compare import check_plot_path

    target = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = all(r.final is not None for r in reports.values())
    fig, axes = plt.subplots(1, 2 if trained else 1, figsize=(12 if trained else 6.5, 4.5))
    axes = list(axes) if trained else [axes]
    panels = [("init", "at initialisation")]
    if trained:
        steps = next(iter(reports.values())).steps
        panels.append(("final", f"after {steps} SGD steps"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, report in reports.items():
            values = getattr(report, key)
            ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
        ax.set(yscale="log", xlabel="weight layer (input → output)", ylabel="‖∂L/∂W‖")
        ax.set_title(f"per-layer gradient norm {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=target.suffix.lstrip(".").lower(), dpi=100)
    plt.close(fig)
    return target
