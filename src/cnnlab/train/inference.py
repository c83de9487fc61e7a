"""Evaluate any saved model on a data set and predict single images.

Both take every kind of file :func:`cnnlab.load` reads: a run folder, a cnnlab
``.safetensors``, a ``.cnz``, or torchvision / timm weights.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from cnnlab.data import (
    IMAGE_SUFFIXES,
    BadImageError,
    Preprocess,
    build_loaders,
    image_transform,
    load_image,
    visible_entries,
)
from cnnlab.devices import autocast_dtype, resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.saved import load
from cnnlab.train.loop import evaluate

__all__ = ["TOP_CLASSES", "evaluate_checkpoint", "image_files", "model_and_loaders", "predict"]

TOP_CLASSES = 5  # classes per image that predict() gives by default


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
    _check_class_order(meta, classes, data)
    meta["data_classes"] = list(classes)
    if "class_names" in meta["assumed"]:  # the data names the classes the file does not
        meta["class_names"] = list(classes)
        meta["assumed"] = [a for a in meta["assumed"] if a != "class_names"]
    _note_assumed(meta, log)
    return model, meta, train, val


def _check_class_order(meta: dict[str, Any], classes: list[str], data: str) -> None:
    """Refuse data that names a class of the file at another index: its images would be scored
    against another class's output (names the file lacks, or that differ altogether, such
    as ``0..9`` against ``class0..class9``, are matched by index)."""
    if "class_names" in meta["assumed"]:
        return
    index = {name: i for i, name in enumerate(meta["class_names"])}
    moved = [(name, i) for i, name in enumerate(classes) if index.get(name, i) != i]
    if moved:
        name, i = moved[0]
        raise CnnlabError(
            f"{meta['path']} and {data!r} number the classes differently: {name!r} is class "
            f"{index[name]} in the file but {i} in the data ({len(moved)} class(es) moved)"
        )


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
    device: str | None = "cpu",
    precision: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy and confusion matrix of a saved model on ``data``'s
    validation / test split, at the input size the file stores (``seed``: the training run's,
    so ``val_split`` holds out the same images; ``strict``: a corrupt image is an error).
    ``device``: as :func:`cnnlab.devices.resolve_device` takes it (None: CUDA if available),
    checked before anything is read; ``precision`` as :func:`cnnlab.devices.autocast_dtype`
    takes it; ``channels_last``: the weights in NHWC, as ``cnnlab train`` keeps them (1.3-2x
    faster on a CPU, docs/performance.md). ``log`` gets a note when the file lacks class names
    or preprocessing; with ``progress``, a bar on a terminal, else one line when done."""
    dev = resolve_device(device)
    dtype = autocast_dtype(precision, dev)
    model, meta, _, loader = model_and_loaders(
        checkpoint, data, model_name, img_size=img_size, batch_size=batch_size, limit=limit,
        seed=seed, workers=workers, val_split=val_split, strict=strict, log=log,
    )  # fmt: skip
    bar = _bar(len(loader.dataset)) if progress and _tty() else None
    try:
        on_batch = bar.update if bar else None
        model = _placed(model, dev, channels_last)
        result = evaluate(model, loader, device=dev, on_batch=on_batch, dtype=dtype)
    finally:
        if bar is not None:
            bar.close()
    if progress and bar is None and log:
        log(f"evaluated {result['images']:,} images in {result['seconds']:.1f}s on {dev.type}")
    return {"model": meta["model"], "data": data, "classes": meta["data_classes"], **result}


def _placed(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", None)) and sys.stderr.isatty()


def _bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", unit_scale=True, leave=False, desc="eval",
                file=sys.stderr, dynamic_ncols=True)  # fmt: skip


def image_files(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """The files to predict: each path as given, a folder replaced by its image files
    (by suffix, sorted by name, not hidden, not recursive); a folder without images is an
    error."""
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = [f for f in visible_entries(path) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise CnnlabError(f"folder {str(path)!r} holds no image files")
        files.extend(found)
    return files


def _read(path: Path, transform: Any, in_chans: int) -> torch.Tensor | str:
    """The prepared image tensor, or why it cannot be read (missing, not a regular file,
    corrupt, too many pixels: :func:`cnnlab.data.load_image` tells)."""
    try:
        return transform(load_image(path, in_chans))
    except BadImageError as exc:
        return exc.reason
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return " ".join(str(exc).split())[:200] or type(exc).__name__


def predict(
    model_name: str | None,
    checkpoint: str | os.PathLike[str],
    images: list[str | os.PathLike[str]],
    top: int = TOP_CLASSES,
    log: Callable[[str], None] | None = None,
    device: str | None = "cpu",
    batch_size: int = 64,
    channels_last: bool = True,
) -> list[dict[str, Any]]:
    """For each image file (a folder: its images, sorted), the ``top`` classes with their
    softmax probabilities: ``{"image", "top": [{"class", "index", "probability"}]}``. An
    image that cannot be read gets ``{"image", "error"}`` instead (and a ``log`` line); if
    none can be read, ``CnnlabError``. Images go through the model ``batch_size`` at a time,
    its weights channels-last unless ``channels_last=False``."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise CnnlabError(f"top must be an integer >= 1, got {top!r}")
    dev = resolve_device(device)
    files = image_files(images)
    model, meta = load(checkpoint, model_name)
    _note_assumed(meta, log)
    pre = Preprocess.from_dict(meta["preprocess"])
    transform, classes = image_transform(pre), meta["class_names"]
    model = _placed(model, dev, channels_last).eval()
    results: list[dict[str, Any]] = []
    for i in range(0, len(files), batch_size):
        chunk = [(f, _read(f, transform, pre.in_chans)) for f in files[i : i + batch_size]]
        good = [x for _, x in chunk if isinstance(x, torch.Tensor)]
        ranked = iter(_ranked(model, good, classes, min(top, len(classes)), dev))
        for f, x in chunk:
            if isinstance(x, str):
                if log:
                    log(f"warning: cannot read image {str(f)!r}: {x}")
                results.append({"image": str(f), "error": x})
            else:
                results.append({"image": str(f), "top": next(ranked)})
    if not any("top" in r for r in results):
        raise CnnlabError(f"none of the {len(files)} image(s) could be read")
    return results


def _ranked(
    model: nn.Module, batch: list[torch.Tensor], classes: list[str], k: int, dev: torch.device
) -> list[list[dict[str, Any]]]:
    """The top-``k`` classes of each image of ``batch``."""
    if not batch:
        return []
    with torch.inference_mode():
        probs = model(torch.stack(batch).to(dev)).float().softmax(dim=1).cpu()
    out = []
    for p in probs:
        values, indices = p.topk(k)
        out.append([
            {"class": classes[i], "index": i, "probability": round(float(v), 6)}
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ])  # fmt: skip
    return out
