"""Detection data: the COCO-style folder (bad input skipped or refused), the Fashion-MNIST
detection generator, ``cnnlab data make-detection`` and the box-keeping augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import Preprocess, fashion_mnist_folder, load_fashion_mnist
from cnnlab.data.datasets import FASHION_MNIST_SYSTEM_DIR
from cnnlab.detect import (
    DetectionAugment,
    DetectionDataset,
    collate_detection,
    hflip,
    is_detection_folder,
    make_detection,
    read_annotations,
    resize_with_boxes,
    zoom_out,
)
from cnnlab.detect import data as detect_data
from cnnlab.detect.augment import crop
from cnnlab.errors import CnnlabError

FMNIST = fashion_mnist_folder(FASHION_MNIST_SYSTEM_DIR)
needs_fmnist = pytest.mark.skipif(FMNIST is None, reason="Fashion-MNIST not installed")
PRE = Preprocess(size=64, in_chans=3, mean=(0.5,), std=(0.25,))


# --- hand-made COCO folders -------------------------------------------------------------


def _png(path: Path, w: int, h: int, value: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (w, h), value).save(path)


def _coco(root: Path, images: list, annotations: list, split: str = "train") -> Path:
    doc = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def _ann(k: int, image_id: int, cat: int, bbox: list) -> dict:
    return {"id": k, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0}


def _good(tmp_path: Path) -> Path:
    _png(tmp_path / "train" / "a.png", 40, 20)
    _png(tmp_path / "train" / "sub" / "b.png", 30, 30)
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 20},
        {"id": 2, "file_name": "sub/b.png", "width": 30, "height": 30},
    ]
    anns = [
        _ann(1, 1, 7, [4, 2, 10, 8]),
        _ann(2, 1, 3, [20, 0, 20, 20]),
        _ann(3, 2, 3, [0, 0, 5, 5]),
    ]
    return _coco(tmp_path, images, anns)


def test_read_good_folder_maps_categories_to_contiguous_labels(tmp_path: Path) -> None:
    found = read_annotations(_good(tmp_path), "train")
    assert found.classes == ["dog", "cat"] and found.category_ids == [3, 7]  # sorted by id
    assert found.skipped == [] and found.image_ids == [1, 2]
    path, w, h, boxes, labels = found.images[0]
    assert (path.name, w, h) == ("a.png", 40, 20)
    assert boxes.tolist() == [[4, 2, 14, 10], [20, 0, 40, 20]]  # [x, y, w, h] -> x1 y1 x2 y2
    assert labels.tolist() == [2, 1]
    assert is_detection_folder(tmp_path) and not is_detection_folder(tmp_path / "train")


def test_dataset_resizes_boxes_with_the_image(tmp_path: Path) -> None:
    ds = DetectionDataset(_good(tmp_path), "train", PRE)
    x, target = ds[0]
    assert x.shape == (3, 64, 64)
    # 40x20 stretched to 64x64: x by 1.6, y by 3.2.
    expected = [6.4, 6.4, 22.4, 32, 32, 0, 64, 64]
    assert target["boxes"].flatten().tolist() == pytest.approx(expected)
    assert x.mean().item() == pytest.approx((200 / 255 - 0.5) / 0.25, abs=1e-3)
    images, targets = collate_detection([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64) and [len(t["labels"]) for t in targets] == [2, 1]


BAD = [
    ("outside", {"id": 9, "file_name": "a.png", "width": 40, "height": 20},
     [_ann(1, 9, 7, [35, 0, 10, 10])], "outside its 40x20 image"),
    ("zero", {"id": 9, "file_name": "a.png", "width": 40, "height": 20},
     [_ann(1, 9, 7, [3, 3, 0, 4])], "non-positive size"),
    ("category", {"id": 9, "file_name": "a.png", "width": 40, "height": 20},
     [_ann(1, 9, 99, [3, 3, 4, 4])], "unknown category_id 99"),
    ("missing", {"id": 9, "file_name": "gone.png", "width": 40, "height": 20}, [], "no such file"),
    ("corrupt", {"id": 9, "file_name": "bad.png", "width": 40, "height": 20}, [], "bad.png"),
    ("escape", {"id": 9, "file_name": "../a.png", "width": 40, "height": 20}, [], "leaves"),
    ("size", {"id": 9, "file_name": "a.png", "width": 41, "height": 20}, [], "entry says 41x20"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "image", "anns", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_entries_are_skipped_counted_named_or_refused_with_strict(
    tmp_path: Path, case: str, image: dict, anns: list, message: str
) -> None:
    _png(tmp_path / "train" / "a.png", 40, 20)
    _png(tmp_path / "train" / "ok.png", 40, 20)
    (tmp_path / "train" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = {"id": 1, "file_name": "ok.png", "width": 40, "height": 20}
    root = _coco(tmp_path, [good, image], [_ann(50, 1, 3, [1, 1, 5, 5]), *anns])
    with pytest.warns(UserWarning, match=r"skipped 1: .*" + message):
        found = read_annotations(root, "train")
    assert len(found.skipped) == 1
    assert found.image_ids[0] == 1 and found.images[0][4].tolist() == [1]  # the rest is kept
    with pytest.raises(CnnlabError, match=message):
        read_annotations(root, "train", strict=True)


def test_many_skips_are_counted_and_the_first_few_named(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a.png", 40, 20)
    image = {"id": 1, "file_name": "a.png", "width": 40, "height": 20}
    root = _coco(tmp_path, [image], [_ann(k, 1, 99, [1, 1, 2, 2]) for k in range(1, 9)])
    with pytest.warns(UserWarning, match=r"skipped 8: annotation 1: .*annotation 5: .*3 more"):
        found = read_annotations(root, "train")
    assert len(found.images) == 1 and found.images[0][3].shape == (0, 4)  # kept, no boxes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"images": [], "annotations": {}}', "no 'annotations' list"),
        ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
        (b"\xff\xfe{}", "is not valid JSON"),
    ],
)
def test_bad_annotation_file_is_one_error(tmp_path: Path, text: str | bytes, message: str) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train").mkdir()
    path = tmp_path / "annotations" / "instances_train.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for strict in (False, True):
        with pytest.raises(CnnlabError, match=message):
            read_annotations(tmp_path, "train", strict=strict)


def test_annotation_file_size_is_bounded(tmp_path: Path, monkeypatch) -> None:
    root = _good(tmp_path)
    monkeypatch.setattr(detect_data, "MAX_ANNOTATION_BYTES", 100)
    with pytest.raises(CnnlabError, match="above the annotation file limit 100"):
        read_annotations(root, "train")


# --- augmentation keeps boxes on their pixels -------------------------------------------


def _rects(h: int, w: int, boxes: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A grey image with rectangle k (1-based) painted in value 40 k; boxes and labels."""
    image = torch.zeros(1, h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes, 1):
        image[0, y1:y2, x1:x2] = 40 * k
    return image, torch.tensor(boxes, dtype=torch.float32), torch.arange(1, len(boxes) + 1)


