"""Dense ``.csv``/``.tsv`` expression tables (optionally gzipped), in either orientation."""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import InputError
from ._detect import GZIP_SIGNATURE, first_bytes
from .genes import ENSEMBL_RE

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

_BARCODE_RE = re.compile(r"[ACGTN]{10,}")


def read_dense_table(p: Path) -> tuple[AnnData, dict[str, Any]]:
    """Read a dense table with a header row and row names: (AnnData, what was read)."""
    import anndata as ad

    sep = _sniff_separator(p)
    try:
        df = pd.read_csv(p, sep=sep, index_col=0)
    except Exception as exc:  # pandas raises ParserError, UnicodeDecodeError, EOFError...
        raise InputError(
            f"Could not read {p} as a {'comma' if sep == ',' else 'tab'}-separated table "
            f"({type(exc).__name__}: {exc}). Expected a header row of names and the row names "
            "in the first column."
        ) from exc
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise InputError(
            f"{p}: the table has {df.shape[0]} rows and {df.shape[1]} value columns; expected "
            f"cells x genes (or genes x cells) with a header row and names in the first column."
        )
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise InputError(
            f"{p}: {len(bad)} column(s) are not numeric (e.g. {bad[0]!r} = "
            f"{df[bad[0]].iloc[0]!r}). Expected expression values only, with row names in the "
            f"first column{' (is this really ' + repr(sep) + '-separated?)' if len(bad) else ''}."
        )
    rows = [str(x) for x in df.index]
    cols = [str(x) for x in df.columns]
    transposed = _looks_genes_by_cells(rows, cols)
    values = df.to_numpy(dtype=np.float64)
    if transposed:
        values = values.T
        rows, cols = cols, rows
        log.info("%s: rows look like genes and columns like cells; reading the transpose", p)
    x = sparse.csr_matrix(values) if (values == 0).mean() > 0.5 else values
    adata = ad.AnnData(
        X=x, obs=pd.DataFrame(index=pd.Index(rows)), var=pd.DataFrame(index=pd.Index(cols))
    )
    orientation = "genes x cells (transposed)" if transposed else "cells x genes"
    return adata, {"x": "table values", "orientation": orientation}


def _sniff_separator(p: Path) -> str:
    """Comma or tab, from the header line (the extension decides a tie)."""
    opener = gzip.open if first_bytes(p, 2) == GZIP_SIGNATURE else open
    try:
        with opener(p, "rt", encoding="utf-8", errors="replace") as fh:
            header = fh.readline()
    except (OSError, EOFError) as exc:
        raise InputError(f"Could not read {p} ({type(exc).__name__}: {exc}).") from exc
    tabs, commas = header.count("\t"), header.count(",")
    if tabs != commas:
        return "\t" if tabs > commas else ","
    return "," if p.name.lower().removesuffix(".gz").endswith(".csv") else "\t"


def _gene_score(labels: Sequence[str], known: set[str] | None) -> float:
    sample = list(labels[:500])
    if not sample:
        return 0.0
    hits = sum(
        1
        for s in sample
        if ENSEMBL_RE.match(s) or (known is not None and s.upper() in known)
    )
    return hits / len(sample)


def _barcode_score(labels: Sequence[str]) -> float:
    sample = list(labels[:500])
    if not sample:
        return 0.0
    return sum(1 for s in sample if _BARCODE_RE.search(s.upper())) / len(sample)


def _known_genes() -> set[str] | None:
    """Gene symbols of the ranked list when a local copy is configured (no download)."""
    path = os.environ.get("CELLREASONER_GENE_LIST")
    if not path or not Path(path).is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        return {line.strip().upper() for line in fh if line.strip()}


def _looks_genes_by_cells(rows: Sequence[str], cols: Sequence[str]) -> bool:
    """Whether a table's rows are genes and its columns cells (else cells x genes)."""
    known = _known_genes()
    rows_genes, cols_genes = _gene_score(rows, known), _gene_score(cols, known)
    rows_bc, cols_bc = _barcode_score(rows), _barcode_score(cols)
    if rows_genes >= 0.3 and rows_genes > cols_genes + 0.2:
        return True
    return cols_bc >= 0.5 and rows_bc < 0.2 and cols_genes < 0.3

