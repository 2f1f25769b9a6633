"""Native training on CPU with a tiny real Qwen2: it learns, it chains stages, it resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from tiny_model import build_tiny_qwen2  # noqa: E402

from cellreasoner.prompts import INSTRUCTION_REASONING, Prompt, render_chat_text  # noqa: E402
from cellreasoner.resources import load_gene_list  # noqa: E402
from cellreasoner.sentences import build_sentences  # noqa: E402
from cellreasoner.train import (  # noqa: E402
    TrainConfig,
    build_fusion,
    build_knowledge,
    build_reasoning,
    format_reasoning_output,
    train_sft,
)
from cellreasoner.train.sft import PROVENANCE_FILE  # noqa: E402
from cellreasoner.train.tokens import tokenize_records  # noqa: E402

#: Four well-separated PBMC types, four cells each (the over-fit set).
OVERFIT_LABELS = ["CD14+ Monocyte", "CD19+ B", "CD56+ NK", "CD8+ Cytotoxic T"]
MAX_GENES = 16
#: A marker named in each type's (short, label-determined) reasoning trace.
TRACE_MARKER = {"CD14+ Monocyte": "CD14", "CD19+ B": "CD79A", "CD56+ NK": "GNLY",
                "CD8+ Cytotoxic T": "CD8A"}


def _trace(label: str) -> str:
    return f"The cell expresses markers such as {TRACE_MARKER[label]}"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models train faster on one thread (and do not fight parallel tests for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pbmc_raw(_pbmc68k_cached):
    adata = _pbmc68k_cached.raw.to_adata()
    adata.obs = _pbmc68k_cached.obs.copy()
    return adata


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, pbmc_raw):
    """A tiny random Qwen2 chat model whose vocabulary covers the PBMC genes."""
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "model",
                            vocab_genes=list(pbmc_raw.var_names), hidden_size=128)


@pytest.fixture(scope="module")
def overfit_cells(pbmc_raw):
    labels = pbmc_raw.obs["bulk_labels"].astype(str).to_numpy()
    idx = np.concatenate([np.flatnonzero(labels == lab)[:4] for lab in OVERFIT_LABELS])
    return pbmc_raw[idx].copy()


@pytest.fixture(scope="module")
def overfit_records(overfit_cells, gene_list_path):
    sents = build_sentences(overfit_cells, load_gene_list(gene_list_path),
                            label_key="bulk_labels", max_genes=MAX_GENES)
    return list(sents.records())


def _fast(**kw) -> TrainConfig:
    base = dict(batch_size=4, gradient_accumulation_steps=1, logging_steps=1, save_steps=1000,
                warmup_ratio=0.0, max_length=512, gradient_checkpointing=False)
    return TrainConfig(**(base | kw))


def test_completion_mask_covers_only_the_answer(tiny):
    """The loss sees the answer and end-of-turn only; the prompt is what annotate renders."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    rec = {"instruction": INSTRUCTION_REASONING, "input": "CD3E, CD8A, GZMB",
           "output": "<think> CD8A and GZMB are expressed </think> CD8+ Cytotoxic T"}
    cols, dropped = tokenize_records([rec], tok, max_length=512)
    ids, mask = cols["input_ids"][0], cols["completion_mask"][0]
    start = mask.index(1)
    assert dropped == 0 and all(mask[start:]) and not any(mask[:start])
    prompt = render_chat_text(tok, Prompt(rec["instruction"], rec["input"], True))
    assert tok.decode(ids[:start]) == prompt
    assert prompt.endswith("<think> ")
    assert tok.decode(ids[start:]) == "CD8A and GZMB are expressed </think> CD8+ Cytotoxic T" \
        "<|im_end|>\n"
    # an example longer than max_length is left out, never cut inside its answer
    # annotate's tissue sentence after the instruction keeps the reasoning-mode rendering
    lung = dict(rec, instruction=INSTRUCTION_REASONING + " The cells come from lung tissue.")
    cols, _ = tokenize_records([lung], tok, max_length=512)
    start = cols["completion_mask"][0].index(1)
    assert tok.decode(cols["input_ids"][0][:start]).endswith("<think> ")
    short = dict(rec, input="CD3E")
    kept, dropped = tokenize_records([rec, short], tok, max_length=len(ids) - 1)
    assert dropped == 1 and len(kept["input_ids"]) == 1
    from cellreasoner.errors import InputError

    with pytest.raises(InputError, match="longer than max_length"):
        tokenize_records([rec], tok, max_length=10)