def _extent(image: torch.Tensor, value: int) -> list[float]:
    ys, xs = torch.nonzero(image[0] == value, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_hflip_and_zoom_out_move_boxes_with_pixels() -> None:
    image, boxes, _ = _rects(30, 50, [[2, 3, 12, 9], [30, 10, 49, 30]])
    flipped, fboxes = hflip(image, boxes)
    assert fboxes.tolist() == [[38, 3, 48, 9], [1, 10, 20, 30]]
    for k in (1, 2):
        assert _extent(flipped, 40 * k) == fboxes[k - 1].tolist()
    big, zboxes = zoom_out(image, boxes, 1.7, fill=[7], generator=torch.Generator().manual_seed(1))
    assert big.shape == (1, 51, 85) and int((big == 7).sum()) == 51 * 85 - 30 * 50
    for k in (1, 2):
        assert _extent(big, 40 * k) == zboxes[k - 1].tolist()


def test_crop_keeps_boxes_whose_centre_is_inside_clipped() -> None:
    image, boxes, labels = _rects(40, 40, [[0, 0, 10, 10], [8, 20, 30, 30], [32, 32, 40, 40]])
    out, kept, kept_labels = crop(image, boxes, labels, (4, 4, 24, 36))
    assert out.shape == (1, 32, 20)
    # Box 1 (centre 5, 5) clipped to (4, 4)-(10, 10); box 2 (centre 19, 25) clipped at x 24;
    # box 3's centre (36, 36) is outside: dropped.
    assert kept.tolist() == [[0, 0, 6, 6], [4, 16, 20, 26]] and kept_labels.tolist() == [1, 2]


@pytest.mark.parametrize("seed", range(12))
def test_random_augmentation_keeps_every_box_on_its_pixels(seed: int) -> None:
    image, boxes, labels = _rects(60, 80, [[3, 5, 20, 25], [40, 30, 70, 55], [22, 40, 35, 58]])
    g = torch.Generator().manual_seed(seed)
    out, new_boxes, new_labels = DetectionAugment(fill=(1,), p=0.7)(image, boxes, labels, g)
    assert new_boxes.shape[0] == new_labels.shape[0] >= 1
    for box, label in zip(new_boxes.tolist(), new_labels.tolist(), strict=True):
        assert _extent(out, 40 * label) == box  # a kept box is exactly its visible pixels


def test_resize_scales_boxes_with_the_image() -> None:
    image, boxes, _ = _rects(50, 100, [[20, 10, 60, 30]])
    out, scaled = resize_with_boxes(image, boxes, 200)
    assert scaled.tolist() == [[40, 40, 120, 120]]
    inside = out[0, 42:118, 42:118]
    assert out.shape == (1, 200, 200) and int(inside.min()) == 40 and int(inside.max()) == 40
    assert int(out[0, :36].max()) == 0 and int(out[0, 124:].max()) == 0


# --- the Fashion-MNIST detection set ------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    if FMNIST is None:
        pytest.skip("Fashion-MNIST not installed")
    out = tmp_path_factory.mktemp("det") / "set"
    code = main(["data", "make-detection", str(out), "--n-train", "6", "--n-val", "3",
                 "--seed", "5", "--size", "128"])  # fmt: skip
    assert code == 0
    return out


@needs_fmnist
def test_generated_set_is_deterministic_by_seed(made: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_detection(again, 6, 3, seed=5, size=128)
    files = sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    assert len(files) == 2 + 6 + 3
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((made / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = tmp_path / "other"
    make_detection(other, 6, 3, seed=6, size=128)
    assert (other / "train" / "000001.png").read_bytes() != (made / "train/000001.png").read_bytes()


@needs_fmnist
def test_generated_boxes_are_each_articles_foreground(made: Path) -> None:
    doc = json.loads((made / "annotations" / "instances_train.json").read_text())
    assert [c["id"] for c in doc["categories"]] == list(range(1, 11))
    per_image: dict[int, list] = {}
    for ann in doc["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    for image in doc["images"]:
        canvas = np.array(Image.open(made / "train" / image["file_name"]))
        assert canvas.shape == (128, 128) and 1 <= len(per_image[image["id"]]) <= 5
        covered = np.zeros_like(canvas, dtype=bool)
        for x, y, w, h in per_image[image["id"]]:
            patch = canvas[y : y + h, x : x + w]
            # Tight: every edge row and column of the box holds foreground.
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
            assert not covered[y : y + h, x : x + w].any()  # boxes do not overlap
            covered[y : y + h, x : x + w] = True
            assert 0.1 * 128 * 0.3 <= max(w, h) <= 0.4 * 128 + 1
        assert not canvas[~covered].any()  # no foreground outside the boxes


@needs_fmnist
def test_val_canvases_come_from_the_test_images(made: Path) -> None:
    _, test_labels = load_fashion_mnist(FMNIST, "test")
    doc = json.loads((made / "annotations" / "instances_val.json").read_text())
    for ann in doc["annotations"]:
        assert ann["category_id"] == int(test_labels[ann["fashion_mnist_index"]]) + 1
    ds = DetectionDataset(made, "val", Preprocess(320, 3, (0.286,), (0.353,)))
    x, target = ds[0]
    assert len(ds) == 3 and x.shape == (3, 320, 320) and ds.skipped == []
    first = [a for a in doc["annotations"] if a["image_id"] == ds.image_ids[0]]
    x0, y0, w0, h0 = first[0]["bbox"]
    assert target["boxes"][0].tolist() == pytest.approx(
        [2.5 * v for v in (x0, y0, x0 + w0, y0 + h0)]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-train", "0"], "n_train must be an integer >= 1"),
        (["--n-val", "-3"], "n_val must be an integer >= 1"),
        (["--size", "20"], "size must be an integer from 64"),
        (["--seed", "-1"], "seed must be an integer >= 0"),
    ],
)
def test_make_detection_bad_arguments_are_one_line(tmp_path: Path, capsys, args, message) -> None:
    assert main(["data", "make-detection", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_make_detection_refuses_a_non_empty_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["data", "make-detection", str(tmp_path), "--n-train", "1", "--n-val", "1"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
