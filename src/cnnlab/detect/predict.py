"""Detections in the user's terms: boxes in the pixels of the original image, class names,
and COCO's results format (what ``pycocotools``' ``COCO.loadRes`` reads, for a later eval).

A detector sees every image stretched to its ``size`` x ``size`` input
(:func:`~cnnlab.detect.data.resize_with_boxes`); its boxes are scaled back by W / size and
H / size here. ``SSD.postprocess`` labels run 0..K-1 (no background): label ``l`` is
``classes[l]`` and the dataset's label ``l + 1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import ImageDraw
from torch import nn

from cnnlab.data import Preprocess, load_image
from cnnlab.detect.data import normalise, resize_with_boxes
from cnnlab.io import atomic_path

__all__ = ["SCORE_THRESH", "coco_results", "draw_detections", "predict_images", "to_image_pixels"]

SCORE_THRESH = 0.3  # the lowest detection score predict_images() keeps by default


def to_image_pixels(boxes: torch.Tensor, width: int, height: int, size: int) -> torch.Tensor:
    """Boxes (K, 4) x1 y1 x2 y2 in pixels of the ``size`` square input, in pixels of the
    ``width`` x ``height`` image it was stretched from."""
    return boxes * boxes.new_tensor([width / size, height / size, width / size, height / size])


def _prepare(path: str | os.PathLike[str], pre: Preprocess) -> tuple[torch.Tensor, int, int]:
    from torchvision.transforms.v2 import functional as TF  # here: it takes a second to import

    image = TF.pil_to_tensor(load_image(path, pre.in_chans))
    _, h, w = image.shape
    image, _ = resize_with_boxes(image, torch.zeros(0, 4), pre.size)
    return normalise(image, pre), w, h


@torch.no_grad()
def predict_images(
    model: nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    pre: Preprocess,
    classes: Sequence[str],
    score_thresh: float = SCORE_THRESH,
) -> list[list[dict[str, Any]]]:
    """Per image, its detections best first as ``{"box": [x1, y1, x2, y2], "label": name,
    "score": s}``, boxes in the image's own pixels (rounded to 0.01). ``pre`` must be the
    preprocessing the model was trained with; a bad image is one ``BadImageError``."""
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for {model.num_classes} classes")
    model.eval()
    out = []
    for path in paths:
        x, w, h = _prepare(path, pre)
        det = model.postprocess(*model(x[None]), score_thresh=score_thresh)[0]
        boxes = to_image_pixels(det["boxes"], w, h, pre.size)
        out.append([
            {"box": [round(v, 2) for v in b], "label": classes[int(l)], "score": round(float(s), 4)}
            for b, l, s in zip(boxes.tolist(), det["labels"], det["scores"], strict=True)
        ])  # fmt: skip
    return out


def coco_results(
    detections: Sequence[dict[str, torch.Tensor]],
    image_ids: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    category_ids: Sequence[int],
    size: int,
) -> list[dict[str, Any]]:
    """``SSD.postprocess`` output for images ``image_ids`` of ``sizes`` (width, height) as
    COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h] in image pixels,
    "score"}``; label ``l`` is ``category_ids[l]`` (``DetectionDataset.category_ids``)."""
    rows = []
    for det, image_id, (w, h) in zip(detections, image_ids, sizes, strict=True):
        boxes = to_image_pixels(det["boxes"], w, h, size)
        for (x1, y1, x2, y2), label, score in zip(
            boxes.tolist(), det["labels"].tolist(), det["scores"].tolist(), strict=True
        ):
            rows.append({"image_id": image_id, "category_id": category_ids[label],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})  # fmt: skip
    return rows


def draw_detections(
    image: str | os.PathLike[str], detections: Sequence[dict[str, Any]], out: str | os.PathLike[str]
) -> None:
    """Write ``image`` (in colour) with ``detections`` (:func:`predict_images`' rows for it)
    drawn on it, box and "label score" each, to the PNG file ``out`` (atomically)."""
    canvas = load_image(image, 3)
    draw = ImageDraw.Draw(canvas)
    for k, det in enumerate(detections):
        colour = _PALETTE[k % len(_PALETTE)]
        x1, y1, x2, y2 = det["box"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        draw.text((x1 + 2, y1 + 1), f"{det['label']} {det['score']:.2f}", fill=colour)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")


_PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0"]
