"""The .cnz decoder on hostile input: thousands of generated and mutated files, each either
decodes or raises one ValueError; never another exception, a hang or a giant allocation.

Mutated files get their checksums recomputed, so the mutations reach the parser behind the
CRCs (a plain flipped bit is caught by the CRC, see test_compress.py), with the codec's own
``split_sections`` / ``join_sections``. ``scripts/fuzz_cnz.py`` runs the same kind of cases
for longer.
"""

from __future__ import annotations

import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.codec import MAGIC, decode_bytes, encode_state_dict, join_sections, split_sections

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


PREFIX, BODIES = split_sections(SEED)


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
    assert join_sections(PREFIX, BODIES) == SEED


def test_split_sections_rejects_what_it_cannot_split() -> None:
    with pytest.raises(ValueError, match="magic"):
        split_sections(b"PK" + SEED[2:])
    for n in range(len(SEED) - 4):  # any cut before the file CRC loses framing
        with pytest.raises(ValueError, match="runs past the end"):
            split_sections(SEED[:n] if n >= len(MAGIC) else MAGIC)


@FAST
@given(st.integers(0, len(BODIES) - 1), OPS)
def test_mutated_sections_with_valid_checksums(index: int, ops: list) -> None:
    bodies = list(BODIES)
    bodies[index] = mutate_body(bodies[index], ops)
    check(join_sections(PREFIX, bodies))


@FAST
@given(st.binary(max_size=200), st.lists(st.binary(max_size=60), max_size=3))
def test_generated_files(header: bytes, bodies: list[bytes]) -> None:
    head = struct.pack("<BI", 1, len(header)) + header + struct.pack("<I", zlib.crc32(header))
    check(join_sections(MAGIC + head + b"\0\0\0\0", bodies))


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
            check(join_sections(PREFIX, bodies))


def test_mutated_cnz_and_safetensors_files_are_one_cnnlab_error() -> None:
    """scripts/fuzz_files.py, short: 200 mutated .cnz and .safetensors files (bit flips,
    truncations, huge declared sizes) through cnnlab.load, each loading or raising one
    CnnlabError line, with the peak RSS at most 256 MiB above the start (own process)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_files.py"
    run = subprocess.run(
        [sys.executable, str(script), "--cases", "200", "--seed", "3", "--rss-mib", "256"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "200 cases" in run.stdout and "0 crashes" in run.stdout
