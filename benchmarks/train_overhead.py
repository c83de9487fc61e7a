"""Training-loop overhead and data-pipeline speed, measured side by side in one run.

1. Our ``cnnlab.train.train_one_epoch`` against a minimal hand-written PyTorch loop
   (forward, cross-entropy, zero_grad, backward, step) on the same model and the same batches
   held in memory; the two alternate several times and the best pass of each counts. The
   ratio ours / minimal (images/s) should be >= 0.95: the loop adds no overhead.
2. The data pipeline's images/s: Fashion-MNIST (IDX, batched transforms; plain and with
   augmentation) and an ImageFolder of JPEGs that the script writes to a temporary folder.

Usage: python benchmarks/train_overhead.py [--model lenet5] [--batches 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cnnlab import create_model
from cnnlab.data import build_loaders
from cnnlab.errors import CnnlabError
from cnnlab.train import train_one_epoch


def minimal_loop(model: nn.Module, batches: list, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def loop_ratio(model_name: str, n_batches: int, batch_size: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=1)
    side = model.input_size[-1]
    batches = [
        (torch.randn(batch_size, 1, side, side), torch.randint(0, 10, (batch_size,)))
        for _ in range(n_batches)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = n_batches * batch_size
    loops = {
        "minimal": lambda: minimal_loop(model, batches, optimizer),
        "cnnlab": lambda: train_one_epoch(model, batches, optimizer),
    }
    loops["minimal"]()  # warm-up
    best = dict.fromkeys(loops, 0.0)
    for _ in range(repeats):
        for name, run in loops.items():
            t0 = time.perf_counter()
            run()
            best[name] = max(best[name], images / (time.perf_counter() - t0))
    print(f"training loop, {model_name} at {side}x{side}, batch {batch_size}, {images} images:")
    for name, ips in best.items():
        print(f"  {name:8s} {ips:9,.0f} img/s")
    print(f"  ratio cnnlab / minimal: {best['cnnlab'] / best['minimal']:.3f}")


def pipeline_speed(label: str, loader: torch.utils.data.DataLoader, max_batches: int) -> None:
    n, t0 = 0, time.perf_counter()
    for i, (x, _) in enumerate(loader):
        n += x.shape[0]
        if i + 1 >= max_batches:
            break
    print(f"  {label:44s} {n / (time.perf_counter() - t0):9,.0f} img/s")


def write_jpegs(root: Path, n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jpegs", type=int, default=2000)
    parser.add_argument("--jpeg-side", type=int, default=96)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    loop_ratio(args.model, args.batches, args.batch_size, args.repeats)

    print("data pipeline (workers=0, batch 128, 32x32 output):")
    try:
        for augment in (False, True):
            train, _, _ = build_loaders("fashion-mnist", img_size=32, in_chans=1, augment=augment)
            pipeline_speed(f"Fashion-MNIST IDX{' + augmentation' if augment else ''}", train, 100)
    except CnnlabError as exc:
        print(f"  Fashion-MNIST skipped: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.jpegs, args.jpeg_side)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no image here is corrupt
            train, _, _ = build_loaders(tmp, img_size=32, in_chans=3, val_split=0.1)
        scan = time.perf_counter() - t0
        print(f"  ImageFolder scan of {args.jpegs} JPEGs ({args.jpeg_side}px): "
              f"{args.jpegs / scan:,.0f} img/s")  # fmt: skip
        pipeline_speed(f"ImageFolder JPEG {args.jpeg_side}px -> 32px", train, 100)


if __name__ == "__main__":
    main()
