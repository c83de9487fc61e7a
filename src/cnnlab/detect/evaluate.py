"""COCO mAP of a saved detector, computed by ``pycocotools`` (the reference implementation of
COCO's detection metric; Lin et al. 2014, and cocodataset.org's detection evaluation).

``mAP`` is AP averaged over IoU thresholds 0.50:0.05:0.95 (COCO's primary metric), ``mAP50``
AP at IoU 0.5 (PASCAL VOC's), both over all areas with up to 100 detections per image; the
per-class figures are the same two numbers for each category, from ``COCOeval``'s precision
table (None for a category without ground truth in the split). The ground truth is what
:func:`~cnnlab.detect.data.read_annotations` kept (bad entries skipped, or refused with
``strict``); ``iscrowd`` regions are left out of it, so a detection on one counts as a false
positive where COCO's own files would ignore it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data import Preprocess
from cnnlab.detect.data import DetectionDataset, collate_detection
from cnnlab.detect.predict import coco_results
from cnnlab.detect.run import is_detector
from cnnlab.errors import CnnlabError
from cnnlab.saved import load

__all__ = [
    "COCO_MAX_DETECTIONS",
    "coco_map",
    "evaluate_detector",
    "load_detector",
    "require_pycocotools",
    "score_results",
]

COCO_MAX_DETECTIONS = 100  # COCO's maxDets for AP
EVAL_SCORE_THRESH = 0.01  # SSD Sec. 3.7's threshold before NMS


def require_pycocotools() -> tuple[Any, Any]:
    """``(COCO, COCOeval)``, or one ``CnnlabError`` saying how to install pycocotools."""
    try:
        coco = importlib.import_module("pycocotools.coco")
        cocoeval = importlib.import_module("pycocotools.cocoeval")
    except ImportError:
        raise CnnlabError("COCO mAP needs pycocotools: pip install 'pycocotools>=2.0.7'") from None
    return coco.COCO, cocoeval.COCOeval


def load_detector(
    name: str, checkpoint: str | os.PathLike[str], channels_last: bool = True
) -> tuple[nn.Module, dict[str, Any], Preprocess]:
    """(the saved detector ``name`` in eval mode, its weights channels-last unless
    ``channels_last=False``; its metadata; its preprocessing)."""
    if not is_detector(name):
        raise CnnlabError(f"{name} is not a detector")
    model, meta = load(checkpoint, name)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, meta, Preprocess.from_dict(meta["preprocess"])


def _ground_truth(ds: DetectionDataset) -> dict[str, Any]:
    """The split as a COCO ground-truth document (what read_annotations kept)."""
    images, anns = [], []
    for image_id, (_, w, h, boxes, labels) in zip(ds.image_ids, ds.samples, strict=True):
        images.append({"id": image_id, "width": w, "height": h})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
            w_box, h_box = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": image_id, "iscrowd": 0,
                         "category_id": ds.category_ids[label - 1],
                         "bbox": [x1, y1, w_box, h_box], "area": w_box * h_box})  # fmt: skip
    cats = [{"id": c, "name": n} for c, n in zip(ds.category_ids, ds.classes, strict=True)]
    return {"images": images, "annotations": anns, "categories": cats}


@torch.no_grad()
def _detections(model: nn.Module, ds: DetectionDataset, batch_size: int) -> list[dict]:
    """COCO results rows of ``model`` on every image of ``ds``."""
    model.eval()
    rows, seen = [], 0
    for images, _ in DataLoader(ds, batch_size, collate_fn=collate_detection):
        found = model.postprocess(*model(images), score_thresh=EVAL_SCORE_THRESH,
                                  max_detections=COCO_MAX_DETECTIONS)  # fmt: skip
        ids = ds.image_ids[seen : seen + len(found)]
        sizes = [(w, h) for _, w, h, _, _ in ds.samples[seen : seen + len(found)]]
        rows += coco_results(found, ids, sizes, ds.category_ids, ds.pre.size)
        seen += len(found)
    return rows


def coco_map(model: nn.Module, ds: DetectionDataset, batch_size: int = 16) -> dict[str, Any]:
    """:func:`score_results` of ``model``'s detections on the split ``ds``."""
    return score_results(ds, _detections(model, ds, batch_size))


def score_results(ds: DetectionDataset, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"mAP", "mAP50", "per_class": {name: {"AP", "AP50"}}, "images", "boxes",
    "detections"}`` of the COCO results ``rows`` against the split ``ds`` (module doc). No
    detection at all gives 0.0 everywhere; a split without any box is a ``CnnlabError``."""
    coco, cocoeval = require_pycocotools()
    gt_doc = _ground_truth(ds)
    result = {"images": len(ds), "boxes": len(gt_doc["annotations"]), "detections": len(rows)}
    if not gt_doc["annotations"]:
        raise CnnlabError(f"{str(ds.root)!r} {ds.split}: no ground-truth box to evaluate on")
    if not rows:
        per = {n: {"AP": 0.0, "AP50": 0.0} for n in ds.classes}
        return {**result, "mAP": 0.0, "mAP50": 0.0, "per_class": per}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = coco()
        gt.dataset = gt_doc
        gt.createIndex()
        ev = cocoeval(gt, gt.loadRes(rows), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU, recall, class), all areas, 100
    per = {name: {"AP": _mean(precision[:, :, k]), "AP50": _mean(precision[0, :, k])}
           for k, name in enumerate(ds.classes)}  # fmt: skip
    return {**result, "mAP": float(ev.stats[0]), "mAP50": float(ev.stats[1]), "per_class": per}


def _mean(p: np.ndarray) -> float | None:
    """Mean precision over the cells COCOeval filled (-1: no ground truth), or None."""
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else None


def evaluate_detector(
    name: str,
    checkpoint: str | os.PathLike[str],
    root: str | os.PathLike[str],
    split: str = "val",
    batch_size: int = 16,
    strict: bool = False,
    channels_last: bool = True,
) -> dict[str, Any]:
    """COCO mAP (:func:`coco_map`) of the saved detector ``checkpoint`` on ``split`` of the
    COCO-style folder ``root``, whose categories must be the ones it was trained on
    (``channels_last``: as :func:`load_detector` takes it)."""
    require_pycocotools()  # before the model and the data are read
    model, meta, pre = load_detector(name, checkpoint, channels_last)
    ds = DetectionDataset(root, split, pre, strict=strict)
    if ds.classes != meta["class_names"]:
        raise CnnlabError(
            f"{str(root)!r} has the categories {ds.classes[:5]}, the detector was trained "
            f"on {meta['class_names'][:5]}"
        )
    return {"model": name, "checkpoint": meta["path"], "data": os.fspath(root),
            "split": split, "skipped": ds.skipped, **coco_map(model, ds, batch_size)}  # fmt: skip
