"""MobileNet's claims (seed 004), measured: the width and resolution multipliers (Howard et
al. 2017, Sec. 3.3-3.4), the linear bottleneck and the expansion factor (Sandler et al. 2018,
Sec. 3.2 and 4), and MobileNetV2 against MobileNetV1 (Sandler Sec. 6.1, Table 4).

Accuracy comes from short trainings on real Fashion-MNIST (:mod:`cnnlab.experiments.training`):
grey images, 10 classes, at ``TRAIN_SIDE`` = 32 pixels (the 28x28 images padded), or, for
``width-resolution``, resized to ``56 * rho`` (56 to 32 pixels, a quarter of the paper's 224 *
rho). Every arm of an experiment starts
from the same seed (weights, images, batch order) and differs only in what the experiment
changes; with several seeds an arm's figure is their mean. A difference counts only when it
exceeds the seed noise: the largest gap between two seeds of one arm, at least ``MIN_MARGIN``.

Cost is measured on the paper's networks (1000 classes, RGB, ``224 * rho`` pixels): parameters
and MACs on ``meta`` copies, batch-1 CPU latency interleaved (:func:`timing.race`), memory by
:func:`cnnlab.analysis.measure_memory`. ``--full`` trains on the whole set, on a GPU if there is
one; latency and memory stay on the CPU.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.analysis import count_macs, measure_memory
from cnnlab.experiments.base import Experiment, combine, pyplot, register, save_figure
from cnnlab.experiments.timing import BUSY, ROUNDS, OtherLoad, race, ratio, summary
from cnnlab.experiments.training import FashionSubset, fashion_subset, train_curve
from cnnlab.registry import build_model

TRAIN_SIDE = 32  # the side trained at rho = 1 (Fashion-MNIST's 28x28, padded)
MIN_MARGIN = 1.0  # top-1 points: the smallest accuracy difference that counts
SPEED_STEP = 1.05  # a smaller network must be >= 5% faster to count as faster
SPEED_MARGIN = 1.1  # V1 against V2: a latency difference under 10% is no difference
MACS_FEWER = 0.9  # "fewer MACs": at least 10% fewer


@dataclass(frozen=True)
class Budget:
    """The size of an experiment's trainings: images, epochs, seeds."""

    n_train: int
    n_test: int
    epochs: int
    seeds: tuple[int, ...]


QUICK = Budget(128, 128, 1, (0,))
FULL = Budget(60_000, 10_000, 15, (0, 1, 2))


# --- shared pieces ----------------------------------------------------------------------


def _device(scale: str) -> str:
    return "cuda" if scale == "full" and torch.cuda.is_available() else "cpu"


def _data(budget: Budget, side: int, seed: int, device: str, cache: dict) -> FashionSubset:
    """The seed's Fashion-MNIST subset at ``side`` pixels, on ``device`` (loaded once)."""
    if (side, seed) not in cache:
        d = fashion_subset(budget.n_train, budget.n_test, size=side, seed=seed)
        moved = (t.to(device) for t in (d.train_x, d.train_y, d.test_x, d.test_y))
        cache[side, seed] = FashionSubset(*moved)
    return cache[side, seed]


def _train(
    build: Callable[[], nn.Module], budget: Budget, side: int, device: str, cache: dict
) -> dict[str, Any]:
    """Train a fresh ``build()`` once per seed; the final test top-1 of each, their mean, and
    the per-epoch test top-1 curves. A run whose loss went non-finite keeps its last epoch's
    figure (0 if it had none) and records the step."""
    top1, curves, nonfinite, seconds = [], [], [], 0.0
    for seed in budget.seeds:
        data = _data(budget, side, seed, device, cache)
        torch.manual_seed(seed)
        result = train_curve(build().to(device), data, epochs=budget.epochs, seed=seed)
        curve = [h["test_top1"] for h in result["history"]]
        top1.append(curve[-1] if curve else 0.0)
        curves.append(curve)
        nonfinite.append(result["nonfinite_step"])
        seconds += sum(h["seconds"] for h in result["history"])
    return {
        "top1": top1, "mean_top1": statistics.fmean(top1), "curves": curves,
        "nonfinite_step": nonfinite, "train_seconds": seconds,
    }  # fmt: skip


