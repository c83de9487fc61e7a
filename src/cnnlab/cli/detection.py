"""The detector side of ``cnnlab train``, ``cnnlab eval`` and ``cnnlab predict``: the same
commands, dispatched here when MODEL is a detector or ``--data`` a COCO-style folder
(:func:`cnnlab.detect.is_detection_folder`); argument checking and printing only."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from cnnlab.detect.predict import SCORE_THRESH
from cnnlab.errors import CnnlabError
from cnnlab.io import check_output
from cnnlab.tables import format_table, print_json

# TrainConfig fields a detector run takes (the others must keep their defaults).
TRAIN_FIELDS = {"model", "data", "epochs", "batch_size", "lr", "weight_decay", "augment",
                "seed", "img_size", "in_chans", "strict", "init_from", "model_kwargs",
                "device", "precision", "channels_last", "reuse_memory",
                "small_map_grads"}  # fmt: skip
# eval / predict options that mean nothing for a detector: (name, default).
EVAL_UNUSED = (("img_size", None), ("val_split", None), ("limit", None), ("plot", None),
               ("precision", None), ("workers", 0))  # fmt: skip


def wants_detection(model: str, data: str | None) -> bool:
    """Whether ``model`` is a detector or ``data`` a COCO-style folder; the other one must
    then match (one error line otherwise). An unknown model is left to the classifier path."""
    from cnnlab.detect import is_detection_folder, is_detector

    try:
        detector = is_detector(model)
    except ValueError:
        return False
    folder = data is not None and is_detection_folder(data)
    if detector and data is not None and not folder:
        raise CnnlabError(
            f"{model} is a detector: --data must be a COCO-style folder (annotations/"
            f"instances_train.json + train/, annotations/instances_val.json + val/), got {data!r}"
        )
    if folder and not detector:
        raise CnnlabError(
            f"{data!r} is a COCO-style detection folder; {model} is a classifier (detectors: "
            "`cnnlab models --task detection`)"
        )
    return detector


def _unused(args: argparse.Namespace, options: tuple[tuple[str, Any], ...], what: str) -> None:
    for name, default in options:
        if getattr(args, name, default) != default:
            raise CnnlabError(f"--{name.replace('_', '-')} does not apply to {what}")


def _device(device: str | None) -> None:
    if device not in (None, "cpu"):
        raise CnnlabError(f"detectors train and run on the CPU only for now; got --device {device}")


def run_train(cfg: Any, args: argparse.Namespace) -> int:
    """``cnnlab train DETECTOR --data DIR``: :func:`cnnlab.detect.train_detector`."""
    from cnnlab.detect import DetectionConfig, RunSetup, train_detector

    defaults = {f.name: f.default for f in fields(cfg) if f.name not in TRAIN_FIELDS}
    _unused(cfg, tuple(defaults.items()), "detector training")
    _device(cfg.device)
    base = DetectionConfig()
    config = DetectionConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size or base.batch_size,
        lr=base.lr if cfg.lr is None else cfg.lr, augment=cfg.augment, seed=cfg.seed,
        weight_decay=base.weight_decay if cfg.weight_decay is None else cfg.weight_decay,
        channels_last=cfg.channels_last, precision=cfg.precision, reuse_memory=cfg.reuse_memory,
        small_map_grads=cfg.small_map_grads,
    )  # fmt: skip
    setup = RunSetup(in_chans=cfg.in_chans, image_size=cfg.img_size, init_from=cfg.init_from,
                     strict=cfg.strict, model_kwargs=dict(cfg.model_kwargs))  # fmt: skip
    stream = sys.stderr if args.json else sys.stdout
    summary = train_detector(
        cfg.model, cfg.data, args.out or os.path.join("runs", cfg.model), config, setup,
        resume=args.resume, log=lambda line: print(line, file=stream, flush=True),
    )  # fmt: skip
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} annotation(s) or image(s): "
              f"{'; '.join(summary['skipped'][:5])}", file=sys.stderr)  # fmt: skip
    if args.json:
        print_json(summary)
    elif summary["history"]:
        print(f"{cfg.model}: val loss {summary['val_loss']:.4f} (best "
              f"{summary['best_val_loss']:.4f}); weights in {summary['out']}")  # fmt: skip
    return 130 if summary["interrupted"] else 0


def run_eval(args: argparse.Namespace) -> int:
    """``cnnlab eval DETECTOR --checkpoint RUN --data DIR``: COCO mAP on the val split."""
    from cnnlab.detect import evaluate_detector

    _unused(args, EVAL_UNUSED, "a detector's evaluation")
    _device(args.device)
    result = evaluate_detector(args.model, args.checkpoint or args.compressed, args.data,
                               batch_size=args.batch_size, strict=args.strict,
                               channels_last=not args.no_channels_last)  # fmt: skip
    if args.json:
        print_json(result)
        return 0
    print(f"{args.model} on {args.data} (val): {result['images']:,} images, "
          f"{result['boxes']:,} boxes, {result['detections']:,} detections")  # fmt: skip
    print(f"mAP@[.5:.95] {result['mAP']:.4f}  mAP@0.5 {result['mAP50']:.4f}  (pycocotools)")
    rows = [(name, _ap(v["AP"]), _ap(v["AP50"])) for name, v in result["per_class"].items()]
    print(format_table(["class", "AP", "AP50"], rows))
    return 0


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _images(paths: list[str]) -> list[str]:
    for p in paths:
        if Path(p).is_dir():
            raise CnnlabError(f"{p!r} is a folder; a detector takes image files")
    return paths


def run_predict(args: argparse.Namespace) -> int:
    """``cnnlab predict DETECTOR --checkpoint RUN IMAGE...``: boxes per image."""
    from cnnlab.detect import draw_detections, load_detector, predict_images

    _device(args.device)
    if args.top is not None:
        raise CnnlabError("--top does not apply to a detector (see --score-thresh)")
    thresh = SCORE_THRESH if args.score_thresh is None else args.score_thresh
    if not 0 <= thresh <= 1:
        raise CnnlabError(f"--score-thresh must be in [0, 1], got {thresh}")
    images = _images(args.images)
    outs = _draw_paths(args.draw, images) if args.draw else []
    model, meta, pre = load_detector(args.model, args.checkpoint, not args.no_channels_last)
    found = predict_images(model, images, pre, meta["class_names"], thresh)
    for image, dets, out in zip(images, found, outs, strict=False):
        draw_detections(image, dets, out)
    if args.json:
        print_json([{"image": i, "detections": d} for i, d in zip(images, found, strict=True)])
        return 0
    for image, dets in zip(images, found, strict=True):
        print(f"{image}: {len(dets)} detection(s)")
        for d in dets:
            box = ", ".join(f"{v:.1f}" for v in d["box"])
            print(f"  {d['score']:.3f}  {d['label']}  [{box}]")
    for out in outs:
        print(f"drew {out}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _draw_paths(draw: str, images: list[str]) -> list[Path]:
    """``--draw OUT.png`` for one image; for several, ``OUT-<image stem>.png`` beside it."""
    out = Path(draw)
    if out.suffix.lower() != ".png":
        raise CnnlabError(f"--draw writes a PNG: give a .png file name, got {draw!r}")
    outs = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{Path(i).stem}.png")
                                           for i in images]  # fmt: skip
    for o in outs:
        check_output(o)  # its folder exists and is writable: before the work
    return outs
