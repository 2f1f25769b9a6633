"""Marker-based hierarchical reasoning: lineage first, then subtype, with a checkable trace.

Every cell is scored against every knowledge-base type at once (a sparse cells x markers
matrix times a dense markers x types weight matrix), then a vectorised walk down the lineage
tree picks the lineage root and, level by level, the best-supported child. A type's score is
the weighted fraction of its available positive markers that the cell expresses (full
evidence needs at least ``MIN_MARKERS`` distinct markers) minus a penalty for expressed
negative markers (saturating at ``NEG_SATURATION`` weight units, so a long negative list
does not dilute a strongly expressed contradicting marker). The walk stops at the deepest
level whose evidence is clear, and abstains ("Unknown") when no lineage is supported or two
lineages tie. With a kNN graph, sparse cells borrow their neighbours' evidence: at the lineage
level in proportion to how weak their own is, and at a subtype step only when their own markers
cannot take it. A subtype step with no decisive marker (dropout) is taken by a classifier
trained on the same dataset's decisive cells (:mod:`cellreasoner.backends.builtin.refine`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ...errors import InputError
from ...ontology.lineages import PRECURSORS, related_groups
from ._decisions import Decisions
from ._inputs import Inputs
from ._scoring import Scoring
from .markers import MarkerDB, load_markers
from .refine import decisive_matrix
from .traces import TraceWriter

UNKNOWN = "Unknown"


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
        The probability in [0, 1] that the call is right, from label-free signals (see
        :mod:`cellreasoner.backends.builtin._confidence`); at most 0.2 for an abstention.
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


def _cl_info(ids: Sequence[str]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """CL names and the related groups each id falls in
    (:func:`cellreasoner.ontology.lineages.related_groups`, shared with the label check).

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
        groups[i] = related_groups(anc, PRECURSORS)
    return labels, groups


def _group_evidence(E: sp.csr_matrix, inv: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Groups x markers evidence: the detection fraction in the group, saturating at half
    the cells (sporadic detection, below 0.2, is not evidence for a group)."""
    G = sp.csr_matrix((np.ones(len(inv), np.float32), (inv, np.arange(len(inv)))),
                      shape=(n_groups, len(inv)))
    sizes = np.asarray(G.sum(axis=1)).ravel()
    frac = sp.diags(1.0 / sizes) @ G @ (E > 0).astype(np.float32)
    Eg = sp.csr_matrix(np.minimum(np.asarray(frac.todense()) / 0.5, 1.0).astype(np.float32))
    Eg.eliminate_zeros()
    Eg.data[Eg.data < 0.2] = 0.0
    Eg.eliminate_zeros()
    return Eg


class Reasoner(Inputs, Scoring, Decisions):
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
    refine_sample_from
        Cells the refinement's training sample is drawn from (default 200,000; ``None``:
        every cell): of larger data, 20 evenly spaced windows of rows that add up to about
        this many, so pass one neither reads nor scores the rest (a third of a million-cell
        run). The sample keeps at most 1,000 decisive cells per subtype, which 200,000 cells
        fill for subtypes above ~0.5% of the cells.
    """

    #: What the matrix measures: ``"rna"`` or ``"atac"`` (gene activity): the traces' wording
    #: (set by the backend for each run; see :data:`.traces.WORDING`).
    modality: str = "rna"

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
        refine_sample_from: int | None = 200_000,
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
        self.refine_sample_from = (None if refine_sample_from is None
                                   else int(refine_sample_from))
        if self.refine_sample_from is not None and self.refine_sample_from < 1:
            raise InputError(f"refine_sample_from={refine_sample_from}: draw the training "
                             "sample from at least one cell (None: from every cell).")

        self._tables(db)

    def _tables(self, db: MarkerDB) -> None:
        """The knowledge base as arrays: weights, tree, citing order, CL names."""
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
        self._sparse_weights: dict[str, tuple] = {}
        self._cl_label, groups = _cl_info(list(self.cl_ids))
        roots = np.flatnonzero(self.is_root)
        self._related_roots = np.array(
            [[bool(groups[self.cl_ids[a]] & groups[self.cl_ids[b]]) for b in roots]
             for a in roots], dtype=bool).reshape(len(roots), len(roots))

    # ------------------------------------------------------------------ inputs
    @property
    def model(self) -> str:
        return f"cellreasoner-markers-{self.db.version}"

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
        from ...matrix import from_matrix

        blocks = list(self.iter_blocks(from_matrix(X, genes), connectivities,
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
        Eg = _group_evidence(E, inv, len(keys))
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
        E, measured, spelled = self._sentence_matrix(sentences, gene_list, max_genes)
        S = self.score(E, measured)
        node, root, conf, status = self.decide(S)
        text = (self.traces(E, measured, node, root, conf, status, S, spelled) if reasoning
                else [""] * len(node))
        return self._result(node, root, conf, status, text, S)


__all__ = ["UNKNOWN", "Reasoner", "ReasonerResult"]
