"""``cnnlab train``, ``cnnlab eval`` and ``cnnlab predict``: thin wrappers over cnnlab.train.

The options of ``cnnlab train`` are the fields of :class:`cnnlab.train.TrainConfig`
(``--batch-size`` for ``batch_size``, help text from the field's metadata); the config checks
their values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from cnnlab.cli import detection
from cnnlab.cli.checks import check_numbers
from cnnlab.cli.config_options import add_config_options, config_from_args
from cnnlab.detect.predict import SCORE_THRESH
from cnnlab.devices import PRECISIONS, resolve_device
from cnnlab.errors import CnnlabError
from cnnlab.tables import format_table, note, print_json
from cnnlab.train.inference import TOP_CLASSES
from cnnlab.train.trainer import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser(
        "train",
        help="train or fine-tune a model (Fashion-MNIST, an ImageFolder, synthetic); "
        "torchrun-ready",
        description="Train MODEL, from scratch or from --init-from weights (a run, a cnnlab "
        "file, torchvision:PATH, timm:PATH); checkpoints, metrics.csv and TensorBoard events "
        "go to --out. Run under `torchrun --nproc_per_node=N -m cnnlab train ...` for several "
        "processes.",
    )
    t.add_argument("model", help="a registered model name (see `cnnlab models`)")
    add_config_options(t, TrainConfig, skip=("model",))
    t.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    t.add_argument("--download", action="store_true", help="fetch Fashion-MNIST if missing")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.set_defaults(func=run_train)
    _register_eval(subparsers)
    _register_predict(subparsers)


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser("eval", help="top-1/top-5, per-class accuracy, confusion matrix")
    e.add_argument("model", help="the model name the weights are for (see `cnnlab models`)")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        help="a run folder (best, else last), a .safetensors or .cnz file, or torchvision:PATH "
        "/ timm:PATH",
    )
    source.add_argument("--compressed", help="the same as --checkpoint (kept for .cnz files)")
    _data_args(e)
    e.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    seed_help = "the training run's --seed, so that --val-split holds out the same images"
    e.add_argument("--seed", type=int, default=0, help=seed_help)
    e.add_argument("--plot", help="save the confusion matrix as an image (PNG, SVG, PDF)")
    _device_arg(e)
    e.add_argument(
        "--precision", choices=PRECISIONS, default=None,
        help="fp32, bf16 or auto (bf16 where native) (default: bf16 on a GPU, fp32 on a CPU)",
    )  # fmt: skip
    _layout_arg(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    e.set_defaults(func=run_eval)


def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="top-5 classes of images with probabilities")
    p.add_argument("model", help="the model name the weights are for (see `cnnlab models`)")
    p.add_argument(
        "--checkpoint", required=True, help="any weights `cnnlab eval --checkpoint` takes"
    )
    p.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help="image files, or folders (their images, sorted); an unreadable one is named on "
        "stderr and the others are still predicted (exit 2 only if none can be read)",
    )  # fmt: skip
    p.add_argument(
        "--top", type=int, default=None,
        help=f"classifiers: classes per image (default {TOP_CLASSES})",
    )  # fmt: skip
    _device_arg(p)
    p.add_argument(
        "--draw", metavar="OUT.png",
        help="detectors: draw the boxes on the image into this PNG (several images: "
        "OUT-<image name>.png each)",
    )  # fmt: skip
    p.add_argument(
        "--score-thresh", type=float, default=None,
        help=f"detectors: the lowest score shown (default {SCORE_THRESH})",
    )  # fmt: skip
    _layout_arg(p)
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=run_predict)


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)"
    )


def _layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-channels-last", action="store_true",
        help="keep the weights NCHW; by default they are channels-last (NHWC), as `cnnlab "
        "train` keeps them (1.3-2x faster CPU inference, docs/performance.md)",
    )  # fmt: skip


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist, a folder (IDX files or ImageFolder), or synthetic",
    )
    p.add_argument("--img-size", type=int, default=None, help="default: the model's input size")
    p.add_argument("--val-split", type=float, default=None, help="hold out this fraction")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--strict", action="store_true", help="a corrupt image is an error")


def run_train(args: argparse.Namespace) -> int:
    from cnnlab.data import resolve_data
    from cnnlab.train import fit

    cfg = config_from_args(TrainConfig, args)
    if detection.wants_detection(cfg.model, cfg.data):
        return detection.run_train(cfg, args)
    resolve_device(cfg.device)  # before a --download, not after it
    cfg = dataclasses.replace(cfg, data=resolve_data(cfg.data, download=args.download))
    stream = sys.stderr if args.json else sys.stdout
    summary = fit(
        cfg,
        args.out or os.path.join("runs", args.model),
        resume=args.resume,
        log=lambda line: print(line, file=stream, flush=True),
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        print_json(summary)
    elif summary["val_top1"] is not None:
        speed = summary["images_per_second"]
        timing = f"{summary['train_seconds']:.1f}s training, {speed:,.0f} img/s; " if speed else ""
        print(
            f"{args.model}: val top-1 {summary['val_top1']:.2%}, top-5 {summary['val_top5']:.2%} "
            f"(best top-1 {summary['best_top1']:.2%}); {timing}weights in {summary['out']}"
        )
    return 130 if summary["interrupted"] else 0


def run_eval(args: argparse.Namespace) -> int:
    from cnnlab.plots import check_plot_path, plot_confusion
    from cnnlab.train import evaluate_checkpoint

    check_numbers(args)
    if detection.wants_detection(args.model, args.data):
        return detection.run_eval(args)
    if args.plot:
        check_plot_path(args.plot)  # before the work, not after it
    result = evaluate_checkpoint(
        args.model, args.data, args.checkpoint or args.compressed, batch_size=args.batch_size,
        workers=args.workers, img_size=args.img_size, val_split=args.val_split,
        limit=args.limit, seed=args.seed, strict=args.strict, log=note, device=args.device,
        precision=args.precision, progress=not args.no_progress,
        channels_last=not args.no_channels_last,
    )  # fmt: skip
    if args.plot:
        plot_confusion(result["confusion"], result["classes"], args.plot, title=args.model)
    if args.json:
        print_json(result)
        return 0
    classes = result["classes"]
    print(f"{args.model} on {args.data}: {result['images']:,} images")
    print(f"top-1 {result['top1']:.2%}  top-5 {result['top5']:.2%}  loss {result['loss']:.4f}")
    rows = [
        (name, "-" if acc is None else f"{acc:.2%}", *result["confusion"][i])
        for i, (name, acc) in enumerate(zip(classes, result["per_class"], strict=True))
    ]
    print(format_table(["class", "accuracy", *[str(i) for i in range(len(classes))]], rows))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from cnnlab.train import predict

    check_numbers(args)
    if detection.wants_detection(args.model, None):
        return detection.run_predict(args)
    if args.draw:
        raise CnnlabError("--draw is for detectors (it draws boxes)")
    if args.score_thresh is not None:
        raise CnnlabError("--score-thresh is for detectors (a classifier shows its --top classes)")
    results = predict(
        args.model,
        args.checkpoint,
        args.images,
        top=TOP_CLASSES if args.top is None else args.top,
        log=note,
        device=args.device,
        channels_last=not args.no_channels_last,
    )
    if args.json:
        print_json(results)
        return 0
    for r in results:
        if "top" not in r:
            continue  # named on stderr already
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['probability']:7.2%}  {t['class']}")
    return 0
