"""The three-stage pipeline of Deep Compression and its paper-style report.

Han, Mao, Dally, ICLR 2016, figure 1: prune (with retraining) -> trained quantization (k-means
weight sharing, centroid fine-tuning) -> Huffman coding. Retraining uses the training loop of
``cnnlab.train`` unchanged: masks and shared weights are parametrizations, so they hold under
it (see :mod:`cnnlab.compress.prune` and :mod:`cnnlab.compress.quantize`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnnlab.compress.format import CnzReport
from cnnlab.compress.prune import (
    gradual_sparsity,
    masks_for_sparsity,
    prunable_layers,
    prune,
    quality_to_sparsity,
    resolve_per_layer,
    strip,
)
from cnnlab.compress.quantize import round_to_half, share_weights

if TYPE_CHECKING:
    from cnnlab.train import Distillation

__all__ = ["CompressionConfig", "compress", "finalize", "layer_table", "model_bytes"]

SCHEDULES = ("iterative", "gradual")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class CompressionConfig:
    """What to prune, how many bits to share, how long to retrain.

    ``quality`` (threshold = quality x std of the layer's weights) or ``sparsity`` (fraction
    removed) is one number for every layer or ``{layer pattern: value}``. ``prune_steps``
    reaches the target in that many prune/retrain rounds: ``"iterative"`` raises the sparsity
    linearly, ``"gradual"`` on Zhu & Gupta's cubic ramp. ``retrain_epochs`` is per round;
    ``finetune_epochs`` fine-tunes the centroids. Retraining uses SGD with momentum and L2
    weight decay (the paper found L2 best for retraining), the learning rate decaying to zero
    on a cosine within each round. ``optimizer="adamw"`` retrains with AdamW instead
    (decoupled weight decay): the right choice for a baseline trained with AdamW, whose
    weights SGD's step sizes do not suit. ``finetune_optimizer`` (default: ``optimizer``)
    trains the codebooks. With SGD a centroid moves by the learning rate times the *sum* of
    its members' gradients (the paper's rule), so its step grows with its cluster: VGG-16's
    fc6 at 4% kept has 128,451 weights per 5-bit centroid, and at lr 1e-3 one step moves them
    12x the spacing between centroids (``benchmarks/centroid_steps.py``). AdamW's step does
    not depend on the cluster's size. ``distill > 0`` makes every retraining and fine-tuning
    epoch distil from the uncompressed model (Hinton et al., 2015) with that weight and
    ``distill_temperature``: the dense network's soft outputs guide the pruned and shared one
    back (not in the paper; Polino et al., ICLR 2018, use it for quantization).
    """

    quality: float | Mapping[str, float] | None = None
    sparsity: float | Mapping[str, float] | None = None
    prune_steps: int = 1
    schedule: str = "iterative"
    retrain_epochs: int = 1
    finetune_epochs: int = 1
    conv_bits: int = 8
    fc_bits: int = 5
    bits: Mapping[str, int] | None = None
    init: str = "linear"
    optimizer: str = "sgd"
    lr: float = 0.01
    finetune_optimizer: str | None = None
    finetune_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    distill: float = 0.0
    distill_temperature: float = 4.0
    half_precision_other: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if (self.quality is None) == (self.sparsity is None):
            raise ValueError("give exactly one of quality and sparsity")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS or self.finetune_optimizer not in (None, *OPTIMIZERS):
            raise ValueError(
                f"optimizer and finetune_optimizer must be one of {OPTIMIZERS}, "
                f"got {self.optimizer!r} and {self.finetune_optimizer!r}"
            )
        if self.prune_steps < 1 or self.retrain_epochs < 0 or self.finetune_epochs < 0:
            raise ValueError("prune_steps must be >= 1 and epochs >= 0")
        if not 0 <= self.distill <= 1 or not self.distill_temperature > 0:
            raise ValueError("distill must be in [0, 1] and distill_temperature > 0")


def _retrain(
    model: nn.Module,
    loader: Any,
    epochs: int,
    optimizer_name: str,
    lr: float,
    cfg: CompressionConfig,
    device: str,
    distill: Distillation | None,
) -> None:
    from cnnlab.train import train_one_epoch

    if epochs == 0:
        return
    if optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    # Cosine decay to zero over the round, per batch: the round ends on converged weights.
    steps = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in range(epochs):
        train_one_epoch(
            model, loader, optimizer, device=device, scheduler=scheduler, distill=distill
        )


def finalize(model: nn.Module, half_precision_other: bool = True) -> nn.Module:
    """Bake masks and shared weights into plain parameters (and round the rest to float16)."""
    for module in prunable_layers(model).values():
        strip(module)
    if half_precision_other:
        round_to_half(model)
    return model


def compress(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    cfg: CompressionConfig,
    *,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Prune, retrain, share weights, fine-tune centroids; ``model`` is changed in place.

    Returns one record per stage (``stage``, ``top1`` and ``top5`` in %, ``kept`` fraction of
    Conv/Linear weights). At the end the model holds plain weights exactly as
    :func:`cnnlab.compress.save` stores them.
    """
    from cnnlab.train import Distillation, evaluate

    cfg.check()
    model.to(device)
    distill = (  # the teacher: the model as given, before anything is pruned
        Distillation(copy.deepcopy(model), cfg.distill, cfg.distill_temperature)
        if cfg.distill
        else None
    )
    names = list(prunable_layers(model))
    stages: list[dict[str, Any]] = []

    def record(stage: str) -> None:
        metrics = evaluate(model, val_loader, device=device)
        layers = prunable_layers(model).values()
        kept = sum(int((m.weight != 0).sum()) for m in layers)
        total = sum(m.weight.numel() for m in layers)
        stages.append(
            {  # evaluate() gives fractions; the report speaks in percent. Rounded: the last
                "stage": stage,  # record's top-1/top-5 go into the file's header.
                "top1": round(100 * metrics["top1"], 2),
                "top5": round(100 * metrics["top5"], 2),
                "kept": round(kept / total, 5),
            }
        )
        if log:
            log(
                f"{stage:>10}: top-1 {stages[-1]['top1']:.2f}  top-5 {stages[-1]['top5']:.2f}  "
                f"weights kept {100 * kept / total:.1f}%"
            )

    record("baseline")
    if cfg.sparsity is not None:
        target = resolve_per_layer(cfg.sparsity, names, "sparsity")
    else:
        target = quality_to_sparsity(model, resolve_per_layer(cfg.quality, names, "quality"))
    if cfg.schedule == "gradual":
        ramps = {n: gradual_sparsity(s, cfg.prune_steps) for n, s in target.items()}
    else:
        ramps = {
            n: [s * t / cfg.prune_steps for t in range(1, cfg.prune_steps + 1)]
            for n, s in target.items()
        }
    for step in range(cfg.prune_steps):
        prune(model, masks_for_sparsity(model, {n: r[step] for n, r in ramps.items()}))
        _retrain(
            model, train_loader, cfg.retrain_epochs, cfg.optimizer, cfg.lr, cfg, device, distill
        )
    record("pruned")
    share_weights(model, cfg.bits, conv_bits=cfg.conv_bits, fc_bits=cfg.fc_bits, init=cfg.init)
    record("quantized")
    if cfg.finetune_epochs:
        finetune_optimizer = cfg.finetune_optimizer or cfg.optimizer
        _retrain(
            model,
            train_loader,
            cfg.finetune_epochs,
            finetune_optimizer,
            cfg.finetune_lr,
            cfg,
            device,
            distill,
        )
        record("finetuned")
    finalize(model, cfg.half_precision_other)
    model.cpu()
    record("stored")
    return stages


