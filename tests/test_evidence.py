"""Evidence checks of reasoning traces against real cell sentences (PBMC demo prompts)."""

from __future__ import annotations

import json

import evidence_reference as _ref
import pandas as pd
import pytest

from cellreasoner.errors import InputError
from cellreasoner.evidence import _core, check_evidence, check_evidence_many, cited_genes
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


def test_conclusions_are_not_evidence(vocab):
    """A gene symbol inside the cell type concluded ("→ CD4-positive T cell", "Final: ...",
    "Answer: ...") is not a claim that the cell expresses it; the evidence before it is."""
    trace = ("CD3E, CD3D present, no CD8A → CD4-positive T cell; IL7R present → naive "
             "CD4-positive T cell. Final: naive CD4-positive T cell (CL:0000895), confidence "
             "0.90. (Own expression alone: CD8-positive T cell; the call uses the neighbours.)")
    ev = check_evidence(trace, "CD3E, CD3D, IL7R", vocab)
    assert ev.cited == ("CD3E", "CD3D", "CD8A", "IL7R")
    assert ev.fraction_present == 1.0 and not ev.flagged
    ev = check_evidence("Answer: CD14+ monocyte. Final answer: CD14 monocyte", "LYZ", vocab)
    assert ev.cited == ()
    # evidence written after the conclusion, in its own clause, still counts
    ev = check_evidence("Final: B cell. MS4A1 and CD68 are expressed.", "MS4A1", vocab)
    assert ev.cited == ("MS4A1", "CD68") and ev.unsupported == ("CD68",)


def test_builtin_traces_are_fully_supported(pbmc68k, gene_list_path):
    """Every builtin trace, with and without kNN smoothing, cites only what the cell shows."""
    from cellreasoner.backends.builtin.reasoner import Reasoner

    raw = pbmc68k.raw.to_adata()
    genes = [str(g) for g in raw.var_names]
    r = Reasoner()
    sentences = [", ".join(g for g, v in zip(genes, row, strict=True) if v > 0)
                 for row in raw.X.toarray()]
    vocabulary = list(dict.fromkeys([*load_gene_list(gene_list_path), *genes]))
    for graph in (None, pbmc68k.obsp["connectivities"]):
        traces = r.annotate_matrix(raw.X, genes, connectivities=graph).reasoning
        ev = check_evidence_many(traces, sentences, vocabulary)
        assert (ev["fraction_present"] == 1.0).all(), ev[ev["fraction_present"] < 1].head()
    assert any("from the kNN neighbours" in t for t in traces)


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


# --- the fast path gives exactly the straightforward implementation's results ---------------


@pytest.fixture
def builtin_cells(pbmc68k, gene_list_path):
    """Real builtin traces and sentences of pbmc68k_reduced, as annotate() produces them."""
    from cellreasoner.backends.builtin.reasoner import Reasoner
    from cellreasoner.sentences import build_sentences

    raw = pbmc68k.raw.to_adata()
    var_names = [str(g) for g in raw.var_names]
    genes = load_gene_list(gene_list_path)
    traces = Reasoner().annotate_matrix(raw.X, var_names).reasoning
    sents = build_sentences(raw, genes)
    vocabulary = list(dict.fromkeys([*genes, *var_names]))
    return traces, sents, vocabulary


def _copies(texts, n):
    """``n`` tiles of ``texts``, each string a new object (as per-cell strings are)."""
    return [t[:1] + t[1:] if t else t for _ in range(n) for t in texts]


