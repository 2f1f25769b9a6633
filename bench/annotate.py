"""Benchmark: how much model work each annotation mode needs, and openai-path throughput.

Run from the project root (needs ../shared for the gene list, or $CELLREASONER_GENE_LIST)::

    python bench/annotate.py [--cells 120] [--max-new-tokens 8] [--skip-server]

Part 1 (pbmc68k_reduced, 700 cells): unique prompts, model calls and prompt tokens for per-cell
without dedupe, per-cell deduplicated and cluster mode. Prompt tokens are counted with the tiny
test tokenizer (``tests/tiny_model.build_tokenizer``: byte-level BPE trained on the gene list,
Qwen2.5 chat template), i.e. the chat-rendered prompt as a Qwen-style model would see it; the
real Qwen2.5 tokenizer splits many gene symbols into more pieces, so absolute counts are lower
bounds, ratios between modes are what matters.

Part 2: cells/s of ``annotate(backend="openai")`` against a local ``transformers serve`` of the
tiny random Qwen2 (CPU), plain and with ``--continuous-batching``, at concurrency 1 and 8, no
cache, plus the same run again from the cache and the builtin backend for reference. Client
concurrency only pays off when the server batches concurrent requests.

Part 3: the builtin backend end to end on pbmc68k_reduced and on it tiled ``--copies`` times.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path

_table = functools.partial(table, align="auto")  # the shared bench table






def prompt_work(tokenizer) -> list[dict]:
    """Unique prompts, model calls and prompt tokens per mode on pbmc68k_reduced."""
    import anndata as ad

    from cellreasoner.annotation.clusters import rank_markers
    from cellreasoner.datasets import pbmc68k_reduced
    from cellreasoner.matrix import from_anndata
    from cellreasoner.prompts import Prompt, instruction_for
    from cellreasoner.resources import load_gene_list
    from cellreasoner.sentences import build_sentences

    genes = load_gene_list()
    instruction = instruction_for(False)

    def tokens(prompt: Prompt) -> int:
        text = tokenizer.apply_chat_template(prompt.messages(), tokenize=False,
                                             add_generation_prompt=True)
        return len(tokenizer(text)["input_ids"])

    rows = []
    adata = pbmc68k_reduced()
    replicated = ad.concat([adata, adata, adata], index_unique="-")
    for name, data in (("pbmc68k_reduced", adata), ("pbmc68k x3 (replicated)", replicated)):
        sents = build_sentences(data, genes)
        prompts = [Prompt(instruction, s, False) for s in sents.iter_sentences()]
        per_token = {}
        for p in prompts:
            k = p.key()
            if k not in per_token:
                per_token[k] = tokens(p)
        all_tokens = sum(per_token[p.key()] for p in prompts)
        rows.append({"data": name, "mode": "per-cell, no dedupe", "cells": len(prompts),
                     "unique prompts": len(prompts), "model calls": len(prompts),
                     "prompt tokens": all_tokens})
        rows.append({"data": name, "mode": "per-cell, deduplicated", "cells": len(prompts),
                     "unique prompts": len(per_token), "model calls": len(per_token),
                     "prompt tokens": sum(per_token.values())})
    for by in ("bulk_labels", "louvain"):
        groups = adata.obs[by].astype(str)
        markers = rank_markers(from_anndata(adata), groups, genes)
        prompts = [Prompt(instruction, ", ".join(m), False) for m in markers.values()]
        rows.append({"data": "pbmc68k_reduced", "mode": f"cluster (by {by}, 100 markers)",
                     "cells": adata.n_obs, "unique prompts": len(prompts),
                     "model calls": len(prompts),
                     "prompt tokens": sum(tokens(p) for p in prompts)})
    return rows


def throughput(n_cells: int, max_new_tokens: int, model_dir: str, workdir: Path) -> list[dict]:
    """cells/s of the openai path against a local transformers serve (plain and with
    continuous batching), at concurrency 1 and 8, without cache and from the cache."""
    from test_annotate_server import requests_served, serve

    from cellreasoner.annotation import annotate
    from cellreasoner.datasets import pbmc68k_reduced

    data = pbmc68k_reduced()[:n_cells].copy()
    rows = []
    servers = (("serve", ()), ("serve --continuous-batching", ("--continuous-batching",)))
    for server_name, extra in servers:
        with serve(model_dir, workdir / server_name.replace(" ", "_"),
                   extra_args=extra) as (url, log):
            # warm-up request so model loading is not timed
            annotate(data[:2].copy(), "openai", model=model_dir,
                     backend_options={"base_url": url}, max_new_tokens=2, cache=False,
                     progress=False)
            for conc in (1, 8):
                cache = workdir / f"{server_name}-{conc}.sqlite"
                for label, use_cache in (("no cache", False), ("cached re-run", cache)):
                    kw = {"model": model_dir, "max_new_tokens": max_new_tokens,
                          "temperature": 1.0, "progress": False,
                          "backend_options": {"base_url": url, "concurrency": conc}}
                    if use_cache is not False:  # fill the cache first, then time the re-run
                        annotate(data.copy(), "openai", cache=cache, **kw)
                    before = requests_served(log)
                    t0 = time.perf_counter()
                    res = annotate(data.copy(), "openai", cache=use_cache, **kw)
                    secs = time.perf_counter() - t0
                    rows.append({"server": server_name, "concurrency": conc, "run": label,
                                 "cells": n_cells,
                                 "server requests": requests_served(log) - before,
                                 "seconds": f"{secs:.2f}", "cells/s": f"{n_cells / secs:.1f}",
                                 "cache hits": res.provenance["cache_hits"]})
    full = pbmc68k_reduced()
    t0 = time.perf_counter()
    annotate(full, "builtin", cache=False, progress=False)
    secs = time.perf_counter() - t0
    rows.append({"server": "none: builtin backend", "concurrency": 1, "run": "no cache",
                 "cells": full.n_obs, "server requests": 0, "seconds": f"{secs:.2f}",
                 "cells/s": f"{full.n_obs / secs:.1f}", "cache hits": 0})
    return rows


def builtin_scale(copies: int) -> list[dict]:
    """End-to-end ``annotate()`` with the builtin backend on pbmc68k tiled ``copies`` times
    (reasoning traces, ontology mapping, evidence check and write-back included)."""
    import anndata as ad

    from cellreasoner.annotation import annotate
    from cellreasoner.datasets import pbmc68k_reduced

    base = pbmc68k_reduced()
    annotate(base[:50].copy(), progress=False)  # warm caches (ontology index, kernels)
    rows = []
    for k in (1, copies):
        data = ad.concat([base] * k, index_unique="-") if k > 1 else base.copy()
        t0 = time.perf_counter()
        annotate(data, progress=False)
        sec = time.perf_counter() - t0
        rows.append({"cells": data.n_obs, "seconds": round(sec, 2),
                     "cells/s": round(data.n_obs / sec)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=120, help="cells for part 2 (120)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens per answer (8)")
    parser.add_argument("--skip-server", action="store_true", help="skip part 2")
    parser.add_argument("--copies", type=int, default=143,
                        help="part 3: pbmc68k copies for the builtin scale run (143 = 100,100)")
    args = parser.parse_args()
    use_shared_gene_list()
    from tiny_model import build_tiny_qwen2, build_tokenizer

    from cellreasoner.resources import load_gene_list

    genes = load_gene_list()
    print("Part 1 - model work per mode (prompt tokens: tiny Qwen-style BPE tokenizer, "
          "chat-rendered prompts)\n")
    print(_table(prompt_work(build_tokenizer(genes)),
                 ["data", "mode", "cells", "unique prompts", "model calls", "prompt tokens"]))
    print("\nPart 3 - builtin backend end to end (kNN smoothing off for tiled copies)\n")
    print(_table(builtin_scale(args.copies), ["cells", "seconds", "cells/s"]))
    if args.skip_server:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("CELLREASONER_CACHE", str(tmp / "cache"))
        model_dir = str(build_tiny_qwen2(tmp / "tiny", genes))
        print(f"\nPart 2 - throughput, transformers serve (tiny Qwen2, CPU, "
              f"{os.cpu_count()} cores), max_new_tokens={args.max_new_tokens}\n")
        print(_table(throughput(args.cells, args.max_new_tokens, model_dir, tmp),
                     ["server", "concurrency", "run", "cells", "server requests", "seconds",
                      "cells/s", "cache hits"]))


if __name__ == "__main__":
    main()
