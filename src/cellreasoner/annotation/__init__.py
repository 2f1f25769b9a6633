"""``cellreasoner.annotation``: AnnData in, cell-type labels with reasoning out.

:func:`annotate` is orchestration only; each stage lives in its own module:

- :mod:`.engine`: identical prompts generated once, answers cached (a killed run resumes where
  it stopped), self-consistency samples voted;
- :mod:`.clusters`: groups, cluster marker sentences, cluster majorities;
- :mod:`.table`: the per-cell table (answers, Cell Ontology terms, evidence);
- :mod:`.result`: :class:`AnnotationResult`, which writes itself back (:mod:`.output`).

Backends declare what they read (:class:`~cellreasoner.backends.Capabilities`): a matrix
backend (the built-in reasoner) streams answers for chunks of cells straight from the
expression matrix, so an ``.h5ad`` path is annotated with memory bounded by the chunk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from ..backends import Backend, RunContext, backend_class
from ..distributed.cluster import ENGINES, connect
from ..errors import InputError
from ..prompts import SamplingParams, resolve_instruction, resolve_prompt_style
from ._answer import _answer
from ._inputs import (
    MODES,
    _backend,
    _check_options,
    _default_gene_list,
    _gene_vocab,
    _manifest,
    _RayRun,
    _replica_pool,
    _Run,
    _validate,
)
from ._provenance import _failure_counts, _provenance, _truth
from .cache import GenerationCache, resolve_cache_path
from .clusters import default_n_markers
from .engine import generate_cached, vote
from .result import (
    CATEGORICAL_FIELDS,
    CLUSTER_FIELDS,
    CSV_UPSTREAM,
    FIELDS,
    AnnotationResult,
    uns_safe,
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
        ``"local"`` (default): this process; ``"ray"``: chunks of cells (built-in reasoner)
        or blocks of unique prompts (model backends, one replica per worker) answered on a
        Ray cluster (:mod:`cellreasoner.distributed`; ``pip install 'cellreasoner[ray]'``),
        with the same answers as ``"local"``. The SQLite ``cache`` is not used: the
        ``manifest`` is the Ray engine's resume.
    address
        Ray engine: the cluster (``"auto"``, ``"ray://host:10001"``; default: the Ray session
        this process started, else a local one of ``workers`` CPUs).
    workers
        Ray engine: tasks or backend replicas at a time (default: the cluster's CPUs).
    manifest
        Ray engine: the run manifest folder (finished blocks; a rerun with the same settings
        skips them). Default ``None``: none (the CLI keeps one beside the output).
    num_gpus
        Ray engine: GPUs per backend replica (``transformers``, ``vllm``; default 0).
    chunk_size
        Ray engine, built-in reasoner: cells per task and manifest block (default 20,000,
        the single process's chunk). Model backends' blocks are ``batch_size`` prompts.

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
    from ..progress import progress_bar
    from .consensus import is_consensus, single_backend

    if is_consensus(backend):
        from .consensus import annotate_consensus

        return annotate_consensus(adata, backend, **options)
    if deliberate:
        raise InputError("deliberate (--deliberate) needs several backends, e.g. "
                         "backend='builtin,openai:MODEL'.")
    backend, model = single_backend(backend, model)  # "name", "name:model", [one]
    t0 = time.perf_counter()
    _check_options(mode, n, batch_size, key_added, cluster_markers, chunk_size)
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, not '{engine}'.")
    if not float(resolution) > 0:
        raise InputError(f"resolution={resolution}: the Leiden resolution must be a positive "
                         "number (1.0 is the default; higher gives more, smaller clusters).")
    from ..checks import prefer_raw
    from ..io import open_input
    from ..matrix import from_anndata
    from ..species import resolve_species, species_vocabulary

    given = isinstance(adata, str | os.PathLike)
    adata, source, input_name, _ = open_input(adata, layer=layer, use_raw=use_raw, assay=assay)
    input_name = input_name if given else ""
    if layer is None and not use_raw and prefer_raw(adata):  # scaled X, log-normalised .raw
        use_raw = True
        source = from_anndata(adata, use_raw=True)
    found = resolve_species(species, source.var_names)  # from the genes that will be read
    if copy and not given:
        from ..checks import in_memory_copy

        adata = in_memory_copy(adata)
        source = from_anndata(adata, layer=layer, use_raw=use_raw)
    # what the backend reads decides the defaults; it is made only once the input is checked
    caps = (backend if isinstance(backend, Backend) else backend_class(backend)).capabilities
    use_matrix = caps.reads == "matrix" and (
        mode in ("cell", "hybrid") or (mode == "cluster" and cluster_markers is None))
    published = gene_list is None
    gene_list = _default_gene_list(gene_list, caps.reads, source)
    # the published (human) list in the data's species; a list the user gave, or the data's
    # own genes, as they are
    genes = species_vocabulary(_gene_vocab(gene_list), found.species, source.var_names,
                               translate=published and not isinstance(gene_list, list),
                               source=source.description or "the data")
    _validate(adata, layer, use_raw, genes, label_key, mode, by)
    sampling = SamplingParams.for_mode(
        reasoning, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens, seed=seed, n=int(n))
    if sampling.n > 1 and sampling.temperature < 0.1:
        log.warning("n=%d self-consistency samples at temperature %s will be near-identical; "
                    "pass a higher temperature (e.g. 0.6) for a meaningful agreement.",
                    sampling.n, sampling.temperature)
    from ..atac.read import MODALITY, input_modality

    modality = input_modality(adata)
    with ExitStack() as stack:
        ray_run = None
        if engine == "ray":
            ray_run = _RayRun(stack.enter_context(connect(address, workers)), num_gpus,
                              chunk_size=chunk_size)
            ray_run.manifest = _manifest(
                manifest, adata, input_name, backend, model, backend_options,
                [sampling.to_dict(), mode, reasoning, prompt_style, str(instruction), tissue,
                 max_genes, genes, batch_size, by, layer, use_raw, n_markers, marker_order,
                 chunk_size, found.species, modality, accessibility_prompt, resolution])
        pool = ray_run is not None and not use_matrix
        if pool:  # every unique prompt goes to the pool at once: it cuts them into blocks
            be, own_backend = _replica_pool(backend, model, backend_options, ray_run,
                                            batch_size)
        else:
            be, own_backend = _backend(backend, model, backend_options)
        if own_backend:
            stack.callback(be.close)
        # a matrix backend reads no instruction (its cluster prompts keep the upstream text)
        style = (resolve_prompt_style(prompt_style, be.model) if caps.reads == "prompts"
                 else "cellreasoner")
        if accessibility_prompt is None:
            accessibility_prompt = modality == MODALITY and style == "neutral"
        run = _Run(be=be, adata=adata, source=source, genes=genes, sampling=sampling,
                   reasoning=reasoning, mode=mode, max_genes=int(max_genes),
                   batch_size=batch_size,
                   instruction=resolve_instruction(
                       instruction, reasoning=reasoning, style=style,
                       tissue=None if caps.tissue else tissue, cluster=mode == "cluster",
                       accessibility=bool(accessibility_prompt)),
                   use_matrix=use_matrix, prompt_style=style,
                   n_markers=(int(n_markers) if n_markers is not None
                              else default_n_markers(style)),
                   ray=ray_run)
        if pool:
            run.batch_size = 1 << 40
        cache_path = None if use_matrix or ray_run is not None else resolve_cache_path(cache)
        be.configure(RunContext(tuple(genes), int(max_genes), tissue, bool(reasoning),
                                found.species, modality))
        if cache_path is not None:
            run.cache = GenerationCache(cache_path, be.name, be.model, sampling)
            stack.callback(run.cache.close)
        run.advance = progress if callable(progress) else stack.enter_context(progress_bar(
            f"annotating ({be.name})", total=adata.n_obs, unit="cells",
            enabled=None if progress else False))
        describe = uns_safe(be.describe())
        if mode in ("cluster", "hybrid"):
            from .clusters import resolve_groups

            run.groups, run.by_key = resolve_groups(adata, by, source, resolution=resolution)
        table, clusters_df, unique_prompts = _answer(run, cluster_markers, run.n_markers,
                                                     marker_order)
    provenance = _provenance(
        run, describe, n=n, seconds=time.perf_counter() - t0, gene_list=gene_list,
        key_added=key_added, cache_path=cache_path, layer=layer, use_raw=use_raw,
        input_name=input_name, tissue=tissue, clusters_df=clusters_df,
        unique_prompts=unique_prompts)
    provenance.update(species=found.species, species_detection=found.how)
    provenance.update(_failure_counts(table, run.stats))
    if ray_run is not None:
        provenance.update(ray_run.provenance(be if pool else None))
    result = AnnotationResult(table=table, provenance=provenance, adata=adata,
                              key_added=key_added, truth=_truth(adata, label_key, table),
                              clusters=clusters_df)
    result.to_adata()
    log.debug("annotated %s", result.summary_line())
    return result


# --- the steps of a run ----------------------------------------------------------------------
