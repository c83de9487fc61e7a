"""The .cnz decoder on hostile input: thousands of generated and mutated files, each either
decodes or raises one ValueError; never another exception, a hang or a giant allocation.

Mutated files get their checksums recomputed, so the mutations reach the parser behind the
CRCs (a plain flipped bit is caught by the CRC, see test_compress.py). ``scripts/fuzz_cnz.py``
runs the same generators for longer.
"""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.compress import decode_bytes, encode_state_dict
from cnnlab.compress.format import MAGIC

FAST = settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _seed_file() -> bytes:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 40, generator=g)
    w[w.abs() < 1.0] = 0
    w = torch.where(w != 0, torch.round(w * 4) / 4, 0.0)
    state = {
        "w": w,
        "conv": torch.where(torch.rand(4, 2, 3, 3, generator=g) > 0.5, 0.5, 0.0),
        "b": torch.randn(6, generator=g).half().float(),
        "raw": torch.randn(3, generator=g),
        "n": torch.tensor(7),
    }
    return encode_state_dict(state, header={"model": None}, index_bits={"w": 3, "conv": 2})[0]


SEED = _seed_file()


def sections(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split a valid file into its prefix (magic .. section count) and section bodies."""
    hdr_len = struct.unpack_from("<I", data, 9)[0]
    pos = 13 + hdr_len + 4
    count = struct.unpack_from("<I", data, pos)[0]
    prefix, pos = data[: pos + 4], pos + 4
    bodies = []
    for _ in range(count):
        n = struct.unpack_from("<I", data, pos)[0]
        bodies.append(data[pos + 4 : pos + 4 + n])
        pos += 8 + n
    return prefix, bodies


def assemble(prefix: bytes, bodies: list[bytes]) -> bytes:
    """A file with correct lengths and CRCs around arbitrary section bodies."""
    out = bytearray(prefix[:-4] + struct.pack("<I", len(bodies)))
    for body in bodies:
        out += struct.pack("<I", len(body)) + body + struct.pack("<I", zlib.crc32(body))
    return bytes(out + struct.pack("<I", zlib.crc32(out)))


PREFIX, BODIES = sections(SEED)


def check(data: bytes) -> None:
    """The property: a ValueError with a message, or a clean decode."""
    try:
        _, state = decode_bytes(data)
    except ValueError as exc:
        assert str(exc)
        return
    assert all(isinstance(t, torch.Tensor) for t in state.values())


def mutate_body(body: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: overwrite, insert, delete, truncate."""
    b = bytearray(body)
    for kind, pos, value in ops:
        if not b and kind != 1:
            continue
        i = pos % (len(b) + 1)
        if kind == 0 and i < len(b):
            b[i] = value
        elif kind == 1:
            b.insert(i, value)
        elif kind == 2 and i < len(b):
            del b[i]
        elif kind == 3:
            del b[i:]
    return bytes(b)


OPS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


def test_seed_file_decodes() -> None:
    _, state = decode_bytes(SEED)
    assert set(state) == {"w", "conv", "b", "raw", "n"}
    assert assemble(PREFIX, BODIES) == SEED


@FAST
@given(st.integers(0, len(BODIES) - 1), OPS)
def test_mutated_sections_with_valid_checksums(index: int, ops: list) -> None:
    bodies = list(BODIES)
    bodies[index] = mutate_body(bodies[index], ops)
    check(assemble(PREFIX, bodies))


@FAST
@given(st.binary(max_size=200), st.lists(st.binary(max_size=60), max_size=3))
def test_generated_files(header: bytes, bodies: list[bytes]) -> None:
    head = struct.pack("<BI", 1, len(header)) + header + struct.pack("<I", zlib.crc32(header))
    check(assemble(MAGIC + head + b"\0\0\0\0", bodies))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_random_bytes_and_prefixes(data: bytes) -> None:
    check(data)
    check(MAGIC + data)
    check(SEED[: len(data) % len(SEED)])


@pytest.mark.parametrize("field_value", [0, 1, 0x7F, 0xFF])
def test_every_byte_overwritten_in_every_section(field_value: int) -> None:
    for index, body in enumerate(BODIES):
        for pos in range(len(body)):
            bodies = list(BODIES)
            bodies[index] = body[:pos] + bytes([field_value]) + body[pos + 1 :]
            check(assemble(PREFIX, bodies))
