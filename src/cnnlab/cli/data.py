"""``cnnlab data make-detection OUT``: write the Fashion-MNIST detection set."""

from __future__ import annotations

import argparse

from cnnlab.cli import HelpFormatter
from cnnlab.detect import make_detection
from cnnlab.tables import print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="make data sets (a detection set from Fashion-MNIST)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = sub.add_parser(
        "make-detection",
        help="1-5 Fashion-MNIST articles per canvas, COCO JSON (docs/detection.md)",
        formatter_class=HelpFormatter,
    )
    make.add_argument("out", metavar="OUT", help="new or empty folder to write")
    make.add_argument("--n-train", type=int, default=1000, help="training canvases")
    make.add_argument("--n-val", type=int, default=200, help="validation canvases")
    make.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    make.add_argument("--size", type=int, default=320, help="canvas side in pixels")
    make.add_argument(
        "--fashion-mnist", metavar="DIR", help="folder of the Fashion-MNIST IDX files"
    )
    make.add_argument("--json", action="store_true", help="machine-readable output")
    make.set_defaults(func=run_make_detection)


def run_make_detection(args: argparse.Namespace) -> int:
    result = make_detection(
        args.out, args.n_train, args.n_val, args.seed, args.size, args.fashion_mnist
    )
    if args.json:
        print_json(result)
        return 0
    for split in ("train", "val"):
        counts = result[split]
        print(f"{split}: {counts['images']} images, {counts['boxes']} boxes")
    print(f"written: {result['out']} (seed {result['seed']}, {result['size']}x{result['size']})")
    return 0
