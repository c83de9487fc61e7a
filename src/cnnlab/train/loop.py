"""One training epoch and one evaluation pass, for any ``nn.Module`` classifier.

A model in training mode may return a tuple (or namedtuple) whose first item is the logits
and the rest auxiliary logits: GoogLeNet's two auxiliary classifiers, whose losses "were added
to the total loss of the network with a discount weight (0.3)" (Szegedy et al., 2015,
section 6). A :class:`Distillation` mixes in a teacher's softened outputs. The forward pass
runs under autocast to ``dtype`` where one is given (bf16: ``cnnlab.devices.autocast_dtype``);
on CUDA the inputs are channels_last.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.devices import autocast
from cnnlab.errors import CnnlabError
from cnnlab.signals import batches
from cnnlab.weight_grads import small_map_weight_grads

__all__ = ["Distillation", "NonFiniteLossError", "evaluate", "split_outputs", "train_one_epoch"]


class NonFiniteLossError(CnnlabError):
    """The loss became NaN or infinite; ``batch`` is the index of the batch in the epoch."""

    def __init__(self, value: float, batch: int) -> None:
        super().__init__(f"loss is {value} at batch {batch} of the epoch")
        self.value, self.batch = value, batch


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x if x.device == device else x.to(device)


def split_outputs(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, auxiliary logits) from whatever the model returned."""
    if isinstance(out, torch.Tensor):
        return out, []
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0], [a for a in out[1:] if isinstance(a, torch.Tensor)]
    raise TypeError(f"model returned {type(out).__name__}; expected logits or (logits, *aux)")


@dataclass
class Distillation:
    """Knowledge distillation (Hinton, Vinyals, Dean, 2015, "Distilling the Knowledge in a
    Neural Network", section 2): the loss becomes ``(1 - weight) x`` the task loss ``+ weight x
    T^2 x KL(softmax(teacher / T) || softmax(student / T))``; the T^2 keeps the soft term's
    gradients on the hard term's scale. The teacher runs in eval mode, without gradients.
    """

    teacher: nn.Module
    weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 1 or not self.temperature > 0:
            raise ValueError("distillation needs 0 <= weight <= 1 and temperature > 0")
        self.teacher.eval().requires_grad_(False)

    def loss(self, task_loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mix ``task_loss`` with the distillation term for the student's ``logits`` on ``x``."""
        with torch.no_grad():
            target, _ = split_outputs(self.teacher(x))
        t = self.temperature
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits.float() / t, 1),
            nn.functional.log_softmax(target.float() / t, 1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - self.weight) * task_loss + self.weight * t * t * soft


def run_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    *,
    device: str | torch.device = "cpu",
    scheduler: Any = None,
    clip_grad_norm: float | None = None,
    aux_weight: float = 0.3,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    distill: Distillation | None = None,
    on_batch: Callable[[int, float, int, int], None] | None = None,
    dtype: torch.dtype | None = None,
    small_map_grads: bool = False,
) -> dict[str, float]:
    """:func:`train_one_epoch` with a per-batch hook ``on_batch(n_images, loss, correct, i)``;
    the forward pass and loss run under autocast to ``dtype`` (None: fp32);
    ``small_map_grads``: in :func:`cnnlab.weight_grads.small_map_weight_grads`."""
    device = torch.device(device)
    loss_fn = loss_fn or nn.functional.cross_entropy
    model.train()
    total_loss = 0.0
    correct = images = 0
    with small_map_weight_grads(model, small_map_grads):
        for i, (x, y) in enumerate(batches(loader)):
            x, y = _to(x, device), y.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits, loss = _forward_loss(model, x, y, loss_fn, aux_weight, distill)
            value = loss.item()
            _check_finite(value, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            n = y.shape[0]
            hits = int((logits.detach().argmax(1) == y).sum())
            total_loss += value * n
            correct += hits
            images += n
            if on_batch is not None:
                on_batch(n, value, hits, i)
    stats = torch.tensor([total_loss, correct, images], dtype=torch.float64)
    if _distributed():
        dist.all_reduce(stats)
    loss_sum, correct_sum, n_sum = stats.tolist()
    if n_sum == 0:
        raise CnnlabError("the training loader yielded no batches (data set smaller than a batch?)")
    return {"loss": loss_sum / n_sum, "top1": correct_sum / n_sum, "images": int(n_sum)}


def _forward_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    aux_weight: float,
    distill: Distillation | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss) of one batch: the task loss, mixed with ``distill``'s term if given, plus
    ``aux_weight`` x each auxiliary head's loss (GoogLeNet, Szegedy et al. 2015, section 6)."""
    logits, aux = split_outputs(model(x))
    loss = loss_fn(logits, y)
    if distill is not None:
        loss = distill.loss(loss, logits, x)
    for a in aux:
        loss = loss + aux_weight * loss_fn(a, y)
    return logits, loss


