"""``cnnlab train``, ``cnnlab eval`` and ``cnnlab predict``: thin wrappers over cnnlab.train."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cnnlab.cli._format import format_table, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser(
        "train",
        help="train a model (Fashion-MNIST, an ImageFolder, synthetic); torchrun-ready",
        description="Train MODEL; checkpoints, metrics.csv and TensorBoard events go to --out. "
        "Run under `torchrun --nproc_per_node=N -m cnnlab train ...` for several processes.",
    )
    t.add_argument("model", help="a registered model name (see `cnnlab models`)")
    _data_args(t)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128, help="global batch (all processes)")
    t.add_argument("--lr", type=float, default=None, help="default 0.05 (sgd), 1e-3 (adamw)")
    t.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    t.add_argument(
        "--schedule", choices=["cosine", "step", "onecycle", "constant"], default="cosine"
    )
    t.add_argument("--warmup-epochs", type=float, default=0.0)
    t.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 / 0.05")
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--clip-grad-norm", type=float, default=None)
    t.add_argument("--aux-weight", type=float, default=0.3, help="auxiliary heads' loss weight")
    t.add_argument("--augment", action="store_true", help="random crop + flip + erasing")
    t.add_argument("--in-chans", type=int, choices=[1, 3], default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    t.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    t.add_argument("--download", action="store_true", help="fetch Fashion-MNIST if missing")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.set_defaults(func=run_train)

    e = subparsers.add_parser("eval", help="top-1/top-5, per-class accuracy, confusion matrix")
    e.add_argument("model")
    e.add_argument("--checkpoint", help="weights file or run folder (best, else last)")
    e.add_argument("--compressed", help="a cnnlab.compress file instead of --checkpoint")
    _data_args(e)
    e.add_argument("--batch-size", type=int, default=256)
    seed_help = "the training run's --seed, so that --val-split holds out the same images"
    e.add_argument("--seed", type=int, default=0, help=seed_help)
    e.add_argument("--plot", help="save the confusion matrix as an image (PNG, SVG, PDF)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run_eval)

    p = subparsers.add_parser("predict", help="top-5 classes of images with probabilities")
    p.add_argument("model")
    p.add_argument("--checkpoint", required=True, help="weights file or run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_predict)


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
    from cnnlab.data import FASHION_MNIST_NAMES, download_fashion_mnist, find_fashion_mnist
    from cnnlab.io import CnnlabError
    from cnnlab.train import TrainConfig, fit
    from cnnlab.train.trainer import CONFIG_FIELDS

    data = args.data
    if args.download and data in FASHION_MNIST_NAMES:
        try:
            find_fashion_mnist(None)
        except CnnlabError:
            root = os.environ.get("CNNLAB_DATA") or Path.home() / ".cache" / "cnnlab"
            data = str(download_fashion_mnist(root))
    cfg = TrainConfig(**{**{k: getattr(args, k) for k in CONFIG_FIELDS}, "data": data})
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
        print(
            f"{args.model}: val top-1 {summary['val_top1']:.2%}, top-5 {summary['val_top5']:.2%} "
            f"(best top-1 {summary['best_top1']:.2%}); {summary['train_seconds']:.1f}s training, "
            f"{summary['images_per_second']:,.0f} img/s; weights in {summary['out']}"
        )
    return 130 if summary["interrupted"] else 0


def run_eval(args: argparse.Namespace) -> int:
    from cnnlab.train import evaluate_checkpoint, plot_confusion

    result = evaluate_checkpoint(
        args.model, args.data, checkpoint=args.checkpoint, compressed=args.compressed,
        batch_size=args.batch_size, workers=args.workers, img_size=args.img_size,
        val_split=args.val_split, limit=args.limit, seed=args.seed, strict=args.strict,
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

    results = predict(args.model, args.checkpoint, args.images, top=args.top)
    if args.json:
        print_json(results)
        return 0
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['probability']:7.2%}  {t['class']}")
    return 0
