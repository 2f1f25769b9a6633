"""Cluster-level annotation helpers: groups, marker genes, cluster sentences, majority votes.

Cluster mode asks the model once per cluster. Its prompt is a *cluster sentence*: the cluster's
top marker genes (ranked by a vectorised mean-difference score, or read from a marker file),
written in the ranked gene list's order — the order every training sentence of the published
models used — and joined by ``", "`` like a cell sentence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..matrix import MatrixSource

#: Default number of marker genes per cluster sentence (the CellReasoner prompt style).
DEFAULT_N_MARKERS = 100
#: ... and for general chat models (the neutral style): the best mean over the three labelled
#: datasets of bench/real_llm.py with a real 1.5B instruct model (mean hierarchical score 0.300
#: with 30 markers, 0.272 with 10; 100 was worst where measured). Shorter helped pbmc68k and
#: hurt the other two, so no single dataset decides it.
DEFAULT_N_MARKERS_NEUTRAL = 30


def default_n_markers(prompt_style: str) -> int:
    """Markers per cluster sentence for a prompt style (``"neutral"``: general models)."""
    return DEFAULT_N_MARKERS_NEUTRAL if prompt_style == "neutral" else DEFAULT_N_MARKERS
#: Marker orders: ranked gene list order (as the models were trained) or by score.
MARKER_ORDERS = ("ranked", "score")


def resolve_groups(adata, by: str | None, source: MatrixSource | None = None,
                   resolution: float = 1.0) -> tuple[pd.Series, str]:
    """The cluster of every cell as a string Series (index = ``obs_names``) and its column name.

    Parameters
    ----------
    adata
        The AnnData being annotated.
    by
        An ``obs`` column, or ``"leiden"`` / ``None``: use ``obs["leiden"]`` when present,
        otherwise compute Leiden clusters with scanpy (on ``obsp["connectivities"]`` when
        present, else on a PCA + kNN graph of ``source``) and store them in ``obs["leiden"]``.
    source
        The expression matrix used when a neighbour graph has to be built.
    resolution
        Leiden resolution (default 1.0).
    """
    key = by or "leiden"
    if key in adata.obs:
        col = adata.obs[key]
        if col.isna().any():
            raise InputError(
                f"obs['{key}'] has {int(col.isna().sum())} missing values; every cell needs a "
                "cluster in cluster/hybrid mode (fill them or pick another --by column)."
            )
        return col.astype(str), key
    if key != "leiden":
        from ..checks import check_obs_column

        check_obs_column(adata, key, "Cluster", "Or pass --by leiden to compute clusters.")
    adata.obs["leiden"] = compute_leiden(adata, source, resolution=resolution)
    return adata.obs["leiden"].astype(str), "leiden"


def compute_leiden(adata, source: MatrixSource | None = None, resolution: float = 1.0,
                   seed: int = 0) -> pd.Categorical:
    """Leiden clusters (scanpy, igraph flavour) of ``adata``'s cells."""
    import anndata as ad
    import scanpy as sc

    if "connectivities" in adata.obsp:
        tmp = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
        tmp.obsp["connectivities"] = adata.obsp["connectivities"]
    else:
        if source is None:
            raise InputError("Computing Leiden clusters needs an expression matrix.")
        X = source.to_csr().astype(np.float32)
        tmp = ad.AnnData(X=X, obs=pd.DataFrame(index=adata.obs_names.copy()))
        n_comps = max(2, min(50, X.shape[0] - 1, X.shape[1] - 1))
        sc.pp.pca(tmp, n_comps=n_comps, random_state=seed)
        sc.pp.neighbors(tmp, n_neighbors=min(15, max(2, X.shape[0] - 1)), random_state=seed)
    sc.tl.leiden(tmp, resolution=resolution, flavor="igraph", n_iterations=2, directed=False,
                 random_state=seed, obsp="connectivities", key_added="leiden")
    return tmp.obs["leiden"].values


