"""A real-image detection set made from Fashion-MNIST, in the COCO-style folder layout.

Each canvas is a ``size`` x ``size`` grey (1 channel, 8-bit) PNG, black like Fashion-MNIST's
background, holding 1 to 5 articles. An article is one 28x28 Fashion-MNIST image scaled
(bilinear) to a square of side 0.1 to 0.4 of the canvas (32 to 128 pixels at 320), so the
set spans SSD's default box scales. Its box is the extent of its non-zero pixels after scaling
(the foreground), and articles are placed so that their boxes do not overlap (up to 50 tries
each; an article that finds no free spot is left out, the first always fits): a box holds its
own article's pixels and nothing else. Categories: the 10 Fashion-MNIST classes, ids 1..10
(``FASHION_MNIST_CLASSES`` order). Train canvases draw from Fashion-MNIST's training images,
val canvases from its test images. The dataset loader turns grey into RGB for 3-channel
models.

Deterministic: the same ``seed``, counts and size give byte-identical JSON and PNGs (NumPy's
PCG64 generator; PNGs without timestamps). The folder is written to a hidden temporary folder
beside ``out`` and renamed into place at the end: ``out`` is complete or not there.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from cnnlab.data import FASHION_MNIST_CLASSES, find_fashion_mnist, load_fashion_mnist
from cnnlab.detect.data import annotation_path
from cnnlab.errors import CnnlabError

__all__ = ["ARTICLES", "SIDE", "make_detection"]

ARTICLES = (1, 5)  # articles per canvas, inclusive
SIDE = (0.1, 0.4)  # an article's side as a fraction of the canvas side
PLACE_TRIES = 50
SIZE_RANGE = (64, 1024)
MAX_CANVASES = 1_000_000


def _check(n_train: Any, n_val: Any, seed: Any, size: Any) -> None:
    for name, value in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CnnlabError(f"{name} must be an integer >= 1, got {value!r}")
        if value > MAX_CANVASES:
            raise CnnlabError(f"{name} must be at most {MAX_CANVASES:,}, got {value:,}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CnnlabError(f"seed must be an integer >= 0, got {seed!r}")
    lo, hi = SIZE_RANGE
    if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
        raise CnnlabError(f"size must be an integer from {lo} to {hi}, got {size!r}")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"{str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise CnnlabError(f"{str(out)!r} exists and is not empty")
    parent = out.parent
    if not parent.is_dir():
        raise CnnlabError(f"folder {str(parent)!r} does not exist (for {str(out)!r})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CnnlabError(f"folder {str(parent)!r} is not writable (for {str(out)!r})")


def _scaled(article: torch.Tensor, side: int) -> np.ndarray:
    """A 28x28 uint8 article resized (bilinear) to ``side`` x ``side``."""
    x = F.interpolate(article[None, None].float(), size=(side, side), mode="bilinear")
    return x[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _canvas(
    rng: np.random.Generator, images: torch.Tensor, labels: torch.Tensor, size: int
) -> tuple[np.ndarray, list[tuple[list[int], int, int]]]:
    """One canvas and its (box [x, y, w, h], class 0..9, source index) per article."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    placed: list[tuple[list[int], int, int]] = []
    lo, hi = round(SIDE[0] * size), round(SIDE[1] * size)
    for _ in range(int(rng.integers(ARTICLES[0], ARTICLES[1] + 1))):
        index = int(rng.integers(images.shape[0]))
        patch = _scaled(images[index, 0], int(rng.integers(lo, hi + 1)))
        rows, cols = np.nonzero(patch)
        if rows.size == 0:
            continue
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        for _ in range(PLACE_TRIES):
            y = int(rng.integers(size - patch.shape[0] + 1))
            x = int(rng.integers(size - patch.shape[1] + 1))
            box = [x + int(c0), y + int(r0), int(c1 - c0), int(r1 - r0)]
            if not any(_overlap(box, other) for other, _, _ in placed):
                region = canvas[y : y + patch.shape[0], x : x + patch.shape[1]]
                np.maximum(region, patch, out=region)
                placed.append((box, int(labels[index]), index))
                break
    return canvas, placed


def _overlap(a: list[int], b: list[int]) -> bool:
    """Whether two [x, y, w, h] pixel boxes share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _png(canvas: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _write_split(
    root: Path, split: str, n: int, rng: np.random.Generator, source: tuple, size: int
) -> dict[str, int]:
    """Write ``n`` canvases of ``split`` and its COCO JSON; return its counts."""
    images, labels = source
    folder = root / split
    folder.mkdir()
    doc: dict[str, Any] = {"images": [], "annotations": []}
    for k in range(1, n + 1):
        canvas, placed = _canvas(rng, images, labels, size)
        name = f"{k:06d}.png"
        (folder / name).write_bytes(_png(canvas))
        doc["images"].append({"id": k, "file_name": name, "width": size, "height": size})
        for box, label, index in placed:
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "image_id": k, "category_id": label + 1,
                "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
                "fashion_mnist_index": index,
            })  # fmt: skip
    doc["categories"] = [
        {"id": c + 1, "name": name, "supercategory": "fashion"}
        for c, name in enumerate(FASHION_MNIST_CLASSES)
    ]
    doc["info"] = {"description": f"cnnlab make-detection {split} from Fashion-MNIST"}
    text = json.dumps(doc, indent=None, separators=(",", ":")) + "\n"
    annotation_path(root, split).write_text(text)
    return {"images": n, "boxes": len(doc["annotations"])}


def make_detection(
    out: str | os.PathLike[str],
    n_train: int,
    n_val: int,
    seed: int = 0,
    size: int = 320,
    fashion_mnist: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write a Fashion-MNIST detection set (module doc) to the new or empty folder ``out``:
    ``n_train`` train and ``n_val`` val canvases. ``fashion_mnist``: where the IDX files are
    (default: :func:`~cnnlab.data.find_fashion_mnist`'s search). Returns the counts."""
    _check(n_train, n_val, seed, size)
    target = Path(out)
    _check_out(target)
    folder = find_fashion_mnist(fashion_mnist)
    sources = {
        "train": load_fashion_mnist(folder, "train"),
        "val": load_fashion_mnist(folder, "test"),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (tmp / "annotations").mkdir()
        counts = {
            split: _write_split(
                tmp, split, n, np.random.default_rng([seed, k]), sources[split], size
            )
            for k, (split, n) in enumerate((("train", n_train), ("val", n_val)))
        }
        os.chmod(tmp, 0o777 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(target), "seed": seed, "size": size, **counts}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
