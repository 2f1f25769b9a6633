"""Evidence checks of reasoning traces against real cell sentences (PBMC demo prompts)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cellreasoner.errors import InputError
from cellreasoner.evidence import check_evidence, check_evidence_many, cited_genes
from cellreasoner.resources import load_gene_list


@pytest.fixture(scope="module")
def vocab(gene_list_path):
    return load_gene_list(gene_list_path)


@pytest.fixture(scope="module")
def demo_cells(upstream_prompts_dir):
    """(label, cell sentence) of the 35 PBMC demo cells, as the upstream scripts wrote them."""
    recs = json.loads((upstream_prompts_dir / "pbmc_demo_labeled.json").read_text())
    return [(r["output"], r["input"]) for r in recs]


def _first(demo_cells, label):
    return next(s for lab, s in demo_cells if lab == label)


def test_cited_genes_finds_symbols_not_words(vocab):
    trace = ("The cell expresses CD3E, CD3D and CD8A/CD8B together with GZMK and CCL5, so it "
             "is a CD8 T cell rather than a CD4 T cell. The SET of markers is ALL T-like; "
             "HLA-DR is low and MS4A1 is absent.")
    got = cited_genes(trace, vocab)
    assert got[:6] == ["CD3E", "CD3D", "CD8A", "CD8B", "GZMK", "CCL5"]
    assert "CD4" in got           # CD4 is a gene even inside "CD4 T cell"
    assert "CD8" in got           # CD name standing for CD8A/CD8B
    assert "HLA-DR" in got and "MS4A1" in got
    assert "SET" not in got and "ALL" not in got and "T" not in got
    assert "cell" not in got and "is" not in got
    # gene symbols used as abbreviations: GC B cells (germinal centre) vs the GC gene
    assert cited_genes("GC B cells express AICDA.", vocab) == ["AICDA"]
    assert cited_genes("ALB, APOA1 and GC are hepatocyte genes.", vocab) == ["ALB", "APOA1", "GC"]
    # symbols with dots (lncRNA clones) are not split by the sentence splitter
    assert cited_genes("AC012345.1 is up. LTB too.", ["AC012345.1", "LTB"]) == ["AC012345.1",
                                                                                "LTB"]


def test_supported_reasoning_is_not_flagged(vocab, demo_cells):
    sentence = _first(demo_cells, "B")
    genes = sentence.split(", ")
    assert {"MS4A1", "CD79A", "CD74"} <= set(genes)
    trace = ("MS4A1 and CD79A are expressed together with CD74 and HLA-DRA, typical of B "
             "cells. There is no CD3E or CD14 and LYZ is absent, arguing against T cells and "
             "monocytes.")
    ev = check_evidence(trace, sentence, vocab)
    assert set(ev.cited) == {"MS4A1", "CD79A", "CD74", "HLA-DRA", "CD3E", "CD14", "LYZ"}
    assert {"MS4A1", "CD79A", "CD74", "HLA-DRA"} <= set(ev.present)
    assert set(ev.negated) == {"CD3E", "CD14", "LYZ"} and set(ev.absent) >= {"CD14", "LYZ"}
    assert ev.unsupported == ()
    assert ev.fraction_present == 1.0 and not ev.flagged


def test_reasoning_on_absent_genes_is_flagged(vocab, demo_cells):
    sentence = _first(demo_cells, "B")  # a B cell ...
    trace = ("High CD14, LYZ, S100A8 and FCGR3A with CD68 point to a classical monocyte.")
    ev = check_evidence(trace, sentence, vocab)  # ... explained with monocyte genes
    assert set(ev.unsupported) == {"CD14", "LYZ", "S100A8", "FCGR3A", "CD68"} - set(
        sentence.split(", "))
    assert ev.fraction_present < 0.5 and ev.flagged


@pytest.mark.parametrize("phrase", [
    "no CD27", "CD27 absent", "lack of CD27", "negative for CD27", "CD27-negative",
    "CD27 is not expressed", "without CD27", "CD27-", "absence of CD27",
])
def test_negation_forms(phrase, vocab):
    ev = check_evidence(f"CCL5 and NKG7 are high; {phrase}.", "CCL5, NKG7, GNLY", vocab)
    assert ev.negated == ("CD27",) and ev.absent == ("CD27",)
    assert ev.unsupported == () and ev.fraction_present == 1.0 and not ev.flagged


def test_negation_spreads_along_gene_lists(vocab):
    sentence = "NKG7, GNLY, CCL5"
    ev = check_evidence("There is no CD3E, CD3D, CD8A or CD4 in this cell.", sentence, vocab)
    assert set(ev.negated) == {"CD3E", "CD3D", "CD8A", "CD4"}
    ev = check_evidence("CD3E, CD3D and CD4 are absent; GNLY is high.", sentence, vocab)
    assert set(ev.negated) == {"CD3E", "CD3D", "CD4"} and ev.present == ("GNLY",)
    ev = check_evidence("GNLY, NKG7 and CCL5 are high with CD3E absent.", sentence, vocab)
    assert ev.negated == ("CD3E",) and ev.unsupported == () and not ev.flagged


def test_negation_does_not_leak_across_clauses(vocab):
    ev = check_evidence("No CD14 here, but CD27 is clearly expressed.", "CD3E", vocab)
    assert ev.negated == ("CD14",)
    assert ev.unsupported == ("CD27",)
    ev = check_evidence("NKG7 is expressed while CD8A is absent", "NKG7, CD8A", vocab)
    assert ev.contradicted == ("CD8A",)  # claimed absent but the cell expresses it
    assert ev.fraction_present == 0.5


def test_single_citation_is_not_flagged(vocab):
    ev = check_evidence("CD68 suggests macrophages.", "CD3E, CD2", vocab)
    assert ev.unsupported == ("CD68",) and ev.fraction_present == 0.0
    assert not ev.flagged  # fewer than min_cited genes
    assert check_evidence("CD68 suggests macrophages.", "CD3E", vocab, min_cited=1).flagged
    empty = check_evidence("", "CD3E", vocab)
    assert empty.cited == () and empty.fraction_present == 1.0 and not empty.flagged
    assert empty.fraction is None and not empty.flag


def test_field_aliases(vocab):
    ev = check_evidence("GNLY is high, CD68 too.", "GNLY, NKG7", vocab)
    assert ev.cited_present == ev.present == ("GNLY",)
    assert ev.cited_absent == ev.absent == ("CD68",)
    assert ev.fraction == ev.fraction_present == 0.5 and ev.flag == ev.flagged


def test_default_vocabulary_is_the_ranked_gene_list():
    ev = check_evidence("GNLY and NKG7 are high, CD3E is absent.", ["GNLY", "NKG7"])
    assert ev.cited == ("GNLY", "NKG7", "CD3E") and ev.negated == ("CD3E",)


def test_check_evidence_many_over_demo_cells(vocab, demo_cells):
    labels = [lab for lab, _ in demo_cells]
    sentences = [s for _, s in demo_cells]
    # each cell explained by its own top 3 genes, then by the top 3 genes of another cell type
    own = [f"{', '.join(s.split(', ')[:3])} are expressed." for s in sentences]
    other = {lab: s for lab, s in demo_cells}
    swap = {"B": "CD14+ Mono", "CD14+ Mono": "NK", "NK": "B", "DC": "Naive CD4 T",
            "Naive CD4 T": "CD14+ Mono", "Memory CD4 T": "CD14+ Mono", "FCGR3A+ Mono": "NK"}
    foreign = []
    for lab, s in demo_cells:
        mine = set(s.split(", "))
        theirs = [g for g in other[swap[lab]].split(", ") if g not in mine][:3]
        foreign.append(f"{', '.join(theirs)} are expressed.")
    frame = check_evidence_many(own + foreign + [None], sentences + sentences + [sentences[0]],
                                vocab, index=labels + labels + ["none"])
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2 * len(labels) + 1
    assert list(frame.columns) == ["cited", "present", "absent", "negated", "n_cited",
                                   "fraction_present", "flagged"]
    n = len(labels)
    assert (frame["n_cited"].iloc[:n] == 3).all() and not frame["flagged"].iloc[:n].any()
    assert (frame["fraction_present"].iloc[:n] == 1.0).all()
    assert frame["flagged"].iloc[n:2 * n].all()
    assert frame.loc["none", "n_cited"] == 0
    with pytest.raises(InputError, match="one sentence per reasoning"):
        check_evidence_many(["a"], [], vocab)
