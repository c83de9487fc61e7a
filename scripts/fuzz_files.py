"""Fuzz the file readers end to end: mutated .cnz and .safetensors files through cnnlab.load.

    .venv/bin/python scripts/fuzz_files.py --seconds 600 [--seed 0] [--rss-mib 256]
    .venv/bin/python scripts/fuzz_files.py --cases 200          (tests/test_compress_fuzz.py)

Valid files of a small pruned and weight-shared lenet5 are mutated (bit flips, byte edits,
truncations, insertions; for .cnz also edits behind recomputed checksums; huge declared sizes:
tensor dimensions, a header's num_classes and keywords, a safetensors header's shapes, offsets
and length, stored preprocessing and class names), written to a file and read with
``cnnlab.load`` (and ``cnnlab.codec.read`` for .cnz). Each case must load or raise one
``CnnlabError``; another exception, or a peak RSS more than ``--rss-mib`` above the start,
prints the case seed that reproduces it and exits 1. docs/reliability.md lists the bounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

import cnnlab
from cnnlab import codec
from cnnlab.codec.cnz import parse_section, varint
from cnnlab.compress import save as save_cnz
from cnnlab.data import Preprocess
from cnnlab.errors import CnnlabError

HOSTILE_META = [
    "1e400", "-1", "50000000", '["' + "x" * 5000 + '"]', "[" * 5000, '"x"', '{"size": 20000}',
    '{"size": 1e400, "in_chans": 1, "mean": [0], "std": [0]}',
]  # fmt: skip
HUGE = [0, 1, 255, 1 << 16, 1 << 24, 1 << 31, (1 << 31) + 1, 1 << 40, (1 << 63) - 1]


def seed_files(folder: Path) -> dict[str, bytes]:
    """A lenet5 with pruned, weight-shared layers as .cnz (SHARED sections) and .safetensors."""
    torch.manual_seed(0)
    model = cnnlab.create_model("lenet5", num_classes=10, in_chans=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.where(p.abs() < p.abs().median(), 0.0, torch.round(p * 8) / 8))
    pre = Preprocess(32, 1, (0.5,), (0.25,))
    names = [f"c{i}" for i in range(10)]
    save_cnz(model, folder / "seed.cnz", extra={"class_names": names, "preprocess": pre.as_dict()})
    cnnlab.save(model, folder / "seed.safetensors", class_names=names, preprocess=pre)
    return {k: (folder / f"seed.{k}").read_bytes() for k in ("cnz", "safetensors")}


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(len(b) + 1)
        op = rng.randrange(5)
        if op == 0 and i < len(b):
            b[i] ^= 1 << rng.randrange(8)  # bit flip
        elif op == 1 and i < len(b):
            b[i] = rng.choice([0, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            del b[i : i + rng.randint(1, 16)]
        elif op == 4:
            del b[i:]  # truncation
        if not b:
            break
    return bytes(b)


def _huge_dims(rng: random.Random, body: bytes, index: int) -> bytes:
    """The section with its dimensions replaced by large declared sizes (payload kept)."""
    s = parse_section(body, index)
    dims = [rng.choice([d, rng.choice(HUGE)]) for d in s.shape] or [rng.choice(HUGE)]
    name = s.name.encode()
    head = varint(len(name)) + name + struct.pack("<BB", _DTYPE[s.dtype], len(dims))
    return head + b"".join(varint(d) for d in dims) + bytes([s.encoding]) + s.payload


_DTYPE = {dt: i for i, dt in enumerate(codec.cnz._DTYPES)}


def _huge_header(rng: random.Random, data: bytes) -> bytes:
    header, state = codec.decode_bytes(data)
    config = header["config"]
    key = rng.choice(["num_classes", "in_chans", "drop_rate", "head", "nosuch"])
    config[key] = rng.choice([*HUGE, -1, 1e400, float("nan"), "x", [1], {"a": 1}, None])
    if rng.random() < 0.3:
        pre = header["extra"]["preprocess"]
        pre[rng.choice(["size", "std", "mean", "source_size"])] = rng.choice(
            [20000, 1e400, -3, 0, [0.0], [float("nan")], "x"]
        )
    return codec.encode_state_dict(state, header=header)[0]


def mutate_cnz(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return mutate_bytes(rng, data)  # mostly caught by the checksums
    if kind == 3:
        return _huge_header(rng, data)
    head, bodies = codec.split_sections(data)
    k = rng.randrange(len(bodies))
    with contextlib.suppress(ValueError):  # a body _huge_dims cannot parse stays as it is
        bodies[k] = _huge_dims(rng, bodies[k], k) if kind == 1 else mutate_bytes(rng, bodies[k])
    return codec.join_sections(head, bodies)  # checksums recomputed: reaches the parser


def mutate_safetensors(rng: random.Random, data: bytes) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    kind = rng.randrange(4)
    if kind == 0:
        return mutate_bytes(rng, data)
    if kind == 1:
        return struct.pack("<Q", rng.choice(HUGE)) + data[8:]
    if kind == 2:
        key = rng.choice([k for k in header if k != "__metadata__"])
        field = rng.choice(["shape", "data_offsets", "dtype"])
        value = {"shape": [rng.choice(HUGE)] * rng.randint(1, 4), "dtype": "F64",
                 "data_offsets": [0, rng.choice(HUGE)]}[field]  # fmt: skip
        header[key][field] = value
    else:
        meta = header["__metadata__"]
        key = rng.choice(["num_classes", "in_chans", "class_names", "preprocess", "model"])
        meta[key] = rng.choice(HOSTILE_META)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(path: Path, data: bytes, kind: str) -> str:
    """'loaded' or 'refused'; any other exception propagates."""
    path.write_bytes(data)
    try:
        if kind == "cnz":
            codec.read(path)
        cnnlab.load(path)
    except CnnlabError as exc:
        if len(str(exc).splitlines()) != 1:
            raise AssertionError(f"a multi-line error: {exc!r}") from None
        return "refused"
    return "loaded"


def fuzz(seed: int, cases: int, seconds: float, rss_mib: float, folder: Path) -> int:
    files = seed_files(folder)
    mutators: dict[str, Callable[[random.Random, bytes], bytes]] = {
        "cnz": mutate_cnz,
        "safetensors": mutate_safetensors,
    }
    for kind in files:  # warm up: the seeds load, and every import and cache is in place
        run_case(folder / f"case.{kind}", files[kind], kind)
    base, start = max_rss_mib(), time.monotonic()
    counts = {"loaded": 0, "refused": 0}
    i = 0
    while i < cases or (cases == 0 and time.monotonic() - start < seconds):
        case_seed = seed * 1_000_003 + i
        rng = random.Random(case_seed)
        kind = rng.choice(sorted(files))
        data = mutators[kind](rng, files[kind])
        try:
            counts[run_case(folder / f"case.{kind}", data, kind)] += 1
        except Exception:
            traceback.print_exc()
            print(f"FAILED: case seed {case_seed} ({kind}, {len(data)} bytes)", file=sys.stderr)
            return 1
        if max_rss_mib() - base > rss_mib:
            grew = max_rss_mib() - base
            print(f"FAILED: case seed {case_seed} ({kind}) grew the peak RSS by {grew:.0f} MiB "
                  f"(limit {rss_mib:.0f})", file=sys.stderr)  # fmt: skip
            return 1
        i += 1
    print(
        f"{i} cases in {time.monotonic() - start:.1f}s: {counts['refused']} refused with one "
        f"CnnlabError line, {counts['loaded']} loaded, 0 crashes; peak RSS "
        f"+{max_rss_mib() - base:.0f} MiB"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="run this long (no --cases)")
    parser.add_argument("--cases", type=int, default=0, help="run exactly this many cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-mib", type=float, default=256.0, help="peak RSS growth allowed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        return fuzz(args.seed, args.cases, args.seconds, args.rss_mib, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
