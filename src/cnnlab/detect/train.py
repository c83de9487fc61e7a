"""Training the SSD detectors on a COCO-style folder: a plain loop (:func:`fit`) and a whole
run with checkpoints and resume (:func:`train_detector`, what ``cnnlab train`` calls).

The recipe follows SSD (Liu et al. 2016, Sec. 3): SGD with momentum 0.9 and weight decay
5e-4, the MultiBox loss (:mod:`cnnlab.detect.loss`) on targets matched to the model's default
boxes (:mod:`cnnlab.detect.boxes`), training images augmented with
:class:`~cnnlab.detect.augment.DetectionAugment`. Our choices: a cosine learning-rate schedule
over all steps (the paper steps it down by 10x) and the validation figure is the same loss on
the val split (COCO mAP is :mod:`cnnlab.detect.evaluate`).

A run folder is a classifier run's (:mod:`cnnlab.train.checkpoint`): locked while the run
writes, ``last.*`` committed as one unit at the end of every epoch (weights, optimizer,
schedule, RNG states), ``best.safetensors`` at the lowest validation loss, ``metrics.csv``.
The data order of an epoch depends on (seed, epoch) only and the augmentation draws from
torch's RNG, whose state the checkpoint keeps, so a resumed CPU run ends where an
uninterrupted one does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data import IMAGENET_STATS, Preprocess
from cnnlab.detect.boxes import anchor_targets
from cnnlab.detect.data import DetectionDataset, collate_detection
from cnnlab.detect.loss import multibox_loss
from cnnlab.devices import PRECISIONS, autocast, autocast_dtype, reuse_freed_memory
from cnnlab.errors import CnnlabError
from cnnlab.saved import load
from cnnlab.signals import batches
from cnnlab.weight_grads import SMALL_MAP_GRADS, small_map_grads_wanted, small_map_weight_grads

CPU = torch.device("cpu")

__all__ = [
    "DetectionConfig",
    "batch_targets",
    "detection_loaders",
    "evaluate_loss",
    "fit",
    "init_backbone",
    "prepare",
]


@dataclass(frozen=True)
class DetectionConfig:
    """How :func:`fit` trains. Momentum and weight decay are SSD's (Sec. 3); the learning
    rate is ours (the paper's 1e-3 is for VGG-16 at batch 32, stepped down by 10x).
    ``channels_last``, ``precision``, ``reuse_memory`` and ``small_map_grads`` are ``cnnlab
    train``'s: NHWC weights, autocast to bf16 (``cnnlab.devices.autocast_dtype``; the loss is
    computed in fp32), freed memory kept for reuse (``cnnlab.devices.reuse_freed_memory``),
    and small-map weight gradients as forward convolutions (``cnnlab.weight_grads``)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0
    mean: tuple[float, ...] = IMAGENET_STATS[0]
    std: tuple[float, ...] = IMAGENET_STATS[1]
    channels_last: bool = True
    precision: str | None = None
    reuse_memory: bool = True
    small_map_grads: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")  # fmt: skip
        if self.small_map_grads not in SMALL_MAP_GRADS:
            raise ValueError(f"small_map_grads must be one of {', '.join(SMALL_MAP_GRADS)}, "
                             f"got {self.small_map_grads!r}")  # fmt: skip
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def init_backbone(detector: nn.Module, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy the saved classifier ``source`` (any file :func:`cnnlab.load` takes) into the
    detector's backbone: every layer the detector keeps, by name and shape; the extra layers
    and predictors stay as built. Returns the file's metadata. A file of another model, or one
    whose layers do not fit (another ``in_chans`` or width), is one ``CnnlabError``, with the
    detector untouched."""
    trunk = detector.features.backbone
    classifier, meta = load(source, trunk.model_name)
    weights, own = classifier.state_dict(), trunk.graph_module.state_dict()
    wrong = sorted(k for k, v in own.items() if k not in weights or weights[k].shape != v.shape)
    if wrong:
        raise CnnlabError(
            f"{os.fspath(source)!r} ({meta['model']}, {meta['in_chans']} channel(s)) does not "
            f"fit the backbone of {getattr(detector, 'model_name', 'the detector')} "
            f"({trunk.input_size[0]} channel(s)): {', '.join(wrong[:5])} differ"
        )
    trunk.graph_module.load_state_dict({k: weights[k] for k in own})
    return meta


def prepare(model: nn.Module, config: DetectionConfig) -> torch.dtype | None:
    """Put ``model``'s weights channels-last and keep freed memory for reuse where ``config``
    asks (in place; for the process); return the autocast dtype of ``config.precision`` on
    the CPU (None: fp32)."""
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.reuse_memory:
        reuse_freed_memory()
    return autocast_dtype(config.precision, CPU)


def _losses(
    model: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]],
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, dict[str, Any]]:  # fmt: skip
    """The MultiBox loss of one batch: the forward pass under autocast to ``dtype``, the
    matching and the loss in fp32."""
    offsets, classes = batch_targets(targets, model.anchors, model.input_size[1])
    with autocast(CPU, dtype):
        regression, logits = model(images)
    return multibox_loss(regression.float(), logits.float(), offsets, classes)


def batch_targets(
    targets: list[dict[str, torch.Tensor]], anchors: torch.Tensor, image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(offsets (N, A, 4), classes (N, A))`` of a batch's targets on ``anchors``."""
    pairs = [anchor_targets(t["boxes"], t["labels"], anchors, image_size) for t in targets]
    return torch.stack([o for o, _ in pairs]), torch.stack([c for _, c in pairs])


def detection_loaders(
    model: nn.Module, root: str | os.PathLike[str], config: DetectionConfig, strict: bool = False
) -> tuple[DataLoader, DataLoader]:
    """Train and val loaders of the COCO-style folder ``root`` at the model's input size."""
    in_chans, size, _ = model.input_size
    pre = Preprocess(size, in_chans, tuple(config.mean), tuple(config.std))
    train = DetectionDataset(root, "train", pre, augment=config.augment, strict=strict)
    val = DetectionDataset(root, "val", pre, strict=strict)
    g = torch.Generator().manual_seed(config.seed)
    return (
        DataLoader(train, config.batch_size, shuffle=True, generator=g,
                   collate_fn=collate_detection, drop_last=len(train) > config.batch_size),
        DataLoader(val, config.batch_size, collate_fn=collate_detection),
    )  # fmt: skip


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, loader: DataLoader, dtype: torch.dtype | None = None
) -> dict[str, float]:
    """The MultiBox loss over ``loader`` in eval mode, weighted by each batch's positives."""
    model.eval()
    total = {"loc": 0.0, "conf": 0.0, "positives": 0}
    for images, targets in batches(loader):
        _, parts = _losses(model, images, targets, dtype)
        total["loc"] += parts["loc"] * parts["positives"]
        total["conf"] += parts["conf"] * parts["positives"]
        total["positives"] += parts["positives"]
    n = max(total["positives"], 1)
    return {"loss": (total["loc"] + total["conf"]) / n, "loc": total["loc"] / n,
            "conf": total["conf"] / n}  # fmt: skip


