"""The comparison table of seed 004 (parameters, top-1, top-5 of Xception, VGG16 and
MobileNet V1/V2 rows), reconciled: which counting convention reproduces each row's parameter
count, and the MACs at each row's input resolution. The accuracy columns need ImageNet.

The table's figures are those of the Keras applications page (Xception, VGG16) and of the
TF-slim MobileNet checkpoint tables (MobileNet rows; their rho values are 192/224 = 0.857,
128/224 = 0.571 and 96/224 = 0.429, printed rounded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.analysis import count_macs
from cnnlab.experiments.base import Experiment, pyplot, register, save_figure
from cnnlab.registry import build_model

TOLERANCE = 0.01  # a row is reproduced if some convention is within 1% of its figure
SIDES = (224, 192, 160, 128, 96)  # the resolutions the MobileNet papers ran

# Seed 004's table: label, model, keywords, rho (None: the model's own input), params in
# millions, top-1, top-5.
_V1, _V2 = "mobilenet_v1", "mobilenet_v2"
SEED_TABLE: list[tuple[str, str, dict[str, float], float | None, float, float, float]] = [
    ("Xception", "xception", {}, None, 22.91, 0.790, 0.945),
    ("VGG16", "vgg16", {}, None, 138.35, 0.715, 0.901),
    ("MobileNetV1 (alpha=1, rho=1)", _V1, {"alpha": 1.0}, 1.0, 4.20, 0.709, 0.899),
    ("MobileNetV1 (alpha=0.75, rho=0.85)", _V1, {"alpha": 0.75}, 0.85, 2.59, 0.672, 0.873),
    ("MobileNetV1 (alpha=0.25, rho=0.57)", _V1, {"alpha": 0.25}, 0.57, 0.47, 0.415, 0.663),
    ("MobileNetV2 (alpha=1.4, rho=1)", _V2, {"alpha": 1.4}, 1.0, 6.06, 0.750, 0.925),
    ("MobileNetV2 (alpha=1, rho=1)", _V2, {"alpha": 1.0}, 1.0, 3.47, 0.718, 0.910),
    ("MobileNetV2 (alpha=0.35, rho=0.43)", _V2, {"alpha": 0.35}, 0.43, 1.66, 0.455, 0.704),
]  # fmt: skip

CONVENTIONS = {
    "trainable": "trainable parameters, 1000 classes (PyTorch, torchvision)",
    "keras_total": "trainable + BN moving mean and variance, 1000 classes (Keras 'Total params')",
    "classes_1001": "trainable, 1001 classes (TF-slim's extra background class)",
    "no_bn_affine": "conv and FC weights and biases only, no BN gamma/beta, 1000 classes",
    "no_bn_affine_1001": "conv and FC weights and biases only, 1001 classes (TF-slim count)",
}


def _side(model: nn.Module, rho: float | None) -> int:
    """The row's input side: the model's own, or the paper resolution nearest 224 * rho."""
    if rho is None:
        return model.input_size[-1]
    return min(SIDES, key=lambda s: abs(s - 224 * rho))


def _counts(model: nn.Module) -> dict[str, int]:
    """The row's parameter count under every convention of :data:`CONVENTIONS`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    affine = sum(p.numel() for m in norms for p in m.parameters(recurse=False))
    stats = sum(m.running_mean.numel() + m.running_var.numel() for m in norms)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    extra_class = model.get_classifier().in_features + 1
    return {
        "trainable": trainable,
        "keras_total": trainable + stats,
        "classes_1001": trainable + extra_class,
        "no_bn_affine": trainable - affine,
        "no_bn_affine_1001": trainable - affine + extra_class,
    }


