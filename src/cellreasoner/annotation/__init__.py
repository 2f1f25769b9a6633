"""``cellreasoner.annotation``: AnnData in, cell-type labels with reasoning out.

:func:`annotate` is orchestration only; each stage lives in its own module:

- :mod:`.engine`: identical prompts generated once, answers cached (a killed run resumes where
  it stopped), self-consistency samples voted;
- :mod:`.clusters`: groups, cluster marker sentences, cluster majorities;
- :mod:`.table`: the per-cell table (answers, Cell Ontology terms, evidence);
- :mod:`.result`: :class:`AnnotationResult`, which writes itself back (:mod:`.output`);
- :mod:`._run`: one backend's run in named steps (:mod:`._inputs` the setup,
  :mod:`._answer` the answering data path, :mod:`._provenance` what ``uns`` records);
  :mod:`.consensus` and :mod:`.deliberation` several backends.

Backends declare what they read (:class:`~cellreasoner.backends.Capabilities`): a matrix
backend (the built-in reasoner) streams answers for chunks of cells straight from the
expression matrix, so an ``.h5ad`` path is annotated with memory bounded by the chunk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from types import SimpleNamespace

from ..backends import Backend
from ..errors import InputError
from ._inputs import MODES
from .engine import generate_cached, vote
from .result import (
    CATEGORICAL_FIELDS,
    CLUSTER_FIELDS,
    CSV_UPSTREAM,
    FIELDS,
    AnnotationResult,
)

log = logging.getLogger(__name__)

__all__ = [
    "CATEGORICAL_FIELDS", "CLUSTER_FIELDS", "CSV_UPSTREAM", "FIELDS", "MODES",
    "AnnotationResult", "annotate", "generate_cached", "vote",
]


# annotate() is over 80 lines only through its numpydoc docstring and 30-line signature
def annotate(
    adata,
    backend: str | Backend | Sequence[str | Backend] = "builtin",
    *,
    model: str | None = None,
    reasoning: bool = False,
    prompt_style: str = "auto",
    instruction: str | os.PathLike | None = None,
    mode: str = "cell",
    by: str | None = None,
    resolution: float = 1.0,
    n: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    gene_list: Sequence[str] | str | os.PathLike | None = None,
    max_genes: int = 1000,
    layer: str | None = None,
    use_raw: bool = False,
    assay: str | None = None,
    label_key: str | None = None,
    cluster_markers: str | os.PathLike | dict | None = None,
    n_markers: int | None = None,
    marker_order: str = "ranked",
    tissue: str | None = None,
    species: str = "auto",
    accessibility_prompt: bool | None = None,
    key_added: str = "cellreasoner",
    cache: str | os.PathLike | bool | None = None,
    batch_size: int = 256,
    backend_options: dict | None = None,
    copy: bool = False,
    progress: bool | Callable[[float], None] = True,
    deliberate: bool = False,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    manifest: str | os.PathLike | None = None,
    num_gpus: float = 0,
    chunk_size: int | None = None,
) -> AnnotationResult:
    """Annotate every cell of ``adata`` with a cell type, confidence and reasoning.

    Parameters
    ----------
    adata
        AnnData, or a path read with :func:`cellreasoner.io.read`, or a demo name
        (``"pbmc68k_reduced"``, ``"pbmc_demo"``).
    backend
        Registry name (``"builtin"`` default, ``"transformers"``, ``"openai"``, ``"vllm"``,
        ``"gguf"``), optionally with its model after a colon (``"openai:gpt-4o"``), or a
        ready :class:`~cellreasoner.backends.Backend`. Several of them (a list, or
        ``"builtin,openai:MODEL,gguf:PATH"``) make a consensus run: each backend labels the
        data as it would alone (its own cache entries), then an ontology-aware vote decides
        (:mod:`cellreasoner.annotation.vote`); ``obs`` gets ``{key_added}_agreement``,
        ``_entropy`` and each backend's own ``{key_added}_label_<name>`` too.
    model
        Model name/path for the backend (default: the backend's default).
    reasoning
        Ask for ``<think>`` reasoning (``"<think> "`` opens the answer; default False).
    prompt_style
        ``"auto"`` (default): the published CellReasoner instruction, byte for byte, for
        CellReasoner models (by name, or a folder ``cellreasoner train`` wrote) and a
        neutral, tissue-aware instruction for every other model (the published text tells
        the model the cells are tumour cells, which general models take literally);
        ``"cellreasoner"`` or ``"neutral"`` to choose. Recorded in the provenance.
    instruction
        Override the system instruction: ``"direct"`` / ``"reasoning"`` (the upstream text of
        that mode, whatever ``reasoning`` is: the published notebook's reasoning run used the
        direct text with ``"<think> "``), or the path of a text file.
    mode
        ``"cell"`` (default): one answer per cell (identical prompts generated once);
        ``"cluster"``: one prompt per cluster from its top markers, label broadcast to its
        cells (a matrix backend such as the built-in reasoner answers every cell and labels
        the cluster with the most specific Cell Ontology term at least 75% of its cells agree
        on, see :mod:`.consensus`: a mixed cluster is flagged and stops at the common parent);
        ``"hybrid"``: per-cell answers plus each cluster's majority and agreement.
    by
        ``obs`` column with clusters for cluster/hybrid mode; ``None``/``"leiden"`` uses
        ``obs["leiden"]`` or computes it with scanpy.
    resolution
        Leiden resolution when the clusters are computed (default 1.0; higher: more, smaller
        clusters).
    n
        Self-consistency samples per prompt (default 1): the majority label wins and the
        agreement fraction is the confidence.
    temperature, top_p, repetition_penalty, max_new_tokens, seed
        Sampling overrides (default: upstream 0.01/0.01 direct, 0.6/0.4 reasoning; 1.1; 4096;
        seed 1234).
    gene_list
        Ranked vocabulary: a list, a path, or ``None`` for the published list.
    max_genes
        Genes per cell sentence (default 1000, as upstream).
    layer, use_raw
        Expression to read (default ``X``; raw counts or log-normalised). A scaled ``X``
        (negative values) with a ``.raw`` reads ``.raw``, as scanpy's tools do (logged).
    assay
        Seurat ``.rds`` input: the assay to read (default: the active assay; ``"upstream"``:
        ``integrated`` when present, else ``RNA``, as upstream CellReasoner). Recorded in the
        provenance.
    label_key
        ``obs`` column with ground truth, written as the CSV ``labels`` column.
    cluster_markers
        Cluster mode: a marker file (see :func:`cellreasoner.annotation.clusters.read_markers`) or a
        ``{cluster: [genes]}`` dict used instead of the computed markers.
    n_markers
        Markers per cluster sentence (default: 100 with the CellReasoner prompt style, 30
        with the neutral style, the best of 10/30/100 for a real general model in
        ``bench/real_llm.py``; recorded in the provenance).
    marker_order
        ``"ranked"`` (default; gene-list order, as in training) or ``"score"``.
    tissue
        Optional tissue (default none). Model backends: a sentence naming it is appended to the
        instruction (the prompt then differs from upstream's); builtin: restricts its
        knowledge base to the tissue.
    species
        ``"auto"`` (default): read from the gene symbols' case (``Cd3e``: mouse, ``CD3E``:
        human; logged); ``"human"`` or ``"mouse"`` to say it. Mouse data keeps its own symbols:
        the builtin reads it through its knowledge base in mouse symbols (human markers
        through their Ensembl 105 orthologs, plus mouse-only markers such as Ly6c2), and model
        prompts order the mouse genes by the published list's orthologs. Recorded in the
        provenance (``species``, ``species_detection``).
    accessibility_prompt
        Model backends: the instruction says the genes are ranked by chromatin accessibility
        (gene activity), not expression. Default ``None``: on for scATAC-seq input
        (:func:`cellreasoner.read_atac`) with the neutral prompt style, off with the published
        CellReasoner instruction (kept byte for byte). The built-in reasoner reads the
        input's modality itself (its ATAC profile).
    key_added
        Prefix of the ``obs`` columns and the ``uns`` key (default ``"cellreasoner"``).
    cache
        ``None`` (default): ``<cache_dir>/annotations.sqlite``; a path; or ``False`` (off).
    batch_size
        Prompts per backend call (default 256); finished calls are cached even when a later
        one fails, so this bounds the work a crash can lose for backends without per-prompt
        callbacks.
    backend_options
        Extra keyword arguments for the backend constructor (``base_url``, ``concurrency``;
        for ``"openai"`` also ``timeout`` seconds per attempt, ``max_retries`` and ``stream``, see
        :class:`~cellreasoner.backends.openai.OpenAIBackend`).
    copy
        Annotate a copy and leave ``adata`` untouched (default False: write into ``adata``).
    progress
        Show a progress bar on a terminal (default True), or a callback ``advance(cells)``.
    deliberate
        Consensus runs only: one deliberation round (default False) in which every language
        model backend sees, for each item the backends disagree on, the others' answers and
        the markers they cite, and may revise its answer (cached like any prompt).
    engine
        ``"local"`` (default): this machine (the built-in reasoner on an ``.h5ad`` file
        streams its chunks through ``workers`` processes); ``"ray"``: chunks of cells
        (built-in reasoner) or blocks of unique prompts (model backends, one replica per
        worker) answered on a
        Ray cluster (:mod:`cellreasoner.distributed`; ``pip install 'cellreasoner[ray]'``),
        with the same answers as ``"local"``. The SQLite ``cache`` is not used: the
        ``manifest`` is the Ray engine's resume.
    address
        Ray engine: the cluster (``"auto"``, ``"ray://host:10001"``; default: the Ray session
        this process started, else ``$RAY_ADDRESS``'s, else a local one of ``workers`` CPUs).
    workers
        Local engine: worker processes for the built-in reasoner reading an ``.h5ad`` file
        (default: every core, at most 8, once the file holds 40,000 cells per core; ``1``:
        this process only), with the same answers as one process. Ray engine: tasks or
        backend replicas at a time (default: the cluster's CPUs).
    manifest
        Ray engine: the run manifest (finished blocks; a rerun with the same settings
        skips them): a folder, or an object-store URI (``"s3://bucket/prefix"``,
        ``"gs://..."``, ``"hdfs://..."``, ``"file:///..."``; S3 options such as
        ``?endpoint_override=host:9000&scheme=http`` in its query) whose bucket exists, with
        credentials from the environment (``AWS_ACCESS_KEY_ID`` ...); a URI carrying some is
        only shown redacted. Default ``None``: none (the CLI keeps one beside the output).
    num_gpus
        Ray engine: GPUs per backend replica (``transformers``, ``vllm``; default 0).
    chunk_size
        Built-in reasoner on local worker processes or on Ray: cells per task (default
        10,000 on local workers; 20,000 on Ray, also its manifest block). Model backends' Ray
        blocks are ``batch_size`` prompts.

    Returns
    -------
    AnnotationResult
        ``result.adata`` holds the ``obs`` columns ``{key_added}_label``, ``_confidence``,
        ``_ontology_id``, ``_ontology_label``, ``_reasoning``, ``_response``,
        ``_evidence_fraction``, ``_evidence_flag``, ``_cited_present``, ``_cited_absent``
        (+ ``_cluster_label``, ``_cluster_agreement``, ``_cluster_mixed``) and
        ``uns[key_added]`` provenance.
        A consensus run (several backends) also writes ``_agreement`` (fraction of the
        backends whose answer lies in the consensus term's subtree; also its
        ``_confidence``), ``_entropy`` (bits) and one ``_label_<name>`` per backend, and its
        provenance lists the backends.
        When a prompt got no usable answer (the backend failed it after its retries; it is not
        cached, so a rerun asks it again), an answer was cut off (token limit, or a reasoning
        text that never reaches an answer) or did not parse to a cell type, its cells are
        labelled "Unknown", a ``{key_added}_failure`` column says ``"request"``,
        ``"incomplete"`` or ``"parse"`` (``""`` elsewhere; the raw text stays in
        ``_response``), and the provenance counts ``failed_prompts``, ``failed_cells``,
        ``incomplete_cells`` and ``unparsed_cells``.
    """
    # this call's arguments (taken before any other local exists), for a consensus run
    options = {k: v for k, v in locals().items() if k not in ("adata", "backend")}
    from .consensus import is_consensus, single_backend

    if is_consensus(backend):
        from .consensus import annotate_consensus

        return annotate_consensus(adata, backend, **options)
    if deliberate:
        raise InputError("deliberate (--deliberate) needs several backends, e.g. "
                         "backend='builtin,openai:MODEL'.")
    backend, model = single_backend(backend, model)  # "name", "name:model", [one]
    from ._run import run_one

    return run_one(adata, backend, SimpleNamespace(**{**options, "model": model}))


# --- the steps of a run ----------------------------------------------------------------------
