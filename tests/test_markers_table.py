"""Marker tables: readers of every layout, filters, errors, built-in scoring, the label check,
model prompts (through the fake backend), external knowledge and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cellreasoner.backends.fake import FakeBackend
from cellreasoner.errors import InputError
from cellreasoner.markers import (
    OUTPUT_COLUMNS,
    annotate_markers,
    filter_markers,
    read_cellmarker,
    read_marker_table,
    read_panglaodb,
)
from cellreasoner.markers.knowledge import load_knowledge
from cellreasoner.markers.prompting import split_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def markers_dir(shared_data: Path) -> Path:
    """``../shared/data/markers``: CellMarker 2.0 and a PanglaoDB matrix (read by path)."""
    return shared_data / "markers"

#: Four clusters with textbook markers (and one mislabelled: its markers are T-cell ones).
LISTS = {
    "B cell": ["CD3E", "CD3D", "IL7R", "CCR7"],
    "B cell (activated)": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1"],
    "Monocyte": ["LYZ", "CD14", "S100A8", "FCN1", "VCAN"],
    "NK": ["GNLY", "NKG7", "KLRF1", "PRF1", "KLRD1"],
}


def _seurat_csv(path: Path) -> Path:
    """A FindAllMarkers table as R's write.csv writes it (row names first, quoted header)."""
    rows = []
    stats = {
        "0": [("CD3E", 2.1), ("CD3D", 2.0), ("IL7R", 1.5), ("LTB", 1.2), ("RPL3", 0.1)],
        "1": [("MS4A1", 3.0), ("CD79A", 2.8), ("CD79B", 2.2), ("HLA-DRA", 1.0)],
        "2": [("LYZ", 3.5), ("CD14", 2.5), ("S100A9", 2.4), ("FCN1", 2.0), ("CD3E", -1.0)],
    }
    for cluster, genes in stats.items():
        for k, (g, fc) in enumerate(genes):
            padj = 0.2 if g == "LTB" else 1e-10 * (k + 1)
            rows.append({"": f"{g}{'.' + cluster if cluster != '0' else ''}", "p_val": padj / 10,
                         "avg_log2FC": fc, "pct.1": 0.9, "pct.2": 0.2, "p_val_adj": padj,
                         "cluster": cluster, "gene": g})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_seurat_table_is_read_and_filtered(tmp_path):
    t = read_marker_table(_seurat_csv(tmp_path / "m.csv"))
    assert t.layout == "seurat" and t.clusters == ("0", "1", "2")
    assert t.genes("0") == ["CD3E", "CD3D", "IL7R", "LTB", "RPL3"]
    f = filter_markers(t)  # padj 0.05, log2FC 0.25
    assert f.genes("0") == ["CD3E", "CD3D", "IL7R"]  # LTB not significant, RPL3 too weak
    assert "CD3E" not in f.genes("2")  # down-regulated
    assert filter_markers(t, top=2).genes("2") == ["LYZ", "CD14"]
    assert filter_markers(t, max_padj=None, min_logfc=None).genes("0")[-1] == "RPL3"


def test_scanpy_h5ad_and_its_csv_give_the_same_table(tmp_path, pbmc68k):
    import scanpy as sc

    a = pbmc68k[:, :400].copy()
    sc.tl.rank_genes_groups(a, "bulk_labels", method="t-test", use_raw=False, n_genes=25)
    a.write_h5ad(tmp_path / "a.h5ad")
    sc.get.rank_genes_groups_df(a, group=None).to_csv(tmp_path / "rgg.csv", index=False)
    from_h5ad = read_marker_table(tmp_path / "a.h5ad")
    from_csv = read_marker_table(tmp_path / "rgg.csv")
    assert from_h5ad.layout == from_csv.layout == "scanpy"
    assert from_h5ad.lists() == from_csv.lists()
    assert len(from_h5ad) == a.obs["bulk_labels"].nunique()
    first = a.uns["rank_genes_groups"]["names"][from_h5ad.clusters[0]][0]
    assert from_h5ad.genes(from_h5ad.clusters[0])[0] == first
    with pytest.raises(InputError, match="uns"):
        read_marker_table(tmp_path / "a.h5ad", key="nope")


