"""10x Genomics inputs: Cell Ranger ``.h5`` matrices and matrix-market directories."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import InputError
from ._detect import first_bytes

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)


def read_10x_h5(p: Path) -> tuple[AnnData, dict[str, Any]]:
    """Read a Cell Ranger ``.h5`` matrix: (AnnData of counts, what was read for ``uns``)."""
    import h5py
    import scanpy as sc

    if not h5py.is_hdf5(p):
        raise InputError(
            f"{p} is not an HDF5 file (it starts with {first_bytes(p, 16)!r}), so it cannot be a "
            "10x Genomics .h5 matrix. Pass the filtered_feature_bc_matrix.h5 from Cell Ranger."
        )
    try:
        with h5py.File(p, "r") as fh:
            keys = list(fh.keys())
    except OSError as exc:
        raise InputError(f"Could not open {p} as HDF5 ({exc}); the file may be truncated.") from exc
    if "X" in keys and "obs" in keys and "var" in keys:
        raise InputError(f"{p} looks like an AnnData file: rename it to .h5ad and read it again.")
    try:
        adata = sc.read_10x_h5(p)
    except Exception as exc:  # scanpy/h5py raise KeyError, OSError, ValueError...
        raise InputError(
            f"Could not read {p} as a 10x Genomics .h5 matrix ({type(exc).__name__}: {exc}). "
            f"Top-level groups found: {', '.join(keys) or 'none'}; Cell Ranger v3+ files have "
            "'matrix' with data/indices/indptr/shape/barcodes/features."
        ) from exc
    n_dup = _make_var_names_unique(adata, p)
    return adata, {"x": "counts", "duplicate_gene_names": n_dup}


def _make_var_names_unique(adata: AnnData, p: Path) -> int:
    dup = int(adata.var_names.duplicated().sum())
    if dup:
        adata.var_names_make_unique()
        log.warning(
            "%s: %d gene symbols occur more than once; later copies were renamed SYMBOL-1, ... "
            "(the original IDs are in var['gene_ids'])", p, dup,
        )
    return dup


def _find_file(d: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in (".gz", ""):
            candidate = d / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def read_10x_mtx(p: Path) -> tuple[AnnData, dict[str, Any]]:
    """Read a 10x matrix-market directory (or its ``matrix.mtx``), nested
    ``filtered_feature_bc_matrix/`` included: (AnnData of counts, what was read)."""
    import scanpy as sc

    d = p if p.is_dir() else p.parent
    if _find_file(d, ["matrix.mtx"]) is None:
        nested = d / "filtered_feature_bc_matrix"
        if nested.is_dir():
            d = nested
    matrix = _find_file(d, ["matrix.mtx"])
    features = _find_file(d, ["features.tsv", "genes.tsv"])
    barcodes = _find_file(d, ["barcodes.tsv"])
    missing = [
        name
        for name, f in (
            ("matrix.mtx[.gz]", matrix),
            ("features.tsv[.gz] or genes.tsv", features),
            ("barcodes.tsv[.gz]", barcodes),
        )
        if f is None
    ]
    if missing:
        present = sorted(x.name for x in d.iterdir())[:10] if d.is_dir() else []
        raise InputError(
            f"{d} is not a 10x matrix-market directory: missing {', '.join(missing)} "
            f"(found: {', '.join(present) or 'nothing'})."
        )
    assert matrix is not None and features is not None and barcodes is not None
    legacy = features.name == "genes.tsv" and matrix.name == "matrix.mtx"
    modern = all(f.name.endswith(".gz") for f in (matrix, features, barcodes)) and (
        features.name.startswith("features")
    )
    try:
        if legacy or modern:
            adata = sc.read_10x_mtx(d)
        else:
            adata = _read_mtx_files(matrix, features, barcodes)
    except InputError:
        raise
    except Exception as exc:  # scanpy/scipy/pandas raise many types on malformed files
        raise InputError(
            f"Could not read the 10x matrix-market directory {d} ({type(exc).__name__}: {exc}). "
            "Check that matrix.mtx is a MatrixMarket file of genes x cells and that features "
            "and barcodes have one line per row/column."
        ) from exc
    n_dup = _make_var_names_unique(adata, d)
    return adata, {"x": "counts", "duplicate_gene_names": n_dup}


def _read_mtx_files(matrix: Path, features: Path, barcodes: Path) -> AnnData:
    """Read a 10x matrix-market triple whose compression scanpy's reader does not expect."""
    import anndata as ad
    from scipy.io import mmread

    opener = gzip.open if matrix.name.endswith(".gz") else open
    with opener(matrix, "rb") as fh:
        mat = sparse.csr_matrix(mmread(fh).T, dtype=np.float32)
    feats = pd.read_csv(features, sep="\t", header=None, dtype=str)
    cells = pd.read_csv(barcodes, sep="\t", header=None, dtype=str)[0]
    if mat.shape != (len(cells), len(feats)):
        raise InputError(
            f"{matrix.parent}: matrix.mtx is {mat.shape[1]} genes x {mat.shape[0]} cells but "
            f"{features.name} lists {len(feats)} genes and {barcodes.name} {len(cells)} barcodes."
        )
    names = feats[1] if feats.shape[1] > 1 else feats[0]
    var = pd.DataFrame({"gene_ids": feats[0].to_numpy()}, index=pd.Index(names.to_numpy()))
    if feats.shape[1] > 2:
        var["feature_types"] = feats[2].to_numpy()
    return ad.AnnData(X=mat, obs=pd.DataFrame(index=pd.Index(cells.to_numpy())), var=var)

