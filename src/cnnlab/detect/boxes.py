"""Matching default boxes to ground truth (Liu et al. 2016, SSD, Sec. 2.2 "Matching strategy").

Every ground-truth box first gets the default box (anchor) it overlaps best, so no object goes
unmatched; then every other anchor whose best IoU (Jaccard overlap) with some ground truth is
at least ``iou_threshold`` (0.5 in the paper) is matched to that ground truth. Anchors left
over are background (class 0). The matched anchors' regression targets are SSD's eq. 2
offsets, :func:`cnnlab.models.ssd.encode_boxes` (variances 0.1 / 0.2).
"""

from __future__ import annotations

import torch

from cnnlab.models.ssd import encode_boxes

__all__ = ["IOU_THRESHOLD", "anchor_targets", "match_anchors"]

IOU_THRESHOLD = 0.5  # SSD Sec. 2.2: "jaccard overlap higher than a threshold (0.5)"


def match_anchors(
    gt_boxes: torch.Tensor, anchors_xyxy: torch.Tensor, iou_threshold: float = IOU_THRESHOLD
) -> torch.Tensor:
    """For each of the ``A`` anchors, the index of its ground-truth box, or -1 (background).

    ``gt_boxes`` (G, 4) and ``anchors_xyxy`` (A, 4) are x1, y1, x2, y2 in the same units. An
    anchor with IoU >= ``iou_threshold`` goes to the ground truth it overlaps most; then each
    ground truth takes its best anchor whatever the IoU (SSD Sec. 2.2). If two ground truths
    share a best anchor, the later one keeps it.
    """
    matched = torch.full((anchors_xyxy.shape[0],), -1, dtype=torch.long)
    if gt_boxes.shape[0] == 0:
        return matched
    from torchvision.ops import box_iou  # here: importing torchvision takes a second

    iou = box_iou(gt_boxes, anchors_xyxy)  # (G, A)
    best_iou, best_gt = iou.max(0)
    keep = best_iou >= iou_threshold
    matched[keep] = best_gt[keep]
    best_anchor = iou.argmax(1)  # (G,): each ground truth's best anchor
    matched[best_anchor] = torch.arange(gt_boxes.shape[0])
    return matched


def anchor_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    image_size: int,
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training targets of one image: ``(offsets (A, 4), classes (A,))``.

    ``boxes`` (G, 4) x1, y1, x2, y2 in pixels of the ``image_size`` square input, ``labels``
    (G,) in 1..K; ``anchors`` (A, 4) cx, cy, w, h relative to the image (``model.anchors``).
    Background anchors get class 0 and offsets 0 (the loss ignores their offsets).
    """
    if boxes.shape[0] != labels.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {labels.shape[0]} labels")
    from torchvision.ops import box_convert

    relative = boxes.to(anchors.dtype) / image_size
    matched = match_anchors(relative, box_convert(anchors, "cxcywh", "xyxy"), iou_threshold)
    positive = matched >= 0
    classes = torch.zeros(anchors.shape[0], dtype=torch.long)
    classes[positive] = labels[matched[positive]].long()
    offsets = torch.zeros_like(anchors)
    offsets[positive] = encode_boxes(relative[matched[positive]], anchors[positive])
    return offsets, classes
