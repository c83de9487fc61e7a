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
    ratio = [  # None for the aux heads' own layers (no gradient without their losses)
        w / wo if wo > 0 else None
        for w, wo in zip(reports["with_aux"].init, reports["without_aux"].init, strict=True)
    ]
    lower = [r for n, r in zip(layers, ratio, strict=True) if n.startswith(LOWER) and r]
    middle = [r for n, r in zip(layers, ratio, strict=True) if n.startswith(MIDDLE) and r]
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
    reason = (
        f"the aux losses (x {AUX_WEIGHT}) multiply the lower layers' gradient norm (median over "
        f"the stem to inception 4a) by {gains[0]:.2f} at init and {gains[1]:.2f} after training "
        f"-> {gradient}; "
    )
    if aux.get("nonfinite_step") is not None or no_aux.get("nonfinite_step") is not None:
        regular = "not-testable"
        reason += "a training run's loss became non-finite: no train-test gap -> not-testable"
    else:
        shrink = no_aux["gap"] - aux["gap"]
        regular = "holds" if shrink >= GAP_POINTS else "contradicted" if shrink <= 0 else "partly"
        reason += (
            f"train-test top-1 gap {aux['gap']:.1f} points with aux heads, {no_aux['gap']:.1f} "
            f"without (test top-1 {aux['test_top1']:.1f}% vs {no_aux['test_top1']:.1f}%): "
            f"shrinks by {shrink:.1f} -> {regular}"
        )
    return combine({"gradient": gradient, "regularisation": regular}), reason