def _margin(arms: list[dict[str, Any]]) -> float:
    """The seed noise: the largest gap between two seeds of one arm, at least MIN_MARGIN."""
    return max([MIN_MARGIN] + [max(a["top1"]) - min(a["top1"]) for a in arms])


def _versus(better: float, worse: float, margin: float) -> str:
    """'holds' if ``better`` exceeds ``worse`` by more than ``margin``, 'contradicted' if it
    falls short by more, 'not-testable' within the seed noise."""
    if better - worse > margin:
        return "holds"
    return "contradicted" if worse - better > margin else "not-testable"


def _cost(name: str, side: int, train_side: int, **kwargs: Any) -> dict[str, Any]:
    """Params and MACs of the paper's network at ``side`` pixels, its measured memory
    (fp32 weights + the forward pass's peak, batch 1) and the MACs of the copy trained at
    ``train_side`` pixels."""
    with torch.device("meta"):
        paper = build_model(name, rho=side / 224, **kwargs)
        trained = build_model(name, num_classes=10, in_chans=1, **kwargs)
    torch.manual_seed(0)
    real = build_model(name, rho=side / 224, **kwargs)
    weights = sum(p.numel() * p.element_size() for p in real.parameters())
    peak = measure_memory(real, (3, side, side), 1)["forward_peak_bytes"]
    return {
        "side": side, "params": sum(p.numel() for p in paper.parameters()),
        "macs": count_macs(paper, (3, side, side)), "weights_bytes": weights,
        "forward_peak_bytes": peak, "memory_bytes": weights + peak, "train_side": train_side,
        "train_macs": count_macs(trained, (1, train_side, train_side)),
    }  # fmt: skip


def _latency(models: dict[str, nn.Module], scale: str) -> dict[str, Any]:
    """Batch-1 CPU latency of each model at its ``input_size``, interleaved rounds; the raw
    samples (seconds) are returned for the pairs' ratios."""
    inputs = {n: torch.randn(1, *m.input_size) for n, m in models.items()}
    with OtherLoad() as load:
        samples = race({n: (lambda n=n: models[n](inputs[n])) for n in models}, ROUNDS[scale])
    return {
        "samples": samples,
        "models": {n: summary(s) for n, s in samples.items()},
        "threads": torch.get_num_threads(),
        "other_load_cores": load.cores,
        "rounds_wanted": ROUNDS[scale],
    }


def _untrusted(figures: dict[str, Any], ratios: list[dict[str, Any]]) -> str:
    """Why these latency ratios are not judged (a busy machine, rounds that other work
    slowed and that could not all be replaced by clean ones, a wide spread), or ''."""
    cores, wanted = figures["other_load_cores"], figures["latency_rounds_wanted"]
    if cores is not None and cores > BUSY:
        return f"other processes kept {cores:.2f} cores busy while timing: not judged"
    clean = min(r["rounds"] for r in ratios)
    if clean < wanted:
        return f"only {clean} of {wanted} timing rounds were clean: not judged"
    wide = [r["ratio_iqr_fraction"] for r in ratios if r["ratio_unstable"]]
    return f"a latency ratio's IQR is {max(wide):.0%} of it: not judged" if wide else ""


def _budget(scale: str, default: Budget) -> Budget:
    return {"quick": QUICK, "default": default, "full": FULL}[scale]


def _fmt_acc(arm: dict[str, Any]) -> str:
    return f"{arm['mean_top1']:.1f}%"


# --- width-resolution -------------------------------------------------------------------

ALPHAS = (1.0, 0.75, 0.5, 0.25)  # Howard et al. Table 6
SIDES = (224, 192, 160, 128)  # Table 7: rho = 1, 0.857, 0.714, 0.571
WIDTH_SIDE = 56  # trained at 56 * rho px: 56, 48, 40, 32 (MobileNetV1 takes no less than 32)
WIDTH_DEFAULT = Budget(2500, 1000, 3, (0, 1))


