"""COCO-style detection data: ``DIR/annotations/instances_{train,val}.json`` with the images
under ``DIR/train/`` and ``DIR/val/`` (each ``file_name`` relative to its split's folder).

The annotation file is untrusted: read as a regular file of at most
:data:`MAX_ANNOTATION_BYTES`, parsed as JSON only (nothing is unpickled or evaluated), checked
entry by entry. A file that is not JSON, or not COCO's shape (``images``, ``annotations``,
``categories`` lists), is one :class:`~cnnlab.errors.CnnlabError`. A bad entry is skipped,
counted in ``skipped`` and the first few named in one warning (``strict=True``: the first one
is a ``CnnlabError``): a box with non-positive size or outside its image (1 pixel of
tolerance, then clipped), an unknown ``category_id`` or ``image_id``, an image entry without a
usable ``file_name``/``width``/``height`` or with a name leaving its folder, an image file
that is missing, corrupt, larger than :data:`~cnnlab.data.MAX_IMAGE_PIXELS` or of another
size than its entry says. ``iscrowd`` annotations are left out (COCO's evaluation ignores
them too). Images without boxes stay: they are all background.

Labels: the categories sorted by id become 1..K (0 is the background of
:class:`cnnlab.models.ssd.SSD`); ``classes`` holds their names in that order.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch.utils.data import Dataset

from cnnlab.codec import read_file_bytes
from cnnlab.data import BadImageError, Preprocess, load_image, open_image
from cnnlab.detect.augment import DetectionAugment
from cnnlab.errors import CnnlabError

__all__ = [
    "MAX_ANNOTATION_BYTES",
    "SPLITS",
    "Annotations",
    "DetectionDataset",
    "annotation_path",
    "collate_detection",
    "is_detection_folder",
    "normalise",
    "read_annotations",
    "resize_with_boxes",
]

SPLITS = ("train", "val")
# COCO 2017's instances_train2017.json is 448 MB; parsed, JSON takes several times its size.
MAX_ANNOTATION_BYTES = 512 << 20
BOX_TOLERANCE = 1.0  # pixels a box may overhang its image (rounding in exported files)
NAMED_SKIPS = 5  # how many skipped entries one warning names


def annotation_path(root: str | os.PathLike[str], split: str) -> Path:
    """``root/annotations/instances_<split>.json``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(root) / "annotations" / f"instances_{split}.json"


