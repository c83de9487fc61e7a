"""The ``.cnz`` file: a compressed model that really is small and really loads back.

Layout (every integer little-endian; ``varint`` = unsigned LEB128; docs/compression.md has the
byte-by-byte table)::

    magic      8 bytes   89 43 4E 5A 0D 0A 1A 0A   ("\\x89CNZ\\r\\n\\x1a\\n", PNG-style)
    version    u8        1
    hdr_len    u32       length of the JSON header
    header     hdr_len   UTF-8 JSON: {"format", "model", "config", "extra"} (never pickle)
    hdr_crc    u32       CRC32 of the header bytes
    n_sections u32       one section per state-dict tensor
    sections   n x [ body_len u32 | body | CRC32(body) u32 ]
    file_crc   u32       CRC32 of every byte before it

    body = name_len varint | name UTF-8 | dtype u8 | ndim u8 | dims varint x ndim
           | encoding u8 | payload

Encodings: RAW (the tensor's bytes), HALF (a float32 tensor whose values are all exact in
float16, stored as float16) and SHARED (Deep Compression, Han et al. 2016, sections 2-4: a
float32 codebook, the positions of the non-zero weights as Huffman-coded relative indices with
filler entries, and the Huffman-coded codebook index of every non-zero weight). Decoding is
exact: every tensor comes back bit for bit.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cnnlab.codec import huffman
from cnnlab.errors import CnnlabError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CnzReport",
    "Section",
    "TensorReport",
    "decode_bytes",
    "element_budget",
    "encode_state_dict",
    "is_cnz",
    "join_sections",
    "open_regular",
    "parse_section",
    "read",
    "read_file_bytes",
    "relative_indices",
    "split_sections",
    "varint",
]

MAGIC = b"\x89CNZ\r\n\x1a\n"
FORMAT_VERSION = 1
RAW, HALF, SHARED = 0, 1, 2
ENCODING_NAMES = {RAW: "raw", HALF: "half", SHARED: "shared"}
MAX_SHARED_CODEBOOK = 1 << 16  # weights with more distinct values are stored raw
MAX_INDEX_BITS = 16
MAX_ELEMENTS = 1 << 31  # in all; a tiny sparse file must not claim a giant tensor
FREE_ELEMENTS = 1 << 24  # elements any file may declare (64 MiB of float32)
ELEMENTS_PER_BYTE = 64  # beyond those, elements per byte of file (Deep Compression: ~12)
MAX_HEADER_BYTES = 1 << 20  # the JSON header (class names of 100k classes fit)
MAX_FILE_BYTES = 4 << 30  # a .cnz file is read whole; VGG-16 stored raw is 0.55 GB
CHUNK = 1 << 20  # symbols per step where a whole stream would need a large temporary
LENGTH_BITS = 5  # Huffman code lengths (<= 20) are stored in 5 bits each

_DTYPES: list[torch.dtype] = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
_DTYPE_CODE = {dt: i for i, dt in enumerate(_DTYPES)}


class _Corrupt(ValueError):
    """A structural problem in a .cnz file (turned into one CnnlabError line by the loaders)."""


# --------------------------------------------------------------------------- report


@dataclass
class TensorReport:
    """What one section of the file holds and how many bytes each part takes."""

    name: str
    numel: int
    encoding: str
    bytes: int  # the whole section: framing, name, shape, codebook, tables, streams
    nonzero: int
    codebook_size: int = 0
    weight_bits: int = 0  # fixed-width bits per weight index, ceil(log2(codebook size))
    index_bits: int = 0  # fixed width of a relative position index
    weight_stream_bits: int = 0  # Huffman-coded weight indices, in bits
    index_stream_bits: int = 0  # Huffman-coded relative indices (fillers included), in bits
    index_entries: int = 0  # relative indices including fillers


@dataclass
class CnzReport:
    """Byte accounting of a whole file: ``size`` is the file size, every byte included."""

    size: int
    header_bytes: int
    tensors: list[TensorReport] = field(default_factory=list)


# --------------------------------------------------------------------------- encoding


def varint(n: int) -> bytes:
    """``n`` >= 0 as the format's unsigned LEB128 integer (7 bits a byte, low bits first)."""
    if n < 0:
        raise ValueError(f"varint must be non-negative, got {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pack_lengths(lengths: np.ndarray) -> bytes:
    """Code lengths up to the last used symbol, ``LENGTH_BITS`` bits each, MSB first."""
    used = int(np.flatnonzero(lengths)[-1]) + 1
    bits = ((lengths[:used, None] >> np.arange(LENGTH_BITS - 1, -1, -1)) & 1).astype(np.uint8)
    return varint(used) + np.packbits(bits.reshape(-1)).tobytes()


def _encode_stream(symbols: np.ndarray, alphabet: int) -> tuple[bytes, int]:
    """One Huffman stream: count, code lengths, total bits, block lengths, bits."""
    out = bytearray(varint(len(symbols)))
    if len(symbols) == 0:
        return bytes(out), 0
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    data, block_bits = huffman.encode(symbols, lengths)
    total = int(block_bits.sum())
    out += _pack_lengths(lengths)
    out += varint(total)
    out += block_bits[:-1].astype("<u2").tobytes()
    out += data
    return bytes(out), total


def relative_indices(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Gaps between non-zero positions; a gap too wide for ``index_bits`` gets filler symbols.

    Symbol ``M = 2**index_bits - 1`` is a filler: "skip M positions, no weight here". Any other
    symbol ``g`` means "the next weight is ``g + 1`` positions after the previous one".
    """
    top = (1 << index_bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // top
    out_len = len(gaps) + int(fillers.sum())
    symbols = np.full(out_len, top, dtype=np.int64)
    # each weight's own symbol comes after its fillers
    ends = np.cumsum(fillers + 1) - 1
    symbols[ends] = gaps % top
    return symbols


def _shared_payload(flat_bits: np.ndarray, index_bits: int) -> tuple[bytes, TensorReport] | None:
    """SHARED payload of a float32 tensor given as int32 bit patterns, or None if not shareable."""
    positions = np.flatnonzero(flat_bits)
    values = flat_bits[positions]
    sample = values[:: max(1, len(values) // 100_000)]
    if len(np.unique(sample)) > MAX_SHARED_CODEBOOK:
        return None
    codebook, weight_idx = np.unique(values, return_inverse=True)
    if len(codebook) > MAX_SHARED_CODEBOOK:
        return None
    gaps = relative_indices(positions, index_bits)
    out = bytearray(varint(len(codebook)))
    out += codebook.astype("<i4").tobytes()
    out += struct.pack("<B", index_bits)
    gap_bytes, gap_bits = _encode_stream(gaps, 1 << index_bits)
    weight_bytes, weight_bits = _encode_stream(weight_idx.reshape(-1), max(1, len(codebook)))
    out += gap_bytes + weight_bytes
    report = TensorReport(
        name="",
        numel=len(flat_bits),
        encoding="shared",
        bytes=0,
        nonzero=len(positions),
        codebook_size=len(codebook),
        weight_bits=max(1, math.ceil(math.log2(max(1, len(codebook))))),
        index_bits=index_bits,
        weight_stream_bits=weight_bits,
        index_stream_bits=gap_bits,
        index_entries=len(gaps),
    )
    return bytes(out), report


def _encode_tensor(name: str, tensor: torch.Tensor, index_bits: int) -> tuple[bytes, TensorReport]:
    if tensor.dtype not in _DTYPE_CODE:
        raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} is not supported by .cnz")
    if tensor.dim() > 255:
        raise ValueError(f"tensor {name!r} has too many dimensions")
    tensor = tensor.detach().cpu().contiguous()
    raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    nonzero = int(torch.count_nonzero(tensor))
    options: list[tuple[int, bytes, TensorReport | None]] = [(RAW, raw, None)]
    if tensor.dtype == torch.float32 and tensor.numel():
        half = tensor.half()
        if torch.equal(half.float().view(torch.int32), tensor.view(torch.int32)):
            options.append((HALF, half.reshape(-1).view(torch.uint8).numpy().tobytes(), None))
        if tensor.dim() >= 2:
            shared = _shared_payload(tensor.reshape(-1).view(torch.int32).numpy(), index_bits)
            if shared is not None:
                options.append((SHARED, *shared))
    encoding, payload, report = min(options, key=lambda o: len(o[1]))
    name_bytes = name.encode("utf-8")
    body = bytearray(varint(len(name_bytes)) + name_bytes)
    body += struct.pack("<BB", _DTYPE_CODE[tensor.dtype], tensor.dim())
    for d in tensor.shape:
        body += varint(int(d))
    body += struct.pack("<B", encoding)
    body += payload
    section = struct.pack("<I", len(body)) + bytes(body) + struct.pack("<I", zlib.crc32(body))
    if report is None:
        report = TensorReport(name, tensor.numel(), ENCODING_NAMES[encoding], 0, nonzero)
    report.name = name
    report.bytes = len(section)
    return section, report


def encode_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    header: Mapping[str, Any] | None = None,
    index_bits: Mapping[str, int] | None = None,
    default_bits: int = 8,
) -> tuple[bytes, CnzReport]:
    """The bytes of a .cnz file holding ``state_dict`` and its byte accounting.

    ``index_bits`` gives the relative-index width per tensor name (Deep Compression: 8 for conv,
    5 for fc; see :func:`default_index_bits`), ``default_bits`` the width for any other tensor.
    """
    head = json.dumps(
        {"format": "cnnlab-cnz", **(header or {})}, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")
    out = bytearray(MAGIC + struct.pack("<BI", FORMAT_VERSION, len(head)))
    out += head + struct.pack("<I", zlib.crc32(head))
    out += struct.pack("<I", len(state_dict))
    header_bytes = len(out) + 4  # the closing file CRC counts as framing too
    reports = []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state dict entry {name!r} is not a tensor")
        bits = (index_bits or {}).get(name, default_bits)
        if not 1 <= bits <= MAX_INDEX_BITS:
            raise ValueError(f"index bits must be in 1..{MAX_INDEX_BITS}, got {bits} for {name!r}")
        section, report = _encode_tensor(name, tensor, bits)
        out += section
        reports.append(report)
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out), CnzReport(size=len(out), header_bytes=header_bytes, tensors=reports)


# --------------------------------------------------------------------------- decoding

# Called with the header and every declared {name: (dtype, shape)}; raises to refuse them.
Check = Callable[[dict[str, Any], dict[str, tuple[torch.dtype, tuple[int, ...]]]], None]


class _Reader:
    """Bounds-checked reads from a byte buffer; every overrun is a _Corrupt error."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining():
            raise _Corrupt(f"{self.what}: length {n} at byte {self.pos} runs past the end")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16_array(self, n: int) -> np.ndarray:
        return np.frombuffer(self.take(2 * n), dtype="<u2").astype(np.int64)

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def varint(self, limit: int = 1 << 63) -> int:
        value = shift = 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise _Corrupt(f"{self.what}: varint too long at byte {self.pos}")
        if value > limit:
            raise _Corrupt(f"{self.what}: value {value} exceeds the limit {limit}")
        return value

    def done(self) -> None:
        if self.pos != len(self.data):
            raise _Corrupt(f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes")


@dataclass
class Section:
    """One tensor as the file declares it; ``payload`` is not decoded yet."""

    what: str
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    encoding: int
    payload: bytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _decode_stream(r: _Reader, alphabet: int, max_count: int) -> np.ndarray:
    """One Huffman stream; every length is checked against the bytes present before any
    allocation (each symbol costs at least one bit, at most ``MAX_CODE_LENGTH``)."""
    count = r.varint(max_count)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    used = r.varint(alphabet)
    if used == 0:
        raise _Corrupt(f"{r.what}: empty Huffman table")
    packed = np.frombuffer(r.take(-(-used * LENGTH_BITS // 8)), dtype=np.uint8)
    bits = np.unpackbits(packed)[: used * LENGTH_BITS].reshape(used, LENGTH_BITS)
    lengths = bits.astype(np.int64) @ (1 << np.arange(LENGTH_BITS - 1, -1, -1))
    if lengths.max() > huffman.MAX_CODE_LENGTH:
        raise _Corrupt(f"{r.what}: Huffman code length above {huffman.MAX_CODE_LENGTH}")
    total = r.varint(count * huffman.MAX_CODE_LENGTH)
    if total < count or total > 8 * r.remaining():
        raise _Corrupt(
            f"{r.what}: {count} symbols in {total} bits, but {r.remaining()} bytes are left"
        )
    n_blocks = -(-count // huffman.BLOCK_SYMBOLS)
    block_bits = r.u16_array(n_blocks - 1)
    rest = total - int(block_bits.sum())
    if rest < 0:
        raise _Corrupt(f"{r.what}: Huffman block lengths exceed the stream length")
    data = r.take(-(-total // 8))
    try:
        return huffman.decode(data, lengths, count, np.append(block_bits, rest))
    except ValueError as exc:
        raise _Corrupt(f"{r.what}: {exc}") from None


def _positions(gaps: np.ndarray, top: int, numel: int, what: str) -> np.ndarray:
    """Positions (int32) of the non-zero weights from relative indices (``top``: a filler),
    a chunk at a time: the stream may be tens of millions of symbols long."""
    out = np.empty(len(gaps), dtype=np.int32)
    n, last = 0, -1
    for lo in range(0, len(gaps), CHUNK):
        chunk = gaps[lo : lo + CHUNK]
        filler = chunk == top
        steps = chunk.astype(np.int64) + 1
        steps[filler] = top
        np.cumsum(steps, out=steps)
        steps += last
        last = int(steps[-1])
        if last >= numel:  # the last symbol is a weight: every position is below it
            raise _Corrupt(f"{what}: a sparse index points past the end of the tensor")
        kept = steps[~filler]
        out[n : n + len(kept)] = kept
        n += len(kept)
    return out[:n]


def _decode_shared(r: _Reader, numel: int) -> torch.Tensor:
    k = r.varint(min(numel, MAX_SHARED_CODEBOOK))
    codebook = np.frombuffer(r.take(4 * k), dtype="<i4").astype(np.int32)
    index_bits = r.u8()
    if not 1 <= index_bits <= MAX_INDEX_BITS:
        raise _Corrupt(f"{r.what}: index width {index_bits} outside 1..{MAX_INDEX_BITS}")
    top = (1 << index_bits) - 1
    gaps = _decode_stream(r, 1 << index_bits, numel + numel // top + 1)
    positions = _positions(gaps, top, numel, r.what)
    del gaps
    weight_idx = _decode_stream(r, max(1, k), numel)
    if len(weight_idx) != len(positions):
        raise _Corrupt(f"{r.what}: {len(positions)} positions but {len(weight_idx)} weights")
    if len(positions) and k == 0:
        raise _Corrupt(f"{r.what}: a sparse index points past the end of the tensor")
    if len(weight_idx) and weight_idx.max() >= k:
        raise _Corrupt(f"{r.what}: a weight index is outside the codebook")
    flat = np.zeros(numel, dtype=np.int32)
    for lo in range(0, len(positions), CHUNK):  # no full-length temporary
        flat[positions[lo : lo + CHUNK]] = codebook[weight_idx[lo : lo + CHUNK]]
    return torch.from_numpy(flat).view(torch.float32)


def parse_section(body: bytes, index: int) -> Section:
    """Name, dtype, shape and encoding of a section; RAW and HALF payload sizes checked."""
    r = _Reader(body, f"section {index}")
    try:
        name = r.take(r.varint(len(body))).decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt(f"section {index}: tensor name is not UTF-8") from None
    r.what = f"tensor {name!r}"
    dtype_code, ndim = r.u8(), r.u8()
    if dtype_code >= len(_DTYPES):
        raise _Corrupt(f"{r.what}: unknown dtype code {dtype_code}")
    dtype = _DTYPES[dtype_code]
    shape = tuple(r.varint(MAX_ELEMENTS) for _ in range(ndim))
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:  # also bounds the strides
        raise _Corrupt(f"{r.what}: {math.prod(shape)} elements exceed the limit {MAX_ELEMENTS}")
    encoding = r.u8()
    if encoding not in ENCODING_NAMES or (encoding != RAW and dtype != torch.float32):
        raise _Corrupt(f"{r.what}: encoding {encoding} is not valid for {dtype}")
    section = Section(r.what, name, dtype, shape, encoding, r.take(r.remaining()))
    itemsize = {RAW: torch.empty(0, dtype=dtype).element_size(), HALF: 2}.get(encoding)
    if itemsize is not None and len(section.payload) != itemsize * section.numel:
        raise _Corrupt(
            f"{r.what}: {len(section.payload)} payload bytes for {section.numel} values "
            f"of {itemsize} bytes"
        )
    return section


def _decode_payload(s: Section) -> torch.Tensor:
    """The tensor of a parsed section (its declared size was accepted before)."""
    if s.encoding == SHARED:
        r = _Reader(s.payload, s.what)
        tensor = _decode_shared(r, s.numel)
        r.done()
    elif s.numel == 0:
        tensor = torch.empty(0, dtype=s.dtype)
    elif s.encoding == RAW:
        tensor = torch.frombuffer(bytearray(s.payload), dtype=torch.uint8).view(s.dtype)
    else:
        tensor = torch.frombuffer(bytearray(s.payload), dtype=torch.float16).float()
    return tensor.reshape(s.shape)


def element_budget(file_bytes: int) -> int:
    """How many tensor elements a file of ``file_bytes`` bytes may declare in all.

    Sparse SHARED tensors cost far fewer bytes than elements (Deep Compression reaches about
    12 elements per byte), and an all-zero tensor costs a few bytes whatever its size, so a
    file pays for its elements: ``ELEMENTS_PER_BYTE`` per byte, at least ``FREE_ELEMENTS``,
    never more than ``MAX_ELEMENTS``."""
    return min(MAX_ELEMENTS, max(FREE_ELEMENTS, ELEMENTS_PER_BYTE * file_bytes))


def _check_declared(sections: list[Section], file_bytes: int) -> None:
    """Refuse duplicate names and declared sizes the file cannot pay for, before decoding."""
    names: set[str] = set()
    for s in sections:
        if s.name in names:
            raise _Corrupt(f"{s.what}: duplicate tensor name")
        names.add(s.name)
    total = sum(s.numel for s in sections)
    budget = element_budget(file_bytes)
    if total > budget:
        raise _Corrupt(
            f"the tensors declare {total:,} elements, more than a file of {file_bytes:,} bytes "
            f"may hold ({budget:,}: {ELEMENTS_PER_BYTE} per byte, at least {FREE_ELEMENTS:,}, "
            f"at most {MAX_ELEMENTS:,})"
        )


def _parse_header(r: _Reader) -> dict[str, Any]:
    n = r.u32()
    if n > MAX_HEADER_BYTES:
        raise _Corrupt(f"header of {n:,} bytes is above the limit {MAX_HEADER_BYTES:,}")
    head = r.take(n)
    if zlib.crc32(head) != r.u32():
        raise _Corrupt("header checksum mismatch")
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _Corrupt("header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict) or header.get("format") != "cnnlab-cnz":
        raise _Corrupt("header is not a cnnlab-cnz header")
    return header


def _parse(data: bytes) -> tuple[dict[str, Any], list[Section]]:
    """The header and the declared sections of a whole file, checksums verified."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise _Corrupt("not a .cnz file (bad magic bytes)")
    version = data[len(MAGIC)] if len(data) > len(MAGIC) else None
    if version != FORMAT_VERSION:
        raise _Corrupt(f"format version {version} is not supported (this cnnlab reads 1)")
    if len(data) < len(MAGIC) + 9 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise _Corrupt("file checksum mismatch (truncated or corrupted)")
    r = _Reader(data[:-4], "file")
    r.pos = len(MAGIC) + 1
    header = _parse_header(r)
    sections = []
    for i in range(r.u32()):  # each pass consumes 8+ bytes or raises: bounded by len(data)
        body = r.take(r.u32())
        if zlib.crc32(body) != r.u32():
            raise _Corrupt(f"section {i}: checksum mismatch")
        sections.append(parse_section(body, i))
    r.done()
    return header, sections


def decode_bytes(
    data: bytes, check: Check | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse a whole .cnz file: (header, state dict). Raises ``ValueError`` if it is invalid.

    Every section is parsed and every declared shape accepted before any tensor is decoded:
    the declared elements must fit :func:`element_budget` of the file's size, and ``check``
    (if given) is called with the header and each tensor's ``(dtype, shape)`` by name and
    raises to refuse them (:mod:`cnnlab.saved` checks them against the named model)."""
    header, sections = _parse(data)
    if check is not None:  # first: a wrong model is a clearer message than a size
        check(header, {s.name: (s.dtype, s.shape) for s in sections})
    _check_declared(sections, len(data))
    return header, {s.name: _decode_payload(s) for s in sections}


def is_cnz(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file that starts with the .cnz magic bytes."""
    try:
        with open_regular(path) as f:
            return f.read(len(MAGIC)) == MAGIC
    except (OSError, CnnlabError):
        return False


def open_regular(path: str | os.PathLike[str]) -> io.BufferedReader:
    """``path`` opened for binary reading if it is a regular file, else ``CnnlabError``
    (``OSError`` such as ``FileNotFoundError`` where it cannot be opened).

    Opened non-blocking (a FIFO's open does not wait for a writer), checked with ``fstat`` on
    the open file (no race with a swapped path), then switched back to blocking reads."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CnnlabError(f"{str(path)!r} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file_bytes(path: str | os.PathLike[str], limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``, else ``CnnlabError``).

    A FIFO, a device or a folder is refused without reading; the size comes from ``fstat``
    and exactly that many bytes are read (a file that grows meanwhile is not read further)."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise CnnlabError(
                    f"{str(path)!r}: {size:,} bytes is above the {what} limit {limit:,}"
                )
            data = f.read(size)
    except FileNotFoundError:
        raise CnnlabError(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise CnnlabError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) != size:
        raise CnnlabError(f"{str(path)!r} changed size while being read")
    return data


def read(
    path: str | os.PathLike[str], check: Check | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, tensors) of a .cnz file, fully verified; ``CnnlabError`` if it is invalid.

    Only a regular file of at most ``MAX_FILE_BYTES`` is read; ``check`` is passed to
    :func:`decode_bytes`."""
    data = read_file_bytes(path, MAX_FILE_BYTES, "compressed model")
    try:
        return decode_bytes(data, check)  # a CnnlabError of ``check`` passes through
    except (ValueError, IndexError, OverflowError, MemoryError, RuntimeError) as exc:
        raise CnnlabError(f"{str(path)!r} is not a valid .cnz file: {exc}") from None


# --------------------------------------------------------------------------- file surgery


def split_sections(data: bytes) -> tuple[bytes, list[bytes]]:
    """``(head, bodies)`` of a .cnz file, for tools that edit files (fuzzers, repairs).

    ``head`` is every byte from the magic to the section count included; ``bodies`` are the
    sections without their length and CRC fields. Checksums are not verified; ``ValueError``
    if the magic is wrong or a length runs past the end of ``data``. :func:`join_sections`
    puts the parts back together.
    """
    if data[: len(MAGIC)] != MAGIC:
        raise _Corrupt("not a .cnz file (bad magic bytes)")
    r = _Reader(data, "file")
    r.pos = len(MAGIC) + 1  # magic, version
    r.take(r.u32())  # the JSON header
    r.u32()  # its CRC
    count = r.u32()
    head = data[: r.pos]
    bodies = []
    for _ in range(count):  # each pass consumes 8+ bytes or raises: bounded by len(data)
        bodies.append(r.take(r.u32()))
        r.u32()  # the section's CRC
    return head, bodies


def join_sections(head: bytes, bodies: list[bytes]) -> bytes:
    """A .cnz file from ``head`` and section ``bodies`` (see :func:`split_sections`).

    The section count (the last four bytes of ``head``) becomes ``len(bodies)``, each body is
    framed by its length and CRC32, and the file CRC32 closes the file; the rest of ``head`` is
    copied as it is. The bodies may hold anything: the result decodes or fails on its content.
    """
    out = bytearray(head[:-4] + struct.pack("<I", len(bodies)))
    for body in bodies:
        out += struct.pack("<I", len(body)) + body + struct.pack("<I", zlib.crc32(body))
    return bytes(out + struct.pack("<I", zlib.crc32(out)))
