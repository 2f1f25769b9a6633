"""Marker-based hierarchical reasoning: lineage first, then subtype, with a checkable trace.

Every cell is scored against every knowledge-base type at once (a sparse cells x markers
matrix times a dense markers x types weight matrix), then a vectorised walk down the lineage
tree picks the lineage root and, level by level, the best-supported child. A type's score is
the weighted fraction of its available positive markers that the cell expresses (full
evidence needs at least :data:`MIN_MARKERS` distinct markers) minus a penalty for expressed
negative markers (saturating at :data:`NEG_SATURATION` weight units, so a long negative list
does not dilute a strongly expressed contradicting marker). The walk stops at the deepest
level whose evidence is clear, and abstains ("Unknown") when no lineage is supported or two
lineages tie. With a kNN graph, sparse cells borrow their neighbours' evidence: at the lineage
level in proportion to how weak their own is, and at a subtype step only when their own markers
cannot take it. A subtype step with no decisive marker (dropout) is taken by a classifier
trained on the same dataset's decisive cells (:mod:`cellreasoner.backends.builtin.refine`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ...errors import InputError
from .markers import ALIASES, MarkerDB, load_markers
from .refine import HardSteps, StepRefiner, decisive_matrix, decisive_steps
from .traces import TraceWriter

UNKNOWN = "Unknown"
#: Weight units of expressed negative markers at which the penalty is full.
NEG_SATURATION = 8.0
#: Distinct measured positive markers needed for full evidence.
MIN_MARKERS = 3.0


@dataclass
class ReasonerResult:
    """Per-cell (or per-group) answers of :class:`Reasoner`.

    Attributes
    ----------
    label
        Final label text (``"Unknown"`` when abstaining).
    ontology_id
        CL id of the label ("" when abstaining).
    ontology_label
        The CL term's name ("" when abstaining or when the ontology is unavailable).
    confidence
        Confidence in [0, 1].
    reasoning
        Marker-by-marker trace per cell.
    lineage
        The lineage root chosen (``"Unknown"`` when abstaining).
    """

    label: np.ndarray
    ontology_id: np.ndarray
    ontology_label: np.ndarray
    confidence: np.ndarray
    reasoning: list[str]
    lineage: np.ndarray
    scores: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.label)

    def to_frame(self, index: Sequence[str] | None = None):
        """The answers as a :class:`pandas.DataFrame`."""
        import pandas as pd

        return pd.DataFrame(
            {
                "label": self.label,
                "confidence": self.confidence,
                "ontology_id": self.ontology_id,
                "ontology_label": self.ontology_label,
                "lineage": self.lineage,
                "reasoning": self.reasoning,
            },
            index=None if index is None else list(index),
        )


#: CL groups within which two co-expressed lineages are related states, not a contradiction
#: (lymphocyte, mononuclear phagocyte, granulocyte, myeloid cell, epithelial cell, connective
#: tissue cell, glial cell, neuron); the B lineage is its own group.
RELATED_GROUPS = ("CL:0000542", "CL:0000113", "CL:0000094", "CL:0000763", "CL:0000066",
                  "CL:0002320", "CL:0000125", "CL:0000540")
B_LINEAGE = "CL:0000945"
#: hematopoietic precursor cell, precursor cell
PRECURSORS = frozenset({"CL:0008001", "CL:0011115"})


def _cl_info(ids: Sequence[str]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """CL names and the :data:`RELATED_GROUPS` each id falls in.

    An id the installed Cell Ontology does not know (e.g. from a user marker file) gets an
    empty name and no group.
    """
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    parser = OntologyParser()
    labels: dict[str, str] = {}
    groups: dict[str, set[str]] = {}
    for i in set(ids):
        try:
            labels[i] = parser.get_term_label(i)
            anc = {i} | set(parser.get_term_ancestors(i))
        except KeyError:
            labels[i], groups[i] = "", set()
            continue
        g = anc & set(RELATED_GROUPS)
        if B_LINEAGE in anc:  # B cells and T/NK cells are not states of one another
            g = (g - {"CL:0000542"}) | {B_LINEAGE}
        if anc & PRECURSORS:  # progenitors co-express the programmes they give rise to
            g = set(RELATED_GROUPS) | {B_LINEAGE}
        groups[i] = g
    return labels, groups


def looks_like_counts(X: sp.spmatrix | np.ndarray) -> bool:
    """True when every stored value is a whole number (log-normalised data never is)."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if data.size == 0:
        return False
    sample = data[: min(data.size, 200_000)]
    return bool(np.all(np.mod(sample, 1) == 0) and sample.max() >= 1)


