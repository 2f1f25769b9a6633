"""Row-chunked access to expression matrices, without ever densifying a whole matrix.

Sources: an in-memory AnnData (sparse or dense ``X``, a layer, or ``.raw``), a backed AnnData,
or an ``.h5ad`` path read straight from HDF5 (the fastest path for large files).
:func:`resolve_matrix` is the one place deciding which matrix ``layer``/``use_raw`` name;
:func:`sample_nonzero` and :func:`row_nonzero_counts` look at any matrix block by block.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import InputError

#: Default number of cells per chunk: bounded memory whatever the dataset size.
DEFAULT_CHUNK = 8192


def row_spans(n_obs: int, size: int, step: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` spans of ``size`` rows, one every ``step`` rows (default: ``size``,
    every row once), the last cut at ``n_obs``."""
    return [(lo, min(lo + size, n_obs)) for lo in range(0, n_obs, step or size)]


@dataclass
class MatrixSource:
    """Where a cells x genes matrix lives, with its cell and gene names."""

    n_obs: int
    var_names: np.ndarray
    obs_names: np.ndarray
    _chunks: object  # callable(chunk_size) -> iterator of csr chunks
    description: str = ""
    _csr: sp.csr_matrix | None = None  # the whole matrix, when it already is CSR in memory
    #: a picklable callable that opens the same matrix again (in another process), when the
    #: matrix lives in a file; ``None`` for in-memory matrices
    reopen: Any = None
    _rows: Any = None  # callable(lo, hi) -> csr rows lo ... hi - 1, when rows can be read directly

    def iter_chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[sp.csr_matrix]:
        """CSR row blocks of at most ``chunk_size`` cells, in order.

        Every stored value is checked as it streams
        (:func:`~cellreasoner.checks.check_chunk_values`: NaN, infinite or negative values
        raise an :class:`~cellreasoner.errors.InputError` naming the cell), so every
        consumer sees only valid chunks.
        """
        from .checks import check_chunk_values

        start = 0
        for chunk in self._chunks(chunk_size):
            check_chunk_values(chunk, self, start)
            start += chunk.shape[0]
            yield chunk

    def iter_spans(self, spans: Sequence[tuple[int, int]]
                   ) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(lo, rows lo ... hi - 1)`` for each ``(lo, hi)`` of ``spans`` (in row order, not
        overlapping), values checked as :meth:`iter_chunks` does: read straight from the file
        where the source can (the rows between spans are never read), else cut from its
        chunks."""
        spans = [(int(lo), min(int(hi), self.n_obs)) for lo, hi in spans]
        spans = [(lo, hi) for lo, hi in spans if hi > lo]
        if not spans:
            return
        if self._rows is not None:
            for lo, hi in spans:
                yield lo, self.read_rows(lo, hi)
            return
        k, start, parts = 0, 0, []
        for chunk in self.iter_chunks(spans[0][1] - spans[0][0]):
            stop = start + chunk.shape[0]
            while k < len(spans) and spans[k][0] < stop:
                lo, hi = spans[k]
                a, b = max(lo, start), min(hi, stop)
                if b > a:
                    whole = a == start and b == stop
                    parts.append(chunk if whole else chunk[a - start:b - start])
                if hi > stop:  # the span goes on in the next chunk
                    break
                yield lo, parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")
                parts, k = [], k + 1
            start = stop
            if k == len(spans):
                return

    def read_rows(self, lo: int, hi: int) -> sp.csr_matrix:
        """Rows ``lo ... hi - 1`` as CSR, read straight from the file, values checked as
        :meth:`iter_chunks` does (sources that :attr:`reopen`, i.e. files, only)."""
        from .checks import check_chunk_values

        if self._rows is None:
            raise TypeError(f"{self.description or 'this matrix'}: rows can only be read "
                            "directly from a file source")
        lo, hi = max(0, int(lo)), min(self.n_obs, int(hi))
        chunk = self._rows(lo, hi)
        check_chunk_values(chunk, self, lo)
        return chunk

    def to_csr(self) -> sp.csr_matrix:
        """The whole matrix as CSR (values checked as :meth:`iter_chunks` does): the
        in-memory object itself when it is one (no copy), else the chunks stacked."""
        if self._csr is not None:
            from .checks import check_chunk_values

            check_chunk_values(self._csr, self, 0)
            return self._csr
        return sp.vstack(list(self.iter_chunks())).tocsr()


def _upcast(values: np.ndarray) -> np.ndarray:
    """float16 (which scipy.sparse cannot hold) as float32; anything else as it is."""
    return values.astype(np.float32) if values.dtype == np.float16 else values


def _as_csr(block) -> sp.csr_matrix:
    if sp.issparse(block):
        return sp.csr_matrix(block)
    return sp.csr_matrix(_upcast(np.asarray(block)))


def _iter_matrix(X, n_obs: int, chunk_size: int) -> Iterator[sp.csr_matrix]:
    """Chunks of an in-memory or backed matrix (numpy, scipy, anndata's backed datasets)."""
    if sp.issparse(X) and not isinstance(X, sp.csr_matrix | sp.csr_array):
        X = sp.csr_matrix(X)  # CSC/COO in memory: one conversion keeps row slicing cheap
    for start in range(0, n_obs, chunk_size):
        yield _as_csr(X[start : min(start + chunk_size, n_obs)])


def layer_choices(adata) -> str:
    """The matrices of ``adata`` one can ask for, as error messages list them."""
    names = ["X (layer=None)"] + [repr(k) for k in adata.layers]
    if adata.raw is not None:
        names.append("'raw' (adata.raw)")
    return ", ".join(names)


def resolve_matrix(adata, layer: str | None = None, use_raw: bool = False) -> tuple[Any, str]:
    """The expression matrix of ``adata`` that ``layer`` / ``use_raw`` name, and its label.

    The one place deciding which matrix the pipeline reads (readers, checks, matrix sources).

    Parameters
    ----------
    adata
        The dataset (in memory or backed).
    layer
        ``None`` (default) for ``X``, a key of ``layers``, or ``"raw"`` for ``adata.raw.X``
        (unless a layer is called ``"raw"``).
    use_raw
        Read ``adata.raw.X`` (``layer`` is then ignored).

    Returns
    -------
    tuple
        The matrix (not copied) and its label: ``"X"``, ``"raw"`` or ``"layers['name']"``.

    Raises
    ------
    InputError
        No ``.raw``, no such layer, or an empty ``X``; the message lists what there is.
    """
    from .io._detect import source_name

    if use_raw:
        if adata.raw is None:
            raise InputError("use_raw=True but this AnnData has no .raw; pass layer= instead.")
        return adata.raw.X, "raw"
    if layer is None:
        if adata.X is None:
            raise InputError(
                f"{source_name(adata)}: X is empty; pass layer= with one of: "
                f"{layer_choices(adata)}."
            )
        return adata.X, "X"
    if layer == "raw" and "raw" not in adata.layers:
        if adata.raw is None:
            raise InputError(
                f"{source_name(adata)}: layer='raw' was asked for but the AnnData has no .raw; "
                f"available: {layer_choices(adata)}."
            )
        return adata.raw.X, "raw"
    if layer not in adata.layers:
        raise InputError(
            f"{source_name(adata)}: no layer {layer!r}; available: {layer_choices(adata)}."
        )
    return adata.layers[layer], f"layers[{layer!r}]"


def from_anndata(adata, layer: str | None = None, use_raw: bool = False) -> MatrixSource:
    """Matrix source over ``adata.X``, ``adata.layers[layer]`` or ``adata.raw.X``
    (chosen by :func:`resolve_matrix`)."""
    X, label = resolve_matrix(adata, layer, use_raw)
    from .io._detect import source_name

    if label == "raw":
        var_names = np.asarray(adata.raw.var_names)
        where = ".raw.X"
    else:
        from .io.genes import gene_symbols

        # Ensembl var_names: sentences need symbols (a var column such as feature_name)
        var_names = np.asarray(gene_symbols(adata).symbols)
        where = f".{label}"
    if X is None:
        raise InputError(f"The AnnData has no expression matrix in {where}.")
    n_obs = adata.n_obs
    return MatrixSource(
        n_obs=n_obs,
        var_names=var_names.astype(str),
        obs_names=np.asarray(adata.obs_names).astype(str),
        _chunks=lambda cs: _iter_matrix(X, n_obs, cs),
        description=f"{source_name(adata)} ({where[1:]})",
        _csr=X if isinstance(X, sp.csr_matrix) else None,
    )


def from_matrix(X, genes: Sequence[str]) -> MatrixSource:
    """Matrix source over a bare in-memory cells x genes matrix with gene names ``genes``
    (cells are named by their row number; row blocks of a CSR matrix are views, not copies)."""
    if getattr(X, "ndim", 2) != 2:
        raise InputError(f"Expression must be a 2-D cells x genes matrix, got {X.ndim}-D.")
    if sp.issparse(X) and not isinstance(X, sp.csr_matrix):
        X = sp.csr_matrix(X)
    n = X.shape[0]

    def chunks(size: int) -> Iterator:
        for lo in range(0, n, size):
            hi = min(lo + size, n)
            if isinstance(X, sp.csr_matrix):
                a, b = X.indptr[lo], X.indptr[hi]
                yield sp.csr_matrix((X.data[a:b], X.indices[a:b], X.indptr[lo:hi + 1] - a),
                                    shape=(hi - lo, X.shape[1]))
            else:
                yield sp.csr_matrix(_upcast(np.asarray(X[lo:hi])))

    return MatrixSource(n_obs=n, var_names=np.asarray([str(g) for g in genes], dtype=object),
                        obs_names=np.arange(n).astype(str), _chunks=chunks,
                        description="in-memory matrix")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _h5_strings(ds, step: int = 100_000) -> np.ndarray:
    """The strings of a 1-D HDF5 dataset (or array), ``step`` at a time: a million cell names
    never stand as Python strings at once (that list's ~100 MiB would stay in the heap of
    the process that holds the answers)."""
    parts = []
    for lo in range(0, max(len(ds), 1), step):
        arr = ds[lo:lo + step]
        parts.append(np.array([_text(x) for x in arr]) if arr.dtype.kind in "SO"
                     else arr.astype(str))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _index_dataset(group):
    """The dataset holding the index (obs or var names) of an anndata dataframe group."""
    return group[group.attrs.get("_index", "_index")]


def _h5ad_index(group) -> np.ndarray:
    """The index (obs or var names) of an anndata dataframe group."""
    return _h5_strings(_index_dataset(group))


class _NamesOnDemand:
    """An ``.h5ad``'s obs names, each read when asked for (a process that reopens the file
    to read rows only names a cell in an error message; a million names cost ~100 MB)."""

    def __init__(self, dataset) -> None:
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, i: int) -> str:
        return _text(self._dataset[int(i)])


