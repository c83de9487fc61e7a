"""How much a better entropy coder than Huffman could still save on a .cnz file.

Deep Compression Huffman-codes two streams per layer (sec. 4): the codebook index of each kept
weight and the relative position indices. For each stream this prints the Huffman bits per
kept weight (as stored) against the order-0 entropy of the same symbols, the bound of an ideal
arithmetic or ANS coder with a static model. For the positions it also prints two bounds on
the mask itself: independent positions at the layer's density, H(p)/p, and a context model
(each mask bit given its left and upper neighbours), which is where 2-D structure would show.
The total says what the whole file would weigh with every stream at its order-0 entropy.

Usage: .venv/bin/python benchmarks/coding_headroom.py FILE.cnz [FILE.cnz ...]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from cnnlab.codec import encode_state_dict, relative_indices
from cnnlab.compress import default_index_bits, load, plain_state_dict, read_header


def entropy_bits(symbols: np.ndarray) -> float:
    """Total order-0 entropy of a symbol sequence, in bits."""
    if symbols.size == 0:
        return 0.0
    counts = np.unique(symbols, return_counts=True)[1]
    return float(-(counts * np.log2(counts / symbols.size)).sum())


def binary_entropy_bits(bits: np.ndarray) -> float:
    ones = int(bits.sum())
    return entropy_bits(np.repeat([0, 1], [bits.size - ones, ones]))


def context_entropy_bits(mask: np.ndarray) -> float:
    """Entropy of each mask bit given its left and upper neighbours (4 contexts)."""
    left = np.zeros_like(mask)
    left[:, 1:] = mask[:, :-1]
    up = np.zeros_like(mask)
    up[1:, :] = mask[:-1, :]
    context = 2 * left + up
    return sum(binary_entropy_bits(mask[context == c]) for c in range(4))


def headroom(path: str) -> None:
    model = load(path)
    state = plain_state_dict(model)
    index_bits = default_index_bits(model)
    header = {k: v for k, v in read_header(path).items() if k != "format"}
    _, report = encode_state_dict(state, header=header, index_bits=index_bits)
    size = os.path.getsize(path)
    if report.size != size:
        raise SystemExit(f"{path}: re-encoding gives {report.size} B, the file has {size} B")
    print(f"{path}: {size:,} B")
    print(
        f"{'layer':24} {'kept':>7} | {'weights: Huffman':>16} {'H0':>5} | "
        f"{'positions: Huffman':>18} {'H0':>5} {'H(p)/p':>7} {'context':>7}"
    )
    saved_bits = 0.0
    for t in report.tensors:
        if t.encoding != "shared":
            continue
        w = state[t.name].reshape(state[t.name].shape[0], -1).numpy()
        mask = (w != 0).astype(np.int8)
        flat = w.reshape(-1)
        positions = np.flatnonzero(flat)
        _, weight_symbols = np.unique(flat[positions], return_inverse=True)
        relative = relative_indices(positions, t.index_bits)
        nz = max(t.nonzero, 1)
        h_weights, h_positions = entropy_bits(weight_symbols), entropy_bits(relative)
        saved_bits += t.weight_stream_bits - h_weights + t.index_stream_bits - h_positions
        print(
            f"{t.name:24} {100 * t.nonzero / t.numel:6.1f}% | "
            f"{t.weight_stream_bits / nz:16.2f} {h_weights / nz:5.2f} | "
            f"{t.index_stream_bits / nz:18.2f} {h_positions / nz:5.2f} "
            f"{binary_entropy_bits(mask) / nz:7.2f} {context_entropy_bits(mask) / nz:7.2f}"
        )
    ideal = size - saved_bits / 8
    print(
        f"bits per kept weight. Every stream at its order-0 entropy: {ideal:,.0f} B "
        f"({100 * (1 - ideal / size):.1f}% smaller; code tables not counted)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help=".cnz files")
    for path in parser.parse_args().files:
        headroom(path)


if __name__ == "__main__":
    main()