def plot_aux(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, label in (("probe_init", "at init"), ("probe_trained", "after training")):
        ratio = [math.nan if r is None else r for r in figures["aux"][key]["ratio"]]
        left.plot(range(1, len(ratio) + 1), ratio, ".-", label=label)
    left.axhline(1, color="grey", lw=0.8)
    left.set(yscale="log", xlabel="weight layer (input -> output; gaps: the aux heads)",
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


# --- exploding-gradients ----------------------------------------------------------------

EXPLODE_SCALES = {
    "quick": {"depth": 8, "n_train": 256, "n_test": 128, "epochs": 1, "lrs": [0.5]},
    "default": {"depth": 20, "n_train": 3000, "n_test": 1000, "epochs": 2,
                "lrs": [0.01, 0.05, 0.2, 1.0]},
    "full": {"depth": 30, "n_train": 60000, "n_test": 10000, "epochs": 10,
             "lrs": [0.01, 0.05, 0.2, 1.0]},
}  # fmt: skip
CLIP = 1.0  # the total-norm limit (Pascanu et al. 2013, Sec. 3.2)
EXPLODE_BATCH = 64


def run_explode(scale: str) -> dict[str, Any]:
    s = EXPLODE_SCALES[scale]
    data = fashion_subset(s["n_train"], s["n_test"], size=28, seed=0)
    runs = []
    for lr in s["lrs"]:
        for clip in (None, CLIP):
            torch.manual_seed(0)
            model = plain_cnn(s["depth"], "relu", "he")
            curve = train_curve(model, data, epochs=s["epochs"], batch_size=EXPLODE_BATCH, lr=lr,
                                schedule="constant", clip_grad_norm=clip, seed=0)  # fmt: skip
            figures = _curve_figures(curve)
            figures["grad_norms"] = curve["grad_norms"]
            runs.append({"lr": lr, "clip": clip, **figures})
    setup = {**s, "batch": EXPLODE_BATCH, "clip": CLIP, "model": f"plain_cnn({s['depth']}, "
             "relu, he), no BN", "optimizer": "SGD momentum 0.9, constant lr"}  # fmt: skip
    return {"setup": setup, "runs": runs}


def judge_explode(figures: dict[str, Any]) -> tuple[str, str]:
    """At every lr where the unclipped run went non-finite, did the clipped one stay finite?"""
    runs = figures["runs"]
    unclipped = {r["lr"]: r for r in runs if r["clip"] is None}
    clipped = {r["lr"]: r for r in runs if r["clip"] is not None}
    diverged = [lr for lr, r in unclipped.items() if r["nonfinite_step"] is not None]
    saved = [lr for lr in diverged if clipped[lr]["nonfinite_step"] is None]
    if not diverged:
        verdict = "not-testable"
    else:
        verdict = "holds" if saved == diverged else "contradicted" if not saved else "partly"
    parts = [_explode_note(lr, r, clipped[lr]) for lr, r in unclipped.items()]
    reason = (f"{len(diverged)} of {len(unclipped)} learning rates made the unclipped loss "
              f"non-finite, clipping kept {len(saved)} of those finite -> {verdict}. "
              + "; ".join(parts))  # fmt: skip
    return verdict, reason


def _fate(run: dict[str, Any]) -> str:
    if run["nonfinite_step"] is not None:
        return f"non-finite at step {run['nonfinite_step']}"
    return f"finite over {run['steps']} steps, test top-1 {run['test_top1']:.1f}%"


def _explode_note(lr: float, unclipped: dict[str, Any], clipped: dict[str, Any]) -> str:
    largest = unclipped["max_grad_norm"]
    before = f" (largest finite norm {largest:.3g})" if largest is not None else ""
    return f"lr {lr:g}: unclipped {_fate(unclipped)}{before}; clipped {_fate(clipped)}"


def plot_explode(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, r in enumerate(figures["runs"]):
        colour = f"C{i // 2}"
        style = "-" if r["clip"] is None else ":"
        clip = "no clipping" if r["clip"] is None else f"clip {r['clip']:g}"
        label = f"lr {r['lr']:g}, {clip}"
        if r["nonfinite_step"] is not None:
            label += f" (NaN at step {r['nonfinite_step']})"
        ax.plot(r["grad_norms"], style, color=colour, label=label)
        if r["nonfinite_step"] is not None:
            ax.plot(len(r["grad_norms"]), max(r["grad_norms"], default=1), "x", color=colour)
    ax.set(yscale="log", xlabel="SGD step", ylabel="total gradient norm (before clipping)")
    ax.legend(fontsize=7)
    ax.set_title("Exploding gradients in a deep plain CNN without BN, with and without clipping "
                 "(seed 001)", fontsize=9)  # fmt: skip
    save_figure(fig, path)


register(Experiment(
    name="exploding-gradients",
    claim="exploding gradients affect every deep network: the gradient grows too large and "
    "the loss becomes NaN; the remedy is to limit (clip) or normalise the gradient (seed 001)",
    seed="001",
    source="Pascanu, Mikolov, Bengio 2013, Sec. 3.2 (clipping the gradient norm); Goodfellow "
    "et al. 2016, Sec. 10.11.1",
    rule="a deep plain ReLU CNN without BN (He init) trains with SGD at several constant "
    "learning rates, each once without and once with clipping the total gradient norm to "
    "1.0, from the same init on the same batches; not-testable if no unclipped run's loss "
    "becomes non-finite; else holds if the clipped run stays finite at every learning rate "
    "where the unclipped one went non-finite, contradicted if at none of them, else partly",
    run=run_explode,
    judge=judge_explode,
    plot=plot_explode,
))  # fmt: skip


# --- vanishing-gradients ----------------------------------------------------------------

VANISH_SCALES = {
    "quick": {"depth": 8, "n_train": 256, "n_test": 128, "epochs": 1, "probe": 32},
    "default": {"depth": 20, "n_train": 6000, "n_test": 1000, "epochs": 5, "probe": 128},
    "full": {"depth": 30, "n_train": 60000, "n_test": 10000, "epochs": 10, "probe": 256},
}
VANISH_LR = 0.02
VANISH_CLIP = 1.0  # as in ``init``: unclipped, the ReLU nets stalled at chance (claims.md)
VANISH_RATIO = 10.0  # "loses gradient": first/last ratio at least 10x below ReLU's
VANISH_POINTS = 2.0  # "trains worse": test top-1 at least 2 points below ReLU's


def run_vanish(scale: str) -> dict[str, Any]:
    s = VANISH_SCALES[scale]
    data = fashion_subset(s["n_train"], s["n_test"], size=28, seed=0)
    probe = _batch(data, s["probe"])
    arms = {}
    for init in ("xavier", "he"):
        for act in ACTIVATIONS:
            torch.manual_seed(0)
            model = plain_cnn(s["depth"], act, init)
            norms = gradient_norms(model, probe).init
            curve = train_curve(model, data, epochs=s["epochs"], batch_size=64, lr=VANISH_LR,
                                clip_grad_norm=VANISH_CLIP, seed=0)  # fmt: skip
            arms[f"{act}/{init}"] = {"norms": norms, "first_over_last": _first_over_last(norms),
                                     **_curve_figures(curve)}  # fmt: skip
    optimizer = f"SGD momentum 0.9, cosine, total norm clipped to {VANISH_CLIP:g}"
    setup = {**s, "lr": VANISH_LR, "batch": 64, "model": f"plain_cnn({s['depth']}), no BN",
             "optimizer": optimizer}  # fmt: skip
    return {"setup": setup, "arms": arms}


def judge_vanish(figures: dict[str, Any]) -> tuple[str, str]:
    """Per saturating activation: 4 checks (2 inits x gradient ratio, test top-1)."""
    arms, parts, notes = figures["arms"], {}, []
    for act in ("sigmoid", "tanh"):
        checks = []
        for init in ("xavier", "he"):
            a, relu = arms[f"{act}/{init}"], arms[f"relu/{init}"]
            checks.append(a["first_over_last"] * VANISH_RATIO <= relu["first_over_last"])
            checks.append((a["test_top1"] or 0.0) <= (relu["test_top1"] or 0.0) - VANISH_POINTS)
            notes.append(
                f"{act}/{init}: first/last {a['first_over_last']:.2g} (ReLU "
                f"{relu['first_over_last']:.2g}), test top-1 {a['test_top1'] or 0:.1f}% (ReLU "
                f"{relu['test_top1'] or 0:.1f}%)"
            )
        parts[act] = "holds" if all(checks) else "contradicted" if not any(checks) else "partly"
    verdict = combine(parts)
    text = ", ".join(f"{k} {v}" for k, v in parts.items())
    return verdict, f"{text} -> {verdict}; " + "; ".join(notes)


def plot_vanish(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, arm) in enumerate(figures["arms"].items()):
        style = "-" if name.endswith("xavier") else "--"
        left.plot(range(1, len(arm["norms"]) + 1), arm["norms"], style, color=f"C{i % 3}",
                  label=name)  # fmt: skip
    left.set(yscale="log", xlabel="weight layer (input -> output)", ylabel="||dL/dW|| at init")
    left.legend(fontsize=7)
    names = list(figures["arms"])
    right.bar(names, [figures["arms"][n]["test_top1"] or 0 for n in names],
              color=[f"C{i % 3}" for i in range(len(names))])  # fmt: skip
    right.set_ylabel("test top-1 (%)")
    right.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle(f"{figures['setup']['depth']}-layer plain CNN: sigmoid, tanh, ReLU (seed 001)")
    save_figure(fig, path)


register(Experiment(
    name="vanishing-gradients",
    claim="in backpropagation the chain rule multiplies many factors near zero, so deep "
    "networks' lower layers get almost no gradient; it is a problem of the sigmoid "
    "activation in part, and ReLU partly solves it (seed 001)",
    seed="001",
    source="Glorot & Bengio 2010, Sec. 4-5 (sigmoid and tanh saturation, gradient by "
    "layer); Nair & Hinton 2010 / Krizhevsky et al. 2012, Sec. 3.1 (ReLU)",
    rule="a deep plain CNN without BN with sigmoid, tanh or ReLU, each under the same two "
    "init rules (Xavier normal, He normal); per saturating activation 4 checks, each against "
    "ReLU under the same init: its first/last layer gradient-norm ratio at init (one batch "
    "of real images) is >= 10x smaller, and its test top-1 after the same short training "
    "(SGD lr 0.02, total gradient norm clipped to 1.0) is >= 2 points lower; a part holds "
    "if all 4 pass, contradicted if none, "
    "else partly; verdict: combine the sigmoid and tanh parts",
    run=run_vanish,
    judge=judge_vanish,
    plot=plot_vanish,
))  # fmt: skip


# --- init -------------------------------------------------------------------------------

INIT_SCALES = {
    "quick": {"depth": 8, "n_train": 256, "n_test": 128, "epochs": 1},
    "default": {"depth": 20, "n_train": 6000, "n_test": 1000, "epochs": 5},
    "full": {"depth": 30, "n_train": 60000, "n_test": 10000, "epochs": 20},
}
INIT_LR = 0.02
INIT_CLIP = 1.0  # unclipped, even the He-init run stalled at chance (see claims.md)
TRAINS, FAILS = 50.0, 20.0  # final training top-1 (%): trains from 50, fails up to 20
SAME_POINTS = 5.0  # "all train alike": test top-1 within 5 points


def run_init(scale: str) -> dict[str, Any]:
    s = INIT_SCALES[scale]
    data = fashion_subset(s["n_train"], s["n_test"], size=28, seed=0)
    probe = _batch(data, 64)
    arms = {}
    for init in INITS:
        torch.manual_seed(0)
        model = plain_cnn(s["depth"], "relu", init)
        norms = gradient_norms(model, probe).init
        curve = train_curve(model, data, epochs=s["epochs"], batch_size=64, lr=INIT_LR,
                            clip_grad_norm=INIT_CLIP, seed=0)  # fmt: skip
        arms[init] = {"norms": norms, "first_over_last": _first_over_last(norms),
                      **_curve_figures(curve)}  # fmt: skip
    optimizer = f"SGD momentum 0.9, cosine, total norm clipped to {INIT_CLIP:g}"
    setup = {**s, "lr": INIT_LR, "batch": 64, "model": f"plain_cnn({s['depth']}, relu), no BN",
             "optimizer": optimizer}  # fmt: skip
    return {"setup": setup, "arms": arms}


def judge_init(figures: dict[str, Any]) -> tuple[str, str]:
    """He must train and another init fail; every init training alike contradicts it."""
    arms = figures["arms"]
    train = {k: a["train_top1"] or 0.0 for k, a in arms.items()}
    test = {k: a["test_top1"] or 0.0 for k, a in arms.items()}
    if max(train.values()) < TRAINS:
        verdict = "not-testable"
    elif train["he"] >= TRAINS and min(train.values()) <= FAILS:
        verdict = "holds"
    elif min(train.values()) >= TRAINS and max(test.values()) - min(test.values()) <= SAME_POINTS:
        verdict = "contradicted"
    else:
        verdict = "partly"
    notes = "; ".join(
        f"{k}: train top-1 {train[k]:.1f}%, test {test[k]:.1f}%, gradient norm at init "
        f"{a['norms'][0]:.2g} (first layer) to {a['norms'][-1]:.2g} (last)"
        + ("" if a["nonfinite_step"] is None else ", non-finite")
        for k, a in arms.items()
    )
    return verdict, f"{figures['setup']['model']}: {notes} -> {verdict}"


def plot_init(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, arm in figures["arms"].items():
        left.plot(range(1, len(arm["norms"]) + 1), arm["norms"], ".-", label=name)
        hist = arm["history"]
        right.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], "o-", label=name)
    left.set(yscale="log", xlabel="weight layer (input -> output)", ylabel="||dL/dW|| at init")
    right.set(xlabel="epoch", ylabel="training loss")
    left.legend()
    right.legend()
    fig.suptitle(f"{figures['setup']['model']}: He vs Xavier vs N(0, 0.01) (seed 001)")
    save_figure(fig, path)


register(Experiment(
    name="init",
    claim="the way the weights are initialised decides how fast and how well a deep network "
    "converges (seed 001, on ResNet's init)",
    seed="001",
    source="He et al. 2015 (Delving deep into rectifiers), Sec. 2.2 and Fig. 3 (a 30-layer "
    "plain ReLU net converges with their init, not with Xavier's); Glorot & Bengio 2010",
    rule="a deep plain ReLU CNN without BN (20 layers at the default scale) trains from He, "
    "Xavier and N(0, 0.01) init (same seed and data, SGD lr 0.02, total gradient norm "
    "clipped to 1.0); a run trains if its final training top-1 is >= 50% "
    "and fails if <= 20% (chance: 10%); not-testable if none trains; holds if He trains and "
    "at least one other init fails; contradicted if all three train and their test top-1 "
    "lie within 5 points; else partly",
    run=run_init,
    judge=judge_init,
    plot=plot_init,
))  # fmt: skip


# --- degradation ------------------------------------------------------------------------

DEGRADE_SCALES = {
    "quick": {"size": 16, "n_train": 128, "n_test": 128, "epochs": 1, "batch": 64},
    "default": {"size": 16, "n_train": 4000, "n_test": 1000, "epochs": 6, "batch": 64},
    "full": {"size": 32, "n_train": 60000, "n_test": 10000, "epochs": 40, "batch": 128},
}
DEGRADE_NETS = ("plain20", "plain56", "resnet20", "resnet56")
DEGRADE_LR, DEGRADE_WD = 0.1, 1e-4  # He et al. 2016, Sec. 4.2
DEGRADE_POINTS = 2.0  # training error difference (points of top-1) that counts
RESIDUAL_SLACK = 1.0  # resnet56 may be this much worse than resnet20 and still "not degrade"


def run_degrade(scale: str) -> dict[str, Any]:
    s = DEGRADE_SCALES[scale]
    data = fashion_subset(s["n_train"], s["n_test"], size=s["size"], seed=0)
    nets = {}
    for name in DEGRADE_NETS:
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_chans=1)
        curve = train_curve(model, data, epochs=s["epochs"], batch_size=s["batch"],
                            lr=DEGRADE_LR, weight_decay=DEGRADE_WD, seed=0)  # fmt: skip
        nets[name] = _curve_figures(curve)
        nets[name]["train_error"] = 100.0 - (nets[name]["train_top1"] or 0.0)
    setup = {**s, "lr": DEGRADE_LR, "weight_decay": DEGRADE_WD,
             "optimizer": "SGD momentum 0.9, cosine"}  # fmt: skip
    return {"setup": setup, "nets": nets}


def judge_degrade(figures: dict[str, Any]) -> tuple[str, str]:
    """Plain: 56 layers' training error above 20's; residual: not above (1 point slack)."""
    err = {k: n["train_error"] for k, n in figures["nets"].items()}
    plain = err["plain56"] - err["plain20"]
    residual = err["resnet56"] - err["resnet20"]
    p = "holds" if plain >= DEGRADE_POINTS else "contradicted" if plain <= 0 else "partly"
    if residual <= RESIDUAL_SLACK:
        r = "holds"
    elif residual >= max(plain, DEGRADE_POINTS):
        r = "contradicted"
    else:
        r = "partly"
    verdict = combine({"plain": p, "residual": r})
    test = {k: n["test_top1"] or 0.0 for k, n in figures["nets"].items()}
    reason = (
        f"final-epoch training error: plain20 {err['plain20']:.1f}%, plain56 "
        f"{err['plain56']:.1f}% ({plain:+.1f} points -> {p}); resnet20 {err['resnet20']:.1f}%, "
        f"resnet56 {err['resnet56']:.1f}% ({residual:+.1f} points -> {r}); test top-1 "
        + ", ".join(f"{k} {v:.1f}%" for k, v in test.items())
    )
    return verdict, reason


def plot_degrade(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, net in figures["nets"].items():
        hist = net["history"]
        ax.plot([h["epoch"] for h in hist], [100 - h["train_top1"] for h in hist],
                "--" if name.startswith("plain") else "-", marker="o", label=name)  # fmt: skip
    ax.set(xlabel="epoch", ylabel="training error (%)")
    ax.legend()
    ax.set_title("Plain vs residual, 20 vs 56 layers, Fashion-MNIST subset (He et al. Fig. 6)")
    save_figure(fig, path)


register(Experiment(
    name="degradation",
    claim="deeper plain networks train worse (a higher training error), residual "
    "connections remove this degradation: with shortcuts the gradient reaches every "
    "parameter and the network trains (seed 001, ResNet)",
    seed="001",
    source="He et al. 2016 (Deep residual learning), Sec. 4.2, Fig. 6 (CIFAR-10: plain-56 "
    "above plain-20 in training error, ResNet-56 below ResNet-20)",
    rule="plain20, plain56, resnet20, resnet56 (BN, He init) train from the same seed on "
    "the same images (SGD lr 0.1, momentum 0.9, weight decay 1e-4, cosine); training error "
    "= 100 - the final epoch's training top-1; plain part holds if plain56's error exceeds "
    "plain20's by >= 2 points, contradicted if it does not exceed it, else partly; residual "
    "part holds if resnet56's error is at most 1 point above resnet20's, contradicted if it "
    "is above by as much as the plain gap (and >= 2 points), else partly; verdict: combine "
    "the two",
    run=run_degrade,
    judge=judge_degrade,
    plot=plot_degrade,
))  # fmt: skip