def _read_range(dataset, lo: int, hi: int) -> np.ndarray:
    """``dataset[lo:hi]`` read straight into a new array (about twice as fast as slicing)."""
    out = np.empty(hi - lo, dtype=dataset.dtype)
    if hi > lo:
        dataset.read_direct(out, np.s_[lo:hi])
    return out


def from_h5ad(path: str | os.PathLike, layer: str | None = None, *,
              names: bool = True) -> MatrixSource:
    """Matrix source that reads CSR row blocks of an ``.h5ad`` file straight from HDF5
    (without ``names``, the obs names are read one at a time when asked for: what
    :attr:`MatrixSource.reopen` does, for processes that only read rows)."""
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
    obs_names = (_h5ad_index(f["obs"]) if names
                 else _NamesOnDemand(_index_dataset(f["obs"])))
    var_names = _h5ad_index(f["var"])
    n_obs = len(obs_names)

    if isinstance(node, h5py.Dataset):  # dense matrix
        def rows(lo: int, hi: int) -> sp.csr_matrix:
            return sp.csr_matrix(_upcast(node[lo:hi]))
    else:
        encoding = node.attrs.get("encoding-type", "")
        if isinstance(encoding, bytes):
            encoding = encoding.decode()
        if encoding != "csr_matrix":
            f.close()
            raise InputError(
                f"{path}: '{key}' is stored as {encoding or 'an unknown encoding'}; chunked "
                "reading needs CSR. Convert with adata.X = scipy.sparse.csr_matrix(adata.X)."
            )
        shape = tuple(int(x) for x in node.attrs["shape"])
        indptr = node["indptr"][()]
        data, indices = node["data"], node["indices"]

        def rows(lo: int, hi: int) -> sp.csr_matrix:
            a, b = int(indptr[lo]), int(indptr[hi])
            return sp.csr_matrix((_upcast(_read_range(data, a, b)), _read_range(indices, a, b),
                                  indptr[lo:hi + 1] - a), shape=(hi - lo, shape[1]))

    def chunks(chunk_size: int) -> Iterator[sp.csr_matrix]:
        for start in range(0, n_obs, chunk_size):
            yield rows(start, min(start + chunk_size, n_obs))

    return MatrixSource(
        n_obs=n_obs, var_names=var_names, obs_names=obs_names, _chunks=chunks,
        description=f"{path} ({key})", _rows=rows,
        reopen=functools.partial(from_h5ad, path, layer, names=False),
    )


