"""Hostile files (issue 14, items 5-9 and 12): every field read from a file is bounded before
it is used, a file pays for what it declares, only regular files are read, and each bad file
is one ``CnnlabError`` line naming it. docs/reliability.md lists the bounds.

The memory checks use ``tracemalloc``, which sees numpy's allocations (the .cnz decoder's).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import threading
import tracemalloc
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import codec
from cnnlab.cli import main
from cnnlab.codec import huffman
from cnnlab.codec.cnz import varint
from cnnlab.compress import save as save_cnz
from cnnlab.data import ImageFolderDataset, Preprocess, load_image, read_idx
from cnnlab.errors import CnnlabError
from cnnlab.saved import read_cnz, save_weights, torch_load_weights_only

MiB = 1 << 20


# --------------------------------------------------------------------------- helpers


def _shared_zero(name: str, shape: tuple[int, ...], index_bits: int = 8) -> bytes:
    """A SHARED float32 section declaring ``shape`` and holding no non-zero weight: a few
    bytes whatever the shape (the decoder used to allocate the whole tensor for it)."""
    body = varint(len(name)) + name.encode() + struct.pack("<BB", 0, len(shape))
    body += b"".join(varint(d) for d in shape) + bytes([2])  # encoding SHARED
    return body + varint(0) + bytes([index_bits]) + varint(0) + varint(0)


def _cnz(header: dict[str, Any], bodies: list[bytes]) -> bytes:
    head, _ = codec.split_sections(codec.encode_state_dict({}, header=header)[0])
    return codec.join_sections(head, bodies)


def _peak_mib(fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    """Peak traced allocation (MiB) while ``fn`` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except BaseException as exc:
        raised = exc
    peak = tracemalloc.get_traced_memory()[1] / MiB
    tracemalloc.stop()
    return peak, raised


def _refused_cheaply(fn: Callable[[], Any], match: str, limit_mib: float = 16) -> None:
    peak, raised = _peak_mib(fn)
    assert isinstance(raised, CnnlabError), f"expected a CnnlabError, got {raised!r}"
    assert len(str(raised).splitlines()) == 1
    assert match in str(raised), str(raised)
    assert peak < limit_mib, f"{peak:.0f} MiB allocated before refusing"