def _row(label: str, name: str, kwargs: dict, rho: float | None, params_m: float,
         top1: float, top5: float) -> dict[str, Any]:  # fmt: skip
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    side = _side(model, rho)
    counts = _counts(model)
    seed = params_m * 1e6
    deviation = {k: (v - seed) / seed for k, v in counts.items()}
    best = min(deviation, key=lambda k: abs(deviation[k]))
    return {
        "row": label, "model": name, "keywords": kwargs, "input_side": side,
        "seed_params": seed, "counts": counts, "deviation": deviation,
        "best_convention": best, "best_deviation": deviation[best],
        "within_rounding": abs(counts[best] - seed) <= 0.005e6,  # the seed prints 0.01M
        "macs": count_macs(model, (3, side, side)),
        "seed_top1": top1, "seed_top5": top5, "accuracy": "not-testable (needs ImageNet)",
    }  # fmt: skip


def run_keras(scale: str) -> dict[str, Any]:
    """Every row of the table, counted; the same at every scale (shapes only)."""
    rows = [_row(*entry) for entry in SEED_TABLE]
    worst = {k: max(abs(r["deviation"][k]) for r in rows) for k in CONVENTIONS}
    return {"rows": rows, "conventions": CONVENTIONS, "worst_deviation_per_convention": worst}


def judge_keras(figures: dict[str, Any]) -> tuple[str, str]:
    """Params hold if every row is within 1% under some convention; accuracy not tested."""
    rows = figures["rows"]
    ok = [r for r in rows if abs(r["best_deviation"]) <= TOLERANCE]
    verdict = "holds" if len(ok) == len(rows) else "partly" if ok else "contradicted"
    worst = max(rows, key=lambda r: abs(r["best_deviation"]))
    single = min(figures["worst_deviation_per_convention"].items(), key=lambda kv: kv[1])
    reason = (
        f"{len(ok)} of {len(rows)} rows' parameter counts reproduced within 1% (worst: "
        f"{worst['row']}, {worst['best_deviation']:+.2%} under {worst['best_convention']}); "
        f"the best single convention, {single[0]}, is within {single[1]:.2%} of every row; "
        f"the top-1/top-5 columns are not testable without ImageNet"
    )
    return verdict, reason


def plot_keras(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = figures["rows"]
    labels = [r["row"].replace("MobileNet", "MN").replace(" (", "\n(") for r in rows]
    y = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    ax1.barh([i + 0.2 for i in y], [r["seed_params"] / 1e6 for r in rows], 0.4, label="seed 004")
    ax1.barh([i - 0.2 for i in y], [r["counts"][r["best_convention"]] / 1e6 for r in rows], 0.4,
             label="ours (closest convention)")  # fmt: skip
    ax1.set_xscale("log")
    ax1.set_xlabel("parameters (M)")
    ax1.set_yticks(list(y), labels, fontsize=7)
    ax1.legend(fontsize=7)
    ax2.barh(list(y), [r["macs"] / 1e6 for r in rows], color="tab:green")
    ax2.set_xscale("log")
    ax2.set_xlabel("MACs at the row's input (M)")
    fig.suptitle("Seed 004's comparison table, counted")
    save_figure(fig, path)


register(Experiment(
    name="keras-table",
    claim="the comparison table: Xception 22.91M parameters (top-1 0.790), VGG16 138.35M "
    "(0.715), MobileNetV1 4.20M / 2.59M / 0.47M (0.709 / 0.672 / 0.415), MobileNetV2 6.06M / "
    "3.47M / 1.66M (0.750 / 0.718 / 0.455) (seed 004)",
    seed="004",
    source="Keras applications table (Xception, VGG16); TF-slim MobileNet V1/V2 checkpoint "
    "tables; Howard et al. 2017 Sec. 4.2, Sandler et al. 2018 Sec. 6.1",
    rule="params hold if every row's figure is reproduced within 1% by at least one stated "
    "counting convention (with/without BN moving statistics, 1000 or 1001 classes, with or "
    "without BN gamma/beta), partly if some rows are, contradicted if none; MACs are reported "
    "at each row's input (rho * 224 rounded to the papers' 224/192/160/128/96); the accuracy "
    "columns are not testable without ImageNet and do not enter the verdict",
    run=run_keras,
    judge=judge_keras,
    plot=plot_keras,
))  # fmt: skip
