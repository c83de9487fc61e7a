"""Evaluate a checkpoint on a data set, predict single images, plot a confusion matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data import Preprocess, build_loaders, data_channels, image_transform, load_image
from cnnlab.io import CnnlabError, atomic_path
from cnnlab.registry import create_model
from cnnlab.train.checkpoint import load_weights, read_meta
from cnnlab.train.loop import evaluate

__all__ = ["evaluate_checkpoint", "load_checkpoint_model", "plot_confusion", "predict"]


def load_checkpoint_model(
    model_name: str, checkpoint: str | os.PathLike[str]
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the checkpoint's weights, the checkpoint's metadata)."""
    meta = read_meta(checkpoint)
    trained = meta.get("model")
    if trained is not None and trained != model_name:
        raise CnnlabError(f"checkpoint {str(checkpoint)!r} holds {trained}, not {model_name}")
    classes, pre = meta.get("class_names"), meta.get("preprocess")
    if not isinstance(classes, list) or not isinstance(pre, dict):
        raise CnnlabError(f"checkpoint {str(checkpoint)!r} lacks class names or preprocessing")
    in_chans = Preprocess.from_dict(pre).in_chans
    model = create_model(model_name, num_classes=len(classes), in_chans=in_chans)
    load_weights(model, checkpoint)
    return model.eval(), meta


def _load_compressed(path: str | os.PathLike[str]) -> tuple[nn.Module, int | None]:
    """(the model of a .cnz file, the input size it was compressed at, if the file says)."""
    from cnnlab.compress.format import read, rebuild_model

    header, state = read(path)
    extra = header.get("extra")
    size = extra.get("img_size") if isinstance(extra, dict) else None
    valid = type(size) is int and size > 0
    return rebuild_model(header, state, source=str(path)), size if valid else None


def evaluate_checkpoint(
    model_name: str,
    data: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    compressed: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    workers: int = 0,
    img_size: int | None = None,
    val_split: float | None = None,
    seed: int = 0,
    limit: int | None = None,
    strict: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and confusion matrix of a checkpoint (our safetensors
    weights, or a Deep Compression .cnz file, at the input size it stores) on ``data``'s
    validation / test split (``seed``: the training run's, so ``val_split`` holds out the same
    images; ``strict``: a corrupt image is an error)."""
    if (checkpoint is None) == (compressed is None):
        raise ValueError("give exactly one of a checkpoint and a compressed file")
    if checkpoint is not None:
        model, meta = load_checkpoint_model(model_name, checkpoint)
        pre = Preprocess.from_dict(meta["preprocess"])
        size, in_chans, expected = img_size or pre.size, pre.in_chans, meta["class_names"]
    else:
        model, stored_size = _load_compressed(compressed)
        if model.model_name != model_name:
            raise CnnlabError(f"{str(compressed)!r} holds {model.model_name}, not {model_name}")
        native = getattr(model, "input_size", None)
        in_chans = int(native[0]) if native else data_channels(data)
        if native is None:
            with torch.device("meta"):
                native = create_model(model_name, in_chans=in_chans).input_size
        size, expected = img_size or stored_size or int(native[-1]), None
    _, loader, classes = build_loaders(
        data, img_size=size, in_chans=in_chans, batch_size=batch_size, workers=workers,
        val_split=val_split, seed=seed, limit=limit, strict=strict,
    )  # fmt: skip
    if expected is not None and len(expected) != len(classes):
        raise CnnlabError(
            f"the checkpoint has {len(expected)} classes, {data!r} has {len(classes)}"
        )
    result = evaluate(model.to(device), loader, device=device)
    return {"model": model_name, "data": data, "classes": classes, **result}


def predict(
    model_name: str,
    checkpoint: str | os.PathLike[str],
    images: list[str | os.PathLike[str]],
    top: int = 5,
) -> list[dict[str, Any]]:
    """For each image file, the ``top`` classes with their softmax probabilities."""
    model, meta = load_checkpoint_model(model_name, checkpoint)
    pre = Preprocess.from_dict(meta["preprocess"])
    transform = image_transform(pre)
    classes = meta["class_names"]
    batch = []
    for path in images:
        try:
            batch.append(transform(load_image(path, pre.in_chans)))
        except (OSError, ValueError) as exc:
            raise CnnlabError(f"cannot read image {str(path)!r}: {exc}") from None
    with torch.inference_mode():
        probs = model(torch.stack(batch)).softmax(dim=1)
    k = min(top, len(classes))
    results = []
    for path, p in zip(images, probs, strict=True):
        values, indices = p.topk(k)
        ranked = [
            {"class": classes[i], "index": i, "probability": round(float(v), 6)}
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        results.append({"image": str(path), "top": ranked})
    return results


def plot_confusion(
    confusion: list[list[int]], classes: list[str], path: str | os.PathLike[str], title: str = ""
) -> None:
    """Save the confusion matrix (rows: true class, columns: predicted) as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)
