"""Row-chunked access to expression matrices, without ever densifying a whole matrix.

Sources: an in-memory AnnData (sparse or dense ``X``, a layer, or ``.raw``), a backed AnnData,
or an ``.h5ad`` path read straight from HDF5 (the fastest path for large files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import InputError

#: Default number of cells per chunk: bounded memory whatever the dataset size.
DEFAULT_CHUNK = 8192


@dataclass
class MatrixSource:
    """Where a cells x genes matrix lives, with its cell and gene names."""

    n_obs: int
    var_names: np.ndarray
    obs_names: np.ndarray
    _chunks: object  # callable(chunk_size) -> iterator of csr chunks
    description: str = ""
    _csr: sp.csr_matrix | None = None  # the whole matrix, when it already is CSR in memory

    def iter_chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[sp.csr_matrix]:
        """CSR row blocks of at most ``chunk_size`` cells, in order."""
        yield from self._chunks(chunk_size)

    def to_csr(self) -> sp.csr_matrix:
        """The whole matrix as CSR: the in-memory object itself when it is one (no copy),
        else the chunks stacked."""
        if self._csr is not None:
            return self._csr
        return sp.vstack(list(self.iter_chunks())).tocsr()


def _as_csr(block) -> sp.csr_matrix:
    if sp.issparse(block):
        return sp.csr_matrix(block)
    return sp.csr_matrix(np.asarray(block))


def _iter_matrix(X, n_obs: int, chunk_size: int) -> Iterator[sp.csr_matrix]:
    """Chunks of an in-memory or backed matrix (numpy, scipy, anndata's backed datasets)."""
    if sp.issparse(X) and not isinstance(X, sp.csr_matrix | sp.csr_array):
        X = sp.csr_matrix(X)  # CSC/COO in memory: one conversion keeps row slicing cheap
    for start in range(0, n_obs, chunk_size):
        yield _as_csr(X[start : min(start + chunk_size, n_obs)])


def from_anndata(adata, layer: str | None = None, use_raw: bool = False) -> MatrixSource:
    """Matrix source over ``adata.X``, ``adata.layers[layer]`` or ``adata.raw.X``."""
    if use_raw:
        if adata.raw is None:
            raise InputError("use_raw=True but this AnnData has no .raw; pass layer= instead.")
        X = adata.raw.X
        var_names = np.asarray(adata.raw.var_names)
        where = ".raw.X"
    else:
        from .io import gene_symbols

        if layer is not None:
            if layer not in adata.layers:
                raise InputError(
                    f"Layer '{layer}' not found. Available layers: "
                    f"{list(adata.layers) or 'none'}."
                )
            X, where = adata.layers[layer], f".layers['{layer}']"
        else:
            X, where = adata.X, ".X"
        # Ensembl var_names: sentences need symbols (a var column such as feature_name)
        var_names = np.asarray(gene_symbols(adata).symbols)
    if X is None:
        raise InputError(f"The AnnData has no expression matrix in {where}.")
    n_obs = adata.n_obs
    return MatrixSource(
        n_obs=n_obs,
        var_names=var_names.astype(str),
        obs_names=np.asarray(adata.obs_names).astype(str),
        _chunks=lambda cs: _iter_matrix(X, n_obs, cs),
        description=where,
        _csr=X if isinstance(X, sp.csr_matrix) else None,
    )


def _h5_strings(ds) -> np.ndarray:
    arr = ds[()]
    if arr.dtype.kind in "SO":
        return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in arr])
    return arr.astype(str)


def _h5ad_index(group) -> np.ndarray:
    """The index (obs or var names) of an anndata dataframe group."""
    key = group.attrs.get("_index", "_index")
    return _h5_strings(group[key])


def from_h5ad(path: str | os.PathLike, layer: str | None = None) -> MatrixSource:
    """Matrix source that reads CSR row blocks of an ``.h5ad`` file straight from HDF5."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(f"File not found: {path}") from None
    except OSError as exc:
        raise InputError(
            f"{path} is not a readable .h5ad (HDF5) file ({exc}). It may be truncated or in "
            "another format; re-export it with adata.write_h5ad()."
        ) from None
    key = "X" if layer is None else f"layers/{layer}"
    if key not in f:
        layers = list(f["layers"]) if "layers" in f else []
        f.close()
        raise InputError(f"{path}: no matrix at '{key}'. Available layers: {layers or 'none'}.")
    node = f[key]
    obs_names = _h5ad_index(f["obs"])
    var_names = _h5ad_index(f["var"])
    n_obs = len(obs_names)

    def chunks(chunk_size: int) -> Iterator[sp.csr_matrix]:
        if isinstance(node, h5py.Dataset):  # dense matrix
            for start in range(0, n_obs, chunk_size):
                yield sp.csr_matrix(node[start : start + chunk_size])
            return
        encoding = node.attrs.get("encoding-type", "")
        if isinstance(encoding, bytes):
            encoding = encoding.decode()
        shape = tuple(int(x) for x in node.attrs["shape"])
        if encoding != "csr_matrix":
            raise InputError(
                f"{path}: '{key}' is stored as {encoding or 'an unknown encoding'}; chunked "
                "reading needs CSR. Convert with adata.X = scipy.sparse.csr_matrix(adata.X)."
            )
        indptr = node["indptr"][()]
        data, indices = node["data"], node["indices"]
        for start in range(0, n_obs, chunk_size):
            stop = min(start + chunk_size, n_obs)
            lo, hi = int(indptr[start]), int(indptr[stop])
            yield sp.csr_matrix(
                (data[lo:hi], indices[lo:hi], indptr[start : stop + 1] - lo),
                shape=(stop - start, shape[1]),
            )

    return MatrixSource(
        n_obs=n_obs, var_names=var_names, obs_names=obs_names, _chunks=chunks,
        description=f"{path}:{key}",
    )