def test_fast_many_equals_reference_on_builtin_traces(builtin_cells):
    traces, sents, vocabulary = builtin_cells
    n = len(traces)
    assert n == 700 and sum(bool(t) for t in traces) > 600
    reasonings = _copies(traces, 3)
    strings = _copies([sents.sentence(i) for i in range(n)], 3)
    ref = _ref.reference_check_evidence_many(reasonings, strings, vocabulary)
    assert ref["n_cited"].sum() > 5 * n and ref["absent"].str.len().gt(0).any()
    pd.testing.assert_frame_equal(check_evidence_many(reasonings, strings, vocabulary), ref)
    # the same cells given as gene lists, sets and tuples (no join / re-split)
    lists = [sents.cell_genes(i) for _ in range(3) for i in range(n)]
    pd.testing.assert_frame_equal(check_evidence_many(reasonings, lists, vocabulary), ref)
    sets = [frozenset(g) for g in lists]
    pd.testing.assert_frame_equal(check_evidence_many(reasonings, sets, tuple(vocabulary)), ref)
    # default vocabulary (ranked gene list + sentence genes), custom thresholds, an index
    idx = [f"c{i}" for i in range(len(strings))]
    ref = _ref.reference_check_evidence_many(reasonings, strings, index=idx, min_cited=3,
                                             threshold=0.9)
    got = check_evidence_many(reasonings, strings, index=idx, min_cited=3, threshold=0.9)
    pd.testing.assert_frame_equal(got, ref)


def test_fast_single_equals_reference_on_builtin_traces(builtin_cells):
    traces, sents, vocabulary = builtin_cells
    for i in range(0, len(traces), 7):
        s = sents.sentence(i)
        assert check_evidence(traces[i], s, vocabulary) == \
            _ref.reference_check_evidence(traces[i], s, vocabulary)
        assert check_evidence(traces[i], sents.cell_genes(i)) == \
            _ref.reference_check_evidence(traces[i], s)


#: LLM-style traces: negations in every form, lists, clauses, CD names, abbreviations, noise.
LLM_TRACES = [
    "The cell expresses CD3E, CD3D and CD8A/CD8B together with GZMK and CCL5, so it is a CD8 T "
    "cell rather than a CD4 T cell. HLA-DR is low and MS4A1 is absent.",
    "There is no CD3E, CD3D, CD8A or CD4 in this cell; NKG7 and GNLY are high, so NK cell.",
    "CD3E, CD3D and CD4 are absent; GNLY is high. CD14-negative, FCGR3A+ and LYZ-.",
    "No CD14 here, but CD27 is clearly expressed. S100A8 is not detected while CD8A is absent",
    "Lack of MS4A1 and absence of CD79A argue against B cells; negative for CD19.\n\nIL7R, "
    "CCR7 and SELL point to naive T cells although LEF1 is missing.",
    "GC B cells express AICDA. TH cells need CD4. ALB, APOA1 and GC are hepatocyte genes.",
    "AC012345.1 is up. LTB too. CD16+ and CD56 bright; CD45 present, HLA-DR+ and CD11c-.",
    "<think>Markers: LYZ, S100A9, CST3 (high); CD3E—absent; FCER1A present; PPBP? no.</think>",
    "The SET of markers is ALL T-like, and IT is NOT clear; CD8 devoid of expression? CD8B "
    "seems completely absent, neither CD79B nor CD19 is expressed.",
    "Not only CD3E but also CD2 is expressed; without CCR7, free of SELL, excludes KLRB1.",
    "NKG7−, GZMB high, PRF1 elevated; CD160 isn't present, KLRD1 null, FOO1 and BAR2 up.",
    "CD3E, CD8A present -> CD8 T cell; no CD4 => not CD4. Final answer: CD8-positive T cell.",
    "Answer: CD4+ T cell. GNLY ⇒ NK-like; (Own markers alone: CD16+ monocyte; MS4A1 absent)",
    "", "   ", "nan", "Just words, no genes at all.",
]


