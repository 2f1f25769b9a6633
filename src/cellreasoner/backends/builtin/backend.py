"""The no-download default backend: the marker reasoner answers like a model would."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import InputError
from ...prompts import Prompt, SamplingParams
from ..base import (
    Backend,
    Capabilities,
    CellAnswers,
    Generation,
    ProgressCallback,
    ResultCallback,
    RunContext,
)
from .markers import MarkerDB
from .reasoner import Reasoner, ReasonerResult

if TYPE_CHECKING:
    from ...matrix import MatrixSource

#: Sentences answered per progress tick.
CHUNK = 10_000
#: Sentence length cap assumed when neither the constructor nor the run sets one.
DEFAULT_MAX_GENES = 1000


def _generations(res: ReasonerResult) -> list[Generation]:
    return [
        Generation(
            text=str(res.label[i]),
            reasoning=res.reasoning[i],
            meta={
                "confidence": float(res.confidence[i]),
                "ontology_id": str(res.ontology_id[i]),
                "ontology_label": str(res.ontology_label[i]),
                "lineage": str(res.lineage[i]),
            },
        )
        for i in range(len(res))
    ]


class BuiltinBackend(Backend):
    """Answer CellReasoner prompts with the built-in marker reasoner (no model download).

    Parameters
    ----------
    markers
        A user marker file merged into the built-in knowledge base, a ready
        :class:`~.markers.MarkerDB`, or ``None`` (default) for the built-in one.
    tissue
        Restrict the knowledge base to a tissue (e.g. ``"blood"``); default ``None``: the
        run's tissue (:meth:`configure`), else all.
    gene_list
        The ranked gene list the cell sentences were built from (a path or a list of
        symbols), so that markers the sentence could not contain count as unmeasured rather
        than absent. Default ``None``: the run's gene list (:meth:`configure`); without a
        run, ``$CELLREASONER_GENE_LIST`` when set (never downloads), else every marker counts
        as measured.
    max_genes
        Sentence length cap used when the sentences were built (default ``None``: the run's,
        else 1000).
    **options
        Passed to :class:`~.reasoner.Reasoner` (``min_score``, ``smoothing``, ...).
    """

    name = "builtin"
    capabilities = Capabilities(reads="matrix", tissue=True, confidence=True, ontology=True,
                                evidence=True,
                                chunk_jobs=True)

    def __init__(
        self,
        markers: MarkerDB | str | os.PathLike | None = None,
        tissue: str | Sequence[str] | None = None,
        gene_list: str | os.PathLike | Sequence[str] | None = None,
        max_genes: int | None = None,
        **options,
    ) -> None:
        self._markers, self._options = markers, options
        self._given = {"tissue": tissue is not None, "gene_list": gene_list is not None,
                       "max_genes": max_genes is not None}
        self.reasoner = Reasoner(markers, tissue, **options)
        self.model = self.reasoner.model
        self.tissue = tissue
        self.species = "human"
        self.max_genes = DEFAULT_MAX_GENES if max_genes is None else int(max_genes)
        self._gene_list = self._resolve_gene_list(gene_list)

    @staticmethod
    def _resolve_gene_list(gene_list) -> list[str] | None:
        if gene_list is None:
            env = os.environ.get("CELLREASONER_GENE_LIST")
            if not env:
                return None
            gene_list = env
        if isinstance(gene_list, str | os.PathLike):
            from ...resources import load_gene_list

            return load_gene_list(gene_list)
        genes = [str(g) for g in gene_list]
        if not genes:
            raise InputError("gene_list is empty: pass the ranked gene list the cell sentences "
                             "were built from, or None.")
        return genes

    def configure(self, context: RunContext) -> None:
        """Take the run's gene list, sentence length and tissue, where the constructor did
        not set them (so a ``BuiltinBackend()`` object behaves like ``"builtin"``), and its
        species: mouse data is read through the knowledge base in mouse symbols."""
        if not self._given["gene_list"]:
            self._gene_list = [str(g) for g in context.gene_list]
        if not self._given["max_genes"]:
            self.max_genes = int(context.max_genes)
        # a run without a tissue gets the whole knowledge base back (an object reused across
        # runs must not keep an earlier run's tissue)
        want = self.tissue if self._given["tissue"] else (context.tissue or None)
        species = context.species
        if want != self.tissue or species != self.species:
            self.reasoner = Reasoner(self._species_markers(species), want, **self._options)
            self.model = self.reasoner.model
            self.tissue, self.species = want, species
        # gene activity (scATAC-seq) is read through the ATAC profile, its traces say so
        self.reasoner.modality = context.modality

    def _species_markers(self, species: str) -> MarkerDB | str | os.PathLike | None:
        """The knowledge base for ``species``: as given for human, translated for mouse."""
        if species == "human":
            return self._markers
        from ...species import load_orthologs, mouse_marker_db
        from .markers import load_markers

        db = self._markers if isinstance(self._markers, MarkerDB) else load_markers(
            self._markers)
        return mouse_marker_db(db, load_orthologs())

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[list[Generation]]:
        """Answer each prompt's cell sentence; deterministic, so the ``n`` samples agree."""
        out: list[list[Generation]] = []
        n = max(1, int(sampling.n))
        for lo in range(0, len(prompts), CHUNK):
            chunk = prompts[lo:lo + CHUNK]
            res = self.reasoner.annotate_sentences(
                [p.sentence for p in chunk], gene_list=self._gene_list,
                max_genes=self.max_genes)
            for g in _generations(res):
                out.append([g] * n)
                if on_result is not None:
                    on_result(len(out) - 1, out[-1])
            if progress is not None:
                progress(len(chunk))
        return out

    def annotate_matrix(
        self,
        source: MatrixSource,
        *,
        connectivities=None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[CellAnswers]:
        """Per-cell answers from expression (counts or log-normalised), block by block.

        ``connectivities`` (``adata.obsp["connectivities"]``) smooths evidence over the kNN
        graph; default ``None``. Each block carries the evidence check of its traces against
        the cells' sentences (the run's gene list and ``max_genes``).
        """
        source = self.read_matrix(source)
        job = self.chunk_job(source)
        yield from job.run(source, connectivities, progress)

    def read_matrix(self, source: MatrixSource) -> MatrixSource:
        """The matrix as the reasoner reads it: gene activity (scATAC-seq) through the ATAC
        profile, expression as it is."""
        if self.reasoner.modality != "atac":
            return source
        from .atac import AtacProfile

        return AtacProfile().calibrate(source, self.reasoner)

    def chunk_job(self, source: MatrixSource) -> ChunkJob:
        """What answering chunks of ``source`` needs, self-contained (picklable): the engine
        ships it to workers, which answer their chunks with the code a single process runs."""
        from ._stream import EvidenceSpec

        return ChunkJob(self.reasoner, [str(g) for g in source.var_names],
                        EvidenceSpec(tuple(self._sentence_genes(source)), self.max_genes))

    def _sentence_genes(self, source: MatrixSource) -> list[str]:
        """The run's gene list; else what the engine uses for the builtin without one: the
        local copy of the published list, else the data's own genes."""
        if self._gene_list is not None:
            return self._gene_list
        from ...resources import load_gene_list, local_gene_list_path

        path = local_gene_list_path()
        return load_gene_list(path) if path else [str(g) for g in source.var_names]

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.model,
            "knowledge_base": self.reasoner.db.version,
            "cell_types": len(self.reasoner.db),
            "tissue": self.tissue,
            "species": self.species,
            "smoothing": self.reasoner.smoothing,
            "refine": self.reasoner.refine,
            **({"profile": "atac (gene activity relative to each marker's distribution)"}
               if self.reasoner.modality == "atac" else {}),
        }


