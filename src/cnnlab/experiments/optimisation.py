"""Optimisation claims (seeds 000, 001): auxiliary heads, exploding and vanishing gradients,
initialisation and the degradation of deep plain networks, measured on Fashion-MNIST.

Every arm of an experiment starts from the same seed and sees the same images in the same
order (:func:`cnnlab.experiments.training.train_curve`); the arms differ only in what the
claim is about. The plain CNN of ``exploding-gradients``, ``vanishing-gradients`` and
``init`` (:func:`plain_cnn`) has no batch normalisation, since BN would hide what the
claims are about (Ioffe & Szegedy 2015): a 3x3 conv stem of stride 2 (28 -> 14 pixels),
3x3 convs of 16 channels, one of stride 2 to 32 channels (7 pixels) half way, a global
average pool and a linear layer. Gradient norms come from
:func:`cnnlab.analysis.gradient_norms` (one weight-gradient norm per layer, input to output).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.analysis import gradient_norms
from cnnlab.experiments.base import Experiment, combine, pyplot, register, save_figure
from cnnlab.experiments.training import FashionSubset, fashion_subset, train_curve
from cnnlab.registry import build_model

__all__ = ["ACTIVATIONS", "INITS", "plain_cnn"]

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
INITS = ("he", "xavier", "normal")  # He et al. 2015; Glorot & Bengio 2010; N(0, 0.01)
AUX_WEIGHT = 0.3  # Szegedy et al. 2015, Sec. 5


def plain_cnn(depth: int, activation: str = "relu", init: str = "he", width: int = 16) -> nn.Module:
    """A plain CNN of ``depth`` weight layers (``depth - 1`` 3x3 convs and a linear layer),
    no batch norm, for 28x28 inputs; ``init`` is ``he`` (normal, fan-in, He et al. 2015
    Sec. 2.2), ``xavier`` (normal, Glorot & Bengio 2010 eq. 12) or ``normal`` (N(0, 0.01),
    Krizhevsky et al. 2012 Sec. 5); biases start at 0."""
    if depth < 3 or activation not in ACTIVATIONS or init not in INITS:
        raise ValueError(f"depth >= 3, activation in {list(ACTIVATIONS)}, init in {INITS}")
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = [nn.Conv2d(1, width, 3, stride=2, padding=1), act()]
    channels, half = width, (depth - 2) // 2
    for i in range(depth - 2):
        out, stride = (2 * width, 2) if i == half else (channels, 1)
        layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1), act()]
        channels = out
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "he":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif init == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    return model


def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 (%) in eval mode."""
    model.eval()
    with torch.no_grad():
        hits = sum(
            int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
            for i in range(0, len(y), batch)
        )
    return 100.0 * hits / len(y)


def _curve_figures(curve: dict[str, Any]) -> dict[str, Any]:
    """The scalar end of a :func:`train_curve` run, plus its per-epoch history."""
    last = curve["history"][-1] if curve["history"] else {}
    norms = [n for n in curve["grad_norms"] if math.isfinite(n)]
    return {
        "train_loss": last.get("train_loss"),
        "train_top1": last.get("train_top1"),
        "test_top1": last.get("test_top1"),
        "nonfinite_step": curve["nonfinite_step"],
        "steps": curve["steps"],
        "max_grad_norm": max(norms) if norms else None,
        "history": curve["history"],
    }


def _batch(data: FashionSubset, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(data.train_x[:n], data.train_y[:n])]


def _first_over_last(norms: list[float]) -> float:
    """The first weight layer's gradient norm over the last one's."""
    return norms[0] / norms[-1] if norms[-1] > 0 else math.inf


# --- aux-heads --------------------------------------------------------------------------

AUX_SCALES = {
    "quick": {"size": 32, "n_train": 64, "n_test": 64, "epochs": 1, "batch": 32, "probe": 16},
    "default": {"size": 48, "n_train": 2000, "n_test": 1000, "epochs": 6, "batch": 64,
                "probe": 32},
    "full": {"size": 112, "n_train": 60000, "n_test": 10000, "epochs": 30, "batch": 128,
             "probe": 64},
}  # fmt: skip
AUX_LR = 0.01
LOWER = ("stem.", "blocks.inception3", "blocks.inception4a.")  # below the first aux head
MIDDLE = ("blocks.inception4b.", "blocks.inception4c.", "blocks.inception4d.")
GRADIENT_GAIN = (1.05, 1.2)  # aux / no aux: contradicted below 1.05, holds from 1.2
GAP_POINTS = 2.0  # the train-test gap must shrink by 2 points of top-1 to count


def _aux_probe(model: nn.Module, batch: list) -> dict[str, Any]:
    """Per-layer gradient norms of ``model`` on ``batch`` with the aux losses (x 0.3) and
    without them, at the same weights and dropout masks."""
    reports = {}
    for key, weight in (("with_aux", AUX_WEIGHT), ("without_aux", 0.0)):
        torch.manual_seed(1)  # the same dropout masks: only the loss differs
        reports[key] = gradient_norms(model, batch, aux_weight=weight)
    layers = reports["with_aux"].layers
    ratio = [
        w / wo if wo > 0 else math.inf
        for w, wo in zip(reports["with_aux"].init, reports["without_aux"].init, strict=True)
    ]
    lower = [r for n, r in zip(layers, ratio, strict=True) if n.startswith(LOWER)]
    middle = [r for n, r in zip(layers, ratio, strict=True) if n.startswith(MIDDLE)]
    return {
        "layers": layers, "with_aux": reports["with_aux"].init,
        "without_aux": reports["without_aux"].init, "ratio": ratio,
        "lower_median_ratio": statistics.median(lower),
        "middle_median_ratio": statistics.median(middle),
    }  # fmt: skip