def _returns_within(seconds: float, fn: Callable[[], Any], fifo: Path) -> Any:
    """``fn()``'s result or exception, failing the test if it blocks (on the FIFO ``fifo``)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        with open(fifo, "wb"):  # a writer unblocks the reader so the thread can end
            pass
        thread.join(5)
        pytest.fail(f"blocked on the FIFO {fifo}")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _assert_error_names(err: str, *words: str) -> None:
    """The CLI's stderr: no traceback, one closing error line, every word said (predict names
    each bad image on a line of its own before the error line)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("cnnlab: error:"), err
    assert all(w in err for w in words), err


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (grey, 1 bit) with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    path.write_bytes(png + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    model = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    save_cnz(model, root / "m.cnz")
    cnnlab.save(model, root / "m.safetensors", preprocess=Preprocess(32, 1, (0.5,), (0.25,)))
    return {"model": model, "cnz": root / "m.cnz", "safetensors": root / "m.safetensors"}


# --------------------------------------------------------------------------- item 8


def test_tiny_cnz_declaring_a_giant_tensor_allocates_nothing(tmp_path: Path) -> None:
    """140 bytes declaring 2**28 float32 (1 GiB): the declared elements must be paid for by
    the file's bytes (codec.element_budget) before anything is decoded or written."""
    path = tmp_path / "big.cnz"
    path.write_bytes(_cnz({"model": None}, [_shared_zero("x", (1 << 14, 1 << 14))]))
    assert path.stat().st_size < 200
    _refused_cheaply(lambda: codec.read(path), "more than a file of")
    _refused_cheaply(lambda: cnnlab.load(path, "lenet5"), "big.cnz")
    out = tmp_path / "big.safetensors"
    assert main(["decompress", str(path), "--out", str(out)]) == 2
    assert not out.exists()


def test_issue_file_declaring_2_to_the_31_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.cnz"
    path.write_bytes(_cnz({"model": None}, [_shared_zero("w", (1 << 16, 1 << 15))]))
    _refused_cheaply(lambda: codec.read(path), "2,147,483,648 elements")


def test_element_budget() -> None:
    assert codec.element_budget(100) == codec.cnz.FREE_ELEMENTS
    assert codec.element_budget(1 << 20) == codec.cnz.ELEMENTS_PER_BYTE << 20
    assert codec.element_budget(1 << 40) == codec.MAX_ELEMENTS


# --------------------------------------------------------------------------- item 5


def _lenet_lie(num_classes: int, fc_rows: int) -> bytes:
    """A lenet5 .cnz whose header says ``num_classes`` and whose last layer declares
    ``fc_rows`` outputs, every tensor an all-zero SHARED section of a few bytes."""
    with torch.device("meta"):
        ref = cnnlab.create_model("lenet5", num_classes=10, in_chans=1).state_dict()
    bodies = []
    for key, tensor in ref.items():
        shape = tuple(tensor.shape)
        if key.startswith("head."):  # lenet5's classifier
            shape = (fc_rows, *shape[1:])
        bodies.append(_shared_zero(key, shape))
    header = {"model": "lenet5", "config": {"num_classes": num_classes, "in_chans": 1}}
    return _cnz(header, bodies)


def test_cnz_header_num_classes_is_bounded_before_decoding(tmp_path: Path) -> None:
    """2 million classes with matching all-zero tensors: refused before the 672 MB decode."""
    path = tmp_path / "classes.cnz"
    path.write_bytes(_lenet_lie(2_000_000, 2_000_000))
    _refused_cheaply(lambda: cnnlab.load(path), "2000000 classes is outside 1..100000")


def test_cnz_declared_shapes_are_checked_against_the_model_before_decoding(
    tmp_path: Path,
) -> None:
    """Within the element budget, but not lenet5's shapes: refused on 'meta', nothing decoded."""
    path = tmp_path / "shapes.cnz"
    path.write_bytes(_lenet_lie(10, 100_000))
    _refused_cheaply(lambda: cnnlab.load(path), "does not fit lenet5", limit_mib=4)
    _refused_cheaply(lambda: read_cnz(path), "does not fit lenet5", limit_mib=4)
    plain = tmp_path / "plain.cnz"  # no model named: plain tensors, the element budget only
    plain.write_bytes(codec.encode_state_dict({"a": torch.ones(3)}, header={"model": None})[0])
    assert torch.equal(read_cnz(plain)[1]["a"], torch.ones(3))
    out = tmp_path / "d.safetensors"
    assert main(["eval", "lenet5", "--checkpoint", str(path), "--data", "synthetic"]) == 2
    assert main(["decompress", str(path), "--out", str(out)]) == 2 and not out.exists()


def test_cnz_model_keywords_cannot_build_a_giant_model(tmp_path: Path) -> None:
    header = {"model": "mobilenet_v1", "config": {"num_classes": 10, "in_chans": 3, "alpha": 1e6}}
    path = tmp_path / "alpha.cnz"
    path.write_bytes(_cnz(header, [_shared_zero("x", (4, 4))]))
    _refused_cheaply(lambda: cnnlab.load(path), "would hold")
    header["config"] = {"num_classes": 10, "in_chans": 3, "act": "x" * 100_000}
    path.write_bytes(_cnz(header, [_shared_zero("x", (4, 4))]))
    with pytest.raises(CnnlabError, match="cannot build") as info:
        cnnlab.load(path)
    assert len(str(info.value)) < 1000, "a value the file chose is cut short in the message"
    header["config"] = {"num_classes": 10, "in_chans": 3, "alpha": [1]}
    path.write_bytes(_cnz(header, [_shared_zero("x", (4, 4))]))
    _refused_cheaply(lambda: cnnlab.load(path), "model keywords must map")


def test_bad_model_keywords_in_a_safetensors_file_name_the_file(
    tmp_path: Path, lenet: dict
) -> None:
    path = tmp_path / "kw.safetensors"
    save_weights(lenet["model"], path, {"model": "lenet5", "model_kwargs": {"drop_rate": 5}})
    with pytest.raises(CnnlabError) as info:
        cnnlab.load(path)
    assert str(info.value).startswith(f"{str(path)!r}: cannot build 'lenet5' with {{'drop_rate'")


def test_cnz_header_in_chans_and_img_size(tmp_path: Path, lenet: dict) -> None:
    header, tensors = codec.read(lenet["cnz"])
    path = tmp_path / "h.cnz"
    header["config"]["in_chans"] = 1000
    path.write_bytes(codec.encode_state_dict(tensors, header=header)[0])
    _refused_cheaply(lambda: cnnlab.load(path), "in_chans must be 1 (grey) or 3 (RGB)")
    # An img_size of 20000 in the header's extra is not used: the model's own size is.
    header["config"]["in_chans"], header["extra"] = 1, {"img_size": 20000}
    path.write_bytes(codec.encode_state_dict(tensors, header=header)[0])
    _, meta = cnnlab.load(path)
    assert meta["preprocess"]["size"] == 32 and "preprocess" in meta["assumed"]


def test_cnz_header_and_class_names_are_bounded(tmp_path: Path, lenet: dict) -> None:
    header, tensors = codec.read(lenet["cnz"])
    path = tmp_path / "names.cnz"
    header["extra"] = {"class_names": ["x" * 2000] + [str(i) for i in range(9)]}
    path.write_bytes(codec.encode_state_dict(tensors, header=header)[0])
    _refused_cheaply(lambda: cnnlab.load(path), "longer than 1024 characters")
    header["extra"] = {"pad": "x" * (codec.cnz.MAX_HEADER_BYTES + 1)}
    path.write_bytes(codec.encode_state_dict(tensors, header=header)[0])
    _refused_cheaply(lambda: codec.read(path), "above the limit", limit_mib=8)
    deep = b'{"format": "cnnlab-cnz", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    data = bytearray(codec.encode_state_dict({}, header={})[0])
    start = len(codec.MAGIC) + 5
    n = struct.unpack("<I", data[start - 4 : start])[0]
    data[start - 4 : start + n + 4] = struct.pack("<I", len(deep)) + deep
    data[start + len(deep) : start + len(deep) + 4] = struct.pack("<I", zlib.crc32(deep))
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    path.write_bytes(bytes(data))
    _refused_cheaply(lambda: codec.read(path), "not valid UTF-8 JSON")


BAD_PREPROCESS = [
    ({"size": 20000}, "above the limit 4096"),
    ({"size": float("inf")}, "expected an integer"),  # what JSON's 1e400 becomes
    ({"size": -3}, "positive integer"),
    ({"size": 2.5}, "expected an integer"),
    ({"size": 0}, "positive integer"),
    ({"mean": [float("nan")]}, "mean must be finite"),
    ({"std": [0.0]}, "std must be positive and finite"),
    ({"std": [-1.0]}, "std must be positive and finite"),
    ({"std": [0.2, 0.2]}, "1 or 3 values"),
    ({"source_size": 1e400}, "expected an integer"),
]


@pytest.mark.parametrize(("change", "message"), BAD_PREPROCESS)
def test_stored_preprocessing_is_checked_and_names_the_file(
    tmp_path: Path, lenet: dict, change: dict, message: str
) -> None:
    pre = {"size": 32, "in_chans": 1, "mean": [0.5], "std": [0.25], "source_size": None}
    path = tmp_path / "pre.safetensors"
    save_weights(lenet["model"], path, {"model": "lenet5", "preprocess": pre | change})
    with pytest.raises(CnnlabError, match=message) as info:
        cnnlab.load(path)
    assert str(info.value).startswith(repr(str(path))), "the file, not an image, is named"


def test_json_1e400_size_in_a_checkpoint(tmp_path: Path, lenet: dict) -> None:
    """The literal the issue used: JSON ``1e400`` (Python reads it as inf) was an
    OverflowError traceback."""
    path = tmp_path / "e400.safetensors"
    save_weights(lenet["model"], path, {"model": "lenet5"})
    from safetensors.torch import load_file, save_file

    raw = '{"size": 1e400, "in_chans": 1, "mean": [0.5], "std": [0.25]}'
    save_file(load_file(path), str(path), metadata={"format": "cnnlab.weights/1",
              "model": '"lenet5"', "preprocess": raw})  # fmt: skip
    with pytest.raises(CnnlabError, match="expected an integer"):
        cnnlab.load(path)


def test_zero_std_is_blamed_on_the_checkpoint_not_the_image(
    tmp_path: Path, lenet: dict, capsys: pytest.CaptureFixture
) -> None:
    pre = {"size": 32, "in_chans": 1, "mean": [0.5], "std": [0.0]}
    path = tmp_path / "zero.safetensors"
    save_weights(lenet["model"], path, {"model": "lenet5", "preprocess": pre})
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (32, 32), 9).save(image)
    assert main(["predict", "lenet5", "--checkpoint", str(path), str(image)]) == 2
    err = capsys.readouterr().err
    _assert_error_names(err, "zero.safetensors", "std must be positive")
    assert "x.png" not in err