def test_plain_and_json_layouts(tmp_path):
    (tmp_path / "p.tsv").write_text("cluster\tgenes\nT\tCD3E, CD3D,IL7R\nB\tMS4A1,CD79A\n")
    (tmp_path / "p.json").write_text(json.dumps({"T": ["CD3E", "CD3D", "IL7R"],
                                                 "B": ["MS4A1", "CD79A"]}))
    plain, js = read_marker_table(tmp_path / "p.tsv"), read_marker_table(tmp_path / "p.json")
    assert plain.layout == "plain" and js.layout == "json"
    assert plain.lists() == js.lists() == {"T": ["CD3E", "CD3D", "IL7R"], "B": ["MS4A1", "CD79A"]}


@pytest.mark.parametrize("content, match", [
    ('"p_val","avg_log2FC","pct.1","pct.2","p_val_adj","gene"\n0.1,1,0.5,0.1,0.1,CD3E\n',
     "lacks column.*cluster"),
    ("a,b\n1,2\n", "cannot tell its layout"),
    ("T\t\n", "has no genes"),
    ("T\tCD3E\nT\tCD3D\n", "listed twice"),
])
def test_bad_tables_get_one_clear_error(tmp_path, content, match):
    p = tmp_path / ("bad.tsv" if "\t" in content else "bad.csv")
    p.write_text(content)
    with pytest.raises(InputError, match=match):
        read_marker_table(p)


def test_empty_cluster_and_no_overlap_errors(tmp_path):
    df = pd.DataFrame({"cluster": ["0", "0", "1"], "gene": ["CD3E", "CD3D", "MS4A1"],
                       "avg_log2FC": [2.0, 1.5, -0.5], "p_val": 0.0, "p_val_adj": 0.0})
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InputError, match=r"'1'.*log2 fold change"):
        annotate_markers(tmp_path / "m.csv")
    with pytest.raises(InputError, match="none of its 2 genes"):
        annotate_markers({"a": ["ENSG00000010610", "ENSG00000167286"]})


def test_small_cluster_without_significant_markers_keeps_its_top_ones(caplog):
    t = read_marker_table(pd.DataFrame({
        "cluster": ["0", "0", "1", "1"], "gene": ["CD3E", "CD3D", "MS4A1", "CD79A"],
        "avg_log2FC": [2.0, 1.5, 3.0, 2.0], "p_val_adj": [1e-9, 1e-9, 0.4, 0.6]}))
    f = filter_markers(t)
    assert f.genes("1") == ["MS4A1", "CD79A"]
    assert "'1'" in caplog.text and "adjusted p" in caplog.text


def test_builtin_names_clusters_with_trace_and_supporting_markers():
    res = annotate_markers(LISTS)
    t = res.table.set_index("cluster")
    assert list(res.table.columns) == list(OUTPUT_COLUMNS)
    assert t.loc["B cell", "cellreasoner_label"] == "T cell"
    assert t.loc["B cell (activated)", "cellreasoner_ontology_id"] == "CL:0000236"
    assert t.loc["Monocyte", "cellreasoner_ontology_label"].endswith("monocyte")
    assert t.loc["NK", "cellreasoner_ontology_id"] == "CL:0000623"
    assert set(t["cellreasoner_backend"]) == {"builtin"}
    assert t.loc["B cell (activated)", "cellreasoner_supporting_markers"].startswith("MS4A1")
    assert "CD79A (#2)" in t.loc["B cell (activated)", "cellreasoner_reasoning"]
    conf = t["cellreasoner_confidence"].to_numpy()
    assert ((conf > 0.5) & (conf <= 1)).all()


