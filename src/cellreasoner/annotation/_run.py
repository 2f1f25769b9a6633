"""One backend's run of :func:`cellreasoner.annotation.annotate`, in named steps: check the
options, read the input, choose the vocabulary and sampling, make the backend and the
:class:`~._inputs._Run`, answer, record the provenance and write back."""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from types import SimpleNamespace

from ..backends import Backend, RunContext, backend_class
from ..distributed.cluster import ENGINES, connect
from ..errors import InputError
from ..prompts import SamplingParams, resolve_instruction, resolve_prompt_style
from ._answer import _answer
from ._inputs import (
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
from .cache import open_cache, resolve_cache_path
from .clusters import default_n_markers
from .result import AnnotationResult, uns_safe

log = logging.getLogger("cellreasoner.annotation")


@dataclass
class _Input:
    """The input as the run reads it: the AnnData, its matrix source, the name to record,
    whether ``.raw`` is read, and the species."""

    adata: object
    source: object
    input_name: str
    use_raw: bool
    found: object


def run_one(adata, backend: str | Backend, o: SimpleNamespace) -> AnnotationResult:
    """Annotate ``adata`` with one backend; ``o`` holds :func:`annotate`'s other arguments."""
    t0 = time.perf_counter()
    _check_run_options(o)
    inp = _read_input(adata, o)
    # what the backend reads decides the defaults; it is made only once the input is checked
    caps = (backend if isinstance(backend, Backend) else backend_class(backend)).capabilities
    use_matrix = caps.reads == "matrix" and (
        o.mode in ("cell", "hybrid") or (o.mode == "cluster" and o.cluster_markers is None))
    gene_list, genes = _vocabulary(o, caps.reads, inp)
    _validate(inp.adata, o.layer, inp.use_raw, genes, o.label_key, o.mode, o.by)
    sampling = _sampling(o)
    from ..atac.read import input_modality

    modality = input_modality(inp.adata)
    with ExitStack() as stack:
        ray_run = _ray_run(stack, o, inp, backend, sampling, genes, modality)
        pool = ray_run is not None and not use_matrix
        run = _make_run(stack, o, inp, backend, caps, genes, sampling, modality, use_matrix,
                        ray_run, pool)
        cache_path = (None if use_matrix or ray_run is not None
                      else resolve_cache_path(o.cache))
        _attach(stack, run, o, inp, genes, modality, cache_path)
        describe = uns_safe(run.be.describe())
        if o.mode in ("cluster", "hybrid"):
            from .clusters import resolve_groups

            run.groups, run.by_key = resolve_groups(inp.adata, o.by, inp.source,
                                                    resolution=o.resolution)
        table, clusters_df, unique_prompts = _answer(run, o.cluster_markers, run.n_markers,
                                                     o.marker_order)
    provenance = _provenance(
        run, describe, n=o.n, seconds=time.perf_counter() - t0, gene_list=gene_list,
        key_added=o.key_added, cache_path=cache_path, layer=o.layer, use_raw=inp.use_raw,
        input_name=inp.input_name, tissue=o.tissue, clusters_df=clusters_df,
        unique_prompts=unique_prompts)
    provenance.update(species=inp.found.species, species_detection=inp.found.how)
    provenance.update(_failure_counts(table, run.stats))
    if ray_run is not None:
        provenance.update(ray_run.provenance(run.be if pool else None))
    result = AnnotationResult(table=table, provenance=provenance, adata=inp.adata,
                              key_added=o.key_added, truth=_truth(inp.adata, o.label_key, table),
                              clusters=clusters_df)
    result.to_adata()
    log.debug("annotated %s", result.summary_line())
    return result


def _check_run_options(o: SimpleNamespace) -> None:
    """One clear error for an option out of range, before anything is read."""
    _check_options(o.mode, o.n, o.batch_size, o.key_added, o.cluster_markers, o.chunk_size)
    if o.engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, not '{o.engine}'.")
    if o.workers is not None and int(o.workers) < 1:
        raise InputError(f"workers (--workers) must be at least 1, not {o.workers}.")
    if not float(o.resolution) > 0:
        raise InputError(f"resolution={o.resolution}: the Leiden resolution must be a positive "
                         "number (1.0 is the default; higher gives more, smaller clusters).")


def _read_input(adata, o: SimpleNamespace) -> _Input:
    """Open the input (a scaled ``X`` with a log-normalised ``.raw`` reads ``.raw``), read
    its species from the genes that will be read, and copy it when asked."""
    from ..checks import prefer_raw
    from ..io import open_input
    from ..matrix import from_anndata
    from ..species import resolve_species

    given = isinstance(adata, str | os.PathLike)
    use_raw = o.use_raw
    adata, source, input_name, _ = open_input(adata, layer=o.layer, use_raw=use_raw,
                                              assay=o.assay)
    input_name = input_name if given else ""
    if o.layer is None and not use_raw and prefer_raw(adata):  # scaled X, log-normalised .raw
        use_raw = True
        source = from_anndata(adata, use_raw=True)
    found = resolve_species(o.species, source.var_names)  # from the genes that will be read
    if o.copy and not given:
        from ..checks import in_memory_copy

        adata = in_memory_copy(adata)
        source = from_anndata(adata, layer=o.layer, use_raw=use_raw)
    return _Input(adata, source, input_name, use_raw, found)


def _vocabulary(o: SimpleNamespace, reads: str, inp: _Input) -> tuple[object, list[str]]:
    """(the gene list as recorded, the vocabulary): the published (human) list in the data's
    species; a list the user gave, or the data's own genes, as they are."""
    from ..species import species_vocabulary

    published = o.gene_list is None
    gene_list = _default_gene_list(o.gene_list, reads, inp.source)
    genes = species_vocabulary(_gene_vocab(gene_list), inp.found.species,
                               inp.source.var_names,
                               translate=published and not isinstance(gene_list, list),
                               source=inp.source.description or "the data")
    return gene_list, genes


def _sampling(o: SimpleNamespace) -> SamplingParams:
    """The sampling settings of the mode with the overrides (a warning for near-identical
    self-consistency samples)."""
    sampling = SamplingParams.for_mode(
        o.reasoning, temperature=o.temperature, top_p=o.top_p,
        repetition_penalty=o.repetition_penalty, max_new_tokens=o.max_new_tokens,
        seed=o.seed, n=int(o.n))
    if sampling.n > 1 and sampling.temperature < 0.1:
        log.warning("n=%d self-consistency samples at temperature %s will be near-identical; "
                    "pass a higher temperature (e.g. 0.6) for a meaningful agreement.",
                    sampling.n, sampling.temperature)
    return sampling


def _ray_run(stack: ExitStack, o: SimpleNamespace, inp: _Input, backend, sampling,
             genes: list[str], modality: str) -> _RayRun | None:
    """The Ray engine's cluster and manifest (``None``: the local engine)."""
    if o.engine != "ray":
        return None
    ray_run = _RayRun(stack.enter_context(connect(o.address, o.workers)), o.num_gpus,
                      chunk_size=o.chunk_size)
    ray_run.manifest = _manifest(
        o.manifest, inp.adata, inp.input_name, backend, o.model, o.backend_options,
        [sampling.to_dict(), o.mode, o.reasoning, o.prompt_style, str(o.instruction),
         o.tissue, o.max_genes, genes, o.batch_size, o.by, o.layer, inp.use_raw, o.n_markers,
         o.marker_order, o.chunk_size, inp.found.species, modality, o.accessibility_prompt,
         o.resolution])
    return ray_run


def _make_run(stack: ExitStack, o: SimpleNamespace, inp: _Input, backend, caps,
              genes: list[str], sampling: SamplingParams, modality: str, use_matrix: bool,
              ray_run: _RayRun | None, pool: bool) -> _Run:
    """Make the backend (closed with ``stack`` when made here) and the :class:`_Run`."""
    from ..atac.read import MODALITY

    if pool:  # every unique prompt goes to the pool at once: it cuts them into blocks
        be, own_backend = _replica_pool(backend, o.model, o.backend_options, ray_run,
                                        o.batch_size)
    else:
        be, own_backend = _backend(backend, o.model, o.backend_options)
    if own_backend:
        stack.callback(be.close)
    # a matrix backend reads no instruction (its cluster prompts keep the upstream text)
    style = (resolve_prompt_style(o.prompt_style, be.model) if caps.reads == "prompts"
             else "cellreasoner")
    accessibility = o.accessibility_prompt
    if accessibility is None:
        accessibility = modality == MODALITY and style == "neutral"
    run = _Run(be=be, adata=inp.adata, source=inp.source, genes=genes, sampling=sampling,
               reasoning=o.reasoning, mode=o.mode, max_genes=int(o.max_genes),
               batch_size=o.batch_size,
               instruction=resolve_instruction(
                   o.instruction, reasoning=o.reasoning, style=style,
                   tissue=None if caps.tissue else o.tissue, cluster=o.mode == "cluster",
                   accessibility=bool(accessibility)),
               use_matrix=use_matrix, prompt_style=style,
               n_markers=(int(o.n_markers) if o.n_markers is not None
                          else default_n_markers(style)),
               ray=ray_run, workers=o.workers if o.engine == "local" else None,
               chunk_size=o.chunk_size)
    if pool:
        run.batch_size = 1 << 40
    return run


def _attach(stack: ExitStack, run: _Run, o: SimpleNamespace, inp: _Input, genes: list[str],
            modality: str, cache_path) -> None:
    """Tell the backend about the run, open the cache and the progress bar."""
    from ..progress import progress_bar

    be = run.be
    be.configure(RunContext(tuple(genes), int(o.max_genes), o.tissue, bool(o.reasoning),
                            inp.found.species, modality))
    run.cache = open_cache(stack, cache_path, be, run.sampling)
    run.advance = o.progress if callable(o.progress) else stack.enter_context(progress_bar(
        f"annotating ({be.name})", total=inp.adata.n_obs, unit="cells",
        enabled=None if o.progress else False))
