"""The closing steps of :func:`cellreasoner.annotation.annotate`: what ``uns[key_added]``
records about the run (provenance, failure counts) and the ground truth beside the table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..io import UNS_KEY
from ._inputs import _gene_list_name, _Run
from .engine import Stats
from .result import uns_safe


def _provenance(run: _Run, describe: dict, *, n: int, seconds: float, gene_list, key_added: str,
                cache_path: Path | None, layer: str | None, use_raw: bool, input_name: str,
                tissue: str | None, clusters_df: pd.DataFrame | None,
                unique_prompts: int) -> dict:
    """What ``uns[key_added]`` records about the run."""
    from .. import __version__

    be = run.be
    provenance = {
        **describe,
        "backend": be.name, "model": be.model or describe.get("model", ""), "mode": run.mode,
        "reasoning": bool(run.reasoning), "n_samples": 1 if run.use_matrix else int(n),
        "sampling": uns_safe(run.sampling.to_dict()) if not run.use_matrix else {},
        "n_cells": int(run.adata.n_obs), "unique_prompts": int(unique_prompts),
        "model_calls": int(run.stats.model_calls), "generations": int(run.stats.generations),
        "cache_hits": int(run.stats.cache_hits), "seconds": round(seconds, 3),
        "version": __version__, "gene_list": _gene_list_name(gene_list, run.genes),
        "max_genes": int(run.max_genes), "key_added": key_added,
        "cache": str(cache_path) if cache_path else "",
        "layer": "raw" if use_raw else (layer or "X"),
    }
    reads_prompts = be.capabilities.reads == "prompts"
    if reads_prompts:
        provenance["prompt_style"] = run.prompt_style
        provenance["instruction"] = run.instruction
    if input_name:
        provenance["input"] = input_name
    read_info = run.adata.uns.get(UNS_KEY) if hasattr(run.adata, "uns") else None
    if isinstance(read_info, dict) and read_info.get("assay"):
        provenance["assay"] = str(read_info["assay"])
    from ..atac.read import atac_provenance

    provenance.update(atac_provenance(read_info))
    if tissue:
        provenance["tissue"] = tissue
    if run.mode in ("cluster", "hybrid"):
        provenance["by"] = run.by_key
    if run.mode == "cluster" and reads_prompts:
        provenance["n_markers"] = run.n_markers
    if clusters_df is not None:
        # column lists, not a dict keyed by cluster name: names may hold "/" (h5ad paths)
        cl = clusters_df.drop(columns=["response"]).reset_index()
        provenance["clusters"] = {c: cl[c].tolist() for c in cl.columns}
    return provenance


def _failure_counts(table: pd.DataFrame, stats: Stats) -> dict:
    """Counts of what went wrong or was shared, only those that happened (a clean run's
    provenance is unchanged): failed prompts and their cells (no usable answer from the
    backend; not cached), cells whose answer did not parse to a cell type, prompts answered
    by another run sharing the cache."""
    counts = {}
    if stats.failed:
        counts["failed_prompts"] = int(stats.failed)
    if "failure" in table:
        kinds = table["failure"].value_counts()
        for kind, key in (("request", "failed_cells"), ("parse", "unparsed_cells"),
                          ("incomplete", "incomplete_cells")):
            if kinds.get(kind, 0):
                counts[key] = int(kinds[kind])
    if stats.shared:
        counts["shared_prompts"] = int(stats.shared)
    return counts


def _truth(adata, label_key: str | None, table: pd.DataFrame) -> pd.Series | None:
    """The ground-truth labels as text ("" where missing), indexed like ``table``."""
    if label_key is None:
        return None
    truth = adata.obs[label_key].astype(object).where(adata.obs[label_key].notna(), "")
    truth = truth.astype(str)
    truth.index = table.index
    return truth

