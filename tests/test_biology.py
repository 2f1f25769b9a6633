"""The built-in reasoner's biology on small synthetic expression profiles, one decision each,
and the honest cluster mode (a cluster of two types is flagged and stops at their parent).

Each cell expresses only the genes named (log-normalised 2.5); every knowledge-base gene is in
the panel, so a gene not named is measured and absent, unless the test drops it from the panel
(a panel that lacks CD14, or PTPRC, like many real ones).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellreasoner import annotate
from cellreasoner.annotation.vote import MIN_AGREEMENT, consensus_call
from cellreasoner.backends.builtin.reasoner import Reasoner
from cellreasoner.cli import main
from cellreasoner.errors import InputError
from cellreasoner.ontology import get_ontology

T = ["CD3E", "CD3D", "CD3G", "TRAC", "CD2"]
CD8_LINEAGE = "CL:0000625"
CD4_LINEAGE = "CL:0000624"


@pytest.fixture(scope="module")
def reasoner():
    return Reasoner()


def cells(reasoner: Reasoner, profiles: list[list[str]], drop: tuple[str, ...] = (),
          extra: tuple[str, ...] = ()) -> tuple[sp.csr_matrix, list[str]]:
    """One row per profile over the knowledge base's genes (minus ``drop``, plus ``extra``)."""
    genes = [g for g in reasoner.genes if g not in drop] + [g for g in extra
                                                            if g not in reasoner.genes]
    col = {g: j for j, g in enumerate(genes)}
    X = np.zeros((len(profiles), len(genes)), dtype=np.float32)
    for i, p in enumerate(profiles):
        for g in p:
            X[i, col[g]] = 2.5
    return sp.csr_matrix(X), genes


def call(reasoner: Reasoner, profile: list[str], **kw):
    X, genes = cells(reasoner, [profile], **kw)
    res = reasoner.annotate_matrix(X, genes)
    return str(res.label[0]), str(res.ontology_id[0]), float(res.confidence[0])


def under(cl_id: str, ancestor: str) -> bool:
    return bool(cl_id) and (cl_id == ancestor or get_ontology().is_ancestor(ancestor, cl_id))


# --- T-cell subsets ----------------------------------------------------------------------
def test_cd4_programme_without_cd4_reads_is_never_cd8(reasoner):
    label, cl, _ = call(reasoner, T + ["IL7R", "CD40LG"])
    assert under(cl, CD4_LINEAGE) or label == "T cell", label
    assert not under(cl, CD8_LINEAGE)


def test_t_cell_with_neither_side_abstains_to_t_cell(reasoner):
    label, cl, _ = call(reasoner, T + ["CD5", "CD6"])
    assert label == "T cell" and cl == "CL:0000084"


def test_cytotoxic_cd4_stays_cd4(reasoner):
    # effector-memory CD4 T cells express GZMK/CCL5/NKG7; CD4 and CD40LG decide the lineage
    label, cl, _ = call(reasoner, T + ["CD4", "CD40LG", "GZMK", "CCL5", "NKG7"])
    assert under(cl, CD4_LINEAGE), label


def test_cd8a_cd8b_make_cd8(reasoner):
    label, cl, _ = call(reasoner, T + ["CD8A", "CD8B"])
    assert under(cl, CD8_LINEAGE), label


def test_treg(reasoner):
    label, _, _ = call(reasoner, T + ["CD4", "FOXP3", "IL2RA", "CTLA4", "TIGIT", "IKZF2"])
    assert label == "CD4-positive regulatory T cell"


def test_gamma_delta_t(reasoner):
    label, _, _ = call(reasoner, T[:3] + ["TRDC", "TRGC1", "TRGC2"])
    assert label == "gamma-delta T cell"


def test_nk_without_cd3_is_nk_not_gamma_delta(reasoner):
    label, cl, _ = call(reasoner, ["KLRF1", "NCAM1", "KLRD1", "TYROBP", "FCER1G", "NKG7",
                                   "GNLY", "TRDC"])
    assert under(cl, "CL:0000623"), label


def test_mait(reasoner):
    label, _, _ = call(reasoner, T + ["SLC4A10", "KLRB1", "TRAV1-2", "ZBTB16"])
    assert label == "mucosal-associated invariant T cell"


def test_ilc3_without_cd3(reasoner):
    label, _, _ = call(reasoner, ["KIT", "RORC", "IL7R", "IL23R", "PCDH9", "IL1R1"])
    assert label == "group 3 innate lymphoid cell, human"


