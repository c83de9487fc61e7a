"""cnnlab.data: the IDX reader, Fashion-MNIST search, ImageFolder, synthetic, transforms."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import (
    FASHION_MNIST_CLASSES,
    Preprocess,
    build_loaders,
    data_channels,
    find_fashion_mnist,
    read_idx,
    resolve_data,
    skipped_files,
)
from cnnlab.errors import CnnlabError
from cnnlab.train.inference import image_files


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion(folder: Path, n_train: int = 64, n_test: int = 32, gz: bool = True) -> Path:
    """Tiny Fashion-MNIST: label c images are bright in row band c (learnable)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 3] = 250
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def fashion(tmp_path: Path) -> Path:
    return write_fashion(tmp_path / "fmnist")


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, dtype: type, gz: bool) -> None:
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    data = idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out.numpy(), array)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
        (lambda b: b[:-5], "truncated or corrupt"),
        (lambda b: b + b"\x00", "truncated or corrupt"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: gzip.compress(b)[:-9], "corrupt gzip"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, mutate, message: str) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(mutate(idx_bytes(np.zeros((3, 4, 4), np.uint8))))
    with pytest.raises(CnnlabError, match=message):
        read_idx(path)


def test_search_order_path_then_env_then_system(tmp_path: Path, monkeypatch) -> None:
    a = write_fashion(tmp_path / "a", gz=False)
    b = write_fashion(tmp_path / "b" / "FashionMNIST" / "raw")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "b"))
    assert find_fashion_mnist(a) == a
    assert find_fashion_mnist(None) == b
    assert find_fashion_mnist(tmp_path / "empty") == b  # falls through to $CNNLAB_DATA


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    monkeypatch.setattr("cnnlab.data.datasets.FASHION_MNIST_SYSTEM_DIR", tmp_path / "none")
    with pytest.raises(CnnlabError, match="apt-get install dataset-fashion-mnist"):
        build_loaders("fashion-mnist", img_size=32, in_chans=1)


