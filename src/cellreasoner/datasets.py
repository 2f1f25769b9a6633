"""Built-in example datasets and input resolution for the CLI."""

from __future__ import annotations

#: Names the CLI accepts instead of a path.
EXAMPLES = ("pbmc68k_reduced", "pbmc_demo")


def pbmc68k_reduced():
    """scanpy's 700-PBMC example with log-normalised ``.raw`` promoted to ``X``.

    ``obs["bulk_labels"]`` holds the labels; the UMAP and clusters are kept.
    """
    import scanpy as sc

    ad = sc.datasets.pbmc68k_reduced()
    full = ad.raw.to_adata()
    full.obsm = ad.obsm.copy()
    full.obsp = ad.obsp.copy()
    full.uns = {k: v for k, v in ad.uns.items() if k in ("neighbors", "louvain", "pca")}
    return full


def pbmc_demo():
    """The CellReasoner demo (35 PBMC3k cells, Seurat v5), fetched once with a pinned hash."""
    from .io import read
    from .resources import pbmc_demo_path

    return read(pbmc_demo_path())


def load_example(name: str):
    """The example dataset called ``name`` (one of :data:`EXAMPLES`) as an AnnData."""
    if name == "pbmc68k_reduced":
        return pbmc68k_reduced()
    if name == "pbmc_demo":
        return pbmc_demo()
    raise ValueError(f"No example dataset {name!r}; examples: {', '.join(EXAMPLES)}.")
