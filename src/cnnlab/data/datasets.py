"""The data sets: Fashion-MNIST (IDX files), any ImageFolder tree, and synthetic images."""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from cnnlab.codec import open_regular
from cnnlab.data.idx import read_idx
from cnnlab.data.transforms import Preprocess, augment_batch, erase_batch, image_transform
from cnnlab.devices import require_memory
from cnnlab.errors import CnnlabError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SYSTEM_DIR",
    "MAX_IMAGE_PIXELS",
    "BadImageError",
    "ImageFolderDataset",
    "TensorImageDataset",
    "fashion_mnist_folder",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "load_image",
    "missing_fashion_files",
    "open_image",
    "synthetic_dataset",
    "visible_entries",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))  # mean, std of the 60,000 training pixels
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_IMAGE_PIXELS = 8192 * 8192  # 64 Mpixel: a decoded RGB image of at most 192 MiB
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def visible_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` sorted by name, without hidden ones (``.ipynb_checkpoints``,
    macOS's ``._x.png`` resource forks, ``.DS_Store``): never a class nor an image."""
    return sorted(e for e in folder.iterdir() if not e.name.startswith("."))


class TensorImageDataset(Dataset):
    """uint8 images (N, C, H, W) held in memory, prepared a whole batch at a time.

    ``__getitems__`` lets the DataLoader fetch a batch in one call (then ``collate_batch``
    passes it through), so the deterministic transforms run once per batch, not per image.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        pre: Preprocess,
        augment: bool = False,
        normalised: bool = False,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels, self.pre = images, labels.long(), pre
        self.augment, self.normalised = augment, normalised

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[index]
        if self.augment:
            x = augment_batch(x)
        if not self.normalised:
            x = self.pre.batch(x)
        if self.augment:
            x = erase_batch(x)
        return x, self.labels[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([i])
        return x[0], int(y[0])


def collate_batch(batch: Any) -> Any:
    """Collate for :class:`TensorImageDataset`: the batch already is (images, labels)."""
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)


def _fashion_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for stem in FASHION_MNIST_FILES[split]:
        hits = [folder / f"{stem}{ext}" for ext in (".gz", "")]
        hits = [h for h in hits if h.is_file()]
        if not hits:
            return None
        found.append(hits[0])
    return found[0], found[1]


def missing_fashion_files(folder: Path) -> list[str]:
    """The Fashion-MNIST IDX files (stems, ``.gz`` or not) that ``folder`` lacks where it holds
    some of them; ``[]`` where it holds all or none."""
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    held = [s for s in stems if any((folder / f"{s}{ext}").is_file() for ext in (".gz", ""))]
    return [s for s in stems if s not in held] if held else []


def fashion_mnist_folder(folder: Path) -> Path | None:
    """``folder`` itself, its ``fashion-mnist/`` or its ``FashionMNIST/raw/``: where the
    four IDX files are, or None."""
    for candidate in (folder, folder / "fashion-mnist", folder / "FashionMNIST" / "raw"):
        if _fashion_files(candidate, "train") and _fashion_files(candidate, "test"):
            return candidate
    return None


def find_fashion_mnist(path: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files.

    Search order: ``path`` (``--data PATH``), then ``$CNNLAB_DATA``, then the Debian package's
    folder ``/usr/share/datasets/fashion-mnist/``. Each place may hold the files directly, in
    ``fashion-mnist/``, or in torchvision's ``FashionMNIST/raw/``.
    """
    places = [Path(path)] if path else []
    if os.environ.get("CNNLAB_DATA"):
        places.append(Path(os.environ["CNNLAB_DATA"]))
    places.append(FASHION_MNIST_SYSTEM_DIR)
    for place in places:
        if (found := fashion_mnist_folder(place)) is not None:
            return found
    raise CnnlabError(
        "Fashion-MNIST not found (looked in "
        + ", ".join(str(p) for p in places)
        + "); install it with `apt-get install dataset-fashion-mnist`, point --data or "
        "$CNNLAB_DATA at a folder with its four IDX files, or fetch them with --download"
    )


def download_fashion_mnist(root: str | os.PathLike[str]) -> Path:
    """Fetch Fashion-MNIST with torchvision into ``root`` (needs internet); return the folder."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise CnnlabError(f"download of Fashion-MNIST failed: {exc}") from None
    return find_fashion_mnist(root)


def load_fashion_mnist(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) of ``split`` 'train' or 'test'."""
    files = _fashion_files(folder, split)
    if files is None:
        raise CnnlabError(f"no Fashion-MNIST {split} files in {str(folder)!r}")
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise CnnlabError(f"{str(files[0])!r}: expected uint8 images N x H x W")
    if labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise CnnlabError(
            f"{str(files[1])!r}: {labels.shape[0]} labels for {images.shape[0]} images"
        )
    if labels.numel() and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise CnnlabError(f"{str(files[1])!r}: label {int(labels.max())} is not a class (0-9)")
    return images.unsqueeze(1), labels.long()


class BadImageError(CnnlabError):
    """An image file that cannot be used: missing, not a regular file, corrupt, or larger
    than :data:`MAX_IMAGE_PIXELS`. ``path`` and ``reason`` are kept for callers that go on
    with the other images (a folder scan skips it with a warning)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image {str(path)!r}: {reason}")


_BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, MemoryError)


@contextmanager
def open_image(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """The image at ``path`` opened with PIL (not decoded yet), or :class:`BadImageError`.

    Only a regular file is opened (a FIFO or a device is refused without reading), and an
    image of more than :data:`MAX_IMAGE_PIXELS` pixels is refused from its header, before
    decoding; the limit is ours, whatever PIL's global ``Image.MAX_IMAGE_PIXELS`` holds.
    Errors inside the ``with`` block (decoding) become :class:`BadImageError` too."""
    try:
        with open_regular(path) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise BadImageError(
                        path, f"{width}x{height} pixels is above the limit {MAX_IMAGE_PIXELS:,}"
                    )
                yield img
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except CnnlabError:
        raise BadImageError(path, "not a regular file") from None
    except Image.DecompressionBombError as exc:  # PIL refused it first, from the header
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise BadImageError(path, f"{pixels} is above the limit {MAX_IMAGE_PIXELS:,}") from None
    except UnidentifiedImageError:  # PIL's message names its file object ("<_io....name=3>")
        raise BadImageError(path, "no image format recognised (empty, or not an image)") from None
    except _BAD_IMAGE as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise BadImageError(path, reason.splitlines()[0]) from None


def load_image(path: str | os.PathLike[str], in_chans: int) -> Image.Image:
    """Decode an image fully (so a truncated file fails here) as grey or RGB.

    Any problem is one :class:`BadImageError` (a ``CnnlabError``) naming the file."""
    with open_image(path) as img:
        img.load()
        return _eight_bit(img).convert("L" if in_chans == 1 else "RGB")


def _eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit grey image (PNG, TIFF) scaled to 0..255: PIL's ``convert`` clips it at 255,
    which turns all but the darkest 1/256 of its range white."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        return img.convert("I").point(lambda v: v / 256).convert("L")
    return img


def _check_image(path: Path, size: int) -> str | None:
    """None if the image decodes, else the reason. JPEGs decode at reduced scale (fast)."""
    try:
        with open_image(path) as img:
            img.draft(img.mode, (size, size))
            img.load()
    except BadImageError as exc:
        return exc.reason
    return None


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>``; every image is decoded once up front. Hidden entries (names
    starting with ".") are neither classes nor images.

    An unreadable or corrupt image is skipped with a warning naming it and listed in
    ``skipped`` (``strict=True`` raises instead).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        pre: Preprocess,
        augment: bool = False,
        classes: list[str] | None = None,
        strict: bool = False,
    ) -> None:
        self.root = Path(root)
        found = [d.name for d in visible_entries(self.root) if d.is_dir()]
        self.classes = classes if classes is not None else found
        if not self.classes:
            raise CnnlabError(f"{str(self.root)!r} holds no class folders (root/<class>/*.png)")
        unknown = set(found) - set(self.classes)
        if unknown:
            raise CnnlabError(f"{str(self.root)!r}: classes {sorted(unknown)} not in training set")
        self.pre = pre
        self.transform = image_transform(pre, augment)
        self.in_chans = pre.in_chans
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[str] = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            files = visible_entries(folder) if folder.is_dir() else []
            for f in files:
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                self._add(f, label, strict)
        if not self.samples:
            raise CnnlabError(f"no readable images under {str(self.root)!r}")
        if classes is None:  # the set that defines the classes: each must be learnable
            self._check_classes()

    def _check_classes(self) -> None:
        """Two classes at least, each with a readable image (torchvision's ImageFolder also
        refuses an empty class): a class never seen in training is never predicted."""
        if len(self.classes) < 2:
            raise CnnlabError(
                f"{str(self.root)!r} holds one class folder ({self.classes[0]!r}); a classifier "
                "needs two at least"
            )
        seen = {label for _, label in self.samples}
        empty = [name for label, name in enumerate(self.classes) if label not in seen]
        if empty:
            raise CnnlabError(f"{str(self.root)!r}: no readable image in class folder(s) {empty}")

    def _add(self, f: Path, label: int, strict: bool) -> None:
        """Keep ``f`` if it decodes; else skip it with a warning (``strict``: raise)."""
        reason = _check_image(f, self.pre.size)
        if reason is None:
            self.samples.append((f, label))
        elif strict:
            raise CnnlabError(f"corrupt image {str(f)!r}: {reason}")
        else:
            warnings.warn(f"skipping corrupt image {str(f)!r}: {reason}", stacklevel=3)
            self.skipped.append(str(f))

    def with_augment(self, augment: bool) -> ImageFolderDataset:
        """The same images (no second scan) with or without training augmentation."""
        twin = copy.copy(self)
        twin.transform = image_transform(self.pre, augment)
        return twin

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(load_image(path, self.in_chans)), label


def synthetic_dataset(
    n: int, pre: Preprocess, num_classes: int = 10, seed: int = 0, part: int = 0
) -> TensorImageDataset:
    """Learnable random images: a fixed pattern per class plus noise (normalised floats).

    ``seed`` fixes the class patterns; ``part`` draws different samples (train 0, val 1).
    Sizes whose images memory cannot hold are refused before anything is drawn.
    """
    pixels = pre.in_chans * pre.size * pre.size
    require_memory(  # the images and the noise they are made of, float32, at least
        (2 * n + num_classes) * pixels * 4, torch.device("cpu"),
        f"the synthetic data ({n} images of {pre.in_chans}x{pre.size}x{pre.size})",
        "use a smaller --img-size",
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(num_classes, pre.in_chans, pre.size, pre.size, generator=g)
    g.manual_seed(seed * 1000 + 1 + part)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    noise = torch.randn(n, pre.in_chans, pre.size, pre.size, generator=g)
    images = patterns[labels] + 1.5 * noise
    return TensorImageDataset(images, labels, pre, normalised=True)
