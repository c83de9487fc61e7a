"""Write a subset of Fashion-MNIST's classes as an ImageFolder tree (PNG files), for
fine-tuning experiments: train on some classes, then transfer to the others.

    python scripts/fashion_split.py OUT --classes 0-4 [--train-per-class N] [--test-per-class M]

writes ``OUT/train/<k>_<name>/<i>.png`` from the training split (its first N images of each
class, in file order) and ``OUT/val/...`` from the test split (the first M of each class; all
1,000 by default). ``cnnlab train MODEL --data OUT --in-chans 1`` then trains on them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

from cnnlab.data import FASHION_MNIST_CLASSES, find_fashion_mnist, load_fashion_mnist


def parse_classes(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"5,7,9"`` -> [5, 7, 9]."""
    classes: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        classes.extend(range(int(low), int(high or low) + 1))
    if not classes or not all(0 <= c < len(FASHION_MNIST_CLASSES) for c in classes):
        raise SystemExit(f"--classes must name classes 0-9, got {text!r}")
    return classes


def write_split(out: Path, split: str, classes: list[int], per_class: int | None) -> int:
    images, labels = load_fashion_mnist(find_fashion_mnist(), split)
    written = 0
    for c in classes:
        folder = out / ("train" if split == "train" else "val") / folder_name(c)
        folder.mkdir(parents=True, exist_ok=True)
        picked = (labels == c).nonzero().flatten()[:per_class]
        for i, index in enumerate(picked.tolist()):
            Image.fromarray(images[index, 0].numpy()).save(folder / f"{i:04d}.png")
        written += len(picked)
    return written


def folder_name(c: int) -> str:
    return f"{c}_{re.sub(r'[^A-Za-z0-9]+', '-', FASHION_MNIST_CLASSES[c])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--classes", required=True, help="e.g. 0-4 or 5,7,9")
    parser.add_argument("--train-per-class", type=int, default=None, help="default: all")
    parser.add_argument("--test-per-class", type=int, default=None, help="default: all")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new folder")
    classes = parse_classes(args.classes)
    n_train = write_split(args.out, "train", classes, args.train_per_class)
    n_val = write_split(args.out, "test", classes, args.test_per_class)
    print(f"wrote {n_train} training and {n_val} test images of classes {classes} to {args.out}")


if __name__ == "__main__":
    main()
