"""The optional snapATAC2 path (``snap.pp.make_gene_matrix``; extra ``[atac]``).

snapATAC2 counts the same regions as the native path when told to: the gene regions are
written to a temporary GTF (one transcript per gene, its body), extended ``upstream`` bases
(``downstream=0``, gene body included) and counted with ``counting_strategy="fragment"``
(a fragment counts once per region it overlaps). Its own default counts Tn5 insertions
(``"paired-insertion"``), which gives other numbers. One difference remains: snapATAC2 does
not count a fragment whose only overlap is a region's last base (the GTF end, which the
native path and Signac's closed GRanges intervals include); on simulated data that is about
one fragment in 30,000.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, require
from .genes import GeneRegions

_FEATURE = "snapATAC2 gene activity"


def _write_gtf(regions: GeneRegions, path: Path) -> None:
    """One gene and one transcript record per region (1-based inclusive GTF coordinates)."""
    t = regions.table
    with open(path, "w", encoding="utf-8") as fh:
        for g, c, s, e, strand in zip(t["gene"], t["chrom"], t["start"], t["end"], t["strand"],
                                      strict=True):
            attrs = (f'gene_id "{g}"; gene_name "{g}"; transcript_id "{g}.1"; '
                     f'transcript_name "{g}.1"; gene_type "protein_coding";')
            for feature in ("gene", "transcript"):
                fh.write(f"{c}\t.\t{feature}\t{s + 1}\t{e}\t.\t{strand}\t.\t{attrs}\n")


def _chrom_sizes(regions: GeneRegions) -> dict[str, int]:
    """Chromosome lengths for snapATAC2's import: past the last gene region of each."""
    t = regions.table
    return {str(c): int(e) + 1_000_000 for c, e in t.groupby("chrom")["region_end"].max().items()}


def _gene_matrix(snap, data, regions: GeneRegions, tmp: Path):
    gtf = tmp / "regions.gtf"
    _write_gtf(regions, gtf)
    return snap.pp.make_gene_matrix(data, gtf, upstream=regions.upstream, downstream=0,
                                    include_gene_body=True, id_type="gene",
                                    counting_strategy="fragment")


def _aligned(gm, cells: Sequence[str] | None, regions: GeneRegions) -> tuple[sp.csr_matrix, list]:
    X = sp.csr_matrix(gm.X[:], dtype=np.float32)
    obs = [str(o) for o in gm.obs_names]
    col = pd.Index([str(v) for v in gm.var_names]).get_indexer(list(regions.genes))
    out = sp.lil_matrix((X.shape[0], len(regions)), dtype=np.float32)
    have = col >= 0
    out[:, np.flatnonzero(have)] = X[:, col[have]]
    out = out.tocsr()
    if cells is None:
        return out, obs
    row = pd.Index(obs).get_indexer(list(cells))
    full = sp.vstack([out, sp.csr_matrix((1, len(regions)), dtype=np.float32)]).tocsr()
    return full[np.where(row >= 0, row, out.shape[0])], list(cells)


def snap_fragment_matrix(p: Path, regions: GeneRegions,
                         cells: Sequence[str]) -> tuple[sp.csr_matrix, dict]:
    """A fragment file counted by snapATAC2: (cells x genes counts, summary)."""
    snap = require("snapatac2", "atac", _FEATURE)
    with tempfile.TemporaryDirectory(prefix="cellreasoner-snap-") as tmp:
        try:
            data = snap.pp.import_fragments(p, chrom_sizes=_chrom_sizes(regions), file=None,
                                            whitelist=list(cells), min_num_fragments=0,
                                            sorted_by_barcode=False)
        except Exception as exc:  # snapATAC2 raises plain exceptions from Rust
            raise InputError(f"snapATAC2 could not import {p} ({type(exc).__name__}: "
                             f"{exc}).") from exc
        gm = _gene_matrix(snap, data, regions, Path(tmp))
        counts, _ = _aligned(gm, cells, regions)
    return counts, {"snapatac2": str(getattr(snap, "__version__", ""))}


def snap_gene_matrix(p: Path, regions: GeneRegions) -> tuple[sp.csr_matrix, list, np.ndarray,
                                                             dict]:
    """A snapATAC2 ``.h5ad`` (fragments in ``obsm``) counted by snapATAC2."""
    snap = require("snapatac2", "atac", f"{_FEATURE} of a snapATAC2 .h5ad")
    with tempfile.TemporaryDirectory(prefix="cellreasoner-snap-") as tmp:
        try:
            data = snap.read(p, backed="r")  # snapATAC2's own reader (its compression)
        except Exception as exc:  # snapATAC2 raises plain exceptions from Rust
            raise InputError(f"snapATAC2 could not read {p} ({type(exc).__name__}: "
                             f"{exc}).") from exc
        try:
            gm = _gene_matrix(snap, data, regions, Path(tmp))
            counts, obs = _aligned(gm, None, regions)
        finally:
            data.close()
    info = {"annotation": regions.source, "genes": len(regions), "method": "snapatac2",
            "gene_activity": regions.describe(),
            "snapatac2": str(getattr(snap, "__version__", ""))}
    return counts, obs, regions.genes, info
