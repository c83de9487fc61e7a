"""Claims about size and cost that the models themselves answer: GoogLeNet against AlexNet
(seed 000), the depthwise separable convolution's cost (seed 004, MobileNets Sec. 3.1).

Parameters and MACs are counted on ``meta`` copies (shapes only); latencies are measured on
this machine's CPU at batch 1, interleaved (:mod:`cnnlab.experiments.timing`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.analysis import count_macs
from cnnlab.experiments.base import Experiment, combine, pyplot, register, save_figure
from cnnlab.experiments.timing import BUSY, ROUNDS, OtherLoad, race, ratio, summary
from cnnlab.registry import build_model

PARAMS_RATIO_MIN = 8.0  # "about 10x": within 20% below ten (the paper itself says 12x)
SPEED_MARGIN = 1.1  # a latency difference under 10% is no difference
FORMULA_TOLERANCE = 1e-9


def _meta(name: str, **kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **kwargs)


def _size(model: nn.Module) -> dict[str, Any]:
    size = tuple(model.input_size)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, size),
        "input": "x".join(map(str, size)),
    }


# --- googlenet-vs-alexnet ---------------------------------------------------------------

_GOOGLENET = {
    "alexnet": ("alexnet", {}),
    "googlenet": ("googlenet", {"aux_logits": False}),  # the inference network
    "googlenet_with_aux": ("googlenet", {"aux_logits": True}),  # as trained (Sec. 5)
}


def _latency(scale: str) -> dict[str, Any]:
    """Batch-1 CPU latency of AlexNet and GoogLeNet (no aux heads), interleaved rounds."""
    torch.manual_seed(0)
    models = {n: build_model(_GOOGLENET[n][0], **_GOOGLENET[n][1]).eval() for n in
              ("alexnet", "googlenet")}  # fmt: skip
    inputs = {n: torch.randn(1, *m.input_size) for n, m in models.items()}
    with OtherLoad() as load:
        samples = race({n: (lambda n=n: models[n](inputs[n])) for n in models}, ROUNDS[scale])
    return {
        "alexnet": summary(samples["alexnet"]),
        "googlenet": summary(samples["googlenet"]),
        "googlenet_over_alexnet": ratio(samples["googlenet"], samples["alexnet"]),
        "threads": torch.get_num_threads(),
        "other_load_cores": load.cores,
    }


def run_googlenet(scale: str) -> dict[str, Any]:
    """Params and MACs of the three networks, and the measured latency of two of them."""
    sizes = {n: _size(_meta(name, **kw)) for n, (name, kw) in _GOOGLENET.items()}
    a, g, ga = sizes["alexnet"], sizes["googlenet"], sizes["googlenet_with_aux"]
    return {
        "models": sizes,
        "params_ratio": a["params"] / g["params"],
        "params_ratio_with_aux": a["params"] / ga["params"],
        "macs_ratio_googlenet_over_alexnet": g["macs"] / a["macs"],
        "seed_001_googlenet_params": 5_000_000,
        "latency": _latency(scale),
    }


def _speed_part(figures: dict[str, Any]) -> tuple[str, str]:
    lat = figures.get("latency")
    if not lat:
        return "not-testable", "latency not measured"
    r = lat["googlenet_over_alexnet"]
    busy = _busy(lat)
    if busy:
        return "not-testable", busy
    if r["ratio_unstable"]:
        return "not-testable", f"latency ratio unstable (IQR {r['ratio_iqr_fraction']:.0%})"
    text = f"GoogLeNet takes {r['ratio']:.2f}x AlexNet's batch-1 CPU time"
    if r["ratio"] <= 1 / SPEED_MARGIN:
        return "holds", text
    if r["ratio"] >= SPEED_MARGIN:
        return "contradicted", text
    return "partly", text + " (within 10%: no clear difference)"


def _busy(timing: dict[str, Any]) -> str:
    """Why the timing is not trusted on a busy machine, or '' if it is."""
    cores = timing.get("other_load_cores")
    if cores is not None and cores > BUSY:
        return f"other processes kept {cores:.2f} cores busy while timing: not judged"
    return ""


def judge_googlenet(figures: dict[str, Any]) -> tuple[str, str]:
    """Params: holds if AlexNet/GoogLeNet >= 8 (inference network). Speed: by latency."""
    ratio_ = figures["params_ratio"]
    params = "holds" if ratio_ >= PARAMS_RATIO_MIN else "contradicted"
    speed, speed_text = _speed_part(figures)
    m = figures["models"]
    reason = (
        f"params: AlexNet has {ratio_:.1f}x GoogLeNet's ({m['alexnet']['params'] / 1e6:.1f}M vs "
        f"{m['googlenet']['params'] / 1e6:.2f}M; {figures['params_ratio_with_aux']:.1f}x with the "
        f"training-only aux heads) -> {params}; speed: {speed_text} -> {speed}; MACs predict "
        f"GoogLeNet slower ({figures['macs_ratio_googlenet_over_alexnet']:.2f}x AlexNet's MACs). "
        f"Seed 001's '5M parameters' is low: {m['googlenet']['params'] / 1e6:.2f}M"
    )
    return combine({"params": params, "speed": speed}), reason


def plot_googlenet(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    names = list(figures["models"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, unit in zip(axes[:2], ("params", "macs"), (1e6, 1e9), strict=True):
        ax.bar(names, [figures["models"][n][key] / unit for n in names], color="tab:blue")
        ax.set_title(f"{key} ({'M' if unit == 1e6 else 'G'})")
        ax.tick_params(axis="x", labelrotation=20)
    lat = figures.get("latency")
    if lat:
        pair = ["alexnet", "googlenet"]
        errors = [lat[n]["latency_iqr_ms"] / 2 for n in pair]
        axes[2].bar(pair, [lat[n]["latency_ms"] for n in pair], yerr=errors, color="tab:orange")
        axes[2].set_title("batch-1 CPU latency (ms, median, IQR)")
    fig.suptitle("GoogLeNet vs AlexNet (seed 000)")
    save_figure(fig, path)


register(Experiment(
    name="googlenet-vs-alexnet",
    claim="GoogLeNet has about 10x fewer parameters than AlexNet and computes faster, because "
    "its 1x1 dimensionality reduction works well (seed 000; seed 001 gives 5M parameters)",
    seed="000",
    source="Szegedy et al. 2015, Going deeper with convolutions, Sec. 1 (12x fewer parameters) "
    "and Sec. 5 (1.5 billion multiply-adds)",
    rule="params part holds if AlexNet/GoogLeNet parameters >= 8 for the inference network "
    "(no aux heads; 'about 10x' read as no more than 20% below ten), else contradicted; speed "
    "part holds if GoogLeNet's batch-1 CPU latency is >= 10% below AlexNet's (median of "
    "interleaved per-round ratios), contradicted if >= 10% above, partly in between, "
    "not-testable if the ratio's IQR exceeds 25% of it or other processes kept more than 0.2 "
    "cores busy while timing; verdict: holds if both hold, "
    "contradicted if every part that could be judged is contradicted, else partly",
    run=run_googlenet,
    judge=judge_googlenet,
    plot=plot_googlenet,
))  # fmt: skip


# --- depthwise-cost ---------------------------------------------------------------------


def _block_inputs() -> list[tuple[int, ...]]:
    """The input shape (C, H, W) of each of MobileNetV1's 13 separable blocks at 224."""
    model = _meta("mobilenet_v1")
    shapes: list[tuple[int, ...]] = []
    hooks = [b.register_forward_pre_hook(lambda m, i: shapes.append(tuple(i[0].shape[1:])))
             for b in model.blocks]  # fmt: skip
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224, device="meta"))
    for h in hooks:
        h.remove()
    return shapes


