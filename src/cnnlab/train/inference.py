"""Evaluate any saved model on a data set and predict single images.

Both take every kind of file :func:`cnnlab.load` reads: a run folder, a cnnlab
``.safetensors``, a ``.cnz``, or torchvision / timm weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnlab.data import Preprocess, build_loaders, image_transform, load_image
from cnnlab.errors import CnnlabError
from cnnlab.saved import load
from cnnlab.train.loop import evaluate

__all__ = ["evaluate_checkpoint", "model_and_loaders", "predict"]


def _note_assumed(meta: dict[str, Any], log: Callable[[str], None] | None) -> None:
    if meta.get("assumed") and log:
        log(
            f"note: {meta['path']} does not store {' or '.join(meta['assumed'])}; "
            "using the defaults (see docs/saved.md)"
        )


def model_and_loaders(
    checkpoint: str | os.PathLike[str],
    data: str,
    model_name: str | None = None,
    *,
    img_size: int | None = None,
    batch_size: int = 128,
    limit: int | None = None,
    seed: int = 0,
    workers: int = 0,
    val_split: float | None = None,
    strict: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict[str, Any], Any, Any]:
    """(model, meta, train loader, val loader): a saved model and ``data`` at the input size and
    channels the model was trained with (:func:`cnnlab.data.build_loaders` takes the other
    options); the classifier must match the data's class count, and the data's class names
    (``meta["data_classes"]``) stand in for names the file lacks. ``log`` gets a note for
    what the file does not store."""
    torch.manual_seed(seed)  # the model's random init draws come first, as in a training run
    model, meta = load(checkpoint, model_name)
    pre = Preprocess.from_dict(meta["preprocess"])
    train, val, classes = build_loaders(
        data, img_size=img_size or pre.size, in_chans=pre.in_chans, batch_size=batch_size,
        limit=limit, seed=seed, workers=workers, val_split=val_split, strict=strict,
    )  # fmt: skip
    if meta["num_classes"] != len(classes):
        raise CnnlabError(
            f"{meta['path']} has {meta['num_classes']} classes, {data!r} has {len(classes)}"
        )
    meta["data_classes"] = list(classes)
    if "class_names" in meta["assumed"]:  # the data names the classes the file does not
        meta["class_names"] = list(classes)
        meta["assumed"] = [a for a in meta["assumed"] if a != "class_names"]
    _note_assumed(meta, log)
    return model, meta, train, val


def evaluate_checkpoint(
    model_name: str | None,
    data: str,
    checkpoint: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    workers: int = 0,
    img_size: int | None = None,
    val_split: float | None = None,
    seed: int = 0,
    limit: int | None = None,
    strict: bool = False,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and confusion matrix of a saved model on ``data``'s
    validation / test split, at the input size the file stores (``seed``: the training run's,
    so ``val_split`` holds out the same images; ``strict``: a corrupt image is an error).
    ``log`` gets a note when the file lacks class names or preprocessing."""
    model, meta, _, loader = model_and_loaders(
        checkpoint, data, model_name, img_size=img_size, batch_size=batch_size, limit=limit,
        seed=seed, workers=workers, val_split=val_split, strict=strict, log=log,
    )  # fmt: skip
    result = evaluate(model.to(device), loader, device=device)
    return {"model": meta["model"], "data": data, "classes": meta["data_classes"], **result}


def predict(
    model_name: str | None,
    checkpoint: str | os.PathLike[str],
    images: list[str | os.PathLike[str]],
    top: int = 5,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """For each image file, the ``top`` classes with their softmax probabilities."""
    if top < 1:
        raise CnnlabError(f"top must be at least 1, got {top}")
    model, meta = load(checkpoint, model_name)
    _note_assumed(meta, log)
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