# --------------------------------------------------------------------------- item 6


def test_huffman_blocks_must_fit_their_symbols_before_allocating() -> None:
    """16k blocks claiming 0 bits each used to cost a (blocks x 1024) int64 table: 128 MiB
    from 32 KiB. Each block of n symbols must span n to 20n bits."""
    count = 1024 * 16384
    lengths = np.array([1, 1])
    blocks = np.zeros(16384, dtype=np.int64)
    blocks[-1] = 8
    peak, raised = _peak_mib(lambda: huffman.decode(b"\0", lengths, count, blocks))
    assert isinstance(raised, ValueError) and "does not fit its number of symbols" in str(raised)
    assert peak < 4
    with pytest.raises(ValueError, match="does not fit"):
        huffman.decode(b"\0" * 200, lengths, 10, np.array([21 * 10]))


def test_huffman_stream_claims_are_checked_against_the_bytes_present(tmp_path: Path) -> None:
    """A SHARED section whose index stream claims 16M symbols in a 32 KiB file: refused by
    the stream's own lengths, before the decoder allocates anything per symbol."""
    n_blocks = 16384
    stream = varint(1024 * n_blocks) + varint(2) + bytes([0b00001000, 0b01000000])
    stream += varint(n_blocks * 1024) + b"\0\0" * (n_blocks - 1) + b"\0"
    body = varint(1) + b"w" + struct.pack("<BB", 0, 2) + varint(4096) + varint(4096)
    body += bytes([2]) + varint(1) + struct.pack("<i", 0x3F800000) + bytes([8]) + stream
    path = tmp_path / "stream.cnz"
    path.write_bytes(_cnz({"model": None}, [body]))
    assert path.stat().st_size < 40_000
    _refused_cheaply(lambda: codec.read(path), "bytes are left", limit_mib=4)