def test_overfit_then_annotate_reproduces_labels(tiny, overfit_cells, overfit_records,
                                                 gene_list_path, tmp_path):
    """Full fine-tuning memorises 16 cells in both modes; annotate() with the folder gives them.

    The fusion set holds each cell twice: a direct answer, and a short reasoning trace (naming a
    marker of its type) before the answer. Greedy annotation must reproduce every label in
    both modes and, in reasoning mode, the trace (prompt ends with ``<think> `` in training and
    inference alike).
    """
    from cellreasoner.annotation import annotate

    reasoning = [dict(r, instruction=INSTRUCTION_REASONING,
                      output=format_reasoning_output(_trace(r["output"]), r["output"]))
                 for r in overfit_records]
    out = tmp_path / "overfit"
    cfg = _fast(stage=3, finetuning="full", learning_rate=3e-3, max_steps=240, logging_steps=8,
                lr_scheduler_type="cosine", target_loss=0.005)
    result = train_sft(tiny, overfit_records + reasoning, out, cfg)
    assert result.losses[0] > 2.0, result.losses  # it starts out knowing nothing
    assert result.losses[-1] < 0.005, result.losses
    assert result.global_step < 240  # stopped at the target loss
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert prov["stage"] == 3 and prov["n_trained"] == 32 and prov["config"]["finetuning"] == "full"
    assert prov["max_sentence_genes"] == MAX_GENES

    want = overfit_cells.obs["bulk_labels"].astype(str).tolist()
    for mode in (False, True):
        adata = overfit_cells.copy()
        annotate(adata, "transformers", model=str(out), reasoning=mode, temperature=0,
                 max_genes=MAX_GENES, max_new_tokens=32, gene_list=str(gene_list_path),
                 backend_options={"device": "cpu"}, cache=False, progress=False)
        assert adata.obs["cellreasoner_label"].astype(str).tolist() == want
        traces = adata.obs["cellreasoner_reasoning"].astype(str).tolist()
        assert traces == ([_trace(lab) for lab in want] if mode else [""] * len(want))


def test_three_stages_chain_with_lora(tiny, pbmc_raw, gene_list_path, tmp_path):
    """Stage 1 (builtin-teacher reasoning) -> 2 (knowledge) -> 3 (fusion), each from the last."""
    import torch
    from safetensors.torch import load_file

    genes = load_gene_list(gene_list_path)
    knowledge = build_knowledge(pbmc_raw[:120], "bulk_labels", gene_list=genes,
                                max_genes=MAX_GENES, max_per_label=3, test_size=0.0)
    scaffold = build_reasoning(knowledge.records, "builtin", max_records=8)
    assert scaffold.records, scaffold.info
    fusion = build_fusion(knowledge.records, scaffold.records, direct_ratio=1.0)

    model = tiny
    outs = []
    for stage, data in ((1, scaffold.records), (2, knowledge.records), (3, fusion.records)):
        out = tmp_path / f"stage{stage}"
        res = train_sft(model, data, out, _fast(stage=stage, max_steps=2, learning_rate=1e-3))
        assert res.global_step == 2 and (out / "adapter" / "adapter_config.json").is_file()
        prov = json.loads((out / PROVENANCE_FILE).read_text())
        assert prov["stage"] == stage and prov["base_model"] == str(model)
        # the merged folder is a plain model (no adapter config at the top)
        assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
        outs.append(out)
        model = out
    base = load_file(tiny / "model.safetensors")
    final = load_file(outs[-1] / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[key], final[key])  # the LoRA updates were merged in
    # the final folder is loadable by the annotation backend as is
    from cellreasoner.backends import get_backend
    from cellreasoner.prompts import SamplingParams

    be = get_backend("transformers", model=str(outs[-1]), device="cpu")
    gens = be.generate([Prompt(fusion.records[0]["instruction"], fusion.records[0]["input"])],
                       SamplingParams(temperature=0, max_new_tokens=4))
    assert len(gens) == 1 and isinstance(gens[0][0].text, str)


