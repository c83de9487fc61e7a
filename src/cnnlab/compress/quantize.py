"""Trained quantization: k-means weight sharing with fine-tuned centroids.

Deep Compression (Han, Mao, Dally, ICLR 2016), section 3: per layer, cluster the surviving
weights with 1-D k-means into ``k = 2**bits`` shared values (linear initialisation over
[min, max] works best, section 3.2, figure 4; density and random are options), store a small
index per weight, then fine-tune the centroids: "the gradient for each shared weight is the sum
of the gradients of the weights in its cluster" (section 3.3, figure 3).

The sharing is a ``torch.nn.utils.parametrize`` parametrization whose parameter is the
codebook: ``weight = where(mask, codebook[assignment], 0)``. Autograd of the gather sums the
members' gradients into each centroid, assignments never change, pruned weights stay zero, and
any training loop (``cnnlab.train.train_one_epoch``) fine-tunes it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from cnnlab.compress.prune import layer_kind, prunable_layers, strip

__all__ = ["INITS", "Shared", "kmeans_1d", "round_to_half", "share_weights"]

INITS = ("linear", "density", "random")


def kmeans_1d(
    values: np.ndarray, k: int, init: str = "linear", iters: int = 50, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars: (centroids float32, assignment of every value).

    In 1-D the nearest centroid is found by binary search between sorted midpoints, so each
    iteration is O(n log k) with numpy. Empty clusters keep their centroid.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if init not in INITS:
        raise ValueError(f"unknown centroid init {init!r}; choose from {', '.join(INITS)}")
    if len(values) == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    lo, hi = values.min(), values.max()
    if init == "linear":
        centroids = np.linspace(lo, hi, k)
    elif init == "density":  # equally spaced on the CDF
        centroids = np.quantile(values, np.linspace(0, 1, k))
    else:
        rng = np.random.default_rng(seed)
        centroids = rng.choice(values, size=k, replace=len(values) < k)
    centroids = np.sort(centroids)
    assign = np.zeros(len(values), dtype=np.int64)
    for _ in range(iters):
        assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        counts = np.bincount(assign, minlength=k)
        sums = np.bincount(assign, weights=values, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(new, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(new)
    assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
    return centroids.astype(np.float32), assign


class Shared(nn.Module):
    """Parametrization ``weight = where(mask, codebook[assignment], 0)``; the codebook is trained.

    Registered with ``unsafe=True``: the stored parameter (``original``) is the codebook of
    ``k`` values, not the weight's shape. ``right_inverse`` maps a weight to the mean of each
    cluster, so registering it on a weight already equal to its quantized values is exact.
    """

    def __init__(self, assignment: torch.Tensor, mask: torch.Tensor, k: int) -> None:
        super().__init__()
        self.k = k
        self.register_buffer("assignment", assignment.to(torch.int64))
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return torch.where(
            self.mask, codebook[self.assignment], torch.zeros((), dtype=codebook.dtype)
        )

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        idx = self.assignment[self.mask]
        sums = torch.zeros(self.k, dtype=torch.float64).index_add_(
            0, idx, weight[self.mask].double()
        )
        counts = torch.bincount(idx, minlength=self.k).clamp(min=1)
        return (sums / counts).to(weight.dtype)


@torch.no_grad()
def share_weights(
    model: nn.Module,
    bits: Mapping[str, int] | None = None,
    *,
    conv_bits: int = 8,
    fc_bits: int = 5,
    init: str = "linear",
) -> dict[str, int]:
    """Cluster every Conv/Linear layer's non-zero weights into ``2**bits`` shared values.

    ``bits`` maps layer names to bit widths; layers not in it get ``conv_bits`` / ``fc_bits``
    (the paper's 8 / 5). Zeros (pruned weights) stay zero and outside the clusters. Returns
    the bits used per layer. The layers keep a :class:`Shared` parametrization until
    :func:`cnnlab.compress.prune.strip` (or ``finalize``) bakes them.
    """
    used = {}
    for name, module in prunable_layers(model).items():
        b = (bits or {}).get(name, conv_bits if layer_kind(module) == "conv" else fc_bits)
        if not 1 <= b <= 16:
            raise ValueError(f"bits must be in 1..16, got {b} for {name!r}")
        strip(module)
        weight = module.weight.detach()
        mask = weight != 0
        k = 1 << b
        centroids, assign = kmeans_1d(weight[mask].cpu().numpy(), k, init=init)
        assignment = torch.zeros(weight.shape, dtype=torch.int64)
        assignment[mask.cpu()] = torch.from_numpy(assign)
        codebook = torch.zeros(k, dtype=weight.dtype)
        codebook[: len(centroids)] = torch.from_numpy(centroids)
        module.weight.copy_(torch.where(mask.cpu(), codebook[assignment], 0.0).to(weight.device))
        shared = Shared(assignment, mask, k).to(weight.device)
        parametrize.register_parametrization(module, "weight", shared, unsafe=True)
        used[name] = b
    return used


@torch.no_grad()
def round_to_half(model: nn.Module) -> None:
    """Round every float32 tensor other than Conv/Linear weights to float16 values, in place.

    Biases and BatchNorm parameters/statistics then take 2 bytes each in the .cnz file (its
    HALF encoding) while the model stays float32; evaluate after rounding to see the effect.
    """
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in named:
        if "parametrizations." in name:  # codebooks and masks of shared/pruned layers
            continue
        if tensor.dtype == torch.float32 and tensor.dim() <= 1:
            tensor.copy_(tensor.half().float())
