"""Compiled per-row kernels for cell sentences (numba, already required by scanpy)."""

from __future__ import annotations

import numba
import numpy as np

_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)


def _debruijn_table() -> np.ndarray:
    table = np.zeros(64, dtype=np.int64)
    for i in range(64):
        table[((1 << i) * int(_DEBRUIJN) & 0xFFFFFFFFFFFFFFFF) >> 58] = i
    return table


_TZ_TABLE = _debruijn_table()


@numba.njit(cache=True, nogil=True)
def ranked_rows(indptr, indices, data, col_pos, n_vocab, max_genes):
    """Per CSR row, the vocabulary positions of its non-zero genes in vocabulary order.

    ``col_pos`` maps each column to its vocabulary position (``n_vocab``: not in it).
    Returns ``(out_indptr, out_positions)`` with at most ``max_genes`` per row. Sorting is
    replaced by a per-row bitset over the vocabulary: set bits, then read them back in order.
    """
    tz = _TZ_TABLE
    one = np.uint64(1)
    n = indptr.shape[0] - 1
    n_words = (n_vocab + 64) // 64 + 1  # one spare bit beyond the vocabulary: the sink
    sink = n_vocab
    bits = np.zeros(n_words, dtype=np.uint64)
    out_indptr = np.zeros(n + 1, dtype=np.int64)
    out = np.empty(min(indices.shape[0], n * max_genes), dtype=np.int32)
    w = 0
    for r in range(n):
        for k in range(indptr[r], indptr[r + 1]):
            p = col_pos[indices[k]]
            v = data[k]
            if v == 0 or v != v:  # explicit zeros and NaN are not expressed
                p = sink
            bits[p >> 6] |= one << np.uint64(p & 63)
        bits[sink >> 6] &= ~(one << np.uint64(sink & 63))
        got = 0
        for word in range(n_words):
            x = bits[word]
            if x == 0:
                continue
            bits[word] = 0
            while x != 0 and got < max_genes:
                low = x & (~x + one)
                out[w] = word * 64 + tz[(low * _DEBRUIJN) >> np.uint64(58)]
                w += 1
                got += 1
                x ^= low
        out_indptr[r + 1] = w
    return out_indptr, out[:w]


@numba.njit(cache=True, nogil=True)
def render_rows(indptr, positions, tok_offsets, tok_bytes, sep_len):
    """Join each row's tokens into one byte buffer; returns (buffer, row offsets).

    Each token in ``tok_bytes`` already ends with the separator (``sep_len`` bytes), which is
    dropped after a row's last token.
    """
    n = indptr.shape[0] - 1
    total = 0
    for k in range(positions.shape[0]):
        t = positions[k]
        total += tok_offsets[t + 1] - tok_offsets[t]
    out = np.empty(total, dtype=np.uint8)
    row_off = np.zeros(n + 1, dtype=np.int64)
    w = 0
    for r in range(n):
        for k in range(indptr[r], indptr[r + 1]):
            t = positions[k]
            a = tok_offsets[t]
            length = tok_offsets[t + 1] - a
            for b in range(length):
                out[w + b] = tok_bytes[a + b]
            w += length
        if indptr[r + 1] > indptr[r]:
            w -= sep_len
        row_off[r + 1] = w
    return out[:w], row_off
