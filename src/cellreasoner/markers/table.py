"""Reading marker tables: Seurat ``FindAllMarkers``, scanpy ``rank_genes_groups``, plain lists.

Every layout becomes a :class:`MarkerTable`: one row per (cluster, gene) in the order of
importance the tool wrote (Seurat sorts each cluster by p value then fold change, scanpy by
score), with the fold change, adjusted p value and detection fractions where the layout has
them. :func:`filter_markers` keeps the significant, up-regulated, top-ranked markers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

log = logging.getLogger(__name__)

#: Layouts :func:`read_marker_table` knows (``"auto"`` detects them).
LAYOUTS = ("auto", "seurat", "scanpy", "plain", "json")
#: Columns of :attr:`MarkerTable.frame`.
COLUMNS = ("cluster", "gene", "rank", "logfc", "padj", "pct_in", "pct_out")
#: Seurat ``FindAllMarkers`` columns (a written ``.csv`` adds the row names as a first column).
SEURAT_COLUMNS = ("p_val", "avg_log2FC", "pct.1", "pct.2", "p_val_adj", "cluster", "gene")
#: ``sc.get.rank_genes_groups_df`` columns (``group`` is there when all groups were exported).
SCANPY_COLUMNS = ("group", "names", "scores", "logfoldchanges", "pvals", "pvals_adj")
#: Default filters: adjusted p value and log2 fold change (Seurat's ``FindAllMarkers`` default
#: ``logfc.threshold`` before v5), applied only where the table has the column.
DEFAULT_MAX_PADJ = 0.05
DEFAULT_MIN_LOGFC = 0.25


@dataclass(frozen=True)
class MarkerTable:
    """Ranked marker genes of every cluster.

    Attributes
    ----------
    frame
        One row per marker: ``cluster``, ``gene``, ``rank`` (0 = most important within its
        cluster), ``logfc``, ``padj``, ``pct_in``, ``pct_out`` (NaN where the layout lacks it).
    clusters
        Cluster names in the table's order.
    layout
        ``"seurat"``, ``"scanpy"``, ``"plain"`` or ``"json"``.
    source
        Where the table came from (a path, or ``"<dict>"``).
    """

    frame: pd.DataFrame
    clusters: tuple[str, ...]
    layout: str
    source: str

    def genes(self, cluster: str) -> list[str]:
        """The cluster's markers, most important first."""
        sub = self.frame[self.frame["cluster"] == cluster]
        return sub.sort_values("rank", kind="stable")["gene"].tolist()

    def lists(self) -> dict[str, list[str]]:
        """``{cluster: [genes]}`` in table order."""
        return {c: self.genes(c) for c in self.clusters}

    def rename(self, names: Mapping[str, str]) -> MarkerTable:
        """The same table with clusters renamed (``{old: new}``; others keep their name)."""
        new = [names.get(c, c) for c in self.clusters]
        if len(set(new)) != len(new):
            raise InputError("Renaming the clusters would give two clusters the same name.")
        frame = self.frame.assign(cluster=self.frame["cluster"].map(lambda c: names.get(c, c)))
        return replace(self, frame=frame, clusters=tuple(new))

    def __len__(self) -> int:
        return len(self.clusters)


def _finish(rows: pd.DataFrame, layout: str, source: str) -> MarkerTable:
    """Normalise a long table (cluster, gene, and optional stats) into a :class:`MarkerTable`."""
    rows = rows.copy()
    rows["cluster"] = rows["cluster"].astype(str).str.strip()
    rows["gene"] = rows["gene"].astype(str).str.strip()
    rows = rows[(rows["gene"] != "") & (rows["gene"].str.lower() != "nan")]
    rows = rows.drop_duplicates(["cluster", "gene"], keep="first")
    for c in ("logfc", "padj", "pct_in", "pct_out"):
        rows[c] = pd.to_numeric(rows[c], errors="coerce") if c in rows else np.nan
    rows["rank"] = rows.groupby("cluster", sort=False).cumcount()
    clusters = tuple(dict.fromkeys(rows["cluster"]))
    if not clusters:
        raise InputError(f"Marker table {source} has no (cluster, gene) rows.")
    frame = rows.loc[:, list(COLUMNS)].reset_index(drop=True)
    return MarkerTable(frame, clusters, layout, source)


