"""Synthetic *realistic* single-cell data at any size, written straight to ``.h5ad``.

Each cell belongs to one of a few textbook immune programmes (markers from the literature, not
from cellreasoner's knowledge base) and expresses them at high log-normalised levels, on top of
~``nnz`` background genes drawn from an 18,000-gene panel (the ranked 10,000-gene list first when
``../shared`` is there). Chunks are generated and written one at a time, so a million cells
(~12 GB of CSR) never sit in memory. Used by ``bench/annotate_scale.py`` and the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

SHARED_GENE_LIST = (Path(__file__).resolve().parents[1].parent / "shared" / "data"
                    / "ranked_hvg.list")

#: programme -> its marker genes (textbook; Hao et al. 2021 and standard immunology)
PROGRAMMES: dict[str, tuple[str, ...]] = {
    "CD4 T": ("CD3D", "CD3E", "CD2", "IL7R", "CD4", "CD40LG", "LTB", "CCR7", "SELL"),
    "CD8 T": ("CD3D", "CD3E", "CD2", "CD8A", "CD8B", "GZMK", "CCL5", "NKG7"),
    "NK": ("NKG7", "GNLY", "KLRD1", "KLRF1", "PRF1", "GZMB", "FCGR3A"),
    "B": ("MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "HLA-DRA", "CD74"),
    "CD14 mono": ("LYZ", "CD14", "S100A8", "S100A9", "FCN1", "VCAN", "CST3"),
    "FCGR3A mono": ("FCGR3A", "MS4A7", "LST1", "AIF1", "CST3", "LYZ"),
    "cDC": ("FCER1A", "CD1C", "CLEC10A", "HLA-DRA", "CST3"),
    "pDC": ("LILRA4", "IL3RA", "CLEC4C", "IRF7", "GZMB"),
    "platelet": ("PPBP", "PF4", "GP9", "ITGA2B"),
    "plasma": ("JCHAIN", "MZB1", "IGHG1", "XBP1", "TNFRSF17"),
}


def gene_panel(n_genes: int = 18_000) -> np.ndarray:
    """``n_genes`` unique symbols: the ranked list (when present), every programme marker,
    then ``SYNTH<i>`` fillers."""
    genes: list[str] = []
    if SHARED_GENE_LIST.is_file():
        genes = [g.strip() for g in SHARED_GENE_LIST.read_text().splitlines() if g.strip()]
    markers = [g for prog in PROGRAMMES.values() for g in prog]
    genes = list(dict.fromkeys([*genes[: n_genes - len(markers)], *markers]))
    genes += [f"SYNTH{i}" for i in range(n_genes - len(genes))]
    return np.asarray(genes[:n_genes], dtype=object)


def iter_chunks(n_cells: int, genes: np.ndarray, *, nnz: int = 1500, chunk: int = 50_000,
                seed: int = 0) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
    """(log-normalised CSR block, programme of each cell) for ``n_cells`` cells."""
    rng = np.random.default_rng(seed)
    names = list(PROGRAMMES)
    col = {g: j for j, g in enumerate(genes)}
    marker_cols = [np.asarray([col[g] for g in PROGRAMMES[p]]) for p in names]
    width = max(len(m) for m in marker_cols)
    n_genes = len(genes)
    for lo in range(0, n_cells, chunk):
        m = min(chunk, n_cells - lo)
        kind = rng.integers(0, len(names), m)
        background = rng.integers(0, n_genes, (m, nnz + nnz // 20), dtype=np.int32)
        marks = np.full((m, width), -1, dtype=np.int32)
        for k, cols in enumerate(marker_cols):
            rows = kind == k
            # each marker is detected in 85% of its programme's cells (dropout)
            keep = rng.random((rows.sum(), len(cols))) < 0.85
            marks[rows, : len(cols)] = np.where(keep, cols, -1)
        idx = np.concatenate([marks, background], axis=1)
        idx.sort(axis=1)
        keep = idx >= 0
        keep[:, 1:] &= idx[:, 1:] != idx[:, :-1]
        counts = keep.sum(axis=1)
        indices = idx[keep].astype(np.int32)
        is_marker = np.zeros_like(idx, dtype=bool)
        for k, cols in enumerate(marker_cols):
            rows = np.flatnonzero(kind == k)
            is_marker[rows] = np.isin(idx[rows], cols)
        level = np.where(is_marker, rng.uniform(2.0, 4.0, idx.shape),
                         rng.lognormal(-0.3, 0.4, idx.shape))
        # log1p of counts per 10,000 (what sc.pp.normalize_total + log1p give, and what
        # CellTypist checks for): scale each cell's expm1 values to sum to 1e4
        raw = np.where(keep, np.expm1(level), 0.0)
        raw *= 1e4 / raw.sum(axis=1, keepdims=True)
        values = np.log1p(raw[keep]).astype(np.float32)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        X = sp.csr_matrix((values, indices, indptr), shape=(m, n_genes))
        yield X, np.asarray(names, dtype=object)[kind]


def write_h5ad(path: str | Path, n_cells: int, *, n_genes: int = 18_000, nnz: int = 1500,
               chunk: int = 50_000, seed: int = 0) -> Path:
    """Write a synthetic ``.h5ad`` chunk by chunk (CSR X, ``obs["programme"]``)."""
    import h5py
    from anndata.io import write_elem

    path = Path(path)
    genes = gene_panel(n_genes)
    programmes: list[np.ndarray] = []
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = (n_cells, n_genes)
        data = g.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 20,))
        ind = g.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 20,))
        indptr = [np.zeros(1, np.int64)]
        offset = 0
        for X, kind in iter_chunks(n_cells, genes, nnz=nnz, chunk=chunk, seed=seed):
            k = X.nnz
            data.resize((offset + k,))
            ind.resize((offset + k,))
            data[offset:] = X.data
            ind[offset:] = X.indices
            indptr.append(X.indptr[1:] + offset)
            offset += k
            programmes.append(kind)
        g.create_dataset("indptr", data=np.concatenate(indptr))
        obs = pd.DataFrame({"programme": pd.Categorical(np.concatenate(programmes))},
                           index=[f"cell{i}" for i in range(n_cells)])
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=genes.astype(str)))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    return path
