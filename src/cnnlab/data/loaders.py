"""Loaders: the data sets a ``--data`` value names, split, sharded and batched.

``build_loaders(data, img_size=..., in_chans=...)`` returns (train loader, val/test loader,
class names). ``data`` is ``"fashion-mnist"`` (searched in ``$CNNLAB_DATA`` and the Debian
package's folder), a folder holding the Fashion-MNIST IDX files, ``"synthetic"``, or an
ImageFolder tree (``train/`` and ``val/`` sub-folders, or one folder split by ``val_split``).
:func:`resolve_data` fetches Fashion-MNIST first when asked to.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from cnnlab.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_STATS,
    IMAGE_SUFFIXES,
    IMAGENET_STATS,
    ImageFolderDataset,
    TensorImageDataset,
    collate_batch,
    download_fashion_mnist,
    fashion_mnist_folder,
    find_fashion_mnist,
    load_fashion_mnist,
    missing_fashion_files,
    synthetic_dataset,
    visible_entries,
)
from cnnlab.data.transforms import Preprocess
from cnnlab.errors import CnnlabError
from cnnlab.signals import worker_exits_on_sigterm

__all__ = [
    "FASHION_MNIST_NAMES",
    "SYNTHETIC_SIZES",
    "EpochSampler",
    "ShardSampler",
    "build_loaders",
    "data_channels",
    "resolve_data",
    "skipped_files",
]

SYNTHETIC_SIZES = (512, 128)  # train, val images of the "synthetic" data set


class EpochSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle, one shard per process) that also works alone.

    The order of epoch ``e`` depends only on ``(seed, e)``, which makes resuming exact. The
    trainer calls ``set_epoch``; a plain loop that does not still gets a new order each epoch,
    because every pass moves to the next epoch.
    """

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        self.epoch += 1
        return iter(indices)