# --- monocytes, macrophages, dendritic cells -------------------------------------------
def test_classical_monocyte_on_a_panel_without_cd14(reasoner):
    label, _, _ = call(reasoner, ["S100A8", "S100A9", "LYZ", "FCN1", "VCAN"], drop=("CD14",))
    assert label == "classical monocyte"


def test_non_classical_monocyte(reasoner):
    label, _, _ = call(reasoner, ["FCGR3A", "MS4A7", "CDKN1C", "LST1", "LYZ", "HES4"])
    assert label == "non-classical monocyte"


@pytest.mark.parametrize("drop", [(), ("CD14", "VCAN", "CDKN1C")])
def test_monocyte_with_both_programmes_abstains_to_monocyte(reasoner, drop):
    # S100A8/9 with FCGR3A and MS4A7 (pbmc68k's CD14+ monocytes, on a panel without CD14)
    label, _, _ = call(reasoner, ["S100A8", "S100A9", "LYZ", "FCN1", "FCGR3A", "MS4A7",
                                  "LST1"], drop=drop)
    assert label == "monocyte"


def test_monocyte_without_discriminating_genes_abstains_to_monocyte(reasoner):
    # only pan-monocyte genes expressed, on a panel that measures neither side's markers
    panel = ("CD14", "S100A8", "S100A9", "S100A12", "VCAN", "FCGR3A", "MS4A7", "CDKN1C",
             "HES4", "RHOC", "LYZ", "FCN1", "MNDA", "CSF3R", "CD36", "LILRB2", "CX3CR1", "CKB",
             "TCF7L2")
    label, _, _ = call(reasoner, ["CSF1R", "LST1", "SERPINA1", "CD68", "TYROBP", "FCER1G",
                                  "CORO1A"], drop=panel)
    assert label == "monocyte"


def test_tumour_associated_macrophage_is_a_mononuclear_phagocyte(reasoner):
    label, cl, _ = call(reasoner, ["CD14", "CD68", "C1QA", "C1QB", "C1QC", "APOE", "APOC1",
                                   "SPP1", "TREM2"])
    assert under(cl, "CL:0000235"), label  # macrophage
    assert under(cl, "CL:0000113")  # mononuclear phagocyte


@pytest.mark.parametrize("profile, want", [
    (["CLEC9A", "XCR1", "CADM1", "IRF8", "HLA-DRA", "CST3"],
     "cDC1 (CD141-positive myeloid dendritic cell)"),
    (["CD1C", "FCER1A", "CLEC10A", "HLA-DQA1", "HLA-DRA", "CST3"],
     "cDC2 (CD1c-positive myeloid dendritic cell)"),
    (["LAMP3", "CCR7", "FSCN1", "CCL19", "CCL22", "CD83", "HLA-DRA", "HLA-DQA1", "CORO1A"],
     "mature conventional dendritic cell (mregDC)"),
    # pDCs share JCHAIN and MZB1 with plasma cells: still a pDC, not a "doublet"
    (["LILRA4", "CLEC4C", "IL3RA", "PLD4", "SERPINF1", "JCHAIN", "MZB1"],
     "plasmacytoid dendritic cell"),
])
def test_dendritic_cells(reasoner, profile, want):
    assert call(reasoner, profile)[0] == want


# --- lineage against ambient RNA -----------------------------------------------------------
def test_t_cell_with_ambient_collagen_on_a_panel_without_ptprc(reasoner):
    label, cl, _ = call(reasoner, T[1:] + ["CORO1A", "LAPTM5", "COL1A1", "COL1A2", "COL3A1"],
                        drop=("PTPRC", "CD3E"))
    assert under(cl, "CL:0000084"), label


#: Haematopoietic-specific genes (HPA immune-cell enriched): no stromal cell expresses them.
HAEMATOPOIETIC = ["CORO1A", "LAPTM5", "RAC2", "LCP1", "HCLS1"]


def test_sparse_t_cell_with_ambient_collagens_is_not_a_fibroblast(reasoner):
    # a tumour T cell with few TCR/CD2 reads and three ambient collagens: its haematopoietic
    # programme outweighs the collagens (it was a fibroblast while only CORO1A and LAPTM5 were
    # stromal negatives)
    label, cl, _ = call(reasoner, ["CD2", "TRAC", *HAEMATOPOIETIC, "COL1A1", "COL1A2",
                                   "COL3A1"], drop=("PTPRC",))
    assert under(cl, "CL:0000084"), label


def test_haematopoietic_cell_with_collagens_only_is_no_stromal_cell(reasoner):
    label, cl, _ = call(reasoner, ["CD2", *HAEMATOPOIETIC, "COL1A1", "COL1A2", "COL3A1"],
                        drop=("PTPRC",))
    assert not under(cl, "CL:0000057"), label  # not a fibroblast, nor below one