def model_bytes(model: nn.Module) -> int:
    """Size of the uncompressed model: every state-dict tensor at its own dtype."""
    from cnnlab.compress.format import plain_state_dict

    return sum(t.numel() * t.element_size() for t in plain_state_dict(model).values())


def layer_table(report: CnzReport, model: nn.Module, size_before: int) -> dict[str, Any]:
    """Deep Compression's per-layer table (Tables 2-3) from the byte accounting of a file.

    Per Conv/Linear weight: count, kept %, bits per weight after quantization (fixed width)
    and after Huffman, relative-index bits fixed -> after Huffman (per non-zero weight, fillers
    included), and the section's bytes as % of the layer's float32 weights. ``other`` is
    everything else in the file (biases, BN, names, header, checksums).
    """
    weight_keys = {f"{n}.weight": n for n in prunable_layers(model)}
    rows, other = [], report.header_bytes
    for t in report.tensors:
        if t.name not in weight_keys:
            other += t.bytes
            continue
        nz = max(t.nonzero, 1)
        rows.append(
            {
                "layer": weight_keys[t.name],
                "weights": t.numel,
                "kept": t.nonzero / t.numel,
                "encoding": t.encoding,
                "weight_bits": t.weight_bits if t.encoding == "shared" else 32,
                "weight_bits_huffman": t.weight_stream_bits / nz
                if t.encoding == "shared"
                else None,
                "index_bits": t.index_bits if t.encoding == "shared" else None,
                "index_bits_huffman": t.index_stream_bits / nz if t.encoding == "shared" else None,
                "bytes": t.bytes,
                "ratio": t.bytes / (4 * t.numel),
            }
        )
    weights = sum(r["weights"] for r in rows)
    nonzero = sum(r["kept"] * r["weights"] for r in rows)
    shared = [t for t in report.tensors if t.name in weight_keys and t.encoding == "shared"]
    nz_shared = max(sum(t.nonzero for t in shared), 1)
    # The paper's intermediate ratios, computed (not stored): CSR with fixed-width relative
    # indices (fillers included) and float32 values (pruning only) or codebook indices (P+Q).
    pruned_bits = sum(t.index_entries * (32 + t.index_bits) for t in shared)
    pq_bits = sum(
        t.index_entries * (t.weight_bits + t.index_bits) + 32 * t.codebook_size for t in shared
    )
    dense_other = report.size - sum(t.bytes for t in shared)
    return {
        "layers": rows,
        "total": {
            "weights": weights,
            "kept": nonzero / max(weights, 1),
            "weight_bits_huffman": sum(t.weight_stream_bits for t in shared) / nz_shared,
            "index_bits_huffman": sum(t.index_stream_bits for t in shared) / nz_shared,
            "other_bytes": other,
            "size_before": size_before,
            "size_after": report.size,
            "ratio": size_before / report.size,
            "ratio_pruning_only": size_before / (dense_other + math.ceil(pruned_bits / 8)),
            "ratio_pruning_quantization": size_before / (dense_other + math.ceil(pq_bits / 8)),
        },
    }