def run_aux(scale: str) -> dict[str, Any]:
    s = AUX_SCALES[scale]
    data = fashion_subset(s["n_train"], s["n_test"], size=s["size"], seed=0)
    probe = _batch(data, s["probe"])
    arms: dict[str, Any] = {}
    for arm, weight in (("aux", AUX_WEIGHT), ("no_aux", 0.0)):
        torch.manual_seed(0)  # both arms: the same GoogLeNet, aux heads built in both
        model = build_model("googlenet", num_classes=10, in_chans=1)
        at_init = _aux_probe(model, probe) if arm == "aux" else None
        curve = train_curve(model, data, epochs=s["epochs"], batch_size=s["batch"], lr=AUX_LR,
                            aux_weight=weight, seed=0)  # fmt: skip
        arms[arm] = _curve_figures(curve)
        arms[arm]["train_top1_eval"] = _top1(model, data.train_x, data.train_y)
        arms[arm]["gap"] = arms[arm]["train_top1_eval"] - (arms[arm]["test_top1"] or 0.0)
        arms[arm]["probe_trained"] = _aux_probe(model, probe)
        if at_init is not None:
            arms[arm]["probe_init"] = at_init
    return {"setup": {**s, "lr": AUX_LR, "aux_weight": AUX_WEIGHT, "model": "googlenet"},
            **arms}  # fmt: skip


def judge_aux(figures: dict[str, Any]) -> tuple[str, str]:
    """Gradient part on the lower layers' median gain, regularisation part on the gap."""
    aux, no_aux = figures["aux"], figures["no_aux"]
    gains = (aux["probe_init"]["lower_median_ratio"], aux["probe_trained"]["lower_median_ratio"])
    lo, hi = GRADIENT_GAIN
    gradient = "holds" if min(gains) >= hi else "contradicted" if max(gains) < lo else "partly"
    shrink = no_aux["gap"] - aux["gap"]
    regular = "holds" if shrink >= GAP_POINTS else "contradicted" if shrink <= 0 else "partly"
    reason = (
        f"the aux losses (x {AUX_WEIGHT}) multiply the lower layers' gradient norm (median over "
        f"the stem to inception 4a) by {gains[0]:.2f} at init and {gains[1]:.2f} after training "
        f"-> {gradient}; train-test top-1 gap {aux['gap']:.1f} points with aux heads, "
        f"{no_aux['gap']:.1f} without (test top-1 {aux['test_top1']:.1f}% vs "
        f"{no_aux['test_top1']:.1f}%): shrinks by {shrink:.1f} -> {regular}"
    )
    return combine({"gradient": gradient, "regularisation": regular}), reason


def plot_aux(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, label in (("probe_init", "at init"), ("probe_trained", "after training")):
        probe = figures["aux"][key]
        left.plot(range(1, len(probe["ratio"]) + 1), probe["ratio"], ".-", label=label)
    left.axhline(1, color="grey", lw=0.8)
    left.set(yscale="log", xlabel="weight layer (input -> output; aux heads last)",
             ylabel="||grad|| with / without aux losses")  # fmt: skip
    left.legend()
    for arm, colour in (("aux", "tab:blue"), ("no_aux", "tab:orange")):
        hist = figures[arm]["history"]
        epochs = [h["epoch"] for h in hist]
        right.plot(epochs, [h["train_top1"] for h in hist], "--", color=colour,
                   label=f"{arm} train")  # fmt: skip
        right.plot(epochs, [h["test_top1"] for h in hist], "-", color=colour, label=f"{arm} test")
    right.set(xlabel="epoch", ylabel="top-1 (%)")
    right.legend()
    fig.suptitle("GoogLeNet's auxiliary heads on Fashion-MNIST (seeds 000, 001)")
    save_figure(fig, path)


register(Experiment(
    name="aux-heads",
    claim="GoogLeNet's auxiliary classifier heads make the signal reach the lower layers "
    "faster, though later work found they help rather as extra regularisation (seed 000); "
    "with them 'better' gradients reach the input layers in backpropagation (seed 001)",
    seed="000",
    source="Szegedy et al. 2015, Sec. 5 (aux losses x 0.3); Szegedy et al. 2016 "
    "(Inception-v3), Sec. 4 (aux heads act as regularisers)",
    rule="gradient part: on the same weights and batch, the median over the layers below "
    "the first aux head (stem to inception 4a) of ||grad|| with the aux losses (x 0.3) over "
    "||grad|| without them; holds if >= 1.2 both at init and after training, contradicted "
    "if < 1.05 at both, else partly; regularisation part: two GoogLeNets from the same "
    "init trained alike, one with the aux losses and one without; the train-test top-1 gap "
    "(train top-1 in eval mode) holds if it shrinks by >= 2 points with aux heads, "
    "contradicted if it does not shrink, else partly; verdict: combine the two",
    run=run_aux,
    judge=judge_aux,
    plot=plot_aux,
))  # fmt: skip
