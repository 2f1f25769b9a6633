"""Scores of every cell against every knowledge-base type, and their kNN smoothing (a mixin
of :class:`~.reasoner.Reasoner`)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ...errors import InputError

#: Weight units of expressed negative markers at which the penalty is full.
NEG_SATURATION = 8.0
#: Distinct measured positive markers needed for full evidence.
MIN_MARKERS = 3.0


class Scoring:
    """Marker evidence -> cells x types scores for :class:`~.reasoner.Reasoner`."""

    def _denominators(self, W: np.ndarray, n: np.ndarray) -> np.ndarray:
        # few available markers cannot give full evidence; long lists are not diluted. Full
        # evidence also needs MIN_MARKERS distinct markers: one or two heavy markers (often
        # co-regulated, like C1QA/C1QB) score at most n / MIN_MARKERS of full.
        per_marker = W / np.maximum(n, 1.0)
        return np.maximum(np.clip(W, 4.0, 8.0), per_marker * MIN_MARKERS)

    def _neg_denominators(self, W: np.ndarray) -> np.ndarray:
        # a strongly expressed negative marker is contradictory evidence however many other
        # negatives the type lists: the penalty saturates after NEG_SATURATION weight units
        return np.clip(W, 2.0, NEG_SATURATION)

    def score(self, E: sp.csr_matrix, measured: np.ndarray | sp.spmatrix) -> np.ndarray:
        """Cells x types evidence scores from a cells x markers evidence matrix.

        ``measured`` is a per-marker mask (same for all cells) or a cells x markers sparse
        mask (per-cell, e.g. truncated cell sentences).
        """
        if isinstance(measured, np.ndarray) and measured.ndim == 1:
            w_avail = self.P[:, measured].sum(axis=1)[None, :]
            n_avail = (self.P[:, measured] > 0).sum(axis=1)[None, :]
            wn = self._neg_denominators(self.N[:, measured].sum(axis=1))[None, :]
        else:
            A = sp.csr_matrix(measured, dtype=np.float32)
            w_avail = np.asarray(A @ self.P.T)
            n_avail = np.asarray(A @ (self.P.T > 0).astype(np.float32))
            wn = self._neg_denominators(np.asarray(A @ self.N.T))
        hits = self._times(E, "P")
        # evidence saturates after ~8 weight units of markers; the coverage term (fraction
        # of all available markers seen) breaks ties between saturated lineages
        den = self._denominators(w_avail, n_avail)
        evidence = np.minimum(hits / den, 1.0)
        coverage = hits / np.maximum(w_avail, den)
        neg = np.minimum(self._times(E, "N") / wn, 1.0)
        S = 0.8 * evidence + 0.2 * coverage - self.negative_weight * neg
        return S.astype(np.float32)

    def _times(self, E: sp.csr_matrix, key: str) -> np.ndarray:
        """``E @ W.T`` (float32) for the weights ``W = self.<key>`` (``"P"`` or ``"N"``), over
        the non-zero weights only: the same sums, in the same order, as the dense product when
        every value is finite (a NaN or inf times a zero weight would spread, so those take
        the dense product). The memo of ``W``'s sparse form is keyed by that name, not
        ``id(W)``: it travels in pickles, where ids mean nothing."""
        W = getattr(self, key)
        E = sp.csr_matrix(E)
        if E.dtype != np.float32 or not np.isfinite(E.data).all():
            return np.asarray(E @ W.T)
        from ._kernels import sparse_hits

        if key not in self._sparse_weights:
            Wt = sp.csr_matrix(W.T)
            self._sparse_weights[key] = (Wt.indptr, Wt.indices, Wt.data.astype(np.float32))
        return sparse_hits(E.indptr, E.indices, E.data, *self._sparse_weights[key], W.shape[0])

    @staticmethod
    def neighbour_mean(S: np.ndarray, W: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Each cell's neighbours' mean scores (row-normalised ``W @ S``; all-zero rows for
        cells without neighbours) and which cells have neighbours at all."""
        deg = np.asarray(W.sum(axis=1)).ravel()
        has = deg > 0
        deg[~has] = 1.0
        return np.asarray(sp.diags(1.0 / deg) @ W @ S, dtype=np.float32), has

    def smooth(self, S: np.ndarray, connectivities, alpha: float) -> np.ndarray:
        """Mix each cell's scores with its neighbours' (row-normalised kNN graph).

        Sparse cells borrow most: the neighbours' weight is ``alpha`` for a cell without
        lineage evidence and falls linearly towards 0 as its best lineage score approaches
        ``self.strong_evidence`` (so a well-measured cell of a rare type keeps its own call
        among neighbours of another type).
        """
        return self._smooth_with_neighbours(S, connectivities, alpha)[0]

    def _smooth_with_neighbours(self, S: np.ndarray, connectivities, alpha: float
                                ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`smooth`'s mixed scores and the neighbours' mean scores (a cell without
        neighbours gets its own)."""
        W = self._graph(connectivities, S.shape[0])
        neigh, has = self.neighbour_mean(S, W)
        return self._mix(S, neigh, has, alpha)

    @staticmethod
    def _graph(connectivities, n: int) -> sp.csr_matrix:
        W = sp.csr_matrix(connectivities, dtype=np.float32)
        if W.shape != (n, n):
            raise InputError(f"connectivities has shape {W.shape}; expected a "
                             f"{n} x {n} cell graph (adata.obsp['connectivities']).")
        return W

    def _mix(self, S: np.ndarray, neigh: np.ndarray, has: np.ndarray, alpha: float
             ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of :meth:`_smooth_with_neighbours` from the neighbours' mean scores (row-wise,
        so a block of cells gives the same rows as the whole matrix)."""
        own = S[:, self.is_root].max(axis=1)
        a = alpha * np.clip(1.0 - own / self.strong_evidence, 0.0, 1.0)
        a = np.where(has, a, 0.0).astype(np.float32)[:, None]
        neigh[~has] = S[~has]
        return (1 - a) * S + a * neigh, neigh