def test_rank_and_specificity_weigh_the_evidence():
    from cellreasoner.backends.builtin.reasoner import Reasoner
    from cellreasoner.markers.scoring import score_table

    r = Reasoner()
    top = read_marker_table({"a": ["CD3E", "X1", "X2", "X3", "X4"],
                             "b": ["X1", "X2", "X3", "X4", "CD3E"]})
    ts = score_table(r, top)
    t_cell = r.db.index("T cell")
    assert ts.scores[0, t_cell] > ts.scores[1, t_cell]  # rank 1 beats rank 5
    shared = read_marker_table({c: ["CD3E", "CD79A"] if c == "a" else ["CD3E", "LYZ"]
                                for c in "abcd"})
    alone = read_marker_table({"a": ["CD3E", "CD79A"], "b": ["LYZ"], "c": ["LYZ"],
                               "d": ["LYZ"]})
    gi = r.genes.index("CD3E")
    assert score_table(r, shared).evidence[0, gi] < score_table(r, alone).evidence[0, gi]


def test_absent_markers_are_cited_only_for_long_lists():
    filler = [f"GENE{i}" for i in range(120)]
    short = annotate_markers({"x": ["MS4A1", "CD79A", "BANK1"], "y": ["LYZ", "CD14"]})
    long_ = annotate_markers({"x": ["MS4A1", "CD79A", "BANK1", *filler], "y": ["LYZ", "CD14"]},
                             top=200)
    assert "Expected but not listed" not in short.table["cellreasoner_reasoning"][0]
    assert "Expected but not listed: CD19" in long_.table["cellreasoner_reasoning"][0]


def test_check_labels_flags_the_b_cell_named_cluster_with_t_markers():
    res = annotate_markers(LISTS, check_labels=True)
    t = res.table.set_index("cluster")
    assert t.loc["B cell", "label_check"] == "disagrees"
    reason = t.loc["B cell", "label_check_reason"]
    assert "T cell" in reason and "CD3E" in reason and "CD3D" in reason
    assert t.loc["B cell (activated)", "label_check"] == "agrees"  # the note is dropped
    assert t.loc["Monocyte", "label_check"] == "agrees"
    assert t.loc["NK", "label_check"] == "agrees"


def test_check_labels_uncertain_for_unknown_names_and_label_map(tmp_path):
    res = annotate_markers({"Cluster 7": ["CD3E", "CD3D"], "MDC": ["CD14", "LYZ", "C1QA"]},
                           check_labels=True)
    t = res.table.set_index("cluster")
    assert t.loc["Cluster 7", "label_check"] == "uncertain"
    (tmp_path / "map.tsv").write_text("truth\tcl_id\nMDC\tCL:0000113\n")
    mapped = annotate_markers({"Cluster 7": ["CD3E", "CD3D"], "MDC": ["CD14", "LYZ", "C1QA"]},
                              check_labels=True, label_map=tmp_path / "map.tsv")
    assert mapped.table.set_index("cluster").loc["MDC", "label_check"] == "agrees"


def _echo_first_gene(prompt, sample):
    """A fake model that names the cell type of the first marker it recognises."""
    rules = {"CD3E": "T cell", "MS4A1": "B cell", "LYZ": "monocyte", "GNLY": "NK cell"}
    lines = prompt.sentence.split("\n")
    answers = []
    for line in lines:
        genes = line.split(":", 1)[-1].replace(" ", "").split(",")
        answers.append(next((rules[g] for g in genes if g in rules), "Unknown"))
    if len(lines) > 1:  # row prompts: one line per row, in reverse with names, to test matching
        names = [ln.split(":", 1)[0] for ln in lines]
        return "\n".join(f"{n}: {a}" for n, a in reversed(list(zip(names, answers,
                                                                       strict=True))))
    return f"<think>{genes[0]} leads.</think>{answers[0]}"