def _train_epoch(
    model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, sched: Any, step: int,
    dtype: torch.dtype | None = None, small_map_grads: str = "off",
) -> dict[str, float]:  # fmt: skip
    """One pass over ``loader``: the mean loss and its parts. A NaN or infinite loss is a
    ``CnnlabError`` naming the step (``step``: the steps done before this epoch).
    ``small_map_grads``: ``DetectionConfig.small_map_grads``."""
    model.train()
    sums, steps = {"loss": 0.0, "loc": 0.0, "conf": 0.0}, 0
    with small_map_weight_grads(model, small_map_grads_wanted(small_map_grads, CPU)):
        for images, targets in batches(loader):
            loss, parts = _losses(model, images, targets, dtype)
            if not math.isfinite(loss.item()):
                raise CnnlabError(f"loss is {loss.item()} at step {step + steps + 1}; stopped")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums["loss"] += loss.item()
            sums["loc"] += parts["loc"]
            sums["conf"] += parts["conf"]
            steps += 1
    return {k: v / max(steps, 1) for k, v in sums.items()}


def _optimizer(model: nn.Module, config: DetectionConfig, steps: int) -> tuple[Any, Any]:
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)  # fmt: skip
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))


def fit(
    model: nn.Module,
    root: str | os.PathLike[str],
    config: DetectionConfig,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` (an :class:`~cnnlab.models.ssd.SSD`) on ``root``'s train split for
    ``config.epochs``, writing nothing; returns one row per epoch (train loss parts, val
    loss), each also passed to ``log``. :func:`train_detector` is the run with checkpoints."""
    torch.manual_seed(config.seed)
    dtype = prepare(model, config)
    train, val = detection_loaders(model, root, config)
    opt, sched = _optimizer(model, config, config.epochs * len(train))
    history = []
    for epoch in range(1, config.epochs + 1):
        done = (epoch - 1) * len(train)
        row = {
            "epoch": epoch,
            **_train_epoch(model, train, opt, sched, done, dtype, config.small_map_grads),
        }
        row["val"] = evaluate_loss(model, val, dtype)
        history.append(row)
        if log is not None:
            log(row)
    return history
