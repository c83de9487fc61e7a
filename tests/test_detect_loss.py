"""SSD matching and the MultiBox loss (Liu et al. 2016, Sec. 2.2) on hand-computed cases; the
training loop on a small COCO folder the test writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.data import Preprocess
from cnnlab.detect import (
    DetectionConfig,
    anchor_targets,
    coco_results,
    fit,
    hard_negatives,
    init_backbone,
    match_anchors,
    multibox_loss,
    predict_images,
    to_image_pixels,
)
from cnnlab.errors import CnnlabError
from cnnlab.models.ssd import decode_boxes, ssdlite_mobilenet_v2


def _ce(logits: list[float], target: int) -> float:
    """Softmax cross-entropy written out: log(sum exp) - logit of the target."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def _smooth_l1(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def test_match_best_anchor_then_threshold() -> None:
    anchors = torch.tensor(
        [[0, 0, 1, 1], [0, 0, 2, 2], [5, 5, 6, 6], [0.1, 0, 1.1, 1]], dtype=torch.float32
    )
    # g0 = a0 exactly (IoU 1); a3 overlaps it 0.9 / 1.1 = 0.82 >= 0.5; a1 only 0.25.
    # g1's best anchor a2 has IoU 1 / 4 = 0.25 < 0.5: matched anyway (each ground truth first).
    gt = torch.tensor([[0, 0, 1, 1], [5, 5, 7, 7]], dtype=torch.float32)
    assert match_anchors(gt, anchors).tolist() == [0, -1, 1, 0]
    # Without the best-anchor rule g1 would have no anchor.
    assert match_anchors(gt, anchors, iou_threshold=0.3).tolist() == [0, -1, 1, 0]
    assert match_anchors(gt, anchors, iou_threshold=0.9).tolist() == [0, -1, 1, -1]


def test_match_threshold_is_inclusive_and_anchor_goes_to_best_overlap() -> None:
    anchors = torch.tensor([[0, 0, 2, 1], [10, 10, 11, 11]], dtype=torch.float32)
    # g0 = left half of a0: IoU 0.5 exactly; g1 = a0 itself: IoU 1 -> a0 goes to g1.
    gt = torch.tensor([[0, 0, 1, 1], [0, 0, 2, 1]], dtype=torch.float32)
    assert match_anchors(gt, anchors).tolist() == [1, -1]
    assert match_anchors(gt[:1], anchors).tolist() == [0, -1]  # 0.5 >= 0.5
    assert match_anchors(torch.zeros(0, 4), anchors).tolist() == [-1, -1]