def test_fake_backend_one_cluster_per_call_and_cache(tmp_path):
    fake = FakeBackend(_echo_first_gene)
    res = annotate_markers(LISTS, fake, prompt_style="neutral", cache=tmp_path / "c.sqlite")
    t = res.table.set_index("cluster")
    assert len(fake.calls) == 4  # one prompt per cluster
    assert fake.calls[0].sentence == "CD3E, CD3D, IL7R, CCR7"
    assert t.loc["B cell", "cellreasoner_label"] == "T cell"
    assert t.loc["NK", "cellreasoner_ontology_id"] == "CL:0000623"
    assert t.loc["B cell (activated)", "cellreasoner_supporting_markers"].startswith("MS4A1")
    assert set(t["cellreasoner_backend"]) == {"fake"}
    again = FakeBackend(_echo_first_gene)
    res2 = annotate_markers(LISTS, again, prompt_style="neutral", cache=tmp_path / "c.sqlite")
    assert again.calls == [] and res2.table.equals(res.table)


def test_fake_backend_gptcelltype_rows_per_call():
    fake = FakeBackend(_echo_first_gene)
    res = annotate_markers(LISTS, fake, prompt_style="gptcelltype", clusters_per_call=4,
                           tissue="blood", cache=False, check_labels=True)
    assert len(fake.calls) == 1
    p = fake.calls[0]
    assert p.instruction.startswith("Identify cell types of blood cells using the following "
                                    "markers separately for each row. Only provide the cell "
                                    "type name.")
    assert p.sentence.splitlines()[0] == "B cell:CD3E,CD3D,IL7R,CCR7"
    t = res.table.set_index("cluster")
    assert t.loc["Monocyte", "cellreasoner_label"] == "monocyte"
    assert t.loc["B cell", "cellreasoner_label"] == "T cell"
    assert t.loc["B cell", "label_check"] == "disagrees"
    with pytest.raises(InputError, match="one cluster per prompt"):
        annotate_markers(LISTS, FakeBackend(_echo_first_gene), prompt_style="cellreasoner",
                         clusters_per_call=2, cache=False)


def test_split_rows_matches_names_then_order():
    assert split_rows("1. B cell\n2. T cell", None, ["a", "b"]) == ["B cell", "T cell"]
    assert split_rows("b: T cell\na: B cell", None, ["a", "b"]) == ["B cell", "T cell"]
    assert split_rows("B cell", None, ["a", "b"]) == ["B cell", "Unknown"]


# --- external knowledge -----------------------------------------------------------------------
def test_cellmarker_table_weights_by_sources(markers_dir):
    km = read_cellmarker(markers_dir / "CellMarker2_Cell_marker_All.csv", tissue="blood")
    b = km["CL:0000236"]
    assert b["MS4A1"] == 3.0 and b["CD19"] >= 2.0  # reported by many papers
    assert all(1.0 <= w <= 3.0 for w in b.values()) and len(b) <= 30
    mouse = read_cellmarker(markers_dir / "CellMarker2_Cell_marker_All.csv", species="mouse")
    assert mouse.keys() != km.keys()


def test_panglaodb_matrix_and_tsv(tmp_path, markers_dir):
    pytest.importorskip("openpyxl")
    m = read_panglaodb(markers_dir / "PanglaoDB_Hs_44celltypes.xlsx")
    assert "CL:0000236" in m and "MS4A1" in m["CL:0000236"]
    tsv = tmp_path / "PanglaoDB_markers.tsv"
    pd.DataFrame({
        "species": ["Mm Hs", "Hs", "Mm", "Mm Hs", "Mm Hs"],
        "official gene symbol": ["CD3E", "CD3D", "Cd8a", "ACTB", "TRAC"],
        "cell type": ["T cells"] * 5, "organ": ["Immune system"] * 5,
        "ubiquitousness index": [0.01, 0.02, 0.01, 0.9, 0.01],
        "canonical marker": [1, 0, 1, 0, 0], "sensitivity_human": [0.9, 0.2, 0.0, 1.0, 0.6],
    }).to_csv(tsv, sep="\t", index=False)
    t = read_panglaodb(tsv)["CL:0000084"]
    assert t == {"CD3E": 3.0, "TRAC": 2.0, "CD3D": 1.0}  # mouse-only and ubiquitous left out


