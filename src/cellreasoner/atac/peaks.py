"""Peak-by-cell matrices (Cell Ranger ATAC/ARC, or var names ``chr:start-end``) to gene activity.

A peak counts towards every gene region it overlaps: gene activity = peak counts x the
peaks x genes overlap matrix. This is the gene activity of the peaks' fragments only (reads
outside peaks are not in the matrix), so it is lower than the fragment file's; use the
fragment file where there is one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .genes import GeneRegions, canonical_chrom, overlap_pairs

#: ``chr1:100-200``, ``chr1-100-200``, ``chr1_100_200`` (Cell Ranger, Signac, ArchR, snapATAC2).
PEAK_NAME = re.compile(r"^(?P<chrom>[^:\s]+?)[:\-_](?P<start>\d+)[\-_](?P<end>\d+)$")


def parse_peaks(names: Sequence[str]) -> pd.DataFrame | None:
    """``chrom, start, end`` of peak names, or ``None`` when any name is not a peak."""
    parsed = pd.Series(list(map(str, names)), dtype=object).str.extract(PEAK_NAME)
    if len(parsed) == 0 or parsed["chrom"].isna().any():
        return None
    return pd.DataFrame({"chrom": parsed["chrom"].to_numpy(),
                         "start": parsed["start"].astype(np.int64).to_numpy(),
                         "end": parsed["end"].astype(np.int64).to_numpy()})


def peak_fraction(names: Sequence[str], sample: int = 2000) -> float:
    """The fraction of (the first ``sample``) names that read as peaks."""
    names = [str(n) for n in list(names)[:sample]]
    if not names:
        return 0.0
    return sum(PEAK_NAME.match(n) is not None for n in names) / len(names)


def peak_gene_overlap(peaks: pd.DataFrame, regions: GeneRegions) -> sp.csr_matrix:
    """Peaks x genes 0/1 matrix: which gene regions each peak overlaps."""
    by_chrom = regions.by_chrom()
    keys = peaks["chrom"].map(canonical_chrom).to_numpy()
    rows, cols = [], []
    starts, ends = peaks["start"].to_numpy(np.int64), peaks["end"].to_numpy(np.int64)
    for chrom in pd.unique(keys):
        reg = by_chrom.get(chrom)
        if reg is None:
            continue
        at = np.flatnonzero(keys == chrom)
        order = at[np.argsort(starts[at], kind="stable")]
        p_idx, r_idx = overlap_pairs(starts[order], ends[order], reg[0], reg[1])
        rows.append(order[p_idx])
        cols.append(reg[2][r_idx])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)),
                         shape=(len(peaks), len(regions)))


def peaks_to_genes(X, peak_names: Sequence[str], regions: GeneRegions,
                   where: str) -> tuple[sp.csr_matrix, dict]:
    """Cells x peaks counts -> cells x genes activity, and a summary for the provenance."""
    peaks = parse_peaks(peak_names)
    if peaks is None:
        bad = next(str(n) for n in peak_names if PEAK_NAME.match(str(n)) is None)
        raise InputError(f"{where}: feature {bad!r} is not a peak name; peaks are named "
                         "chr:start-end or chr-start-end.")
    overlap = peak_gene_overlap(peaks, regions)
    X = sp.csr_matrix(X, dtype=np.float32)
    used = int((np.asarray(overlap.sum(axis=1)).ravel() > 0).sum())
    if used == 0:
        raise InputError(f"{where}: none of its {len(peaks):,} peaks (e.g. {peak_names[0]}) "
                         f"overlaps a gene of the annotation {regions.source} (chromosomes "
                         f"{', '.join(pd.unique(regions.table['chrom'])[:3])}, ...). Check that "
                         "both use the same genome build.")
    return sp.csr_matrix(X @ overlap), {"peaks": int(len(peaks)), "peaks_in_genes": used}
