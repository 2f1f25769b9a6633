"""cellreasoner: interpretable cell-type annotation with reasoning language models.

The front door (scanpy/CellTypist style)::

    import cellreasoner as cr

    adata = cr.read("pbmc.h5ad")                # .h5ad, Seurat .rds, 10x, CSV
    atac = cr.read_atac("fragments.tsv.gz", gtf="genes.gtf")  # scATAC: gene activity
    result = cr.annotate(adata)                  # built-in reasoner, no download
    result.to_csv("labels.csv")                  # adata.obs has cellreasoner_* columns
    cr.evaluate(adata, truth="cell_type").summary

Submodules in the scverse layout: ``cr.pp`` (cell sentences), ``cr.tl`` (annotate, score),
``cr.pl`` (plots).
"""

from __future__ import annotations

# Functions named like their modules are imported eagerly: importing a submodule binds its name
# on the package, so a lazy attribute would turn into the module once anything imported it.
from ._lazy import lazy_getattr
from .annotation import AnnotationResult as AnnotationResult
from .annotation import annotate as annotate
from .evaluation import evaluate as evaluate
from .sentences.prepare import prepare as prepare

__version__ = "0.1.0"

_EXPORTS = {
    "read": "cellreasoner.io:read",
    "read_atac": "cellreasoner.atac:read_atac",
    "build_sentences": "cellreasoner.sentences:build_sentences",
    "CellSentences": "cellreasoner.sentences:CellSentences",
    "get_backend": "cellreasoner.backends:get_backend",
    "map_label": "cellreasoner.ontology:map_label",
    "score_pair": "cellreasoner.evaluation:score_pair",
    "PairScorer": "cellreasoner.evaluation:PairScorer",
    "check_evidence": "cellreasoner.evidence:check_evidence",
    "write_report": "cellreasoner.report:write_report",
    "Prompt": "cellreasoner.prompts:Prompt",
    "SamplingParams": "cellreasoner.prompts:SamplingParams",
    "CellReasonerError": "cellreasoner.errors:CellReasonerError",
    "InputError": "cellreasoner.errors:InputError",
    "pp": "cellreasoner.pp",
    "tl": "cellreasoner.tl",
    "pl": "cellreasoner.pl",
    "datasets": "cellreasoner.datasets",
    "atac": "cellreasoner.atac",
}

__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted([*_EXPORTS, "AnnotationResult", "annotate", "evaluate", "prepare"])


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