def log_normalize(X: sp.csr_matrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p`` of counts scaled to ``target_sum`` per cell (CP10k by default)."""
    X = X.astype(np.float32, copy=True)
    totals = np.asarray(X.sum(axis=1)).ravel()
    totals[totals == 0] = 1.0
    X = sp.diags((target_sum / totals).astype(np.float32)) @ X
    X = sp.csr_matrix(X)
    np.log1p(X.data, out=X.data)
    return X


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


class Reasoner:
    """Annotate cells from marker evidence, hierarchically, with a reasoning trace.

    Parameters
    ----------
    markers
        A :class:`~.markers.MarkerDB`, a path to a user marker file (merged into
        the built-in base), or ``None`` (default) for the built-in knowledge base.
    tissue
        Restrict the knowledge base to a tissue (e.g. ``"blood"``); default ``None``: all.
    level
        Log-normalised expression at which a marker counts as fully present (default 2.0,
        about two UMIs in a typical 10x cell); lower values count proportionally.
    min_score
        Lineage evidence below this abstains with ``"Unknown"`` (default 0.2).
    min_child_score
        A subtype is chosen only with at least this evidence (default 0.25).
    child_margin
        ... and only when it beats its best sibling by this much (default 0.05).
    tie_margin, strong_score, doublet_ratio
        Two unrelated lineages (e.g. T and B cells, not monocyte and dendritic cell) both
        scoring at least ``strong_score`` (default 0.5), within ``tie_margin`` (default 0.02)
        or with the second at least ``doublet_ratio`` (default 0.9) of the first, are
        contradictory evidence (a doublet): abstain.
    negative_weight
        Weight of the negative-marker penalty (default 0.5).
    smoothing
        Largest weight of the neighbours' scores when a kNN graph is given (default 0.5,
        between 0 and 1); also their weight in a subtype step that the cell's own markers
        cannot take (a step its own markers can take is never overruled by them).
    strong_evidence
        Lineage score at which a cell would keep its own evidence unsmoothed (default 1.2,
        above the maximum score of 1, so a cell with full evidence still takes ~8% from its
        neighbours); below it the neighbours' weight grows linearly up to ``smoothing``.
    refine
        Self-training refinement in :meth:`annotate_matrix` (default ``True``): a subtype
        step without a decisive marker (dropout) is taken by a classifier trained on the same
        dataset's cells whose step rests on one (see :mod:`cellreasoner.backends.builtin.refine`).
    refine_threshold
        Probability the classifier needs to take a step (default 0.75, 3:1 odds).
    refine_min_cells
        Decisive cells each subtype needs before a classifier is trained (default 10).
    """

    def __init__(
        self,
        markers: MarkerDB | str | os.PathLike | None = None,
        tissue: str | Sequence[str] | None = None,
        *,
        level: float = 2.0,
        min_score: float = 0.2,
        min_child_score: float = 0.25,
        child_margin: float = 0.05,
        tie_margin: float = 0.02,
        strong_score: float = 0.5,
        doublet_ratio: float = 0.9,
        negative_weight: float = 0.5,
        smoothing: float = 0.5,
        strong_evidence: float = 1.2,
        refine: bool = True,
        refine_threshold: float = 0.75,
        refine_min_cells: int = 10,
    ) -> None:
        if isinstance(markers, MarkerDB):
            db = markers.restrict(tissue)
        else:
            db = load_markers(markers, tissue=tissue)
        if len(db) == 0:
            raise InputError("The marker knowledge base is empty after tissue restriction.")
        self.db = db
        self.level = float(level)
        self.min_score = float(min_score)
        self.min_child_score = float(min_child_score)
        self.child_margin = float(child_margin)
        self.tie_margin = float(tie_margin)
        self.strong_score = float(strong_score)
        self.doublet_ratio = float(doublet_ratio)
        self.negative_weight = float(negative_weight)
        self.smoothing = float(smoothing)
        if not 0.0 <= self.smoothing <= 1.0:
            raise InputError(f"smoothing={smoothing}: the neighbours' weight must be between 0 "
                             "(no smoothing) and 1.")
        self.strong_evidence = float(strong_evidence)
        self.refine = bool(refine)
        self.refine_threshold = float(refine_threshold)
        if not 0.5 <= self.refine_threshold < 1.0:
            raise InputError(f"refine_threshold={refine_threshold}: the probability a "
                             "classifier needs to take a step must be at least 0.5 and below "
                             "1 (refine=False turns the refinement off).")
        self.refine_min_cells = int(refine_min_cells)
        if self.refine_min_cells < 2:
            raise InputError(f"refine_min_cells={refine_min_cells}: a classifier needs at "
                             "least 2 training cells per subtype.")

        self.names = np.array(db.names, dtype=object)
        self.cl_ids = np.array([t.cl_id for t in db.types], dtype=object)
        self.genes = db.genes()
        gi = {g: i for i, g in enumerate(self.genes)}
        T, M = len(db), len(self.genes)
        self.P = np.zeros((T, M), dtype=np.float32)
        self.N = np.zeros((T, M), dtype=np.float32)
        for t, ct in enumerate(db.types):
            for g, w in ct.positive.items():
                self.P[t, gi[g]] = w
            for g, w in ct.negative.items():
                self.N[t, gi[g]] = w
        self.parent = np.array(
            [db.index(p) if (p := db.parent_of(n)) is not None else -1 for n in db.names]
        )
        self.is_root = self.parent < 0
        self.has_children = np.zeros(T, dtype=bool)
        self.has_children[self.parent[self.parent >= 0]] = True
        # child mask: row = parent type, columns = its children
        self.child_mask = np.zeros((T, T), dtype=bool)
        for c, p in enumerate(self.parent):
            if p >= 0:
                self.child_mask[p, c] = True
        # markers of each type sorted by weight (for citing), as python lists of gene indices
        self._pos_sorted = [list(np.argsort(-self.P[t], kind="stable")[: int((self.P[t] > 0)
                                                                              .sum())])
                            for t in range(T)]
        self._neg_sorted = [list(np.argsort(-self.N[t], kind="stable")[: int((self.N[t] > 0)
                                                                              .sum())])
                            for t in range(T)]
        self._decisive = decisive_matrix(self.P)
        self._sparse_weights: dict[int, tuple] = {}
        self._cl_label, groups = _cl_info(list(self.cl_ids))
        roots = np.flatnonzero(self.is_root)
        self._related_roots = np.array(
            [[bool(groups[self.cl_ids[a]] & groups[self.cl_ids[b]]) for b in roots]
             for a in roots], dtype=bool).reshape(len(roots), len(roots))

    # ------------------------------------------------------------------ inputs
    @property
    def model(self) -> str:
        return f"cellreasoner-markers-{self.db.version}"

    def _gene_columns(self, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(column in the data, marker index) for every marker the data measures, and the
        marker names as the data spells them (older aliases such as IGJ for JCHAIN)."""
        pos: dict[str, int] = {}
        for j, g in enumerate(genes):
            g = str(g)
            if g not in pos:
                pos[g] = j
        cols, idx = [], []
        spelled = list(self.genes)
        for m, g in enumerate(self.genes):
            j = pos.get(g)
            if j is None:
                for alias in ALIASES.get(g, ()):
                    if alias in pos:
                        j = pos[alias]
                        spelled[m] = alias
                        break
            if j is not None:
                cols.append(j)
                idx.append(m)
        return np.asarray(cols, dtype=np.int64), np.asarray(idx, dtype=np.int64), spelled

    def _marker_matrix(self, X, genes: Sequence[str]
                       ) -> tuple[sp.csr_matrix, np.ndarray, list[str]]:
        """Cells x markers evidence in [0, 1] (CSR), the measured-marker mask and the marker
        names as spelled in ``genes``."""
        if X.ndim != 2:
            raise InputError(f"Expression must be a 2-D cells x genes matrix, got {X.ndim}-D.")
        if X.shape[1] != len(genes):
            raise InputError(f"The matrix has {X.shape[1]} columns but {len(genes)} gene names "
                             "were given: pass one symbol per column.")
        X = sp.csr_matrix(X) if not sp.isspmatrix_csr(X) else X
        if X.nnz and X.data.min() < 0:
            raise InputError("The expression matrix has negative values (scaled data?). Pass "
                             "raw counts or log-normalised expression (e.g. adata.raw or a "
                             "'counts' layer), not z-scores.")
        if looks_like_counts(X):
            X = log_normalize(X)
        cols, idx, spelled = self._gene_columns(genes)
        if len(idx) == 0:
            example = ", ".join(list(genes)[:3])
            raise InputError(
                f"None of the {len(self.genes)} marker genes is among the {len(genes)} gene "
                f"names (e.g. {example}). Pass gene symbols (HGNC, e.g. CD3E), not Ensembl ids: "
                "use the var column holding symbols (adata.var['gene_symbols'] or similar).")
        measured = np.zeros(len(self.genes), dtype=bool)
        measured[idx] = True
        sub = X[:, cols].astype(np.float32)
        sub = sp.csr_matrix(sub)
        sub.data = np.minimum(sub.data / self.level, 1.0, dtype=np.float32)
        sub.eliminate_zeros()
        # scatter columns into marker order
        E = sub @ sp.csr_matrix(
            (np.ones(len(idx), dtype=np.float32), (np.arange(len(idx)), idx)),
            shape=(len(idx), len(self.genes)),
        )
        return sp.csr_matrix(E), measured, spelled

    # ------------------------------------------------------------------ scoring
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
        hits = self._times(E, self.P)
        # evidence saturates after ~8 weight units of markers; the coverage term (fraction
        # of all available markers seen) breaks ties between saturated lineages
        den = self._denominators(w_avail, n_avail)
        evidence = np.minimum(hits / den, 1.0)
        coverage = hits / np.maximum(w_avail, den)
        neg = np.minimum(self._times(E, self.N) / wn, 1.0)
        S = 0.8 * evidence + 0.2 * coverage - self.negative_weight * neg
        return S.astype(np.float32)

    def _times(self, E: sp.csr_matrix, W: np.ndarray) -> np.ndarray:
        """``E @ W.T`` (float32) over the non-zero weights only: the same sums, in the same
        order, as the dense product when every value is finite (a NaN or inf times a zero
        weight would spread, so those take the dense product)."""
        E = sp.csr_matrix(E)
        if E.dtype != np.float32 or not np.isfinite(E.data).all():
            return np.asarray(E @ W.T)
        from ._kernels import sparse_hits

        key = id(W)
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

    # ------------------------------------------------------------------ decisions
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
        its own scores mixed with its neighbours' (weight ``smoothing``), with a confidence
        discount. A subtype the cell's own markers decide is never overruled by the neighbours.

        With ``present`` (the cells x markers evidence), every step that rests on a decisive
        marker is recorded in ``hard``; with a ``refiner`` (see :mod:`.refine`), a
        step that does not is taken by its parent's classifier when that is at least
        ``refine_threshold`` sure.
        """
        n = S.shape[0]
        roots = np.flatnonzero(self.is_root)
        R = S[:, roots]
        best, s1, second, s2 = _top2(R)
        root = roots[best]
        status = np.zeros(n, dtype=np.int8)
        status[s1 < self.min_score] = 1
        related = (self._related_roots[best, second] if len(roots) > 1
                   else np.ones(n, dtype=bool))
        tie = ((status == 0) & (s2 >= self.strong_score) & ~related
               & ((s1 - s2 < self.tie_margin) | (s2 >= self.doublet_ratio * s1)))
        status[tie] = 2
        # confidence: sharpness among lineages x strength of evidence
        z = np.exp(12.0 * (R - s1[:, None]))
        p_root = 1.0 / z.sum(axis=1)
        strength = 1.0 / (1.0 + np.exp(-(s1 - 0.3) / 0.06))
        conf = p_root * strength
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
                c1[stuck], ok[stuck], pc[stuck] = c2, ok2, (1 - a) * pc2
                borrowed[rows[stuck[ok2]]] |= np.uint8(1 << depth)
            if present is not None:
                c1, ok, pc = self._refine_step(depth, rows, node[rows], c1, ok, pc, present,
                                               hard, refiner, refined)
            acc = rows[ok]
            node[acc] = c1[ok]
            conf[acc] *= 0.5 + 0.5 * pc[ok]
            active[:] = False
            active[acc] = self.has_children[node[acc]]
        conf = np.where(status == 0, conf, np.minimum(conf, 0.2) * (status == 2) +
                        (status == 1) * strength * 0.5)
        return (node, root, np.clip(conf, 0.0, 1.0).astype(np.float32), status, borrowed,
                refined)

    def _refine_step(self, depth: int, rows: np.ndarray, parents: np.ndarray,
                     c1: np.ndarray, ok: np.ndarray, pc: np.ndarray, present: sp.csr_matrix,
                     hard: HardSteps | None, refiner: StepRefiner | None,
                     refined: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Record the decisive steps of one depth; hand the others to the classifiers.

        A classifier fills in a missing step, or overrules a soft marker call only when that
        call is one of the subtypes it was trained on (it knows nothing of the others). Its
        step counts half as sure as its probability in the confidence.
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

    # ------------------------------------------------------------------ traces
    def traces(self, E: sp.csr_matrix, measured, node: np.ndarray, root: np.ndarray,
               conf: np.ndarray, status: np.ndarray, S: np.ndarray,
               names: Sequence[str] | None = None,
               borrowed: np.ndarray | None = None,
               refined: np.ndarray | None = None) -> list[str]:
        """One marker-by-marker reasoning text per cell (see :class:`.traces.TraceWriter`)."""
        writer = TraceWriter(self, list(self.genes) if names is None else names)
        return writer.write(E, measured, node, root, conf, status, S, borrowed,
                            refined).tolist()

    # ------------------------------------------------------------------ public API
    def _result(self, node, root, conf, status, reasoning, S) -> ReasonerResult:
        if not hasattr(self, "_answer_table"):  # per type: label, CL id, CL name
            self._answer_table = (
                np.append(self.names, UNKNOWN).astype(object),
                np.append(self.cl_ids, "").astype(object),
                np.array([self._cl_label.get(c, "") if c else "" for c in self.cl_ids] + [""],
                         dtype=object))
        names, ids, labels = self._answer_table
        at = np.where(node >= 0, node, len(self.names))
        lineage = np.where(node >= 0, self.names[root], UNKNOWN).astype(object)
        return ReasonerResult(names[at], ids[at], labels[at], conf, reasoning, lineage, S)

    def annotate_matrix(
        self,
        X,
        genes: Sequence[str],
        connectivities=None,
        *,
        reasoning: bool = True,
        chunk_size: int = 20_000,
    ) -> ReasonerResult:
        """Annotate every row of a cells x genes matrix held in memory.

        Parameters
        ----------
        X
            Counts or log-normalised expression (sparse or dense); counts are normalised to
            log1p CP10k internally.
        genes
            Gene symbols, one per column.
        connectivities
            Optional cells x cells kNN graph (``adata.obsp["connectivities"]``); scores are
            smoothed over neighbours (default ``None``: none).
        reasoning
            Build the reasoning traces (default ``True``; ``False`` returns empty strings).
        chunk_size
            Cells scored at a time (default 20,000).
        """
        from ._stream import matrix_source

        blocks = list(self.iter_blocks(matrix_source(X, genes), connectivities,
                                       reasoning=reasoning, chunk_size=chunk_size))
        if not blocks:
            return self._result(np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32),
                                np.zeros(0, np.int8), [], np.zeros((0, len(self.names))))
        return ReasonerResult(
            *(np.concatenate([getattr(b.result, f) for b in blocks])
              for f in ("label", "ontology_id", "ontology_label", "confidence")),
            [t for b in blocks for t in b.result.reasoning],
            np.concatenate([b.result.lineage for b in blocks]),
            np.vstack([b.result.scores for b in blocks]))

    def iter_blocks(self, source, connectivities=None, *, reasoning: bool = True,
                    chunk_size: int = 20_000, evidence=None) -> Iterator:
        """Annotate a :class:`~cellreasoner.matrix.MatrixSource` block by block, in order.

        Memory is bounded by ``chunk_size`` (plus the cells x types scores when a kNN graph
        is given, and the refinement's training rows); yields
        :class:`._stream.Block` objects. ``evidence`` (an :class:`._stream.EvidenceSpec`)
        adds each cell's evidence check against its cell sentence.
        """
        from ._stream import annotate_stream

        yield from annotate_stream(self, source, connectivities, reasoning=reasoning,
                                   chunk_size=chunk_size, evidence=evidence)

    def _decisive_columns(self, genes: Sequence[str]) -> Callable[[int], np.ndarray]:
        """parent -> data columns of its children's decisive markers (left out of the
        refinement classifier's features): every column spelling one, duplicates and older
        aliases included."""
        columns: dict[str, list[int]] = {}
        for j, g in enumerate(genes):
            columns.setdefault(str(g), []).append(j)

        def excluded(parent: int) -> np.ndarray:
            kids = np.flatnonzero(self.child_mask[parent])
            out: list[int] = []
            for m in np.unique(self._decisive[kids].indices):
                for name in (self.genes[m], *ALIASES.get(self.genes[m], ())):
                    out.extend(columns.get(name, ()))
            return np.asarray(sorted(out), dtype=np.int64)

        return excluded

    def annotate_groups(self, X, genes: Sequence[str], groups: Sequence,
                        *, reasoning: bool = True) -> tuple[ReasonerResult, list]:
        """Annotate groups of cells (clusters) from their mean marker evidence.

        Returns the per-group result and the group keys, in order of first appearance.
        """
        groups = np.asarray(groups)
        if len(groups) != X.shape[0]:
            raise InputError(f"{len(groups)} group labels for {X.shape[0]} cells.")
        keys, inv = np.unique(groups.astype(str), return_inverse=True)
        E, measured, spelled = self._marker_matrix(X, [str(g) for g in genes])
        G = sp.csr_matrix((np.ones(len(inv), np.float32), (inv, np.arange(len(inv)))),
                          shape=(len(keys), len(inv)))
        sizes = np.asarray(G.sum(axis=1)).ravel()
        # detection fraction in the group, saturating at half the cells
        frac = sp.diags(1.0 / sizes) @ G @ (E > 0).astype(np.float32)
        Eg = sp.csr_matrix(np.minimum(np.asarray(frac.todense()) / 0.5, 1.0).astype(np.float32))
        Eg.eliminate_zeros()
        Eg.data[Eg.data < 0.2] = 0.0  # sporadic detection is not evidence for a group
        Eg.eliminate_zeros()
        S = self.score(Eg, measured)
        node, root, conf, status = self.decide(S)
        text = (self.traces(Eg, measured, node, root, conf, status, S, spelled) if reasoning
                else [""] * len(node))
        return self._result(node, root, conf, status, text, S), list(keys)

    def annotate_sentences(
        self,
        sentences: Sequence[str],
        *,
        gene_list: Sequence[str] | None = None,
        max_genes: int = 1000,
        reasoning: bool = True,
    ) -> ReasonerResult:
        """Annotate cell sentences (``", "``-joined expressed genes; presence only).

        Parameters
        ----------
        sentences
            One sentence per cell.
        gene_list
            The ranked gene list the sentences were built from (default ``None``: every
            marker counts as measured). With it, markers outside the list, or ranked after the
            last gene of a sentence that hit ``max_genes``, count as unmeasured, not absent.
        max_genes
            Sentence length cap used when building the sentences (default 1000).
        """
        gi = {g: i for i, g in enumerate(self.genes)}
        for g, alts in ALIASES.items():
            if g in gi:
                for a in alts:
                    gi.setdefault(a, gi[g])
        rows, cols = [], []
        spelled = list(self.genes)
        n = len(sentences)
        lengths = np.zeros(n, dtype=np.int64)
        last = [""] * n
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise InputError(f"Cell sentence {i} is {type(s).__name__}, not text.")
            toks = [t.strip() for t in s.split(",")]
            toks = [t for t in toks if t]
            lengths[i] = len(toks)
            if toks:
                last[i] = toks[-1]
            for t in toks:
                m = gi.get(t)
                if m is not None:
                    rows.append(i)
                    cols.append(m)
                    if t != self.genes[m]:
                        spelled[m] = t
        E = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                          shape=(n, len(self.genes)))
        E.sum_duplicates()
        E.data[:] = 1.0
        if gene_list is None:
            measured: np.ndarray | sp.csr_matrix = np.ones(len(self.genes), dtype=bool)
        else:
            rank = {g: r for r, g in enumerate(gene_list)}
            big = len(gene_list) + 1
            mrank = np.array([min([rank.get(g, big)] + [rank.get(a, big)
                                                        for a in ALIASES.get(g, ())])
                              for g in self.genes])
            in_list = mrank < big
            truncated = lengths >= max_genes
            if truncated.any():
                cutoff = np.array([rank.get(last[i], big) if truncated[i] else big
                                   for i in range(n)])
                A = (mrank[None, :] <= cutoff[:, None]) & in_list[None, :]
                measured = sp.csr_matrix(A.astype(np.float32))
            else:
                measured = in_list
        S = self.score(E, measured)
        node, root, conf, status = self.decide(S)
        text = (self.traces(E, measured, node, root, conf, status, S, spelled) if reasoning
                else [""] * len(node))
        return self._result(node, root, conf, status, text, S)


__all__ = ["UNKNOWN", "Reasoner", "ReasonerResult", "log_normalize", "looks_like_counts"]
