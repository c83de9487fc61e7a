"""Preprocessing (torchvision.transforms.v2): size, channels, normalisation, augmentation.

The deterministic part is a :class:`Preprocess` record: plain data, stored with every
checkpoint, so ``cnnlab predict`` prepares an image exactly as training did.

* Size: an image a few pixels smaller than the target (at most 4) is zero-padded, centred, as
  LeCun et al. (1998, section II-A) put the 28x28 MNIST digits in LeNet-5's 32x32 field; any
  other size is resized (shorter side) and centre-cropped.
* Channels: grey to RGB by repeating the channel, RGB to grey by luminance, as the model's
  ``in_chans`` asks (1 or 3).
* Normalisation with the data set's per-channel mean and standard deviation.
* Augmentation (training only, optional): random crop with padding (size / 8), horizontal
  flip, random erasing (Zhong et al., 2020) with probability 0.25.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # torchvision is imported where it is used: it costs a second to import
    from torchvision.transforms import v2

__all__ = ["Preprocess", "augment_batch", "image_transform"]

PAD_LIMIT = 4  # pixels: pad rather than resize when the image is at most this much smaller


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model inputs; saved as plain data in checkpoints."""

    size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_size: int | None = None  # the data set's native side, where all images share one

    def __post_init__(self) -> None:
        """Every field checked: a checkpoint's preprocessing is read from an untrusted file."""
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {self.in_chans}")
        if not _is_int(self.size) or self.size < 1:
            raise ValueError(f"image size must be a positive integer, got {self.size!r}")
        if self.source_size is not None and (not _is_int(self.source_size) or self.source_size < 1):
            raise ValueError(f"source size must be a positive integer, got {self.source_size!r}")
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise ValueError(
                f"mean and std need 1 or 3 values each, got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError(f"mean must be finite, got {list(self.mean)}")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"std must be positive and finite, got {list(self.std)}")

    @property
    def pad(self) -> int:
        """Pixels of zero padding per side (0 where we resize instead)."""
        if self.source_size is None:
            return 0
        extra = self.size - self.source_size
        return extra // 2 if 0 < extra <= PAD_LIMIT and extra % 2 == 0 else 0

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Mean and std with one entry per model input channel."""
        mean, std = list(self.mean), list(self.std)
        if len(mean) == 1 and self.in_chans == 3:
            return mean * 3, std * 3
        if len(mean) == 3 and self.in_chans == 1:
            return [sum(mean) / 3], [sum(std) / 3]
        return mean, std

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """From a checkpoint's metadata; ``ValueError`` if it is malformed."""
        try:
            return cls(
                size=_as_int(d["size"]),
                in_chans=_as_int(d["in_chans"]),
                mean=tuple(float(m) for m in d["mean"]),
                std=tuple(float(s) for s in d["std"]),
                source_size=None if d.get("source_size") is None else _as_int(d["source_size"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ValueError(f"malformed preprocessing metadata {d!r:.120}: {exc}") from None

    def geometry(self) -> v2.Transform:
        """Resize-or-pad to ``size`` x ``size`` (works on one image or a batch of tensors)."""
        from torchvision.transforms import v2

        if self.pad:
            return v2.Compose(
                [v2.Resize(self.source_size), v2.CenterCrop(self.source_size), v2.Pad(self.pad)]
            )
        return v2.Compose([v2.Resize(self.size, antialias=True), v2.CenterCrop(self.size)])

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (…, C, H, W) with C in {1, 3} to ``in_chans`` channels."""
        c = x.shape[-3]
        if c == self.in_chans:
            return x
        if c == 1:
            return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
        from torchvision.transforms import v2

        return v2.functional.rgb_to_grayscale(x, num_output_channels=1)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) to a normalised float batch (N, in_chans, size, size)."""
        x = self.channels(x)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = self.geometry()(x)
        mean, std = self.channel_stats()
        x = x.float().div_(255)
        m = torch.tensor(mean).view(1, -1, 1, 1)
        s = torch.tensor(std).view(1, -1, 1, 1)
        return x.sub_(m).div_(s)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _as_int(x: Any) -> int:
    """``x`` as an int if it is one (or a float holding one, as JSON may give); else
    ``ValueError`` (``int()`` would turn 2.7 into 2 and ``1e400`` into an OverflowError)."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if not _is_int(x):
        raise ValueError(f"expected an integer, got {x!r}")
    return x


def _augment(size: int) -> v2.Transform:
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(size, padding=size // 8), v2.RandomHorizontalFlip()])


def augment_batch(x: torch.Tensor) -> torch.Tensor:
    """Per-image random crop + flip on uint8 (N, C, S, S); v2 on a batch would share one draw."""
    crop = _augment(x.shape[-1])
    return torch.stack([crop(img) for img in x])


def erase_batch(x: torch.Tensor) -> torch.Tensor:
    """Per-image random erasing on a normalised float batch."""
    from torchvision.transforms import v2

    erase = v2.RandomErasing(p=0.25, value=0)
    return torch.stack([erase(img) for img in x])


def image_transform(pre: Preprocess, augment: bool = False) -> v2.Transform:
    """The pipeline for one decoded PIL image (ImageFolder, ``cnnlab predict``)."""
    from torchvision.transforms import v2

    mean, std = pre.channel_stats()
    steps: list[v2.Transform] = [v2.ToImage(), pre.geometry()]
    if augment:
        steps.append(_augment(pre.size))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if augment:
        steps.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose(steps)