def test_decoding_a_bad_stream_costs_memory_bounded_by_its_bytes() -> None:
    """A 2 MB SHARED tensor of 8M one-bit codes whose last code is broken: refused after at
    most ~160 bytes allocated per byte present (the Huffman windows are per group, symbols
    uint16, positions int32 a chunk at a time); it used to take 654 MiB."""
    data, _ = codec.encode_state_dict(
        {"w": torch.full((1000, 8000), 0.5)}, header={"model": None}, index_bits={"w": 8}
    )
    head, bodies = codec.split_sections(data)
    bad = codec.join_sections(head, [bodies[0][:-1] + bytes([bodies[0][-1] ^ 0xFF])])
    peak, raised = _peak_mib(lambda: codec.decode_bytes(bad))
    assert isinstance(raised, ValueError) and "invalid Huffman code" in str(raised)
    assert peak < 160 * len(bad) / MiB, f"{peak:.0f} MiB for a {len(bad) / MiB:.1f} MiB file"


# --------------------------------------------------------------------------- item 7


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.png"
    os.mkfifo(path)
    return path


def test_fifo_and_devices_are_refused_without_reading(fifo: Path) -> None:
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(CnnlabError, match="not a regular file"):
            _returns_within(10, lambda p=path: codec.read(p), fifo)
        with pytest.raises(CnnlabError, match="not a regular file"):
            _returns_within(10, lambda p=path: cnnlab.load(p, "lenet5"), fifo)
        assert not codec.is_cnz(path)
    with pytest.raises(CnnlabError, match="not a regular file"):
        _returns_within(10, lambda: load_image(fifo, 1), fifo)
    with pytest.raises(CnnlabError, match="not a regular file"):
        _returns_within(10, lambda: read_idx(fifo), fifo)