def _from_lists(lists: Mapping, layout: str, source: str) -> MarkerTable:
    rows = []
    for cluster, genes in lists.items():
        if isinstance(genes, str):
            genes = genes.split(",")
        if not isinstance(genes, Sequence):
            raise InputError(f"Marker table {source}: cluster {cluster!r} must map to a list of "
                             f"gene symbols, not {type(genes).__name__}.")
        if not [g for g in genes if str(g).strip()]:
            raise InputError(f"Marker table {source}: cluster {cluster!r} has no genes.")
        rows.extend((str(cluster), str(g)) for g in genes)
    if not rows:
        raise InputError(f"Marker table {source} has no clusters.")
    return _finish(pd.DataFrame(rows, columns=["cluster", "gene"]), layout, source)


def _read_json(p: Path) -> MarkerTable:
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"Marker table {p} is not valid UTF-8 JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise InputError(f"Marker table {p} must be a JSON object {{cluster: [genes]}}, not a "
                         f"{type(data).__name__}.")
    return _from_lists(data, "json", str(p))


def _read_h5ad(p: Path, key: str | None) -> MarkerTable:
    import anndata as ad
    import scanpy as sc

    try:
        adata = ad.read_h5ad(p, backed="r")
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"Cannot read {p} as .h5ad ({exc}).") from None
    try:
        keys = [k for k, v in adata.uns.items()
                if isinstance(v, Mapping) and "names" in v and "params" in v]
        if key is None:
            if not keys:
                raise InputError(f"{p} has no rank_genes_groups result in uns (run "
                                 "sc.tl.rank_genes_groups and save the AnnData, or pass the "
                                 "CSV of sc.get.rank_genes_groups_df).")
            key = "rank_genes_groups" if "rank_genes_groups" in keys else keys[0]
        elif key not in keys:
            raise InputError(f"{p}: uns[{key!r}] is not a rank_genes_groups result; "
                             f"those in uns: {', '.join(keys) or 'none'}.")
        df = sc.get.rank_genes_groups_df(adata, group=None, key=key)
    finally:
        if adata.isbacked:
            adata.file.close()
    if "group" not in df:  # a single group was tested
        names = adata.uns[key]["names"].dtype.names
        df.insert(0, "group", names[0])
    return _scanpy_frame(df, str(p))


def _scanpy_frame(df: pd.DataFrame, source: str) -> MarkerTable:
    missing = [c for c in ("group", "names") if c not in df.columns]
    if missing:
        raise InputError(f"Marker table {source} looks like sc.get.rank_genes_groups_df output "
                         f"but lacks column(s) {', '.join(missing)}; export every group "
                         "(sc.get.rank_genes_groups_df(adata, group=None)).")
    out = pd.DataFrame({"cluster": df["group"], "gene": df["names"]})
    out["logfc"] = df.get("logfoldchanges", np.nan)
    out["padj"] = df.get("pvals_adj", np.nan)
    out["pct_in"] = df.get("pct_nz_group", np.nan)
    out["pct_out"] = df.get("pct_nz_reference", np.nan)
    if "scores" in df:  # ranked by score within each group, as rank_genes_groups does
        order = np.lexsort((-pd.to_numeric(df["scores"], errors="coerce").fillna(-np.inf)
                            .to_numpy(), pd.factorize(out["cluster"])[0]))
        out = out.iloc[order]
    return _finish(out, "scanpy", source)


def _seurat_frame(df: pd.DataFrame, source: str) -> MarkerTable:
    missing = [c for c in ("cluster", "gene") if c not in df.columns]
    if missing:
        raise InputError(f"Marker table {source} looks like a Seurat FindAllMarkers table but "
                         f"lacks column(s) {', '.join(missing)}; FindAllMarkers writes "
                         f"{', '.join(SEURAT_COLUMNS)}.")
    fc = next((c for c in ("avg_log2FC", "avg_logFC") if c in df.columns), None)
    out = pd.DataFrame({"cluster": df["cluster"], "gene": df["gene"]})
    out["logfc"] = df[fc] if fc else np.nan
    out["padj"] = df.get("p_val_adj", np.nan)
    out["pct_in"] = df.get("pct.1", np.nan)
    out["pct_out"] = df.get("pct.2", np.nan)
    return _finish(out, "seurat", source)


