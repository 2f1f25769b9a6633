"""Training-data builders on real PBMC data: splits, caps, rejection sampling, fusion, files."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cellreasoner.errors import InputError
from cellreasoner.evaluation import score_pair
from cellreasoner.prompts import INSTRUCTION_DIRECT, INSTRUCTION_REASONING
from cellreasoner.train import (
    build_fusion,
    build_knowledge,
    build_reasoning,
    read_records,
    write_records,
)


@pytest.fixture
def pbmc(pbmc68k):
    """pbmc68k_reduced with its log-normalised raw matrix and five donors (blocks of cells)."""
    adata = pbmc68k.raw.to_adata()
    adata.obs = pbmc68k.obs.copy()
    adata.obs["donor"] = [f"donor{i * 5 // adata.n_obs}" for i in range(adata.n_obs)]
    return adata


def _names(records):
    return {r["cell_name"] for r in records}


def test_donor_split_keeps_held_out_donors_out_of_training(pbmc):
    res = build_knowledge(pbmc, "bulk_labels", max_genes=50, split_key="donor", test_size=0.3)
    held = set(res.info["holdout"])
    assert held and len(held) < 5
    donor = pbmc.obs["donor"].astype(str)
    assert not any(donor[n] in held for n in _names(res.records))
    assert _names(res.test) == set(donor.index[donor.isin(held)])
    assert res.info["n_train"] + res.info["n_test"] == pbmc.n_obs

    explicit = build_knowledge(pbmc, "bulk_labels", max_genes=50, split_key="donor",
                               holdout=["donor4"])
    assert {donor[n] for n in _names(explicit.test)} == {"donor4"}
    assert "donor4" not in {donor[n] for n in _names(explicit.records)}
    with pytest.raises(InputError, match="donor9"):
        build_knowledge(pbmc, "bulk_labels", split_key="donor", holdout=["donor9"])
    with pytest.raises(InputError, match="Split column 'batch'"):
        build_knowledge(pbmc, "bulk_labels", split_key="batch")


def test_stratified_split_is_seeded_and_disjoint(pbmc):
    a = build_knowledge(pbmc, "bulk_labels", max_genes=50, test_size=0.2, seed=1)
    b = build_knowledge(pbmc, "bulk_labels", max_genes=50, test_size=0.2, seed=1)
    c = build_knowledge(pbmc, "bulk_labels", max_genes=50, test_size=0.2, seed=2)
    assert a.records == b.records and a.test == b.test
    assert _names(a.test) != _names(c.test)
    assert not _names(a.records) & _names(a.test)
    counts = pbmc.obs["bulk_labels"].astype(str).value_counts()
    test_counts = Counter(r["output"] for r in a.test)
    for label, n in counts.items():  # every label is represented in proportion
        assert test_counts[label] == max(1, round(0.2 * n))
    rec = a.records[0]
    assert rec["instruction"] == INSTRUCTION_DIRECT and rec["input"].count(", ") == 49


def test_caps_balance_and_rare_labels(pbmc):
    capped = build_knowledge(pbmc, "bulk_labels", max_per_label=20, test_size=0.0)
    counts = Counter(r["output"] for r in capped.records)
    assert max(counts.values()) == 20 and counts["CD34+"] == min(20, 13)
    balanced = build_knowledge(pbmc, "bulk_labels", balance=True, test_size=0.0,
                               min_per_label=15)
    counts = Counter(r["output"] for r in balanced.records)
    assert len(set(counts.values())) == 1  # all labels equally represented
    assert "CD34+" in balanced.info["labels_dropped_rare"] and "CD34+" not in counts


def test_labels_normalised_to_cell_ontology(pbmc):
    res = build_knowledge(pbmc, "bulk_labels", max_genes=20, normalize_labels=True,
                          test_size=0.0)
    outputs = {r["output"] for r in res.records}
    assert res.info["label_mapping"]["CD19+ B"] == "B cell"
    assert "B cell" in outputs and "CD19+ B" not in outputs


def test_sentences_match_upstream_prompts(pbmc_demo_rds, upstream_prompts_dir):
    """Records built from the Seurat demo equal the upstream s02.build_dataset.py output."""
    upstream = {r["cell_name"]: r
                for r in json.loads((upstream_prompts_dir / "pbmc_demo_labeled.json").read_text())}
    res = build_knowledge(str(pbmc_demo_rds), "seurat_annotations", test_size=0.0)
    assert len(res.records) == len(upstream) == 35
    for rec in res.records:
        up = upstream[rec["cell_name"]]
        assert (rec["instruction"], rec["input"], rec["output"]) == \
            (up["instruction"], up["input"], up["output"])


def test_reasoning_rejection_sampling_with_builtin_teacher(pbmc):
    direct = build_knowledge(pbmc, "bulk_labels", max_genes=200, test_size=0.0,
                             max_per_label=6).records
    res = build_reasoning(direct, "builtin", max_records=25)
    info = res.info
    assert info["n_generated"] == len(direct) == info["n_candidates"]
    assert info["n_rejected"] > 0  # some teacher answers are wrong and were dropped
    assert info["n_kept"] == len(res.records) <= 25
    assert info["teacher"]["backend"] == "builtin"
    truth = {r["cell_name"]: r["output"] for r in direct}
    for rec in res.records:
        assert rec["instruction"] == INSTRUCTION_REASONING
        assert rec["output"].startswith("<think> ") and " </think> " in rec["output"]
        reasoning, answer = rec["output"][len("<think> "):].split(" </think> ")
        assert reasoning and answer == truth[rec["cell_name"]]
    # every kept trace's own answer was scored 1 by the automatic scorer: rerun and check
    from cellreasoner.backends import get_backend
    from cellreasoner.parsing import parse_response
    from cellreasoner.prompts import Prompt, SamplingParams

    be = get_backend("builtin")
    gens = be.generate([Prompt(r["instruction"], r["input"], True) for r in res.records],
                       SamplingParams.for_mode(True))
    for rec, (gen,) in zip(res.records, gens, strict=True):
        assert score_pair(truth[rec["cell_name"]], parse_response(gen.text, gen.reasoning).label) \
            == 1.0
    # balanced across labels: a label has fewer traces than the others only when it ran out
    per_label = Counter(truth[r["cell_name"]] for r in res.records)
    accepted = info["accepted_label_counts"]
    top = max(per_label.values())
    assert all(n >= top - 1 or n == accepted[lab] for lab, n in per_label.items())
    assert sum(accepted.values()) == info["n_accepted"] > info["n_kept"]


def test_reasoning_dedupes_and_honours_the_scorer(pbmc):
    direct = build_knowledge(pbmc, "bulk_labels", max_genes=200, test_size=0.0,
                             max_per_label=3).records
    twice = direct + [dict(r) for r in direct]  # the same cells again: identical traces
    res = build_reasoning(twice, "builtin", max_records=None, min_score=0.0)
    assert res.info["n_duplicates"] == len(direct)
    assert len({r["input"] for r in res.records}) == len(res.records)
    assert res.info["n_prompts"] == len(direct)  # identical sentences asked once
    none = build_reasoning(direct, "builtin", scorer=lambda truth, pred: 0.0, cache=False)
    assert none.records == [] and none.info["n_rejected"] == len(direct)
    with pytest.raises(InputError, match="direct-answer records"):
        build_reasoning(res.records, "builtin")


def test_teacher_answers_are_cached_for_resume(pbmc, tmp_path):
    direct = build_knowledge(pbmc, "bulk_labels", max_genes=200, test_size=0.0,
                             max_per_label=2).records
    db = tmp_path / "teacher.sqlite"
    first = build_reasoning(direct, "builtin", cache=db)
    again = build_reasoning(direct, "builtin", cache=db)
    assert first.info["cache_hits"] == 0 and db.is_file()
    assert again.info["cache_hits"] == again.info["n_prompts"] == len(direct)
    assert again.records == first.records


def test_fusion_mixes_both_modes(pbmc):
    direct = build_knowledge(pbmc, "bulk_labels", max_genes=100, test_size=0.0).records
    reasoning = build_reasoning(direct, "builtin", n_candidates=40, max_records=10).records
    fused = build_fusion(direct, reasoning, direct_ratio=2.0, seed=3)
    modes = Counter(r["instruction"] for r in fused.records)
    assert modes == {INSTRUCTION_REASONING: len(reasoning), INSTRUCTION_DIRECT: 2 * len(reasoning)}
    assert fused.records != sorted(fused.records, key=lambda r: r["instruction"])  # shuffled
    mirrored = build_fusion(direct, reasoning, direct_ratio=0.0, mirror=True)
    pairs = {}
    for r in mirrored.records:
        pairs.setdefault(r["input"], {})[r["instruction"]] = r["output"]
    for outs in pairs.values():  # the same cell answered in both modes, same final label
        assert outs[INSTRUCTION_REASONING].endswith(" </think> " + outs[INSTRUCTION_DIRECT])
    with pytest.raises(InputError, match="needs reasoning records"):
        build_fusion(direct, direct)


def test_records_files_round_trip_and_validation(pbmc, tmp_path):
    res = build_knowledge(pbmc[:60], "bulk_labels", max_genes=30, test_size=0.2)
    paths = res.write(tmp_path / "train.json", tmp_path / "test.jsonl")
    assert read_records(paths[0]) == res.records and read_records(paths[1]) == res.test
    assert not list(tmp_path.glob("*.tmp"))
    assert json.loads(paths[0].read_text())[0].keys() >= {"instruction", "input", "output"}

    bad = tmp_path / "bad.json"
    write_records([{"instruction": INSTRUCTION_REASONING, "input": "CD3E", "output": "T"}],
                  tmp_path / "x.json")
    with pytest.raises(InputError, match="no </think>"):
        read_records(tmp_path / "x.json")
    from cellreasoner.train import validate_records

    lung = INSTRUCTION_DIRECT + " The cells come from lung tissue."
    with pytest.raises(InputError, match="holds reasoning"):
        validate_records([{"instruction": lung, "input": "CD3E", "output": "a </think> T"}])
    bad.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_records(bad)
    with pytest.raises(InputError, match="Label column 'cell_type'"):
        build_knowledge(pbmc, "cell_type")
    labels = pbmc.obs["bulk_labels"].astype(object)
    labels[:] = np.nan
    pbmc.obs["empty"] = labels
    with pytest.raises(InputError, match="No cell has a label"):
        build_knowledge(pbmc, "empty")


def test_cli_builds_the_three_datasets(pbmc, tmp_path, capsys):
    """`cellreasoner train build-*` from an .h5ad to the stage files."""
    from cellreasoner.cli import main

    h5ad = tmp_path / "pbmc.h5ad"
    pbmc.write_h5ad(h5ad)
    k, held = tmp_path / "knowledge.json", tmp_path / "heldout.jsonl"
    assert main(["train", "build-knowledge", str(h5ad), "--label-key", "bulk_labels",
                 "-o", str(k), "--test-output", str(held), "--split-key", "donor",
                 "--holdout", "donor0,donor1", "--max-genes", "100", "--max-per-label",
                 "8"]) == 0
    train, test = read_records(k), read_records(held)
    donor = pbmc.obs["donor"]
    assert {donor[r["cell_name"]] for r in test} == {"donor0", "donor1"}
    assert not {donor[r["cell_name"]] for r in train} & {"donor0", "donor1"}
    s = tmp_path / "scaffold.json"
    assert main(["train", "build-reasoning", str(k), "-o", str(s), "--max-records",
                 "12", "--cache", str(tmp_path / "teacher.sqlite"), "--no-progress"]) == 0
    scaffold = read_records(s)
    assert 0 < len(scaffold) <= 12
    f = tmp_path / "fusion.json"
    assert main(["train", "build-fusion", "--direct", str(k), "--reasoning", str(s), "-o",
                 str(f), "--mirror"]) == 0
    assert len(read_records(f)) == 3 * len(scaffold)
    out = capsys.readouterr().out
    assert "held-out groups: donor0, donor1" in out and "rejected by the scorer" in out
    # a bad column is a one-line error, exit status 2
    assert main(["train", "build-knowledge", str(h5ad), "--label-key", "nope", "-o",
                 str(k)]) == 2
    assert "Label column 'nope' not in obs" in capsys.readouterr().err
