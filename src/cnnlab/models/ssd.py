"""SSD (Liu et al. 2016) and SSDLite (Sandler et al. 2018): single-shot detectors.

SSD, "SSD: Single Shot MultiBox Detector", ECCV 2016, arXiv:1512.02325. A base network
(VGG-16 to conv5_3; pool5 made 3x3 stride 1, fc6 and fc7 made convolutions, fc6 dilated by 6,
Sec. 3 "Base network"), extra feature layers that halve the map (Figure 2), and on each of six
maps a 3x3 convolution that predicts, per location and per default box, 4 box offsets and
``num_classes + 1`` scores (Sec. 2.1). conv4_3 is L2-normalised with a learned scale that
starts at 20 (Sec. 3.1, after ParseNet). Default boxes: Sec. 2.2, with the smaller COCO
scales of Sec. 3.4.

SSDLite, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381, Sec. 6.2:
SSD with every regular convolution of the prediction layers replaced by a depthwise separable
one (depthwise 3x3, then 1x1 projection), on MobileNetV1 or V2 at 320x320 (Table 6). For V2
the first map is the expansion of layer 15 (output stride 16, 576 channels) and the second the
last layer (stride 32, 1280); for V1 the same strides (``Conv2d_11`` 512 and ``Conv2d_13``
1024 channels, as the TF Object Detection API's ssdlite_mobilenet_v1). The backbones come
through the zoo's ``features_only`` interface
(:class:`~cnnlab.models.features.FeatureListModel`), not as copies.

Where the papers leave a choice open we follow the TF Object Detection API, which Sec. 6.2
says trained the MobileNet detectors (``ssdlite_mobilenet_v2_coco.config``): extra layers of
512, 256, 256, 128 channels (1x1 to half width, depthwise 3x3 stride 2, 1x1), BN + ReLU6 after
each; 3 default boxes on the first map and 6 on the others, scales 0.2 to 0.95. The counts
this gives beside Tables 5 and 6 are in ``docs/models/ssd.md``.

``forward(images)`` returns the raw outputs, ``(box_regression (N, A, 4), class_logits (N, A,
num_classes + 1))`` with class 0 the background, so an exported graph needs no NMS;
:meth:`SSD.postprocess` decodes them and runs per-class NMS (``torchvision.ops``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from cnnlab.layers import ConvNormAct, DepthwiseSeparableConv
from cnnlab.models.features import FeatureListModel
from cnnlab.registry import build_model, register_model

__all__ = [
    "SSD",
    "VARIANCES",
    "FeaturePyramid",
    "L2Norm",
    "box_shapes",
    "decode_boxes",
    "default_boxes",
    "encode_boxes",
    "ssd300_vgg16",
    "ssdlite_mobilenet_v1",
    "ssdlite_mobilenet_v2",
]

# SSDLite (MobileNetV2 paper Sec. 6.2, as the TF Object Detection API configures it).
# Backbone levels: (model, out_indices of its feature_info): stride 16 and stride 32.
SSDLITE_BACKBONES = {
    "mobilenet_v2": (3, 4),  # blocks.13.conv.0, the expansion of "layer 15" (576), head (1280)
    "mobilenet_v1": (3, 4),  # blocks.10 = Conv2d_11_pointwise (512), blocks.12 (1024)
}
# Extra feature layers on the stride-32 map: output channels d of each (1x1 to d/2, depthwise
# 3x3 stride 2, 1x1 to d), maps 5x5, 3x3, 2x2, 1x1 at 320x320.
SSDLITE_EXTRAS = [512, 256, 256, 128]
# Default boxes: s_k from 0.2 to 0.95 evenly over the 6 maps (SSD Sec. 2.2, eq. 4), s_7 = 1;
# aspect ratios {1, 2, 1/2, 3, 1/3} plus ratio 1 at sqrt(s_k s_k+1): 6 boxes. The first map
# has 3 (TF's reduce_boxes_in_lowest_layer): ratio 1 at 0.1, ratios 2 and 1/2 at 0.2.
SSDLITE_SCALES = (0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0)
SSDLITE_RATIOS = (2.0, 3.0)  # each with its inverse
SSDLITE_FIRST = ((0.1, 1.0), (0.2, 2.0), (0.2, 0.5))  # (scale, aspect ratio) on the first map

# SSD300 (Liu et al. 2016, Figure 2 and the released Caffe model). The VGG-16 levels:
# conv4_3 (stride 8) and conv5_3 (stride 16), on which pool5 3x3/1, fc6, fc7 are built.
SSD300_BACKBONE = ("vgg16", (3, 4))
SSD300_FC = (1024, 6)  # fc6 and fc7 width; fc6 is a 3x3 conv dilated by 6 (Sec. 3)
SSD300_L2_SCALE = 20.0  # initial scale of the L2-normalised conv4_3 (Sec. 3.1)
SSD300_EXTRAS = [
    # (1x1 channels, 3x3 channels, stride, padding): conv8_2 .. conv11_2, maps 10, 5, 3, 1
    (256, 512, 2, 1),
    (128, 256, 2, 1),
    (128, 256, 1, 0),
    (128, 256, 1, 0),
]
# COCO default boxes (Sec. 3.4): 0.07 on conv4_3, then 0.15 .. 0.87 (the Caffe model's
# 21, 45, 99, 153, 207, 261 px and 315 px for the last sqrt(s_k s_k+1)); ratios per map give
# 4, 6, 6, 6, 4, 4 boxes (Figure 2): {1, 2, 1/2} or {1, 2, 1/2, 3, 1/3}, plus the extra 1.
SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
SSD300_RATIOS = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))

# Box coding of Sec. 2.2 with the released models' variances (TF: scale factors 10, 10, 5, 5).
VARIANCES = (0.1, 0.1, 0.2, 0.2)
_MAX_LOG_SCALE = math.log(1000.0 / 16)  # clamp of exp() in decoding (torchvision's)


def box_shapes(
    scale: float, next_scale: float, ratios: Sequence[float]
) -> list[tuple[float, float]]:
    """(w, h) of one map's default boxes, relative to the image (SSD Sec. 2.2): ratio 1 at
    ``scale`` and at ``sqrt(scale * next_scale)``, then each ``r`` and ``1 / r`` at ``scale``
    (w = s sqrt(r), h = s / sqrt(r))."""
    shapes = [(scale, scale), (math.sqrt(scale * next_scale),) * 2]
    for r in ratios:
        shapes += [(scale * math.sqrt(r), scale / math.sqrt(r))]
        shapes += [(scale / math.sqrt(r), scale * math.sqrt(r))]
    return shapes


def default_boxes(
    map_sizes: Sequence[tuple[int, int]], shapes: Sequence[Sequence[tuple[float, float]]]
) -> torch.Tensor:
    """The ``(A, 4)`` default boxes (cx, cy, w, h relative to the image) of maps of
    ``map_sizes`` (h, w) with ``shapes[k]`` (w, h) boxes at each location of map ``k``.

    Centres at ((j + 0.5) / w, (i + 0.5) / h) (SSD Sec. 2.2); ordered map by map, then row,
    column, box: the order of :class:`SSD`'s outputs.
    """
    if len(map_sizes) != len(shapes):
        raise ValueError(f"{len(map_sizes)} maps but box shapes for {len(shapes)}")
    boxes = []
    for (h, w), level in zip(map_sizes, shapes, strict=True):
        cy, cx = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32) + 0.5) / h,
            (torch.arange(w, dtype=torch.float32) + 0.5) / w,
            indexing="ij",
        )
        centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(level), 2)
        sizes = torch.tensor(level, dtype=torch.float32).expand(h * w, -1, 2)
        boxes.append(torch.cat([centres, sizes], -1).reshape(-1, 4))
    return torch.cat(boxes)


def decode_boxes(
    deltas: torch.Tensor, anchors: torch.Tensor, variances: Sequence[float] = VARIANCES
) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2, relative to the image) from offsets ``deltas`` (..., 4) to
    ``anchors`` (cx, cy, w, h): SSD's eq. 2 inverted, scaled by ``variances``."""
    var = deltas.new_tensor(variances)
    centres = anchors[..., :2] + deltas[..., :2] * var[:2] * anchors[..., 2:]
    sizes = anchors[..., 2:] * torch.exp((deltas[..., 2:] * var[2:]).clamp(max=_MAX_LOG_SCALE))
    return torch.cat([centres - sizes / 2, centres + sizes / 2], -1)


