"""The marker reasoner over a stream of row blocks, in bounded memory.

Pass one (only with the self-training refinement or a kNN graph) scores every block (of data
larger than the reasoner's ``refine_sample_from`` without a graph, spaced windows of about that
many cells: :func:`pass_one_spans`) and keeps what later steps need: the training sample of the
classifiers (per subtype step, the count of decisive cells and a bounded seeded sample of them
with their expression rows, merged block by block) and, with a graph, the cells x types scores
the neighbours share.
The classifiers are trained on that sample without reading the data again. Pass two walks,
refines and writes each block's traces and evidence, reading the classifier's expression rows
from the block itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ...matrix import MatrixSource, row_spans
from .refine import (
    HardSteps,
    StepRefiner,
    TrainingSample,
    fit_calls,
    fit_step_classifiers,
)
from .traces import TraceWriter

if TYPE_CHECKING:
    from .reasoner import Reasoner, ReasonerResult

#: Stored values that decide whether the expression is counts (as the in-memory check did).
_COUNTS_SAMPLE = 200_000


@dataclass(frozen=True)
class EvidenceSpec:
    """How the engine builds cell sentences, to check each trace against its cell's.

    ``gene_list`` is the ranked vocabulary of the sentences, ``max_genes`` their length cap.
    """

    gene_list: tuple[str, ...]
    max_genes: int = 1000


@dataclass
class Block:
    """The answers for cells ``start ... start + len(result) - 1``.

    ``evidence`` is ``(fraction, flag, cited_present, cited_absent)`` when asked for.
    """

    start: int
    result: ReasonerResult
    evidence: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def annotate_stream(r: Reasoner, source: MatrixSource, connectivities=None, *,
                    reasoning: bool = True, chunk_size: int = 20_000,
                    evidence: EvidenceSpec | None = None) -> Iterator[Block]:
    """:meth:`Reasoner.iter_blocks`: blocks of answers, in row order."""
    genes = [str(g) for g in source.var_names]
    plan = StreamPlan()
    spans = pass_one_spans(r, source.n_obs, connectivities, chunk_size)
    if spans:
        planner = StreamPlanner(r, connectivities)
        for start, chunk in source.iter_spans(spans):
            planner.add(score_chunk(r, chunk, genes, start,
                                    keep_scores=connectivities is not None,
                                    bounds=planner.bounds()))
        plan = planner.plan(source)
        del planner  # the training rows are not needed for pass two
    answer = ChunkAnswerer(r, genes, reasoning=reasoning, evidence=evidence)
    start = 0
    for chunk in source.iter_chunks(chunk_size):
        if chunk.shape[0]:
            yield answer(chunk, start, plan)
            start += chunk.shape[0]


@dataclass
class StreamPlan:
    """What pass one hands pass two: the refinement's classifiers, whether the data is counts,
    and (with a kNN graph) every cell's scores and the graph. Empty when no pass one ran."""

    classifiers: dict = field(default_factory=dict)
    counts: bool = False
    scores: np.ndarray | None = None
    graph: _Graph | None = None


@dataclass
class ChunkScores:
    """Pass one over one chunk of cells ``start ...``: its training sample (``None`` without
    the refinement), the first stored values (the counts check) and its scores (only when a
    kNN graph needs them)."""

    start: int
    training: TrainingSample | None
    sample: np.ndarray
    scores: np.ndarray | None = None


def needs_pass_one(r: Reasoner, connectivities) -> bool:
    """Whether pass two needs a first pass (refinement or kNN smoothing)."""
    return bool(r.refine or (connectivities is not None and r.smoothing > 0))


#: Windows of rows pass one scores of data larger than the reasoner's ``refine_sample_from``
#: (evenly spaced, so a file sorted by sample or batch is sampled across all of them).
PASS_ONE_WINDOWS = 20


