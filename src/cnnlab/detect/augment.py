"""Training augmentation that keeps boxes right: a simplified form of SSD's (Liu et al. 2016,
Sec. 2.2 "Data augmentation" and Sec. 3.6 "zoom out").

On a uint8 image (C, H, W) with boxes (K, 4) x1, y1, x2, y2 in its pixels, in this order:

1. zoom out (probability 0.5): the image is placed at a random spot of a canvas up to
   ``max_zoom`` times its sides (the paper goes to 16x), filled with the data's mean colour;
2. random crop (probability 0.5): a patch with sides 0.3 to 1 of the image's and aspect
   ratio 1/2 to 2 (the paper: 0.1 to 1, same ratios); boxes whose centre is in the patch are
   kept, clipped to it ("we keep the overlapped part of the ground truth box if the center of
   it is in the sampled patch"); up to 50 tries for a patch that keeps a box, else no crop.
   Left out: the paper's sampling with a minimum Jaccard overlap of 0.1 ... 0.9 with the
   objects;
3. horizontal flip (probability 0.5).

The model's fixed-size resize comes after (:class:`cnnlab.detect.data.DetectionDataset`).
Random draws come from ``generator`` (default: torch's global one, which the DataLoader seeds
per worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["DetectionAugment", "hflip", "random_crop", "zoom_out"]

CROP_TRIES = 50
MIN_BOX_SIDE = 1.0  # pixels: a clipped box thinner than this is dropped


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The image mirrored left-right and its boxes with it (x -> W - x)."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image.flip(-1), flipped


def zoom_out(
    image: torch.Tensor,
    boxes: torch.Tensor,
    ratio: float,
    fill: Sequence[int],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image at a random spot of a canvas ``ratio`` (>= 1) times its sides, the rest
    ``fill`` (one value per channel); the boxes shifted with it (SSD Sec. 3.6)."""
    c, h, w = image.shape
    big_h, big_w = int(h * ratio), int(w * ratio)
    top = int(_uniform(0, big_h - h + 1, generator))
    left = int(_uniform(0, big_w - w + 1, generator))
    top, left = min(top, big_h - h), min(left, big_w - w)
    canvas = torch.tensor(list(fill), dtype=image.dtype).view(c, 1, 1).repeat(1, big_h, big_w)
    canvas[:, top : top + h, left : left + w] = image
    return canvas, boxes + boxes.new_tensor([left, top, left, top])


def crop(
    image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, patch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``patch`` (x1, y1, x2, y2, integer pixels) of the image; the boxes whose centre
    lies in it, clipped to it and shifted to its origin, with their labels."""
    x1, y1, x2, y2 = patch
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1)
    inside &= centres[:, 1] < y2
    kept = boxes[inside].clone()
    kept[:, 0::2] = kept[:, 0::2].clamp(x1, x2) - x1
    kept[:, 1::2] = kept[:, 1::2].clamp(y1, y2) - y1
    big = (kept[:, 2] - kept[:, 0] >= MIN_BOX_SIDE) & (kept[:, 3] - kept[:, 1] >= MIN_BOX_SIDE)
    return image[:, y1:y2, x1:x2], kept[big], labels[inside][big]


def random_crop(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    min_scale: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random patch (sides ``min_scale`` to 1 of the image's, aspect ratio 1/2 to 2) that
    keeps at least one box (any patch if there is none); the image unchanged if 50 tries
    find none."""
    _, h, w = image.shape
    for _ in range(CROP_TRIES):
        pw = int(w * _uniform(min_scale, 1.0, generator))
        ph = int(h * _uniform(min_scale, 1.0, generator))
        if pw < 1 or ph < 1 or not 0.5 <= pw / ph <= 2:
            continue
        x1 = int(_uniform(0, w - pw + 1, generator))
        y1 = int(_uniform(0, h - ph + 1, generator))
        x1, y1 = min(x1, w - pw), min(y1, h - ph)
        out = crop(image, boxes, labels, (x1, y1, x1 + pw, y1 + ph))
        if out[1].shape[0] or boxes.shape[0] == 0:
            return out
    return image, boxes, labels


@dataclass(frozen=True)
class DetectionAugment:
    """Zoom out, random crop, flip (each with probability ``p``), as the module describes."""

    fill: tuple[int, ...] = (0,)
    max_zoom: float = 2.0
    min_scale: float = 0.3
    p: float = 0.5

    def __call__(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fill = self.fill * image.shape[0] if len(self.fill) == 1 else self.fill
        if float(torch.rand((), generator=generator)) < self.p:
            ratio = _uniform(1.0, self.max_zoom, generator)
            image, boxes = zoom_out(image, boxes, ratio, fill, generator)
        if float(torch.rand((), generator=generator)) < self.p:
            image, boxes, labels = random_crop(image, boxes, labels, self.min_scale, generator)
        if float(torch.rand((), generator=generator)) < self.p:
            image, boxes = hflip(image, boxes)
        return image, boxes, labels