def encode_boxes(
    boxes: torch.Tensor, anchors: torch.Tensor, variances: Sequence[float] = VARIANCES
) -> torch.Tensor:
    """The offsets (..., 4) that :func:`decode_boxes` turns back into ``boxes`` (x1, y1, x2,
    y2) on ``anchors`` (cx, cy, w, h): the regression targets of SSD's eq. 2."""
    var = boxes.new_tensor(variances)
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    sizes = boxes[..., 2:] - boxes[..., :2]
    offsets = (centres - anchors[..., :2]) / anchors[..., 2:] / var[:2]
    return torch.cat([offsets, torch.log(sizes / anchors[..., 2:]) / var[2:]], -1)


class L2Norm(nn.Module):
    """Each location's channel vector scaled to unit L2 norm, then by a learned per-channel
    scale that starts at ``scale`` (ParseNet, Liu et al. 2015; SSD Sec. 3.1, on conv4_3)."""

    macs_free = True  # a normalisation, like BatchNorm: no MACs by the zoo's convention

    def __init__(self, chans: int, scale: float = SSD300_L2_SCALE) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((chans,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=1) * self.weight.view(1, -1, 1, 1)


class VGGNeck(nn.Module):
    """SSD's changes to VGG-16 after conv5_3 (Sec. 3): pool5 3x3 stride 1, fc6 as a 3x3 conv
    dilated by 6, fc7 as a 1x1 conv, each with ReLU; and L2Norm on conv4_3. Takes the
    (conv4_3, conv5_3) maps, returns (normalised conv4_3, fc7)."""

    def __init__(self, chans: int, width: int = SSD300_FC[0], dilation: int = SSD300_FC[1]):
        super().__init__()
        self.l2norm = L2Norm(chans)
        self.pool5 = nn.MaxPool2d(3, 1, 1)
        fc6 = nn.Conv2d(chans, width, 3, padding=dilation, dilation=dilation)
        self.fc6 = nn.Sequential(fc6, nn.ReLU(inplace=True))
        self.fc7 = ConvNormAct(width, width, 1, norm=False)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.l2norm(maps[0]), self.fc7(self.fc6(self.pool5(maps[1])))]


