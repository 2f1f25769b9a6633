"""The vLLM backend's prompt and sampling construction (with the real tiny tokenizer).

vLLM itself needs a GPU and is not installed in the test environment: what runs around it is
tested here, and constructing the backend without it must name the extra to install.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
from tiny_model import build_tokenizer

from cellreasoner.backends import get_backend
from cellreasoner.backends.vllm import prompt_texts, prompt_token_ids, sampling_kwargs
from cellreasoner.errors import InputError, MissingDependencyError
from cellreasoner.prompts import INSTRUCTION_DIRECT, INSTRUCTION_REASONING, Prompt, SamplingParams


@pytest.fixture(scope="session")
def tokenizer(gene_list_path):
    from cellreasoner.resources import load_gene_list

    return build_tokenizer(load_gene_list(gene_list_path))


def test_prompt_texts_follow_upstream_rendering(tokenizer, upstream_prompts_dir):
    records = json.loads((upstream_prompts_dir / "pbmc68k_raw_labeled.json").read_text())[:2]
    prompts = [Prompt(INSTRUCTION_DIRECT, records[0]["input"]),
               Prompt(INSTRUCTION_REASONING, records[1]["input"], True)]
    direct, reasoning = prompt_texts(tokenizer, prompts)
    assert direct == (f"<|im_start|>system\n{INSTRUCTION_DIRECT}<|im_end|>\n<|im_start|>user\n"
                      f"{records[0]['input']}<|im_end|>\n<|im_start|>assistant\n")
    assert reasoning.endswith(f"{records[1]['input']}<|im_end|>\n<|im_start|>assistant\n<think> ")
    assert "<think>" not in reasoning[:-len("<think> ")]
    assert reasoning.count("</think>") == 1  # the instruction's tag, as upstream leaves it


def test_prompt_token_ids_match_the_transformers_backend_and_cut_as_upstream(
        tokenizer, upstream_prompts_dir):
    records = json.loads((upstream_prompts_dir / "pbmc68k_raw_labeled.json").read_text())[:3]
    prompts = [Prompt(INSTRUCTION_DIRECT, r["input"]) for r in records]
    prompts.append(Prompt(INSTRUCTION_REASONING, records[0]["input"], True))
    ids, truncated = prompt_token_ids(tokenizer, prompts)
    # the ids the transformers backend feeds the model: tokenizer(rendered texts)
    assert ids == tokenizer(prompt_texts(tokenizer, prompts))["input_ids"]
    assert truncated == [False] * 4 and all(len(i) < 8192 for i in ids)
    assert tokenizer.decode(ids[3]) == prompt_texts(tokenizer, prompts[3:])[0]
    # a limit below the longest prompt keeps each prompt's first tokens, as upstream
    limit = sorted(len(i) for i in ids)[1]
    cut, cut_flags = prompt_token_ids(tokenizer, prompts, max_input_tokens=limit)
    assert cut_flags == [len(i) > limit for i in ids] and sum(cut_flags) >= 2
    assert all(c == i[:limit] for c, i in zip(cut, ids, strict=True))
    assert prompt_token_ids(tokenizer, []) == ([], [])


def test_a_model_without_chat_template_is_refused_clearly(gene_list_path):
    from cellreasoner.resources import load_gene_list

    base_model_tokenizer = build_tokenizer(load_gene_list(gene_list_path)[:50])
    base_model_tokenizer.chat_template = None
    with pytest.raises(InputError, match="Model 'base-lm' has no chat template"):
        prompt_texts(base_model_tokenizer, [Prompt(INSTRUCTION_DIRECT, "CD3D")], "base-lm")


def test_sampling_kwargs_follow_upstream_modes():
    assert sampling_kwargs(SamplingParams.for_mode(False)) == {
        "n": 1, "temperature": 0.01, "top_p": 0.01, "repetition_penalty": 1.1,
        "max_tokens": 4096, "seed": 1234, "skip_special_tokens": True}
    sampling = replace(SamplingParams.for_mode(True, n=4, max_new_tokens=512,
                                               extra={"top_k": 20}), seed=None)
    kw = sampling_kwargs(sampling)
    assert (kw["temperature"], kw["top_p"], kw["n"], kw["seed"]) == (0.6, 0.4, 4, None)
    assert kw["max_tokens"] == 512 and kw["top_k"] == 20
    with pytest.raises(InputError, match="temperature"):
        sampling_kwargs(SamplingParams(temperature=0.0, n=3))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                    reason="vllm is installed here: the missing-extra message cannot occur")
def test_missing_vllm_names_the_extra(tmp_path):
    with pytest.raises(MissingDependencyError, match=r"pip install 'cellreasoner\[vllm\]'"):
        get_backend("vllm", model=str(tmp_path))


@pytest.mark.parametrize("option", [{"chunk_size": 0}, {"max_input_tokens": 0}])
def test_bad_sizes_are_refused_before_vllm_is_needed(option, tmp_path):
    with pytest.raises(InputError, match=f"{next(iter(option))} must be >= 1"):
        get_backend("vllm", model=str(tmp_path), **option)
