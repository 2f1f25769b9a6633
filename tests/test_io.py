"""Readers for real inputs: h5ad, Seurat .rds (v4 from R, v5 demo), 10x h5/mtx, tables."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from data_builders import (
    SEURAT_V4_R,
    SEURAT_V5_SPLIT_R,
    fake_ensembl_ids,
    pbmc_demo_counts,
    run_r,
    write_10x_h5,
    write_10x_mtx,
)
from scipy import sparse

from cellreasoner.checks import check_gene_overlap, expression_kind, validate_for_annotation
from cellreasoner.errors import InputError
from cellreasoner.io import UNS_KEY, gene_symbols, read

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_counts(pbmc_demo_rds):
    """(cells x genes CSR counts, cells, genes) of the demo object, read independently."""
    return pbmc_demo_counts(pbmc_demo_rds)


@pytest.fixture(scope="session")
def r_dir(tmp_path_factory) -> Path:
    """Seurat v4 objects and R's own summaries of them (needs Rscript)."""
    d = tmp_path_factory.mktemp("seurat_r")
    run_r(SEURAT_V4_R, d)
    return d


@pytest.fixture(scope="session")
def split_rds(tmp_path_factory, pbmc_demo_rds) -> Path:
    d = tmp_path_factory.mktemp("seurat_split")
    run_r(SEURAT_V5_SPLIT_R.replace("{src}", str(pbmc_demo_rds)), d)
    return d / "pbmc_demo_split.rds"


def dense(m) -> np.ndarray:
    return m.toarray() if sparse.issparse(m) else np.asarray(m)


# --------------------------------------------------------------------------------------------
# Seurat v5 (the real demo object)
# --------------------------------------------------------------------------------------------


