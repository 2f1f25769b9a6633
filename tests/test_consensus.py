"""Consensus of several backends: the ontology-aware vote, the run, the CLI, deliberation."""

from __future__ import annotations

import argparse
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from fault_server import LABEL, FaultServer

from cellreasoner.annotation import annotate
from cellreasoner.annotation.consensus import member_name, parse_backend_spec
from cellreasoner.annotation.vote import consensus_frame, consensus_vote
from cellreasoner.backends.fake import FakeBackend
from cellreasoner.cli import main
from cellreasoner.cli.annotate import backend_list
from cellreasoner.errors import InputError
from cellreasoner.ontology import get_ontology, map_label


def _vote(*labels: str):
    return consensus_vote(labels, [map_label(x).id or "" for x in labels])


def _h(*p: float) -> float:
    return -sum(x * math.log2(x) for x in p)


# --- the vote --------------------------------------------------------------------------------
def test_majority_on_the_grounded_term_wins():
    v = _vote("B cell", "B-cells", "T cell")  # two spellings, one CL term
    assert (v.ontology_id, v.how) == ("CL:0000236", "majority")
    assert v.label == "B cell"
    assert v.agreement == pytest.approx(2 / 3)
    assert v.entropy == pytest.approx(_h(2 / 3, 1 / 3))


def test_unanimous_answers_have_zero_entropy_and_full_agreement():
    v = _vote("NK cell", "natural killer cell")
    assert (v.ontology_id, v.how, v.agreement, v.entropy) == ("CL:0000623", "unanimous",
                                                              1.0, 0.0)


def test_disagreeing_answers_meet_at_their_closest_common_ancestor():
    v = _vote("CD4-positive T cell", "CD8-positive T cell", "T cell")
    assert (v.ontology_id, v.label, v.how) == ("CL:0000084", "T cell", "ancestor")
    assert v.agreement == 1.0  # every answer lies in the T-cell subtree
    assert v.entropy == pytest.approx(math.log2(3))
    # B and T cells meet at lymphocyte: a real term, not the uninformative "cell"
    assert _vote("B cell", "T cell").ontology_id == "CL:0000542"


def test_without_a_common_informative_ancestor_the_majority_subtree_decides():
    cd4, cd8 = map_label("CD4-positive T cell").id, map_label("CD8-positive T cell").id
    v = _vote("CD4-positive T cell", "CD8-positive T cell", "hepatocyte")
    onto = get_ontology()
    assert v.how == "ancestor"
    assert onto.is_ancestor(v.ontology_id, cd4) and onto.is_ancestor(v.ontology_id, cd8)
    assert not onto.is_ancestor(v.ontology_id, map_label("hepatocyte").id)
    assert v.agreement == pytest.approx(2 / 3)


def test_two_unrelated_answers_tie_and_abstentions_count():
    tie = _vote("T cell", "hepatocyte")
    assert (tie.label, tie.ontology_id, tie.how, tie.agreement) == ("Unknown", "", "tie", 0.0)
    assert tie.entropy == pytest.approx(1.0)
    most_abstain = _vote("Unknown", "Unknown", "B cell")
    assert (most_abstain.label, most_abstain.how) == ("Unknown", "abstain")
    assert most_abstain.agreement == pytest.approx(2 / 3)
    one_answer = _vote("Unknown", "B cell")
    assert (one_answer.ontology_id, one_answer.how, one_answer.agreement) == (
        "CL:0000236", "plurality", 0.5)


def test_answers_without_a_cl_term_vote_by_their_text():
    v = _vote("Zorblast", "zorblasts", "B cell")
    assert (v.label, v.ontology_id, v.how) == ("Zorblast", "", "majority")
    assert v.agreement == pytest.approx(2 / 3)


def test_consensus_frame_equals_the_vote_of_each_row():
    labels = pd.DataFrame({"a": ["B cell", "T cell", "B cell", "Unknown"],
                           "b": ["B cell", "hepatocyte", "B cell", "NK cell"],
                           "c": ["T cell", "T cell", "T cell", "NK cell"]},
                          index=["x", "y", "z", "w"])
    ids = labels.map(lambda t: map_label(t).id or "")
    out = consensus_frame(labels, ids)
    assert list(out.index) == ["x", "y", "z", "w"]
    for cell, row in labels.iterrows():
        v = consensus_vote(list(row), list(ids.loc[cell]))
        assert out.loc[cell, "ontology_id"] == v.ontology_id
        assert out.loc[cell, "agreement"] == pytest.approx(v.agreement)
        assert out.loc[cell, "how"] == v.how
    assert out.loc["y", "label"] == "T cell" and out.loc["w", "how"] == "majority"
    with pytest.raises(InputError, match="same shape"):
        consensus_frame(labels, ids.iloc[:, :2])


