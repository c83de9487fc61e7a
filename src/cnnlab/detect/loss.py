"""The SSD MultiBox loss (Liu et al. 2016, Sec. 2.2 "Training objective", "Hard negative mining").

``L = (L_conf + alpha * L_loc) / N`` with ``N`` the matched (positive) default boxes of the
batch and ``alpha = 1`` (the paper's choice by cross validation); ``L = 0`` when ``N = 0``.
``L_loc``: smooth L1 between predicted and target offsets (eq. 2), positives only.
``L_conf``: softmax cross-entropy over ``num_classes + 1`` scores (class 0 the background) on
the positives and on the hardest negatives: per image, the negatives with the highest
cross-entropy, at most 3 per positive ("at most 3:1").

Why hard negative mining and not focal loss (Lin et al. 2017): it is how SSD, the detector
the MobileNetV2 paper builds SSDLite on (Sec. 6.2), is trained, and we reproduce that
detector; focal loss belongs to RetinaNet, a later paper with a different head.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["NEG_POS_RATIO", "hard_negatives", "multibox_loss"]

NEG_POS_RATIO = 3  # SSD Sec. 2.2: "the ratio between the negatives and positives is at most 3:1"


def hard_negatives(
    ce: torch.Tensor, positive: torch.Tensor, ratio: int = NEG_POS_RATIO
) -> torch.Tensor:
    """Mask (N, A) of the negatives kept: per image the ``ratio * positives`` background
    anchors with the highest cross-entropy ``ce`` (N, A) (all of them if there are fewer)."""
    loss = ce.detach().masked_fill(positive, float("-inf"))
    order = loss.argsort(1, descending=True)
    rank = order.argsort(1)  # rank of each anchor's loss within its image, 0 = hardest
    wanted = positive.sum(1, keepdim=True) * ratio
    return (rank < wanted) & ~positive


def multibox_loss(
    box_regression: torch.Tensor,
    class_logits: torch.Tensor,
    offsets: torch.Tensor,
    classes: torch.Tensor,
    neg_pos_ratio: int = NEG_POS_RATIO,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``(loss, parts)`` for a batch: the model's ``box_regression`` (N, A, 4) and
    ``class_logits`` (N, A, C + 1) against :func:`~cnnlab.detect.boxes.anchor_targets`'
    ``offsets`` (N, A, 4) and ``classes`` (N, A) (0 background). ``parts``: ``loc`` and
    ``conf``, each divided by the positives, and ``positives``."""
    if box_regression.shape != offsets.shape or class_logits.shape[:2] != classes.shape:
        raise ValueError(
            f"outputs {tuple(box_regression.shape)}, {tuple(class_logits.shape)} do not fit "
            f"targets {tuple(offsets.shape)}, {tuple(classes.shape)}"
        )
    positive = classes > 0
    num_pos = int(positive.sum())
    loc = F.smooth_l1_loss(box_regression[positive], offsets[positive], reduction="sum")
    ce = F.cross_entropy(class_logits.flatten(0, 1), classes.flatten(), reduction="none")
    ce = ce.view_as(classes)
    kept = positive | hard_negatives(ce, positive, neg_pos_ratio)
    conf = ce[kept].sum()
    scale = 1.0 / max(num_pos, 1)  # N = 0: both sums are 0 (no positive, no negative kept)
    parts = {"loc": loc.item() * scale, "conf": conf.item() * scale, "positives": num_pos}
    return (loc + conf) * scale, parts