def test_seurat_v5_demo(pbmc_demo_rds, demo_counts):
    adata = read(pbmc_demo_rds)
    counts, cells, genes = demo_counts
    assert adata.shape == (35, 13714)
    assert list(adata.obs_names) == list(cells)
    assert list(adata.var_names) == list(genes)
    assert sparse.isspmatrix_csr(adata.X) or isinstance(adata.X, sparse.csr_array)
    assert set(adata.layers) == {"counts", "data"}
    assert (adata.layers["counts"] != counts).nnz == 0
    info = adata.uns[UNS_KEY]
    assert info["format"] == "seurat" and info["x"] == "data" and info["assay"] == "RNA"
    assert info["assay_class"] == "Assay5" and info["seurat_version"].startswith("5.")
    labels = adata.obs["seurat_annotations"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert labels.value_counts().loc[lambda n: n > 0].tolist() == [5] * 7  # R keeps unused levels
    # meta.data was computed by Seurat in R: it must agree with the matrix we read
    c = adata.layers["counts"]
    np.testing.assert_allclose(np.asarray(c.sum(axis=1)).ravel(), adata.obs["nCount_RNA"])
    np.testing.assert_array_equal(np.diff(c.indptr), adata.obs["nFeature_RNA"].astype(int))
    # the demo's 'data' layer holds integer values: the kind is reported honestly
    assert expression_kind(adata) == "counts"


def test_seurat_layer_choice_and_missing_assay(pbmc_demo_rds):
    adata = read(pbmc_demo_rds, layer="counts")
    assert adata.uns[UNS_KEY]["x"] == "counts"
    assert (adata.layers["counts"] != adata.X).nnz == 0
    assert not np.shares_memory(adata.X.data, adata.layers["counts"].data)  # safe to normalise X
    with pytest.raises(InputError, match=r"no assay 'ADT'.*available assays: RNA"):
        read(pbmc_demo_rds, assay="ADT")
    with pytest.raises(InputError, match=r"no layer 'scale.data'.*counts, data"):
        read(pbmc_demo_rds, layer="scale.data")


def test_seurat_v5_split_layers_are_joined(split_rds, pbmc_demo_rds, caplog):
    whole = read(pbmc_demo_rds)
    with caplog.at_level(logging.INFO, logger="cellreasoner.io"):
        split = read(split_rds)
    assert "joined split layers counts.1, counts.2" in caplog.text
    assert list(split.obs_names) == list(whole.obs_names)
    assert (split.layers["counts"] != whole.layers["counts"]).nnz == 0
    assert (split.X != whole.X).nnz == 0
    assert split.obs["seurat_annotations"].tolist() == whole.obs["seurat_annotations"].tolist()


def test_seurat_v5_counts_only_and_on_disk_layers(split_rds):
    only = read(split_rds.parent / "pbmc_demo_counts_only.rds")
    assert only.uns[UNS_KEY]["x"] == "counts" and only.uns[UNS_KEY]["layers"] == ["counts"]
    assert only.shape == (35, 13714) and not only.layers
    with pytest.raises(InputError, match=r"no layer 'data'; available: counts"):
        read(split_rds.parent / "pbmc_demo_counts_only.rds", layer="data")
    with pytest.raises(InputError, match=r"'counts' is stored as an R 'MatrixDir'.*dgCMatrix"):
        read(split_rds.parent / "pbmc_demo_ondisk.rds")


# --------------------------------------------------------------------------------------------
# Seurat v4 (pbmc_small saved by R) checked against what R reports
# --------------------------------------------------------------------------------------------


def test_seurat_v4_matches_r(r_dir):
    adata = read(r_dir / "pbmc_small_v4.rds")
    r_cells = pd.read_csv(r_dir / "r_cells.csv")
    r_genes = pd.read_csv(r_dir / "r_genes.csv")
    r_meta = pd.read_csv(r_dir / "r_meta.csv", index_col=0)
    active = (r_dir / "r_active.txt").read_text().strip()
    info = adata.uns[UNS_KEY]
    assert info["assay"] == active == "RNA" and info["assay_class"] == "Assay"
    assert info["x"] == "data"
    assert adata.shape == (80, 230)
    assert list(adata.obs_names) == r_cells["cell"].tolist() == list(r_meta.index)
    assert list(adata.var_names) == r_genes["gene"].tolist()
    np.testing.assert_allclose(np.asarray(adata.X.sum(axis=1)).ravel(), r_cells["data_sum"])
    counts = adata.layers["counts"]
    np.testing.assert_allclose(np.asarray(counts.sum(axis=1)).ravel(), r_cells["counts_sum"])
    np.testing.assert_allclose(np.asarray(counts.sum(axis=0)).ravel(), r_genes["counts_sum"])
    np.testing.assert_array_equal(np.diff(sparse.csr_matrix(counts).indptr), r_cells["nnz"])
    for col in ("orig.ident", "RNA_snn_res.0.8", "letter.idents", "RNA_snn_res.1"):
        assert isinstance(adata.obs[col].dtype, pd.CategoricalDtype), col
        assert adata.obs[col].astype(str).tolist() == r_meta[col].astype(str).tolist(), col
    assert adata.obs["groups"].tolist() == r_meta["groups"].tolist()
    np.testing.assert_allclose(adata.obs["nCount_RNA"], r_meta["nCount_RNA"])
    assert expression_kind(adata) == "lognorm"
    assert expression_kind(adata, layer="counts") == "counts"
    # var carries the assay's meta.features
    assert "vst.variable" in adata.var.columns


def test_seurat_v4_second_assay_and_old_object(r_dir):
    adt = read(r_dir / "pbmc_small_v4.rds", assay="ADT")
    r_cells = pd.read_csv(r_dir / "r_cells.csv")
    assert adt.shape == (80, 20) and adt.uns[UNS_KEY]["assay"] == "ADT"
    np.testing.assert_allclose(np.asarray(adt.layers["counts"].sum(axis=1)).ravel(),
                               r_cells["adt_sum"])
    for other in ("pbmc_small_xz.rds", "pbmc_small_plain.rds"):  # any saveRDS compression
        again = read(r_dir / other, assay="ADT")
        assert (again.X != adt.X).nnz == 0 and again.obs.equals(adt.obs)
    log_only = read(r_dir / "pbmc_small_log.rds", assay="LOG")  # data without counts
    assert log_only.shape == (80, 30) and log_only.uns[UNS_KEY]["x"] == "data"
    assert not log_only.layers and expression_kind(log_only) == "lognorm"
    with pytest.raises(InputError, match=r"no assay 'SCT'.*RNA, ADT"):
        read(r_dir / "pbmc_small_v4.rds", assay="SCT")
    # pbmc_small exactly as shipped (an older object, saved without UpdateSeuratObject)
    old = read(r_dir / "pbmc_small_raw.rds")
    assert old.shape == (80, 230)
    np.testing.assert_allclose(np.asarray(old.layers["counts"].sum(axis=1)).ravel(),
                               r_cells["counts_sum"])


def test_seurat_exotic_metadata_columns_are_skipped_not_fatal(r_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="cellreasoner.io"):
        adata = read(r_dir / "pbmc_small_exotic.rds")
    assert "meta.data columns lst, mat could not be converted" in caplog.text
    r_meta = pd.read_csv(r_dir / "r_meta.csv", index_col=0)
    plain = read(r_dir / "pbmc_small_raw.rds")  # the same object without the two columns
    assert list(adata.obs.columns) == list(plain.obs.columns)
    assert list(adata.obs_names) == list(r_meta.index)
    assert adata.obs["letter.idents"].astype(str).tolist() == r_meta["letter.idents"].tolist()


def test_seurat_roundtrips_to_h5ad(r_dir, tmp_path):
    adata = read(r_dir / "pbmc_small_v4.rds")
    out = tmp_path / "small.h5ad"
    adata.write_h5ad(out)
    back = read(out)
    assert back.shape == adata.shape
    assert back.obs["groups"].astype(str).tolist() == adata.obs["groups"].astype(str).tolist()


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("data_frame.rds", r"data_frame.rds holds an R object of class data.frame, not a Seurat"),
        ("vector.rds", r"vector.rds holds an integer vector, not a Seurat object"),
    ],
)
def test_rds_not_seurat(r_dir, name, pattern):
    with pytest.raises(InputError, match=pattern):
        read(r_dir / name)


