"""Checks that an AnnData can be annotated, and the one counts-vs-log-normalised test.

:func:`looks_like_counts` decides whether values are raw counts (whole numbers) or
log-normalised; :func:`expression_kind` (the readers' and validators' view),
the built-in reasoner and ``prepare``'s summary all ask it. :func:`log_normalize` turns counts
into log1p CP10k. :func:`validate_for_annotation`, :func:`check_obs_column` and
:func:`check_gene_overlap` raise one :class:`~cellreasoner.errors.InputError` naming the
problem and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputError
from .io._detect import source_name
from .io.genes import is_ensembl_like, resolve_symbols
from .matrix import layer_choices, resolve_matrix, row_nonzero_counts, sample_nonzero

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

ExpressionKind = Literal["counts", "lognorm"]


def looks_like_counts(x: Any, *, max_values: int | None = 200_000) -> bool:
    """Whether values are raw counts: all whole numbers, reaching at least 1.

    Log-normalised (or otherwise normalised) data is never all whole numbers.

    Parameters
    ----------
    x
        A matrix (sparse: its stored values are looked at; dense: all of them) or an array
        of values (e.g. a sample from :func:`~cellreasoner.matrix.sample_nonzero`).
    max_values
        Look at the first ``max_values`` values only (default 200,000); ``None``: all.

    Returns
    -------
    bool
        ``False`` for no values at all.
    """
    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if data.size == 0:
        return False
    sample = data if max_values is None else data[:max_values]
    return bool(np.all(np.mod(sample, 1) == 0) and sample.max() >= 1)


def log_normalize(X: sp.csr_matrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p`` of counts scaled to ``target_sum`` per cell (CP10k by default)."""
    X = X.astype(np.float32, copy=True)
    totals = np.asarray(X.sum(axis=1)).ravel()
    totals[totals == 0] = 1.0
    X = sp.diags((target_sum / totals).astype(np.float32)) @ X
    X = sp.csr_matrix(X)
    np.log1p(X.data, out=X.data)
    return X


def prefer_raw(adata: AnnData) -> bool:
    """Whether to read ``adata.raw`` instead of a scaled ``X`` (as scanpy's tools do).

    True when ``X`` holds negative values (``sc.pp.scale``: it cannot rank expressed genes)
    and ``.raw`` holds non-negative, finite values; the switch is logged.
    """
    if getattr(adata, "raw", None) is None:
        return False
    x = sample_nonzero(resolve_matrix(adata, None)[0])
    if x.size == 0 or not (x < 0).any():
        return False
    raw = sample_nonzero(resolve_matrix(adata, "raw")[0])
    if raw.size == 0 or not np.isfinite(raw).all() or (raw < 0).any():
        return False
    log.warning("%s: X holds scaled values (min %.3g); reading adata.raw instead, as scanpy's "
                "tools do. Pass layer= (--layer) or use_raw= (--use-raw) to choose.",
                source_name(adata), float(x.min()))
    return True


def expression_kind(adata: AnnData, layer: str | None = None) -> ExpressionKind:
    """Whether a matrix holds raw counts or log-normalised values.

    Sampled non-zero values are inspected in chunks (works on sparse and backed data without
    densifying): all non-negative integers (:func:`looks_like_counts`) means ``"counts"``,
    otherwise ``"lognorm"``.

    Parameters
    ----------
    adata
        The dataset.
    layer
        ``None`` (default) for ``X``, a key of ``layers``, or ``"raw"`` for ``adata.raw.X``.

    Returns
    -------
    "counts" or "lognorm"

    Raises
    ------
    InputError
        No such layer; negative values (scaled data); NaN or infinite values; all zeros.
    """
    mat, label = resolve_matrix(adata, layer)
    values = sample_nonzero(mat)
    where = f"{source_name(adata)}: {label}"
    if values.size == 0:
        raise InputError(
            f"{where} has no non-zero values. Pass layer= with the expression matrix; "
            f"available: {layer_choices(adata)}."
        )
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise InputError(
            f"{where} contains NaN or infinite values ({n_bad} among {values.size} sampled). "
            f"Pass layer= with raw counts or log-normalised data; available: "
            f"{layer_choices(adata)}."
        )
    if (values < 0).any():
        raise InputError(
            f"{where} has negative values (min {values.min():.3g}): it looks scaled/centred "
            f"(sc.pp.scale or ScaleData), which cannot rank expressed genes. Pass layer= with raw "
            f"counts or log-normalised data; available: {layer_choices(adata)}."
        )
    if looks_like_counts(values, max_values=None):
        return "counts"
    if values.max() > 50:
        log.warning(
            "%s is not integer but reaches %.3g: it may be normalised without log1p "
            "(expected log-normalised values below ~15)", where, float(values.max()),
        )
    return "lognorm"