# --- names and parsing -------------------------------------------------------------------------
def test_backend_list_parsing_and_column_names():
    assert parse_backend_spec("builtin, openai:gpt-4o:mini ,gguf:/m/Qwen2.5-1.5B.gguf") == [
        ("builtin", None), ("openai", "gpt-4o:mini"), ("gguf", "/m/Qwen2.5-1.5B.gguf")]
    assert member_name(("openai", "gpt-4o:mini")) == "openai_gpt_4o_mini"
    assert member_name(("gguf", "/m/Qwen2.5-1.5B.gguf")) == "gguf_qwen2_5_1_5b"
    assert member_name(FakeBackend(model="Other Model")) == "fake_other_model"
    with pytest.raises(InputError, match="Unknown backend 'nope'"):
        parse_backend_spec("builtin,nope")
    assert backend_list("builtin,openai:m") == "builtin,openai:m"
    with pytest.raises(argparse.ArgumentTypeError, match="invalid choice: 'nope'"):
        backend_list("builtin,nope:m")


def test_cli_rejects_an_unknown_backend_in_the_list(capsys):
    with pytest.raises(SystemExit):
        main(["annotate", "pbmc68k_reduced", "-o", "x.h5ad", "--backend", "builtin,nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.fixture
def cells(pbmc68k) -> ad.AnnData:
    """40 pbmc68k cells, log-normalised ``.raw`` as X, with their bulk labels."""
    full = pbmc68k.raw.to_adata()
    return full[::17].copy()


def test_bad_consensus_options_are_one_clear_error(cells):
    with pytest.raises(InputError, match="give each its model"):
        annotate(cells, "builtin,openai", model="m", progress=False)
    with pytest.raises(InputError, match="accepts the option"):
        annotate(cells, ["builtin", "builtin"], backend_options={"nonsense": 1}, progress=False)
    with pytest.raises(InputError, match="needs several backends"):
        annotate(cells, "builtin", deliberate=True, progress=False)


# --- runs ----------------------------------------------------------------------------------
def _t_cell(prompt, sample):
    return "<think>CD3E is expressed.</think>T cell"


def _revise(prompt, sample):
    """First answer 'hepatocyte'; in the deliberation, adopt the first other answer."""
    if "Other annotators answered:" in prompt.sentence:
        line = next(x for x in prompt.sentence.splitlines() if x.startswith("- "))
        return "<think>reconsidered</think>" + line.split(": ", 1)[1].split(" (")[0]
    return "<think>ALB is expressed.</think>hepatocyte"


def test_consensus_run_keeps_each_backend_and_votes(cells, tmp_path):
    cache = tmp_path / "c.sqlite"
    res = annotate(cells, ["builtin", FakeBackend(), FakeBackend(_t_cell, model="t-only")],
                   cache=cache, progress=False)
    obs = cells.obs
    names = ["builtin", "fake", "fake_t_only"]
    for n in names:
        assert f"cellreasoner_label_{n}" in obs
    assert res.provenance["backend_names"] == names
    assert set(res.provenance["backends"]) == set(names)
    assert res.provenance["backend"] == "consensus"
    assert not [c for c in obs.columns if c.startswith("_consensus")]  # scratch runs removed
    # each backend's column is what it answers alone, and its answers were cached as alone
    alone = annotate(cells.copy(), "builtin", progress=False)
    assert list(obs["cellreasoner_label_builtin"].astype(str)) == list(alone.table["label"])
    again = FakeBackend()
    fake_alone = annotate(cells.copy(), again, cache=cache, progress=False)
    assert again.calls == []  # every prompt came from the consensus run's cache entries
    assert list(obs["cellreasoner_label_fake"].astype(str)) == list(fake_alone.table["label"])
    assert set(obs["cellreasoner_label_fake_t_only"].astype(str)) == {"T cell"}
    # agreement: the fraction of the three answers inside the consensus term's subtree
    onto = get_ontology()
    ids = np.column_stack([[map_label(x).id or "" for x in obs[f"cellreasoner_label_{n}"]
                            .astype(str)] for n in names])
    for i, cons in enumerate(obs["cellreasoner_ontology_id"].astype(str)):
        if not cons:
            continue
        inside = [bool(x) and (x == cons or onto.is_ancestor(cons, x)) for x in ids[i]]
        assert obs["cellreasoner_agreement"].iat[i] == pytest.approx(sum(inside) / 3)
        assert obs["cellreasoner_confidence"].iat[i] == obs["cellreasoner_agreement"].iat[i]
    assert set(np.round(obs["cellreasoner_entropy"], 3)) <= {0.0, 0.918, 1.585}
    assert obs["cellreasoner_agreement"].dtype == np.float64
    assert str(obs["cellreasoner_label_builtin"].dtype) == "category"
    assert "Consensus of 3 backends" in obs["cellreasoner_reasoning"].iat[0]
    table = pd.read_csv(res.to_csv(tmp_path / "out.csv"))
    assert {"agreement", "entropy", "label_builtin", "label_fake_t_only"} <= set(table)
    # a single-backend run afterwards leaves no stale consensus columns
    annotate(cells, "builtin", progress=False)
    assert not [c for c in cells.obs if c.startswith("cellreasoner_label_")
                or c in ("cellreasoner_agreement", "cellreasoner_entropy")]


@pytest.mark.parametrize("mode", ["cluster", "hybrid"])
def test_consensus_in_cluster_and_hybrid_mode(cells, mode):
    fake = FakeBackend(_revise, model="deliberating")
    res = annotate(cells, ["builtin", fake], mode=mode, by="bulk_labels", cache=False,
                   deliberate=True, progress=False)
    obs = cells.obs
    assert res.provenance["mode"] == mode and res.provenance["by"] == "bulk_labels"
    assert res.provenance["consensus"]["revised"]["fake_deliberating"] > 0
    first = [p for p in fake.calls if "Other annotators" not in p.sentence]
    asked = [p for p in fake.calls if "Other annotators" in p.sentence]
    assert asked and asked[0].sentence.startswith(first[0].sentence.split("\n")[0][:40])
    groups = obs.groupby("bulk_labels", observed=True)
    assert (groups["cellreasoner_cluster_label"].nunique() == 1).all()
    if mode == "cluster":  # one answer per cluster and backend: one vote per cluster
        assert (groups["cellreasoner_label"].nunique() == 1).all()
        assert (groups["cellreasoner_label_builtin"].nunique() == 1).all()
        assert list(obs["cellreasoner_cluster_agreement"]) == list(
            obs["cellreasoner_agreement"])
    else:  # each cell votes, the cluster label is the majority of the consensus labels
        for _, part in groups:
            top = part["cellreasoner_label"].astype(str).value_counts()
            assert part["cellreasoner_cluster_label"].iat[0] in top[top == top.max()].index


def test_deliberation_round_lets_llm_backends_revise_once_and_is_cached(cells, tmp_path):
    cache = tmp_path / "c.sqlite"
    fake = FakeBackend(_revise, model="deliberating")
    res = annotate(cells, ["builtin", fake], deliberate=True, cache=cache, progress=False)
    obs = cells.obs
    builtin = obs["cellreasoner_label_builtin"].astype(str)
    mine = obs["cellreasoner_label_fake_deliberating"].astype(str)
    grounded = builtin != "Unknown"
    same = [map_label(a).id == map_label(b).id for a, b in zip(mine[grounded],
                                                                builtin[grounded], strict=True)]
    assert all(same)  # revised to the other's answer
    assert res.provenance["consensus"]["revised"]["fake_deliberating"] == int(grounded.sum())
    assert (obs.loc[grounded, "cellreasoner_agreement"] == 1.0).all()
    asked = [p for p in fake.calls if "Other annotators answered:" in p.sentence]
    assert asked and len(asked) <= len(cells)  # one round at most, one prompt per distinct case
    assert any("markers cited as expressed:" in p.sentence for p in asked)  # the evidence
    again = FakeBackend(_revise, model="deliberating")
    annotate(cells.copy(), ["builtin", again], deliberate=True, cache=cache, progress=False)
    assert again.calls == []  # first round and deliberation both cached


def test_cli_consensus_with_a_real_openai_compatible_server(cells, tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    cells.write_h5ad(src)
    cache = tmp_path / "c.sqlite"
    with FaultServer("ok") as server:
        args = ["annotate", str(src), "--backend", "builtin,openai:m1", "--base-url", server.url,
                "--cache", str(cache), "--no-progress"]
        assert main([*args, "-o", str(tmp_path / "out.h5ad"), "--csv",
                     str(tmp_path / "out.csv")]) == 0
        asked = sum(server.asked.values())
        assert asked > 0
        assert main([*args, "-o", str(tmp_path / "again.h5ad")]) == 0
        assert sum(server.asked.values()) == asked  # the second run is served by the cache
        alone = annotate(cells.copy(), "openai:m1", backend_options={"base_url": server.url},
                         cache=cache, progress=False)  # "name:model" alone: the same entries
        assert sum(server.asked.values()) == asked
        assert alone.provenance["model"] == "m1" and alone.provenance["cache_hits"] > 0
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    assert set(back.obs["cellreasoner_label_openai_m1"].astype(str)) == {LABEL}
    b_cells = back.obs["cellreasoner_label_builtin"].astype(str) == "B cell"
    assert (back.obs.loc[b_cells, "cellreasoner_agreement"] == 1.0).all()
    onto = get_ontology()
    for cons, own in zip(back.obs["cellreasoner_ontology_id"].astype(str),
                         back.obs["cellreasoner_label_builtin"].astype(str), strict=True):
        own_id = map_label(own).id
        if cons and own_id:  # the consensus term holds both answers, or one of two
            assert cons in onto.ancestors_self(own_id) or cons == "CL:0000236"
    prov = back.uns["cellreasoner"]
    assert prov["backend"] == "consensus"
    assert list(prov["backend_names"]) == ["builtin", "openai_m1"]
    assert prov["backends"]["openai_m1"]["model"] == "m1"
    table = pd.read_csv(tmp_path / "out.csv")
    assert "label_openai_m1" in table and "entropy" in table
    assert "wrote" in capsys.readouterr().err
