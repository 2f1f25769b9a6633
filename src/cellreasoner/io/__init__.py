"""Readers for real single-cell inputs, and the one input loader.

``read(path)`` turns any supported input into an :class:`~anndata.AnnData` (cells x genes):

* ``.h5ad`` (optionally ``backed="r"`` so that ``X`` stays on disk);
* Seurat ``.rds`` objects (v3/v4 ``Assay`` and v5 ``Assay5``, split layers included), read in
  pure Python with the ``rdata`` package, no R needed;
* 10x Genomics ``filtered_feature_bc_matrix.h5`` and matrix-market directories;
* dense ``.csv``/``.tsv`` tables (optionally gzipped), in either orientation;
* scATAC-seq (10x fragment files, peak matrices, MuData ``.h5mu``, snapATAC2 ``.h5ad``): read
  as log-normalised gene activity by :func:`cellreasoner.atac.read_atac`, with the default
  gene annotation (``$CELLREASONER_GTF``).

What was read and which matrix became ``X`` is logged and recorded in
``adata.uns["cellreasoner_io"]``. Every problem with the input is reported as one
:class:`~cellreasoner.errors.InputError` that names the file and what to do.

``load_input(data)`` is what every entry point (annotate, prepare, the training builders)
uses to turn "an AnnData, a path, or a demo name" into an AnnData.

Gene symbols live in :mod:`cellreasoner.io.genes`, atomic writes in
:mod:`cellreasoner.io.write`; the checks that an AnnData can be annotated are in
:mod:`cellreasoner.checks`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InputError
from ._detect import UNS_KEY, detect_format, display_path
from ._h5ad import read_h5ad
from ._seurat import read_seurat
from ._table import read_dense_table
from ._tenx import read_10x_h5, read_10x_mtx
from .genes import (
    SYMBOL_COLUMNS,
    GeneSymbols,
    gene_symbols,
    resolve_symbols,
    use_symbols_as_var_names,
)
from .write import atomic_path

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)


def read(
    path: str | os.PathLike,
    *,
    assay: str | None = None,
    layer: str | None = None,
    backed: bool | Literal["r"] = False,
    gene_symbols: str | None = None,
) -> AnnData:
    """Read a single-cell dataset into an AnnData (cells x genes).

    Parameters
    ----------
    path
        An ``.h5ad`` file, a Seurat ``.rds`` file, a 10x ``.h5`` file, a 10x matrix-market
        directory (or its ``matrix.mtx(.gz)``), or a dense ``.csv``/``.tsv`` (``.gz``) table.
    assay
        Seurat only: the assay to read. Default: the object's active assay.
    layer
        The matrix that becomes ``X``. Seurat: ``"data"`` or ``"counts"`` (default ``"data"``
        when present, else ``"counts"``); ``.h5ad``: a key of ``layers`` or ``"raw"``
        (default: ``X`` as stored). Not available for the other formats.
    backed
        ``.h5ad`` only: ``True`` or ``"r"`` keeps ``X`` on disk (read-only). Default ``False``.
    gene_symbols
        The ``var`` column holding gene symbols. Default: detected automatically when
        ``var_names`` are Ensembl IDs (see :func:`gene_symbols`).

    Returns
    -------
    AnnData
        With ``uns["cellreasoner_io"]`` describing the source, format and ``X``.

    Raises
    ------
    InputError
        Missing or unreadable file, unknown format, missing assay or layer.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"Input not found: {p}. Check the path (relative paths start at {Path.cwd()})."
        )
    from ..atac.read import atac_layout

    if atac_layout(p) is not None:  # fragments, peaks, .h5mu: gene activity (cr.read_atac)
        if layer is not None or assay is not None or backed:
            raise InputError(f"{p} is scATAC-seq data, read as gene activity: layer=, assay= "
                             "and backed= do not apply (see cellreasoner.read_atac).")
        from ..atac import read_atac

        return read_atac(p)
    fmt = detect_format(p)
    if backed and fmt != "h5ad":
        raise InputError(
            f"{p}: backed mode is only available for .h5ad files; read this {fmt} input without "
            "backed=, or convert it to .h5ad first."
        )
    if layer is not None and fmt in ("10x_h5", "10x_mtx", "csv"):
        raise InputError(
            f"{p}: layer={layer!r} does not apply to a {fmt} input (it holds one matrix)."
        )
    if assay is not None and fmt != "seurat":
        raise InputError(f"{p}: assay={assay!r} only applies to Seurat .rds objects.")

    if fmt == "h5ad":
        adata, info = read_h5ad(p, layer=layer, backed=backed)
    elif fmt == "seurat":
        adata, info = read_seurat(p, assay=assay, layer=layer)
    elif fmt == "10x_h5":
        adata, info = read_10x_h5(p)
    elif fmt == "10x_mtx":
        adata, info = read_10x_mtx(p)
    else:
        adata, info = read_dense_table(p)

    info = {"source": display_path(p), "format": fmt, **info}
    symbols = resolve_symbols(adata, gene_symbols, source=display_path(p))
    if symbols.column is not None:
        info["gene_symbols"] = symbols.column
        info["original_var_names"] = use_symbols_as_var_names(adata, symbols)
    adata.uns[UNS_KEY] = info
    log.info(
        "read %s (%s): %d cells x %d genes, X = %s",
        p, fmt, adata.n_obs, adata.n_vars, info.get("x", "X"),
    )
    return adata


