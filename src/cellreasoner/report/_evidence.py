"""The cited genes shown per cell: the evidence columns annotate wrote, or the one rule.

:func:`cellreasoner.annotate` writes ``{key}_cited_present`` / ``{key}_cited_absent`` (and
``_evidence_fraction``, ``_evidence_flag``); the report shows those as they are. Only a result
that has neither cited column (an upstream CellReasoner CSV or an AnnData annotated elsewhere)
gets them computed here, by :func:`cellreasoner.evidence.check_evidence_many` against the genes
each cell expresses, when the expression is at hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..evaluation.results import ResultTable, as_text

Lists = list[list[str]]


def _gene_lists(values: Any) -> Lists:
    """Comma-joined gene strings (``"CD3E, NKG7"``) -> lists of symbols."""
    out = []
    for v in as_text(values):
        out.append([g.strip() for g in str(v).split(",") if g.strip()])
    return out


def _expressed_genes(matrix: Any, var_names: Sequence[str], i: int) -> list[str]:
    """Genes with a positive value in row ``i`` of a dense or sparse matrix."""
    import scipy.sparse as sp

    row = matrix[i]
    if sp.issparse(row):
        row = row.tocsr()
        idx = row.indices[row.data > 0]
    else:
        idx = np.flatnonzero(np.asarray(row).ravel() > 0)
    return [str(var_names[j]) for j in idx]


def _evidence_from_expression(
    table: ResultTable, reasoning: np.ndarray, keep: np.ndarray
) -> tuple[Lists, Lists] | None:
    """Cited genes present/absent per cell, by :func:`cellreasoner.evidence.check_evidence_many`.

    The expression must be at hand (AnnData in memory or an ``.h5ad``); ``.raw`` is used when
    present (``X`` may be scaled). Genes are recognised from the measured genes (``var_names``),
    so "absent" means measured but zero in that cell. Only the cells in ``keep`` with reasoning
    are checked; ``None`` when not possible.
    """
    if not any(reasoning[i] for i in keep):
        return None
    from ..evidence import check_evidence_many

    adata = table.adata
    if adata is None and table.source.lower().endswith(".h5ad"):
        import anndata

        adata = anndata.read_h5ad(table.source)
    if adata is None:
        return None
    src = adata.raw if adata.raw is not None else adata
    matrix, var_names = src.X, src.var_names
    n = len(reasoning)
    present: Lists = [[] for _ in range(n)]
    absent: Lists = [[] for _ in range(n)]
    rows = [int(i) for i in keep if reasoning[i]]
    checked = check_evidence_many(
        [str(reasoning[i]) for i in rows],
        [_expressed_genes(matrix, var_names, i) for i in rows],
        vocabulary=[str(g) for g in var_names],
    )
    for i, p, a in zip(rows, checked["present"], checked["absent"], strict=True):
        present[i] = [g.strip() for g in str(p).split(",") if g.strip()]
        absent[i] = [g.strip() for g in str(a).split(",") if g.strip()]
    return present, absent


def cited_genes(table: ResultTable, field: Callable[[str], pd.Series | None],
                text: np.ndarray, keep: np.ndarray) -> tuple[Lists, Lists]:
    """Cited genes expressed / not expressed, per cell of the result.

    Parameters
    ----------
    table
        The result.
    field
        ``name -> Series or None``: the annotation field ``name`` of this run.
    text
        Per-cell text the genes are cited in (reasoning, else the response); used only when
        the result has no cited-gene columns.
    keep
        The cells shown in the page (the only ones checked when computing).

    Returns
    -------
    tuple of list of list of str
        ``present`` and ``absent`` for every cell (empty lists where unknown).
    """
    n_total = len(table.obs)
    present_col, absent_col = field("cited_present"), field("cited_absent")
    if present_col is not None or absent_col is not None:  # what annotate wrote
        present = _gene_lists(present_col) if present_col is not None else [[]] * n_total
        absent = _gene_lists(absent_col) if absent_col is not None else [[]] * n_total
        return present, absent
    computed = _evidence_from_expression(table, text, keep)
    return computed if computed is not None else ([[]] * n_total, [[]] * n_total)