def test_download_uses_torchvision_layout(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    from cnnlab.data import download_fashion_mnist

    class FakeFashionMNIST:  # what torchvision's download leaves behind, without a network
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download
            write_fashion(Path(root) / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    assert download_fashion_mnist(tmp_path) == tmp_path / "FashionMNIST" / "raw"


def test_resolve_data_downloads_only_a_missing_fashion_mnist(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    class FakeFashionMNIST:  # what torchvision's download leaves behind, without a network
        def __init__(self, root: str, train: bool, download: bool) -> None:
            write_fashion(Path(root) / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    monkeypatch.setattr("cnnlab.data.datasets.FASHION_MNIST_SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "cache"))
    assert resolve_data("fashion-mnist") == "fashion-mnist"  # no download unless asked
    assert resolve_data("synthetic", download=True) == "synthetic"
    assert resolve_data(str(tmp_path), download=True) == str(tmp_path)  # a path: left alone
    got = resolve_data("fashion-mnist", download=True)
    assert got == str(tmp_path / "cache" / "FashionMNIST" / "raw")
    assert resolve_data("fmnist", download=True) == "fmnist"  # found now: no second download


def test_fashion_loaders_pad_to_32_and_normalise(fashion: Path) -> None:
    train, test, classes = build_loaders(str(fashion), img_size=32, in_chans=1, batch_size=16)
    assert classes == FASHION_MNIST_CLASSES and data_channels(str(fashion)) == 1
    x, y = next(iter(train))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 4 and len(test.dataset) == 32
    background = (0 - 0.2860) / 0.3530
    assert torch.allclose(x[:, :, :2, :], torch.full_like(x[:, :, :2, :], background))  # padding
    xt, yt = next(iter(test))
    row = 2 + 2 * int(yt[0]) + 1  # the bright band of its class, shifted by the 2-pixel pad
    assert xt[0, 0, row, 2:30].min() > 1.5


def test_fashion_as_rgb_resized_with_augmentation(fashion: Path) -> None:
    train, _, _ = build_loaders(
        str(fashion), img_size=40, in_chans=3, batch_size=8, augment=True, limit=16
    )
    x, _ = next(iter(train))
    assert x.shape == (8, 3, 40, 40)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey replicated
    assert len(train.dataset) == 16


def test_val_split_is_disjoint_and_seeded(fashion: Path) -> None:
    train, val, _ = build_loaders(str(fashion), img_size=28, in_chans=1, val_split=0.25, seed=3)
    t_idx, v_idx = set(train.dataset.indices), set(val.dataset.indices)
    assert len(v_idx) == 16 and len(t_idx) == 48 and not t_idx & v_idx
    again, _, _ = build_loaders(str(fashion), img_size=28, in_chans=1, val_split=0.25, seed=3)
    assert set(again.dataset.indices) == t_idx
    with pytest.raises(ValueError, match="val_split"):
        build_loaders(str(fashion), img_size=28, in_chans=1, val_split=1.5)


def test_sampler_shuffles_per_epoch_and_repeats_with_set_epoch() -> None:
    train, _, _ = build_loaders("synthetic", img_size=8, in_chans=3, batch_size=64)
    first = torch.cat([y for _, y in train])
    second = torch.cat([y for _, y in train])
    assert not torch.equal(first, second)  # a new order each pass
    train.sampler.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in train]), first)


def _image_folder(root: Path, per_class: int = 4, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
            pixels[..., c] = 255
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(pixels).save(root / name / f"{i}.{ext}")


def test_image_folder_skips_and_counts_corrupt_images(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train")
    _image_folder(tmp_path / "val", per_class=2)
    good = (tmp_path / "train" / "dog" / "0.jpg").read_bytes()
    (tmp_path / "train" / "dog" / "bad.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "train" / "cat" / "junk.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"skipping corrupt image .*(bad\.jpg|junk\.png)"):
        train, val, classes = build_loaders(str(tmp_path), img_size=16, in_chans=3, batch_size=4)
    assert classes == ["cat", "dog", "owl"]
    assert sorted(Path(p).name for p in skipped_files(train)) == ["bad.jpg", "junk.png"]
    assert len(train.dataset) == 12 and len(val.dataset) == 6
    x, y = next(iter(val))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    with pytest.raises(CnnlabError, match="corrupt image"):
        build_loaders(str(tmp_path), img_size=16, in_chans=3, strict=True)


@pytest.mark.filterwarnings("error")  # a hidden file is not a corrupt image to warn about
def test_hidden_entries_are_neither_classes_nor_images(tmp_path: Path) -> None:
    """Jupyter's .ipynb_checkpoints, macOS's ._x.png resource forks and .DS_Store."""
    _image_folder(tmp_path / "train")
    _image_folder(tmp_path / "val", per_class=2)
    _image_folder(tmp_path / "train" / ".ipynb_checkpoints")  # images that are not a class
    for split in ("train", "val"):
        (tmp_path / split / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (tmp_path / split / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "val" / ".ipynb_checkpoints").mkdir()  # not an unknown class either
    train, val, classes = build_loaders(str(tmp_path), img_size=16, in_chans=3, batch_size=4)
    assert classes == ["cat", "dog", "owl"] and not skipped_files(train)
    assert len(train.dataset) == 12 and len(val.dataset) == 6
    assert [f.name for f in image_files([str(tmp_path / "val" / "cat")])] == ["0.jpg", "1.png"]


def test_image_folder_single_folder_needs_val_split(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    with pytest.raises(CnnlabError, match="--val-split"):
        build_loaders(str(tmp_path), img_size=16, in_chans=1)
    train, val, _ = build_loaders(
        str(tmp_path), img_size=16, in_chans=1, val_split=0.25, augment=True, batch_size=3
    )
    assert len(train.dataset) == 9 and len(val.dataset) == 3
    assert next(iter(train))[0].shape == (3, 1, 16, 16)


def test_synthetic_and_bad_arguments(tmp_path: Path) -> None:
    train, _val, classes = build_loaders("synthetic", img_size=12, in_chans=1, batch_size=32)
    assert next(iter(train))[0].shape == (32, 1, 12, 12) and len(classes) == 10
    with pytest.raises(CnnlabError, match="neither"):
        build_loaders(str(tmp_path / "nowhere"), img_size=8, in_chans=3)
    with pytest.raises(ValueError, match="in_chans"):
        Preprocess(32, 2, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="batch_size"):
        build_loaders("synthetic", img_size=8, in_chans=3, batch_size=0)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_files() -> None:
    images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels.long()).tolist() == [1000] * 10


@pytest.mark.parametrize("val_split", [None, 0.5])
def test_image_folder_with_train_but_no_val_says_so(tmp_path: Path, val_split) -> None:
    _image_folder(tmp_path / "train")
    with pytest.raises(CnnlabError, match=r"has train/ but no val/ or test/"):
        build_loaders(str(tmp_path), img_size=16, in_chans=3, val_split=val_split)


def test_a_class_named_train_is_still_a_class(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    (tmp_path / "owl").rename(tmp_path / "train")  # CIFAR-100 has a class "train"
    _, _, classes = build_loaders(str(tmp_path), img_size=16, in_chans=3, val_split=0.25)
    assert classes == ["cat", "dog", "train"]


def test_image_folder_needs_two_classes_each_with_an_image(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train")
    _image_folder(tmp_path / "val", per_class=1)
    for f in (tmp_path / "train" / "owl").iterdir():
        f.write_bytes(b"")  # every owl unreadable: owl would never be seen in training
    empty = r"no readable image in class folder\(s\) \['owl'\]"
    with pytest.warns(UserWarning), pytest.raises(CnnlabError, match=empty):
        build_loaders(str(tmp_path), img_size=16, in_chans=3)
    for name in ("dog", "owl"):
        for f in (tmp_path / "train" / name).iterdir():
            f.unlink()
        (tmp_path / "train" / name).rmdir()
    with pytest.raises(CnnlabError, match=r"one class folder \('cat'\)"):
        build_loaders(str(tmp_path / "train"), img_size=16, in_chans=3, val_split=0.5)


@pytest.mark.parametrize("content", [b"", b"hello, not an image"])
def test_a_file_that_is_no_image_gets_a_reason_not_a_file_object(tmp_path, content) -> None:
    from cnnlab.data import BadImageError, load_image

    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(BadImageError) as exc:
        load_image(path, 3)
    assert exc.value.reason == "no image format recognised (empty, or not an image)"
    assert str(exc.value) == f"cannot read image {str(path)!r}: {exc.value.reason}"


def test_synthetic_images_memory_cannot_hold_are_refused(monkeypatch) -> None:
    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated before the memory check")

    monkeypatch.setattr(torch, "randn", no_alloc)
    monkeypatch.setattr("cnnlab.devices.available_memory", lambda device: 2**30)  # 1 GiB free
    with pytest.raises(CnnlabError, match=r"the synthetic data \(512 images of 3x4096x4096\)"):
        build_loaders("synthetic", img_size=4096, in_chans=3)


def test_a_batch_size_beyond_the_dataloaders_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"at most 2\*\*63 - 1, got 1180591620717411303424"):
        build_loaders("synthetic", img_size=8, in_chans=3, batch_size=2**70)


def test_a_16_bit_grey_image_is_scaled_not_clipped(tmp_path: Path) -> None:
    from cnnlab.data import load_image

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    for name in ("g16.png", "g16.tif"):
        for chans in (1, 3):
            pixels = np.asarray(load_image(tmp_path / name, chans), dtype=np.int64)
            expected = (ramp // 256).astype(np.int64)
            got = pixels if chans == 1 else pixels[..., 0]
            assert np.abs(got - expected).max() <= 1, name  # was 255 for all but 1/256


def test_a_folder_with_part_of_fashion_mnist_names_what_is_missing(tmp_path: Path) -> None:
    folder = write_fashion(tmp_path / "fmnist")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).unlink()
    missing = r"part of Fashion-MNIST; missing: t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    for val_split in (None, 0.1):  # not taken for an ImageFolder without class folders
        with pytest.raises(CnnlabError, match=missing):
            build_loaders(str(folder), img_size=28, in_chans=1, val_split=val_split)