def test_rds_corrupt_files(tmp_path, pbmc_demo_rds):
    rnd = tmp_path / "random.rds"
    rnd.write_bytes(gzip.compress(np.random.default_rng(0).bytes(4000)))
    with pytest.raises(InputError, match=r"random.rds as an R .rds file.*gzip-compressed"):
        read(rnd)
    cut = tmp_path / "cut.rds"
    cut.write_bytes(pbmc_demo_rds.read_bytes()[: pbmc_demo_rds.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut.rds as an R .rds file.*truncated"):
        read(cut)
    text = tmp_path / "notes.rds"
    text.write_text("cell,gene\n")
    with pytest.raises(InputError, match="notes.rds as an R .rds file"):
        read(text)


# --------------------------------------------------------------------------------------------
# .h5ad
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pbmc68k_h5ad(pbmc68k, tmp_path) -> Path:
    path = tmp_path / "pbmc68k.h5ad"
    pbmc68k.write_h5ad(path)
    return path


def test_h5ad_in_memory_and_layers(pbmc68k_h5ad, pbmc68k):
    adata = read(pbmc68k_h5ad)
    assert adata.shape == pbmc68k.shape
    assert adata.uns[UNS_KEY]["format"] == "h5ad" and adata.uns[UNS_KEY]["x"] == "X"
    # pbmc68k_reduced's X is scaled: the error names the layers to use instead
    with pytest.raises(InputError, match=r"negative values.*scaled.*'raw' \(adata.raw\)"):
        expression_kind(adata)
    assert expression_kind(adata, layer="raw") == "lognorm"
    raw = read(pbmc68k_h5ad, layer="raw")
    assert raw.shape == pbmc68k.raw.shape and raw.uns[UNS_KEY]["x"] == "raw"
    np.testing.assert_allclose(dense(raw.X), dense(pbmc68k.raw.X))
    pbmc68k.layers["lognorm"] = pbmc68k.raw.to_adata()[:, pbmc68k.var_names].X
    pbmc68k.write_h5ad(pbmc68k_h5ad)
    from_layer = read(pbmc68k_h5ad, layer="lognorm")
    assert from_layer.uns[UNS_KEY]["x"] == "layers['lognorm']"
    np.testing.assert_allclose(dense(from_layer.X), dense(pbmc68k.layers["lognorm"]))
    assert expression_kind(from_layer) == "lognorm"
    with pytest.raises(InputError, match=r"no layer 'spliced'.*X \(layer=None\)"):
        read(pbmc68k_h5ad, layer="spliced")


def test_h5ad_backed_does_not_load_x(tmp_path, demo_counts):
    counts, cells, genes = demo_counts
    path = tmp_path / "backed.h5ad"
    ad.AnnData(X=counts.astype(np.float32), obs=pd.DataFrame(index=cells),
               var=pd.DataFrame(index=genes)).write_h5ad(path)
    adata = read(path, backed="r")
    assert adata.isbacked and adata.uns[UNS_KEY]["backed"] is True
    assert not sparse.issparse(adata.X) and not isinstance(adata.X, np.ndarray)
    assert expression_kind(adata) == "counts"
    summary = validate_for_annotation(adata)
    assert summary["empty_cells"] == 0 and summary["expression_kind"] == "counts"
    # CSC on disk: read column blocks, still without loading X
    path_csc = tmp_path / "csc.h5ad"
    ad.AnnData(X=sparse.csc_matrix(counts, dtype=np.float32), obs=pd.DataFrame(index=cells),
               var=pd.DataFrame(index=genes)).write_h5ad(path_csc)
    csc = read(path_csc, backed="r")
    assert csc.X.format == "csc" and expression_kind(csc) == "counts"
    assert validate_for_annotation(csc)["empty_cells"] == 0
    # dense backed X too
    path2 = tmp_path / "dense.h5ad"
    ad.AnnData(X=np.log1p(counts[:10].toarray()), obs=pd.DataFrame(index=cells[:10]),
               var=pd.DataFrame(index=genes)).write_h5ad(path2)
    backed = read(path2, backed=True)
    assert isinstance(backed.X, h5py.Dataset)
    assert expression_kind(backed) == "lognorm"
    with pytest.raises(InputError, match="cannot replace X in backed mode"):
        read(path2, backed="r", layer="counts")


def test_h5ad_corrupt(tmp_path, pbmc68k_h5ad):
    fake = tmp_path / "fake.h5ad"
    fake.write_text("barcode,CD3E\nAAAC,1\n")
    with pytest.raises(InputError, match=r"fake.h5ad is not an HDF5 file"):
        read(fake)
    half = tmp_path / "half.h5ad"
    half.write_bytes(pbmc68k_h5ad.read_bytes()[: pbmc68k_h5ad.stat().st_size // 2])
    with pytest.raises(InputError, match=r"half.h5ad.*truncated or corrupted"):
        read(half)
    with pytest.raises(InputError, match=r"half.h5ad.*truncated or corrupted"):
        read(half, backed="r")


# --------------------------------------------------------------------------------------------
# 10x Genomics
# --------------------------------------------------------------------------------------------


def test_10x_h5(tmp_path, demo_counts):
    counts, cells, genes = demo_counts
    ids = fake_ensembl_ids(len(genes))
    path = write_10x_h5(tmp_path / "filtered_feature_bc_matrix.h5", counts, cells, genes, ids)
    adata = read(path)
    assert adata.shape == counts.shape
    assert list(adata.obs_names) == list(cells) and list(adata.var_names) == list(genes)
    assert adata.var["gene_ids"].tolist() == list(ids)
    np.testing.assert_array_equal(dense(adata.X), counts.toarray())
    assert adata.uns[UNS_KEY]["format"] == "10x_h5"
    assert expression_kind(adata) == "counts"


def test_10x_h5_errors(tmp_path):
    not_h5 = tmp_path / "matrix.h5"
    not_h5.write_text("hello")
    with pytest.raises(InputError, match="matrix.h5 is not an HDF5 file"):
        read(not_h5)
    wrong = tmp_path / "other.h5"
    with h5py.File(wrong, "w") as fh:
        fh.create_dataset("weights", data=np.arange(3))
    with pytest.raises(InputError, match=r"other.h5 as a 10x.*groups found: weights"):
        read(wrong)


@pytest.mark.parametrize("layout", ["v3", "v2", "v3-plain"])
def test_10x_mtx_layouts(tmp_path, demo_counts, layout):
    counts, cells, genes = demo_counts
    sub = counts[:, :3000]
    folder = write_10x_mtx(tmp_path / "mtx", sub, cells, genes[:3000],
                           fake_ensembl_ids(3000), layout=layout)
    adata = read(folder)
    assert adata.shape == sub.shape
    assert list(adata.obs_names) == list(cells)
    np.testing.assert_array_equal(dense(adata.X), sub.toarray())
    assert adata.uns[UNS_KEY]["format"] == "10x_mtx"
    matrix_file = next(folder.glob("matrix.mtx*"))
    assert read(matrix_file).shape == sub.shape  # the matrix file itself names its folder


def test_10x_mtx_errors(tmp_path, demo_counts):
    counts, cells, genes = demo_counts
    folder = write_10x_mtx(tmp_path / "mtx", counts[:, :50], cells, genes[:50],
                           fake_ensembl_ids(50), layout="v3-plain")
    (folder / "barcodes.tsv").unlink()
    with pytest.raises(InputError, match=r"not a 10x matrix-market directory: missing barcodes"):
        read(folder)
    pd.Series(cells[:10]).to_csv(folder / "barcodes.tsv", header=False, index=False)
    with pytest.raises(InputError, match=r"features.tsv lists 50 genes and barcodes.tsv 10"):
        read(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="missing matrix.mtx"):
        read(empty)


# --------------------------------------------------------------------------------------------
# dense tables
# --------------------------------------------------------------------------------------------


def test_csv_cells_by_genes(tmp_path, demo_counts):
    counts, cells, genes = demo_counts
    df = pd.DataFrame(counts[:, :200].toarray(), index=cells, columns=genes[:200])
    path = tmp_path / "cells.txt"  # the separator is sniffed, not taken from the extension
    df.to_csv(path)
    adata = read(path)
    assert adata.shape == (35, 200) and list(adata.obs_names) == list(cells)
    assert adata.uns[UNS_KEY]["orientation"] == "cells x genes"
    np.testing.assert_array_equal(dense(adata.X), df.to_numpy())


def test_tsv_genes_by_cells_is_transposed(tmp_path, demo_counts, caplog):
    counts, cells, genes = demo_counts
    barcodes = [f"{c}-1" for c in cells]
    df = pd.DataFrame(counts[:, :300].toarray().T, index=genes[:300], columns=barcodes)
    path = tmp_path / "genes.tsv.gz"
    df.to_csv(path, sep="\t")
    with caplog.at_level(logging.INFO, logger="cellreasoner.io"):
        adata = read(path)
    assert "reading the transpose" in caplog.text
    assert adata.shape == (35, 300) and list(adata.obs_names) == barcodes
    assert adata.uns[UNS_KEY]["orientation"] == "genes x cells (transposed)"
    np.testing.assert_array_equal(dense(adata.X), df.to_numpy().T)


def test_genes_by_cells_detected_by_gene_list(tmp_path, demo_counts):
    counts, _, genes = demo_counts
    names = [f"cell_{i}" for i in range(35)]  # not barcodes: the gene list decides
    df = pd.DataFrame(counts[:, :300].toarray().T, index=genes[:300], columns=names)
    path = tmp_path / "table.csv.gz"
    df.to_csv(path)
    adata = read(path)
    assert adata.shape == (35, 300) and list(adata.obs_names) == names


def test_table_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("cell,CD3E,label\nc1,1,T\nc2,0,B\n")
    with pytest.raises(InputError, match=r"bad.csv: 1 column\(s\) are not numeric.*'label'"):
        read(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("cell\n")
    with pytest.raises(InputError, match="empty.csv"):
        read(empty)


# --------------------------------------------------------------------------------------------
# paths and formats
# --------------------------------------------------------------------------------------------


def test_missing_and_unknown_inputs(tmp_path):
    with pytest.raises(InputError, match=r"Input not found: .*nope.h5ad"):
        read(tmp_path / "nope.h5ad")
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"PK")
    with pytest.raises(InputError, match=r"data.xlsx: unknown input format '.xlsx'"):
        read(odd)
    table = tmp_path / "t.csv"
    table.write_text("cell,A\nc1,1\n")
    with pytest.raises(InputError, match="backed mode is only available for .h5ad"):
        read(table, backed="r")
    with pytest.raises(InputError, match="assay='RNA' only applies to Seurat"):
        read(table, assay="RNA")


# --------------------------------------------------------------------------------------------
# gene symbols
# --------------------------------------------------------------------------------------------


@pytest.fixture
def ensembl_adata(demo_counts) -> ad.AnnData:
    counts, cells, genes = demo_counts
    var = pd.DataFrame({"gene_symbols": genes[:2000]}, index=fake_ensembl_ids(2000))
    var.iloc[5, 0] = var.iloc[3, 0]  # one duplicated symbol
    return ad.AnnData(X=counts[:, :2000].astype(np.float32), obs=pd.DataFrame(index=cells),
                      var=var)


def test_ensembl_ids_use_symbol_column(ensembl_adata, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cellreasoner.io"):
        gs = gene_symbols(ensembl_adata)
    assert gs.column == "gene_symbols"
    assert "using gene symbols from var['gene_symbols']" in caplog.text
    assert gs.n_duplicates == 1 and not gs.first[5] and gs.first.sum() == 1999
    assert "1 genes repeat an earlier gene symbol" in caplog.text
    assert gs.symbols[0] == ensembl_adata.var["gene_symbols"].iloc[0]
    path = tmp_path / "ens.h5ad"
    ensembl_adata.write_h5ad(path)
    for backed in (False, "r"):
        got = read(path, backed=backed)
        info = got.uns[UNS_KEY]
        assert info["gene_symbols"] == "gene_symbols" and info["original_var_names"] == "gene_ids"
        assert list(got.var["gene_ids"]) == list(ensembl_adata.var_names)
        symbols = ensembl_adata.var["gene_symbols"].tolist()
        assert list(got.var_names[:5]) == symbols[:3] + [symbols[3], symbols[4]]
        assert got.var_names[5] == f"{symbols[3]}-1"  # the repeat no longer matches a gene list
        assert got.var_names.is_unique
    forced = gene_symbols(ensembl_adata, gene_symbols="var_names")
    assert forced.column is None and forced.symbols[0].startswith("ENSG")
    with pytest.raises(InputError, match=r"gene_symbols='symbol' is not a var column.*symbols"):
        read(path, gene_symbols="symbol")


def test_ensembl_without_symbols_warns_and_overlap_fails(ensembl_adata, gene_list_path, caplog):
    ensembl_adata.var = ensembl_adata.var.drop(columns="gene_symbols")
    genes = gene_list_path.read_text().split()
    with caplog.at_level(logging.WARNING, logger="cellreasoner.io"):
        gs = gene_symbols(ensembl_adata)
    assert gs.column is None and "no gene-symbol column was found" in caplog.text
    with pytest.raises(InputError, match=r"none of the 10000 genes.*ENSG0.*Ensembl IDs"):
        check_gene_overlap(ensembl_adata, genes)


# --------------------------------------------------------------------------------------------
# expression kind, validation, gene overlap
# --------------------------------------------------------------------------------------------


def test_expression_kind_rejects_nan_and_lists_layers(demo_counts):
    counts, cells, genes = demo_counts
    x = counts.astype(np.float64)
    adata = ad.AnnData(X=x.copy(), obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    adata.layers["log"] = x.log1p()
    assert expression_kind(adata) == "counts"
    assert expression_kind(adata, layer="log") == "lognorm"
    adata.X.data[10] = np.nan
    with pytest.raises(InputError, match=r"X contains NaN or infinite.*'log'"):
        expression_kind(adata)
    dense_scaled = ad.AnnData(X=np.array([[0.0, -1.2], [0.5, 2.0]]))
    with pytest.raises(InputError, match=r"negative values \(min -1.2\)"):
        expression_kind(dense_scaled)
    zeros = ad.AnnData(X=sparse.csr_matrix((3, 4)))
    with pytest.raises(InputError, match="X has no non-zero values"):
        expression_kind(zeros)


def test_validate_empty_and_duplicate_cells(demo_counts):
    counts, cells, genes = demo_counts
    x = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
    for row in (2, 7):  # two cells lose every gene; the zeros stay stored explicitly
        x.data[x.indptr[row] : x.indptr[row + 1]] = 0
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    with pytest.raises(InputError, match=rf"2 of 35 cells have no expressed gene.*{cells[2]}"):
        validate_for_annotation(adata)
    summary = validate_for_annotation(adata, allow_empty=True)
    assert summary["empty_cells"] == 2 and summary["expression_kind"] == "counts"
    assert summary["n_cells"] == 35 and summary["gene_symbols"] is None
    csc = ad.AnnData(X=sparse.csc_matrix(x), obs=adata.obs, var=adata.var)
    assert validate_for_annotation(csc, allow_empty=True)["empty_cells"] == 2
    dup = adata.copy()
    names = list(cells)
    names[3] = names[0]
    dup.obs_names = names
    with pytest.raises(InputError, match=rf"1 cell names occur more than once.*{names[0]}"):
        validate_for_annotation(dup)


def test_gene_overlap(pbmc_demo_rds, gene_list_path):
    adata = read(pbmc_demo_rds)
    genes = gene_list_path.read_text().split()
    result = check_gene_overlap(adata, genes)
    assert 0 < result["n_matched"] <= len(genes)
    assert all(g in set(adata.var_names) for g in result["examples"])
    assert check_gene_overlap(adata)["n_matched"] == result["n_matched"]  # default list ($env)
    summary = validate_for_annotation(adata, genes=genes)
    assert summary["genes_matched"] == result["n_matched"]
    renamed = [g.capitalize() for g in adata.var_names]
    keep = [i for i, g in enumerate(renamed) if g != adata.var_names[i]]
    mouse = adata[:, keep].copy()
    mouse.var_names = [renamed[i] for i in keep]  # mouse-style symbols: Cd3e, not CD3E
    with pytest.raises(InputError, match=r"none of the 10000 genes.*match when ignoring case"):
        check_gene_overlap(mouse, genes)


def test_validate_reports_source_file(pbmc_demo_rds):
    adata = read(pbmc_demo_rds)
    adata.obs_names = ["same"] * adata.n_obs
    with pytest.raises(InputError, match=rf"{os.path.basename(pbmc_demo_rds)}: 34 cell names"):
        validate_for_annotation(adata)


def test_seurat_upstream_assay_rule(r_dir, caplog):
    """assay='upstream' reads 'integrated' when present, else 'RNA' (upstream's
    s01.process_rds.R), whatever the active assay; an unnamed choice among several assays
    is said."""
    from data_builders import run_r

    run_r('suppressMessages(library(SeuratObject))\n'
          'obj <- readRDS("pbmc_small_v4.rds")\n'
          'obj[["integrated"]] <- CreateAssayObject(data = GetAssayData(obj, slot = "data")'
          '[1:40, ])\n'
          'DefaultAssay(obj) <- "ADT"\n'
          'saveRDS(obj, "pbmc_small_integrated.rds")\n', r_dir)
    integrated = read(r_dir / "pbmc_small_integrated.rds", assay="upstream")
    assert integrated.uns[UNS_KEY]["assay"] == "integrated" and integrated.n_vars == 40
    rna = read(r_dir / "pbmc_small_v4.rds", assay="upstream")  # RNA + ADT: no integrated
    assert rna.uns[UNS_KEY]["assay"] == "RNA"
    with caplog.at_level("WARNING"):
        active = read(r_dir / "pbmc_small_integrated.rds")
    assert active.uns[UNS_KEY]["assay"] == "ADT"
    assert "3 assays" in caplog.text and "'upstream'" in caplog.text
    run_r('suppressMessages(library(SeuratObject))\n'
          'obj <- readRDS("pbmc_small_v4.rds")\n'
          'DefaultAssay(obj) <- "ADT"; obj[["RNA"]] <- NULL\n'
          'saveRDS(obj, "pbmc_small_no_rna.rds")\n', r_dir)
    with pytest.raises(InputError, match="has neither; available assays: ADT"):
        read(r_dir / "pbmc_small_no_rna.rds", assay="upstream")