def _v1_grid() -> dict[str, list[tuple[str, float, int]]]:
    """The two axes, largest first: (key, alpha, side) with alpha at 224, side at alpha 1."""
    return {
        "alpha": [(f"{a:g}@224", a, 224) for a in ALPHAS],
        "rho": [(f"1@{s}", 1.0, s) for s in SIDES],
    }


def run_width(scale: str) -> dict[str, Any]:
    """MobileNetV1 along alpha and along rho: cost, latency, memory and short-training top-1."""
    budget, device, cache = _budget(scale, WIDTH_DEFAULT), _device(scale), {}
    grid = _v1_grid()
    points: dict[str, dict[str, Any]] = {}
    for key, alpha, side in dict.fromkeys(p for axis in grid.values() for p in axis):
        cost = _cost("mobilenet_v1", side, round(WIDTH_SIDE * side / 224), alpha=alpha)
        build = _builder("mobilenet_v1", alpha=alpha)
        trained = _train(build, budget, cost["train_side"], device, cache)
        points[key] = {"alpha": alpha, "rho": side / 224, **cost, **trained}
    torch.manual_seed(0)
    models = {k: build_model("mobilenet_v1", alpha=p["alpha"], rho=p["rho"]).eval()
              for k, p in points.items()}  # fmt: skip
    lat = _latency(models, scale)
    for key, timing in lat["models"].items():
        points[key]["latency"] = timing
    axes = {axis: [key for key, _, _ in rows] for axis, rows in grid.items()}
    s = lat["samples"]
    return {
        "points": points,
        "axes": axes,
        "latency_steps": {a: [ratio(s[k], s[n]) for k, n in itertools.pairwise(ks)]
                          for a, ks in axes.items()},
        "latency_whole": {a: ratio(s[ks[0]], s[ks[-1]]) for a, ks in axes.items()},
        "threads": lat["threads"],
        "other_load_cores": lat["other_load_cores"],
        "latency_rounds_wanted": lat["rounds_wanted"],
        "margin": _margin(list(points.values())),
        "budget": asdict(budget),
        "device": device,
    }  # fmt: skip


