"""How far one SGD step moves each layer's shared centroids, against the spacing between them.

Deep Compression fine-tunes a centroid with the sum of its members' gradients (sec. 3.3, eq. 3),
so under SGD its step grows with its cluster. This prunes a trained model as `cnnlab compress
--sparsity` does, shares its weights (conv 8 / fc 5 bits), takes one batch's gradient and prints
per layer the weights per centroid and lr x the largest centroid gradient over the mean distance
between neighbouring centroids. Near 1 or above, one step carries a centroid past its neighbours.
AdamW's step (about lr for every centroid) does not grow with the cluster.

Usage: .venv/bin/python benchmarks/centroid_steps.py MODEL CHECKPOINT [--data fashion-mnist]
           [--sparsity [LAYER=]S ...] [--lr 1e-3] [--batch-size 64]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from cnnlab.compress import masks_for_sparsity, prune, share_weights
from cnnlab.compress.prune import parse_per_layer, prunable_layers, resolve_per_layer
from cnnlab.train import model_and_loaders, split_outputs


def centroid_steps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float
) -> list[tuple[str, float, float]]:
    """``(layer, weights per centroid, SGD step / centroid spacing)`` for a shared model."""
    model.train().zero_grad(set_to_none=True)
    logits, _ = split_outputs(model(x))
    nn.functional.cross_entropy(logits, y).backward()
    rows = []
    for name, module in prunable_layers(model).items():
        codebook = module.parametrizations.weight.original
        shared = module.parametrizations.weight[0]
        spacing = (codebook.max() - codebook.min()).item() / max(1, codebook.numel() - 1)
        step = lr * codebook.grad.abs().max().item()
        ratio = step / spacing if spacing else float("inf")  # one shared value: no spacing
        rows.append((name, int(shared.mask.sum()) / codebook.numel(), ratio))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("checkpoint")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--sparsity", action="append", metavar="[LAYER=]S")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    model, _, train, _ = model_and_loaders(
        args.checkpoint, args.data, args.model, batch_size=args.batch_size, limit=args.batch_size
    )
    names = list(prunable_layers(model))
    sparsity = resolve_per_layer(parse_per_layer(args.sparsity, "sparsity"), names, "sparsity")
    prune(model, masks_for_sparsity(model, sparsity))
    share_weights(model)
    x, y = next(iter(train))
    print(f"{'layer':24s} {'weights/centroid':>16s} {'step/spacing':>12s}   (SGD, lr {args.lr:g})")
    for name, members, ratio in centroid_steps(model, x, y, args.lr):
        print(f"{name:24s} {members:>16,.0f} {ratio:>12.3f}")


if __name__ == "__main__":
    main()