def test_fast_path_equals_reference_on_llm_traces(vocab, demo_cells):
    sentences = [s for _, s in demo_cells]
    odd = ["CD3E ,CD8A\tGNLY,, NKG7 ,FOO1", " LYZ,S100A9 ,CST3\n", "MS4A1, CD79A,  CD19"]
    cells = sentences[: len(LLM_TRACES)] + odd
    traces = (LLM_TRACES * 2)[: len(cells)]
    extra = ["FOO1"]  # a symbol known only from a sentence (vocabulary layer of the cells)
    for vocabulary in (vocab, vocab + extra, None):
        for min_cited, threshold in ((2, 0.5), (1, 0.99), (0, 1.5)):
            kw = {"min_cited": min_cited, "threshold": threshold}
            ref = _ref.reference_check_evidence_many(traces + [None, float("nan")],
                                                     cells + cells[:2], vocabulary, **kw)
            got = check_evidence_many(traces + [None, float("nan")], cells + cells[:2],
                                      vocabulary, **kw)
            pd.testing.assert_frame_equal(got, ref)
            for t, s in zip(traces, cells, strict=True):
                assert check_evidence(t, s, vocabulary, **kw) == \
                    _ref.reference_check_evidence(t, s, vocabulary, **kw), (t, s)
    ev = check_evidence(LLM_TRACES[10], "NKG7, FOO1", vocab)
    assert "FOO1" in ev.cited and "FOO1" in ev.present  # known through the cell's sentence
    assert "FOO1" not in check_evidence(LLM_TRACES[10], "NKG7", vocab).cited


def test_fast_path_odd_gene_collections(vocab):
    import numpy as np

    trace = "CD3E and GNLY are high, no CD14; 5 and 7 too."
    cells = [[" CD3E ", "GNLY"], np.array(["CD3E", "NKG7"]), ("CD14", 5), iter(["GNLY", "7"]),
             {"CD3E", "CD14"}, ["CD3E", ["nested"]]]
    traces = [trace] * len(cells)
    ref = _ref.reference_check_evidence_many(traces, [list(c) if not isinstance(c, set) else c
                                                      for c in cells[:3]] + [["GNLY", "7"]]
                                             + cells[4:], vocab)
    got = check_evidence_many(traces, cells, vocab)
    pd.testing.assert_frame_equal(got, ref)
    assert got["present"].iat[0] == "CD3E, GNLY"  # stripped like the reference
    assert check_evidence_many([], [], vocab).equals(_ref.reference_check_evidence_many([], [],
                                                                                        vocab))


def test_caches_follow_changed_inputs(vocab):
    trace = "QQQ1 and GNLY are high, CD3E absent."
    words = list(vocab)
    before = check_evidence(trace, "GNLY", words)
    assert "QQQ1" not in before.cited
    words.append("QQQ1")  # the same list object, changed: the compiled vocabulary is renewed
    after = check_evidence(trace, "GNLY", words)
    assert after == _ref.reference_check_evidence(trace, "GNLY", words)
    assert after.cited[0] == "QQQ1" and after.unsupported == ("QQQ1",)
    # the same trace under other flagging settings is judged afresh
    assert check_evidence(trace, "GNLY", words, min_cited=1, threshold=0.9).flagged
    assert not check_evidence(trace, "GNLY", words).flagged


def test_fast_clause_splitter_and_word_window_match_the_originals(builtin_cells):
    import random
    import re

    # the original clause pattern, written out: the fast one must split every text the same
    original = re.compile(r"[.;:!?](?=\s|$)|\n+|\bbut\b|\bwhereas\b|\bwhile\b|\bhowever\b|"
                          r"\balthough\b", re.I)
    assert _core._CLAUSE.pattern == original.pattern
    rng = random.Random(0)
    pieces = ["but", "BUT", "But", "whereas", "While", "however", "ALTHOUGH", "butter", "abut",
              "whilst", ".", ";", ":", "!", "?", " ", "\n", "\t", "\u00a0", "CD3E", "x", "-",
              "_but", "but_", "9", "ſ", "\u212a", "I", "ı", "although.", "e.g.", "3.5"]
    texts = [*builtin_cells[0], *LLM_TRACES]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
              for _ in range(3000)]
    for text in texts:
        assert _core._CLAUSE_FAST.split(text) == original.split(text), text
        for cut in range(0, len(text) + 1, 7):  # the negation window's last words
            before = text[:cut]
            assert before.rsplit(None, 6)[-6:] == before.split()[-6:]