def check_chunk_values(chunk: sp.csr_matrix, source: Any, start: int = 0) -> None:
    """Raise an :class:`InputError` if a chunk stores a NaN, infinite or negative value.

    The one value check every consumer of a :class:`~cellreasoner.matrix.MatrixSource` sees
    (its chunk iterator calls it): vectorised on the stored values, no loop per cell.

    Parameters
    ----------
    chunk
        A CSR row block.
    source
        The :class:`~cellreasoner.matrix.MatrixSource` it came from (for the cell, gene and
        matrix names in the message).
    start
        Row of the chunk's first cell in the source.
    """
    data = chunk.data
    if not data.size:
        return
    bad, what = -1, ""
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad, what = int(np.flatnonzero(~np.isfinite(data))[0]), "NaN or infinite values"
    elif data.dtype.kind in "fiu" and data.min() < 0:
        bad, what = int(np.flatnonzero(data < 0)[0]), "negative values"
    if bad < 0:
        return
    row = int(np.searchsorted(chunk.indptr, bad, side="right")) - 1
    cell = source.obs_names[start + row]
    gene = source.var_names[chunk.indices[bad]]
    hint = ("It looks scaled/centred (sc.pp.scale or ScaleData), which cannot rank expressed "
            "genes. " if what == "negative values" else "")
    raise InputError(
        f"{source.description or 'the matrix'} has {what}, the first in cell '{cell}' (row "
        f"{start + row}), gene '{gene}': {data[bad]:.6g}. {hint}Cell sentences need raw counts or "
        "log-normalised values: pass the matrix that holds them (--layer NAME / layer=, "
        "--use-raw), or remove or fix the bad cells first."
    )


def check_has_cells(n_obs: int, where: str) -> None:
    """Raise an :class:`InputError` for data without cells (nothing to prepare or annotate)."""
    if n_obs == 0:
        raise InputError(
            f"{where}: the data has no cells, so there is nothing to do. Check the input file "
            "(an empty selection or filter upstream?) and give one with at least one cell."
        )