# --------------------------------------------------------------------------------------------
# Sampling and counting on any matrix (in memory, sparse or backed) without densifying
# --------------------------------------------------------------------------------------------


def _is_csc(mat: Any) -> bool:
    fmt = getattr(mat, "format", None) or getattr(mat, "format_str", None)
    return fmt == "csc"


def _blocks(mat: Any, *, budget: int | None = None, block_rows: int = 4096) -> Iterator[Any]:
    """Contiguous blocks of ``mat`` (rows, or columns for CSC), each small in memory.

    With ``budget`` (number of rows/columns), only evenly spaced blocks totalling about that
    many are returned; otherwise the whole matrix is covered.
    """
    axis = 1 if _is_csc(mat) else 0
    n = mat.shape[axis]
    starts = list(range(0, n, block_rows))
    if budget is not None and len(starts) * block_rows > budget:
        keep = max(1, budget // block_rows)
        idx = np.unique(np.linspace(0, len(starts) - 1, keep).round().astype(int))
        starts = [starts[i] for i in idx]
    for start in starts:
        stop = min(n, start + block_rows)
        yield _slice(mat, start, stop, axis)


def _slice(mat: Any, start: int, stop: int, axis: int) -> Any:
    """Rows (``axis`` 0) or columns ``start:stop`` of ``mat``; a backed sparse matrix stored as
    float16 (which scipy.sparse cannot hold, nor anndata slice) is read as float32."""
    group = getattr(mat, "group", None)
    if group is None or "data" not in group or group["data"].dtype != np.float16:
        return mat[start:stop] if axis == 0 else mat[:, start:stop]
    indptr = group["indptr"]
    lo, hi = int(indptr[start]), int(indptr[stop])
    parts = (group["data"][lo:hi].astype(np.float32), group["indices"][lo:hi],
             np.asarray(indptr[start:stop + 1]) - lo)
    other = mat.shape[1 - axis]
    if axis == 0:
        return sp.csr_matrix(parts, shape=(stop - start, other))
    return sp.csc_matrix(parts, shape=(other, stop - start))


def _nonzero_values(block: Any) -> np.ndarray:
    data = np.asarray(block.data) if sp.issparse(block) else np.asarray(block).ravel()
    return data[data != 0]


def sample_nonzero(mat: Any, max_values: int = 2_000_000) -> np.ndarray:
    """Non-zero values of ``mat`` (all of them when few, else evenly spaced blocks)."""
    if sp.issparse(mat):
        data = np.asarray(mat.data)
        if data.size > max_values:
            step = data.size // max_values + 1
            data = data[::step]
        return data[data != 0]
    n_cols = mat.shape[1] if not _is_csc(mat) else mat.shape[0]
    budget = max(1, max_values // max(1, n_cols))
    block_rows = max(1, min(4096, budget // 16))  # ~16 evenly spaced blocks
    parts = [_nonzero_values(b) for b in _blocks(mat, budget=budget, block_rows=block_rows)]
    return np.concatenate(parts) if parts else np.array([])


def row_nonzero_counts(mat: Any) -> np.ndarray:
    """Number of non-zero entries per row (cell), block by block."""
    if sp.issparse(mat) and mat.format == "csr":
        data = np.asarray(mat.data)
        if not (data == 0).any():
            return np.diff(np.asarray(mat.indptr))
    group = getattr(mat, "group", None)
    if getattr(mat, "format", None) == "csr" and group is not None and "indptr" in group:
        # a backed CSR matrix: its stored entries per row come from indptr alone (reading the
        # values to rule out explicit zeros would be a whole pass over the file)
        return np.diff(np.asarray(group["indptr"][:], dtype=np.int64))
    if _is_csc(mat):
        counts = np.zeros(mat.shape[0], dtype=np.int64)
        for block in _blocks(mat):
            block = sp.csc_matrix(block)
            nz = np.asarray(block.data) != 0
            counts += np.bincount(np.asarray(block.indices)[nz], minlength=mat.shape[0])
        return counts
    dense_rows = max(1, 16_000_000 // max(1, mat.shape[1]))  # ~16M values per dense block
    block_rows = 4096 if hasattr(mat, "format") or sp.issparse(mat) else dense_rows
    parts = []
    for block in _blocks(mat, block_rows=min(4096, block_rows)):
        if sp.issparse(block):
            parts.append(np.asarray((block != 0).sum(axis=1)).ravel())
        else:
            parts.append(np.count_nonzero(np.asarray(block), axis=1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


__all__ = [
    "DEFAULT_CHUNK",
    "MatrixSource",
    "from_anndata",
    "from_h5ad",
    "from_matrix",
    "layer_choices",
    "resolve_matrix",
    "row_spans",
    "row_nonzero_counts",
    "sample_nonzero",
]
