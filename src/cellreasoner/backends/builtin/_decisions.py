"""The walk down the lineage tree (a mixin of :class:`~.reasoner.Reasoner`): lineage, then
subtype steps on the cell's own markers, its kNN neighbours' or the self-trained classifier's,
with a confidence per cell."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._confidence import ConfidenceParts, combine
from .refine import DECISIVE_WEIGHT, HardSteps, StepRefiner, decisive_steps

#: Sibling types that exclude each other: a cell with decisive markers of both is not called
#: either. CD14++CD16- classical and CD14+CD16++ non-classical monocytes are exclusive gates,
#: the cells between them intermediate (Ziegler-Heitbrock et al. 2010 Blood), which the
#: knowledge base does not name. (CD4 vs CD8 T cells were measured too: stopping CD4+CD8A+
#: cells at "T cell" cost 0.002-0.004 mean score on the tumour and pbmc68k data, so the
#: markers' balance decides those.)
EXCLUSIVE_SIBLINGS = (("classical monocyte", "non-classical monocyte"),)


def _top2(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise (argmax, max, second argmax, second max); second is -inf with one column."""
    rows = np.arange(A.shape[0])
    i1 = A.argmax(axis=1)
    v1 = A[rows, i1]
    if A.shape[1] < 2:
        return i1, v1, i1, np.full(A.shape[0], -np.inf, dtype=A.dtype)
    B = A.copy()
    B[rows, i1] = -np.inf
    i2 = B.argmax(axis=1)
    return i1, v1, i2, B[rows, i2]


