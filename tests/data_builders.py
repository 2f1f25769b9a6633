"""Build real input files (10x h5/mtx, Seurat .rds via R, tables) on disk for reader tests.

The matrices come from real data: the raw counts of ``../shared/data/pbmc_demo.rds``, read
here with ``rdata``'s generic conversion (independently of ``cellreasoner.io``).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import io as spio
from scipy import sparse


def pbmc_demo_counts(rds: Path) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Raw counts of the demo Seurat v5 object: (cells x genes CSR, cell names, gene names)."""
    import rdata

    with warnings.catch_warnings():
        # rdata warns about every S4 class it has no constructor for
        warnings.simplefilter("ignore")
        obj = rdata.conversion.convert(rdata.parser.parse_file(rds))
    assay = obj.assays["RNA"]
    layer = assay.layers["counts"]
    n_genes, n_cells = (int(v) for v in layer.Dim)
    genes_x_cells = sparse.csc_matrix((layer.x, layer.i, layer.p), shape=(n_genes, n_cells))
    cells = np.asarray(assay.cells.coords[assay.cells.dims[0]].values, dtype=str)
    genes = np.asarray(assay.features.coords[assay.features.dims[0]].values, dtype=str)
    return genes_x_cells.T.tocsr(), cells, genes


def fake_ensembl_ids(n: int, prefix: str = "ENSG") -> np.ndarray:
    """Ensembl-shaped IDs (``ENSG00000000001`` ...) standing in for real ones."""
    return np.array([f"{prefix}{i:011d}" for i in range(1, n + 1)])


def write_10x_h5(
    path: Path, counts: sparse.csr_matrix, cells: np.ndarray, genes: np.ndarray, ids: np.ndarray
) -> Path:
    """Write a Cell Ranger v3 ``filtered_feature_bc_matrix.h5`` (CSC genes x cells)."""
    csc = sparse.csr_matrix(counts)  # cells x genes CSR == genes x cells CSC
    n_cells, n_genes = csc.shape
    with h5py.File(path, "w") as fh:
        m = fh.create_group("matrix")
        m.create_dataset("data", data=csc.data.astype(np.int32))
        m.create_dataset("indices", data=csc.indices.astype(np.int64))
        m.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_genes, n_cells], dtype=np.int32))
        m.create_dataset("barcodes", data=np.array(cells, dtype="S"))
        f = m.create_group("features")
        f.create_dataset("id", data=np.array(ids, dtype="S"))
        f.create_dataset("name", data=np.array(genes, dtype="S"))
        f.create_dataset("feature_type", data=np.array(["Gene Expression"] * n_genes, dtype="S"))
        f.create_dataset("genome", data=np.array(["GRCh38"] * n_genes, dtype="S"))
        f.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
    return path


def write_10x_mtx(
    folder: Path,
    counts: sparse.csr_matrix,
    cells: np.ndarray,
    genes: np.ndarray,
    ids: np.ndarray,
    *,
    layout: str = "v3",
) -> Path:
    """Write a 10x matrix-market directory.

    ``layout``: ``"v3"`` (matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz), ``"v2"`` (matrix.mtx,
    genes.tsv, barcodes.tsv) or ``"v3-plain"`` (v3 names without gzip).
    """
    folder.mkdir(parents=True, exist_ok=True)
    gz = layout == "v3"
    feat_name = "genes.tsv" if layout == "v2" else "features.tsv"
    suffix = ".gz" if gz else ""
    plain = folder / "matrix.mtx"
    spio.mmwrite(plain, sparse.coo_matrix(counts.T.astype(np.int64)), field="integer")
    if layout == "v2":
        feats = pd.DataFrame({"id": ids, "name": genes})
    else:
        feats = pd.DataFrame({"id": ids, "name": genes, "type": "Gene Expression"})
    feats.to_csv(folder / feat_name, sep="\t", header=False, index=False)
    pd.Series(cells).to_csv(folder / "barcodes.tsv", sep="\t", header=False, index=False)
    if gz:
        for name in ("matrix.mtx", feat_name, "barcodes.tsv"):
            target = folder / f"{name}{suffix}"
            with open(folder / name, "rb") as src, gzip.open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            (folder / name).unlink()
    return folder


def need_rscript() -> str:
    """Path of ``Rscript``; skip when absent locally, fail in CI (where R is installed)."""
    exe = shutil.which("Rscript")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Rscript is missing: CI installs r-base-core and r-cran-seuratobject")
        pytest.skip("Rscript is not installed on this machine (needed to build Seurat objects)")
    return exe