class FeaturePyramid(nn.Module):
    """The maps a detector predicts from, shallow to deep: the backbone's levels (through
    ``neck``, if there is one), then each extra layer applied to the previous map."""

    def __init__(
        self, backbone: FeatureListModel, extras: Sequence[nn.Module], neck: nn.Module | None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.extras = nn.ModuleList(extras)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.backbone(x)
        maps = list(maps if self.neck is None else self.neck(maps))
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        return maps


def _prediction_layer(in_chans: int, out_chans: int, lite: bool) -> nn.Module:
    """SSD's 3x3 conv predictor (Sec. 2.1), or SSDLite's depthwise separable one (MobileNetV2
    Sec. 6.2): depthwise 3x3, BN, ReLU6, then a 1x1 conv with bias."""
    if not lite:
        return nn.Conv2d(in_chans, out_chans, 3, padding=1)
    depthwise = ConvNormAct(in_chans, in_chans, 3, groups=in_chans, act=nn.ReLU6)
    return nn.Sequential(depthwise, nn.Conv2d(in_chans, out_chans, 1))


class SSD(nn.Module):
    """A single-shot detector: ``features`` (a :class:`FeaturePyramid`), and on each of its
    maps a box predictor (4 offsets per default box) and a class predictor (``num_classes + 1``
    scores per box, class 0 the background).

    ``shapes[k]`` lists the (w, h) of map ``k``'s default boxes; ``lite`` picks SSDLite's
    depthwise separable predictors. The model takes ``image_size`` x ``image_size`` inputs,
    for which ``anchors`` ((A, 4) cx, cy, w, h relative to the image) are computed once.
    ``feature_info``: one dict per map (module, channels, reduction = image / map side).
    """

    fixed_input_size = True  # the default boxes are laid out for image_size

    def __init__(
        self,
        features: FeaturePyramid,
        shapes: Sequence[Sequence[tuple[float, float]]],
        num_classes: int,
        image_size: int,
        lite: bool,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.features = features
        self.num_classes = num_classes
        in_chans = features.backbone.input_size[0]
        self.input_size = (in_chans, image_size, image_size)
        self.min_input_size = image_size  # its default boxes are laid out for this size only
        maps = _map_shapes(features, self.input_size)
        if len(maps) != len(shapes):
            raise ValueError(f"{len(maps)} feature maps but box shapes for {len(shapes)}")
        self.box_heads = nn.ModuleList()
        self.cls_heads = nn.ModuleList()
        for (chans, _, _), level in zip(maps, shapes, strict=True):
            self.box_heads.append(_prediction_layer(chans, len(level) * 4, lite))
            self.cls_heads.append(_prediction_layer(chans, len(level) * (num_classes + 1), lite))
        sizes = [(h, w) for _, h, w in maps]
        self.register_buffer("anchors", default_boxes(sizes, shapes), persistent=False)
        self.feature_info = _pyramid_info(features, maps, image_size)

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` is an (N, C, S, S) batch of this model's
        channels and ``image_size`` S (the default boxes are laid out for that size)."""
        c, s, _ = self.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != self.input_size:
            raise ValueError(
                f"{getattr(self, 'model_name', 'SSD')} takes (N, {c}, {s}, {s}) images "
                f"(image_size={s}), got {tuple(images.shape)}"
            )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(box_regression (N, A, 4), class_logits (N, A, num_classes + 1))``."""
        if not (torch.compiler.is_compiling() or is_fx_symbolic_tracing()):
            self.check_input(images)
        maps = self.features(images)
        boxes = [_flatten(head(m), 4) for head, m in zip(self.box_heads, maps, strict=True)]
        scores = [
            _flatten(head(m), self.num_classes + 1)
            for head, m in zip(self.cls_heads, maps, strict=True)
        ]
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def decode(
        self, box_regression: torch.Tensor, class_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(boxes (N, A, 4) x1, y1, x2, y2 in pixels of the input, clipped to it; scores
        (N, A, num_classes) softmax probabilities, background left out)``: :meth:`forward`'s
        outputs decoded on the default boxes (SSD eq. 2), before thresholds and NMS (what an
        exported detector computes)."""
        from torchvision.ops import clip_boxes_to_image

        side = self.input_size[1]
        boxes = clip_boxes_to_image(decode_boxes(box_regression, self.anchors) * side, (side,) * 2)
        return boxes, class_logits.softmax(-1)[..., 1:]

    @torch.no_grad()
    def postprocess(
        self,
        box_regression: torch.Tensor,
        class_logits: torch.Tensor,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        max_detections: int = 200,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image from :meth:`forward`'s outputs (SSD Sec. 3.7: scores above
        ``score_thresh``, per-class NMS at IoU ``nms_thresh``, the best ``max_detections``).

        Each image gets ``boxes`` (K, 4) as x1, y1, x2, y2 in pixels of the input, clipped to
        it, ``scores`` (K,) and ``labels`` (K,) from 0 to ``num_classes - 1`` (background left
        out), best first.
        """
        _check_postprocess(score_thresh, nms_thresh, max_detections)
        expected = (self.anchors.shape[0], self.num_classes + 1)
        if box_regression.shape[1:] != (expected[0], 4) or class_logits.shape[1:] != expected:
            raise ValueError(
                f"expected outputs (N, {expected[0]}, 4) and (N, {expected[0]}, {expected[1]}), "
                f"got {tuple(box_regression.shape)} and {tuple(class_logits.shape)}"
            )
        boxes, scores = self.decode(box_regression, class_logits)
        return [
            _detections(b, s, score_thresh, nms_thresh, max_detections)
            for b, s in zip(boxes, scores, strict=True)
        ]


def _check_postprocess(score_thresh: float, nms_thresh: float, max_detections: int) -> None:
    for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if isinstance(max_detections, bool) or not isinstance(max_detections, int):
        raise ValueError(f"max_detections must be a positive integer, got {max_detections!r}")
    if max_detections < 1:
        raise ValueError(f"max_detections must be a positive integer, got {max_detections!r}")


def _detections(
    boxes: torch.Tensor, scores: torch.Tensor, score_thresh: float, nms_thresh: float, top: int
) -> dict[str, torch.Tensor]:
    """One image: every (box, class) pair above ``score_thresh``, per-class NMS, best ``top``."""
    from torchvision.ops import batched_nms

    anchor, label = torch.nonzero(scores > score_thresh, as_tuple=True)
    kept_scores = scores[anchor, label]
    kept_boxes = boxes[anchor]
    keep = batched_nms(kept_boxes, kept_scores, label, nms_thresh)[:top]
    return {"boxes": kept_boxes[keep], "scores": kept_scores[keep], "labels": label[keep]}


def _flatten(x: torch.Tensor, per_box: int) -> torch.Tensor:
    """(N, boxes * per_box, H, W) to (N, H * W * boxes, per_box): row, column, box order."""
    n, _, h, w = x.shape
    return x.reshape(n, -1, per_box, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_box)


@torch.no_grad()
def _map_shapes(features: FeaturePyramid, input_size: tuple[int, ...]) -> list[tuple[int, ...]]:
    """(channels, h, w) of each map for an ``input_size`` image, from a pass on the ``meta``
    device (shapes only: the weights are swapped for empty meta tensors, nothing computed)."""
    state = {**dict(features.named_parameters()), **dict(features.named_buffers())}
    meta = {k: torch.empty_like(v, device="meta") for k, v in state.items()}
    x = torch.empty(2, *input_size, device="meta")  # 2: BatchNorm refuses 1 value per channel
    try:
        maps = torch.func.functional_call(features, meta, (x,))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"image_size={input_size[-1]} is too small for this detector") from exc
    shapes = [tuple(m.shape[1:]) for m in maps]
    if any(min(s[1:]) < 1 for s in shapes):
        raise ValueError(f"image_size={input_size[-1]} is too small for this detector")
    return shapes


def _pyramid_info(
    features: FeaturePyramid, maps: list[tuple[int, ...]], image_size: int
) -> list[dict[str, Any]]:
    """``feature_info`` of the maps: backbone levels (or the neck's), then ``extras.k``."""
    count = len(maps) - len(features.extras)
    if isinstance(features.neck, VGGNeck):
        names = ["features.neck.l2norm", "features.neck.fc7"]
    else:
        backbone = features.backbone.feature_info.module_name()
        names = [f"features.backbone.graph_module.{m}" for m in backbone]
    names = names[:count] + [f"features.extras.{k}" for k in range(len(features.extras))]
    return [
        {"module": name, "num_chs": c, "reduction": round(image_size / h)}
        for name, (c, h, _) in zip(names, maps, strict=True)
    ]


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    return image_size


def _ssdlite_extra(in_chans: int, out_chans: int, separable: bool) -> nn.Module:
    """1x1 conv to ``out_chans / 2``, then a 3x3 stride-2 conv to ``out_chans``: depthwise
    separable (SSDLite) or regular (SSD, Table 5's comparison row); BN + ReLU6 after each."""
    mid = out_chans // 2
    reduce = ConvNormAct(in_chans, mid, 1, act=nn.ReLU6)
    if separable:
        return nn.Sequential(reduce, DepthwiseSeparableConv(mid, out_chans, 2, act=nn.ReLU6))
    return nn.Sequential(reduce, ConvNormAct(mid, out_chans, 3, 2, act=nn.ReLU6))


def _ssdlite(
    backbone: str, num_classes: int, in_chans: int, image_size: int, separable: bool
) -> SSD:
    """SSDLite on the stride-16 and stride-32 levels of ``backbone`` (Sec. 6.2)."""
    image_size = _check_image_size(image_size)
    if not isinstance(separable, bool):
        raise ValueError(f"separable must be True or False, got {separable!r}")
    levels = SSDLITE_BACKBONES[backbone]
    trunk = FeatureListModel(build_model(backbone, in_chans=in_chans), levels)
    extras, chans = [], trunk.feature_info.channels(-1)
    for out_chans in SSDLITE_EXTRAS:
        extras.append(_ssdlite_extra(chans, out_chans, separable))
        chans = out_chans
    scales = SSDLITE_SCALES
    first = [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in SSDLITE_FIRST]
    rest = [box_shapes(scales[k], scales[k + 1], SSDLITE_RATIOS) for k in range(1, 6)]
    features = FeaturePyramid(trunk, extras, neck=None)
    return SSD(features, [first, *rest], num_classes, image_size, lite=separable)


def ssdlite_mobilenet_v2(
    num_classes: int = 80, in_chans: int = 3, image_size: int = 320, separable: bool = True
) -> SSD:
    """MobileNetV2 + SSDLite (Sandler et al. 2018, Sec. 6.2, Table 6: 4.3M params, 0.8B
    MAdds at 320x320, 80 COCO classes): maps at the expansion of layer 15 (stride 16) and the
    last layer (stride 32), then 4 extra layers; depthwise separable extra and prediction
    layers. ``separable=False`` makes them regular 3x3 convs: Table 5's "SSD" row."""
    return _ssdlite("mobilenet_v2", num_classes, in_chans, image_size, separable)


def ssdlite_mobilenet_v1(
    num_classes: int = 80, in_chans: int = 3, image_size: int = 320, separable: bool = True
) -> SSD:
    """MobileNetV1 + SSDLite (Sandler et al. 2018, Table 6: 5.1M params, 1.3B MAdds): the
    same layers on V1's stride-16 (512) and stride-32 (1024) maps; ``separable`` as for V2."""
    return _ssdlite("mobilenet_v1", num_classes, in_chans, image_size, separable)


def ssd300_vgg16(num_classes: int = 80, in_chans: int = 3, image_size: int = 300) -> SSD:
    """SSD300 (Liu et al. 2016, Figure 2): VGG-16 to conv5_3 (pool3 rounding up, as Caffe's
    pooling does, so that conv4_3 is 38x38), pool5 3x3/1, fc6 (dilated) and fc7 as convs,
    four extra layers, 3x3 conv predictors on conv4_3, fc7, conv8_2 .. conv11_2 (8732 boxes)."""
    image_size = _check_image_size(image_size)
    name, levels = SSD300_BACKBONE
    vgg = build_model(name, in_chans=in_chans)
    vgg.features.pool3.ceil_mode = True
    trunk = FeatureListModel(vgg, levels)
    neck = VGGNeck(trunk.feature_info.channels(-1))
    extras, chans = [], SSD300_FC[0]
    for mid, out_chans, stride, padding in SSD300_EXTRAS:
        reduce = ConvNormAct(chans, mid, 1, norm=False)
        expand = ConvNormAct(mid, out_chans, 3, stride, padding, norm=False)
        extras.append(nn.Sequential(reduce, expand))
        chans = out_chans
    scales = SSD300_SCALES
    shapes = [box_shapes(scales[k], scales[k + 1], r) for k, r in enumerate(SSD300_RATIOS)]
    features = FeaturePyramid(trunk, extras, neck)
    return SSD(features, shapes, num_classes, image_size, lite=False)


_SANDLER = {
    "family": "ssd",
    "paper": "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks "
    "(SSDLite, Sec. 6.2), arXiv:1801.04381",
    "year": 2018,
}
_LIU = {
    "family": "ssd",
    "paper": "Liu et al., SSD: Single Shot MultiBox Detector, ECCV 2016, arXiv:1512.02325",
    "year": 2016,
}
# name -> (builder, paper, input side, Table 6 params, Table 6 MAdds). The paper prints two
# significant figures; tests/test_ssd.py derives the tolerance from that rounding.
PRESETS: dict[str, tuple[Any, dict[str, Any], int, int, int]] = {
    "ssdlite_mobilenet_v2": (ssdlite_mobilenet_v2, _SANDLER, 320, 4_300_000, 800_000_000),
    "ssdlite_mobilenet_v1": (ssdlite_mobilenet_v1, _SANDLER, 320, 5_100_000, 1_300_000_000),
    "ssd300_vgg16": (ssd300_vgg16, _LIU, 300, 36_100_000, 35_200_000_000),
}

for _name, (_builder, _paper, _side, _params, _macs) in PRESETS.items():
    register_model(
        _name, **_paper, input_size=_side, num_classes=80, min_input_size=_side,
        reference_params=_params, reference_macs=_macs, task="detection",
        source="MobileNetV2 paper Table 6 (2 significant figures)",
    )(_builder)  # fmt: skip