def _layer_pair(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the block's depthwise + pointwise convs, a standard 3x3 conv of the same shape)."""
    dw, pw = block.depthwise.conv, block.pointwise.conv
    standard = nn.Conv2d(dw.in_channels, pw.out_channels, 3, dw.stride, 1, bias=False)
    return nn.Sequential(dw, pw), standard


def run_depthwise(scale: str) -> dict[str, Any]:
    """Per block: MACs separable/standard against 1/N + 1/Dk^2, and the latency ratio."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v1").eval()
    layers, fns = [], {}
    for i, (block, shape) in enumerate(zip(model.blocks, _block_inputs(), strict=True)):
        sep, std = _layer_pair(block)
        sep_macs, std_macs = count_macs(sep, shape), count_macs(std, shape)
        n, k = std.out_channels, std.kernel_size[0]
        layers.append({
            "block": i, "input": list(shape), "out_channels": n, "stride": std.stride[0],
            "separable_macs": sep_macs, "standard_macs": std_macs,
            "mac_ratio": sep_macs / std_macs, "formula": 1 / n + 1 / k**2,
        })  # fmt: skip
        x = torch.randn(1, *shape)
        fns[f"sep{i}"] = lambda sep=sep, x=x: sep(x)
        fns[f"std{i}"] = lambda std=std, x=x: std(x)
    with OtherLoad() as load:
        samples = race(fns, ROUNDS[scale])
    for row in layers:
        i = row["block"]
        row["latency_sep_ms"] = summary(samples[f"sep{i}"])["latency_ms"]
        row["latency_std_ms"] = summary(samples[f"std{i}"])["latency_ms"]
        row["latency"] = ratio(samples[f"std{i}"], samples[f"sep{i}"])  # speed-up
    per_round = {kind: [sum(samples[f"{kind}{r['block']}"][j] for r in layers)
                        for j in range(ROUNDS[scale])] for kind in ("sep", "std")}  # fmt: skip
    return {
        "layers": layers,
        "mac_speedup_total": sum(r["standard_macs"] for r in layers)
        / sum(r["separable_macs"] for r in layers),
        "latency_speedup_total": ratio(per_round["std"], per_round["sep"]),
        "threads": torch.get_num_threads(),
        "other_load_cores": load.cores,
    }


def judge_depthwise(figures: dict[str, Any]) -> tuple[str, str]:
    """MACs hold if every block matches the formula to 1e-9; latency holds if the measured
    speed-up of the 13 blocks together is at least half the MAC speed-up."""
    worst = max(abs(r["mac_ratio"] - r["formula"]) for r in figures["layers"])
    macs = "holds" if worst <= FORMULA_TOLERANCE else "contradicted"
    mac_speedup = figures["mac_speedup_total"]
    lat = figures["latency_speedup_total"]
    busy = _busy(figures)
    if busy or lat["ratio_unstable"]:
        latency = "not-testable"
    else:
        latency = "holds" if lat["ratio"] >= mac_speedup / 2 else "partly"
    reason = (
        f"MACs: every block's separable/standard ratio matches 1/N + 1/Dk^2 to {worst:.1e} -> "
        f"{macs}; the 13 blocks need {mac_speedup:.2f}x fewer MACs but run {lat['ratio']:.2f}x "
        f"faster on this CPU (IQR {lat['ratio_iqr_fraction']:.0%}) -> {latency}"
    )
    if busy:
        reason += f" ({busy})"
    if latency == "partly":
        reason += " (a depthwise conv does 9 MACs per input element: memory-bound)"
    verdict = "contradicted" if macs == "contradicted" else combine({"m": macs, "l": latency})
    return verdict, reason


def plot_depthwise(figures: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = figures["layers"]
    blocks = [r["block"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(blocks, [1 / r["mac_ratio"] for r in rows], "o-", label="MAC speed-up (= formula)")
    ax.plot(blocks, [r["latency"]["ratio"] for r in rows], "s-", label="measured CPU speed-up")
    ax.set_xlabel("MobileNetV1 separable block")
    ax.set_ylabel("standard / separable")
    ax.set_xticks(blocks)
    ax.legend()
    ax.set_title("Depthwise separable vs standard 3x3 conv (seed 004, MobileNets Sec. 3.1)")
    save_figure(fig, path)


register(Experiment(
    name="depthwise-cost",
    claim="a depthwise separable convolution (depthwise filter per channel, then a 1x1 "
    "pointwise conv) costs 1/N + 1/Dk^2 of a standard convolution, which makes MobileNet fast "
    "(seed 004)",
    seed="004",
    source="Howard et al. 2017, MobileNets, Sec. 3.1 (cost ratio 1/N + 1/Dk^2)",
    rule="MAC part holds if every one of MobileNetV1's 13 separable blocks has "
    "separable/standard MACs equal to 1/N + 1/Dk^2 within 1e-9, else contradicted; latency "
    "part holds if the 13 blocks' measured CPU speed-up (standard 3x3 conv of the same shape "
    "vs depthwise + pointwise, batch 1, interleaved rounds) is at least half their MAC "
    "speed-up, partly below that, not-testable if the ratio's IQR exceeds 25% of it or other "
    "processes kept more than 0.2 cores busy while timing; "
    "verdict: holds if both hold, else partly (contradicted if the MACs fail)",
    run=run_depthwise,
    judge=judge_depthwise,
    plot=plot_depthwise,
))  # fmt: skip
