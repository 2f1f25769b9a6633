"""The no-download default backend: the marker reasoner answers like a model would."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import InputError
from ..markers import MarkerDB
from ..prompts import Prompt, SamplingParams
from ..reasoner import Reasoner, ReasonerResult
from .base import Backend, Capabilities, CellAnswers, Generation, ProgressCallback, RunContext

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
        :class:`~cellreasoner.markers.MarkerDB`, or ``None`` (default) for the built-in one.
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
        Passed to :class:`~cellreasoner.reasoner.Reasoner` (``min_score``, ``smoothing``, ...).
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
        self._markers, self._options = markers, options
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
            from ..resources import load_gene_list

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
        on_result=None,
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

    capabilities = Capabilities(reads="matrix", tissue=True, confidence=True, ontology=True,
                                evidence=True)

    def configure(self, context: RunContext) -> None:
        if self._gene_list is None:
            self._gene_list = list(context.gene_list)
        self.max_genes = context.max_genes
        if context.tissue and self.tissue is None:
            self.reasoner = Reasoner(self._markers, context.tissue, **self._options)
            self.tissue = context.tissue

    def annotate_matrix(self, source, *, connectivities=None, progress=None):
        """TEMPORARY adapter (replaced by the streaming reasoner)."""
        import numpy as np

        from ..evidence import check_evidence_many
        from ..sentences import build_sentences

        X = source.to_csr()
        genes = list(map(str, source.var_names))
        res = self.reasoner.annotate_matrix(X, genes, connectivities=connectivities)
        sentences = build_sentences(source, self._gene_list, max_genes=self.max_genes)
        vocab = list(dict.fromkeys([*self._gene_list, *genes]))
        reasoning = [str(r).strip() for r in res.reasoning]
        ev = check_evidence_many(reasoning, [sentences.cell_genes(i) for i in range(len(res))],
                                 vocabulary=vocab)
        cited = ev["n_cited"].to_numpy() > 0
        if progress is not None:
            progress(len(res))
        yield CellAnswers(
            label=np.asarray(res.label, dtype=object),
            confidence=np.asarray(res.confidence, dtype=np.float64),
            ontology_id=np.asarray([str(x or "") for x in res.ontology_id], dtype=object),
            ontology_label=np.asarray([str(x or "") for x in res.ontology_label], dtype=object),
            reasoning=np.asarray(res.reasoning, dtype=object),
            evidence_fraction=np.where(cited, ev["fraction_present"].to_numpy(float), np.nan),
            evidence_flag=np.where(cited, ev["flagged"].to_numpy(bool), False),
            cited_present=np.where(cited, ev["present"].to_numpy(object), ""),
            cited_absent=np.where(cited, ev["absent"].to_numpy(object), ""))

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