def _read_plain(p: Path, lines: list[str]) -> MarkerTable:
    lists: dict[str, list[str]] = {}
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cluster, sep, genes = line.rstrip("\r\n").partition("\t")
        if not sep:
            raise InputError(f"{p}, line {no}: expected 'cluster<TAB>gene1,gene2,...' (a "
                             "tab between the cluster and its comma-separated genes).")
        if no == 1 and cluster.strip().lower() in ("cluster", "group", "clusters"):
            continue  # a header line
        cluster = cluster.strip()
        if cluster in lists:
            raise InputError(f"{p}, line {no}: cluster {cluster!r} is listed twice.")
        genes_ = [g.strip() for g in genes.replace("\t", ",").split(",") if g.strip()]
        if not genes_:
            raise InputError(f"{p}, line {no}: cluster {cluster!r} has no genes.")
        lists[cluster] = genes_
    return _from_lists(lists, "plain", str(p))


def _read_text(p: Path, layout: str) -> MarkerTable:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"Marker table {p} is not UTF-8 text ({exc}).") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if not first:
        raise InputError(f"Marker table {p} is empty.")
    sep = "\t" if first.count("\t") >= first.count(",") else ","
    header = [h.strip().strip('"') for h in first.split(sep)]
    if layout == "plain" or (layout == "auto" and sep == "\t" and len(header) == 2
                             and header[1].lower() not in ("gene", "names", "marker")):
        return _read_plain(p, lines)
    try:
        df = pd.read_csv(p, sep=sep, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise InputError(f"Cannot read marker table {p} ({exc}).") from None
    cols = set(df.columns)
    if layout == "seurat" or (layout == "auto" and {"p_val", "gene"} & cols
                              and ("avg_log2FC" in cols or "avg_logFC" in cols
                                   or "p_val_adj" in cols)):
        return _seurat_frame(df, str(p))
    if layout == "scanpy" or (layout == "auto" and "names" in cols
                              and {"scores", "logfoldchanges", "pvals_adj"} & cols):
        return _scanpy_frame(df, str(p))
    lower = {str(c).lower(): c for c in df.columns}
    ccol = next((lower[c] for c in ("cluster", "group", "clusters") if c in lower), None)
    gcol = next((lower[c] for c in ("gene", "names", "marker", "genes") if c in lower), None)
    if ccol is None or gcol is None:
        raise InputError(
            f"Marker table {p}: cannot tell its layout from the columns "
            f"{', '.join(map(str, df.columns))}. Give a Seurat FindAllMarkers table "
            f"({', '.join(SEURAT_COLUMNS)}), sc.get.rank_genes_groups_df output "
            f"({', '.join(SCANPY_COLUMNS)}), 'cluster<TAB>gene1,gene2,...' lines or JSON "
            "{cluster: [genes]}.")
    return _finish(df.rename(columns={ccol: "cluster", gcol: "gene"}), "seurat", str(p))


def read_marker_table(
    source: str | os.PathLike | Mapping[str, Sequence[str]] | pd.DataFrame,
    *,
    layout: str = "auto",
    key: str | None = None,
) -> MarkerTable:
    """Read a marker table, detecting its layout.

    Parameters
    ----------
    source
        A path: a Seurat ``FindAllMarkers`` CSV/TSV (``p_val, avg_log2FC, pct.1, pct.2,
        p_val_adj, cluster, gene``), the CSV of ``sc.get.rank_genes_groups_df``, an ``.h5ad``
        holding a ``rank_genes_groups`` result in ``uns``, a plain ``cluster<TAB>gene1,gene2``
        file, or JSON ``{cluster: [genes]}``. Also a ``{cluster: [genes]}`` dict or a
        DataFrame in one of the table layouts.
    layout
        ``"auto"`` (default) or one of ``"seurat"``, ``"scanpy"``, ``"plain"``, ``"json"``.
    key
        ``.h5ad`` input: the ``uns`` key of the result (default ``"rank_genes_groups"``, else
        the only one there).

    Returns
    -------
    MarkerTable
        The markers of every cluster, most important first.
    """
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}.")
    if isinstance(source, pd.DataFrame):
        cols = set(source.columns)
        if "names" in cols and "group" in cols:
            return _scanpy_frame(source, "<DataFrame>")
        return _seurat_frame(source, "<DataFrame>")
    if isinstance(source, Mapping):
        return _from_lists(source, "json", "<dict>")
    p = Path(os.fsdecode(source)).expanduser()
    if not p.is_file():
        raise InputError(f"Marker table not found: {p}.")
    suffix = p.suffix.lower()
    if suffix == ".h5ad":
        return _read_h5ad(p, key)
    if layout == "json" or (layout == "auto" and suffix == ".json"):
        return _read_json(p)
    return _read_text(p, layout)


