"""``annotate_markers``: name every cluster of a marker table, with reasons, on any backend.

The result is one table per backend with the same columns (:data:`OUTPUT_COLUMNS`), so
answers of several backends can be set side by side or voted on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from ..backends import Backend
from ..errors import InputError
from ._consensus import _consensus
from ._run import _OPTIONS, _annotate_one, _Shared
from .result import CHECK_COLUMNS, OUTPUT_COLUMNS, MarkerAnnotation
from .table import DEFAULT_MAX_PADJ, DEFAULT_MIN_LOGFC, MarkerTable


def annotate_markers(
    table: str | os.PathLike | Mapping[str, Sequence[str]] | pd.DataFrame | MarkerTable,
    backend: str | Backend = "builtin",
    *,
    model: str | None = None,
    tissue: str | None = None,
    species: str = "human",
    markers: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    top: int | None = None,
    max_padj: float | None = DEFAULT_MAX_PADJ,
    min_logfc: float | None = DEFAULT_MIN_LOGFC,
    check_labels: bool = False,
    label_map: str | os.PathLike | Mapping[str, str] | None = None,
    prompt_style: str = "auto",
    clusters_per_call: int = 1,
    reasoning: bool = False,
    instruction: str | os.PathLike | None = None,
    n: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    cache: str | os.PathLike | bool | None = None,
    batch_size: int = 16,
    backend_options: dict | None = None,
    layout: str = "auto",
    uns_key: str | None = None,
    deliberate: bool = False,
) -> MarkerAnnotation:
    """Name every cluster of a marker table, with reasons and a CL term.

    Parameters
    ----------
    table
        A marker table file (Seurat ``FindAllMarkers`` CSV, ``sc.get.rank_genes_groups_df``
        CSV, ``.h5ad`` with a ``rank_genes_groups`` result, ``cluster<TAB>genes`` lines, JSON
        ``{cluster: [genes]}``), a dict, a DataFrame or a :class:`~.table.MarkerTable`.
    backend
        ``"builtin"`` (default: the knowledge-base reasoner, no download), any registry name
        (``"openai"``, ``"gguf"``, ``"transformers"``, ``"vllm"``), ``"NAME:MODEL"``, or a ready
        backend. Several (``"builtin,openai:MODEL_A,gguf:PATH"``, or a list) make a consensus:
        each backend names the clusters as it would alone, then the ontology-aware vote of
        ``annotate`` decides (``cellreasoner_agreement``, also the confidence;
        ``cellreasoner_entropy``; each backend's own answer in ``cellreasoner_label_<name>``).
    model
        Model name/path for a model backend.
    tissue
        Tissue of the cells (default none): restricts the built-in knowledge; named in model
        prompts.
    species
        ``"human"`` (default) or ``"mouse"``: which rows of external marker databases count,
        and how table symbols meet the knowledge base.
    markers
        Extra marker knowledge: a file in the built-in format, a CellMarker 2.0 table or a
        PanglaoDB TSV/xlsx (several allowed), merged into the built-in knowledge base.
    top
        Markers per cluster after filtering (default: 50 for the built-in reasoner, 10 for the
        GPTCelltype prompt, 100/30 for the CellReasoner/neutral prompts as in ``annotate``).
    max_padj, min_logfc
        Filters where the table has those columns (default 0.05 and 0.25; ``None``: off).
    check_labels
        Add ``label_check`` (agrees / disagrees / uncertain) and ``label_check_reason``,
        reading the cluster names as cell-type labels and weighing them against the built-in
        reasoner's evidence, whatever the backend (default ``False``).
    label_map
        How to read cluster names as CL terms for the check (a TSV with ``truth`` and
        ``cl_id`` columns, or a dict); default ``None``: the ontology's reading.
    prompt_style
        Model backends: ``"auto"`` (default), ``"cellreasoner"``, ``"neutral"`` or
        ``"gptcelltype"``.
    clusters_per_call
        Clusters asked in one prompt (default 1); above 1 the prompt lists one row per
        cluster.
    reasoning
        Ask model backends for ``<think>`` reasoning (default ``False``).
    instruction
        Override the system instruction (as in ``annotate``; CellReasoner/neutral styles).
    n
        Samples per prompt (default 1); the majority wins and its share is the confidence.
    temperature, top_p, repetition_penalty, max_new_tokens, seed
        Sampling overrides (default: the upstream settings of the mode), as in ``annotate``.
    cache
        ``None`` (default): the shared annotation cache; a path; or ``False``.
    batch_size
        Prompts per backend call (default 16).
    backend_options
        Extra backend constructor options (``base_url``, ``api_key_env``, ...).
    layout
        Table layout (default ``"auto"``: detected).
    uns_key
        ``.h5ad`` input: the ``uns`` key of the ``rank_genes_groups`` result.
    deliberate
        Consensus runs only: one deliberation round (default False), as in ``annotate``:
        for every cluster the backends disagree on, each model backend sees the cluster's
        markers, the other backends' answers with their supporting markers and its own first
        answer, and may revise it (cached like any prompt).

    Returns
    -------
    MarkerAnnotation
        ``.table`` with one row per cluster and the columns :data:`OUTPUT_COLUMNS` (plus
        ``label_check`` and ``label_check_reason``).
    """
    # this call's options (taken before any other local exists), shared by consensus members
    options = {k: v for k, v in locals().items() if k in _OPTIONS}
    from ..annotation.consensus import is_consensus

    if deliberate and not is_consensus(backend):
        raise InputError("deliberate (--deliberate) needs several backends, e.g. "
                         "backend='builtin,openai:MODEL'.")
    if is_consensus(backend):
        return _consensus(table, backend, model=model, backend_options=backend_options,
                          layout=layout, uns_key=uns_key, deliberate=deliberate,
                          options=options)
    from ..annotation.consensus import single_backend

    backend, model = single_backend(backend, model)  # "name", "name:model", [one]
    return _annotate_one(_Shared(table, layout, uns_key), backend, model, backend_options,
                         options)




__all__ = ["CHECK_COLUMNS", "OUTPUT_COLUMNS", "MarkerAnnotation", "annotate_markers"]
