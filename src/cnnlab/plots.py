"""Every figure cnnlab draws (matplotlib, Agg backend), each written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path

__all__ = ["FORMATS", "check_plot_path", "plot_confusion", "plot_sensitivity"]

FORMATS = ("png", "svg", "pdf")


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if its folder exists and its suffix is a format matplotlib writes (checked
    before any work, so a long run does not end on a bad file name)."""
    target = Path(path)
    if target.suffix.lstrip(".").lower() not in FORMATS:
        raise CnnlabError(f"plot file {str(target)!r} must end in .png, .svg or .pdf")
    folder = target.parent
    if not folder.is_dir():
        raise CnnlabError(f"folder {str(folder)!r} for the plot {str(target)!r} does not exist")
    return target


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