def _check_finite(value: float, batch: int) -> None:
    """``NonFiniteLossError`` if the loss is NaN or infinite here or, under DDP, in any process
    (the sum over processes is checked, so that every process stops together)."""
    check = value
    if _distributed():
        flag = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(flag)
        check = float(flag)
    if not math.isfinite(check):
        raise NonFiniteLossError(value if not math.isfinite(value) else check, batch)


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    *,
    device: str | torch.device = "cpu",
    scheduler: Any = None,
    clip_grad_norm: float | None = None,
    aux_weight: float = 0.3,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    distill: Distillation | None = None,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader``; return mean loss, top-1 and image count.

    ``scheduler`` (if given) is stepped after every optimizer step (per-batch schedules).
    ``distill`` mixes a teacher's outputs into the main loss. Auxiliary outputs add
    ``aux_weight`` times their loss. A NaN or infinite loss raises
    :class:`NonFiniteLossError` before the optimizer step, so the weights stay finite.
    Under ``torch.distributed`` the returned figures cover all processes.
    """
    return run_epoch(
        model,
        loader,
        optimizer,
        device=device,
        scheduler=scheduler,
        clip_grad_norm=clip_grad_norm,
        aux_weight=aux_weight,
        loss_fn=loss_fn,
        distill=distill,
    )


def _check_labels(y: torch.Tensor, k: int) -> None:
    if y.numel() and int(y.max()) >= k:
        raise CnnlabError(
            f"the data has a class index {int(y.max())} but the model has {k} outputs"
        )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
    dtype: torch.dtype | None = None,
) -> dict:
    """Loss, top-1, top-5, per-class accuracy and confusion matrix (rows: true class).

    The number of classes is the model's output width; a label outside it is a
    ``CnnlabError``. ``on_batch(n_images)`` is called after each batch (progress). Under
    ``torch.distributed`` the counts of all processes are summed, so every process returns
    the figures of the whole set. The forward pass runs under autocast to ``dtype``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    confusion: torch.Tensor | None = None
    loss_sum = torch.zeros((), dtype=torch.float64)
    top5 = 0
    start = time.perf_counter()
    try:
        for x, y in batches(loader):
            x, y = _to(x, device), y.to(device)
            with autocast(device, dtype):
                logits, _ = split_outputs(model(x))
            logits = logits.float()
            k = logits.shape[1]
            _check_labels(y, k)
            if confusion is None:
                confusion = torch.zeros(k, k, dtype=torch.int64, device=device)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double().cpu()
            pred = logits.topk(min(5, k), dim=1).indices
            top5 += int((pred == y[:, None]).any(1).sum())
            confusion += torch.bincount(y * k + pred[:, 0], minlength=k * k).view(k, k)
            if on_batch is not None:
                on_batch(int(y.shape[0]))
    finally:
        model.train(was_training)
    if confusion is None:
        raise CnnlabError("the evaluation loader yielded no images")
    confusion = confusion.cpu()
    stats = torch.tensor([float(loss_sum), top5], dtype=torch.float64)
    if _distributed():
        dist.all_reduce(stats)
        dist.all_reduce(confusion)
    n = int(confusion.sum())
    per_class_n = confusion.sum(1)
    per_class = (confusion.diag().double() / per_class_n.clamp(min=1)).tolist()
    counts = per_class_n.tolist()  # a class absent from the set has accuracy None
    return {
        "loss": float(stats[0]) / n,
        "top1": float(confusion.diag().sum()) / n,
        "top5": float(stats[1]) / n,
        "per_class": [p if c else None for p, c in zip(per_class, counts, strict=True)],
        "confusion": confusion.tolist(),
        "images": n,
        "seconds": time.perf_counter() - start,
    }
