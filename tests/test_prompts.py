"""Prompt styles and instructions: the published text for CellReasoner models, a neutral one
for every other model, and the upstream texts on request whatever the mode."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellreasoner.annotation import annotate
from cellreasoner.backends.fake import FakeBackend
from cellreasoner.errors import InputError
from cellreasoner.prompts import (
    INSTRUCTION_DIRECT,
    INSTRUCTION_REASONING,
    Prompt,
    neutral_instruction,
    render_chat_text,
    resolve_instruction,
    resolve_prompt_style,
)

GENES = ["CD3E", "MS4A1", "LYZ", "ACTB"]


def _cells() -> ad.AnnData:
    X = sp.csr_matrix(np.array([[2.0, 0, 0, 1.0], [0, 3.0, 0, 1.0]], dtype=np.float32))
    a = ad.AnnData(X)
    a.var_names = GENES
    a.obs_names = ["c1", "c2"]
    return a


@pytest.mark.parametrize(("model", "style"), [
    ("guangshuo/CellReasoner-7B", "cellreasoner"),
    ("/models/cell_reasoner-32b.Q4_K_M.gguf", "cellreasoner"),
    ("gpt-4o-mini", "neutral"),
    ("/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "neutral"),
    ("", "neutral"),
])
def test_auto_style_follows_the_model_family(model, style):
    assert resolve_prompt_style("auto", model) == style
    assert resolve_prompt_style("neutral", "guangshuo/CellReasoner-7B") == "neutral"
    assert resolve_prompt_style("cellreasoner", "gpt-4o") == "cellreasoner"


def test_a_model_our_trainer_wrote_gets_the_published_prompt(tmp_path):
    folder = tmp_path / "my-finetune"
    folder.mkdir()
    assert resolve_prompt_style("auto", str(folder)) == "neutral"
    (folder / "cellreasoner_train.json").write_text("{}")
    assert resolve_prompt_style("auto", str(folder)) == "cellreasoner"


def test_unknown_style_is_a_clear_error():
    with pytest.raises(InputError, match="prompt_style must be one of auto, cellreasoner"):
        resolve_prompt_style("fancy", "m")


def test_neutral_instruction_names_the_tissue_and_never_tumours():
    for reasoning in (False, True):
        for cluster in (False, True):
            text = neutral_instruction(reasoning, "lung", cluster)
            assert "human lung tissue" in text and "tumor" not in text.lower()
            assert ("cluster" in text) == cluster
            assert ("<think></think>" in text) == reasoning
    assert "tissue" not in neutral_instruction(False)


def test_named_and_file_instructions(tmp_path):
    # the notebook's published reasoning run: the direct text, then "<think> "
    assert resolve_instruction("direct", reasoning=True, style="neutral") == INSTRUCTION_DIRECT
    assert resolve_instruction("reasoning", reasoning=False,
                               style="cellreasoner") == INSTRUCTION_REASONING
    assert resolve_instruction(None, reasoning=False, style="cellreasoner",
                               tissue="blood") == INSTRUCTION_DIRECT + (
        " The cells come from blood tissue.")
    f = tmp_path / "mine.txt"
    f.write_text("  Name the cell type.\n")
    assert resolve_instruction(str(f), reasoning=True, style="cellreasoner") == (
        "Name the cell type.")
    f.write_text("")
    with pytest.raises(InputError, match="is empty"):
        resolve_instruction(str(f), reasoning=False, style="neutral")
    with pytest.raises(InputError, match="neither 'direct', 'reasoning' nor"):
        resolve_instruction(str(tmp_path / "missing.txt"), reasoning=False, style="neutral")


def test_annotate_uses_and_records_the_style():
    fake = FakeBackend(model="guangshuo/CellReasoner-7B")
    res = annotate(_cells(), fake, gene_list=GENES, cache=False, progress=False)
    assert fake.calls[0].instruction == INSTRUCTION_DIRECT
    assert res.provenance["prompt_style"] == "cellreasoner"
    assert res.provenance["instruction"] == INSTRUCTION_DIRECT

    fake = FakeBackend(model="some-chat-model")
    res = annotate(_cells(), fake, gene_list=GENES, cache=False, progress=False,
                   reasoning=True, tissue="blood")
    assert fake.calls[0].instruction == neutral_instruction(True, "blood")
    assert res.provenance["prompt_style"] == "neutral"


def test_reasoning_with_the_direct_instruction_reproduces_the_notebook_prompt():
    class Template:  # a ChatML template, as Qwen2.5's
        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                           for m in messages)
            return body + "<|im_start|>assistant\n"

    fake = FakeBackend(model="guangshuo/CellReasoner-7B")
    annotate(_cells(), fake, gene_list=GENES, reasoning=True, instruction="direct",
             cache=False, progress=False)
    prompt = fake.calls[0]
    assert prompt == Prompt(INSTRUCTION_DIRECT, prompt.sentence, True)
    assert render_chat_text(Template(), prompt).endswith(
        f"{prompt.sentence}<|im_end|>\n<|im_start|>assistant\n<think> ")
    assert INSTRUCTION_DIRECT in render_chat_text(Template(), prompt)


def test_cluster_prompts_are_short_for_general_models_and_as_published_for_cellreasoner():
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(1.0, size=(40, 150)).astype(np.float32))
    a = ad.AnnData(X)
    a.var_names = [f"G{i}" for i in range(150)]
    a.obs["group"] = np.repeat(["a", "b"], 20)
    genes = list(a.var_names)
    general = FakeBackend(model="some-chat-model")
    res = annotate(a.copy(), general, mode="cluster", by="group", gene_list=genes,
                   cache=False, progress=False)
    assert res.provenance["n_markers"] == 30
    assert max(len(p.sentence.split(", ")) for p in general.calls) <= 30
    cr = FakeBackend(model="guangshuo/CellReasoner-7B")
    res = annotate(a.copy(), cr, mode="cluster", by="group", gene_list=genes, cache=False,
                   progress=False)
    assert res.provenance["n_markers"] == 100
    assert max(len(p.sentence.split(", ")) for p in cr.calls) > 30