def test_external_knowledge_is_merged_by_cl_id_and_used(markers_dir):
    base = load_knowledge()
    merged = load_knowledge(markers_dir / "CellMarker2_Cell_marker_All.csv", tissue="blood")
    assert "CellMarker2" in merged.version
    before, after = base["B cell"].positive, merged["B cell"].positive
    assert all(after[g] == w for g, w in before.items())  # curated weights kept
    new = sorted(set(after) - set(before))
    assert new
    # a cluster listing only markers the external table adds is named with them
    res = annotate_markers({"x": new[:6]}, markers=markers_dir /
                           "CellMarker2_Cell_marker_All.csv", tissue="blood")
    from cellreasoner.ontology import get_ontology

    got = res.table["cellreasoner_ontology_id"][0]
    assert get_ontology().is_ancestor("CL:0000236", got) or got == "CL:0000236"
    assert len(merged) > len(base.restrict("blood"))  # CL types the base lacks join the tree
    assert "CellMarker2" in res.provenance["knowledge"]


def test_cellmarker_layout_file_written_here_feeds_annotate_builtin(tmp_path):
    """A small file in the CellMarker 2.0 layout (UTF-8 with BOM), read by the builtin backend
    of ``annotate --markers`` too."""
    rows = [("Human", "Blood", "Peripheral blood", "Normal", "Normal cell", "T cell",
             "CL_0000084", g, g, str(pmid)) for g, pmid in
            [("CD3E", 1), ("CD3E", 2), ("CD3E", 3), ("CD3E", 4), ("ZNF999", 5), ("ZNF999", 6)]]
    rows += [("Mouse", "Blood", "Peripheral blood", "Normal", "Normal cell", "T cell",
              "CL_0000084", "Cd3g", "Cd3g", "7"),
             ("Human", "Brain", "Cortex", "Normal", "Normal cell", "T cell", "CL_0000084",
              "GFAP", "GFAP", "8")]
    cols = ["species", "tissue_class", "tissue_type", "cancer_type", "cell_type", "cell_name",
            "cellontology_id", "marker", "Symbol", "PMID"]
    path = tmp_path / "Cell_marker_Small.csv"
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False, encoding="utf-8-sig")
    assert read_cellmarker(path, tissue="blood") == {"CL:0000084": {"CD3E": 3.0, "ZNF999": 2.0}}
    assert "GFAP" in read_cellmarker(path)["CL:0000084"]
    from cellreasoner.backends import get_backend

    be = get_backend("builtin", markers=path, tissue="blood")
    t = be.reasoner.db["T cell"]
    assert t.positive["ZNF999"] == 2.0 and t.positive["CD3E"] == 3.0  # curated CD3E:3 kept
    assert "Cell_marker_Small" in be.model


# --- command line -------------------------------------------------------------------------------
def test_cli_end_to_end_with_formula_escaping(tmp_path):
    table = tmp_path / "m.tsv"
    table.write_text("cluster\tgenes\nB cell\tCD3E,CD3D,IL7R,CCR7\n=HYPERLINK(1)\tMS4A1,CD79A\n")
    out = tmp_path / "out.csv"
    proc = subprocess.run([sys.executable, "-m", "cellreasoner.cli", "annotate-markers",
                           str(table), "-o", str(out), "--check-labels", "--tissue", "blood"],
                          capture_output=True, text=True, cwd=REPO,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr
    assert "label check: " in proc.stderr and "disagrees 1" in proc.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == [*OUTPUT_COLUMNS, "label_check", "label_check_reason"]
    assert df["cluster"].tolist() == ["B cell", "'=HYPERLINK(1)"]
    assert df["label_check"].tolist()[0] == "disagrees"


def test_cli_bad_input_is_one_line(tmp_path):
    from cellreasoner.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["annotate-markers", str(bad), "-o", str(tmp_path / "o.csv")]) == 2
    assert main(["annotate-markers", str(bad), "-o", str(tmp_path / "o.txt")]) == 2
    assert not (tmp_path / "o.csv").exists()


