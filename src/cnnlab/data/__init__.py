"""Data: Fashion-MNIST (IDX), ImageFolder trees, synthetic images; loaders and transforms.

``build_loaders(data, img_size=..., in_chans=...)`` (:mod:`cnnlab.data.loaders`) returns
(train loader, val/test loader, class names) for a ``--data`` value; the data sets are in
:mod:`cnnlab.data.datasets`, the IDX reader in :mod:`cnnlab.data.idx`, the preprocessing in
:mod:`cnnlab.data.transforms`.
"""

from cnnlab.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_STATS,
    IMAGE_SUFFIXES,
    IMAGENET_STATS,
    MAX_IMAGE_PIXELS,
    BadImageError,
    ImageFolderDataset,
    TensorImageDataset,
    collate_batch,
    download_fashion_mnist,
    fashion_mnist_folder,
    find_fashion_mnist,
    load_fashion_mnist,
    load_image,
    missing_fashion_files,
    open_image,
    synthetic_dataset,
    visible_entries,
)
from cnnlab.data.idx import read_idx
from cnnlab.data.loaders import (
    FASHION_MNIST_NAMES,
    SYNTHETIC_SIZES,
    EpochSampler,
    ShardSampler,
    auto_batch_size,
    build_loaders,
    data_channels,
    data_source,
    resolve_data,
    skipped_files,
)
from cnnlab.data.transforms import Preprocess, image_transform

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_NAMES",
    "FASHION_MNIST_STATS",
    "IMAGENET_STATS",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "SYNTHETIC_SIZES",
    "BadImageError",
    "EpochSampler",
    "ImageFolderDataset",
    "Preprocess",
    "ShardSampler",
    "TensorImageDataset",
    "auto_batch_size",
    "build_loaders",
    "collate_batch",
    "data_channels",
    "data_source",
    "download_fashion_mnist",
    "fashion_mnist_folder",
    "find_fashion_mnist",
    "image_transform",
    "load_fashion_mnist",
    "load_image",
    "missing_fashion_files",
    "open_image",
    "read_idx",
    "resolve_data",
    "skipped_files",
    "synthetic_dataset",
    "visible_entries",
]