def load_input(
    data: Any, *, assay: str | None = None, backed: bool | Literal["r"] | None = None
) -> tuple[AnnData, str]:
    """An AnnData, a path, or a demo name -> the AnnData and a display name.

    The one input loader of every entry point (annotate, prepare, the training builders).

    Parameters
    ----------
    data
        An AnnData (returned as it is), a path of any format :func:`read` reads, or the name
        of an example dataset (:data:`cellreasoner.datasets.EXAMPLES`).
    assay
        Seurat only: the assay to read (see :func:`read`). Ignored for example datasets.
    backed
        ``.h5ad`` only: ``"r"`` keeps ``X`` on disk (see :func:`read`). Default ``None``: no.

    Returns
    -------
    tuple
        The AnnData and a display name: the path, the example's name, or ``""`` for an
        AnnData given directly.

    Raises
    ------
    InputError
        A path that does not exist or cannot be read, or an input of another type.
    """
    if isinstance(data, str | os.PathLike):
        from ..datasets import EXAMPLES, load_example

        if str(data) in EXAMPLES:
            return load_example(str(data)), str(data)
        p = Path(data)
        if not p.expanduser().exists():
            raise InputError(f"Input not found: {p}. Pass an .h5ad, Seurat .rds, 10x "
                             "folder/.h5 or CSV file, or pbmc68k_reduced / pbmc_demo.")
        return read(p, assay=assay, backed=backed or False), display_path(p)
    if hasattr(data, "obs") and hasattr(data, "n_obs"):
        return data, ""
    raise InputError(f"Expected an AnnData, a file path or an example name (pbmc68k_reduced, "
                     f"pbmc_demo), not {type(data).__name__}.")


def _streamable(path: Path, layer: str | None) -> bool:
    """Whether the ``.h5ad`` matrix can be read in CSR row chunks straight from HDF5 (CSR or
    dense ``X``/layer; CSC and ``.raw`` are read into memory instead)."""
    import h5py

    if layer == "raw":
        return False
    try:
        with h5py.File(path, "r") as f:
            node = f.get("X" if layer is None else f"layers/{layer}")
            if node is None:
                return False
            enc = node.attrs.get("encoding-type", "")
            enc = enc.decode() if isinstance(enc, bytes) else enc
            return isinstance(node, h5py.Dataset) or enc == "csr_matrix"
    except OSError:
        return False  # read() gives the clear error


def streams_from_file(data: Any, *, layer: str | None = None, use_raw: bool = False) -> bool:
    """Whether :func:`open_input` streams ``data``'s matrix from its file (an ``.h5ad`` path
    whose ``X`` or ``layer`` is CSR or dense, not ATAC peaks): such an input is opened
    ``backed="r"`` and its annotated ``.h5ad`` is a copy of the file with a new ``obs``."""
    from ..atac.read import atac_layout

    return (isinstance(data, str | os.PathLike) and Path(data).suffix == ".h5ad"
            and not use_raw and Path(data).is_file() and _streamable(Path(data), layer)
            and atac_layout(Path(data)) is None)  # peaks become gene activity in memory


def open_input(data: Any, *, layer: str | None = None, use_raw: bool = False,
               assay: str | None = None):
    """An input and a chunked source of its expression matrix.

    An ``.h5ad`` path whose matrix is CSR (or dense) is opened ``backed="r"`` and its matrix
    streamed from HDF5 in row chunks (X never loaded); anything else goes through
    :func:`load_input` and is read into memory.

    Parameters
    ----------
    data
        An AnnData, a path, or an example name (see :func:`load_input`).
    layer, use_raw
        The matrix to read (default ``X``).
    assay
        Seurat only: the assay to read.

    Returns
    -------
    tuple
        ``(adata, source, name, streamed)``: the AnnData, its
        :class:`~cellreasoner.matrix.MatrixSource`, the display name (``""`` for an AnnData
        given directly) and whether the matrix is streamed from the file.
    """
    import numpy as np

    from ..matrix import from_anndata, from_h5ad

    stream = streams_from_file(data, layer=layer, use_raw=use_raw)
    adata, name = load_input(data, assay=assay, backed="r" if stream else None)
    if stream:
        source = from_h5ad(Path(data), layer=layer, names=False)
        source.var_names = np.asarray(adata.var_names).astype(str)  # symbols, as read() sets
        source.obs_names = np.asarray(adata.obs_names)  # the AnnData's own strings, not a copy
    else:
        source = from_anndata(adata, layer=layer, use_raw=use_raw)
    return adata, source, name, stream


__all__ = [
    "SYMBOL_COLUMNS",
    "UNS_KEY",
    "GeneSymbols",
    "atomic_path",
    "gene_symbols",
    "load_input",
    "open_input",
    "read",
]
