"""Truth maps: an author's labels read as the Cell Ontology terms they mean, and every
evaluation saying how each truth label was read (real tumour immune cells and their map)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cellreasoner as cr
from cellreasoner.cli import main
from cellreasoner.errors import InputError
from cellreasoner.evaluation import evaluate, score_adata
from cellreasoner.evaluation.truth import read_truth_map, truth_readings


@pytest.fixture(scope="module")
def tumour(shared_data) -> ad.AnnData:
    a = ad.read_h5ad(shared_data / "tumour_immune_1000.h5ad")
    obs = pd.DataFrame(index=a.obs_names)
    obs["cell_type_annotations"] = a.obs["cell_type_annotations"].astype(str)
    return ad.AnnData(obs=obs)


def test_mdc_is_read_through_the_map_not_as_myeloid_dendritic_cells(tumour, shared_data):
    tmap = shared_data / "tumour_immune_1000.truth_map.tsv"
    truth = tumour.obs["cell_type_annotations"]
    # a biologist's call for the monocyte-derived cells, the authors' labels elsewhere
    tumour.obs["pred"] = np.where(truth == "MDC", "macrophage", truth)
    plain = evaluate(tumour, truth="cell_type_annotations", pred="pred")
    mapped = evaluate(tumour, truth="cell_type_annotations", pred="pred", truth_map=tmap)
    mdc = lambda ev: ev.per_label.set_index("truth").loc["MDC", "mean_score"]  # noqa: E731
    assert mdc(plain) < 0.25 <= mdc(mapped)  # macrophage is a mononuclear phagocyte
    r = mapped.truth_readings.set_index("truth")
    assert r.loc["MDC", "cl_id"] == "CL:0000113" and r.loc["MDC", "source"] == "truth map"
    assert plain.truth_readings.set_index("truth").loc["MDC", "source"] == "ontology"
    assert any("MDC -> mononuclear phagocyte (CL:0000113, truth map)" in n for n in mapped.notes)
    assert mapped.per_label["truth"].str.contains("MDC").any()  # the author's label is shown


def test_unreadable_truth_labels_are_listed():
    obs = pd.DataFrame({"truth": ["T cell", "Zq7 blobs", "B cell"],
                        "pred": ["T cell", "T cell", "B cell"]}, index=["a", "b", "c"])
    ev = evaluate(ad.AnnData(obs=obs), truth="truth", pred="pred")
    assert any("could not be read" in n and "Zq7 blobs" in n for n in ev.notes)
    assert truth_readings(["Zq7 blobs"])["source"].tolist() == ["unmapped"]
    # a map makes it readable
    ev = evaluate(ad.AnnData(obs=obs), truth="truth", pred="pred",
                  truth_map={"Zq7 blobs": "CL:0000084"})
    assert ev.summary.loc[0, "mean_score"] == 1.0


def test_truth_map_errors(tmp_path):
    bad = tmp_path / "map.tsv"
    bad.write_text("label\tid\nMDC\tCL:0000113\n")
    with pytest.raises(InputError, match="lacks column"):
        read_truth_map(bad)
    bad.write_text("truth\tcl_id\nMDC\tCL:9999999\n")
    with pytest.raises(InputError, match="not a Cell Ontology term"):
        read_truth_map(bad)
    bad.write_text("truth\tcl_id\nMDC\tCL:0000113\nMDC\tCL:0000235\n")
    with pytest.raises(InputError, match="mapped twice"):
        read_truth_map(bad)
    with pytest.raises(InputError, match="not found"):
        read_truth_map(tmp_path / "none.tsv")


def test_cli_and_score_adata_take_the_map(tumour, shared_data, tmp_path, capsys):
    tmap = shared_data / "tumour_immune_1000.truth_map.tsv"
    tumour.obs["pred"] = np.where(tumour.obs["cell_type_annotations"] == "MDC", "monocyte",
                                  tumour.obs["cell_type_annotations"])
    h5 = tmp_path / "t.h5ad"
    tumour.write_h5ad(h5)
    out = tmp_path / "ev"
    assert main(["evaluate", str(h5), "--truth", "cell_type_annotations", "--pred", "pred",
                 "--truth-map", str(tmap), "-o", str(out), "--no-plots"]) == 0
    assert "MDC -> mononuclear phagocyte" in capsys.readouterr().err
    readings = pd.read_csv(out / "truth_readings.csv")
    assert set(readings["truth"]) == set(tumour.obs["cell_type_annotations"])
    score_adata(tumour, "cell_type_annotations", pred_key="pred", truth_map=tmap)
    mdc = tumour.obs["cell_type_annotations"] == "MDC"
    assert (tumour.obs.loc[mdc, "cellreasoner_score"] >= 0.5).all()
    assert any("truth map" in n for n in tumour.uns["cellreasoner_score"]["truth_readings"])


def test_tl_score_reads_the_map_and_lists_unmapped_labels(tumour, shared_data, tmp_path,
                                                          caplog):
    tmap = shared_data / "tumour_immune_1000.truth_map.tsv"
    a = tumour.copy()
    truth = a.obs["cell_type_annotations"].to_numpy()
    a.obs["cell_type_annotations"] = np.where(truth == "ILC3", "Zq7 blobs", truth)
    a.obs["pred"] = np.where(truth == "MDC", "macrophage", truth)
    with caplog.at_level("WARNING", logger="cellreasoner"):
        cr.tl.score(a, "cell_type_annotations", pred_key="pred", truth_map=tmap)
    assert "could not be read" in caplog.text and "Zq7 blobs" in caplog.text
    info = a.uns["cellreasoner_score"]
    read = dict(zip(info["truth_labels"], info["truth_cl_ids"], strict=True))
    assert read["MDC"] == "CL:0000113" and read["Zq7 blobs"] == ""
    assert info["unmapped_truth"] == ["Zq7 blobs"]
    mdc = a.obs["cell_type_annotations"] == "MDC"
    assert (a.obs.loc[mdc, "cellreasoner_score"] >= 0.25).all()
    assert (a.obs.loc[~mdc & (a.obs["cell_type_annotations"] == "Zq7 blobs"),
                      "cellreasoner_score"] == 0).all()
    a.write_h5ad(tmp_path / "scored.h5ad")  # what it writes into uns survives .h5ad
    back = ad.read_h5ad(tmp_path / "scored.h5ad").uns["cellreasoner_score"]
    assert list(back["unmapped_truth"]) == ["Zq7 blobs"]


def test_report_shows_each_reading_and_the_unmapped(tumour, shared_data, tmp_path, capsys):
    from cellreasoner.report import build_report

    tmap = shared_data / "tumour_immune_1000.truth_map.tsv"
    a = tumour.copy()
    truth = a.obs["cell_type_annotations"].to_numpy()
    a.obs["cell_type_annotations"] = np.where(truth == "ILC3", "Zq7 blobs", truth)
    a.obs["cellreasoner_label"] = truth
    html = build_report(a, truth="cell_type_annotations", truth_map=tmap, plots=False)
    assert "truth label &#x27;MDC&#x27; read as" in html or "truth label 'MDC' read as" in html
    assert "mononuclear phagocyte (CL:0000113, truth map)" in html
    assert "unmapped: scores 0" in html and "Zq7 blobs" in html
    assert "exact Cell Ontology term accuracy" in html and "subtype-level accuracy" in html
    plain = build_report(a, truth="cell_type_annotations", plots=False)
    assert "CL:0000113, truth map" not in plain and "myeloid dendritic cell" in plain
    h5 = tmp_path / "t.h5ad"
    a.write_h5ad(h5)
    out = tmp_path / "r.html"
    assert main(["report", str(h5), "-o", str(out), "--truth", "cell_type_annotations",
                 "--truth-map", str(tmap), "--no-plots"]) == 0
    assert "CL:0000113, truth map" in out.read_text(encoding="utf-8")
    bad = tmp_path / "bad.tsv"
    bad.write_text("truth\tcl_id\nMDC\tCL:9999999\n")
    assert main(["report", str(h5), "-o", str(tmp_path / "r2.html"), "--truth",
                 "cell_type_annotations", "--truth-map", str(bad)]) != 0
    assert "not a Cell Ontology term" in capsys.readouterr().err
    assert not (tmp_path / "r2.html").exists()


def test_annotate_truth_map_needs_a_report(tmp_path, shared_data, capsys):
    rc = main(["annotate", "pbmc68k_reduced", "-o", str(tmp_path / "o.h5ad"),
               "--truth-map", str(shared_data / "tumour_immune_1000.truth_map.tsv")])
    assert rc != 0 and "--truth-map reads the truth labels of the report" in (
        capsys.readouterr().err)
    assert not (tmp_path / "o.h5ad").exists()


def test_annotate_report_reads_truth_through_the_map(tmp_path, _pbmc68k_cached):
    a = _pbmc68k_cached[:120].copy()
    a.X = a.raw[:120].X.toarray() if hasattr(a.raw.X, "toarray") else a.raw[:120].X
    a.raw = None
    h5 = tmp_path / "in.h5ad"
    a.write_h5ad(h5)
    tmap = tmp_path / "map.tsv"
    tmap.write_text("truth\tcl_id\nDendritic\tCL:0000784\n")  # plasmacytoid, not the lookup's
    report = tmp_path / "r.html"
    assert main(["annotate", str(h5), "-o", str(tmp_path / "o.csv"), "--report",
                 str(report), "--label-column", "bulk_labels", "--truth-map",
                 str(tmap), "--no-cache"]) == 0
    html = report.read_text(encoding="utf-8")
    assert "exact Cell Ontology term accuracy" in html
    assert "plasmacytoid dendritic cell (CL:0000784, truth map)" in html
    assert "CD14-positive monocyte (CL:0001054)" in html  # read by the ontology lookup
