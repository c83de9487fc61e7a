"""Small controlled trainings on real Fashion-MNIST images, shared by the experiments.

The images are held in memory as one tensor (no DataLoader), drawn by a seeded permutation,
so two arms of an experiment see exactly the same images in the same order and differ only
in what the experiment changes. :func:`train_curve` trains one model and records, per epoch,
the training and test loss and top-1; a non-finite loss ends the run and is recorded (the
``exploding-gradients`` experiment needs to see it, not an exception).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.datasets import FASHION_MNIST_STATS, find_fashion_mnist, load_fashion_mnist
from cnnlab.data.transforms import augment_batch
from cnnlab.devices import resolve_device
from cnnlab.train.loop import split_outputs

__all__ = ["FashionSubset", "fashion_subset", "train_curve"]


@dataclass(frozen=True)
class FashionSubset:
    """Normalised float images (N, C, S, S) and int64 labels of a training and a test part."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _prepare(images: torch.Tensor, size: int, in_chans: int) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) to normalised float (N, in_chans, size, size): zero-padded when
    ``size`` is 28-32 (LeCun et al. 1998, Sec. II-A), bilinear-resized otherwise."""
    mean, std = FASHION_MNIST_STATS[0][0], FASHION_MNIST_STATS[1][0]
    x = (images.float() / 255 - mean) / std
    side = images.shape[-1]
    if side <= size <= side + 4:
        pad = size - side
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-mean / std)
    elif size != side:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, in_chans, -1, -1).contiguous() if in_chans != 1 else x


def fashion_subset(
    n_train: int, n_test: int, size: int = 32, in_chans: int = 1, seed: int = 0
) -> FashionSubset:
    """``n_train`` training and ``n_test`` test images of Fashion-MNIST (found as ``cnnlab
    train`` finds it), drawn by a permutation seeded with ``seed``."""
    folder = find_fashion_mnist()
    parts = []
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_fashion_mnist(folder, split)
        if not 1 <= n <= len(labels):
            raise ValueError(f"{split}: asked for {n} images, the set has {len(labels)}")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
        parts += [_prepare(images[order], size, in_chans), labels[order]]
    return FashionSubset(*parts)


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Random crop (padding size / 8) and horizontal flip, per image (``cnnlab train
    --augment`` without the erasing), on normalised float images."""
    low = x.amin()
    return augment_batch(x - low) + low  # the crop pads with zeros: pad with the background


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux_weight: float) -> Any:
    logits, aux = split_outputs(model(x))
    loss = F.cross_entropy(logits, y)
    for a in aux:  # GoogLeNet's auxiliary heads, weighted as in training (Szegedy et al. Sec. 5)
        loss = loss + aux_weight * F.cross_entropy(a, y)
    return loss, logits


@torch.no_grad()
def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 500
) -> tuple:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        part = y[i : i + batch].to(device)
        logits = split_outputs(model(x[i : i + batch].to(device)))[0]
        loss += float(F.cross_entropy(logits, part, reduction="sum"))
        correct += int((logits.argmax(1) == part).sum())
    return loss / len(y), 100.0 * correct / len(y)


def _lr_at(lr: float, schedule: str, step: int, total: int) -> float:
    if schedule == "constant":
        return lr
    return 0.5 * lr * (1 + math.cos(math.pi * step / total))  # cosine to 0


def _optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> Any:
    """SGD with momentum 0.9, or AdamW, over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    aux_weight: float, clip_grad_norm: float | None,
) -> tuple[float, int, float] | None:  # fmt: skip
    """One optimizer step: (loss, correct predictions, total gradient norm before clipping),
    or None, with no step taken, when the loss is not finite."""
    loss, logits = _loss(model, x, y, aux_weight)
    if not torch.isfinite(loss):
        return None
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    limit = clip_grad_norm if clip_grad_norm is not None else math.inf
    norm = float(nn.utils.clip_grad_norm_(params, limit))
    opt.step()
    return float(loss.detach()), int((logits.argmax(1) == y).sum()), norm


def train_curve(
    model: nn.Module,
    data: FashionSubset,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.05,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    clip_grad_norm: float | None = None,
    augment: bool = False,
    aux_weight: float = 0.3,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` (SGD with momentum 0.9, or AdamW); return per-epoch
    figures (``history``: train/test loss and top-1, seconds), the total gradient norm of
    every step (before clipping) and ``nonfinite_step``: the first step whose loss was NaN or
    infinite (the run stops there), else None. ``device``: where to train (default: a CUDA
    GPU if there is one, else the CPU; the ``--full`` scale is meant for a GPU)."""
    if optimizer not in ("sgd", "adamw") or schedule not in ("cosine", "constant"):
        raise ValueError(f"optimizer sgd|adamw and schedule cosine|constant, got "
                         f"{optimizer!r}, {schedule!r}")  # fmt: skip
    torch.manual_seed(seed)
    device = resolve_device(None if device is None else str(device))
    model.to(device)
    opt = _optimizer(model, optimizer, lr, weight_decay)
    n = len(data.train_y)
    per_epoch = max(1, n // batch_size)
    history, norms, nonfinite, step = [], [], None, 0
    for epoch in range(epochs):
        started, seen, total_loss, correct = time.perf_counter(), 0, 0.0, 0
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x, y = data.train_x[idx], data.train_y[idx]
            x = (_augment(x) if augment else x).to(device)
            y = y.to(device)
            for group in opt.param_groups:
                group["lr"] = _lr_at(lr, schedule, step, epochs * per_epoch)
            result = _step(model, opt, x, y, aux_weight, clip_grad_norm)
            if result is None:
                nonfinite = step
                break
            loss, hits, norm = result
            norms.append(norm)
            step, seen = step + 1, seen + len(y)
            total_loss, correct = total_loss + loss * len(y), correct + hits
        if nonfinite is not None:
            break
        test_loss, test_top1 = _evaluate(model, data.test_x, data.test_y, device)
        history.append({
            "epoch": epoch + 1, "train_loss": total_loss / seen,
            "train_top1": 100.0 * correct / seen, "test_loss": test_loss,
            "test_top1": test_top1, "seconds": time.perf_counter() - started,
        })  # fmt: skip
    return {"history": history, "grad_norms": norms, "nonfinite_step": nonfinite, "steps": step}