def filter_markers(
    table: MarkerTable,
    *,
    max_padj: float | None = DEFAULT_MAX_PADJ,
    min_logfc: float | None = DEFAULT_MIN_LOGFC,
    top: int | None = None,
) -> MarkerTable:
    """Keep the significant, up-regulated, top-ranked markers of every cluster.

    Parameters
    ----------
    table
        A :class:`MarkerTable`.
    max_padj
        Keep markers with adjusted p value at most this (default 0.05; ``None``: no filter).
        Only applies where the table has adjusted p values; a cluster none of whose markers
        reaches it (a small cluster) keeps its up-regulated markers, with a warning.
    min_logfc
        Keep markers with log2 fold change at least this (default 0.25; ``None``: no
        filter). Only applies where the table has fold changes.
    top
        Keep at most this many markers per cluster, in rank order (default ``None``: all).

    Returns
    -------
    MarkerTable
        The kept rows, re-ranked from 0 within each cluster.

    Raises
    ------
    InputError
        When a cluster has no up-regulated marker, naming the cluster and the threshold.
    """
    f = table.frame
    up = np.ones(len(f), dtype=bool)
    if min_logfc is not None:
        up &= ~(f["logfc"] < float(min_logfc)).to_numpy()
    keep = up.copy()
    if max_padj is not None:
        keep &= ~(f["padj"] > float(max_padj)).to_numpy()
    # a small cluster may reach no adjusted p at all (5 cells against thousands of tests):
    # it keeps its up-regulated markers in rank order, with a warning, rather than failing
    clusters = f["cluster"].to_numpy()
    lenient = [c for c in table.clusters
               if not keep[clusters == c].any() and up[clusters == c].any()]
    if lenient:
        log.warning("Marker table %s: cluster(s) %s have no marker with adjusted p <= %s "
                    "(small clusters?); their up-regulated markers are used in rank order.",
                    table.source, ", ".join(map(repr, lenient[:5])), max_padj)
        keep |= up & np.isin(clusters, lenient)
    kept = f[keep].copy()
    kept["rank"] = kept.groupby("cluster", sort=False).cumcount()
    if top is not None:
        kept = kept[kept["rank"] < _check_top(top)]
    empty = [c for c in table.clusters if c not in set(kept["cluster"])]
    if empty:
        raise InputError(
            f"Marker table {table.source}: cluster(s) {', '.join(map(repr, empty[:5]))} have "
            f"no marker with log2 fold change >= {min_logfc}; relax --min-logfc, or drop "
            "those clusters.")
    return replace(table, frame=kept.reset_index(drop=True))


def _check_top(top: int) -> int:
    if int(top) < 1:
        raise InputError(f"top must be at least 1 marker per cluster, not {top}.")
    return int(top)


def keep_top(table: MarkerTable, top: int) -> MarkerTable:
    """The first ``top`` markers of every cluster of a table :func:`filter_markers` made
    (the same rows ``filter_markers(..., top=top)`` keeps: its filters do not depend on
    ``top``), so one filtered table serves every marker count."""
    f = table.frame
    return replace(table, frame=f[f["rank"] < _check_top(top)].reset_index(drop=True))


__all__ = ["COLUMNS", "DEFAULT_MAX_PADJ", "DEFAULT_MIN_LOGFC", "LAYOUTS", "MarkerTable",
           "filter_markers", "keep_top", "read_marker_table"]
