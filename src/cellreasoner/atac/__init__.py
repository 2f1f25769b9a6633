"""scATAC-seq input: chromatin accessibility read as gene activity, annotated like RNA.

``read_atac(path, gtf=...)`` turns a 10x fragment file (streamed, bounded memory), a peak
matrix, an existing gene-activity matrix, a MuData ``.h5mu`` or a snapATAC2 ``.h5ad`` into a
cells x genes AnnData of log-normalised gene activity (Signac's definition: fragments
overlapping the gene body + 2 kb upstream of the TSS, strand-aware). ``cr.annotate`` reads
its ``uns["cellreasoner_io"]["modality"] == "atac"`` and annotates it exactly like RNA, with
the built-in reasoner's ATAC profile (:mod:`cellreasoner.backends.builtin.atac`).

:mod:`.genes` reads the gene annotation, :mod:`.fragments` streams fragment files,
:mod:`.peaks` maps peaks to genes, :mod:`.read` detects the layouts, :mod:`.snap` is the
optional snapATAC2 path.
"""

from __future__ import annotations

from .genes import GeneRegions, read_gene_annotation
from .read import MODALITY, atac_layout, read_atac

__all__ = ["MODALITY", "GeneRegions", "atac_layout", "read_atac", "read_gene_annotation"]