def test_a_run_folder_whose_best_is_a_fifo_is_refused(fifo: Path, lenet: dict) -> None:
    """It used to fall back to last.safetensors without a word: other weights than 'best'."""
    run = fifo.parent / "run"
    run.mkdir()
    os.mkfifo(run / "best.safetensors")
    (run / "last.safetensors").write_bytes(lenet["safetensors"].read_bytes())
    with pytest.raises(CnnlabError, match=r"best\.safetensors' is not a regular file"):
        _returns_within(10, lambda: cnnlab.load(run), run / "best.safetensors")


def test_a_layout_prefix_does_not_skip_the_file_checks(fifo: Path, tmp_path: Path) -> None:
    """``torchvision:PATH`` and ``timm:PATH`` used to go straight to torch.load: a FIFO
    blocked, /dev/zero was read until memory ran out, a missing file was a FileNotFoundError."""
    empty = tmp_path / "empty.pth"
    empty.touch()
    cases = {fifo: "not a regular file", tmp_path: "not a regular file",
             tmp_path / "no.pth": "does not exist", empty: r"is empty \(0 bytes\)"}  # fmt: skip
    for layout, name in (("torchvision", "resnet18"), ("timm", "mobilenet_v1")):
        for path, message in cases.items():
            with pytest.raises(CnnlabError, match=message):
                _returns_within(10, lambda s=f"{layout}:{path}", n=name: cnnlab.load(s, n), fifo)
        with pytest.raises(CnnlabError, match=f"no file name in checkpoint '{layout}:'"):
            cnnlab.load(f"{layout}:", name)


def test_cli_fifo_checkpoint_and_fifo_image_are_one_error(
    fifo: Path, lenet: dict, capsys: pytest.CaptureFixture
) -> None:
    for argv in (
        ["decompress", str(fifo), "--out", str(fifo.with_name("o.safetensors"))],
        ["eval", "lenet5", "--checkpoint", str(fifo), "--data", "synthetic"],
        ["predict", "lenet5", "--checkpoint", str(lenet["cnz"]), str(fifo)],
        ["export", "resnet18", "--checkpoint", f"torchvision:{fifo}", "--out", str(fifo) + ".onnx"],
    ):
        assert _returns_within(30, lambda a=argv: main(a), fifo) == 2
        _assert_error_names(capsys.readouterr().err, "fifo.png", "not a regular file")


def test_image_folder_skips_fifos_with_a_warning(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8), 3).save(tmp_path / cls / "ok.png")
    os.mkfifo(tmp_path / "a" / "pipe.png")
    pre = Preprocess(8, 3, (0.5,), (0.5,))
    with pytest.warns(UserWarning, match=r"pipe\.png.*not a regular file"):
        ds = _returns_within(
            10, lambda: ImageFolderDataset(tmp_path, pre), tmp_path / "a" / "pipe.png"
        )
    assert len(ds) == 2 and ds.skipped == [str(tmp_path / "a" / "pipe.png")]