def test_fibroblast_without_haematopoietic_reads_stays_a_fibroblast(reasoner):
    label, _, _ = call(reasoner, ["COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "PDGFRA",
                                  "FBLN1"], drop=("PTPRC",))
    assert label == "fibroblast"


def test_mbp_alone_is_not_an_oligodendrocyte(reasoner):
    # golli-MBP transcripts are expressed by T cells
    label, cl, _ = call(reasoner, T + ["MBP", "CORO1A"])
    assert under(cl, "CL:0000084"), label


# --- honest cluster mode --------------------------------------------------------------------
NK = ["KLRF1", "NCAM1", "KLRD1", "TYROBP", "FCER1G", "NKG7", "GNLY", "CORO1A"]
CD8 = T + ["CD8A", "CD8B", "CORO1A"]


def _adata(reasoner, profiles: list[list[str]], groups: list[str]) -> ad.AnnData:
    X, genes = cells(reasoner, profiles)
    a = ad.AnnData(X=X, var=pd.DataFrame(index=genes),
                   obs=pd.DataFrame({"grp": groups}, index=[f"c{i}" for i in range(len(groups))]))
    return a


def test_mixed_cluster_is_flagged_and_stops_at_the_common_parent(reasoner):
    profiles = [NK] * 35 + [CD8] * 30 + [CD8] * 20
    groups = ["merged"] * 65 + ["pure"] * 20
    a = _adata(reasoner, profiles, groups)
    res = annotate(a, mode="cluster", by="grp", cache=False, progress=False)
    merged = a.obs[a.obs["grp"] == "merged"]
    assert set(merged["cellreasoner_label"]) == {"lymphocyte"}
    assert set(merged["cellreasoner_ontology_id"]) == {"CL:0000542"}
    assert merged["cellreasoner_cluster_mixed"].all()
    pure = a.obs[a.obs["grp"] == "pure"]
    assert not pure["cellreasoner_cluster_mixed"].any()
    assert under(pure["cellreasoner_ontology_id"].iloc[0], CD8_LINEAGE)
    row = res.clusters.loc["merged"]
    assert bool(row["mixed"]) and "NK" in row["composition"]
    # the cells' own answers stay readable in the trace
    assert "Own answer:" in merged["cellreasoner_reasoning"].iloc[0]
    assert res.provenance["clusters"]["mixed"] == [True, False]


def test_cluster_confidence_counts_disagreeing_cells():
    labels = ["NK cell"] * 8 + ["B cell"] * 2
    ids = ["CL:0000623"] * 8 + ["CL:0000236"] * 2
    call_ = consensus_call(labels, ids, np.full(10, 0.9))
    # 80% agree: the majority holds (above MIN_AGREEMENT) but the B cells count as 0
    assert MIN_AGREEMENT <= 0.8 and call_.label == "NK cell" and not call_.mixed
    assert call_.confidence == pytest.approx(0.72)
    split = consensus_call(["NK cell"] * 5 + ["B cell"] * 5, ["CL:0000623"] * 5 +
                           ["CL:0000236"] * 5, np.full(10, 0.9))
    assert split.mixed and split.ontology_id == "CL:0000542"  # lymphocyte
    # subtypes under the majority answer agree with it: a monocyte cluster is not mixed
    mono = consensus_call(["monocyte"] * 7 + ["classical monocyte"] * 3,
                          ["CL:0000576"] * 7 + ["CL:0000860"] * 3, np.full(10, 0.9))
    assert mono.label == "monocyte" and not mono.mixed and mono.agreement == 1.0


def test_resolution_reaches_the_automatic_leiden(pbmc68k, tmp_path):
    a = pbmc68k.raw.to_adata()
    a.obsp["connectivities"] = pbmc68k.obsp["connectivities"]
    counts = []
    for r in (0.3, 3.0):
        b = a.copy()
        annotate(b, mode="cluster", resolution=r, cache=False, progress=False)
        counts.append(b.obs["leiden"].nunique())
    assert counts[0] < counts[1]
    with pytest.raises(InputError, match="resolution"):
        annotate(a.copy(), mode="cluster", resolution=0, cache=False, progress=False)
    src = tmp_path / "in.h5ad"
    a.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    assert main(["annotate", str(src), "-o", str(out), "--mode", "cluster",
                 "--resolution", "3.0", "--no-cache"]) == 0
    done = ad.read_h5ad(out)
    assert done.obs["leiden"].nunique() == counts[1]
    assert "cellreasoner_cluster_mixed" in done.obs
