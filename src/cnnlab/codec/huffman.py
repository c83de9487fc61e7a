"""Canonical Huffman coding of integer symbol streams, vectorised with numpy.

Deep Compression (Han et al., ICLR 2016, section 4) Huffman-codes the quantized weight indices
and the relative sparse indices. The codes here are *canonical*: only the code length of each
symbol is stored, the codes follow from the lengths. Lengths are limited to
:data:`MAX_CODE_LENGTH` bits, so one 32-bit window always holds a whole code and a table of
``2**20`` entries decodes any code in one lookup.

Decoding a variable-length code is sequential, so the encoder cuts the stream into blocks of
:data:`BLOCK_SYMBOLS` symbols and records each block's length in bits. The decoder looks up
the code that would start at *every* bit position (vectorised), then follows the chain of code
starts in all blocks at once: one numpy step per symbol position inside a block, not per symbol.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator

import numpy as np

__all__ = [
    "BLOCK_SYMBOLS",
    "MAX_CODE_LENGTH",
    "canonical_codes",
    "code_lengths",
    "decode",
    "encode",
]

MAX_CODE_LENGTH = 20  # a 2**20-entry lookup table decodes any code in one step
BLOCK_SYMBOLS = 1024
SCALAR_BLOCKS = 4
GROUP_BITS = 1 << 22  # bounds the per-bit arrays of one decoding step (32 MiB each)


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code length of every symbol (0 for a symbol that never occurs).

    A lone symbol gets length 1. If the optimal tree is deeper than ``max_length`` the counts
    are halved (keeping every used symbol at least 1) until it fits, as zlib-style coders do.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    if len(used) > 1 << max_length:
        raise ValueError(f"{len(used)} symbols cannot be coded in {max_length} bits")
    weights = counts[used].copy()
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= max_length:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights // 2, 1)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of each leaf in the Huffman tree built over ``weights`` (all > 0, at least 2)."""
    n = len(weights)
    parent = np.zeros(2 * n - 1, dtype=np.int64)
    heap = [(int(w), i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    node = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    # The root is the last node; children are numbered below their parents, so one pass
    # from the top down gives every depth.
    depth = np.zeros(2 * n - 1, dtype=np.int64)
    for i in range(2 * n - 3, -1, -1):
        depth[i] = depth[parent[i]] + 1
    return depth[:n]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol (symbols sorted by length, then by value).

    Raises ``ValueError`` if the lengths break Kraft's inequality (no prefix code exists).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    used = np.flatnonzero(lengths)
    if len(used) == 0:
        return codes
    top = int(lengths.max())
    if top > MAX_CODE_LENGTH:
        raise ValueError(f"code length {top} exceeds {MAX_CODE_LENGTH}")
    order = used[np.lexsort((used, lengths[used]))]
    spans = np.int64(1) << (top - lengths[order])
    starts = np.concatenate(([0], np.cumsum(spans)[:-1]))
    if starts[-1] + spans[-1] > 1 << top:
        raise ValueError("Huffman code lengths violate Kraft's inequality")
    codes[order] = starts >> (top - lengths[order])
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Huffman-code ``symbols`` with the canonical code of ``lengths``.

    Returns the bitstream (most significant bit first, zero-padded to a byte) and the length
    in bits of every block of :data:`BLOCK_SYMBOLS` symbols.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(symbols) == 0:
        return b"", np.zeros(0, dtype=np.int64)
    codes = canonical_codes(lengths)
    sym_len = lengths[symbols]
    if np.any(sym_len == 0):
        raise ValueError("a symbol to encode has no code")
    sym_code = codes[symbols]
    block_starts = np.arange(0, len(symbols), BLOCK_SYMBOLS)
    block_bits = np.add.reduceat(sym_len, block_starts)
    total = int(sym_len.sum())
    offsets = np.cumsum(sym_len) - sym_len
    # Each code (<= 20 bits) starting `offsets % 8` bits into its first byte spans at most four
    # bytes. Codes never overlap, so OR-ing their bits into a byte equals adding them: one
    # bincount per byte lane packs the whole stream.
    n_bytes = -(-total // 8)
    aligned = sym_code << (32 - (offsets & 7) - sym_len)  # the code placed in a 32-bit window
    first = offsets >> 3
    out = np.zeros(n_bytes + 3, dtype=np.int64)
    for lane in range(4):
        part = (aligned >> (24 - 8 * lane)) & 0xFF
        out += np.bincount(first + lane, weights=part, minlength=n_bytes + 3).astype(np.int64)
    return out[:n_bytes].astype(np.uint8).tobytes(), block_bits


def decode(data: bytes, lengths: np.ndarray, count: int, block_bits: np.ndarray) -> np.ndarray:
    """Decode ``count`` symbols; raises ``ValueError`` on any inconsistency of the stream.

    ``block_bits`` is the length in bits of every block, as :func:`encode` returned it.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    block_bits = np.asarray(block_bits, dtype=np.int64)
    n_blocks = -(-count // BLOCK_SYMBOLS)
    if len(block_bits) != n_blocks:
        raise ValueError(f"expected {n_blocks} block lengths, found {len(block_bits)}")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    _check_blocks(len(data), count, block_bits)
    canonical_codes(lengths)  # validates the lengths (Kraft's inequality)
    order, order_len, starts_top, top, filled = _code_ranges(lengths)
    raw = np.frombuffer(data + b"\0\0\0\0", dtype=np.uint8)
    starts = np.concatenate(([0], np.cumsum(block_bits)[:-1]))
    out_type = np.uint16 if len(lengths) <= 1 << 16 else np.int64
    if n_blocks <= SCALAR_BLOCKS:  # few blocks: plain Python beats numpy on tiny arrays
        windows = _windows(raw, np.arange(len(data), dtype=np.int64)).tolist()
        table = (windows, starts_top.tolist(), order.tolist(), order_len.tolist())
        out_list: list[int] = []
        for b in range(n_blocks):
            n = BLOCK_SYMBOLS if b < n_blocks - 1 else count - BLOCK_SYMBOLS * b
            out_list += _decode_block(table, int(starts[b]), int(block_bits[b]), n, top, filled)
        return np.array(out_list, dtype=out_type)
    per_block = np.full(n_blocks, BLOCK_SYMBOLS, dtype=np.int64)
    per_block[-1] = count - BLOCK_SYMBOLS * (n_blocks - 1)
    lookup = _Lookup(starts_top, order, order_len, top, filled)
    out = np.empty(count, dtype=out_type)  # 2 bytes a symbol for any .cnz alphabet
    for blocks in _groups(starts, block_bits):
        symbols = _decode_group(
            raw, lookup, top, starts[blocks], block_bits[blocks], per_block[blocks]
        )
        first = blocks.start * BLOCK_SYMBOLS
        out[first : first + len(symbols)] = symbols
    return out


def _windows(raw: np.ndarray, byte_index: np.ndarray) -> np.ndarray:
    """The 32 bits starting at each byte of ``byte_index`` (``raw`` is padded by 4 bytes)."""
    w = raw[byte_index].astype(np.uint64) << np.uint64(24)
    for k, shift in ((1, 16), (2, 8), (3, 0)):
        w |= raw[byte_index + k].astype(np.uint64) << np.uint64(shift)
    return w


def _check_blocks(n_bytes: int, count: int, block_bits: np.ndarray) -> None:
    """Each block of ``n`` symbols spans ``n`` to ``MAX_CODE_LENGTH * n`` bits, and all of them
    fit in ``n_bytes``: checked before any allocation, so the work and memory of decoding are
    bounded by the bytes present (a block of zero bits would otherwise cost a whole row)."""
    per_block = np.full(len(block_bits), BLOCK_SYMBOLS, dtype=np.int64)
    per_block[-1] = count - BLOCK_SYMBOLS * (len(block_bits) - 1)
    if np.any(block_bits < per_block) or np.any(block_bits > MAX_CODE_LENGTH * per_block):
        raise ValueError("a Huffman block length does not fit its number of symbols")
    if int(block_bits.sum()) > 8 * n_bytes:
        raise ValueError("Huffman block lengths run past the end of the stream")


def _code_ranges(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The canonical code as ranges of ``top``-bit windows, ``top`` the longest code length.

    Canonical codes, read as ``top``-bit numbers, cover consecutive ranges [start, start+span)
    in order of (length, symbol): the symbol of a window is found by binary search. Returns
    ``(order, order_len, starts_top, top, filled)``: the used symbols in that order, their code
    lengths, the first window of each range, and the end of the last range (windows from
    ``filled`` on start no code).
    """
    used = np.flatnonzero(lengths)
    if len(used) == 0:
        raise ValueError("Huffman table is empty but the stream is not")
    top = int(lengths.max())
    order = used[np.lexsort((used, lengths[used]))]
    order_len = lengths[order]
    starts_top = np.cumsum(1 << (top - order_len)) - (1 << (top - order_len))
    filled = int(starts_top[-1] + (1 << (top - int(order_len[-1]))))
    return order, order_len, starts_top, top, filled


def _groups(starts: np.ndarray, block_bits: np.ndarray) -> Iterator[slice]:
    """Runs of consecutive blocks covering at most ``GROUP_BITS`` bits (or one longer block).

    The groups bound the per-bit arrays :func:`_decode_group` builds.
    """
    n_blocks = len(starts)
    group_start = 0
    while group_start < n_blocks:
        group_end = group_start + 1
        while (
            group_end < n_blocks
            and starts[group_end] + block_bits[group_end] - starts[group_start] <= GROUP_BITS
        ):
            group_end += 1
        yield slice(group_start, group_end)
        group_start = group_end


def _decode_group(
    raw: np.ndarray,
    lookup: _Lookup,
    top: int,
    starts: np.ndarray,
    block_bits: np.ndarray,
    counts: np.ndarray,
) -> np.ndarray:
    """The symbols of a group of consecutive blocks (``counts`` symbols each), in order.

    Decodes at every bit position of the group at once (the symbol and code length a code
    starting there would have), then follows the chain of code starts in all blocks together.
    """
    lo = int(starts[0])
    hi = int(starts[-1] + block_bits[-1])
    bit = np.arange(lo, hi + 1, dtype=np.int64)
    w = _windows(raw, np.minimum(bit >> 3, len(raw) - 4))
    w <<= (bit & 7).astype(np.uint64)
    del bit
    w &= np.uint64(0xFFFFFFFF)
    w >>= np.uint64(32 - top)
    sym_at, len_at = lookup(w.astype(np.int64))
    del w
    len_at[-1] = 0  # the position after the group's last bit never starts a code
    n_steps = int(counts.max())
    pos = starts - lo
    trail = np.empty((len(counts), n_steps), dtype=np.int64)
    for step in range(n_steps):
        trail[:, step] = pos
        pos = np.minimum(pos + len_at[pos], hi - lo)
    active = np.arange(n_steps) < counts[:, None]
    if np.any(active & (len_at[trail] == 0)):
        raise ValueError("invalid Huffman code in the stream")
    last = trail[np.arange(len(counts)), counts - 1]
    if not np.array_equal(last + len_at[last], starts + block_bits - lo):
        raise ValueError("Huffman blocks do not end where their lengths say")
    return sym_at[trail[active]]


class _Lookup:
    """Symbol and code length of every ``top``-bit window (length 0: no code starts there)."""

    def __init__(
        self,
        starts_top: np.ndarray,
        order: np.ndarray,
        order_len: np.ndarray,
        top: int,
        filled: int,
    ) -> None:
        windows = np.arange(1 << top)
        k = np.searchsorted(starts_top, windows, side="right") - 1
        self.symbol = order[k].astype(np.int32)
        self.length = np.where(windows < filled, order_len[k], 0).astype(np.int32)

    def __call__(self, peek: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.symbol[peek], self.length[peek]


def _decode_block(
    table: tuple[list[int], list[int], list[int], list[int]],
    start: int,
    n_bits: int,
    n: int,
    top: int,
    filled: int,
) -> list[int]:
    """Decode one block of ``n`` symbols with Python integers (see :func:`decode`)."""
    windows, starts_top, order, order_len = table
    last = len(windows) - 1
    pos = start
    out = []
    for _ in range(n):
        peek = ((windows[min(pos >> 3, last)] << (pos & 7)) & 0xFFFFFFFF) >> (32 - top)
        if peek >= filled:
            raise ValueError("invalid Huffman code in the stream")
        k = bisect.bisect_right(starts_top, peek) - 1
        out.append(order[k])
        pos += order_len[k]
    if pos - start != n_bits:
        raise ValueError("Huffman blocks do not end where their lengths say")
    return out