def test_consensus_of_builtin_and_models_on_a_marker_table(tmp_path):
    """Several backends name each cluster; the ontology-aware vote of ``annotate`` decides."""
    def says_cd8(prompt, sample):  # calls every T-cell list a CD8 T cell, LYZ+ ones classical
        if "CD3E" in prompt.sentence:
            return "CD8-positive, alpha-beta T cell"
        return "classical monocyte" if "LYZ" in prompt.sentence else "B cell"

    first = FakeBackend(_echo_first_gene, model="echo")
    second = FakeBackend(says_cd8, model="cd8")
    res = annotate_markers(LISTS, ["builtin", first, second], prompt_style="neutral",
                           cache=tmp_path / "c.sqlite", check_labels=True)
    t = res.table.set_index("cluster")
    assert list(res.table.columns[:len(OUTPUT_COLUMNS)]) == list(OUTPUT_COLUMNS)
    assert {"cellreasoner_label_builtin", "cellreasoner_label_fake_echo",
            "cellreasoner_label_fake_cd8", "cellreasoner_agreement",
            "cellreasoner_entropy"} <= set(t.columns)
    # "B cell" (T-cell markers): T cell + T cell + CD8 T -> the majority term, T cell
    row = t.loc["B cell"]
    assert row["cellreasoner_label_fake_cd8"].startswith("CD8")
    assert row["cellreasoner_ontology_id"] == "CL:0000084"  # T cell
    assert row["cellreasoner_agreement"] == pytest.approx(1.0)  # CD8 T lies under T cell
    assert row["cellreasoner_entropy"] > 0 and row["label_check"] == "disagrees"
    # the monocyte list: classical (builtin), monocyte (echo), classical (cd8) -> the majority;
    # "monocyte" is not in the classical monocyte's subtree
    mono = t.loc["Monocyte"]
    assert mono["cellreasoner_label_builtin"] == "classical monocyte"
    assert mono["cellreasoner_ontology_label"] == "classical monocyte"
    assert mono["cellreasoner_confidence"] == pytest.approx(2 / 3)
    assert set(t["cellreasoner_backend"]) == {"consensus:builtin,fake_echo,fake_cd8"}
    assert res.provenance["backend"] == "consensus" and len(res.provenance["backends"]) == 3
    # each backend's answers were cached as a single run caches them
    again = FakeBackend(_echo_first_gene, model="echo")
    annotate_markers(LISTS, again, prompt_style="neutral", cache=tmp_path / "c.sqlite")
    assert again.calls == []


