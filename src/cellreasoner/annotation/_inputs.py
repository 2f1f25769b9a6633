"""The setup steps of :func:`cellreasoner.annotation.annotate`: option checks, the backend,
the gene vocabulary, input validation, the Ray engine's share, and :class:`_Run` (what the
answering step needs, gathered once)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..backends import Backend, get_backend
from ..errors import InputError
from ..prompts import SamplingParams
from .cache import GenerationCache
from .engine import Stats

MODES = ("cell", "cluster", "hybrid")


@dataclass
class _Run:
    """What the answering step needs, gathered once."""

    be: Backend
    adata: object
    source: object
    genes: list[str]
    sampling: SamplingParams
    reasoning: bool
    mode: str
    max_genes: int
    batch_size: int
    instruction: str
    use_matrix: bool
    prompt_style: str = "cellreasoner"
    n_markers: int = 100
    cache: GenerationCache | None = None
    advance: Callable[[float], None] | None = None
    groups: pd.Series | None = None
    by_key: str | None = None
    ray: _RayRun | None = None
    workers: int | None = None  # local engine: worker processes (None: by the data's size)
    chunk_size: int | None = None  # cells per worker task (None: the default chunk)

    def __post_init__(self) -> None:
        self.stats = Stats()

    @property
    def vocabulary(self) -> list[str]:
        """Symbols the evidence check recognises: the gene list, then the data's genes."""
        return list(dict.fromkeys([*self.genes, *map(str, self.source.var_names)]))


@dataclass
class _RayRun:
    """The Ray engine's share of a run: the cluster, the manifest, GPUs per replica."""

    cluster: object
    num_gpus: float = 0
    manifest: object | None = None
    chunk_size: int | None = None

    def provenance(self, pool) -> dict:
        """What ``uns`` records about the Ray engine (blocks read back from the manifest)."""
        out = {"engine": "ray", "workers": int(self.cluster.workers)}
        if self.manifest is not None:
            out["manifest"] = str(self.manifest.folder)
            out["manifest_blocks"] = len(self.manifest.blocks)
            out["skipped_blocks"] = int(self.manifest.skipped)
        if pool is not None:
            out["prompts_asked"] = int(pool.asked)
        return out


def _manifest(folder, adata, input_name: str, backend, model, backend_options,
              settings: list):
    """The run manifest in ``folder`` (``None``: no manifest), keyed by what decides the
    answers: the input (its path, size and time), the backend and the settings."""
    if folder is None:
        return None
    from ..distributed.manifest import RunManifest

    given = str(input_name)
    if given and Path(given).is_file():
        st = Path(given).stat()
        given = f"{Path(given).resolve()} {st.st_size} {st.st_mtime_ns}"
    name = backend if isinstance(backend, str) else type(backend).__name__
    options = sorted((k, str(v)) for k, v in (backend_options or {}).items())
    return RunManifest(folder, {"input": given, "n_obs": int(adata.n_obs), "backend": name,
                                "model": model, "options": options, "settings": settings})


def _replica_pool(backend, model: str | None, backend_options: dict | None, ray_run: _RayRun,
                  batch_size: int) -> tuple[Backend, bool]:
    """The Ray engine's pool of backend replicas (the backend must be given by name)."""
    if isinstance(backend, Backend):
        raise InputError("engine='ray' runs a prompt backend as replicas on the workers: give "
                         "it by name (backend='openai', backend_options={...}), not as an "
                         "object.")
    from ..distributed.prompts import ReplicaPool

    options = dict(backend_options or {})
    if model is not None:
        options["model"] = model
    return ReplicaPool(backend, options, ray_run.cluster, block_size=batch_size,
                       num_gpus=ray_run.num_gpus, manifest=ray_run.manifest), True


def _check_options(mode: str, n: int, batch_size: int, key_added: str, cluster_markers,
                   chunk_size: int | None = None) -> None:
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not '{mode}'.")
    if int(n) < 1:
        raise InputError(f"n (self-consistency samples) must be at least 1, not {n}.")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}.")
    if chunk_size is not None and int(chunk_size) < 1:
        raise InputError(f"chunk_size (--chunk-size) must be at least 1, not {chunk_size}.")
    from ..checks import check_key_added

    check_key_added(key_added)
    if cluster_markers is not None and mode != "cluster":
        raise InputError("cluster_markers (--cluster-markers) give the marker genes of each "
                         "cluster and only "
                         f"apply to mode='cluster', not mode='{mode}'.")


def _backend(backend, model: str | None, backend_options: dict | None) -> tuple[Backend, bool]:
    """(the backend, whether this run made it and must close it)."""
    options = dict(backend_options or {})
    if model is not None:
        options["model"] = model
    if isinstance(backend, Backend):
        if options:
            raise InputError("model/backend_options only apply to a backend given by name.")
        return backend, False
    try:
        return get_backend(backend, **options), True
    except TypeError as exc:  # an option the backend's constructor does not take
        hint = (" markers is the builtin backend's knowledge-base file; for the marker genes "
                "of each cluster pass cluster_markers (--cluster-markers)."
                if "markers" in options else "")
        raise InputError(f"Backend '{backend}' does not accept the option(s) "
                         f"{', '.join(sorted(options))}: {exc}.{hint}") from exc


def _default_gene_list(gene_list, reads: str, source):
    """A matrix backend needs no published list: the local copy if any, else the data's
    own genes (the no-download default); prompt backends get the published list."""
    if gene_list is not None or reads != "matrix":
        return gene_list
    from ..resources import local_gene_list_path

    return local_gene_list_path() or [str(g) for g in source.var_names]


def _validate(adata, layer, use_raw: bool, genes, label_key, mode: str, by) -> None:
    from ..checks import check_obs_column, validate_for_annotation

    validate_for_annotation(adata, layer="raw" if use_raw else layer, genes=genes)
    if label_key is not None:
        check_obs_column(adata, label_key)
    if mode != "cell" and by not in (None, "leiden"):
        check_obs_column(adata, by, "Cluster", "Or pass by='leiden' to compute clusters.")


def _gene_vocab(gene_list) -> list[str]:
    from ..resources import load_gene_list

    if gene_list is None or isinstance(gene_list, str | os.PathLike):
        return load_gene_list(gene_list)
    genes = [str(g) for g in gene_list]
    if not genes:
        raise InputError("gene_list is empty.")
    return genes


def _gene_list_name(gene_list, genes: list[str]) -> str:
    if gene_list is None:
        from ..resources import ranked_gene_list_path

        return f"{ranked_gene_list_path()} ({len(genes)} genes)"
    if isinstance(gene_list, str | os.PathLike):
        return f"{gene_list} ({len(genes)} genes)"
    return f"custom ({len(genes)} genes)"