def group_statistics(source: MatrixSource, groups: pd.Series, cluster=None
                     ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Per group: sum of expression and number of expressing cells for every gene.

    Returns ``(group_names, sums, nnz, sizes)`` with ``sums``/``nnz`` of shape
    ``(n_groups, n_genes)``; computed chunk by chunk with a sparse indicator product, here or
    (``cluster``, a :class:`~cellreasoner.distributed.cluster.RayCluster`) as Ray tasks whose
    sums are added here.
    """
    codes, names = pd.factorize(groups.to_numpy(), sort=True)
    k, n_genes = len(names), len(source.var_names)
    if cluster is not None:
        from ..distributed.matrix import group_sums

        sums, nnz = group_sums(source, codes, k, cluster)
    else:
        sums, nnz = np.zeros((k, n_genes)), np.zeros((k, n_genes))
        start = 0
        for chunk in source.iter_chunks():
            s, z = chunk_group_sums(chunk, codes[start:start + chunk.shape[0]], k)
            sums += s
            nnz += z
            start += chunk.shape[0]
    sizes = np.bincount(codes, minlength=k).astype(np.float64)
    return [str(x) for x in names], sums, nnz, sizes


def chunk_group_sums(chunk: sp.csr_matrix, codes: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's per-group sums of expression and of expressing cells (``k`` groups;
    ``codes``: each row's group)."""
    n = chunk.shape[0]
    ind = sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(k, n))
    present = chunk.copy()
    present.data = (present.data != 0).astype(np.float64)
    return np.asarray((ind @ chunk).todense()), np.asarray((ind @ present).todense())


def rank_markers(source: MatrixSource, groups: pd.Series, gene_list: Sequence[str],
                 n_markers: int = DEFAULT_N_MARKERS, min_fraction: float = 0.1,
                 order: str = "ranked", cluster=None) -> dict[str, list[str]]:
    """Top marker genes of every group, by mean difference (group mean - rest mean).

    Parameters
    ----------
    source
        Expression (log-normalised, as for cell sentences).
    groups
        Group of each cell.
    gene_list
        Candidate genes (the ranked vocabulary); genes outside it are never markers.
    n_markers
        At most this many markers per group (default 100); only genes with a positive score
        and expressed in at least ``min_fraction`` (default 0.1) of the group's cells qualify.
    order
        ``"ranked"`` (default): markers written in ``gene_list`` order, as the published models
        saw training sentences; ``"score"``: by decreasing score.
    cluster
        A Ray cluster (:func:`cellreasoner.distributed.connect`): the group statistics are
        computed as Ray tasks over chunks of cells (default ``None``: here).
    """
    if order not in MARKER_ORDERS:
        raise InputError(f"marker order must be one of {MARKER_ORDERS}, not '{order}'.")
    names, sums, nnz, sizes = group_statistics(source, groups, cluster)
    rank_of = {}
    for pos, g in enumerate(gene_list):
        rank_of.setdefault(g, pos)
    var = [str(v) for v in source.var_names]
    col_rank = np.array([rank_of.get(g, -1) for g in var])
    _, first_col = np.unique(np.asarray(var, dtype=object), return_index=True)
    usable = np.zeros(len(var), dtype=bool)
    usable[first_col] = True
    usable &= col_rank >= 0
    total, n = sums.sum(axis=0), sizes.sum()
    out: dict[str, list[str]] = {}
    for gi, name in enumerate(names):
        mean_in = sums[gi] / sizes[gi]
        rest = n - sizes[gi]
        mean_out = (total - sums[gi]) / rest if rest > 0 else np.zeros_like(mean_in)
        score = mean_in - mean_out
        ok = usable & (score > 0) & (nnz[gi] / sizes[gi] >= min_fraction)
        cand = np.flatnonzero(ok)
        top = cand[np.argsort(-score[cand], kind="stable")][:n_markers]
        if order == "ranked":
            top = top[np.argsort(col_rank[top], kind="stable")]
        out[name] = [var[j] for j in top]
    return out


def read_markers(path: str | os.PathLike) -> dict[str, list[str]]:
    """Marker genes per cluster from a file, in the file's order of importance.

    Every layout of :func:`cellreasoner.markers.read_marker_table` is accepted: JSON
    ``{"cluster": ["GENE", ...]}``, ``cluster<TAB>gene1,gene2`` lines, a Seurat
    ``FindAllMarkers`` or ``sc.get.rank_genes_groups_df`` export, any CSV/TSV with a cluster
    column (``cluster``/``group``) and a gene column (``gene``/``names``/``marker``), or an
    ``.h5ad`` holding a ``rank_genes_groups`` result. No filter is applied.
    """
    from ..markers.table import read_marker_table

    return read_marker_table(path).lists()


