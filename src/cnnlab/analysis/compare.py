"""Side-by-side figures of several registered models, and the bubble chart that shows them.

``compare_models`` profiles each model on the ``meta`` device (shapes only), so the whole zoo
takes seconds; ``measure_latency=True`` adds a real CPU forward timing per model.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.analysis.profile import profile
from cnnlab.io import CnnlabError, atomic_path
from cnnlab.registry import create_model, match_models

__all__ = ["check_plot_path", "compare_models", "measure_latency", "plot_comparison"]

PLOT_FORMATS = ("png", "svg", "pdf")


def check_plot_path(path: str | Path) -> Path:
    """``path`` if its folder exists and its suffix is a format matplotlib writes."""
    target = Path(path)
    if target.suffix.lstrip(".").lower() not in PLOT_FORMATS:
        raise CnnlabError(f"plot file {str(target)!r} must end in .png, .svg or .pdf")
    folder = target.parent
    if not folder.is_dir():
        raise CnnlabError(f"folder {str(folder)!r} for the plot {str(target)!r} does not exist")
    return target


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    input_size: tuple[int, ...],
    batch_size: int = 1,
    *,
    repeats: int = 5,
    warmup: int = 1,
) -> float:
    """Median wall-clock seconds of an eval-mode forward pass on CPU (fp32)."""
    was_training = model.training
    model.eval()
    x = torch.randn((batch_size, *input_size))
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)


def compare_models(
    patterns: list[str] | tuple[str, ...] = ("*",),
    *,
    latency: bool = False,
    throughput_batch: int = 8,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """One dict per registered model matching any of ``patterns`` (shell wildcards).

    Keys: ``model``, ``input_size``, ``params``, ``macs``, ``activations`` (elements per image),
    ``param_bytes`` (fp32 size), ``forward_bytes`` and ``training_bytes`` (SGD with momentum,
    batch 1), and with ``latency=True`` ``latency_ms`` (median at batch 1) and
    ``images_per_s`` (at batch ``throughput_batch``), measured on this machine's CPU.
    """
    rows = []
    for name in match_models(patterns):
        with torch.device("meta"):
            model = create_model(name)
        prof = profile(model, tuple(model.input_size), 1)
        row: dict[str, Any] = {
            "model": name,
            "input_size": list(prof.input_size),
            "params": prof.params,
            "macs": prof.macs,
            "activations": prof.activations,
            "param_bytes": prof.param_bytes,
            "forward_bytes": prof.forward_bytes,
            "training_bytes": prof.training_bytes["sgd_momentum"],
        }
        if latency:
            torch.manual_seed(0)
            real = create_model(name)
            row["latency_ms"] = 1000 * measure_latency(real, prof.input_size, 1, repeats=repeats)
            seconds = measure_latency(real, prof.input_size, throughput_batch, repeats=repeats)
            row["images_per_s"] = throughput_batch / seconds
        rows.append(row)
    return rows


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Bubble chart: MACs (x, log) vs params (y, log), bubble area = forward activation memory.

    A second panel plots latency against MACs when the rows hold ``latency_ms``.
    """
    target = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_latency = all("latency_ms" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if with_latency else 1, figsize=(13 if with_latency else 7, 5.5))
    axes = list(axes) if with_latency else [axes]
    macs = [r["macs"] / 1e6 for r in rows]
    params = [r["params"] / 1e6 for r in rows]
    memory = [r["forward_bytes"] / 2**20 for r in rows]
    biggest = max(memory) or 1.0
    sizes = [20 + 1500 * m / biggest for m in memory]
    ax = axes[0]
    ax.scatter(macs, params, s=sizes, alpha=0.45, edgecolors="k", linewidths=0.5)
    for r, x, y in zip(rows, macs, params, strict=True):
        ax.annotate(r["model"], (x, y), fontsize=7, ha="center", va="bottom")
    ax.set(xscale="log", yscale="log", xlabel="MACs (millions, batch 1)", ylabel="parameters (M)")
    ax.set_title(f"bubble area ∝ forward activation memory (largest {biggest:.0f} MiB)")
    ax.grid(True, which="both", alpha=0.3)
    if with_latency:
        ax = axes[1]
        latency = [r["latency_ms"] for r in rows]
        ax.scatter(macs, latency, s=30)
        for r, x, y in zip(rows, macs, latency, strict=True):
            ax.annotate(r["model"], (x, y), fontsize=7, ha="center", va="bottom")
        ax.set(xscale="log", yscale="log", xlabel="MACs (millions)", ylabel="latency, batch 1 (ms)")
        ax.set_title("CPU latency vs MACs")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=target.suffix.lstrip(".").lower(), dpi=110)
    plt.close(fig)
    return target