def test_cnz_read_is_bounded_by_the_file_size(
    tmp_path: Path, lenet: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = lenet["cnz"].read_bytes()
    path = tmp_path / "tail.cnz"
    path.write_bytes(data[:-4] + b"junk" + data[-4:])  # bytes past what the header declares
    with pytest.raises(CnnlabError, match=r"checksum|trailing"):
        codec.read(path)
    monkeypatch.setattr(codec.cnz, "MAX_FILE_BYTES", len(data) - 1)
    with pytest.raises(CnnlabError, match="above the compressed model limit"):
        codec.read(lenet["cnz"])


def test_gzip_bomb_idx_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from cnnlab.data import idx

    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", 4 << 20) + bytes(4 << 20)))
    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 1 << 20)
    with pytest.raises(CnnlabError, match="unpacks to more than"):
        read_idx(path)


# --------------------------------------------------------------------------- item 9


@pytest.mark.parametrize("side", [20000, 10000])  # PIL's error (> 2 x 89 Mpx), PIL's warning
def test_decompression_bomb_png_is_a_bad_image(tmp_path: Path, side: int) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", side, side)
    _refused_cheaply(lambda: load_image(bomb, 3), "above the limit 67,108,864")
    from cnnlab.data import BadImageError

    with pytest.raises(BadImageError) as info:
        load_image(bomb, 3)
    assert info.value.path == str(bomb) and "pixels" in info.value.reason