def order_markers(markers: Sequence[str], gene_list: Sequence[str], n_markers: int,
                  order: str = "ranked") -> list[str]:
    """The first ``n_markers`` given markers that are in ``gene_list``, in the chosen order."""
    rank_of = {}
    for pos, g in enumerate(gene_list):
        rank_of.setdefault(g, pos)
    kept = [g for g in dict.fromkeys(markers) if g in rank_of][:n_markers]
    if order == "ranked":
        kept.sort(key=rank_of.__getitem__)
    return kept


def majority_by_group(labels: Sequence[str], groups: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: its group's majority label and the fraction of the group's cells agreeing.

    Labels are compared case- and space-insensitively; ties go to the label seen first.
    """
    from ..parsing import majority_label

    labels = np.asarray(labels, dtype=object)
    codes, _ = pd.factorize(groups.to_numpy())
    maj = np.empty(len(labels), dtype=object)
    agree = np.zeros(len(labels))
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        label, frac, _ = majority_label(list(labels[idx]))
        maj[idx] = label
        agree[idx] = frac
    return maj, agree


def run_cluster_prompts(be, source: MatrixSource, groups: pd.Series, genes: Sequence[str],
                        markers, n_markers: int, marker_order: str, instruction: str,
                        reasoning: bool, sampling, gen_cache, batch_size: int, advance,
                        stats, cluster=None) -> tuple[list, np.ndarray, int, pd.DataFrame]:
    """One prompt per cluster from its markers; the answer is broadcast to the cluster (the
    markers' group statistics on ``cluster``, a Ray cluster, when given)."""
    from ..prompts import Prompt
    from .engine import generate_cached, vote

    names = sorted(groups.unique().tolist(), key=str)
    if markers is None:
        marker_map = rank_markers(source, groups, genes, n_markers=n_markers, order=marker_order,
                                  cluster=cluster)
    else:
        given = read_markers(markers) if isinstance(markers, str | os.PathLike) else {
            str(k): list(v) for k, v in dict(markers).items()}
        missing = [c for c in names if c not in given]
        if missing:
            raise InputError(
                f"The marker list has no entry for cluster(s) {', '.join(missing[:5])} "
                f"(it has {', '.join(list(given)[:5])}). Cluster names must match the --by "
                "column's values.")
        marker_map = {c: order_markers(given[c], genes, n_markers, marker_order) for c in names}
    empty = [c for c in names if not marker_map.get(c)]
    if empty:
        raise InputError(
            f"Cluster(s) {', '.join(empty[:5])} have no marker gene in the gene list (too few "
            "cells or no positive marker); merge them, pass --cluster-markers, or use --mode "
            "cell.")
    sizes = groups.value_counts()
    prompts = [Prompt(instruction, ", ".join(marker_map[c]), reasoning) for c in names]
    # identical cluster sentences are generated once too
    uniq: dict[str, int] = {}
    for p in prompts:
        uniq.setdefault(p.key(), len(uniq))
    order = list(dict.fromkeys(p.key() for p in prompts))
    by_key = {p.key(): p for p in prompts}
    weights = {k: 0 for k in order}
    for c, p in zip(names, prompts, strict=True):
        weights[p.key()] += int(sizes[c])
    gens = generate_cached(be, [by_key[k] for k in order], sampling, gen_cache,
                           batch_size=batch_size, weights=[weights[k] for k in order],
                           advance=advance, stats=stats)
    unique_answers = [vote(g, reasoning) for g in gens]
    cluster_answers = [unique_answers[uniq[p.key()]] for p in prompts]
    index = {c: i for i, c in enumerate(names)}
    cell_answer = np.array([index[c] for c in groups.to_numpy()], dtype=np.int64)
    clusters_df = pd.DataFrame({
        "label": [a.label for a in cluster_answers],
        "confidence": [a.confidence for a in cluster_answers],
        "n_cells": [int(sizes[c]) for c in names],
        "markers": [", ".join(marker_map[c]) for c in names],
        "prompt_key": [p.key() for p in prompts],
        "response": [a.response for a in cluster_answers],
    }, index=pd.Index(names, name="cluster"))
    return cluster_answers, cell_answer, len(order), clusters_df