def test_annotate_markers_cli_takes_a_backend_list(tmp_path):
    table = tmp_path / "m.json"
    table.write_text(json.dumps({"T": ["CD3E", "CD3D", "IL7R"], "B": ["MS4A1", "CD79A"]}))
    out = tmp_path / "out.csv"
    bad = subprocess.run([sys.executable, "-m", "cellreasoner.cli", "annotate-markers",
                          str(table), "-o", str(out), "--backend", "builtin,nosuch"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "nosuch" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "cellreasoner.cli", "annotate-markers",
                         str(table), "-o", str(out), "--backend", "builtin,builtin"],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    got = pd.read_csv(out).set_index("cluster")
    assert got.loc["T", "cellreasoner_agreement"] == 1.0
    assert {"cellreasoner_label_builtin", "cellreasoner_label_builtin_2"} <= set(got.columns)


def test_deliberation_on_a_marker_table_revises_disputed_clusters_only(tmp_path):
    """One round: the model sees the others' answers for the clusters they disagree on."""
    def stubborn_then_persuaded(prompt, sample):
        if "Other annotators answered" in prompt.sentence:
            first_line = prompt.sentence.splitlines()[0]
            return "T cell" if "CD3E" in first_line else "natural killer cell"
        return "B cell"  # every first answer is B cell

    model = FakeBackend(stubborn_then_persuaded, model="m")
    res = annotate_markers(LISTS, ["builtin", model], prompt_style="neutral",
                           cache=tmp_path / "c.sqlite", deliberate=True)
    t = res.table.set_index("cluster")
    asked = [p.sentence for p in model.calls if "Other annotators answered" in p.sentence]
    # "B cell (activated)" was unanimous (B cell twice): not asked again
    assert len(asked) == 3 and not any("MS4A1" in s.splitlines()[0] for s in asked)
    assert all("- builtin:" in s and "Your first answer was: B cell." in s for s in asked)
    assert t.loc["B cell", "cellreasoner_label_fake_m"] == "T cell"
    assert t.loc["B cell", "cellreasoner_ontology_id"] == "CL:0000084"
    assert t.loc["NK", "cellreasoner_label_fake_m"] == "natural killer cell"
    assert res.provenance["deliberation"]["revised"] == {"fake_m": 3}
    with pytest.raises(InputError, match="several backends"):
        annotate_markers(LISTS, "builtin", deliberate=True)


def test_small_cluster_warning_is_given_once_per_run(caplog):
    """The table is filtered once per run, whatever the backends: one warning."""
    t = read_marker_table(pd.DataFrame({
        "cluster": ["0", "0", "1", "1"], "gene": ["CD3E", "CD3D", "MS4A1", "CD79A"],
        "avg_log2FC": [2.0, 1.5, 3.0, 2.0], "p_val_adj": [1e-9, 1e-9, 0.4, 0.6]}))
    for backend in (FakeBackend(_echo_first_gene), ["builtin", FakeBackend(_echo_first_gene)]):
        caplog.clear()
        res = annotate_markers(t, backend, prompt_style="neutral", cache=False,
                               check_labels=True)
        warned = [r for r in caplog.records if "adjusted p" in r.getMessage()]
        assert len(warned) == 1, backend
        assert res.table.set_index("cluster").loc["1", "cellreasoner_label"] != ""


def test_sampling_overrides_reach_the_model_as_in_annotate(tmp_path):
    """``top_p`` and ``repetition_penalty`` are sampling overrides here as in ``annotate``
    (API and CLI), alone and for each model of a consensus; unset, the mode's defaults."""
    from cellreasoner.cli import build_parser

    fake = FakeBackend(_echo_first_gene)
    annotate_markers(LISTS, fake, prompt_style="neutral", cache=False, temperature=0.5,
                     top_p=0.9, repetition_penalty=1.3)
    s = fake.samplings[0]
    assert (s.temperature, s.top_p, s.repetition_penalty) == (0.5, 0.9, 1.3)
    member = FakeBackend(_echo_first_gene, model="m")
    annotate_markers(LISTS, ["builtin", member], prompt_style="neutral", cache=False,
                     top_p=0.7, repetition_penalty=1.05)
    assert {(x.top_p, x.repetition_penalty) for x in member.samplings} == {(0.7, 1.05)}
    plain = FakeBackend(_echo_first_gene)
    annotate_markers(LISTS, plain, reasoning=True, prompt_style="neutral", cache=False)
    assert (plain.samplings[0].top_p, plain.samplings[0].repetition_penalty) == (0.4, 1.1)
    args = build_parser().parse_args(["annotate-markers", "t.csv", "-o", str(tmp_path / "o.csv"),
                                      "--top-p", "0.5", "--repetition-penalty", "1.2"])
    assert (args.top_p, args.repetition_penalty) == (0.5, 1.2)