def test_anchor_targets_offsets_by_hand() -> None:
    # One anchor at the centre, 0.2 wide; the image is 100 pixels.
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    boxes = torch.tensor([[45.0, 40.0, 65.0, 70.0]])  # cx 0.55, cy 0.55, w 0.2, h 0.3
    offsets, classes = anchor_targets(boxes, torch.tensor([7]), anchors, image_size=100)
    assert classes.tolist() == [7, 0]
    # (0.55 - 0.5) / 0.2 / 0.1 = 2.5 for x and y; log(0.2 / 0.2) / 0.2 = 0; log(1.5) / 0.2.
    expected = [2.5, 2.5, 0.0, math.log(1.5) / 0.2]
    assert offsets[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert offsets[1].tolist() == [0, 0, 0, 0]
    back = decode_boxes(offsets[:1], anchors[:1]) * 100
    assert back[0].tolist() == pytest.approx(boxes[0].tolist(), abs=1e-4)


def test_hard_negatives_keep_three_per_positive_per_image() -> None:
    ce = torch.tensor([[9.0, 1.0, 5.0, 2.0, 4.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    positive = torch.tensor([[True, False, False, False, False, False], [False] * 6])
    kept = hard_negatives(ce, positive)
    # Image 0: 1 positive -> its 3 hardest negatives (5, 4, 3); image 1: none (no positive).
    assert kept.tolist() == [[False, False, True, False, True, True], [False] * 6]
    assert hard_negatives(ce, positive, ratio=10)[0].tolist() == [False] + [True] * 5


def test_multibox_loss_by_hand() -> None:
    logits = [[0.0, 0.5, 2.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    classes = torch.tensor([[2, 0, 0, 0, 0]])
    pred = torch.tensor([[[0.5, -2.0, 0.0, 0.0]] + [[9.0, 9.0, 9.0, 9.0]] * 4])
    target = torch.zeros(1, 5, 4)
    loss, parts = multibox_loss(pred, torch.tensor([logits]), target, classes)
    loc = _smooth_l1(0.5) + _smooth_l1(-2.0)  # the negatives' offsets do not count
    negatives = sorted((_ce(logits[k], 0) for k in range(1, 5)), reverse=True)[:3]
    conf = _ce(logits[0], 2) + sum(negatives)
    assert parts["positives"] == 1
    assert parts["loc"] == pytest.approx(loc, rel=1e-5)
    assert parts["conf"] == pytest.approx(conf, rel=1e-5)
    assert float(loss) == pytest.approx(loc + conf, rel=1e-5)


def test_multibox_loss_divides_by_positives_and_is_zero_without() -> None:
    logits = torch.randn(2, 8, 4, requires_grad=True)
    pred = torch.randn(2, 8, 4, requires_grad=True)
    none = torch.zeros(2, 8, dtype=torch.long)
    loss, parts = multibox_loss(pred, logits, torch.zeros(2, 8, 4), none)
    loss.backward()
    assert loss.item() == 0 and parts["positives"] == 0
    assert float(logits.grad.abs().sum()) == 0  # SSD: "if N = 0, we set the loss to 0"
    classes = torch.zeros(2, 8, dtype=torch.long)
    classes[0, 0] = classes[1, 3] = 2
    both, parts = multibox_loss(pred, logits, torch.zeros(2, 8, 4), classes)
    assert parts["positives"] == 2
    # Each image has 1 positive: its own loss is divided by 1, the batch's by N = 2.
    one, _ = multibox_loss(pred[:1], logits[:1], torch.zeros(1, 8, 4), classes[:1])
    two, _ = multibox_loss(pred[1:], logits[1:], torch.zeros(1, 8, 4), classes[1:])
    assert both.item() == pytest.approx((one.item() + two.item()) / 2, rel=1e-6)


def test_multibox_loss_refuses_shapes_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        multibox_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 3), torch.zeros(1, 5, 4),
                      torch.zeros(1, 4, dtype=torch.long))  # fmt: skip


def test_ssdlite_trains_on_matched_targets() -> None:
    """The pieces together: targets from the model's own anchors, the loss falls on one batch."""
    model = ssdlite_mobilenet_v2(num_classes=3, image_size=128)
    images = torch.randn(2, 3, 128, 128)
    boxes = [torch.tensor([[10.0, 20.0, 60.0, 90.0]]), torch.tensor([[64, 64, 120, 100.0]])]
    labels = [torch.tensor([1]), torch.tensor([3])]
    pairs = [anchor_targets(b, y, model.anchors, 128) for b, y in zip(boxes, labels, strict=True)]
    offsets = torch.stack([o for o, _ in pairs])
    classes = torch.stack([c for _, c in pairs])
    assert int((classes > 0).sum()) >= 2  # each box has at least its best anchor
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(6):
        loss, _ = multibox_loss(*model(images), offsets, classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def _squares_folder(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """Grey 64x64 images, each with a bright square (class 1) and a wide bar (class 2)."""
    (root / "annotations").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir()
        images, anns = [], []
        for k in range(1, n + 1):
            canvas = torch.zeros(64, 64, dtype=torch.uint8)
            x, y = (int(v) for v in torch.randint(0, 20, (2,), generator=g))
            canvas[y : y + 20, x : x + 20] = 255
            canvas[50:58, 8:56] = 180
            Image.fromarray(canvas.numpy(), mode="L").save(root / split / f"{k}.png")
            images.append({"id": k, "file_name": f"{k}.png", "width": 64, "height": 64})
            for cat, box in ((1, [x, y, 20, 20]), (2, [8, 50, 48, 8])):
                anns.append({"id": len(anns) + 1, "image_id": k, "category_id": cat,
                             "bbox": box, "iscrowd": 0})  # fmt: skip
        cats = [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}]
        doc = {"images": images, "annotations": anns, "categories": cats}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def test_fit_trains_a_detector_on_a_coco_folder(tmp_path: Path) -> None:
    root = _squares_folder(tmp_path / "data")
    model = ssdlite_mobilenet_v2(num_classes=2, image_size=64)
    config = DetectionConfig(epochs=4, batch_size=2, lr=0.05, augment=False)
    rows: list[dict] = []
    history = fit(model, root, config, log=rows.append)
    assert rows == history and [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["val"]["loss"]) for r in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(history[0]["val"]) == {"loss", "loc", "conf"}


def test_detection_config_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        DetectionConfig(epochs=0)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        DetectionConfig(lr=float("nan"))


def test_init_backbone_copies_a_saved_classifier(tmp_path: Path) -> None:
    classifier = cnnlab.create_model("mobilenet_v2", num_classes=10, in_chans=1)
    cnnlab.save(classifier, tmp_path / "fmnist.safetensors")
    detector = ssdlite_mobilenet_v2(num_classes=10, in_chans=1, image_size=64)
    extras = {k: v.clone() for k, v in detector.features.extras.state_dict().items()}
    meta = init_backbone(detector, tmp_path / "fmnist.safetensors")
    assert meta["model"] == "mobilenet_v2"
    own = detector.features.backbone.graph_module.state_dict()
    weights = classifier.state_dict()
    assert len(own) > 100 and all(torch.equal(v, weights[k]) for k, v in own.items())
    after = detector.features.extras.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in extras.items())  # the rest stays as built


def test_init_backbone_refuses_a_classifier_that_does_not_fit(tmp_path: Path) -> None:
    cnnlab.save(cnnlab.create_model("mobilenet_v2", num_classes=10), tmp_path / "rgb.safetensors")
    cnnlab.save(cnnlab.create_model("lenet5"), tmp_path / "lenet.safetensors")
    detector = ssdlite_mobilenet_v2(num_classes=10, in_chans=1, image_size=64)
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    with pytest.raises(CnnlabError, match=r"3 channel\(s\)\) does not fit .* \(1 channel\(s\)\)"):
        init_backbone(detector, tmp_path / "rgb.safetensors")
    with pytest.raises(CnnlabError, match="lenet5"):
        init_backbone(detector, tmp_path / "lenet.safetensors")
    assert all(torch.equal(v, detector.state_dict()[k]) for k, v in before.items())


def test_boxes_back_in_image_pixels_and_coco_results_by_hand() -> None:
    # A 200x50 image stretched to 100x100: x by 2, y by 0.5 on the way back.
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert to_image_pixels(boxes, 200, 50, 100).tolist() == [[20, 10, 60, 20]]
    det = {"boxes": boxes, "labels": torch.tensor([1]), "scores": torch.tensor([0.75])}
    rows = coco_results([det], [7], [(200, 50)], category_ids=[3, 9], size=100)
    assert rows == [{"image_id": 7, "category_id": 9, "bbox": [20, 10, 40, 10], "score": 0.75}]


def test_predict_images_names_classes_in_image_pixels(tmp_path: Path, monkeypatch) -> None:
    Image.new("L", (100, 50), 90).save(tmp_path / "wide.png")
    model = ssdlite_mobilenet_v2(num_classes=2, in_chans=1, image_size=64)
    seen = []

    def postprocess(boxes, logits, score_thresh):
        seen.append((tuple(boxes.shape), score_thresh))
        return [{"boxes": torch.tensor([[0.0, 0.0, 64.0, 32.0]]), "labels": torch.tensor([1]),
                 "scores": torch.tensor([0.625])}]  # fmt: skip

    monkeypatch.setattr(model, "postprocess", postprocess)
    pre = Preprocess(64, 1, (0.5,), (0.5,))
    out = predict_images(model, [tmp_path / "wide.png"], pre, ["square", "bar"], 0.4)
    assert out == [[{"box": [0.0, 0.0, 100.0, 25.0], "label": "bar", "score": 0.625}]]
    assert seen == [((1, model.anchors.shape[0], 4), 0.4)]  # the model ran on one 64x64 image
    with pytest.raises(ValueError, match="1 class names for 2 classes"):
        predict_images(model, [tmp_path / "wide.png"], pre, ["square"])