class Decisions:
    """Scores -> decisions for :class:`~.reasoner.Reasoner`."""

    def _child_step(self, cand: np.ndarray, mask: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(best child, accepted, child sharpness) for candidate child scores."""
        c1, v1, _, v2 = _top2(cand)
        v2 = np.where(np.isfinite(v2), v2, 0.0)
        gap = v1 - v2
        ok = ((v1 >= self.min_child_score) & (gap >= self.child_margin)) | (
            (v1 >= 0.6 * self.min_child_score) & (gap >= 2 * self.child_margin + 0.05))
        zc = np.where(mask, np.exp(12.0 * (cand - v1[:, None])), 0.0)
        return c1, ok, 1.0 / zc.sum(axis=1)

    def decide(self, S: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Walk the tree: returns (node, root, confidence, status) per cell.

        ``node`` is a type index or -1 (abstain); ``status`` is 0 (ok), 1 (no evidence),
        2 (contradictory lineages).
        """
        return self._walk(S)[:4]

    def _walk(self, S: np.ndarray, neighbours: np.ndarray | None = None,
              own: np.ndarray | None = None, *, present: sp.csr_matrix | None = None,
              hard: HardSteps | None = None, refiner: StepRefiner | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                         np.ndarray]:
        """:meth:`decide`, plus per cell two bit masks of the subtype steps (bit d for the
        step to depth d + 1): those taken on the neighbours' evidence and those taken by a
        self-trained classifier.

        The lineage is chosen on ``S`` (smoothed scores when a graph is used). With
        ``neighbours`` (the kNN neighbours' mean scores) and ``own`` (the cell's unsmoothed
        scores), every subtype step is first tried on the cell's own scores; only a step its
        own markers cannot take (a T cell with no CD4, CD8 or other subtype reads) is taken on
        its own scores mixed with its neighbours' (weight ``smoothing``). A subtype the cell's
        own markers decide is never overruled by the neighbours.

        The confidence is :func:`._confidence.combine` of what the walk records per cell
        (:class:`._confidence.ConfidenceParts`); with ``neighbours``, that includes whether
        the neighbours' evidence alone leads to another lineage (or to none).

        With ``present`` (the cells x markers evidence), every step that rests on a decisive
        marker is recorded in ``hard``; with a ``refiner`` (see :mod:`.refine`), a
        step that does not is taken by its parent's classifier when that is at least
        ``refine_threshold`` sure.
        """
        n = S.shape[0]
        R, root, s1, s2, status = self._lineage(S)
        parts = ConfidenceParts.start(R, s1, np.where(np.isfinite(s2), s2, 0.0), status)
        node = np.where(status == 0, root, -1)
        borrowed = np.zeros(n, dtype=np.uint8)
        refined = np.zeros(n, dtype=np.uint8)
        use_neighbours = neighbours is not None and self.smoothing > 0
        steps = S if own is None or not use_neighbours else own
        a = self.smoothing
        active = (status == 0) & self.has_children[np.maximum(node, 0)]
        for depth in range(8):  # tree depth bound
            if not active.any():
                break
            rows = np.flatnonzero(active)
            mask = self.child_mask[node[rows]]
            c1, ok, pc = self._child_step(np.where(mask, steps[rows], -np.inf), mask)
            if use_neighbours and not ok.all():
                stuck = np.flatnonzero(~ok)
                mixed = (1 - a) * steps[rows[stuck]] + a * neighbours[rows[stuck]]
                c2, ok2, pc2 = self._child_step(np.where(mask[stuck], mixed, -np.inf),
                                                mask[stuck])
                c1[stuck], ok[stuck], pc[stuck] = c2, ok2, pc2
                borrowed[rows[stuck[ok2]]] |= np.uint8(1 << depth)
            if present is not None:
                contested = self._contested(present[rows], node[rows], c1)
                ok &= ~contested
                c1, ok, pc = self._refine_step(depth, rows, node[rows], c1, ok, pc, present,
                                               hard, refiner, refined)
                ok &= ~contested  # nor does a classifier decide what the markers contest
            acc = rows[ok]
            node[acc] = c1[ok]
            active[:] = False
            active[acc] = self.has_children[node[acc]]
        if use_neighbours:  # where the neighbours' own evidence leads, on its own
            _, theirs, _, _, their_status = self._lineage(neighbours)
            # the walk only moves down from the lineage root: a called cell's lineage is root
            parts.neighbours(np.where(status == 0, root, -1),
                             np.where(their_status == 0, theirs, -1))
        conf = combine(parts)
        return node, root, conf, status, borrowed, refined

    def _lineage(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                np.ndarray, np.ndarray]:
        """The lineage step on cells x types scores: (cells x roots scores, best root's type
        index, best and second-best root score, status 0 / 1 no evidence / 2 contradictory)."""
        n = S.shape[0]
        roots = np.flatnonzero(self.is_root)
        R = S[:, roots]
        best, s1, second, s2 = _top2(R)
        status = np.zeros(n, dtype=np.int8)
        status[s1 < self.min_score] = 1
        related = (self._related_roots[best, second] if len(roots) > 1
                   else np.ones(n, dtype=bool))
        tie = ((status == 0) & (s2 >= self.strong_score) & ~related
               & ((s1 - s2 < self.tie_margin) | (s2 >= self.doublet_ratio * s1)))
        status[tie] = 2
        return R, roots[best], s1, s2, status

    def _contested(self, present: sp.csr_matrix, parents: np.ndarray, chosen: np.ndarray
                   ) -> np.ndarray:
        """Steps the cell's own decisive markers contest: the chosen child and a sibling are
        mutually exclusive (:data:`EXCLUSIVE_SIBLINGS`) and the cell expresses decisive
        markers (weight >= 2) of both, each side weighing at least half the other. Such a
        cell (CD4 and CD8A reads; S100A8/9 and FCGR3A on one monocyte) stays at the parent
        rather than be called either way."""
        if not hasattr(self, "_decisive_weights"):
            self._decisive_weights = sp.csr_matrix(
                (self.P * (self.P >= DECISIVE_WEIGHT)).T.astype(np.float32))
            where = {n: i for i, n in enumerate(self.names)}
            self._exclusive = np.zeros((len(self.names),) * 2, dtype=bool)
            for a, b in EXCLUSIVE_SIBLINGS:
                if a in where and b in where:
                    self._exclusive[where[a], where[b]] = self._exclusive[where[b], where[a]] = True
        out = np.zeros(len(chosen), dtype=bool)
        rows = np.flatnonzero((self.child_mask[parents] & self._exclusive[chosen]).any(axis=1))
        if not len(rows):  # most steps have no exclusive siblings: nothing to weigh
            return out
        H = np.asarray((sp.csr_matrix(present[rows], dtype=np.float32)
                        @ self._decisive_weights).todense())
        own = H[np.arange(len(rows)), chosen[rows]]
        sib_mask = self.child_mask[parents[rows]] & self._exclusive[chosen[rows]]
        sib = np.where(sib_mask, H, 0.0).max(axis=1)
        out[rows] = (own > 0) & (sib >= 0.5 * own) & (own >= 0.5 * sib)
        return out

    def _refine_step(self, depth: int, rows: np.ndarray, parents: np.ndarray,
                     c1: np.ndarray, ok: np.ndarray, pc: np.ndarray, present: sp.csr_matrix,
                     hard: HardSteps | None, refiner: StepRefiner | None,
                     refined: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Record the decisive steps of one depth; hand the others to the classifiers.

        A classifier fills in a missing step, or overrules a soft marker call only when that
        call is one of the subtypes it was trained on (it knows nothing of the others). Its
        step's sharpness is half its probability; the confidence records it apart from the
        marker steps (see :mod:`._confidence`).
        """
        if hard is None and not refiner:
            return c1, ok, pc
        if hard is None:  # only steps under a parent with a classifier need checking
            candidates = np.isin(parents, list(refiner.classifiers))
        else:
            candidates = np.ones(len(rows), dtype=bool)
        decisive = np.zeros(len(rows), dtype=bool)
        idx = np.flatnonzero(candidates & ok)
        decisive[idx] = decisive_steps(present[rows[idx]], self._decisive, self.child_mask,
                                       parents[idx], c1[idx])
        if hard is not None and decisive.any():
            hard.add(rows[decisive], parents[decisive], c1[decisive])
        if not refiner:
            return c1, ok, pc
        c1, ok, pc = c1.copy(), ok.copy(), pc.copy()
        for p in np.unique(parents[candidates & ~decisive]):
            clf = refiner.classifiers.get(int(p))
            if clf is None:
                continue
            sel = np.flatnonzero(~decisive & (parents == p) & (~ok | np.isin(c1, clf.children)))
            child, prob = refiner.predict(int(p), rows[sel])
            # a confident classifier that agrees with the markers leaves their call alone
            go = (prob >= self.refine_threshold) & (~ok[sel] | (child != c1[sel]))
            sel = sel[go]
            c1[sel], ok[sel], pc[sel] = child[go], True, 0.5 * prob[go]
            refined[rows[sel]] |= np.uint8(1 << depth)
        return c1, ok, pc