def validate_for_annotation(
    adata: AnnData,
    layer: str | None = None,
    *,
    allow_empty: bool = False,
    gene_symbols: str | None = None,
    genes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check that ``adata`` can be annotated and summarise what will be used.

    Parameters
    ----------
    adata
        The dataset (in memory or backed).
    layer
        The expression matrix: ``None`` (default) for ``X``, a layer key, or ``"raw"``.
    allow_empty
        Accept cells without any expressed gene (default ``False``: an error).
    gene_symbols
        ``var`` column with gene symbols (default: detected, see
        :func:`~cellreasoner.io.gene_symbols`).
    genes
        Optional gene list (e.g. the ranked HVG list) checked with :func:`check_gene_overlap`.

    Returns
    -------
    dict
        ``n_cells``, ``n_genes``, ``layer``, ``expression_kind``, ``empty_cells``,
        ``gene_symbols`` (column or ``None``), ``duplicate_symbols`` and, with ``genes``,
        ``genes_matched``.

    Raises
    ------
    InputError
        Duplicate cell names, empty cells, unusable matrix, or no overlap with ``genes``.
    """
    source = source_name(adata)
    check_has_cells(adata.n_obs, source)
    if adata.n_vars == 0:
        raise InputError(f"{source}: the data has {adata.n_obs} cells x {adata.n_vars} genes.")
    dup = adata.obs_names[adata.obs_names.duplicated()]
    if len(dup):
        raise InputError(
            f"{source}: {len(dup)} cell names occur more than once (e.g. "
            f"{', '.join(map(str, pd.unique(dup)[:5]))}); results are keyed by cell name. "
            "Make them unique first, e.g. adata.obs_names_make_unique()."
        )
    kind = expression_kind(adata, layer)
    mat, label = resolve_matrix(adata, layer)
    if mat.shape[0] != adata.n_obs:
        raise InputError(f"{source}: {label} has {mat.shape[0]} rows for {adata.n_obs} cells.")
    nnz = row_nonzero_counts(mat)
    empty = np.flatnonzero(nnz == 0)
    if len(empty) and not allow_empty:
        names = ", ".join(map(str, adata.obs_names[empty[:5]]))
        raise InputError(
            f"{source}: {len(empty)} of {adata.n_obs} cells have no expressed gene in {label} "
            f"(e.g. {names}); they cannot be annotated. Filter them out (sc.pp.filter_cells("
            "adata, min_genes=1)) or pass allow_empty=True to skip them."
        )
    symbols = resolve_symbols(adata, gene_symbols, source)
    summary: dict[str, Any] = {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "layer": layer,
        "matrix": label,
        "expression_kind": kind,
        "empty_cells": int(len(empty)),
        "gene_symbols": symbols.column,
        "duplicate_symbols": symbols.n_duplicates,
    }
    if genes is not None:
        summary["genes_matched"] = check_gene_overlap(adata, genes, gene_symbols=gene_symbols)[
            "n_matched"
        ]
    return summary


def check_key_added(key_added: str, example: str = "cellreasoner") -> None:
    """Raise an :class:`InputError` unless ``key_added`` can prefix ``obs`` columns and key
    ``uns`` (a simple identifier such as ``example``)."""
    if not key_added or not str(key_added).isidentifier():
        raise InputError(f"key_added must be a simple name like {example!r}, not {key_added!r}.")


def in_memory_copy(adata: AnnData) -> AnnData:
    """``adata.copy()`` for ``copy=True``; a backed AnnData (a streamed ``.h5ad``) raises an
    :class:`InputError` saying what to do instead."""
    if getattr(adata, "isbacked", False):
        raise InputError("copy=True needs an AnnData in memory; pass adata.to_memory(), or "
                         "leave copy off to write the columns into the backed AnnData.")
    return adata.copy()


def check_obs_column(adata: AnnData, key: str, what: str = "Label", hint: str = "") -> None:
    """Raise an :class:`InputError` listing ``obs``'s columns unless ``key`` is one of them.

    ``what`` names the column's role in the message (``"Label"``, ``"Cluster"``, ...);
    ``hint`` is appended (e.g. how to do without the column).
    """
    if key not in adata.obs:
        columns = ", ".join(map(str, adata.obs.columns)) or "none"
        raise InputError(f"{what} column '{key}' not in obs. Available columns: {columns}."
                         + (f" {hint}" if hint else ""))


def check_gene_overlap(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    *,
    gene_symbols: str | None = None,
) -> dict[str, Any]:
    """How many genes of ``genes`` the dataset has; an error when none.

    Parameters
    ----------
    adata
        The dataset.
    genes
        Gene symbols (default ``None``: the ranked gene list of the published models).
    gene_symbols
        ``var`` column with symbols (default: detected, see :func:`~cellreasoner.io.gene_symbols`).

    Returns
    -------
    dict
        ``n_matched``, ``n_genes`` (list size), ``n_var`` (unique dataset symbols) and
        ``examples`` (a few matched symbols).

    Raises
    ------
    InputError
        When no gene matches; the message shows examples of both sides and hints at
        Ensembl IDs or a species mismatch.
    """
    if genes is None:
        from .resources import load_gene_list

        genes = load_gene_list()
    genes = [str(g) for g in genes]
    source = source_name(adata)
    symbols = resolve_symbols(adata, gene_symbols, source)
    have = set(symbols.symbols[symbols.first].tolist())
    matched = [g for g in genes if g in have]
    result = {
        "n_matched": len(set(matched)),
        "n_genes": len(set(genes)),
        "n_var": len(have),
        "examples": matched[:5],
    }
    if matched:
        if len(set(matched)) < 0.05 * len(set(genes)):
            log.warning(
                "%s: only %d of %d genes of the gene list are in the data; cell sentences will "
                "be short", source, len(set(matched)), len(set(genes)),
            )
        return result
    data_examples = ", ".join(list(symbols.symbols[:5]))
    list_examples = ", ".join(genes[:5])
    hints = []
    if is_ensembl_like(symbols.symbols):
        hints.append(
            "the data's genes are Ensembl IDs: add a gene-symbol column to var (e.g. "
            "'feature_name') or pass gene_symbols= naming it"
        )
    upper = {g.upper() for g in genes}
    n_case = sum(1 for s in have if s.upper() in upper)
    if n_case:
        hints.append(
            f"{n_case} genes match when ignoring case: the data may be from another species "
            "(mouse 'Cd3e' vs human 'CD3E'); for mouse data pass species='mouse' (--species "
            "mouse or auto)"
        )
    if not hints:
        hints.append(
            "check that var_names (or gene_symbols=) hold gene symbols of the same species as "
            "the gene list"
        )
    raise InputError(
        f"{source}: none of the {len(set(genes))} genes of the gene list occurs among the "
        f"data's {len(have)} genes (data: {data_examples}, ...; gene list: {list_examples}, "
        f"...). Hint: {'; '.join(hints)}."
    )


__all__ = [
    "ExpressionKind",
    "check_chunk_values",
    "check_has_cells",
    "check_gene_overlap",
    "check_obs_column",
    "expression_kind",
    "log_normalize",
    "looks_like_counts",
    "validate_for_annotation",
]
