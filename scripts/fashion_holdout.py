"""Write Fashion-MNIST's training set split in two as an IDX folder: its first N images as the
training split, the rest as the test split, so that a recipe can be chosen without looking
at the real test set.

    python scripts/fashion_holdout.py OUT [--train 50000]

``cnnlab train MODEL --data OUT`` then trains on the first N and validates on the others.
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import torch

from cnnlab.data import find_fashion_mnist, load_fashion_mnist


def write_idx(path: Path, array: torch.Tensor) -> None:
    """``array`` (N, 28, 28) images or (N,) labels as a gzipped IDX file of bytes."""
    magic = 2051 if array.dim() == 3 else 2049
    header = struct.pack(f">I{array.dim()}I", magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.to(torch.uint8).numpy().tobytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=50_000, help="images kept for training")
    args = parser.parse_args()
    images, labels = load_fashion_mnist(find_fashion_mnist(), "train")
    images = images[:, 0]  # IDX stores N x 28 x 28
    if not 0 < args.train < len(labels):
        raise SystemExit(f"--train must be in 1..{len(labels) - 1}")
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.train
    for split, part in (("train", slice(None, n)), ("t10k", slice(n, None))):
        write_idx(args.out / f"{split}-images-idx3-ubyte.gz", images[part])
        write_idx(args.out / f"{split}-labels-idx1-ubyte.gz", labels[part])
    print(f"{args.out}: {n:,} training and {len(labels) - n:,} held-out images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
