"""The calls whose outputs are kept as golden files (see ``make_golden.py``).

Only the public API is used here (``cellreasoner.annotate``, ``read``, ``prepare``,
``evaluate``, ``datasets``), so the same cases run unchanged on any layout of the package.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pandas as pd

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

#: Provenance keys that legitimately differ between runs (time, temporary paths).
VOLATILE_UNS = ("seconds", "cache", "version")


@contextlib.contextmanager
def golden_environment():
    """The environment the golden files were written in: the shared gene list, a fresh cache."""
    old = {k: os.environ.get(k) for k in ("CELLREASONER_GENE_LIST", "CELLREASONER_CACHE")}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CELLREASONER_GENE_LIST"] = str(SHARED_DATA / "ranked_hvg.list")
        os.environ["CELLREASONER_CACHE"] = cache
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _pbmc68k():
    import cellreasoner as cr

    return cr.datasets.pbmc68k_reduced()


def _pbmc_demo():
    import cellreasoner as cr

    return cr.read(SHARED_DATA / "pbmc_demo.rds")


def _tumour():
    import cellreasoner as cr

    return cr.read(SHARED_DATA / "tumour_immune_1000.h5ad")


#: name -> (loader, annotate keyword arguments)
ANNOTATE_CASES = {
    "pbmc68k_cell": (_pbmc68k, {}),
    "pbmc68k_cell_noknn_norefine": (_pbmc68k, {"backend_options": {"refine": False,
                                                                   "smoothing": 0.0}}),
    "pbmc68k_cluster": (_pbmc68k, {"mode": "cluster", "by": "louvain",
                                   "label_key": "bulk_labels"}),
    "pbmc68k_hybrid": (_pbmc68k, {"mode": "hybrid", "by": "louvain"}),
    "pbmc_demo_cell": (_pbmc_demo, {"label_key": "seurat_annotations"}),
    "pbmc_demo_cluster": (_pbmc_demo, {"mode": "cluster", "by": "seurat_annotations"}),
    "pbmc_demo_hybrid": (_pbmc_demo, {"mode": "hybrid", "by": "seurat_annotations"}),
    "tumour_cell": (_tumour, {}),
}


def run_annotate_case(name: str):
    """(result table, the ``obs`` columns written, provenance without volatile keys)."""
    import cellreasoner as cr

    loader, kwargs = ANNOTATE_CASES[name]
    adata = loader()
    res = cr.annotate(adata, progress=False, **kwargs)
    obs = adata.obs[[c for c in adata.obs.columns if c.startswith("cellreasoner_")]]
    uns = {k: _portable(v) for k, v in res.provenance.items() if k not in VOLATILE_UNS}
    return res.table, obs, uns


def _portable(value):
    """Provenance with the shared folder's absolute path (machine-specific) written as
    ``<shared>``."""
    if isinstance(value, str):
        return value.replace(str(SHARED_DATA), "<shared>")
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    return value


#: name -> (loader, prepare keyword arguments, output suffix)
PREPARE_CASES = {
    "pbmc_demo_reasoning_json": (_pbmc_demo, {"reasoning": True}, ".json"),
    "pbmc_demo_labeled_jsonl": (_pbmc_demo, {"label_key": "seurat_annotations"}, ".jsonl"),
    "pbmc68k_labeled_json": (_pbmc68k, {"label_key": "bulk_labels"}, ".json"),
}


def run_prepare_case(name: str, folder: Path) -> Path:
    import cellreasoner as cr

    loader, kwargs, suffix = PREPARE_CASES[name]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}{suffix}"
    cr.prepare(loader(), out, **kwargs)
    return out


EVALUATE_CASES = ("pbmc68k_cell", "pbmc_demo_cell")


def run_evaluate_case(name: str) -> dict[str, pd.DataFrame]:
    import cellreasoner as cr

    loader, kwargs = ANNOTATE_CASES[name]
    adata = loader()
    cr.annotate(adata, progress=False, **kwargs)
    truth = "bulk_labels" if name.startswith("pbmc68k") else "seurat_annotations"
    ev = cr.evaluate(adata, truth=truth)
    return {"summary": ev.summary, "per_label": ev.per_label,
            "per_cell": ev.per_cell}