def test_resume_from_mid_run_checkpoint_matches_uninterrupted(tiny, overfit_records, tmp_path):
    """Resuming from checkpoint-3 of a 6-step run ends with the same weights and losses."""
    import shutil

    import torch
    from safetensors.torch import load_file

    cfg = _fast(max_steps=6, save_steps=3, learning_rate=1e-3, lora_dropout=0.1,
                save_total_limit=None)
    full = train_sft(tiny, overfit_records, tmp_path / "a", cfg)
    assert (tmp_path / "a" / "checkpoints" / "checkpoint-3").is_dir()

    # an interrupted run left only its mid-run checkpoint behind
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-3",
                    tmp_path / "b" / "checkpoints" / "checkpoint-3")
    resumed = train_sft(tiny, overfit_records, tmp_path / "b", cfg, resume_from_checkpoint=True)
    assert resumed.resumed_from.endswith("checkpoint-3")
    assert resumed.global_step == full.global_step == 6
    assert resumed.losses[-3:] == pytest.approx(full.losses[-3:], rel=1e-5)
    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # trained, not the zero init


def test_bad_inputs_are_clear(tiny, tmp_path):
    from cellreasoner.errors import InputError

    with pytest.raises(InputError, match="no text in field"):
        train_sft(tiny, [{"instruction": "x", "input": "CD3E"}], tmp_path / "x")
    with pytest.raises(InputError, match="No checkpoint to resume"):
        train_sft(tiny, [{"instruction": "x", "input": "CD3E", "output": "T cell"}],
                  tmp_path / "y", resume_from_checkpoint=True)
    with pytest.raises(InputError, match="stage must be"):
        TrainConfig(stage=4)


def test_stage_data_mismatch_is_warned(overfit_records, caplog):
    from cellreasoner.train.sft import _check_stage_data

    _check_stage_data(2, overfit_records)
    assert not caplog.records
    _check_stage_data(1, overfit_records)
    _check_stage_data(3, overfit_records)
    assert ["no reasoning records" in caplog.text, "only one mode" in caplog.text] == [True, True]


def _summary(stdout: str) -> dict:
    """The JSON summary line of `train run` (the trainer prints its own log dicts too)."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith('{"')))


def test_cli_run_and_resume(tiny, overfit_records, tmp_path, capsys):
    from cellreasoner.cli import main
    from cellreasoner.train import write_records

    data = write_records(overfit_records, tmp_path / "knowledge.json")
    out = tmp_path / "s2"
    common = ["train", "run", "--stage", "2", "--model", str(tiny), "--data", str(data),
              "-o", str(out), "--batch-size", "8", "--grad-accum", "1", "--save-steps", "2",
              "--max-length", "512", "--no-gradient-checkpointing"]
    held = write_records(overfit_records[:4], tmp_path / "heldout.json")
    assert main(common + ["--max-steps", "2", "--eval-data", str(held)]) == 0
    first = _summary(capsys.readouterr().out)
    assert first["global_step"] == 2 and first["examples"] == 16
    assert first["eval_loss"] > 0  # the held-out loss of the final model is reported
    assert main(common + ["--max-steps", "4", "--resume"]) == 0
    printed = capsys.readouterr().out
    second = _summary(printed)
    assert f"--max-genes {MAX_GENES}" in printed
    # starting fresh over an earlier run's checkpoints is refused (no silent mixing)
    assert main(common + ["--max-steps", "2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(common + ["--max-steps", "1", "--overwrite"]) == 0
    assert _summary(capsys.readouterr().out)["global_step"] == 1
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-1"]
    assert second["global_step"] == 4 and second["resumed_from"].endswith("checkpoint-2")
    assert main(["train", "run", "--stage", "2", "--model", str(tmp_path / "none"), "--data",
                 str(data), "-o", str(tmp_path / "x")]) == 2
    assert "Cannot load a tokenizer" in capsys.readouterr().err
