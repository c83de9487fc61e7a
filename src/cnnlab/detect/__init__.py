"""Detection: COCO-style data, a Fashion-MNIST detection set, box matching, the SSD loss,
box-keeping augmentation (Liu et al. 2016, SSD, Sec. 2.2) and a plain training loop. The
detectors are :mod:`cnnlab.models.ssd`; docs/detection.md says what is built and what is not.
"""

from cnnlab.detect.augment import DetectionAugment, hflip, random_crop, zoom_out
from cnnlab.detect.boxes import IOU_THRESHOLD, anchor_targets, match_anchors
from cnnlab.detect.data import (
    MAX_ANNOTATION_BYTES,
    Annotations,
    DetectionDataset,
    annotation_path,
    collate_detection,
    is_detection_folder,
    normalise,
    read_annotations,
    resize_with_boxes,
)
from cnnlab.detect.evaluate import coco_map, evaluate_detector, load_detector, score_results
from cnnlab.detect.generate import make_detection
from cnnlab.detect.loss import NEG_POS_RATIO, hard_negatives, multibox_loss
from cnnlab.detect.predict import coco_results, draw_detections, predict_images, to_image_pixels
from cnnlab.detect.run import RunSetup, is_detector, train_detector
from cnnlab.detect.train import (
    DetectionConfig,
    batch_targets,
    detection_loaders,
    evaluate_loss,
    fit,
    init_backbone,
    prepare,
)

__all__ = [
    "IOU_THRESHOLD",
    "MAX_ANNOTATION_BYTES",
    "NEG_POS_RATIO",
    "Annotations",
    "DetectionAugment",
    "DetectionConfig",
    "DetectionDataset",
    "RunSetup",
    "anchor_targets",
    "annotation_path",
    "batch_targets",
    "coco_map",
    "coco_results",
    "collate_detection",
    "detection_loaders",
    "draw_detections",
    "evaluate_detector",
    "evaluate_loss",
    "fit",
    "hard_negatives",
    "hflip",
    "init_backbone",
    "is_detection_folder",
    "is_detector",
    "load_detector",
    "make_detection",
    "match_anchors",
    "multibox_loss",
    "normalise",
    "predict_images",
    "prepare",
    "random_crop",
    "read_annotations",
    "resize_with_boxes",
    "score_results",
    "to_image_pixels",
    "train_detector",
    "zoom_out",
]
