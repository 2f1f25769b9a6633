"""The answering step of :func:`cellreasoner.annotation.annotate`: a matrix backend's answer
blocks, or the engine's prompts, into the per-cell table (and the cluster table)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import BackendError
from ._inputs import _Run

log = logging.getLogger("cellreasoner.annotation")


def _answer(run: _Run, cluster_markers, n_markers: int,
            marker_order: str) -> tuple[pd.DataFrame, pd.DataFrame | None, int]:
    """(per-cell table, cluster table or None, number of unique prompts)."""
    from ..sentences import build_sentences
    from .table import matrix_table, prompt_table

    obs_names = run.source.obs_names
    clusters_df = None
    if run.use_matrix:
        blocks = _matrix_answers(run)
        table = matrix_table(blocks, obs_names)
        unique = len(table)
    else:
        from .engine import run_cell_prompts

        sentences = build_sentences(run.source, run.genes, max_genes=run.max_genes)
        if run.mode == "cluster":
            from .clusters import run_cluster_prompts

            answers, cell_answer, unique, clusters_df = run_cluster_prompts(
                run.be, run.source, run.groups, run.genes, cluster_markers, n_markers,
                marker_order, run.instruction, run.reasoning, run.sampling, run.cache,
                run.batch_size, run.advance, run.stats,
                cluster=run.ray.cluster if run.ray is not None else None)
            keys = clusters_df["prompt_key"].to_numpy()[cell_answer]
        else:
            answers, cell_answer, unique_keys = run_cell_prompts(
                run.be, sentences, run.instruction, run.reasoning, run.sampling, run.cache,
                run.batch_size, run.advance, run.stats)
            unique = len(unique_keys)
            keys = np.asarray(unique_keys, dtype=object)[cell_answer]
        table = prompt_table(answers, cell_answer, keys, obs_names, sentences,
                             run.mode == "cluster", run.vocabulary)
    if run.mode == "cluster" and run.use_matrix:
        clusters_df = _consensus(table, run.groups)
    elif run.mode == "cluster":
        table["cluster_label"] = table["label"].to_numpy()
        table["cluster_agreement"] = table["confidence"].to_numpy()
    elif run.mode == "hybrid":
        from .clusters import majority_by_group
        from .vote import cluster_consensus

        table["cluster_label"], table["cluster_agreement"] = majority_by_group(
            table["label"].tolist(), run.groups)
        mixed = cluster_consensus(table, run.groups)["mixed"]
        table["cluster_mixed"] = mixed.reindex(run.groups.astype(str).to_numpy()).to_numpy(
            dtype=bool)
    if "cluster_mixed" in table:
        mixed = table["cluster_mixed"].to_numpy(dtype=bool)
        if mixed.any():
            log.info("%d of %d cells are in clusters whose cells disagree (cluster_mixed)",
                     int(mixed.sum()), len(mixed))
    return table, clusters_df, unique


def _consensus(table: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """Cluster mode from per-cell answers: each cell gets its cluster's consensus label and
    confidence (:func:`.consensus.cluster_consensus`); its own answer stays in the reasoning.
    Returns the cluster table."""
    from .vote import cluster_consensus

    calls = cluster_consensus(table, groups)
    at = groups.astype(str).to_numpy()
    own = table["label"].astype(str).to_numpy()
    for col in ("label", "ontology_id", "ontology_label", "confidence"):
        table[col] = calls[col].reindex(at).to_numpy()
    table["cluster_label"] = table["label"].to_numpy()
    table["cluster_agreement"] = calls["agreement"].reindex(at).to_numpy()
    table["cluster_mixed"] = calls["mixed"].reindex(at).to_numpy(dtype=bool)
    per_cluster = pd.Series([f"Cluster {c} ({r.composition}) -> {r.label}"
                             f"{' (mixed)' if r.mixed else ''}. Own answer: "
                             for c, r in zip(calls.index, calls.itertuples(), strict=True)],
                            index=calls.index, dtype=object)
    note = per_cluster.reindex(at).to_numpy(dtype=object) + own.astype(object) + ". "
    table["reasoning"] = note + table["reasoning"].astype(str).to_numpy()
    return calls.assign(response=calls["composition"])


def _matrix_answers(run: _Run) -> list:
    """A matrix backend's answer blocks for every cell, in order."""
    adata, be = run.adata, run.be
    conn = adata.obsp.get("connectivities", None)
    if run.ray is not None:
        from ..distributed.matrix import DEFAULT_BLOCK_CELLS, matrix_answers

        blocks = matrix_answers(be, run.source, run.ray.cluster, connectivities=conn,
                                manifest=run.ray.manifest, progress=run.advance,
                                block_cells=run.ray.chunk_size or DEFAULT_BLOCK_CELLS)
    else:
        from ..distributed import processes

        workers = (run.workers if run.workers is not None
                   else processes.default_workers(run.source.n_obs))
        if workers > 1 and processes.can_run(be, run.source):
            blocks = list(processes.matrix_answers(
                be, run.source, workers, connectivities=conn, progress=run.advance,
                chunk_size=run.chunk_size or processes.CHUNK_CELLS))
        else:
            blocks = list(be.annotate_matrix(run.source, connectivities=conn,
                                             progress=run.advance))
    n = sum(len(b) for b in blocks)
    if n != adata.n_obs:
        raise BackendError(f"Backend '{be.name}' returned {n} answers for "
                           f"{adata.n_obs} cells.")
    run.stats.model_calls += n
    run.stats.generations += n
    return blocks