def run_r(code: str, cwd: Path) -> None:
    """Run R code in ``cwd``; a failure shows R's own error output."""
    exe = need_rscript()
    script = cwd / "script.R"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run(
        [exe, "--vanilla", str(script)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"R failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


#: Seurat v4 ``pbmc_small`` plus an ADT assay, and what R itself reports about them.
SEURAT_V4_R = r"""
suppressMessages(library(SeuratObject))
data(pbmc_small)
obj <- UpdateSeuratObject(pbmc_small)
saveRDS(pbmc_small, "pbmc_small_raw.rds")
counts <- GetAssayData(obj, slot = "counts", assay = "RNA")
adt <- CreateAssayObject(counts = counts[1:20, ])
obj[["ADT"]] <- adt
saveRDS(obj, "pbmc_small_v4.rds")
saveRDS(obj, "pbmc_small_xz.rds", compress = "xz")
saveRDS(obj, "pbmc_small_plain.rds", compress = FALSE)
data <- GetAssayData(obj, slot = "data", assay = "RNA")
write.csv(data.frame(cell = colnames(counts), counts_sum = Matrix::colSums(counts),
                     data_sum = Matrix::colSums(data), nnz = Matrix::colSums(counts != 0),
                     adt_sum = Matrix::colSums(GetAssayData(obj, slot = "counts", assay = "ADT"))),
          "r_cells.csv", row.names = FALSE)
write.csv(data.frame(gene = rownames(counts), counts_sum = Matrix::rowSums(counts)),
          "r_genes.csv", row.names = FALSE)
write.csv(obj@meta.data, "r_meta.csv")
writeLines(DefaultAssay(obj), "r_active.txt")
saveRDS(data.frame(a = 1:3, b = c("x", "y", "z")), "data_frame.rds")
saveRDS(1:10, "vector.rds")
obj[["LOG"]] <- CreateAssayObject(data = data[1:30, ])  # v4 assay with data only
saveRDS(obj, "pbmc_small_log.rds")
md <- pbmc_small@meta.data  # meta.data columns rdata cannot turn into a pandas column
md$lst <- I(as.list(seq_len(nrow(md))))
md$mat <- matrix(seq_len(2 * nrow(md)), ncol = 2)
attr(pbmc_small, "meta.data") <- md
saveRDS(pbmc_small, "pbmc_small_exotic.rds")
"""

#: The demo v5 object with its counts split into two interleaved layers (as Seurat's split()
#: does), built without SeuratObject v5 by editing the serialized slots directly.
SEURAT_V5_SPLIT_R = r"""
x <- readRDS("{src}")
a <- x@assays$RNA
layers <- attr(a, "layers")
cells <- rownames(attr(a, "cells"))
g1 <- seq(1, length(cells), by = 2); g2 <- seq(2, length(cells), by = 2)
cnt <- layers$counts
newl <- list(counts.1 = cnt[, g1], counts.2 = cnt[, g2], data = layers$data)
cm <- matrix(FALSE, nrow = length(cells), ncol = 3, dimnames = list(cells, names(newl)))
cm[g1, "counts.1"] <- TRUE; cm[g2, "counts.2"] <- TRUE; cm[, "data"] <- TRUE
orig <- attr(a, "features")
fm <- matrix(TRUE, nrow = nrow(orig), ncol = 3, dimnames = list(rownames(orig), names(newl)))
attr(cm, "class") <- attr(attr(a, "cells"), "class"); cm <- asS4(cm)
attr(fm, "class") <- attr(orig, "class"); fm <- asS4(fm)
attr(a, "layers") <- newl; attr(a, "cells") <- cm; attr(a, "features") <- fm
assays <- x@assays; assays$RNA <- a; attr(x, "assays") <- assays
saveRDS(x, "pbmc_demo_split.rds")
only <- list(counts = cnt)  # a v5 assay holding counts only
cm1 <- matrix(TRUE, nrow = length(cells), ncol = 1, dimnames = list(cells, "counts"))
fm1 <- matrix(TRUE, nrow = nrow(orig), ncol = 1, dimnames = list(rownames(orig), "counts"))
attr(cm1, "class") <- attr(cm, "class"); cm1 <- asS4(cm1)
attr(fm1, "class") <- attr(fm, "class"); fm1 <- asS4(fm1)
attr(a, "layers") <- only; attr(a, "cells") <- cm1; attr(a, "features") <- fm1
assays$RNA <- a; attr(x, "assays") <- assays
saveRDS(x, "pbmc_demo_counts_only.rds")
setClass("MatrixDir", representation(dir = "character"))  # stands in for an on-disk BPCells layer
attr(a, "layers") <- list(counts = new("MatrixDir", dir = "/somewhere"))
assays$RNA <- a; attr(x, "assays") <- assays
saveRDS(x, "pbmc_demo_ondisk.rds")
"""