def _builder(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A function building ``name`` for Fashion-MNIST (10 classes, grey) with ``kwargs``."""
    return lambda: build_model(name, num_classes=10, in_chans=1, **kwargs)


def _accuracy_axis(acc: list[float], margin: float) -> tuple[str, str]:
    """Holds if the largest network beats the smallest by more than the margin and no step
    down raises the top-1 by more (else partly); contradicted if the smallest is better by
    more than the margin; not-testable within it."""
    verdict = _versus(acc[0], acc[-1], margin)
    rise = max(b - a for a, b in itertools.pairwise(acc))
    if verdict == "holds" and rise > margin:
        verdict = "partly"
    text = "top-1 " + " -> ".join(f"{a:.1f}" for a in acc) + "%"
    if verdict == "not-testable":
        text += " (within seed noise)"
    return verdict, text


def _speed_axis(figures: dict[str, Any], axis: str) -> tuple[str, str]:
    """Holds if every step down is >= 5% faster, contradicted if the smallest is not >= 5%
    faster than the largest, partly otherwise; not-testable on a busy machine."""
    steps, whole = figures["latency_steps"][axis], figures["latency_whole"][axis]
    keys = figures["axes"][axis]
    ms = [figures["points"][k]["latency"]["latency_ms"] for k in keys]
    each = ", ".join(f"{r['ratio']:.2f}x" for r in steps)
    text = f"batch-1 latency {ms[0]:.1f} -> {ms[-1]:.1f} ms ({whole['ratio']:.2f}x faster; "
    text += f"steps {each})"
    why = _untrusted(figures, [*steps, whole])
    if why:
        return "not-testable", f"{text}: {why}"
    if whole["ratio"] < SPEED_STEP:
        return "contradicted", text
    return ("holds" if all(r["ratio"] >= SPEED_STEP for r in steps) else "partly"), text


def _memory_axis(memory: list[int]) -> tuple[str, str]:
    """Holds if every step down needs less memory, contradicted if the smallest needs no
    less than the largest, partly otherwise."""
    text = f"memory {memory[0] / 2**20:.1f} -> {memory[-1] / 2**20:.1f} MiB"
    if memory[-1] >= memory[0]:
        return "contradicted", text
    return ("holds" if all(b < a for a, b in itertools.pairwise(memory)) else "partly"), text


def judge_width(figures: dict[str, Any]) -> tuple[str, str]:
    """Per axis (alpha, rho): accuracy falls, speed rises, memory falls; combined."""
    points, margin = figures["points"], figures["margin"]
    parts: dict[str, str] = {}
    texts = []
    for axis, keys in figures["axes"].items():
        checks = {
            "accuracy": _accuracy_axis([points[k]["mean_top1"] for k in keys], margin),
            "speed": _speed_axis(figures, axis),
            "memory": _memory_axis([points[k]["memory_bytes"] for k in keys]),
        }
        first, last = points[keys[0]], points[keys[-1]]
        label = f"{axis} {first[axis]:.3g} -> {last[axis]:.3g}"
        if axis == "rho":
            label += f" ({first['side']} -> {last['side']} px, trained at "
            label += f"{first['train_side']} -> {last['train_side']})"
        texts.append(f"{label}: " + "; ".join(f"{t} -> {v}" for v, t in checks.values()))
        parts.update({f"{axis} {name}": v for name, (v, _) in checks.items()})
    reason = " | ".join(texts) + f" (seed-noise margin {margin:.1f} points)"
    return combine(parts), reason


def plot_width(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    points = figures["points"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    panels = (
        ("train_macs", "mean_top1", "MACs of the trained net (M)", "test top-1 (%)"),
        ("params", "mean_top1", "parameters, 1000 classes (M)", "test top-1 (%)"),
        ("macs", "latency", "MACs at 224*rho px (M)", "batch-1 CPU latency (ms)"),
        ("macs", "memory_bytes", "MACs at 224*rho px (M)", "weights + forward peak (MiB)"),
    )
    for ax, (xk, yk, xl, yl) in zip(axes, panels, strict=True):
        for axis, marker in (("alpha", "o-"), ("rho", "s--")):
            rows = [points[k] for k in figures["axes"][axis]]
            ys = [_plot_value(r, yk) for r in rows]
            ax.plot([r[xk] / 1e6 for r in rows], ys, marker, label=f"{axis} axis")
            for r, y in zip(rows, ys, strict=True):
                ax.annotate(f"{r[axis]:.2g}", (r[xk] / 1e6, y), fontsize=7)
        ax.set(xlabel=xl, ylabel=yl)
    axes[0].legend(fontsize=8)
    axes[2].set_title(_busy_note(figures), fontsize=8)
    fig.suptitle("MobileNetV1 width (alpha) and resolution (rho) multipliers: Fashion-MNIST "
                 "top-1 vs cost (as Howard et al. Fig. 4-5; seed 004)", y=1.03)  # fmt: skip
    save_figure(fig, path)


def _busy_note(figures: dict[str, Any]) -> str:
    """A latency panel's warning when other processes kept the machine busy, else ''."""
    cores = figures.get("other_load_cores")
    return f"measured while others kept {cores:.2f} cores busy" if cores and cores > BUSY else ""


def _plot_value(point: dict[str, Any], key: str) -> float:
    if key == "latency":
        return point["latency"]["latency_ms"]
    return point[key] / 2**20 if key == "memory_bytes" else point[key]


register(Experiment(
    name="width-resolution",
    claim="MobileNet has two hyperparameters that shrink it: the width multiplier alpha (the "
    "number of channels in every layer) and the resolution multiplier rho (the height and "
    "width of every layer's input); lowering alpha and rho lowers recognition accuracy but "
    "raises speed and lowers memory use (seed 004)",
    seed="004",
    source="Howard et al. 2017, MobileNets, Sec. 3.3 (width multiplier), Sec. 3.4 "
    "(resolution multiplier), Tables 6-7, Figures 4-5",
    rule="two axes of MobileNetV1: alpha 1, 0.75, 0.5, 0.25 at 224 px and rho 1, 0.857, "
    "0.714, 0.571 (224-128 px) at alpha 1; per axis three parts. Accuracy (Fashion-MNIST test "
    "top-1 after a short training at 56 * rho px, mean over seeds, same seeds for every "
    "point): holds if the largest network beats the smallest by more than the seed noise "
    "(the largest gap between two seeds of one point, at least 1 point) and no step down "
    "raises top-1 by more than it, partly if one does, contradicted if the smallest is better "
    "by more than the noise, not-testable within the noise. Speed (batch-1 CPU latency at "
    "224 * rho px, medians of interleaved per-round ratios): holds if every step down is "
    ">= 5% faster, contradicted if the smallest is not >= 5% faster than the largest, partly "
    "otherwise, not-testable if a ratio's IQR exceeds 25% of it, if fewer than the rounds asked "
    "for were clean (not slowed by other work) or if other processes kept more than 0.2 cores "
    "busy while timing. Memory (fp32 weights + measured forward peak, batch "
    "1): holds if every step down needs less, contradicted if the smallest needs no less than "
    "the largest, partly otherwise. Verdict: the six parts combined (holds if all hold, "
    "contradicted if every testable part is, else partly)",
    run=run_width,
    judge=judge_width,
    plot=plot_width,
))  # fmt: skip


# --- linear-bottleneck ------------------------------------------------------------------

LINEAR_DEFAULT = Budget(3000, 1000, 4, (0, 1))
_BOTTLENECKS = {"linear": True, "relu6": False}  # arm -> linear_bottleneck


def run_linear(scale: str) -> dict[str, Any]:
    """MobileNetV2 with the linear projection against ReLU6 after it, same seeds and images."""
    budget, device, cache = _budget(scale, LINEAR_DEFAULT), _device(scale), {}
    arms = {arm: _train(_builder("mobilenet_v2", linear_bottleneck=flag), budget, TRAIN_SIDE,
                        device, cache) for arm, flag in _BOTTLENECKS.items()}  # fmt: skip
    return {
        "arms": arms,
        "margin": _margin(list(arms.values())),
        "train_side": TRAIN_SIDE,
        "budget": asdict(budget),
        "device": device,
    }


def judge_linear(figures: dict[str, Any]) -> tuple[str, str]:
    """Holds if the linear bottleneck's top-1 beats ReLU6's by more than the seed noise."""
    linear, relu6 = figures["arms"]["linear"], figures["arms"]["relu6"]
    margin = figures["margin"]
    verdict = _versus(linear["mean_top1"], relu6["mean_top1"], margin)
    gap = linear["mean_top1"] - relu6["mean_top1"]
    reason = (
        f"test top-1 after {figures['budget']['epochs']} epochs: linear bottleneck "
        f"{_fmt_acc(linear)}, ReLU6 after the projection {_fmt_acc(relu6)} ({gap:+.1f} points; "
        f"seed-noise margin {margin:.1f})"
    )
    if verdict == "not-testable":
        reason += ": the difference is within the seed noise, this scale does not resolve it"
    return verdict, reason


def plot_linear(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (arm, data), color in zip(figures["arms"].items(), ("tab:blue", "tab:red"), strict=True):
        for i, curve in enumerate(data["curves"]):
            label = f"{arm} bottleneck" if i == 0 else None
            ax.plot(range(1, len(curve) + 1), curve, "o-", color=color, alpha=0.8, label=label)
    ax.set(xlabel="epoch", ylabel="test top-1 (%)")
    ax.legend()
    ax.set_title("MobileNetV2: linear vs ReLU6 bottleneck (Sandler Fig. 6a; seed 004)")
    save_figure(fig, path)


register(Experiment(
    name="linear-bottleneck",
    claim="the last 1x1 convolution of a MobileNetV2 block, which cuts the channels back, "
    "has a linear activation: the high-dimensional 'manifold of interest' can be laid into a "
    "lower-dimensional subspace without losing useful information, and the experiments bear "
    "this out (seed 004)",
    seed="004",
    source="Sandler et al. 2018, MobileNetV2, Sec. 3.2 (linear bottlenecks) and Sec. 6.4, "
    "Figure 6a (linear vs ReLU6 bottleneck)",
    rule="MobileNetV2 (alpha 1) with linear_bottleneck=True vs False (ReLU6 after every "
    "projection), trained the same (same seeds, images, order, hyperparameters) on "
    "Fashion-MNIST at 32 px; holds if the linear bottleneck's test top-1 (mean over seeds) "
    "beats the ReLU6 one by more than the seed noise (the largest gap between two seeds of "
    "one arm, at least 1 point), contradicted if it is worse by more than that, not-testable "
    "within it (the difference is within seed noise at this scale)",
    run=run_linear,
    judge=judge_linear,
    plot=plot_linear,
))  # fmt: skip


# --- expansion --------------------------------------------------------------------------

T_VALUES = (1, 2, 4, 6, 10)
T_RANGE = (5, 10)  # Sandler Sec. 4: "a constant expansion rate between 5 and 10"
EXPANSION_DEFAULT = Budget(3000, 1000, 4, (0, 1))  # as linear-bottleneck: t=6 is its arm


def run_expansion(scale: str) -> dict[str, Any]:
    """MobileNetV2 at each expansion factor t: cost and short-training top-1, same seeds."""
    budget, device, cache = _budget(scale, EXPANSION_DEFAULT), _device(scale), {}
    arms = {}
    for t in T_VALUES:
        cost = _cost("mobilenet_v2", 224, TRAIN_SIDE, t=t)
        trained = _train(_builder("mobilenet_v2", t=t), budget, TRAIN_SIDE, device, cache)
        arms[f"t={t}"] = {"t": t, **cost, **trained}
    return {
        "arms": arms,
        "margin": _margin(list(arms.values())),
        "train_side": TRAIN_SIDE,
        "budget": asdict(budget),
        "device": device,
    }


def judge_expansion(figures: dict[str, Any]) -> tuple[str, str]:
    """Holds if the best t in [5, 10] beats the best t outside by more than the seed noise."""
    arms, margin = list(figures["arms"].values()), figures["margin"]
    inside = max((a for a in arms if T_RANGE[0] <= a["t"] <= T_RANGE[1]),
                 key=lambda a: a["mean_top1"])  # fmt: skip
    outside = max((a for a in arms if not T_RANGE[0] <= a["t"] <= T_RANGE[1]),
                  key=lambda a: a["mean_top1"])  # fmt: skip
    verdict = _versus(inside["mean_top1"], outside["mean_top1"], margin)
    each = ", ".join(f"t={a['t']:g} {_fmt_acc(a)} ({a['macs'] / 1e6:.0f}M MACs)" for a in arms)
    reason = (
        f"test top-1 after {figures['budget']['epochs']} epochs: {each}; best in [5, 10]: "
        f"t={inside['t']:g}, best outside: t={outside['t']:g} "
        f"({inside['mean_top1'] - outside['mean_top1']:+.1f} points; seed-noise margin "
        f"{margin:.1f})"
    )
    if verdict == "not-testable":
        reason += ": within the seed noise, this scale does not single out t in [5, 10]"
    return verdict, reason


def plot_expansion(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    arms = list(figures["arms"].values())
    ts = [a["t"] for a in arms]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    low = [a["mean_top1"] - min(a["top1"]) for a in arms]
    high = [max(a["top1"]) - a["mean_top1"] for a in arms]
    left.errorbar(ts, [a["mean_top1"] for a in arms], yerr=[low, high], fmt="o-", capsize=3)
    left.axvspan(*T_RANGE, color="tab:green", alpha=0.15, label="t in [5, 10]")
    left.set(xlabel="expansion factor t", ylabel="test top-1 (%, seeds' range)")
    left.legend()
    right.plot(ts, [a["macs"] / 1e6 for a in arms], "s-", label="MACs (M, 224 px)")
    right.plot(ts, [a["params"] / 1e6 for a in arms], "o-", label="params (M)")
    right.set(xlabel="expansion factor t")
    right.legend()
    fig.suptitle("MobileNetV2 expansion factor (Sandler Sec. 4; seed 004)")
    save_figure(fig, path)


register(Experiment(
    name="expansion",
    claim="the expansion factor t (how many times the first 1x1 layer of a MobileNetV2 block "
    "widens its input) is best set between 5 and 10, smaller values suiting smaller networks "
    "and larger ones larger networks; the paper uses t = 6 in all its experiments (seed 004)",
    seed="004",
    source="Sandler et al. 2018, MobileNetV2, Sec. 4 (a constant expansion rate between 5 "
    "and 10; 6 in all main experiments), Table 1-2",
    rule="MobileNetV2 (alpha 1) with t = 1, 2, 4, 6, 10 in every expanding block, trained "
    "the same (same seeds, images, order, hyperparameters) on Fashion-MNIST at 32 px; holds "
    "if the best test top-1 (mean over seeds) among t in [5, 10] beats the best among the "
    "other t by more than the seed noise (the largest gap between two seeds of one arm, at "
    "least 1 point), contradicted if the best other t is better by more than that, "
    "not-testable within it. MACs and params are reported, not judged; the claim's second "
    "half (smaller t for smaller networks) is not tested",
    run=run_expansion,
    judge=judge_expansion,
    plot=plot_expansion,
))  # fmt: skip


# --- mobilenet-v2-vs-v1 -----------------------------------------------------------------

V2V1_DEFAULT = Budget(3000, 1000, 4, (0, 1))
_VERSIONS = ("mobilenet_v1", "mobilenet_v2")


def run_versions(scale: str) -> dict[str, Any]:
    """MobileNetV1 and V2 (alpha 1): params, MACs, memory, latency and short-training top-1."""
    budget, device, cache = _budget(scale, V2V1_DEFAULT), _device(scale), {}
    arms = {}
    for name in _VERSIONS:
        trained = _train(_builder(name), budget, TRAIN_SIDE, device, cache)
        arms[name] = {**_cost(name, 224, TRAIN_SIDE), **trained}
    torch.manual_seed(0)
    lat = _latency({name: build_model(name).eval() for name in _VERSIONS}, scale)
    for name in _VERSIONS:
        arms[name]["latency"] = lat["models"][name]
    v1, v2 = _VERSIONS
    return {
        "arms": arms,
        "v1_over_v2": ratio(lat["samples"][v1], lat["samples"][v2]),
        "macs_v2_over_v1": arms[v2]["macs"] / arms[v1]["macs"],
        "threads": lat["threads"],
        "other_load_cores": lat["other_load_cores"],
        "latency_rounds_wanted": lat["rounds_wanted"],
        "margin": _margin(list(arms.values())),
        "train_side": TRAIN_SIDE,
        "budget": asdict(budget),
        "device": device,
    }


def _versions_speed(figures: dict[str, Any]) -> tuple[str, str]:
    r = figures["v1_over_v2"]
    v1, v2 = (figures["arms"][n]["latency"]["latency_ms"] for n in _VERSIONS)
    text = f"batch-1 CPU latency V1 {v1:.1f} ms, V2 {v2:.1f} ms: V1/V2 {r['ratio']:.2f}x"
    why = _untrusted(figures, [r])
    if why:
        return "not-testable", f"{text} ({why})"
    if r["ratio"] >= SPEED_MARGIN:
        return "holds", text
    if r["ratio"] <= 1 / SPEED_MARGIN:
        return "contradicted", text
    return "partly", text + " (within 10%: no clear difference)"


def judge_versions(figures: dict[str, Any]) -> tuple[str, str]:
    """MACs: V2 has >= 10% fewer; speed: V2 >= 10% faster; accuracy: V2 not worse than V1
    by more than the seed noise."""
    v1, v2 = (figures["arms"][n] for n in _VERSIONS)
    macs = "holds" if figures["macs_v2_over_v1"] <= MACS_FEWER else "contradicted"
    speed, speed_text = _versions_speed(figures)
    gap, margin = v2["mean_top1"] - v1["mean_top1"], figures["margin"]
    accuracy = "holds" if gap >= -margin else "contradicted"
    reason = (
        f"MACs V2/V1 {figures['macs_v2_over_v1']:.2f} ({v2['macs'] / 1e6:.0f}M vs "
        f"{v1['macs'] / 1e6:.0f}M) -> {macs}; {speed_text} -> {speed}; test top-1 after "
        f"{figures['budget']['epochs']} epochs V1 {_fmt_acc(v1)}, V2 {_fmt_acc(v2)} ({gap:+.1f} "
        f"points, seed-noise margin {margin:.1f}) -> {accuracy}; params V1 "
        f"{v1['params'] / 1e6:.2f}M, V2 {v2['params'] / 1e6:.2f}M"
    )
    if accuracy == "holds" and gap > margin:
        reason += " (V2 is more accurate, beyond the noise)"
    return combine({"macs": macs, "speed": speed, "accuracy": accuracy}), reason


def plot_versions(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    arms = figures["arms"]
    names = ["V1", "V2"]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
    values = (
        ("params (M)", [arms[n]["params"] / 1e6 for n in _VERSIONS], None),
        ("MACs (M, 224 px)", [arms[n]["macs"] / 1e6 for n in _VERSIONS], None),
        ("batch-1 CPU latency (ms)", [arms[n]["latency"]["latency_ms"] for n in _VERSIONS],
         [arms[n]["latency"]["latency_iqr_ms"] / 2 for n in _VERSIONS]),
        ("test top-1 (%)", [arms[n]["mean_top1"] for n in _VERSIONS], None),
    )  # fmt: skip
    for ax, (title, ys, err) in zip(axes, values, strict=True):
        ax.bar(names, ys, yerr=err, color=["tab:blue", "tab:orange"])
        ax.set_title(title, fontsize=9)
    axes[2].set_xlabel(_busy_note(figures), fontsize=8)
    for i, n in enumerate(_VERSIONS):
        axes[3].plot([i] * len(arms[n]["top1"]), arms[n]["top1"], "k.")
    axes[3].set_ylim(min(min(arms[n]["top1"]) for n in _VERSIONS) - 5, 100)
    fig.suptitle("MobileNetV2 vs V1 (Sandler Table 4; seed 004)", y=1.03)
    save_figure(fig, path)


register(Experiment(
    name="mobilenet-v2-vs-v1",
    claim="MobileNetV2 reaches about the same recognition accuracy as MobileNetV1 while "
    "running even faster (seed 004); the paper: 72.0% against 70.6% top-1 with 300M against "
    "575M multiply-adds",
    seed="004",
    source="Sandler et al. 2018, MobileNetV2, Sec. 6.1, Table 4 (V1: 70.6% top-1, 4.2M "
    "params, 575M MACs, 113 ms; V2: 72.0%, 3.4M, 300M, 75 ms on a Pixel 1 CPU)",
    rule="MobileNetV1 and V2 at alpha 1; MAC part (224 px) holds if V2 has >= 10% fewer MACs, "
    "else contradicted; speed part holds if V2's batch-1 CPU latency at 224 px is >= 10% "
    "below V1's (median of interleaved per-round ratios), contradicted if >= 10% above, "
    "partly in between, not-testable if the ratio's IQR exceeds 25% of it, if fewer than the "
    "rounds asked for were clean or if other processes kept more than 0.2 cores busy while "
    "timing; accuracy part (Fashion-MNIST at 32 px, equal "
    "epochs, same seeds and images, mean over seeds) holds if V2's test top-1 is not below "
    "V1's by more than the seed noise (the largest gap between two seeds of one arm, at least "
    "1 point), else contradicted; verdict: holds if all three hold, contradicted if every "
    "testable part is, else partly",
    run=run_versions,
    judge=judge_versions,
    plot=plot_versions,
))  # fmt: skip
