"""Every figure cnnlab draws (matplotlib, Agg backend), each written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path, check_output

__all__ = [
    "FORMATS",
    "check_plot_path",
    "plot_comparison",
    "plot_confusion",
    "plot_gradients",
    "plot_sensitivity",
]

FORMATS = ("png", "svg", "pdf")


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if its folder exists and its suffix is a format matplotlib writes (checked
    before any work, so a long run does not end on a bad file name)."""
    target = Path(path)
    if target.suffix.lstrip(".").lower() not in FORMATS:
        raise CnnlabError(f"plot file {str(target)!r} must end in .png, .svg or .pdf")
    return check_output(target)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    p = check_plot_path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format=p.suffix.lstrip(".").lower(), **kwargs)
    _pyplot().close(fig)
    return p


def plot_confusion(
    confusion: list[list[int]], classes: list[str], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """The confusion matrix (rows: true class, columns: predicted), coloured by row rate."""
    plt = _pyplot()
    m = torch.tensor(confusion, dtype=torch.float64)
    rate = m / m.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(rate.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                color = "white" if rate[i, j] > 0.5 else "black"
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return _save(fig, path, dpi=120)


def plot_sensitivity(
    curves: dict[str, list[tuple[float, float]]], path: str | os.PathLike[str], title: str
) -> Path:
    """Top-1 against the fraction of one layer pruned, a curve per layer (Han et al. 2015,
    Learning both Weights and Connections, figure 6)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([100 * f for f, _ in curve], [a for _, a in curve], marker="o", label=name)
    ax.set_xlabel("parameters pruned away (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{title}: pruning sensitivity per layer")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_gradients(reports: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """One line per model: gradient norm (log) by layer depth, at init and after training
    (``reports``: name -> :class:`cnnlab.analysis.GradientReport`)."""
    plt = _pyplot()
    trained = all(r.final is not None for r in reports.values())
    fig, axes = plt.subplots(1, 2 if trained else 1, figsize=(12 if trained else 6.5, 4.5))
    axes = list(axes) if trained else [axes]
    panels = [("init", "at initialisation")]
    if trained:
        steps = next(iter(reports.values())).steps
        panels.append(("final", f"after {steps} SGD steps"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, report in reports.items():
            values = getattr(report, key)
            ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
        ax.set(yscale="log", xlabel="weight layer (input → output)", ylabel="‖∂L/∂W‖")
        ax.set_title(f"per-layer gradient norm {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def _labelled_scatter(ax: Any, rows: list[dict[str, Any]], x: list, y: list, **kwargs) -> None:
    ax.scatter(x, y, **kwargs)
    for r, xi, yi in zip(rows, x, y, strict=True):
        ax.annotate(r["model"], (xi, yi), fontsize=7, ha="center", va="bottom")
    ax.grid(True, which="both", alpha=0.3)


def plot_comparison(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Bubble chart: MACs (x, log) vs params (y, log), bubble area = forward activation memory
    (rows of :func:`cnnlab.analysis.compare_models`); a second panel plots latency against
    MACs when the rows hold ``latency_ms``."""
    plt = _pyplot()
    with_latency = all("latency_ms" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if with_latency else 1, figsize=(13 if with_latency else 7, 5.5))
    axes = list(axes) if with_latency else [axes]
    macs = [r["macs"] / 1e6 for r in rows]
    memory = [r["forward_bytes"] / 2**20 for r in rows]
    biggest = max(memory) or 1.0
    sizes = [20 + 1500 * m / biggest for m in memory]
    params = [r["params"] / 1e6 for r in rows]
    _labelled_scatter(axes[0], rows, macs, params, s=sizes, alpha=0.45, edgecolors="k",
                      linewidths=0.5)  # fmt: skip
    axes[0].set(xscale="log", yscale="log", xlabel="MACs (millions, batch 1)",
                ylabel="parameters (M)")  # fmt: skip
    axes[0].set_title(f"bubble area ∝ forward activation memory (largest {biggest:.0f} MiB)")
    if with_latency:
        _labelled_scatter(axes[1], rows, macs, [r["latency_ms"] for r in rows], s=30)
        axes[1].set(xscale="log", yscale="log", xlabel="MACs (millions)",
                    ylabel="latency, batch 1 (ms)")  # fmt: skip
        axes[1].set_title("CPU latency vs MACs")
    fig.tight_layout()
    return _save(fig, path, dpi=110)
