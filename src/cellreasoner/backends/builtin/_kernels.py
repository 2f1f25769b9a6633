"""Compiled per-row kernel: which genes each cell's sentence holds (numba, as for sentences)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(cache=True, nogil=True)
def sentence_members(indptr, indices, data, col_pos, n_vocab, max_genes, col_slot, slot_pos,
                     out):
    """Per CSR row, whether its cell sentence holds each slot gene (written into ``out``,
    rows x slots, all False on entry).

    A sentence holds the row's non-zero (and not NaN) genes of the vocabulary, in vocabulary
    order, cut after ``max_genes``: ``col_pos`` maps each column to its vocabulary position
    (-1: not in it, or not the gene's first column), ``col_slot`` each column to its slot
    (-1: none) and ``slot_pos`` each slot to its gene's vocabulary position. This is the
    sentence rule of :mod:`cellreasoner.sentences` (its ``_select_ranked``) asked per gene;
    ``tests/test_builtin_stream.py`` checks that the two agree.
    """
    one = np.uint64(1)
    n = indptr.shape[0] - 1
    n_words = (n_vocab >> 6) + 1
    bits = np.zeros(n_words, dtype=np.uint64)
    touched = np.empty(out.shape[1] + 1, dtype=np.int64)
    for r in range(n):
        count = 0
        n_touched = 0
        for k in range(indptr[r], indptr[r + 1]):
            v = data[k]
            if v == 0 or v != v:
                continue
            j = indices[k]
            p = col_pos[j]
            if p < 0:
                continue
            m = one << np.uint64(p & 63)
            if bits[p >> 6] & m == 0:
                bits[p >> 6] |= m
                count += 1
                s = col_slot[j]
                if s >= 0:
                    touched[n_touched] = s
                    n_touched += 1
        cutoff = n_vocab
        if count > max_genes:  # the sentence ends at its max_genes-th gene
            seen = 0
            for w in range(n_words):
                c = _popcount(bits[w])
                if seen + c >= max_genes:
                    x = bits[w]
                    need = max_genes - seen
                    for b in range(64):
                        if (x >> np.uint64(b)) & one:
                            need -= 1
                            if need == 0:
                                cutoff = w * 64 + b
                                break
                    break
                seen += c
        if count:
            if count > 64:
                for w in range(n_words):
                    bits[w] = 0
            else:
                for k in range(indptr[r], indptr[r + 1]):
                    p = col_pos[indices[k]]
                    if p >= 0:
                        bits[p >> 6] = 0
        for q in range(n_touched):
            s = touched[q]
            if slot_pos[s] <= cutoff:
                out[r, s] = True


@numba.njit(cache=True, nogil=True)
def sparse_hits(indptr, indices, data, w_indptr, w_types, w_weights, n_types):
    """``E @ W.T`` for a CSR ``E`` (cells x markers) and a sparse ``W`` (types x markers,
    given as markers x types CSR), in float32 and in the same order of additions as the
    dense product (each cell's markers in stored order; the skipped terms are exact zeros)."""
    n = indptr.shape[0] - 1
    out = np.zeros((n, n_types), dtype=np.float32)
    for r in range(n):
        for k in range(indptr[r], indptr[r + 1]):
            e = data[k]
            m = indices[k]
            for q in range(w_indptr[m], w_indptr[m + 1]):
                out[r, w_types[q]] += e * w_weights[q]
    return out
