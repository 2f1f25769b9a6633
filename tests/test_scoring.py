"""The automatic hierarchical scorer against the paper's judged pairs, tables and an LLM judge."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from cellreasoner.backends import Backend, Generation
from cellreasoner.errors import BackendError, InputError
from cellreasoner.evaluation import (
    LEVELS,
    LLMJudge,
    PairScorer,
    explain_pair,
    parse_judgment,
    score_pair,
)
from cellreasoner.prompts import Prompt, SamplingParams

COLS = ["Ground Truth", "Model Prediction", "Prediction Evaluation", "Evaluation Score"]


def test_levels_match_the_paper():
    assert LEVELS == {1.0: "Subtype correct", 0.5: "Major correct",
                      0.25: "Partially correct", 0.0: "Incorrect"}


def test_agreement_with_judged_dev_pairs(shared_data):
    df = pd.read_csv(shared_data / "pair_scores_dev.csv")
    assert list(df.columns) == COLS and len(df) == 7973
    auto = PairScorer().score_many(df["Ground Truth"], df["Model Prediction"])
    judged = df["Evaluation Score"].to_numpy(dtype=float)
    assert set(np.unique(auto)) <= set(LEVELS)
    agreement = float(np.mean(auto == judged))
    assert agreement >= 0.85, agreement
    # every level is produced, and the level means are ordered like the judges' levels
    assert set(np.unique(auto)) == set(LEVELS)
    means = [auto[judged == lv].mean() for lv in (1.0, 0.5, 0.0)]
    assert means[0] > means[1] > means[2]


@pytest.mark.parametrize("truth,pred,expected", [
    # subtype correct
    ("CD4 TCM", "CD4 TEM", 1.0),
    ("CD8 Naive", "Naive CD8+ T cell", 1.0),
    ("T cell", "CD8+ T cells", 1.0),           # prediction more specific than the truth
    ("Hepatocyte_2", "hepatocytes", 1.0),
    ("Plasma_Cells", "Plasmocytes", 1.0),
    ("myCAF TPM1", "Fibroblasts", 1.0),        # fibroblast major has no finer level
    ("CD14+ Mono", "Classical monocytes", 1.0),
    ("Naive CD4 T", "CD4+/CD45RA+/CD25- Naive T", 1.0),
    # major correct
    ("CD4 CCL20", "T cells", 0.5),             # broader term
    ("CD4 FTH1", "CD8+ T cells", 0.5),         # sibling subtype, same major
    ("Plasma", "Memory B", 0.5),
    ("DC CD1C", "Myeloid", 0.5),
    ("Acinar", "Epithelial", 0.5),
    ("CD16 Mono", "Macrophage", 0.5),
    # partially correct: hedged across lineages
    ("CD8 GZMK", "Cytotoxic T cells or NK cells", 0.25),
    ("Central_venous_LSECs", "Pericytes or endothelial cells", 0.25),
    # incorrect
    ("B cell", "T cells", 0.0),
    ("Mast", "Macrophage", 0.0),
    ("T cell", "NK cell", 0.0),
    ("Hepatocyte_3", "Cholangiocytes", 0.0),   # different epithelial cell types
    ("CD4 LTB", "Okay, let's tackle this problem step by step. First, the genes", 0.0),
])
def test_specific_pairs(truth, pred, expected):
    assert score_pair(truth, pred) == expected, explain_pair(truth, pred)


def test_explain_names_the_rule():
    e = explain_pair("CD4 CCL20", "T cells")
    assert e.score == 0.5 and e.level == "Major correct" and e.source == "ontology"
    assert "broader" in e.rule and e.truth.id == "CL:0000624" and e.prediction.id == "CL:0000084"
    e = explain_pair("B cell", "blah blah")
    assert e.score == 0.0 and "not mapped" in e.rule
    assert "Incorrect" in str(e)
    assert explain_pair("Vascular", "vascular").rule == "identical label text"
    assert score_pair("Vascular", "Vascular") == 1.0  # ambiguous label, but the same text


def _table() -> pd.DataFrame:
    return pd.DataFrame([
        ["B cell", "T cells", "Major correct", 0.5],          # overrides the automatic 0
        ["CD4 TCM", "CD4 TEM", "Incorrect", 0.0],             # overrides the automatic 1
    ], columns=COLS)


def test_pair_table_overrides_and_coverage(tmp_path):
    for source in (_table(), tmp_path / "pairs.csv", tmp_path / "pairs.xlsx"):
        if not isinstance(source, pd.DataFrame):
            if source.suffix == ".csv":
                _table().to_csv(source, index=False)
            else:
                _table().to_excel(source, index=False)
        scorer = PairScorer(pair_table=source)
        assert scorer.coverage == 0.0
        got = scorer.score_many(["B cell", "CD4 TCM", "B cell", "Mast"],
                                ["T cells", "CD4 TEM", "B cells", "Macrophage"])
        assert got.tolist() == [0.5, 0.0, 1.0, 0.0]
        assert scorer.coverage == pytest.approx(0.5)
        assert scorer.explain("B cell", "T cells").source == "table"
        assert scorer.score("Mast", "Mast cells") == 1.0
        assert scorer.coverage == pytest.approx(2 / 5)


def test_pair_table_with_only_level_names():
    df = _table().drop(columns=["Evaluation Score"])
    assert PairScorer(pair_table=df).score("B cell", "T cells") == 0.5


def test_bad_pair_tables_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="Pair table not found"):
        PairScorer(pair_table=tmp_path / "missing.xlsx")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"truth": ["B"], "pred": ["T"]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match="lacks column.*Ground Truth"):
        PairScorer(pair_table=bad)
    wrong = _table()
    wrong.loc[0, "Evaluation Score"] = 0.7
    wrong.loc[0, "Prediction Evaluation"] = "Sort of"
    with pytest.raises(InputError, match="row 2"):
        PairScorer(pair_table=wrong)
    with pytest.raises(InputError, match="as many predictions"):
        PairScorer().score_many(["a", "b"], ["c"])


class RuleJudgeBackend(Backend):
    """A real backend whose answers come from the ontology rules, written as judge prose."""

    name = "rule-judge"
    model = "score_pair"

    def __init__(self):
        self.prompts_seen = 0

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams,
                 progress=None) -> list[list[Generation]]:
        out = []
        for p in prompts:
            truth, pred = (line.split(": ", 1)[1] for line in p.sentence.splitlines())
            level = LEVELS[score_pair(truth, pred)]
            out.append([Generation(text=f"<think>comparing</think>The answer is: {level}.")])
        self.prompts_seen += len(prompts)
        if progress:
            progress(len(prompts))
        return out


def test_llm_judge_path_with_memory_and_sqlite_cache(tmp_path):
    backend = RuleJudgeBackend()
    db = tmp_path / "judge.sqlite"
    scorer = PairScorer(pair_table=_table(), judge=LLMJudge(backend, cache_path=db))
    truths = ["CD4 FTH1", "B cell", "Mast", "CD4 FTH1"]
    preds = ["CD8+ T cells", "T cells", "Mast cells", "CD8+ T cells"]
    got = scorer.score_many(truths, preds)
    assert got.tolist() == [0.5, 0.5, 1.0, 0.5]  # B/T from the table, the rest judged
    assert backend.prompts_seen == 2              # unique, non-table pairs only
    assert scorer.explain("Mast", "Mast cells").source == "judge"
    assert backend.prompts_seen == 2              # memory cache
    judge2 = LLMJudge(RuleJudgeBackend(), cache_path=db)
    assert judge2.judge("Mast", "Mast cells") == 1.0
    assert judge2.backend.prompts_seen == 0       # read back from SQLite
    judge2.close()
    # a backend passed directly is wrapped in a judge
    direct = PairScorer(judge=RuleJudgeBackend())
    assert direct.score("CD4 CCL20", "T cells") == 0.5


def test_judge_only_for_labels_the_ontology_cannot_ground():
    backend = RuleJudgeBackend()
    scorer = PairScorer(judge=backend, judge_scope="unmapped")
    got = scorer.score_many(["CD4 FTH1", "Cluster 7", "B cell"],
                            ["CD8+ T cells", "Pericytes", "Reed-Sternberg-like blobs"])
    assert got[0] == 0.5 and backend.prompts_seen == 2  # only the two ungroundable pairs
    assert scorer.explain("CD4 FTH1", "CD8+ T cells").source == "ontology"
    assert scorer.explain("B cell", "Reed-Sternberg-like blobs").source == "judge"
    with pytest.raises(InputError, match="judge_scope"):
        PairScorer(judge=backend, judge_scope="sometimes")


class MumblingBackend(RuleJudgeBackend):
    def generate(self, prompts, sampling, progress=None):
        return [[Generation(text="hard to say")] for _ in prompts]


def test_unreadable_judge_answer_is_a_backend_error():
    with pytest.raises(BackendError, match="Could not read a level"):
        LLMJudge(MumblingBackend()).judge("B cell", "T cell")


def test_parse_judgment():
    assert parse_judgment("Major correct") == 0.5
    assert parse_judgment("<think>Is it subtype correct? No.</think> Partially correct") == 0.25
    assert parse_judgment("Score: 1") == 1.0
    assert parse_judgment("incorrect.") == 0.0
    assert parse_judgment("no idea") is None