class ShardSampler(Sampler[int]):
    """Evaluation: process ``rank`` takes every ``world``-th sample, without padding."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fmnist")


def _fashion_folder(data: str) -> Path | None:
    """Where ``data`` names Fashion-MNIST: the folder of its IDX files; else None."""
    if data in FASHION_MNIST_NAMES:
        return find_fashion_mnist(None)
    path = Path(data)
    return fashion_mnist_folder(path) if path.is_dir() else None


def data_source(data: str) -> str:
    """What ``data`` reads, to compare two spellings of it: the resolved folder of
    Fashion-MNIST's IDX files (``fashion-mnist`` and its path agree) or of any other folder;
    else ``data`` itself (``synthetic``, a missing path)."""
    if data == "synthetic":
        return data
    try:
        folder = _fashion_folder(data) or Path(data)
    except CnnlabError:  # Fashion-MNIST by name, not found
        return data
    return str(folder.resolve()) if folder.is_dir() else data


def data_channels(data: str) -> int:
    """The natural number of channels of ``data``: 1 for Fashion-MNIST, else 3 (RGB)."""
    if data == "synthetic":
        return 3
    if data in FASHION_MNIST_NAMES or fashion_mnist_folder(Path(data)) is not None:
        return 1
    return 3


def resolve_data(data: str, download: bool = False) -> str:
    """``data``, or where Fashion-MNIST was just downloaded to.

    With ``download`` and a Fashion-MNIST name (:data:`FASHION_MNIST_NAMES`) that
    :func:`find_fashion_mnist` cannot find, fetch it into ``$CNNLAB_DATA`` (else
    ``~/.cache/cnnlab``) and return that folder; otherwise return ``data`` unchanged.
    """
    if download and data in FASHION_MNIST_NAMES:
        try:
            find_fashion_mnist(None)
        except CnnlabError:
            root = os.environ.get("CNNLAB_DATA") or Path.home() / ".cache" / "cnnlab"
            return str(download_fashion_mnist(root))
    return data


def _split(n: int, val_split: float, seed: int) -> tuple[list[int], list[int]]:
    if not 0 < val_split < 1:
        raise ValueError(f"val_split must be between 0 and 1, got {val_split}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(n * val_split))
    if n_val >= n:
        raise ValueError(f"val_split {val_split} leaves no training images out of {n}")
    return sorted(order[n_val:]), sorted(order[:n_val])


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    return Subset(ds, range(limit))


def _is_split(folder: Path) -> bool:
    """``folder`` holds class folders and no image of its own: a split (``train/``), not a
    class that happens to be named like one (CIFAR-100 has a class "train")."""
    entries = visible_entries(folder)
    images = any(e.suffix.lower() in IMAGE_SUFFIXES for e in entries)
    return any(e.is_dir() for e in entries) and not images


def _datasets(
    data: str,
    img_size: int,
    in_chans: int,
    augment: bool,
    val_split: float | None,
    seed: int,
    strict: bool,
) -> tuple[Dataset, Dataset, list[str]]:
    if data == "synthetic":
        pre = Preprocess(img_size, in_chans, (0.0,), (1.0,))
        train = synthetic_dataset(SYNTHETIC_SIZES[0], pre, seed=seed, part=0)
        val = synthetic_dataset(SYNTHETIC_SIZES[1], pre, seed=seed, part=1)
        return train, val, [f"class{i}" for i in range(10)]
    path = Path(data)
    if (folder := _fashion_folder(data)) is not None:
        pre = Preprocess(img_size, in_chans, *FASHION_MNIST_STATS, source_size=28)
        x_train, y_train = load_fashion_mnist(folder, "train")
        train: Dataset = TensorImageDataset(x_train, y_train, pre, augment=augment)
        if val_split is None:
            val: Dataset = TensorImageDataset(*load_fashion_mnist(folder, "test"), pre)
        else:
            train_idx, val_idx = _split(len(train), val_split, seed)
            val = Subset(TensorImageDataset(x_train, y_train, pre), val_idx)
            train = Subset(train, train_idx)
        return train, val, list(FASHION_MNIST_CLASSES)
    if not path.is_dir():
        raise CnnlabError(
            f"data {data!r} is neither 'fashion-mnist', 'synthetic' nor an existing folder"
        )
    if missing := missing_fashion_files(path):  # not an ImageFolder: IDX files, some missing
        raise CnnlabError(
            f"{data!r} holds part of Fashion-MNIST; missing: {', '.join(missing)} (.gz or not)"
        )
    stats = IMAGENET_STATS
    pre = Preprocess(img_size, in_chans, *stats)
    sub = {d.name for d in visible_entries(path) if d.is_dir()}
    if "train" in sub and ({"val", "test"} & sub):
        train_ds = ImageFolderDataset(path / "train", pre, augment=augment, strict=strict)
        val_name = "val" if "val" in sub else "test"
        val_ds = ImageFolderDataset(path / val_name, pre, classes=train_ds.classes, strict=strict)
        if val_split is not None:
            raise ValueError(f"{data!r} has train/ and {val_name}/; --val-split is for one folder")
        return train_ds, val_ds, train_ds.classes
    if "train" in sub and _is_split(path / "train"):  # a tree missing its validation half
        raise CnnlabError(
            f"{data!r} has train/ but no val/ or test/; add one, or pass "
            f"--data {str(path / 'train')!r} with --val-split (e.g. 0.1)"
        )
    if val_split is None:
        raise CnnlabError(
            f"{data!r} has no train/ and val/ sub-folders; pass --val-split (e.g. 0.1) to hold "
            "out part of it for validation"
        )
    train_all = ImageFolderDataset(path, pre, augment=augment, strict=strict)
    train_idx, val_idx = _split(len(train_all), val_split, seed)
    val_all = train_all.with_augment(False)
    return Subset(train_all, train_idx), Subset(val_all, val_idx), train_all.classes


DEFAULT_BATCH = 128
MIN_AUTO_BATCH = 16
STEPS_PER_EPOCH = 100  # below this many steps an epoch barely moves a network (small data)


def auto_batch_size(images: int, world: int = 1) -> int:
    """The default global batch: 128, or, on a training set too small for ~100 optimizer steps
    per epoch at 128, the largest power of two that gives them, but at least 16; rounded up to
    a multiple of ``world`` (docs/training.md, Small data)."""
    batch = DEFAULT_BATCH
    while batch > MIN_AUTO_BATCH and images < STEPS_PER_EPOCH * batch:
        batch //= 2
    return -(-batch // world) * world


def build_loaders(
    data: str,
    *,
    img_size: int,
    in_chans: int,
    batch_size: int | None = DEFAULT_BATCH,
    workers: int = 0,
    augment: bool = False,
    val_split: float | None = None,
    seed: int = 0,
    limit: int | None = None,
    strict: bool = False,
) -> tuple[DataLoader, DataLoader, list[str]]:
    """(train loader, val/test loader, class names) for ``data``.

    Under ``torch.distributed`` each process gets its shard and ``batch_size`` is the global
    batch (it must divide by the number of processes); ``None`` is :func:`auto_batch_size`.
    The train loader shuffles with an :class:`EpochSampler` seeded by ``seed`` and drops a last
    partial batch; ``limit`` keeps the first ``limit`` images of each split (quick runs).
    ``strict`` makes a corrupt image in an ImageFolder an error instead of a skipped, counted
    warning.
    """
    if batch_size is not None and not 1 <= batch_size <= sys.maxsize:  # the DataLoader's range
        raise ValueError(f"batch_size must be positive and at most 2**63 - 1, got {batch_size}")
    rank, world = _world()
    if batch_size is not None and batch_size % world:
        raise ValueError(f"batch size {batch_size} does not divide among {world} processes")
    train, val, classes = _datasets(data, img_size, in_chans, augment, val_split, seed, strict)
    train, val = _limit(train, limit), _limit(val, limit)
    batch_size = batch_size or auto_batch_size(len(train), world)
    local = batch_size // world
    common = {"num_workers": workers, "collate_fn": collate_batch, "persistent_workers": False}
    if workers > 0:
        common.update(prefetch_factor=4, worker_init_fn=worker_exits_on_sigterm)
    sampler = EpochSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    train_loader = DataLoader(
        train, batch_size=local, sampler=sampler, drop_last=len(train) >= batch_size, **common
    )
    val_loader = DataLoader(
        val, batch_size=local, sampler=ShardSampler(len(val), rank, world), **common
    )
    return train_loader, val_loader, classes


def skipped_files(loader: DataLoader) -> list[str]:
    """The corrupt images an ImageFolder loader skipped (empty for other data sets)."""
    ds = loader.dataset
    while isinstance(ds, Subset):
        ds = ds.dataset
    return list(getattr(ds, "skipped", []))
