"""The three-stage pipeline of Deep Compression and its paper-style report.

Han, Mao, Dally, ICLR 2016, figure 1: prune (with retraining) -> trained quantization (k-means
weight sharing, centroid fine-tuning) -> Huffman coding. Retraining uses the training loop of
``cnnlab.train`` unchanged: masks and shared weights are parametrizations, so they hold under
it (see :mod:`cnnlab.compress.prune` and :mod:`cnnlab.compress.quantize`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlab.codec import CnzReport
from cnnlab.compress import recipe as recipes
from cnnlab.compress.prune import (
    gradual_sparsity,
    layer_kind,
    masks_for_sparsity,
    prunable_layers,
    prune,
    quality_to_sparsity,
    resolve_per_layer,
    strip,
)
from cnnlab.compress.quantize import INITS, round_to_half, share_weights
from cnnlab.compress.store import plain_state_dict
from cnnlab.config import MAX_FACTOR, option
from cnnlab.errors import CnnlabError
from cnnlab.train import (
    Distillation,
    NonFiniteLossError,
    build_optimizer,
    evaluate,
    train_one_epoch,
)

__all__ = [
    "CompressionConfig",
    "check_config",
    "compress",
    "finalize",
    "layer_table",
    "model_bytes",
    "plan",
]

SCHEDULES = ("iterative", "gradual")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class CompressionConfig:
    """What to prune, how many bits to share, how long to retrain.

    ``quality`` (threshold = quality x std of the layer's weights) or ``sparsity`` (fraction
    removed) is one number for every layer or ``{layer pattern: value}``; without either,
    ``recipe`` decides per layer (:mod:`cnnlab.compress.recipe`: ``"paper"``,
    ``"sensitivity"`` within ``tolerance`` top-1 points, or a TOML file; by default the
    paper's table where it has one, else the sensitivity sweep). ``bits`` (per layer) override
    the recipe's bits and ``conv_bits`` / ``fc_bits`` (the paper's 8 / 5). ``prune_steps``
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
    recipe: str | None = option(
        None,
        "per-layer sparsity and bits: paper (Han et al.'s table: lenet_300_100, lenet5_caffe, "
        "alexnet, vgg16), sensitivity (a quick per-layer sweep) or a .toml file; default: "
        "paper where it has a table, else sensitivity",
        metavar="paper|sensitivity|FILE.toml",
    )
    tolerance: float = option(1.0, "sensitivity recipe: top-1 points one layer's pruning may cost")
    prune_steps: int = option(1, "prune/retrain rounds")
    schedule: str = option(
        "iterative", "sparsity per round: linear, or Zhu & Gupta's cubic ramp", choices=SCHEDULES
    )
    retrain_epochs: int = option(1, "retraining epochs per round")
    finetune_epochs: int = option(1, "centroid fine-tuning epochs")
    conv_bits: int = option(8, "weight-sharing bits for conv layers")
    fc_bits: int = option(5, "weight-sharing bits for fc layers")
    bits: Mapping[str, int] | None = None
    init: str = option("linear", "k-means centroid initialisation", choices=INITS)
    optimizer: str = option(
        "sgd",
        "retraining optimizer: SGD + momentum + L2 (the paper's) or AdamW",
        choices=OPTIMIZERS,
    )
    lr: float = option(0.01, "retraining learning rate")
    finetune_optimizer: str | None = option(
        None,
        "centroid fine-tuning optimizer (default: --optimizer); adamw suits layers of very many "
        "weights per centroid",
        choices=OPTIMIZERS,
    )
    finetune_lr: float = option(0.001, "centroid fine-tuning learning rate")
    momentum: float = option(0.9, "SGD momentum in retraining")
    weight_decay: float = option(1e-4, "weight decay in retraining")
    distill: float = option(
        0.0, "weight of distillation from the uncompressed model in retraining (0: off)"
    )
    distill_temperature: float = option(4.0, "distillation temperature")
    half_precision_other: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = [k for k in ("quality", "sparsity", "recipe") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of quality, sparsity and recipe, not {' and '.join(given)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS or self.finetune_optimizer not in (None, *OPTIMIZERS):
            raise ValueError(
                f"optimizer and finetune_optimizer must be one of {OPTIMIZERS}, "
                f"got {self.optimizer!r} and {self.finetune_optimizer!r}"
            )
        if self.prune_steps < 1 or self.retrain_epochs < 0 or self.finetune_epochs < 0:
            raise ValueError("prune_steps must be >= 1 and epochs >= 0")
        if not 0 <= self.distill <= 1 or not 0 < self.distill_temperature <= MAX_FACTOR:
            raise ValueError(
                "distill must be in [0, 1] and distill_temperature > 0 and at most 3.4e38 "
                f"(float32), got {self.distill} and {self.distill_temperature}"
            )
        for name in ("lr", "finetune_lr"):
            if not 0 < getattr(self, name) <= MAX_FACTOR:
                raise ValueError(
                    f"{name} must be > 0 and at most 3.4e38 (float32), got {getattr(self, name)}"
                )
        if not 0 <= self.weight_decay <= MAX_FACTOR:
            raise ValueError(
                f"weight_decay must be >= 0 and at most 3.4e38 (float32), got {self.weight_decay}"
            )
        if not 0 <= self.momentum < 1 or not 0 <= self.tolerance <= 100:
            raise ValueError("momentum must be in [0, 1) and tolerance in [0, 100] points")
        if not (1 <= self.conv_bits <= 16 and 1 <= self.fc_bits <= 16):
            raise ValueError("conv_bits and fc_bits must be in 1..16")


def _retrain(
    model: nn.Module,
    loader: Any,
    epochs: int,
    optimizer_name: str,
    lr: float,
    cfg: CompressionConfig,
    device: str,
    distill: Distillation | None,
    progress: Callable[[str], None] | None = None,
    label: str = "retrain",
) -> None:
    """``epochs`` of training; ``progress`` gets one line per epoch (``label``, loss, top-1)."""
    if epochs == 0:
        return
    optimizer = build_optimizer(
        model, optimizer_name, lr, cfg.weight_decay, momentum=cfg.momentum, nesterov=False,
        decay_1d=True,
    )  # fmt: skip
    # Cosine decay to zero over the round, per batch: the round ends on converged weights.
    steps = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for epoch in range(1, epochs + 1):
        try:
            m = train_one_epoch(
                model, loader, optimizer, device=device, scheduler=scheduler, distill=distill
            )
        except NonFiniteLossError as exc:
            raise CnnlabError(
                f"{label} epoch {epoch}/{epochs}: loss is {exc.value} at batch {exc.batch + 1} "
                f"(of {len(loader)}); stopped before the step, nothing was saved (the learning "
                "rate may be too high)"
            ) from None
        if progress:
            progress(f"{label} epoch {epoch}/{epochs}: loss {m['loss']:.4f}, "
                     f"train top-1 {100 * m['top1']:.2f}%")  # fmt: skip


def finalize(model: nn.Module, half_precision_other: bool = True) -> nn.Module:
    """Bake masks and shared weights into plain parameters (and round the rest to float16)."""
    for module in prunable_layers(model).values():
        strip(module)
    if half_precision_other:
        round_to_half(model)
    return model


def check_config(model: nn.Module, cfg: CompressionConfig) -> None:
    """Everything ``cfg`` says about ``model``'s layers, checked before any work (no
    evaluation): sparsity / quality patterns and ranges, ``bits`` layer names and widths, and
    the recipe (the paper's table for this model, or the TOML file). ``ValueError`` or
    ``CnnlabError`` on the first problem."""
    names = list(prunable_layers(model))
    for what, bound in (("sparsity", 1.0), ("quality", math.inf)):
        values = resolve_per_layer(getattr(cfg, what), names, what)
        bad = {n: v for n, v in values.items() if not (0 <= v < bound)}
        if bad:
            limit = "[0, 1)" if bound == 1.0 else ">= 0 and finite"
            raise ValueError(f"{what} must be {limit}; got {bad}")
    unknown = [n for n in (cfg.bits or {}) if n not in names]
    if unknown:
        raise ValueError(f"bits given for unknown layers {unknown} (layers: {names})")
    bad_bits = {n: b for n, b in (cfg.bits or {}).items() if not 1 <= b <= 16}
    if bad_bits:
        raise ValueError(f"bits must be in 1..16; got {bad_bits}")
    if cfg.sparsity is None and cfg.quality is None:
        recipes.check(model, cfg.recipe)


def plan(
    model: nn.Module, cfg: CompressionConfig, top1: Callable[[nn.Module], float]
) -> recipes.Recipe:
    """The per-layer sparsity and bits: from ``quality`` / ``sparsity`` where given, else
    from ``cfg.recipe`` (:func:`cnnlab.compress.recipe.choose`); ``bits`` override per layer.
    ``top1(model)`` (in %) serves the sensitivity recipe."""
    names = list(prunable_layers(model))
    if cfg.sparsity is not None or cfg.quality is not None:
        if cfg.sparsity is not None:
            target = resolve_per_layer(cfg.sparsity, names, "sparsity")
        else:
            target = quality_to_sparsity(model, resolve_per_layer(cfg.quality, names, "quality"))
        recipe = recipes.Recipe("options", target, {})
    else:
        recipe = recipes.choose(model, cfg.recipe, top1, cfg.tolerance)
    kinds = {n: layer_kind(m) for n, m in prunable_layers(model).items()}
    bits = {n: cfg.conv_bits if kinds[n] == "conv" else cfg.fc_bits for n in names}
    bits |= recipe.bits | dict(cfg.bits or {})
    unknown = [n for n in bits if n not in kinds]
    if unknown:
        raise ValueError(f"bits given for unknown layers {unknown} (layers: {names})")
    return recipes.Recipe(recipe.source, recipe.sparsity, bits)


def _ramps(recipe: recipes.Recipe, cfg: CompressionConfig) -> list[dict[str, float]]:
    """The sparsity of every layer after each prune/retrain round."""
    steps = cfg.prune_steps
    if cfg.schedule == "gradual":
        per_layer = {n: gradual_sparsity(s, steps) for n, s in recipe.sparsity.items()}
    else:
        per_layer = {
            n: [s * t / steps for t in range(1, steps + 1)] for n, s in recipe.sparsity.items()
        }
    return [{n: r[step] for n, r in per_layer.items()} for step in range(steps)]


def _stage(model: nn.Module, stage: str, top1_top5: Callable[[], dict[str, float]]) -> dict:
    """One row of the report: top-1 / top-5 in % (rounded as stored) and the weights kept;
    a non-finite validation loss is an error (nothing broken is stored)."""
    metrics = top1_top5()
    if not math.isfinite(metrics["loss"]):  # diverged retraining, or values float16 cannot hold
        raise CnnlabError(
            f"the {stage} model's validation loss is {metrics['loss']} (weights or outputs not "
            "finite: a lower learning rate may help); stopped, nothing was saved"
        )
    layers = prunable_layers(model).values()
    kept = sum(int((m.weight != 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    return {
        "stage": stage,
        "top1": round(100 * metrics["top1"], 2),
        "top5": round(100 * metrics["top5"], 2),
        "kept": round(kept / total, 5),
    }


def compress(
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    cfg: CompressionConfig,
    *,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Prune, retrain, share weights, fine-tune centroids; ``model`` is changed in place.

    Returns ``{"recipe": the per-layer plan (source, sparsity, bits), "stages": [...]}``, one
    stage per step (``stage``, ``top1`` and ``top5`` in %, ``kept`` fraction of Conv/Linear
    weights). At the end the model holds plain weights exactly as
    :func:`cnnlab.compress.save` stores them. ``cfg`` is checked against the model first
    (:func:`check_config`); ``log`` gets the stage lines, ``progress`` one line per
    retraining epoch.
    """
    check_config(model, cfg)
    model.to(device)
    teacher = copy.deepcopy(model) if cfg.distill else None  # before anything is pruned
    distill = Distillation(teacher, cfg.distill, cfg.distill_temperature) if teacher else None
    stages, record = _recorder(model, val_loader, device, log)

    def top1(m: nn.Module) -> float:  # the sensitivity recipe prunes a CPU model
        return 100 * evaluate(on_device(m, device), val_loader, device=device)["top1"]

    record("baseline")
    with _on_cpu(model, device):
        recipe = plan(model, cfg, top1)
    if log:
        log(f"    recipe: {recipe.source}, " + ", ".join(
            f"{n} {1 - s:.0%} kept" for n, s in recipe.sparsity.items()))  # fmt: skip
    for step, sparsity in enumerate(_ramps(recipe, cfg), 1):
        with _on_cpu(model, device):
            prune(model, masks_for_sparsity(model, sparsity))
        _retrain(model, train_loader, cfg.retrain_epochs, cfg.optimizer, cfg.lr, cfg, device,
                 distill, progress, f"retrain round {step}/{cfg.prune_steps}")  # fmt: skip
    record("pruned")
    with _on_cpu(model, device):
        share_weights(model, recipe.bits, init=cfg.init)
    record("quantized")
    if cfg.finetune_epochs:
        _retrain(model, train_loader, cfg.finetune_epochs, cfg.finetune_optimizer or cfg.optimizer,
                 cfg.finetune_lr, cfg, device, distill, progress, "fine-tune")  # fmt: skip
        record("finetuned")
    with _on_cpu(model, device):
        finalize(model, cfg.half_precision_other)
    record("stored")
    model.cpu()
    return {"recipe": recipe.as_dict(), "stages": stages}


def _recorder(
    model: nn.Module, val_loader: Any, device: str, log: Callable[[str], None] | None
) -> tuple[list[dict[str, Any]], Callable[[str], None]]:
    """The report's stage rows and the function that evaluates and appends one."""
    stages: list[dict[str, Any]] = []

    def record(stage: str) -> None:
        stages.append(_stage(model, stage, lambda: evaluate(model, val_loader, device=device)))
        if log:
            s = stages[-1]
            log(f"{stage:>10}: top-1 {s['top1']:.2f}  top-5 {s['top5']:.2f}  "
                f"weights kept {100 * s['kept']:.1f}%")  # fmt: skip

    return stages, record


def on_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` itself on the CPU, else a copy of it on ``device`` (for evaluating a model
    that pruning code keeps on the CPU)."""
    return model if torch.device(device).type == "cpu" else copy.deepcopy(model).to(device)


@contextlib.contextmanager
def _on_cpu(model: nn.Module, device: str | torch.device) -> Iterator[None]:
    """The model on the CPU for a while (masks and codebooks are built there), then back on
    ``device`` with them."""
    model.cpu()
    try:
        yield
    finally:
        model.to(device)


def model_bytes(model: nn.Module) -> int:
    """Size of the uncompressed model: every state-dict tensor at its own dtype."""
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
