"""The no-download default backend: the marker reasoner answers like a model would."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ...errors import InputError
from ...prompts import Prompt, SamplingParams
from ..base import Backend, Generation, ProgressCallback
from .markers import MarkerDB
from .reasoner import Reasoner, ReasonerResult

#: Sentences answered per progress tick.
CHUNK = 10_000


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
        Restrict the knowledge base to a tissue (e.g. ``"blood"``); default ``None``: all.
    gene_list
        The ranked gene list the cell sentences were built from (a path or a list of
        symbols), so that markers the sentence could not contain count as unmeasured rather
        than absent. Default ``None``: ``$CELLREASONER_GENE_LIST`` when set (never downloads),
        else every marker counts as measured.
    max_genes
        Sentence length cap used when the sentences were built (default 1000).
    **options
        Passed to :class:`~.reasoner.Reasoner` (``min_score``, ``smoothing``, ...).
    """

    name = "builtin"

    def __init__(
        self,
        markers: MarkerDB | str | os.PathLike | None = None,
        tissue: str | Sequence[str] | None = None,
        gene_list: str | os.PathLike | Sequence[str] | None = None,
        max_genes: int = 1000,
        **options,
    ) -> None:
        self.reasoner = Reasoner(markers, tissue, **options)
        self.model = self.reasoner.model
        self.tissue = tissue
        self.max_genes = int(max_genes)
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

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
    ) -> list[list[Generation]]:
        """Answer each prompt's cell sentence; deterministic, so the ``n`` samples agree."""
        out: list[list[Generation]] = []
        n = max(1, int(sampling.n))
        for lo in range(0, len(prompts), CHUNK):
            chunk = prompts[lo:lo + CHUNK]
            res = self.reasoner.annotate_sentences(
                [p.sentence for p in chunk], gene_list=self._gene_list,
                max_genes=self.max_genes)
            out.extend([g] * n for g in _generations(res))
            if progress is not None:
                progress(len(chunk))
        return out

    def annotate_matrix(self, X, genes: Sequence[str], connectivities=None) -> list[Generation]:
        """Per-cell answers from expression (counts or log-normalised), one per row of ``X``.

        ``connectivities`` (``adata.obsp["connectivities"]``) smooths evidence over the kNN
        graph; default ``None``.
        """
        res = self.reasoner.annotate_matrix(X, genes, connectivities=connectivities)
        return _generations(res)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.model,
            "knowledge_base": self.reasoner.db.version,
            "cell_types": len(self.reasoner.db),
            "tissue": self.tissue,
            "smoothing": self.reasoner.smoothing,
            "refine": self.reasoner.refine,
        }


__all__ = ["BuiltinBackend"]
