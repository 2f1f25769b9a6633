"""``cellreasoner.annotate``: AnnData in, cell-type labels with reasoning out.

The engine does as little model work as it can: identical prompts are generated once (cells
with the same sentence share one answer), finished answers are kept in a persistent SQLite cache
(a killed run resumes where it stopped), and cluster mode asks once per cluster.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .backends import Backend, Generation, get_backend
from .cache import GenerationCache, default_cache_path
from .errors import BackendError, InputError
from .parsing import majority_label, parse_response
from .prompts import Prompt, SamplingParams, instruction_for

log = logging.getLogger(__name__)

MODES = ("cell", "cluster", "hybrid")
#: Per-cell output fields, in CSV order (obs columns are ``f"{key_added}_{field}"``).
FIELDS = ("label", "confidence", "ontology_id", "ontology_label", "reasoning", "response",
          "evidence_fraction", "evidence_flag", "cited_present", "cited_absent")
CLUSTER_FIELDS = ("cluster_label", "cluster_agreement")
#: Fields written as categorical ``obs`` columns (labels); the rest of the text stays text.
CATEGORICAL_FIELDS = ("label", "ontology_id", "ontology_label", "cluster_label")
#: Leading columns of the upstream CellReasoner result CSV.
CSV_UPSTREAM = ("cell_name", "response", "labels")


# --- result object ---------------------------------------------------------------------------
@dataclass
class AnnotationResult:
    """What :func:`annotate` produced (CellTypist-style).

    Attributes
    ----------
    table
        One row per cell (index = cell names): the fields of :data:`FIELDS` (plus
        ``cluster_label``/``cluster_agreement`` in cluster/hybrid mode), ``prompt_key`` and
        ``samples`` (JSON list of every self-consistency sample's parsed label).
    provenance
        Backend, model, mode, sampling, counts and timing (also ``adata.uns[key_added]``).
    adata
        The annotated AnnData (the input itself, or its copy with ``copy=True``).
    key_added
        Prefix of the ``obs`` columns.
    truth
        Ground-truth labels (``label_key``), or ``None``.
    clusters
        Cluster mode: one row per cluster (label, confidence, n_cells, markers, response).
    """

    table: pd.DataFrame
    provenance: dict
    adata: object | None = None
    key_added: str = "cellreasoner"
    truth: pd.Series | None = None
    clusters: pd.DataFrame | None = None

    def __repr__(self) -> str:
        p = self.provenance
        return (f"AnnotationResult({p.get('n_cells')} cells, backend={p.get('backend')!r}, "
                f"model={p.get('model')!r}, mode={p.get('mode')!r}, key_added="
                f"{self.key_added!r}; {p.get('unique_prompts')} unique prompts, "
                f"{p.get('model_calls')} model calls, {p.get('cache_hits')} cache hits)")

    @property
    def summary(self) -> dict:
        """Counts and timing: cells, unique prompts, model calls, cache hits, seconds."""
        keys = ("n_cells", "unique_prompts", "model_calls", "generations", "cache_hits",
                "seconds")
        out = {k: self.provenance.get(k) for k in keys}
        secs = out["seconds"] or 0.0
        out["cells_per_second"] = out["n_cells"] / secs if secs > 0 else float("inf")
        return out

    def summary_line(self) -> str:
        """The one-line summary the CLI prints."""
        s = self.summary
        return (f"{s['n_cells']:,} cells, {s['unique_prompts']:,} unique prompts, "
                f"{s['model_calls']:,} model calls, {s['cache_hits']:,} cache hits, "
                f"{s['seconds']:.1f} s ({s['cells_per_second']:,.0f} cells/s)")

    def to_table(self) -> pd.DataFrame:
        """A copy of the per-cell table."""
        return self.table.copy()

    def to_adata(self, adata=None, key_added: str | None = None):
        """Write the ``obs`` columns and ``uns`` provenance into ``adata`` (default: the
        annotated AnnData) and return it."""
        adata = self.adata if adata is None else adata
        if adata is None:
            raise InputError("No AnnData to write into: pass one to to_adata(adata).")
        key = key_added or self.key_added
        if list(map(str, adata.obs_names)) != list(map(str, self.table.index)):
            raise InputError(
                "to_adata: the AnnData's cells (obs_names) differ from the annotated cells.")
        fields = FIELDS + (CLUSTER_FIELDS if "cluster_label" in self.table else ())
        # columns of an earlier run with another mode would contradict this one
        stale = [f"{key}_{f}" for f in CLUSTER_FIELDS if f not in fields]
        adata.obs.drop(columns=[c for c in stale if c in adata.obs], inplace=True)
        for f in fields:
            values = self.table[f].to_numpy()
            if f == "evidence_flag":
                values = values.astype(bool)
            elif f in ("confidence", "evidence_fraction", "cluster_agreement"):
                values = values.astype(np.float64)
            elif f in CATEGORICAL_FIELDS:  # few distinct values: ready for sc.pl.* colouring
                values = pd.Categorical(values.astype(str))
            else:  # free text stays text
                values = values.astype(str)
            adata.obs[f"{key}_{f}"] = values
        adata.uns[key] = _uns_safe(self.provenance)
        return adata

    def to_cellxgene(self, adata=None, unknown: str = "unknown"):
        """Write ``obs["cell_type_ontology_term_id"]`` as the CELLxGENE schema names it.

        Cells whose label did not map to a Cell Ontology term get ``unknown`` (the schema's
        value for an unknown cell type). Returns the AnnData.
        """
        adata = self.adata if adata is None else adata
        if adata is None:
            raise InputError("No AnnData to write into: pass one to to_cellxgene(adata).")
        ids = self.table["ontology_id"].astype(str).to_numpy()
        ids = np.where(np.char.startswith(ids.astype(str), "CL:"), ids, unknown)
        adata.obs["cell_type_ontology_term_id"] = pd.Categorical(ids)
        return adata

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the upstream CellReasoner result layout (``cell_name``, ``response``,
        ``labels`` when ground truth exists), then the other fields; atomic."""
        df = pd.DataFrame({"cell_name": self.table.index.astype(str),
                           "response": self.table["response"].to_numpy()})
        if self.truth is not None:
            df["labels"] = self.truth.to_numpy()
        for f in FIELDS:
            if f != "response":
                df[f] = self.table[f].to_numpy()
        if "cluster_label" in self.table:
            for f in CLUSTER_FIELDS:
                df[f] = self.table[f].to_numpy()
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
        return Path(path)


def _uns_safe(obj):
    """JSON/h5ad-safe copy: no ``None`` (dropped), numpy scalars to Python."""
    if isinstance(obj, dict):
        return {str(k): _uns_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_uns_safe(v) for v in obj if v is not None]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --- generation with dedupe and cache --------------------------------------------------------
@dataclass
class _Stats:
    model_calls: int = 0
    generations: int = 0
    cache_hits: int = 0
    partial_hits: int = 0


@dataclass
class _Answer:
    """The voted answer of one unique prompt."""

    label: str
    confidence: float
    response: str
    reasoning: str
    samples: list[str] = field(default_factory=list)
    ontology: tuple[str, str] | None = None  # (id, label) when the backend reports it


def _accepts(func: Callable, name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def generate_cached(backend: Backend, prompts: Sequence[Prompt], sampling: SamplingParams,
                    cache: GenerationCache | None = None, *, batch_size: int = 256,
                    weights: Sequence[int] | None = None,
                    advance: Callable[[float], None] | None = None,
                    stats: _Stats | None = None) -> list[list[Generation]]:
    """``sampling.n`` generations for every (already unique) prompt, through the cache.

    Cached samples are reused; missing ones are generated in backend calls of at most
    ``batch_size`` prompts and stored as each prompt finishes (backends offering an
    ``on_result(index, generations)`` callback) or at the end of each call. ``advance`` is
    called with the number of *cells* (``weights``, one per prompt) finished.
    """
    n = sampling.n
    stats = stats if stats is not None else _Stats()
    weights = list(weights) if weights is not None else [1] * len(prompts)
    advance = advance or (lambda k: None)
    keys = [p.key() for p in prompts]
    out: list[list[Generation | None]] = [[None] * n for _ in prompts]
    todo: dict[int, list[int]] = {}  # first missing sample -> prompt indices
    for start in range(0, len(prompts), 4096):
        window = range(start, min(start + 4096, len(prompts)))
        got = cache.get_many([keys[i] for i in window], n) if cache is not None else {}
        for i in window:
            gens = got.get(keys[i])
            have = 0
            if gens is not None:
                while have < n and gens[have] is not None:
                    out[i][have] = gens[have]
                    have += 1
            if have == n:
                stats.cache_hits += 1
                advance(weights[i])
            else:
                stats.partial_hits += have > 0
                todo.setdefault(have, []).append(i)
    with_callback = _accepts(backend.generate, "on_result")
    for first, idx in sorted(todo.items()):
        count = n - first
        # a fresh seed for samples first..n-1, so extra samples differ from the cached ones
        sp = replace(sampling, n=count,
                     seed=None if sampling.seed is None else sampling.seed + first)
        for b in range(0, len(idx), batch_size):
            batch = idx[b:b + batch_size]
            stored: set[int] = set()
            batch_w = [weights[i] for i in batch]
            mean_w = sum(batch_w) / len(batch_w)
            credited = 0.0

            def on_result(j: int, gens: Sequence[Generation], _batch=batch, _stored=stored,
                          _first=first) -> None:
                i = _batch[j]
                if cache is not None:
                    cache.put(keys[i], list(gens), _first)
                _stored.add(j)

            def progress(k: int, _mean=mean_w) -> None:
                nonlocal credited
                credited += k * _mean
                advance(k * _mean)

            kwargs = {"progress": progress}
            if with_callback:
                kwargs["on_result"] = on_result
            stats.model_calls += len(batch)
            result = backend.generate([prompts[i] for i in batch], sp, **kwargs)
            if len(result) != len(batch) or any(len(g) != count for g in result):
                raise BackendError(
                    f"Backend '{backend.name}' returned {len(result)} answers with "
                    f"{sorted({len(g) for g in result})} samples for {len(batch)} prompts with "
                    f"n={count}; expected one list of n generations per prompt."
                )
            if cache is not None:
                cache.put_many([(keys[i], first, result[j]) for j, i in enumerate(batch)
                                if j not in stored])
            for j, i in enumerate(batch):
                out[i][first:] = list(result[j])
            stats.generations += len(batch) * count
            advance(sum(batch_w) - credited)
    return out  # type: ignore[return-value]


def vote(generations: Sequence[Generation]) -> _Answer:
    """Parse every sample and take the majority label.

    Confidence is the backend's own ``meta["confidence"]`` when it reports one (builtin),
    else the agreement fraction of several samples, else NaN (one sample: not measured).
    """
    parsed = [parse_response(g.text, g.reasoning) for g in generations]
    labels = [p.label for p in parsed]
    label, agreement, k = majority_label(labels)
    chosen = generations[k] if generations else Generation("")
    own = chosen.meta.get("confidence")
    if own is not None:  # a backend that scores its answers (builtin) keeps its own confidence
        confidence = float(own)
    elif len(generations) > 1:
        confidence = agreement
    else:
        confidence = math.nan
    ontology = None
    if "ontology_id" in chosen.meta:
        ontology = (str(chosen.meta.get("ontology_id") or ""),
                    str(chosen.meta.get("ontology_label") or ""))
    return _Answer(label=label, confidence=confidence, response=chosen.text or "",
                   reasoning=parsed[k].reasoning if parsed else "", samples=labels,
                   ontology=ontology)


# --- evidence and ontology -------------------------------------------------------------------
class _OntologyMapper:
    """``map_label`` with a per-label memo (labels repeat across cells)."""

    def __init__(self):
        from .ontology import map_label

        self._map = map_label
        self._memo: dict[str, tuple[str, str]] = {}

    def __call__(self, label: str) -> tuple[str, str]:
        if label not in self._memo:
            m = self._map(label) if label else None
            ok = m is not None and getattr(m, "id", None)
            self._memo[label] = (str(m.id), str(m.label)) if ok else ("", "")
        return self._memo[label]


# --- inputs ------------------------------------------------------------------------------------
def _load_input(data):
    """AnnData, a path, or a demo name (``pbmc68k_reduced``, ``pbmc_demo``) -> AnnData."""
    if isinstance(data, str | os.PathLike):
        from .datasets import resolve_input

        got = resolve_input(data)
        if isinstance(got, str | os.PathLike):
            from .io import read

            p = Path(got)
            if not p.exists():
                raise InputError(f"Input not found: {p}. Pass an .h5ad, Seurat .rds, 10x "
                                 "folder/.h5 or CSV file, or pbmc68k_reduced / pbmc_demo.")
            return read(p), True
        return got, True
    if not hasattr(data, "obs") or not hasattr(data, "n_obs"):
        raise InputError(f"annotate() needs an AnnData or a file path, not {type(data).__name__}.")
    return data, False


def _gene_vocab(gene_list) -> list[str]:
    from .resources import load_gene_list

    if gene_list is None or isinstance(gene_list, str | os.PathLike):
        return load_gene_list(gene_list)
    genes = [str(g) for g in gene_list]
    if not genes:
        raise InputError("gene_list is empty.")
    return genes


def _instruction(reasoning: bool, tissue: str | None) -> str:
    """The upstream instruction; with ``tissue`` a sentence naming it is appended."""
    text = instruction_for(reasoning)
    if tissue:
        text += f" The cells come from {tissue.strip()} tissue."
    return text


# --- the API ---------------------------------------------------------------------------------
def annotate(
    adata,
    backend: str | Backend = "builtin",
    *,
    model: str | None = None,
    reasoning: bool = False,
    mode: str = "cell",
    by: str | None = None,
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
    label_key: str | None = None,
    cluster_markers: str | os.PathLike | dict | None = None,
    n_markers: int = 100,
    marker_order: str = "ranked",
    tissue: str | None = None,
    key_added: str = "cellreasoner",
    cache: str | os.PathLike | bool | None = None,
    batch_size: int = 256,
    backend_options: dict | None = None,
    copy: bool = False,
    progress: bool | Callable[[float], None] = True,
) -> AnnotationResult:
    """Annotate every cell of ``adata`` with a cell type, confidence and reasoning.

    Parameters
    ----------
    adata
        AnnData, or a path read with :func:`cellreasoner.io.read`, or a demo name
        (``"pbmc68k_reduced"``, ``"pbmc_demo"``).
    backend
        Registry name (``"builtin"`` default, ``"transformers"``, ``"openai"``, ``"vllm"``,
        ``"gguf"``) or a ready :class:`~cellreasoner.backends.Backend`.
    model
        Model name/path for the backend (default: the backend's default).
    reasoning
        Ask for ``<think>`` reasoning (upstream reasoning instruction; default False).
    mode
        ``"cell"`` (default): one answer per cell (identical prompts generated once);
        ``"cluster"``: one prompt per cluster from its top markers, label broadcast to its
        cells; ``"hybrid"``: per-cell answers plus each cluster's majority and agreement.
    by
        ``obs`` column with clusters for cluster/hybrid mode; ``None``/``"leiden"`` uses
        ``obs["leiden"]`` or computes it with scanpy.
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
        Expression to read (default ``X``; raw counts or log-normalised).
    label_key
        ``obs`` column with ground truth, written as the CSV ``labels`` column.
    cluster_markers
        Cluster mode: a marker file (see :func:`cellreasoner.clusters.read_markers`) or a
        ``{cluster: [genes]}`` dict used instead of the computed markers.
    n_markers
        Markers per cluster sentence (default 100).
    marker_order
        ``"ranked"`` (default; gene-list order, as in training) or ``"score"``.
    tissue
        Optional tissue (default none). Model backends: a sentence naming it is appended to the
        instruction (the prompt then differs from upstream's); builtin: restricts its
        knowledge base to the tissue.
    key_added
        Prefix of the ``obs`` columns and the ``uns`` key (default ``"cellreasoner"``).
    cache
        ``None`` (default): ``<cache_dir>/annotations.sqlite``; a path; or ``False`` (off).
    batch_size
        Prompts per backend call (default 256); finished calls are cached even when a later
        one fails, so this bounds the work a crash can lose for backends without per-prompt
        callbacks.
    backend_options
        Extra keyword arguments for the backend constructor (``base_url``, ``concurrency``...).
    copy
        Annotate a copy and leave ``adata`` untouched (default False: write into ``adata``).
    progress
        Show a progress bar on a terminal (default True), or a callback ``advance(cells)``.

    Returns
    -------
    AnnotationResult
        ``result.adata`` holds the ``obs`` columns ``{key_added}_label``, ``_confidence``,
        ``_ontology_id``, ``_ontology_label``, ``_reasoning``, ``_response``,
        ``_evidence_fraction``, ``_evidence_flag``, ``_cited_present``, ``_cited_absent``
        (+ ``_cluster_label``, ``_cluster_agreement``) and ``uns[key_added]`` provenance.
    """
    from . import __version__
    from .matrix import from_anndata
    from .sentences import build_sentences

    t0 = time.perf_counter()
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not '{mode}'.")
    if int(n) < 1:
        raise InputError(f"n (self-consistency samples) must be at least 1, not {n}.")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    if not key_added or not str(key_added).isidentifier():
        raise InputError(f"key_added must be a simple name like 'cellreasoner', not {key_added!r}.")
    input_name = str(adata) if isinstance(adata, str | os.PathLike) else ""
    adata, from_path = _load_input(adata)
    if copy and not from_path:
        adata = adata.copy()
    builtin = backend == "builtin"
    if builtin and gene_list is None:
        # the no-download default: the published list only if it is already here, else the
        # data's own genes (the marker reasoner reads expression, not the ranked sentence)
        from .resources import local_gene_list_path

        gene_list = local_gene_list_path() or [str(g) for g in _symbols(adata, use_raw)]
    genes = _gene_vocab(gene_list)
    from .io import check_obs_column, validate_for_annotation

    validate_for_annotation(adata, layer="raw" if use_raw else layer, genes=genes)
    if label_key is not None:
        check_obs_column(adata, label_key)
    if cluster_markers is not None and mode != "cluster":
        raise InputError("cluster_markers (--cluster-markers) give the marker genes of each "
                         "cluster and only "
                         f"apply to mode='cluster', not mode='{mode}'.")
    if mode != "cell" and by not in (None, "leiden"):
        check_obs_column(adata, by, "Cluster", "Or pass by='leiden' to compute clusters.")
    source = from_anndata(adata, layer=layer, use_raw=use_raw)
    sampling = SamplingParams.for_mode(
        reasoning, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
        max_new_tokens=max_new_tokens, seed=seed, n=int(n))
    if sampling.n > 1 and sampling.temperature < 0.1:
        log.warning("n=%d self-consistency samples at temperature %s will be near-identical; "
                    "pass a higher temperature (e.g. 0.6) for a meaningful agreement.",
                    sampling.n, sampling.temperature)
    options = dict(backend_options or {})
    if model is not None:
        options["model"] = model
    if builtin:  # the marker reasoner takes the tissue and the sentences' gene list itself
        if tissue:
            options.setdefault("tissue", tissue)
        options.setdefault("gene_list", genes)
        options.setdefault("max_genes", max_genes)
    own_backend = not isinstance(backend, Backend)
    if not own_backend and options:
        raise InputError("model/backend_options only apply to a backend given by name.")
    try:
        be = get_backend(backend, **options)
    except TypeError as exc:  # an option the backend's constructor does not take
        raise InputError(f"Backend '{backend}' does not accept the option(s) "
                         f"{', '.join(sorted(options))}: {exc}.") from exc
    n_cells = adata.n_obs
    stats = _Stats()
    sentences = build_sentences(source, genes, max_genes=max_genes)
    instruction = _instruction(reasoning, None if be.capabilities.tissue else tissue)
    use_matrix = mode in ("cell", "hybrid") and be.capabilities.reads == "matrix"
    # interim (until the annotation/ engine lands): the run's settings reach every backend
    from .backends.base import RunContext

    be.configure(RunContext(tuple(genes), int(max_genes), tissue or None, bool(reasoning)))
    gen_cache: GenerationCache | None = None
    cache_path: Path | None = None
    if cache is not False and not use_matrix:
        cache_path = default_cache_path() if cache in (None, True) else Path(cache)
        gen_cache = GenerationCache(cache_path, be.name, be.model, sampling)

    from .progress import progress_bar

    clusters_df = None
    evidence = None
    with ExitStack() as stack:
        if own_backend:
            stack.callback(be.close)
        if gen_cache is not None:
            stack.callback(gen_cache.close)
        if callable(progress):
            advance = progress
        else:
            advance = stack.enter_context(progress_bar(
                f"annotating ({be.name})", total=n_cells, unit="cells",
                enabled=None if progress else False))
        describe = _uns_safe(be.describe())
        if mode in ("cluster", "hybrid"):
            from .clusters import resolve_groups

            groups, by_key = resolve_groups(adata, by, source)
        if use_matrix:
            answers, cell_answer, unique_prompts, evidence = _run_matrix(be, adata, source,
                                                                         stats)
            advance(n_cells)
        elif mode in ("cell", "hybrid"):
            answers, cell_answer, unique_prompts = _run_cells(
                be, sentences, instruction, reasoning, sampling, gen_cache, batch_size,
                advance, stats)
        else:
            answers, cell_answer, unique_prompts, clusters_df = _run_clusters(
                be, source, groups, genes, cluster_markers, n_markers, marker_order, instruction,
                reasoning, sampling, gen_cache, batch_size, advance, stats)

    vocabulary = list(dict.fromkeys([*genes, *map(str, source.var_names)]))
    table = _cell_table(adata, sentences, answers, cell_answer, mode, vocabulary, evidence)
    table["prompt_key"] = _prompt_keys_for_table(sentences, instruction, reasoning, cell_answer,
                                                 mode, clusters_df, use_matrix)
    if mode == "cluster":
        table["cluster_label"] = table["label"].to_numpy()
        table["cluster_agreement"] = table["confidence"].to_numpy()
    elif mode == "hybrid":
        from .clusters import majority_by_group

        maj, agree = majority_by_group(table["label"].tolist(), groups)
        table["cluster_label"] = maj
        table["cluster_agreement"] = agree
    seconds = time.perf_counter() - t0
    provenance = {
        **describe,
        "backend": be.name, "model": be.model or describe.get("model", ""), "mode": mode,
        "reasoning": bool(reasoning), "n_samples": 1 if use_matrix else int(n),
        "sampling": _uns_safe(sampling.to_dict()) if not use_matrix else {},
        "n_cells": int(n_cells), "unique_prompts": int(unique_prompts),
        "model_calls": int(stats.model_calls), "generations": int(stats.generations),
        "cache_hits": int(stats.cache_hits), "seconds": round(seconds, 3),
        "version": __version__, "gene_list": _gene_list_name(gene_list, genes),
        "max_genes": int(max_genes), "key_added": key_added,
        "cache": str(cache_path) if cache_path else "",
        "layer": "raw" if use_raw else (layer or "X"),
    }
    if input_name:
        provenance["input"] = input_name
    if tissue:
        provenance["tissue"] = tissue
    if mode in ("cluster", "hybrid"):
        provenance["by"] = by_key
    if clusters_df is not None:
        # column lists, not a dict keyed by cluster name: names may hold "/" (h5ad paths)
        cl = clusters_df.drop(columns=["response"]).reset_index()
        provenance["clusters"] = {c: cl[c].tolist() for c in cl.columns}
    truth = None
    if label_key is not None:
        truth = adata.obs[label_key].astype(object).where(adata.obs[label_key].notna(), "")
        truth = truth.astype(str)
        truth.index = table.index
    result = AnnotationResult(table=table, provenance=provenance, adata=adata,
                              key_added=key_added, truth=truth, clusters=clusters_df)
    result.to_adata()
    log.debug("annotated %s", result.summary_line())
    return result


def _symbols(adata, use_raw: bool):
    """Gene symbols of the matrix annotate will read."""
    if use_raw and adata.raw is not None:
        return adata.raw.var_names
    from .io import gene_symbols

    return gene_symbols(adata).symbols


def _gene_list_name(gene_list, genes: list[str]) -> str:
    if gene_list is None:
        from .resources import ranked_gene_list_path

        return f"{ranked_gene_list_path()} ({len(genes)} genes)"
    if isinstance(gene_list, str | os.PathLike):
        return f"{gene_list} ({len(genes)} genes)"
    return f"custom ({len(genes)} genes)"


def _run_matrix(be, adata, source, stats: _Stats):
    """Builtin path: the backend reads expression directly (one answer per cell, no prompts)
    and checks its own evidence (interim glue until the annotation/ engine lands)."""
    conn = adata.obsp.get("connectivities", None)
    blocks = list(be.annotate_matrix(source, connectivities=conn))
    n = sum(len(b) for b in blocks)
    if n != adata.n_obs:
        raise BackendError(f"Backend '{be.name}' returned {n} answers for "
                           f"{adata.n_obs} cells.")
    stats.model_calls += n
    stats.generations += n
    answers = [
        vote([Generation(text=str(b.label[i]), reasoning=b.reasoning[i],
                         meta={"confidence": float(b.confidence[i]),
                               "ontology_id": str(b.ontology_id[i]),
                               "ontology_label": str(b.ontology_label[i])})])
        for b in blocks for i in range(len(b))]
    evidence = tuple(np.concatenate([getattr(b, f) for b in blocks]) for f in (
        "evidence_fraction", "evidence_flag", "cited_present", "cited_absent"))
    return answers, np.arange(n), n, evidence


def _run_cells(be, sentences, instruction, reasoning, sampling, gen_cache, batch_size,
               advance, stats):
    """Per-cell prompts, deduplicated: returns (answers per unique prompt, cell -> unique)."""
    first_cell: dict[str, int] = {}
    cell_answer = np.empty(len(sentences), dtype=np.int64)
    keys: list[str] = []
    for i in range(len(sentences)):
        key = Prompt(instruction, sentences.sentence(i), reasoning).key()
        u = first_cell.setdefault(key, len(keys))
        if u == len(keys):
            keys.append(key)
        cell_answer[i] = u
    reps = np.full(len(keys), -1, dtype=np.int64)
    for i in range(len(sentences) - 1, -1, -1):
        reps[cell_answer[i]] = i
    weights = np.bincount(cell_answer, minlength=len(keys))
    prompts = [Prompt(instruction, sentences.sentence(int(i)), reasoning) for i in reps]
    gens = generate_cached(be, prompts, sampling, gen_cache, batch_size=batch_size,
                           weights=weights.tolist(), advance=advance, stats=stats)
    return [vote(g) for g in gens], cell_answer, len(keys)


def _run_clusters(be, source, groups, genes, markers, n_markers, marker_order, instruction,
                  reasoning, sampling, gen_cache, batch_size, advance, stats):
    """One prompt per cluster from its markers; the answer is broadcast to the cluster."""
    from .clusters import order_markers, rank_markers, read_markers

    names = sorted(groups.unique().tolist(), key=str)
    if markers is None:
        marker_map = rank_markers(source, groups, genes, n_markers=n_markers, order=marker_order)
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
    unique_answers = [vote(g) for g in gens]
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


def _prompt_keys_for_table(sentences, instruction, reasoning, cell_answer, mode, clusters_df,
                           use_matrix) -> np.ndarray:
    if use_matrix:
        return np.full(len(sentences), "", dtype=object)
    if mode == "cluster":
        return clusters_df["prompt_key"].to_numpy()[cell_answer]
    keys = {}
    out = np.empty(len(sentences), dtype=object)
    for i, u in enumerate(cell_answer):
        if u not in keys:
            keys[u] = Prompt(instruction, sentences.sentence(i), reasoning).key()
        out[i] = keys[u]
    return out


def _cell_table(adata, sentences, answers: list[_Answer], cell_answer: np.ndarray,
                mode: str, vocabulary: Sequence[str], evidence=None) -> pd.DataFrame:
    """Per-cell fields; evidence is checked against each cell's own sentence genes.

    Cells sharing an answer and a sentence (always the case for deduplicated prompts) share
    one evidence check. ``evidence`` (fraction, flag, present, absent per cell) is a matrix
    backend's own check, used as given.
    """
    from .evidence import check_evidence_many

    mapper = _OntologyMapper()
    n = len(cell_answer)
    if evidence is not None:
        return _with_evidence(adata, answers, cell_answer, mapper, evidence)
    pair_of: dict[tuple[int, str], int] = {}
    pair_reasoning: list[str] = []
    pair_sentence: list[list[str]] = []
    cell_pair = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        u = int(cell_answer[i])
        if not answers[u].reasoning:
            continue
        # cluster mode: cells of a cluster share the answer but each has its own sentence
        sentence = sentences.sentence(i) if mode == "cluster" else ""
        key = (u, sentence)
        if key not in pair_of:
            pair_of[key] = len(pair_reasoning)
            pair_reasoning.append(answers[u].reasoning)
            pair_sentence.append(sentences.cell_genes(i))
        cell_pair[i] = pair_of[key]
    ev_n: list = []
    if pair_reasoning:
        ev = check_evidence_many(pair_reasoning, pair_sentence, vocabulary=vocabulary)
        ev_n, ev_frac, ev_flag, ev_present, ev_absent = (
            ev[c].tolist() for c in ("n_cited", "fraction_present", "flagged", "present",
                                     "absent"))
    ontology = [a.ontology if a.ontology is not None else mapper(a.label) for a in answers]
    cols: dict[str, list] = {f: [None] * n for f in FIELDS}
    for i in range(n):
        a = answers[cell_answer[i]]
        oid, olabel = ontology[cell_answer[i]]
        k = cell_pair[i]
        if k >= 0 and ev_n and ev_n[k] > 0:
            evidence = (float(ev_frac[k]), bool(ev_flag[k]), ev_present[k], ev_absent[k])
        else:  # nothing cited: no evidence to judge
            evidence = (math.nan, False, "", "")
        row = (a.label, a.confidence, oid, olabel, a.reasoning, a.response, *evidence)
        for f, v in zip(FIELDS, row, strict=True):
            cols[f][i] = v
    table = pd.DataFrame(cols, index=pd.Index(list(map(str, adata.obs_names)), name="cell"))
    # the parsed label of every self-consistency sample (JSON list), for inspection
    sample_json = [json.dumps(a.samples) for a in answers]
    table["samples"] = [sample_json[u] for u in cell_answer]
    table["confidence"] = table["confidence"].astype(np.float64)
    table["evidence_fraction"] = table["evidence_fraction"].astype(np.float64)
    table["evidence_flag"] = table["evidence_flag"].astype(bool)
    return table


def _with_evidence(adata, answers, cell_answer, mapper, evidence) -> pd.DataFrame:
    """:func:`_cell_table` for answers that carry their own evidence columns."""
    ontology = [a.ontology if a.ontology is not None else mapper(a.label) for a in answers]
    picked = [answers[u] for u in cell_answer]
    onto = [ontology[u] for u in cell_answer]
    cols = {"label": [a.label for a in picked], "confidence": [a.confidence for a in picked],
            "ontology_id": [o[0] for o in onto], "ontology_label": [o[1] for o in onto],
            "reasoning": [a.reasoning for a in picked], "response": [a.response for a in picked],
            "evidence_fraction": evidence[0], "evidence_flag": evidence[1],
            "cited_present": list(evidence[2]), "cited_absent": list(evidence[3])}
    table = pd.DataFrame({f: cols[f] for f in FIELDS},
                         index=pd.Index(list(map(str, adata.obs_names)), name="cell"))
    sample_json = [json.dumps(a.samples) for a in answers]
    table["samples"] = [sample_json[u] for u in cell_answer]
    table["confidence"] = table["confidence"].astype(np.float64)
    table["evidence_fraction"] = table["evidence_fraction"].astype(np.float64)
    table["evidence_flag"] = table["evidence_flag"].astype(bool)
    return table