def is_detection_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has the COCO-style layout: for the train or the val split, its
    annotation file and its image folder."""
    root = Path(path)
    return (
        any(annotation_path(root, s).is_file() and (root / s).is_dir() for s in SPLITS)
        and root.is_dir()
    )


@dataclass
class Annotations:
    """What :func:`read_annotations` kept: ``images`` as (path, width, height, boxes (K, 4)
    x1 y1 x2 y2 pixels, labels (K,) 1..K); ``classes`` the category names by label - 1;
    ``category_ids`` the COCO ids by label - 1; ``skipped`` one line per skipped entry."""

    images: list[tuple[Path, int, int, torch.Tensor, torch.Tensor]]
    classes: list[str]
    category_ids: list[int]
    image_ids: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class _Skips:
    """Collects skipped entries; ``strict`` raises on the first."""

    def __init__(self, source: str, strict: bool) -> None:
        self.source, self.strict, self.lines = source, strict, []

    def __call__(self, what: str) -> None:
        if self.strict:
            raise CnnlabError(f"{self.source}: {what}")
        self.lines.append(what)


def _load_json(path: Path) -> dict[str, Any]:
    data = read_file_bytes(path, MAX_ANNOTATION_BYTES, "annotation file")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CnnlabError(f"{str(path)!r} is not valid JSON: {reason}") from None
    if not isinstance(doc, dict):
        raise CnnlabError(f"{str(path)!r}: expected a JSON object (COCO), got {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise CnnlabError(f"{str(path)!r}: no {key!r} list (COCO format)")
    return doc


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _categories(doc: dict[str, Any], source: str) -> tuple[list[int], list[str]]:
    found: dict[int, str] = {}
    for k, cat in enumerate(doc["categories"]):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid) or cid in found:
            raise CnnlabError(f"{source}: category {k} has no id or a repeated one")
        found[cid] = str(cat.get("name", cid))[:200]
    if not found:
        raise CnnlabError(f"{source}: no categories")
    ids = sorted(found)
    return ids, [found[i] for i in ids]


def _image_entry(entry: Any, folder: Path) -> tuple[int, Path, int, int] | str:
    """(id, path, width, height) of an image entry, or why it cannot be used."""
    if not isinstance(entry, dict) or not _is_int(entry.get("id")):
        return "an image entry without an integer id"
    name, w, h = entry.get("file_name"), entry.get("width"), entry.get("height")
    where = f"image {entry['id']}"
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return f"{where}: no usable file_name"
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        return f"{where}: file_name {name[:100]!r} leaves the image folder"
    if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
        return f"{where}: width and height must be positive integers"
    return entry["id"], folder / rel, w, h


def _box(ann: dict[str, Any], width: int, height: int) -> list[float] | str:
    """x1, y1, x2, y2 of a COCO ``bbox`` [x, y, w, h], clipped; or why it is refused."""
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return "bbox is not [x, y, width, height]"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return "bbox holds a non-number"
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return f"box {bbox} has non-positive size"
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"box {bbox} is outside its {width}x{height} image"
    return [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]


def _check_file(path: Path, width: int, height: int) -> str | None:
    """None if the image decodes at the size its entry says, else the reason."""
    try:
        with open_image(path) as img:
            if img.size != (width, height):
                return f"is {img.size[0]}x{img.size[1]}, its entry says {width}x{height}"
            img.load()
    except BadImageError as exc:
        return exc.reason
    return None


def _boxes_by_image(
    doc: dict[str, Any], sizes: dict[int, tuple[int, int]], labels: dict[int, int], skip: _Skips
) -> dict[int, list[tuple[list[float], int]]]:
    found: dict[int, list[tuple[list[float], int]]] = {i: [] for i in sizes}
    for k, ann in enumerate(doc["annotations"]):
        where = f"annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        if not isinstance(ann, dict):
            skip(f"{where}: not an object")
        elif ann.get("iscrowd", 0):
            continue
        elif ann.get("image_id") not in sizes:
            skip(f"{where}: unknown image_id {ann.get('image_id')!r:.50}")
        elif ann.get("category_id") not in labels:
            skip(f"{where}: unknown category_id {ann.get('category_id')!r:.50}")
        elif isinstance(box := _box(ann, *sizes[ann["image_id"]]), str):
            skip(f"{where}: {box}")
        else:
            found[ann["image_id"]].append((box, labels[ann["category_id"]]))
    return found


def read_annotations(
    root: str | os.PathLike[str], split: str, strict: bool = False, check_images: bool = True
) -> Annotations:
    """The images and boxes of ``split`` in the COCO-style folder ``root``, bad entries
    skipped (module doc). ``check_images``: decode every image once now (as
    :class:`~cnnlab.data.ImageFolderDataset` does), so a corrupt one is skipped here, not
    met in the middle of training."""
    path = annotation_path(root, split)
    folder = Path(root) / split
    doc = _load_json(path)
    source = str(path)
    ids, names = _categories(doc, source)
    labels = {cid: k + 1 for k, cid in enumerate(ids)}
    skip = _Skips(source, strict)
    entries: dict[int, tuple[Path, int, int]] = {}
    for entry in doc["images"]:
        got = _image_entry(entry, folder)
        if isinstance(got, str) or got[0] in entries:
            skip(got if isinstance(got, str) else f"image {got[0]}: repeated id")
        else:
            entries[got[0]] = got[1:]
    boxes = _boxes_by_image(doc, {i: e[1:] for i, e in entries.items()}, labels, skip)
    out = Annotations([], names, ids)
    for image_id, (file, w, h) in entries.items():
        reason = _check_file(file, w, h) if check_images else None
        if reason is not None:
            skip(f"image {image_id} {str(file)!r}: {reason}")
            continue
        pairs = boxes[image_id]
        box_t = torch.tensor([b for b, _ in pairs], dtype=torch.float32).reshape(-1, 4)
        out.images.append((file, w, h, box_t, torch.tensor([c for _, c in pairs]).long()))
        out.image_ids.append(image_id)
    out.skipped = skip.lines
    if out.skipped:
        named = "; ".join(out.skipped[:NAMED_SKIPS])
        more = (
            f" (and {len(out.skipped) - NAMED_SKIPS} more)"
            if len(out.skipped) > NAMED_SKIPS
            else ""
        )
        warnings.warn(f"{source}: skipped {len(out.skipped)}: {named}{more}", stacklevel=2)
    return out


def resize_with_boxes(
    image: torch.Tensor, boxes: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (C, H, W) image stretched to ``size`` x ``size`` and its boxes scaled with it, x by
    size / W and y by size / H (SSD warps its inputs to 300x300 the same way, Sec. 3)."""
    from torchvision.transforms.v2 import functional as TF  # here: it takes a second to import

    _, h, w = image.shape
    resized = TF.resize(image, [size, size], antialias=True)
    return resized, boxes * boxes.new_tensor([size / w, size / h, size / w, size / h])


def normalise(image: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """A uint8 (C, H, W) image as floats in [0, 1], less ``pre``'s mean, over its std."""
    mean, std = pre.channel_stats()
    x = image.float().div_(255).sub_(torch.tensor(mean).view(-1, 1, 1))
    return x.div_(torch.tensor(std).view(-1, 1, 1))


class DetectionDataset(Dataset):
    """One split of a COCO-style folder as ``(image, target)`` pairs: the image a normalised
    float (in_chans, size, size) by ``pre``, the target ``{"boxes": (K, 4) x1 y1 x2 y2 in
    pixels of that resized image, "labels": (K,) 1..K}``. ``augment`` applies
    :class:`~cnnlab.detect.augment.DetectionAugment` (zoom-out filled with ``pre``'s mean
    colour) before the resize."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        pre: Preprocess,
        augment: bool = False,
        strict: bool = False,
        check_images: bool = True,
    ) -> None:
        self.root, self.split, self.pre = Path(root), split, pre
        found = read_annotations(root, split, strict, check_images)
        self.samples, self.classes = found.images, found.classes
        self.category_ids, self.image_ids, self.skipped = (
            found.category_ids, found.image_ids, found.skipped,
        )  # fmt: skip
        mean, _ = pre.channel_stats()
        fill = tuple(round(255 * m) for m in mean)
        self.augment = DetectionAugment(fill=fill) if augment else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision.transforms.v2 import functional as TF

        path, _, _, boxes, labels = self.samples[i]
        image = TF.pil_to_tensor(load_image(path, self.pre.in_chans))
        if self.augment is not None:
            image, boxes, labels = self.augment(image, boxes, labels)
        image, boxes = resize_with_boxes(image, boxes, self.pre.size)
        return normalise(image, self.pre), {"boxes": boxes, "labels": labels}


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images stacked (N, C, S, S); targets kept as a list (each image has its own count)."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]
