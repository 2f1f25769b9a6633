"""Truth maps: an author's labels read as the Cell Ontology terms they mean, and every
evaluation saying how each truth label was read (real tumour immune cells and their map)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

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