def pass_one_spans(r: Reasoner, n_obs: int, connectivities,
                   chunk_size: int) -> list[tuple[int, int]]:
    """The cells pass one scores, as ``(start, stop)`` row spans: none without a pass one;
    every cell, in chunks of ``chunk_size``, with kNN smoothing (it needs every cell's scores)
    or up to ``r.refine_sample_from`` cells; else every ``k``-th window of
    ``refine_sample_from / 20`` rows from the first (the same cells whatever the engine or its
    chunk size, so every engine trains the same classifiers)."""
    if not needs_pass_one(r, connectivities):
        return []
    cap = r.refine_sample_from
    if cap is None or n_obs <= cap or (connectivities is not None and r.smoothing > 0):
        return row_spans(n_obs, chunk_size)
    window = -(-cap // PASS_ONE_WINDOWS)
    every = max(1, -(-n_obs // window) // PASS_ONE_WINDOWS)
    return row_spans(n_obs, window, every * window)


def score_chunk(r: Reasoner, chunk: sp.csr_matrix, genes: list[str], start: int, *,
                keep_scores: bool, bounds: dict | None = None) -> ChunkScores:
    """Pass one over one chunk (independent of every other chunk: runs anywhere; ``bounds``,
    a :meth:`StreamPlanner.bounds` of the chunks scored so far, only spares copying rows
    that sample would drop)."""
    E, measured, _ = r._marker_matrix(chunk, genes)
    S = r.score(E, measured)
    training = None
    if r.refine:
        local = HardSteps()
        r._walk(S, present=E, hard=local)  # the cells whose steps rest on decisive markers
        for i, cells in enumerate(local.cells):
            local.cells[i] = cells + start
        training = TrainingSample.from_chunk(local, chunk, start, TRAIN_CELLS, bounds=bounds)
    # a copy: a view of the first values would keep the whole chunk alive
    return ChunkScores(start, training, np.array(chunk.data[:_COUNTS_SAMPLE]),
                       S if keep_scores and r.smoothing > 0 else None)


class StreamPlanner:
    """Pass one's chunk scores, taken in as they arrive (any order; each chunk's training
    rows are merged into the one bounded sample at once) -> the :class:`StreamPlan`: the
    counts decision on the first stored values (as for a whole in-memory matrix), the kNN
    graph, and the refinement's classifiers."""

    def __init__(self, r: Reasoner, connectivities) -> None:
        self.r, self.connectivities = r, connectivities
        self.training = TrainingSample(TRAIN_CELLS)
        self.parts: dict[int, ChunkScores] = {}

    def add(self, part: ChunkScores) -> None:
        """Take in one chunk's scores."""
        if part.training is not None:
            self.training.merge(part.training)
            part.training = None
        self.parts[part.start] = part

    def bounds(self) -> dict[tuple[int, int], int]:
        """The running training sample's :meth:`~.refine.TrainingSample.bounds` (for
        :func:`score_chunk`)."""
        return self.training.bounds()

    def export(self) -> tuple[dict[int, ChunkScores], TrainingSample]:
        """What another process's planner :meth:`merge` s: the chunks taken in so far, their
        training sample without its rows (the merging planner then asks for the rows of its
        merged sample: :meth:`sample_cells` -> :meth:`rows_of` -> :meth:`attach`)."""
        return self.parts, self.training.without_rows()

    def sample_cells(self) -> np.ndarray:
        """The cells of the merged training sample (whose rows :meth:`attach` takes)."""
        return self.training.cells()

    def rows_of(self, cells: np.ndarray) -> list[tuple[np.ndarray, sp.csr_matrix]]:
        """The rows this planner holds of ``cells`` (sent to the merging planner)."""
        return self.training.rows_of(cells)

    def attach(self, parts: list[tuple[np.ndarray, sp.csr_matrix]]) -> None:
        """Take in the rows another planner's :meth:`rows_of` sent."""
        self.training.attach(parts)

    def merge(self, parts: dict[int, ChunkScores], training: TrainingSample) -> None:
        """Take in another planner's :meth:`export` (chunks of other cells)."""
        self.parts.update(parts)
        self.training.merge(training)

    def plan(self, source: MatrixSource, map_calls=None) -> StreamPlan:
        """The plan; ``map_calls`` (a list of ``(fn, args)`` -> their results, e.g. run on
        worker processes) trains the refinement's classifiers side by side."""
        from ...checks import log_normalize, looks_like_counts

        r, parts = self.r, [self.parts[k] for k in sorted(self.parts)]
        sample: list[np.ndarray] = []
        seen = 0
        for part in parts:
            if seen >= _COUNTS_SAMPLE:
                break
            sample.append(part.sample[:_COUNTS_SAMPLE - seen])
            seen += len(sample[-1])
        counts = bool(sample) and looks_like_counts(np.concatenate(sample))
        plan = StreamPlan(counts=counts)
        if self.connectivities is not None and r.smoothing > 0:
            scores = [p.scores for p in parts if p.scores is not None]
            plan.scores = (np.vstack(scores) if scores
                           else np.zeros((0, len(r.names)), np.float32))
            plan.graph = _Graph(r._graph(self.connectivities, source.n_obs))
        if r.refine:
            genes = [str(g) for g in source.var_names]
            kept = self.training.expression()

            def expression(rows: np.ndarray) -> sp.csr_matrix:
                sub = kept(rows)
                return log_normalize(sub) if counts else sub

            training = self.training.plan(min_cells=r.refine_min_cells)
            excluded = r._decisive_columns(genes)
            if map_calls is None or len(training.steps) < 2:
                plan.classifiers = fit_step_classifiers(training, expression, len(genes),
                                                        excluded)
            else:  # the same classifiers, trained in parallel
                for part in map_calls(fit_calls(training, expression, len(genes), excluded,
                                                parts=len(training.steps))):
                    plan.classifiers.update(part)
        return plan


#: Training cells drawn per subtype at most (beyond a thousand, more cells cost time, not
#: accuracy; below it every decisive cell trains)
TRAIN_CELLS = 1000


class ChunkAnswerer:
    """Pass two over one chunk: walk, refine and write its traces and evidence (independent
    of every other chunk given the :class:`StreamPlan`: runs anywhere)."""

    def __init__(self, r: Reasoner, genes: list[str], *, reasoning: bool = True,
                 evidence: EvidenceSpec | None = None) -> None:
        self.r, self.genes, self.reasoning, self.evidence = r, genes, reasoning, evidence
        spelled = r._gene_columns(genes)[2]
        self.writer = TraceWriter(r, spelled, None if evidence is None else
                                  list(dict.fromkeys([*evidence.gene_list, *genes])))
        self.sentences = None if evidence is None else _Sentences(evidence, genes)

    def __call__(self, chunk: sp.csr_matrix, start: int, plan: StreamPlan) -> Block:
        r, writer, evidence = self.r, self.writer, self.evidence
        n = chunk.shape[0]
        E, measured, _ = r._marker_matrix(chunk, self.genes)
        S = plan.scores[start:start + n] if plan.scores is not None else r.score(E, measured)
        refine: dict = {}
        if r.refine:
            refine = {"present": E,
                      "refiner": StepRefiner(plan.classifiers, _rows_of(chunk, plan.counts), n)}
        own_node = None
        if plan.graph is not None:
            if self.reasoning:  # the trace notes where the neighbours changed the call
                own_node = r._walk(S, **refine)[0]
            own = S
            S, neighbours = r._mix(S, *plan.graph.mean(plan.scores, start, n), r.smoothing)
            node, root, conf, status, borrowed, refined = r._walk(S, neighbours, own, **refine)
        else:
            node, root, conf, status, borrowed, refined = r._walk(S, **refine)
        ev = None
        if self.reasoning:
            K = writer.keys(E, measured, node, root, status, S, borrowed, refined, own_node)
            text, inv, uniq, parts = writer.texts(K, conf, S, root)
            if evidence is not None:
                ev = _evidence(writer, inv, uniq, parts, text, chunk, self.sentences)
        else:
            text = np.full(n, "", dtype=object)
            if evidence is not None:
                ev = (np.full(n, np.nan), np.zeros(n, dtype=bool), text, text)
        return Block(start, r._result(node, root, conf, status, text.tolist(), S), ev)


def _rows_of(chunk, counts: bool):
    """rows -> those cells' log-normalised expression, read from the block itself."""
    from ...checks import log_normalize

    def rows_of(rows: np.ndarray) -> sp.csr_matrix:
        sub = sp.csr_matrix(chunk[np.asarray(rows)], dtype=np.float32)
        return log_normalize(sub) if counts else sub

    return rows_of


class _Graph:
    """The kNN graph, row-normalised block by block exactly as for the whole matrix."""

    def __init__(self, W: sp.csr_matrix) -> None:
        self.W = W
        deg = np.asarray(W.sum(axis=1)).ravel()
        self.has = deg > 0
        deg[~self.has] = 1.0
        self.deg = deg

    def mean(self, S: np.ndarray, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start ... start + n - 1`` of the neighbours' mean scores, and which of those
        cells have neighbours."""
        rows = slice(start, start + n)
        neigh = np.asarray(sp.diags(1.0 / self.deg[rows]) @ self.W[rows] @ S, dtype=np.float32)
        return neigh, self.has[rows]


class _Sentences:
    """Which genes each cell's sentence holds: the cell's non-zero genes of the ranked list,
    in its order, cut at ``max_genes`` (as :func:`cellreasoner.sentences.build_sentences`
    builds them)."""

    def __init__(self, spec: EvidenceSpec, var_names: list[str]) -> None:
        self.spec = spec
        self.var_names = np.asarray(var_names, dtype=object)
        self.position: dict[str, int] = {}
        for p, g in enumerate(spec.gene_list):
            self.position.setdefault(g, p)
        self.column: dict[str, int] = {}
        self.col_pos = np.full(len(var_names), -1, dtype=np.int32)
        for j, g in enumerate(var_names):
            if g in self.column:  # duplicated symbol: the first column is the gene
                continue
            self.column[g] = j
            self.col_pos[j] = self.position.get(g, -1)

    def members(self, chunk: sp.csr_matrix, genes: list[str]) -> np.ndarray:
        """Cells x ``genes``: whether each cell's sentence holds each gene (two row halves
        at a time: the compiled kernel releases the GIL)."""
        from ._kernels import sentence_members

        col_slot = np.full(chunk.shape[1], -1, dtype=np.int32)
        slot_pos = np.full(len(genes), -1, dtype=np.int32)
        for s, g in enumerate(genes):
            j = self.column.get(g)
            if j is not None and self.col_pos[j] >= 0:
                col_slot[j], slot_pos[s] = s, self.col_pos[j]
        n = chunk.shape[0]
        out = np.zeros((n, len(genes)), dtype=bool)

        def run(lo: int, hi: int) -> None:
            sentence_members(chunk.indptr[lo:hi + 1], chunk.indices, chunk.data, self.col_pos,
                             len(self.spec.gene_list), self.spec.max_genes, col_slot,
                             slot_pos, out[lo:hi])

        if n < 4096:
            run(0, n)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as pool:
                list(pool.map(run, (0, n // 2), (n // 2, n)))
        return out

    def cell_genes(self, chunk: sp.csr_matrix) -> list[list[str]]:
        """Each cell's sentence genes (for the parser's own check)."""
        from ...sentences import build_sentences

        part = MatrixSource(n_obs=chunk.shape[0], var_names=self.var_names,
                            obs_names=np.arange(chunk.shape[0]).astype(str),
                            _chunks=lambda size: iter([chunk]))
        built = build_sentences(part, list(self.spec.gene_list),
                                max_genes=self.spec.max_genes, chunk_size=chunk.shape[0])
        return [built.cell_genes(i) for i in range(chunk.shape[0])]


def _evidence(writer: TraceWriter, inv, uniq, parts, text, chunk, sentences: _Sentences):
    """The block's evidence columns, checked against each cell's sentence genes."""
    if not writer.numbers_plain:  # numbers could read as genes: parse each text as it is
        return _parsed_evidence(text, sentences.cell_genes(chunk), writer.vocabulary)
    cid, cneg = writer.citations(uniq, parts)
    return writer.evidence(inv, cid, cneg, lambda genes: sentences.members(chunk, genes))


def _parsed_evidence(text, cell_genes, vocabulary):
    from ...evidence import check_evidence_many

    ev = check_evidence_many(list(text), cell_genes, vocabulary=vocabulary)
    some = ev["n_cited"].to_numpy() > 0
    frac = np.where(some, ev["fraction_present"].to_numpy(dtype=np.float64), np.nan)
    flag = some & ev["flagged"].to_numpy(dtype=bool)
    present = np.where(some, ev["present"].to_numpy(dtype=object), "").astype(object)
    absent = np.where(some, ev["absent"].to_numpy(dtype=object), "").astype(object)
    return frac, flag, present, absent


__all__ = ["Block", "ChunkAnswerer", "ChunkScores", "EvidenceSpec", "StreamPlan",
           "StreamPlanner", "annotate_stream", "needs_pass_one", "pass_one_spans",
           "score_chunk"]
