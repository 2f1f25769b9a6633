"""``cr.tl.audit`` / ``cellreasoner audit``: labels checked against each cell's own markers."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellreasoner as cr
from cellreasoner.audit import audit
from cellreasoner.cli import main
from cellreasoner.errors import InputError

B = ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "PAX5", "CD22"]
PLASMA = ["TNFRSF17", "JCHAIN", "MZB1", "XBP1", "PRDM1", "DERL3", "TXNDC5", "FKBP11"]
T = ["CD3E", "CD3D", "CD3G", "TRAC", "CD2", "CD5", "CD28"]
NK = ["NKG7", "GNLY", "KLRD1", "KLRF1", "NCAM1", "PRF1", "TYROBP", "FCER1G", "SH2D1B"]
FILLER = [f"GENE{i}" for i in range(20)]

#: (label given, genes the cells express, how many, what the audit must say)
GROUPS = (
    ("B cell", B, 8, "consistent"),
    ("B cell", PLASMA, 5, "contradicted"),  # plasma cells labelled B cells
    ("NK cell", NK, 6, "consistent"),
    ("NK cell", T, 4, "contradicted"),  # CD3+ "NK": T cells
    ("Zorblast", B, 3, "unsupported"),  # not a cell type the knowledge has
    ("T cell", [], 3, "unsupported"),  # no marker at all: nothing supports the label
)


@pytest.fixture
def labelled() -> ad.AnnData:
    genes = list(dict.fromkeys(B + PLASMA + T + NK + FILLER))
    rows, cols, labels, want = [], [], [], []
    rng = np.random.default_rng(0)
    for label, expressed, n, status in GROUPS:
        for _ in range(n):
            i = len(labels)
            for g in [*expressed, *rng.choice(FILLER, 5, replace=False)]:
                rows.append(i)
                cols.append(genes.index(g))
            labels.append(label)
            want.append(status)
    X = sp.csr_matrix((np.full(len(rows), 2.5, np.float32), (rows, cols)),
                      shape=(len(labels), len(genes)))
    obs = pd.DataFrame({"given": labels, "want": want},
                       index=[f"cell{i}" for i in range(len(labels))])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


def test_audit_finds_the_planted_contradictions(labelled):
    res = cr.tl.audit(labelled, labels="given")
    obs = labelled.obs
    assert list(obs["audit_status"].astype(str)) == list(obs["want"])
    assert list(obs["audit_status"].cat.categories) == ["consistent", "contradicted",
                                                       "unsupported"]
    plasma = (obs["given"] == "B cell") & (obs["want"] == "contradicted")
    assert set(obs.loc[plasma, "audit_alternative"].astype(str)) <= {
        "antibody secreting cell", "plasma cell", "plasmablast"}
    assert all("TNFRSF17" in c for c in obs.loc[plasma, "audit_contradicting"])
    t_as_nk = (obs["given"] == "NK cell") & (obs["want"] == "contradicted")
    assert all("CD3E" in c for c in obs.loc[t_as_nk, "audit_contradicting"])  # NK negative
    assert all("T cell" in a for a in obs.loc[t_as_nk, "audit_alternative"].astype(str))
    good_b = (obs["given"] == "B cell") & (obs["want"] == "consistent")
    assert all(c.startswith("MS4A1") or "CD19" in c for c in obs.loc[good_b, "audit_supporting"])
    assert (obs.loc[good_b, "audit_alternative"].astype(str) == "").all()
    assert (obs.loc[good_b, "audit_label_score"] > obs.loc[plasma, "audit_label_score"].max()).all()
    # the per-label summary: counts and what the contradicted cells look like instead
    s = res.summary.set_index("label")
    assert s.loc["B cell", ["n_cells", "consistent", "contradicted"]].tolist() == [13, 8, 5]
    assert s.loc["B cell", "ontology_id"] == "CL:0000236"
    assert re.search(r"(antibody secreting|plasma)\w* cell \(5\)|plasmablast \(5\)",
                     s.loc["B cell", "looks_like"])
    assert s.loc["NK cell", "contradicted"] == 4
    assert not s.loc["Zorblast", "in_knowledge_base"]
    assert labelled.uns["audit"]["counts"] == {"consistent": 14, "contradicted": 9,
                                               "unsupported": 6}
    assert "9 contradicted" in repr(res)


def test_audit_copy_key_added_and_bad_input(labelled):
    res = audit(labelled, "given", key_added="check", copy=True)
    assert "audit_status" not in labelled.obs and "check_status" not in labelled.obs
    assert "check_status" in res.adata.obs
    with pytest.raises(InputError, match="Label column 'nope' not in obs"):
        audit(labelled, "nope")
    with pytest.raises(InputError, match="margin"):
        audit(labelled, "given", margin=2)


def test_cli_audit_writes_the_table_summary_and_report(labelled, tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    labelled.write_h5ad(src)
    out, summary, html = tmp_path / "out.h5ad", tmp_path / "summary.csv", tmp_path / "r.html"
    assert main(["audit", str(src), "--labels", "given", "-o", str(out), "--summary",
                 str(summary), "--report", str(html)]) == 0
    err = capsys.readouterr().err
    assert "9 contradicted" in err and "B cell: 5 of 13 contradicted" in err
    back = ad.read_h5ad(out)
    assert list(back.obs["audit_status"].astype(str)) == list(labelled.obs["want"])
    table = pd.read_csv(summary).set_index("label")
    assert table.loc["NK cell", "contradicted"] == 4
    page = html.read_text()
    assert '<section id="audit">' in page and "Label audit" in page
    assert re.search(r"<td>B cell</td><td>B cell</td><td>13</td><td>8</td><td>5</td>", page)
    cells_csv = tmp_path / "cells.csv"
    assert main(["audit", str(src), "--labels", "given", "-o", str(cells_csv)]) == 0
    assert set(pd.read_csv(cells_csv)["status"]) == {"consistent", "contradicted",
                                                     "unsupported"}
    assert main(["audit", str(src), "--labels", "given"]) == 2  # no output named
    assert "name an output" in capsys.readouterr().err


#: Textbook phenotypes a label should not contradict (written for this test, independent of
#: the audit's scores): label pattern, genes none of which is detected, genes one of which
#: is, genes all of which are.
REFERENCE = (
    (r"^Dendritic", ("FCER1A", "CLEC10A"), ("FCGR3A",), ()),
    (r"CD19\+ B", ("MS4A1",), (), ("TNFRSF17", "MZB1")),
    (r"CD56\+ NK", (), (), ("CD3D", "CD3E", "CD3G")),
    (r"^CD8\+", ("CD8A", "CD8B"), ("CD4", "CD40LG"), ()),
    (r"^CD4\+", ("CD4", "CD40LG"), ("CD8A", "CD8B"), ()),
    (r"^CD14\+", (), (), ("FCER1A", "CLEC10A")),
)


def _reference(raw: ad.AnnData, labels: pd.Series) -> np.ndarray:
    X = sp.csr_matrix(raw.X)
    genes = list(raw.var_names)

    def seen(gs):
        return np.asarray((X[:, [genes.index(g) for g in gs if g in genes]] > 0).toarray())

    hit = np.zeros(raw.n_obs, dtype=bool)
    for pattern, absent, any_of, all_of in REFERENCE:
        rule = labels.str.contains(pattern).to_numpy()
        if absent:
            rule &= ~seen(absent).any(axis=1)
        if any_of:
            rule &= seen(any_of).any(axis=1)
        if all_of:
            rule &= seen(all_of).all(axis=1)
        hit |= rule
    return hit


def test_pbmc68k_audit_finds_contradicted_cells_and_leaves_consistent_ones(pbmc68k):
    labels = pbmc68k.obs["bulk_labels"].astype(str)
    contradicted = _reference(pbmc68k.raw.to_adata(), labels)
    assert 80 <= contradicted.sum() <= 120  # the "about 72", plus the plasma cells
    res = audit(pbmc68k, "bulk_labels", tissue="blood")  # scaled X: .raw is read
    flagged = (res.cells["status"] == "contradicted").to_numpy()
    assert flagged[contradicted].mean() >= 0.80
    assert flagged[~contradicted].mean() <= 0.05
    s = res.summary.set_index("label")
    assert "monocyte" in s.loc["Dendritic", "looks_like"]
    assert "antibody secreting cell" in s.loc["CD19+ B", "looks_like"]


def test_report_shows_the_audits_own_counts_and_summary(pbmc68k):
    """The report reads what the audit counted; without ``uns`` it counts ``obs`` with the
    audit's own summary function (same rows, same order)."""
    from cellreasoner.report._audit import audit_section

    data = pbmc68k.copy()
    res = audit(data, "bulk_labels")
    cols = ["label", "n_cells", "consistent", "contradicted", "unsupported", "looks_like"]

    def rows(page):
        return re.findall(r"<tr><td>(.*?)</td>", page)

    full = audit_section(data.obs, dict(data.uns))
    bare = audit_section(data.obs, {"audit": {"labels": "bulk_labels"}})
    assert rows(full) == rows(bare) == list(res.summary["label"])
    n = res.provenance["counts"]
    assert f"{n['contradicted']:,} contradicted" in full and n["contradicted"] > 0
    assert (res.summary[cols].to_dict("list")
            == {c: list(v) for c, v in res.provenance["summary"].items() if c in cols})
