"""Gene symbols of an AnnData's genes, as cell sentences need them.

``var_names`` that are Ensembl IDs are replaced by the symbols of a ``var`` column
(:data:`SYMBOL_COLUMNS`); repeated symbols are counted and masked (first occurrence wins).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ._detect import source_name

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

#: ``var`` columns searched (in this order, case-insensitively) for gene symbols.
SYMBOL_COLUMNS: tuple[str, ...] = (
    "feature_name",
    "gene_symbols",
    "gene_symbol",
    "gene_name",
    "gene_names",
    "symbol",
    "symbols",
    "gene_short_name",
    "feature_names",
    "features",
    "gene",
    "genes",
    "name",
)

#: An Ensembl gene ID (human ``ENSG...``, mouse ``ENSMUSG...``, ...), version suffix allowed.
ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


@dataclass(frozen=True)
class GeneSymbols:
    """Gene symbols of an AnnData's ``var``, as used to build cell sentences.

    Attributes
    ----------
    symbols
        One symbol per ``var`` row (the Ensembl ID where a symbol is missing).
    column
        The ``var`` column used, or ``None`` for ``var_names``.
    first
        Boolean mask, ``True`` for the first occurrence of each symbol (use these).
    n_duplicates
        How many ``var`` rows repeat an earlier symbol (and are masked out of ``first``).
    """

    symbols: np.ndarray
    column: str | None
    first: np.ndarray
    n_duplicates: int


def is_ensembl_like(values: Sequence[Any]) -> bool:
    """Whether at least half of (the first 1000 of) ``values`` are Ensembl gene IDs."""
    sample = [str(v) for v in list(values[:1000])]
    if not sample:
        return False
    return sum(1 for s in sample if ENSEMBL_RE.match(s)) / len(sample) >= 0.5


def gene_symbols(adata: AnnData, gene_symbols: str | None = None) -> GeneSymbols:
    """Gene symbols for ``adata``'s genes, de-duplicated by first occurrence.

    When ``var_names`` are Ensembl IDs (``ENSG...``, ``ENSMUSG...``) the first ``var`` column
    of :data:`SYMBOL_COLUMNS` holding symbols is used, and logged.

    Parameters
    ----------
    adata
        The dataset.
    gene_symbols
        A ``var`` column to use (``"var_names"`` forces the index). Default ``None``: detect.

    Returns
    -------
    GeneSymbols
    """
    return resolve_symbols(adata, gene_symbols, source=source_name(adata))


def resolve_symbols(adata: AnnData, column: str | None, source: str) -> GeneSymbols:
    """:func:`gene_symbols` with ``source`` (the file, for messages) given."""
    var_names = np.asarray(adata.var_names, dtype=object)
    chosen: str | None = None
    if column is not None and column not in ("var_names", "index"):
        if column not in adata.var.columns:
            raise InputError(
                f"{source}: gene_symbols={column!r} is not a var column; available columns: "
                f"{', '.join(map(str, adata.var.columns)) or 'none'} (or 'var_names')."
            )
        chosen = column
    elif column is None and is_ensembl_like(var_names):
        lower = {str(c).lower(): c for c in adata.var.columns}
        for name in SYMBOL_COLUMNS:
            col = lower.get(name)
            if col is None:
                continue
            values = adata.var[col]
            if values.dtype.kind in "fiub" or is_ensembl_like(np.asarray(values)):
                continue
            chosen = str(col)
            break
        if chosen is None:
            log.warning(
                "%s: var_names look like Ensembl IDs (e.g. %s) and no gene-symbol column was found "
                "in var (looked for %s); cell sentences need gene symbols: pass gene_symbols=",
                source, var_names[0], ", ".join(SYMBOL_COLUMNS[:6]),
            )
        else:
            log.info("%s: var_names are Ensembl IDs; using gene symbols from var[%r]",
                     source, chosen)
    if chosen is None:
        symbols = var_names.astype(str)
    else:
        raw = adata.var[chosen].astype(object).to_numpy()
        missing = pd.isna(raw) | (pd.Series(raw).astype(str).str.strip() == "").to_numpy()
        symbols = np.where(missing, var_names, raw).astype(str)
        if missing.any():
            log.info("%s: %d genes have no symbol in var[%r]; their IDs are kept",
                     source, int(missing.sum()), chosen)
    dup = pd.Index(symbols).duplicated()
    n_dup = int(dup.sum())
    if n_dup:
        log.warning(
            "%s: %d genes repeat an earlier gene symbol (e.g. %s); only the first occurrence of "
            "each symbol is used in cell sentences", source, n_dup,
            ", ".join(pd.unique(symbols[dup])[:3]),
        )
    return GeneSymbols(symbols=symbols, column=chosen, first=~dup, n_duplicates=n_dup)


def use_symbols_as_var_names(adata: AnnData, symbols: GeneSymbols) -> str:
    """Make gene symbols the ``var_names`` (as scanpy's 10x readers do); keep the IDs in var.

    Repeated symbols get scanpy's ``-1``, ``-2`` suffixes, so only their first occurrence
    matches a gene list. Returns the ``var`` column now holding the original names.
    """
    import warnings

    key = "gene_ids" if "gene_ids" not in adata.var.columns else "original_var_names"
    adata.var[key] = np.asarray(adata.var_names, dtype=str)
    adata.var_names = pd.Index(symbols.symbols)
    if symbols.n_duplicates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata's note on suffixes; we log our own
            adata.var_names_make_unique()
    log.info("var_names are now the gene symbols of var[%r]; the original IDs are in var[%r]",
             symbols.column, key)
    return key


__all__ = ["SYMBOL_COLUMNS", "GeneSymbols", "gene_symbols"]