def test_decompression_bomb_in_a_folder_is_skipped_with_a_warning(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("L", (8, 8), 3).save(tmp_path / cls / "ok.png")
    _png_header_only(tmp_path / "b" / "bomb.png", 20000, 20000)
    pre = Preprocess(8, 1, (0.5,), (0.5,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(tmp_path, pre)
    assert len(ds) == 2 and ds.skipped == [str(tmp_path / "b" / "bomb.png")]
    assert any("bomb.png" in str(w.message) and "pixels" in str(w.message) for w in caught)


def test_pixel_limit_is_ours_not_pils_global(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's own check switched off
    bomb = _png_header_only(tmp_path / "bomb.png", 10000, 10000)
    with pytest.raises(CnnlabError, match="above the limit"):
        load_image(bomb, 1)


def test_predict_bomb_image_is_one_error_line(
    tmp_path: Path, lenet: dict, capsys: pytest.CaptureFixture
) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    assert main(["predict", "lenet5", "--checkpoint", str(lenet["cnz"]), str(bomb)]) == 2
    _assert_error_names(capsys.readouterr().err, "bomb.png", "pixels is above the limit")


# --------------------------------------------------------------------------- item 12


def test_refused_pickle_message_is_plain(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(CnnlabError) as info:
        cnnlab.load(path, "lenet5")
    assert str(info.value) == (
        f"{str(path)!r} is not a weights-only checkpoint (it holds pickled code); "
        "it was refused and not loaded"
    )
    assert "weights_only=False" not in str(info.value) and not (tmp_path / "ran").exists()


def test_a_corrupt_pickle_is_not_called_code(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CnnlabError) as info:
        cnnlab.load(path, "lenet5")
    text = str(info.value)
    assert "is not a readable weights file: Unsupported operand" in text
    assert "pickled code" not in text and "weights_only" not in text


def test_long_torch_errors_are_cut_at_a_word(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"not a torch file")
    text = " ".join(["word"] * 100)

    def fail(*args, **kwargs):
        raise ValueError(text + "\nsecond line")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(CnnlabError) as info:
        torch_load_weights_only(path)
    message = str(info.value)
    assert message.endswith("word ...") and "second line" not in message
    assert len(message.split(": ", 1)[1]) <= 164


def test_safetensors_metadata_json_is_bounded(tmp_path: Path, lenet: dict) -> None:
    path = tmp_path / "deep.safetensors"
    save_weights(lenet["model"], path, {"model": "lenet5"})
    from safetensors.torch import load_file, save_file

    meta = {"format": "cnnlab.weights/1", "model": json.dumps("lenet5"),
            "x": "[" * 50_000 + "]" * 50_000}  # fmt: skip
    save_file(load_file(path), str(path), metadata=meta)
    with pytest.raises(CnnlabError, match="corrupt checkpoint metadata"):
        cnnlab.load(path)


# --------------------------------------------------------------------------- tensors in a file


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda w: w.to_sparse(), "sparse_coo"),
        (lambda w: torch.empty(w.shape, device="meta"), "meta"),
        (lambda w: w.to(torch.complex64), "complex64"),
    ],
    ids=["sparse", "meta", "complex"],
)
def test_a_pth_of_non_dense_tensors_is_one_error(
    tmp_path: Path, lenet: dict, make: Callable, kind: str, capsys
) -> None:
    state = dict(lenet["model"].state_dict())
    state["features.c1.weight"] = make(state["features.c1.weight"])
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    message = f"'features.c1.weight' is not a plain tensor of real numbers ({kind})"
    with pytest.raises(CnnlabError, match=re.escape(message)):
        cnnlab.load(path, "lenet5")
    assert main(["summary", "lenet5", "--checkpoint", str(path)]) == 2
    _assert_error_names(capsys.readouterr().err, "odd.pth", message)


def test_legacy_torch_files_load_and_a_lying_storage_size_is_one_line(
    tmp_path: Path, capsys
) -> None:
    """torch.save's pre-1.6 format (a pickle, then raw storages): read weights-only; a storage
    that claims 2**31 - 1 elements is refused in words, not torch's unfilled "%ld"."""
    model = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    good = tmp_path / "old.pt"
    torch.save(model.state_dict(), good, _use_new_zipfile_serialization=False)
    loaded, meta = cnnlab.load(good, "lenet5")
    assert meta["kind"] == "state-dict"
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(70_000)}, buffer, _use_new_zipfile_serialization=False)
    numel = b"J" + struct.pack("<i", 70_000)  # BININT: the storage's size and the shape
    assert buffer.getvalue().count(numel) == 2
    lying = tmp_path / "lying.pt"
    lying.write_bytes(buffer.getvalue().replace(numel, b"J" + struct.pack("<i", 2**31 - 1)))
    assert main(["predict", "lenet5", "--checkpoint", str(lying), "x.png"]) == 2
    _assert_error_names(capsys.readouterr().err, "lying.pt", "not the size its header declares")


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_weights_holding_nan_or_infinity_are_refused(
    tmp_path: Path, lenet: dict, value: float, capsys
) -> None:
    broken = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    with torch.no_grad():
        broken.features.c1.weight[0, 0, 0, 0] = value
    files = [tmp_path / "w.safetensors", tmp_path / "w.pth", tmp_path / "w.cnz"]
    with pytest.raises(CnnlabError, match=r"features\.c1\.weight holds NaN .*: not saved"):
        cnnlab.save(broken, files[0])  # a file no command would load
    assert not files[0].exists()
    save_weights(broken, files[0], {"model": "lenet5"})  # as another writer could
    torch.save(broken.state_dict(), files[1])
    save_cnz(broken, files[2])
    target = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    before = target.features.c1.weight.clone()
    for path in files:
        with pytest.raises(CnnlabError, match=r"features\.c1\.weight holds NaN or infinite values"):
            cnnlab.load(path, target)
        assert torch.equal(target.features.c1.weight, before)  # left untouched
        assert main(["predict", "lenet5", "--checkpoint", str(path), "x.png"]) == 2
        _assert_error_names(capsys.readouterr().err, path.name, "NaN or infinite")


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.int64])
def test_integer_weights_for_float_parameters_are_refused(
    tmp_path: Path, lenet: dict, dtype: torch.dtype
) -> None:
    from safetensors.torch import save_file

    state = {k: v.to(dtype) for k, v in lenet["model"].state_dict().items()}
    meta = {"format": "cnnlab.weights/1", "model": '"lenet5"'}
    save_file(state, str(tmp_path / "w.safetensors"), metadata=meta)
    torch.save(state, tmp_path / "w.pth")
    name = str(dtype).removeprefix("torch.")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        with pytest.raises(CnnlabError, match=f"dtype features.c1.weight {name} vs float32"):
            cnnlab.load(path, "lenet5")
    half = {k: v.half() for k, v in lenet["model"].state_dict().items()}
    torch.save(half, tmp_path / "half.pth")  # another float type is converted, as before
    assert cnnlab.load(tmp_path / "half.pth", "lenet5")[0].features.c1.weight.dtype == torch.float32
