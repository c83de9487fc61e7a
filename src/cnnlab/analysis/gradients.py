"""Gradient flow: per-layer gradient norms at initialisation and after some training steps.

The norm of each weight gradient (every layer the MAC counter counts: Conv, Linear, and a
custom layer such as LeNet-5's C3 that states its own MACs), from the input side to the
output side, shows
what the seeds describe: in a deep plain network the early layers receive smaller gradients
than in the same network with residual connections (He et al. 2016, Sec. 4.1, Figure 4
discusses the degradation of ``plain34`` against ``resnet34``); a network without batch norm
(VGG-19) against the same with it (Ioffe & Szegedy 2015). ``clip_grad_norm`` caps the total
norm before each step (Pascanu et al. 2013) and the report records the norm it saw. A model
that returns auxiliary logits in training (GoogLeNet) adds their losses weighted by
``aux_weight``, 0.3 as in its training (Szegedy et al. 2015, Sec. 5); 0 leaves them out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from cnnlab.analysis.macs import counts_macs
from cnnlab.config import MAX_FACTOR
from cnnlab.data import build_loaders

__all__ = ["AUX_WEIGHT", "GradientReport", "batches_for", "gradient_norms", "random_batches"]

Batch = tuple[torch.Tensor, torch.Tensor]
AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary losses in training (Szegedy et al. 2015, Sec. 5)


@dataclasses.dataclass
class GradientReport:
    """Per-layer gradient norms of one model; lists follow ``layers`` (input to output)."""

    layers: list[str]  # qualified names of the weight layers, in forward order
    init: list[float]  # ||dL/dW|| on the first batch, before any update
    final: list[float] | None  # the same on the next batch after ``steps`` updates
    losses: list[float]  # loss of every step, then of the final batch
    total_norms: list[float]  # total gradient norm of every step, before clipping
    steps: int
    clip_grad_norm: float | None
    aux_weight: float = AUX_WEIGHT  # weight of each auxiliary loss (0: left out)
    aux_outputs: int = 0  # auxiliary logits the model returned on the first batch

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


def batches_for(
    data: str,
    input_size: tuple[int, ...],
    batch_size: int = 8,
    steps: int = 0,
    seed: int = 0,
    num_classes: int = 10,
) -> tuple[Iterable[Batch], int]:
    """(batches, class count): one fixed random batch of ``num_classes`` labels for
    ``data="random"``, else the first ``steps + 1`` batches of a data set at ``input_size``."""
    if data == "random":
        return random_batches(input_size, num_classes, batch_size, seed), num_classes
    train, _, classes = build_loaders(
        data, img_size=input_size[1], in_chans=input_size[0], batch_size=batch_size, seed=seed,
        limit=batch_size * (steps + 1),
    )  # fmt: skip
    return train, len(classes)


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
    """Every layer the MAC counter counts whose ``weight`` is a trainable parameter (Conv,
    Linear, Bilinear, or a custom layer with its own ``macs``, such as LeNet-5's C3)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if counts_macs(m)
        and isinstance(getattr(m, "weight", None), nn.Parameter)
        and m.weight.requires_grad
    ]


def _split_logits(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, auxiliary logits) of a model's output: a tensor, or (logits, *aux)."""
    if isinstance(out, torch.Tensor):
        return out, []
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], [a for a in out[1:] if isinstance(a, torch.Tensor)]
    raise TypeError(f"model returned {type(out).__name__}; expected logits or (logits, *aux)")


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
    aux_weight: float = AUX_WEIGHT,
) -> GradientReport:
    """Weight-gradient norm of every weight layer at init and after ``steps`` SGD steps.

    The layers are those the MAC counter counts (:func:`cnnlab.analysis.macs.counts_macs`)
    that hold a trainable ``weight``. ``batches`` yields ``(images, labels)`` and is cycled
    as needed. The model trains in train mode with SGD (``lr``, ``momentum``);
    ``clip_grad_norm`` clips the total norm before each step. The loss adds each auxiliary
    output's loss times ``aux_weight`` (GoogLeNet's 0.3, Szegedy et al. 2015, Sec. 5; 0 leaves
    them out). Layers are listed in forward order (the order they run), so a plot reads from
    the input (left) to the output (right).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0 < lr <= MAX_FACTOR:
        raise ValueError(f"lr must be > 0 and at most 3.4e38 (float32), got {lr}")
    if clip_grad_norm is not None and not 0 < clip_grad_norm < float("inf"):
        raise ValueError(f"clip_grad_norm must be positive and finite, got {clip_grad_norm}")
    if not 0 <= aux_weight < float("inf"):
        raise ValueError(f"aux_weight must be >= 0 and finite, got {aux_weight}")
    model.to(device).train()
    loss = loss_fn or nn.functional.cross_entropy
    run = _Probe(model, batches, lr, momentum, loss, device, aux_weight)
    layers = _weighted_layers(model)
    total_norms: list[float] = []
    try:
        ordered = run.first_backward(layers)
        init = _norms(ordered)
        limit = clip_grad_norm if clip_grad_norm is not None else float("inf")
        for step in range(steps):
            if step > 0:
                run.backward()
            total_norms.append(float(nn.utils.clip_grad_norm_(run.params, limit)))
            run.optimizer.step()
        final = None
        if steps:
            run.backward()
            final = _norms(ordered)
    finally:
        run.optimizer.zero_grad(set_to_none=True)
    return GradientReport(
        layers=[name for name, _ in ordered],
        init=init,
        final=final,
        losses=run.losses,
        total_norms=total_norms,
        steps=steps,
        clip_grad_norm=clip_grad_norm,
        aux_weight=aux_weight,
        aux_outputs=run.aux_outputs,
    )


class _Probe:
    """The model, its SGD optimizer and the batch stream of one :func:`gradient_norms` run."""

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        lr: float,
        momentum: float,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        device: str | torch.device,
        aux_weight: float,
    ) -> None:
        self.model, self.loss_fn, self.device = model, loss_fn, device
        self.aux_weight, self.aux_outputs = aux_weight, 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)
        self.stream = _forever(batches)
        self.losses: list[float] = []  # loss of every backward pass

    def backward(self) -> None:
        """Gradients of the loss on the next batch (previous gradients cleared)."""
        images, labels = next(self.stream)
        self.optimizer.zero_grad(set_to_none=True)
        labels = labels.to(self.device)
        logits, aux = _split_logits(self.model(images.to(self.device)))
        self.aux_outputs = len(aux)
        loss = self.loss_fn(logits, labels)
        for extra in aux if self.aux_weight else []:
            loss = loss + self.aux_weight * self.loss_fn(extra, labels)
        loss.backward()
        self.losses.append(float(loss.detach()))

    def first_backward(self, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        """:meth:`backward` on the first batch; returns ``layers`` in the order they ran."""
        order: dict[nn.Module, int] = {}

        def record(module: nn.Module, _: tuple) -> None:  # a pre-hook's return replaces input
            order.setdefault(module, len(order))

        handles = [m.register_forward_pre_hook(record) for _, m in layers]
        try:
            self.backward()
        finally:
            for h in handles:
                h.remove()
        return sorted(layers, key=lambda item: order.get(item[1], len(order)))


def _norms(ordered: list[tuple[str, nn.Module]]) -> list[float]:
    """The weight-gradient norm of each layer (0 for a layer that got no gradient)."""
    return [float(m.weight.grad.norm()) if m.weight.grad is not None else 0.0 for _, m in ordered]
