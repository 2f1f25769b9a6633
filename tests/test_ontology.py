"""Cell Ontology grounding on real labels (pbmc68k, PBMC3k/Seurat, CellReasoner dev pairs)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from cellreasoner.errors import InputError
from cellreasoner.ontology import (
    LabelMatch,
    extract_answer,
    get_ontology,
    ground_obs,
    map_label,
    map_labels,
    normalize,
)

# --------------------------------------------------------------------------- the ontology


def test_ontology_terms_and_graph():
    o = get_ontology()
    assert o.version.startswith("v20")
    assert o.label("CL:0000236") == "B cell"
    assert "B lymphocyte" in o.synonyms("CL:0000236")
    assert o.exists("CL:0000084") and not o.exists("CL:9999999")
    anc = o.ancestors("CL:0000624")  # CD4-positive, alpha-beta T cell
    assert anc["CL:0000084"] >= 1 and "CL:0000542" in anc  # T cell, lymphocyte
    assert o.is_ancestor("CL:0000084", "CL:0000624")
    assert not o.is_ancestor("CL:0000624", "CL:0000084")
    assert "CL:0000624" in o.descendants("CL:0000084")
    assert "CL:0000624" in o.children("CL:0000791") or "CL:0000624" in o.descendants("CL:0000791")
    assert o.common_ancestors("CL:0000624", "CL:0000625")[0] != "CL:0000000"
    assert o.lowest_informative_ancestor(["CL:0000084", "CL:0000623"]) == "CL:0000542"
    deprecated = [c for c in o.ids(include_deprecated=True) if o.is_deprecated(c)]
    assert deprecated and all(c not in o.ids() for c in deprecated[:20])
    with pytest.raises(InputError, match="Unknown Cell Ontology id"):
        o.label("CL:9999999")


def test_index_is_cached_on_disk_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLREASONER_CACHE", str(tmp_path))
    get_ontology.cache_clear()
    try:
        o = get_ontology()
        files = list(tmp_path.glob("cl_index_*"))
        assert len(files) == 1 and o.version in files[0].name and files[0].suffix == ".json"
        header, body = files[0].read_text().split("\n", 1)
        assert json.loads(body)["labels"]["CL:0000236"] == "B cell"
        get_ontology.cache_clear()
        assert get_ontology().label("CL:0000576") == "monocyte"  # loaded from the file
        files[0].write_bytes(b"not an index")
        get_ontology.cache_clear()
        assert get_ontology().label("CL:0000576") == "monocyte"  # rebuilt
        assert json.loads(files[0].read_text().split("\n", 1)[0])["cl_version"] == o.version
    finally:
        get_ontology.cache_clear()


# --------------------------------------------------------------------------- real label sets

BULK_LABELS = {  # scanpy pbmc68k_reduced obs["bulk_labels"]
    "CD14+ Monocyte": "CL:0001054",
    "Dendritic": "CL:0000451",
    "CD56+ NK": "CL:0000623",
    "CD4+/CD25 T Reg": "CL:0000792",
    "CD8+ Cytotoxic T": "CL:0000794",
    "CD4+/CD45RA+/CD25- Naive T": "CL:0000895",
    "CD4+/CD45RO+ Memory": "CL:0000897",
    "CD8+/CD45RA+ Naive Cytotoxic": "CL:0000900",
    "CD19+ B": "CL:0000236",
    "CD34+": "CL:0008001",
}

SEURAT_PBMC3K = {
    "Naive CD4 T": "CL:0000895",
    "Memory CD4 T": "CL:0000897",
    "CD14+ Mono": "CL:0001054",
    "B": "CL:0000236",
    "CD8 T": "CL:0000625",
    "FCGR3A+ Mono": "CL:0002396",
    "NK": "CL:0000623",
    "DC": "CL:0000451",
    "Platelet": "CL:0000233",
}


@pytest.mark.parametrize("text,expected", sorted({**BULK_LABELS, **SEURAT_PBMC3K}.items()))
def test_pbmc_labels_map_to_expected_terms(text, expected):
    m = map_label(text)
    assert m.id == expected, (text, m)
    assert m.label == get_ontology().label(expected)
    assert m.score > 0.5 and m.how != "unmapped"


def test_every_pbmc68k_bulk_label_maps(pbmc68k):
    cats = list(pbmc68k.obs["bulk_labels"].cat.categories)
    assert set(cats) == set(BULK_LABELS)
    assert [m.id for m in map_labels(cats)] == [BULK_LABELS[c] for c in cats]


def test_ground_obs_on_pbmc68k(pbmc68k, tmp_path):
    pbmc68k.obs.loc[pbmc68k.obs_names[:3], "bulk_labels"] = None  # missing labels stay missing
    assert ground_obs(pbmc68k, "bulk_labels") is None
    obs = pbmc68k.obs
    assert {"bulk_labels_cl_id", "bulk_labels_cl_label", "bulk_labels_cl_how"} <= set(obs)
    ok = obs["bulk_labels"].notna()
    assert (obs.loc[ok, "bulk_labels_cl_id"].astype(str)
            == obs.loc[ok, "bulk_labels"].astype(str).map(BULK_LABELS)).all()
    assert obs.loc[~ok, "bulk_labels_cl_id"].isna().all()
    prov = pbmc68k.uns["cellreasoner"]["ontology"]["bulk_labels_cl"]
    assert prov["source_key"] == "bulk_labels" and prov["cl_version"] == get_ontology().version
    assert prov["unmapped_labels"] == []
    pbmc68k.write_h5ad(tmp_path / "grounded.h5ad")  # obs/uns stay writable
    copy = ground_obs(pbmc68k, "louvain", key_added="lv", copy=True)
    assert "lv_id" in copy.obs and "lv_id" not in pbmc68k.obs
    assert copy.obs["lv_id"].isna().all()  # cluster numbers are not cell types
    with pytest.raises(InputError, match="no column 'cell_type'"):
        ground_obs(pbmc68k, "cell_type")


def test_pbmc_demo_labels_map(upstream_prompts_dir):
    records = json.loads((upstream_prompts_dir / "pbmc_demo_labeled.json").read_text())
    labels = sorted({r["output"] for r in records})
    assert len(labels) == 7
    assert all(map_label(lab).id == SEURAT_PBMC3K[lab] for lab in labels)


ABBREVIATIONS = {
    "Mono": "CL:0000576", "CD14 Mono": "CL:0001054", "CD16 Mono": "CL:0002396",
    "Treg": "CL:0000815", "pDC": "CL:0000784", "cDC1": "CL:0002394", "cDC2": "CL:0002399",
    "MAIT": "CL:0000940", "gdT": "CL:0000798", "γδ T": "CL:0000798", "HSPC": "CL:0008001",
    "Mac": "CL:0000235", "Fib": "CL:0000057", "TAM": "CL:0000235", "CAF": "CL:0000057",
    "myCAF": "CL:0000186", "iCAF": "CL:0000057", "Plasma": "CL:0000786",
    "pre-B": "CL:0000817", "Tfh": "CL:0002038", "Th1": "CL:0000545", "Th2": "CL:0000546",
    "Th17": "CL:0000899", "CD4 TCM": "CL:0000904", "CD4 TEM": "CL:0000905",
    "CD4 naive": "CL:0000895", "CD8 TEM_2": "CL:0000913", "CD8 GZMK": "CL:0000625",
    "myCAF TPM1": "CL:0000186", "Megakaryocyte/Platelet": "CL:0000556",
    "Erythrocyte": "CL:0000232", "NKT": "CL:0000814", "Hepatocyte_3": "CL:0000182",
    "gamma-delta_T_Cells_1": "CL:0000798", "CD8Tex": "CL:0020031", "CD4 CCR7": "CL:0000624",
    "Plasma_Cells": "CL:0000786", "Mast": "CL:0000097", "Muller Glia": "CL:0000636",
    "SMC": "CL:0000192", "T-cells": "CL:0000084", "B_cells": "CL:0000236",
    "CD8-positive T cells": "CL:0000625", "CD4⁺ T cells": "CL:0000624",
    "Natural killer cells": "CL:0000623", "Fibroblast-like cells": "CL:0000057",
    "M2-like MS4A6A": "CL:0000890", "Cancer-associated fibroblasts (CAFs)": "CL:0000057",
}


AZIMUTH_AND_ATLAS = {  # Azimuth PBMC l2 and common tissue-atlas names
    "B memory": "CL:0000787", "B naive": "CL:0000788", "B intermediate": "CL:0000236",
    "NK_CD56bright": "CL:0000938", "Eryth": "CL:0000764", "CD4 CTL": "CL:0000934",
    "CD8 TCM": "CL:0000907", "Plasmablast": "CL:0000980", "ILC": "CL:0001065",
    "Lymphatic EC": "CL:0002138", "Arterial EC": "CL:1000413", "AT2": "CL:0002063",
    "Alveolar type II cells": "CL:0002063", "Excitatory neurons": "CL:0000679",
    "Kupffer cells": "CL:0000091", "LSECs": "CL:1000398", "OPCs": "CL:0002453",
    "Classical Monocytes": "CL:0000860", "Non-classical monocytes": "CL:0000875",
    "Myeloid DC": "CL:0000782", "CD4+ FOXP3+ Treg": "CL:0000792",
    "CXCL13+ Tfh": "CL:0002038", "SPP1+ TAM": "CL:0000235", "Tumor cells": "CL:0001064",
}


@pytest.mark.parametrize("text,expected", sorted(AZIMUTH_AND_ATLAS.items()))
def test_atlas_labels(text, expected):
    assert map_label(text).id == expected, (text, map_label(text))


def test_slash_means_either_except_between_markers():
    assert set(map_label("T/NK cells").alternatives) == {"CL:0000084", "CL:0000623"}
    b = map_label("B/Plasma")
    assert b.id == "CL:0000945" and set(b.alternatives) == {"CL:0000236", "CL:0000786"}
    assert map_label("CD4+/CD25 T Reg").alternatives == ()
    assert map_label("Doublet").id is None


@pytest.mark.parametrize("text,expected", sorted(ABBREVIATIONS.items()))
def test_field_abbreviations_and_marker_subsets(text, expected):
    assert map_label(text).id == expected, (text, map_label(text))


def test_marker_subset_and_normalised_paths_are_reported():
    assert map_label("myCAF TPM1").how == "marker-subset"
    assert map_label("Hepatocyte_3").how == "marker-subset"
    assert map_label("CD14+ Monocyte").how == "exact"
    assert map_label("Treg").how == "synonym"
    assert map_label("Gastric epithelial tumor cells").how == "normalized"
    assert map_label("HEPATOCITE").how == "fuzzy"
    assert map_label("HEPATOCITE").id == "CL:0000182"


def test_model_answers_with_reasoning_and_filler():
    text = "<think>CD3E, CD8A and GZMK are high; no MS4A1.</think>\nCD8+ T cells."
    assert extract_answer(text) == "CD8+ T cells"
    assert map_label(text).id == "CL:0000625"
    assert map_label('The cell type is: "Naive CD4+ T cells".').id == "CL:0000895"
    assert map_label("**Final answer:** B cells").id == "CL:0000236"
    # malformed closing tag followed by rambling: the short answer before it wins
    rambling = ("Pancreatic acinar cell </thinks>The user-supplied list includes several "
                "digestive enzymes and I need to decide which of the many exocrine cells "
                "and ductal cells are most likely here")
    assert map_label(rambling).id == "CL:0002064"
    assert map_label("Gastric epithelial cells (likely gastric cancer cells)").id == "CL:0000066"
    prose = ("First, MS4A1 and CD79A are high. CD3E is absent. Therefore, the correct "
             "annotation should be B cells.")
    assert extract_answer(prose) == "B cells" and map_label(prose).id == "CL:0000236"


def test_either_answers():
    m = map_label("CD8+ T cells or T cells")  # one reading is an ancestor of the other
    assert m.id == "CL:0000625" and m.how == "either"
    m = map_label("T cells or NK cells")
    assert m.id == "CL:0000542" and set(m.alternatives) == {"CL:0000084", "CL:0000623"}
    m = map_label("Mono/Macro")
    assert set(m.alternatives) == {"CL:0000576", "CL:0000235"}
    m = map_label("Endothelial Cells or Monocytes")  # nothing informative in common
    assert m.id is None and len(m.alternatives) == 2


def test_unsure_labels_stay_unmapped():
    for text in ["blah blah", "#Invalid#", "Others", "", None, float("nan"), "N/A", "Unknown",
                 "Doublets", "unassigned cells", "x" * 20000,
                 "Okay, let's tackle this problem step by step. The user has provided a list "
                 "of genes that are highly expressed in a certain type of tumor cells"]:
        m = map_label(text)
        assert m.id is None and m.how == "unmapped" and m.score == 0.0, text
    ec = map_label("EC MALAT1")  # endothelial or epithelial: do not guess
    assert ec.id is None and ec.how == "ambiguous"
    assert set(ec.alternatives) == {"CL:0000115", "CL:0000066"}


def test_label_match_is_frozen_and_memoised():
    a, b = map_labels(["CD14+ Mono", "CD14+ Mono"])
    assert a is b
    assert isinstance(a, LabelMatch)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.id = "CL:0000000"  # type: ignore[misc]


def test_normalize():
    assert normalize("CD4⁺ T-Cells") == "cd4-positive t cell"
    assert normalize("gamma_delta T cells") == "gamma-delta t cell"
    assert normalize("CD25- Tregs") == "cd25-negative treg"


def test_dev_pair_labels_mostly_map(shared_data):
    df = pd.read_csv(shared_data / "pair_scores_dev.csv")
    truths = df["Ground Truth"].astype(str)
    preds = df["Model Prediction"].astype(str)
    t_map = {t: map_label(t) for t in truths.unique()}
    p_map = {p: map_label(p) for p in preds.unique()}

    def grounded(m: LabelMatch) -> bool:
        return m.id is not None or bool(m.alternatives)

    frac_truth = sum(grounded(m) for m in t_map.values()) / len(t_map)
    frac_pred_pairs = preds.map(lambda p: grounded(p_map[p])).mean()
    assert frac_truth >= 0.95, frac_truth
    assert frac_pred_pairs >= 0.85, frac_pred_pairs
    # every id returned is a live CL term
    o = get_ontology()
    ids = {m.id for m in [*t_map.values(), *p_map.values()] if m.id}
    assert all(o.exists(i) and not o.is_deprecated(i) for i in ids)


def test_related_lineages_one_rule_two_precursor_sets():
    """The reasoner and the label check read one related-lineage rule; only the precursor
    set differs (the check does not relate a monocyte, a CL 'precursor cell', to B cells)."""
    from cellreasoner.ontology.lineages import (
        HEMATOPOIETIC_PRECURSORS,
        PRECURSORS,
        related_groups,
    )

    o = get_ontology()

    def groups(cl_id, precursors=PRECURSORS):
        return related_groups(o.ancestors_self(cl_id), precursors)

    t, nk, b, mono = "CL:0000084", "CL:0000623", "CL:0000236", "CL:0000576"
    assert groups(t) & groups(nk)  # T and NK cells: related states
    assert not groups(t) & groups(b)  # B cells are their own group
    assert groups(mono) & groups(b)  # the reasoner: a monocyte is a precursor cell in CL
    assert not (groups(mono, HEMATOPOIETIC_PRECURSORS) & groups(b, HEMATOPOIETIC_PRECURSORS))
    hspc = "CL:0000037"  # hematopoietic stem cell: related to every lineage in both
    assert groups(hspc, HEMATOPOIETIC_PRECURSORS) & groups(b, HEMATOPOIETIC_PRECURSORS)