class ChunkJob:
    """The built-in reasoner's work on a matrix, chunk by chunk (see :mod:`._stream`).

    :meth:`score` (pass one) and :meth:`answer` (pass two) depend on their chunk alone, given
    the :class:`~._stream.StreamPlan` that :meth:`planner` makes from every chunk's scores; so
    chunks can be answered in any order, in any process.
    """

    def __init__(self, reasoner: Reasoner, genes: list[str], spec) -> None:
        self.reasoner, self.genes, self.spec = reasoner, genes, spec
        self._answerer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_answerer": None}

    def pass_one_spans(self, n_obs: int, connectivities,
                       chunk_size: int) -> list[tuple[int, int]]:
        """The row spans :meth:`score` must see before :meth:`planner` plans (none when no
        pass one is needed; of large data, spaced windows: :func:`~._stream.pass_one_spans`)."""
        from ._stream import pass_one_spans

        return pass_one_spans(self.reasoner, n_obs, connectivities, chunk_size)

    def score(self, chunk, start: int, keep_scores: bool, bounds: dict | None = None):
        """Pass one over the chunk of cells ``start ...`` (:class:`~._stream.ChunkScores`;
        ``bounds``: the planner's, when this process merges the chunks it scores)."""
        from ._stream import score_chunk

        return score_chunk(self.reasoner, chunk, self.genes, start, keep_scores=keep_scores,
                           bounds=bounds)

    def planner(self, connectivities):
        """Takes pass one's chunk scores as they arrive (``add``), then makes the
        :class:`~._stream.StreamPlan` (``plan(source)``; empty when no pass one is needed)."""
        from ._stream import StreamPlanner

        return StreamPlanner(self.reasoner, connectivities)

    def answer(self, chunk, start: int, plan) -> CellAnswers:
        """Pass two over the chunk of cells ``start ...``."""
        if self._answerer is None:
            from ._stream import ChunkAnswerer

            self._answerer = ChunkAnswerer(self.reasoner, self.genes, evidence=self.spec)
        return _cell_answers(self._answerer(chunk, start, plan))

    def run(self, source: MatrixSource, connectivities=None,
            progress: ProgressCallback | None = None) -> Iterator[CellAnswers]:
        """Every chunk in one process, in order (:meth:`BuiltinBackend.annotate_matrix`)."""
        for block in self.reasoner.iter_blocks(source, connectivities, evidence=self.spec):
            answers = _cell_answers(block)
            if progress is not None:
                progress(len(answers))
            yield answers


def _cell_answers(block) -> CellAnswers:
    """A :class:`~._stream.Block` (with its evidence) as the engine's :class:`CellAnswers`."""
    res = block.result
    fraction, flag, present, absent = block.evidence
    return CellAnswers(
        label=_objects(res.label),
        confidence=np.asarray(res.confidence),
        ontology_id=_objects(res.ontology_id),
        ontology_label=_objects(res.ontology_label),
        reasoning=_objects(res.reasoning),
        evidence_fraction=fraction, evidence_flag=flag,
        cited_present=_objects(present), cited_absent=_objects(absent))


def _objects(values: Sequence[str]) -> np.ndarray:
    """``values`` as an object array in which equal strings are one object (cells with the
    same trace or cited genes share it: a third less memory for the answers of many cells,
    and smaller messages between processes, whose pickles keep the sharing)."""
    shared: dict[str, str] = {}
    out = np.empty(len(values), dtype=object)
    out[:] = [shared.setdefault(v, v) for v in values]
    return out


__all__ = ["BuiltinBackend", "ChunkJob"]
