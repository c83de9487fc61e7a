"""Longer fuzz run of the .cnz decoder (tests/test_compress_fuzz.py is the quick CI version).

    .venv/bin/python scripts/fuzz_cnz.py --seconds 600 [--seed 0]

Mutates files written from small random compressed models (overwrite, insert, delete,
truncate, splice), half of the time repairing the lengths and CRCs so the mutation reaches the
parser behind the checksums. Every case must decode or raise ``ValueError``; anything else is
printed with the seed that reproduces it and the script exits 1.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback

import torch

from cnnlab.codec import decode_bytes, encode_state_dict, join_sections, split_sections


def seed_files(rng: random.Random) -> list[bytes]:
    """A few valid files: pruned + shared weights of several shapes, biases, BN, ints."""
    files = []
    for i in range(8):
        g = torch.Generator().manual_seed(i)
        shape = (rng.randint(1, 20), rng.randint(1, 200))
        w = torch.randn(shape, generator=g)
        w[w.abs() < rng.uniform(0, 2)] = 0
        w = torch.where(w != 0, torch.round(w * rng.choice([2, 8, 64])) / 8, 0.0)
        state = {
            "w": w,
            "conv": torch.where(torch.rand(3, 2, 3, 3, generator=g) > 0.6, 0.25, 0.0),
            "bias": torch.randn(shape[0], generator=g).half().float(),
            "raw": torch.randn(4, generator=g),
            "steps": torch.tensor(rng.randint(0, 1000)),
        }
        bits = {"w": rng.randint(1, 9), "conv": rng.randint(1, 9)}
        files.append(encode_state_dict(state, header={"model": None}, index_bits=bits)[0])
    return files


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and i < len(b):
            b[i] = rng.randrange(256)
        elif op == 1:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del b[i : i + rng.randint(1, 8)]
        elif op == 3:
            del b[i:]
        elif op == 4 and i < len(b):  # bit flip
            b[i] ^= 1 << rng.randrange(8)
        if not b:
            break
    return bytes(b)


def one_case(rng: random.Random, files: list[bytes]) -> bytes:
    data = rng.choice(files)
    if rng.random() < 0.5:
        return mutate(rng, data)
    prefix, bodies = split_sections(data)
    k = rng.randrange(len(bodies))
    bodies[k] = mutate(rng, bodies[k])
    if rng.random() < 0.2:  # splice a section of another file in
        at = rng.randrange(len(bodies) + 1)
        bodies.insert(at, rng.choice(split_sections(rng.choice(files))[1]))
    return join_sections(prefix, bodies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = seed_files(random.Random(args.seed))
    for f in files:
        decode_bytes(f)
    start, cases, rejected = time.monotonic(), 0, 0
    while time.monotonic() - start < args.seconds:
        case_seed = args.seed * 1_000_003 + cases
        data = one_case(random.Random(case_seed), files)
        try:
            decode_bytes(data)
        except ValueError:
            rejected += 1
        except Exception:
            traceback.print_exc()
            print(f"FAILED on case seed {case_seed} ({len(data)} bytes)", file=sys.stderr)
            return 1
        cases += 1
    print(
        f"{cases} cases in {time.monotonic() - start:.0f}s: {rejected} rejected with a "
        f"ValueError, {cases - rejected} decoded, 0 crashes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
