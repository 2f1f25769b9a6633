"""Shared fixtures: real data from ../shared and from installed packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"


def _need_shared() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing: CI always has ../shared beside the checkout")
        pytest.skip(f"test data folder {SHARED_DATA} is absent on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project root."""
    return _need_shared()


@pytest.fixture(scope="session")
def gene_list_path(shared_data: Path) -> Path:
    """The ranked 10,000-gene list used by the published models."""
    return shared_data / "ranked_hvg.list"


@pytest.fixture(autouse=True)
def _gene_list_env(monkeypatch, tmp_path_factory):
    """Point the product at the shared gene list and keep caches out of the home folder."""
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("CELLREASONER_GENE_LIST", str(SHARED_DATA / "ranked_hvg.list"))
    monkeypatch.setenv("CELLREASONER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def pbmc_demo_rds(shared_data: Path) -> Path:
    """A real Seurat v5 object: 35 PBMC3k cells, labels in ``seurat_annotations``."""
    return shared_data / "pbmc_demo.rds"


@pytest.fixture(scope="session")
def upstream_prompts_dir(shared_data: Path) -> Path:
    return shared_data / "upstream_prompts"


@pytest.fixture(scope="session")
def _pbmc68k_cached():
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def pbmc68k(_pbmc68k_cached):
    """``scanpy.datasets.pbmc68k_reduced()`` (700 PBMCs; a fresh copy per test)."""
    return _pbmc68k_cached.copy()


@pytest.fixture(scope="session")
def cells_12k(tmp_path_factory) -> Path:
    """12,000 synthetic realistic cells in an ``.h5ad`` (few stored values each: fast), for
    the tests that spread chunks over worker processes or Ray workers."""
    import synthetic

    return synthetic.write_h5ad(tmp_path_factory.mktemp("synthetic") / "cells.h5ad", 12_000,
                                nnz=200, chunk=12_000, seed=3)


@pytest.fixture(scope="session")
def cells_12k_table(cells_12k):
    """The single-process annotation table of :func:`cells_12k`."""
    from cellreasoner import annotate

    return annotate(str(cells_12k), workers=1, progress=False).table


@pytest.fixture(scope="session")
def ray_cluster():
    """A local two-CPU Ray cluster shared by every test file that needs one (a second
    ``ray.init`` in one process is an error); yields its GCS address (for CLI drivers)."""
    ray = pytest.importorskip("ray", reason="the Ray engine's tests need the 'ray' extra")
    if (SHARED_DATA / "ranked_hvg.list").is_file():  # workers inherit this environment
        os.environ.setdefault("CELLREASONER_GENE_LIST", str(SHARED_DATA / "ranked_hvg.list"))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=600 << 20,
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
