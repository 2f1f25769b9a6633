"""The steps of :func:`cellreasoner.train.build.build_reasoning`: draw the cells, ask the
teacher (cached), keep the traces the scorer accepts, and summarise the run."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._secrets import redact_value
from ..prompts import INSTRUCTION_REASONING, Prompt, SamplingParams
from .records import format_reasoning_output


def round_robin(items_by_label: dict[str, list], limit: int | None) -> list:
    """Take items label by label in turn (balanced), up to ``limit``."""
    queues = {lab: list(v) for lab, v in sorted(items_by_label.items())}
    out: list = []
    while queues and (limit is None or len(out) < limit):
        for lab in list(queues):
            if limit is not None and len(out) >= limit:
                break
            out.append(queues[lab].pop(0))
            if not queues[lab]:
                del queues[lab]
    return out


def draw_candidates(source: Sequence[dict], n_candidates: int | None, seed: int) -> list[dict]:
    """Up to ``n_candidates`` records, shuffled with ``seed`` and taken balanced by label."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[dict]] = defaultdict(list)
    for i in rng.permutation(len(source)):
        by_label[source[i]["output"]].append(source[i])
    return round_robin(by_label, n_candidates)


def unique_prompts(candidates: Sequence[dict]) -> tuple[list[Prompt], list[int]]:
    """The distinct reasoning prompts (identical sentences are asked once) and each
    candidate's index into them."""
    unique: dict[str, int] = {}
    prompts: list[Prompt] = []
    slot = []
    for r in candidates:
        p = Prompt(INSTRUCTION_REASONING, r["input"], True)
        if p.key() not in unique:
            unique[p.key()] = len(prompts)
            prompts.append(p)
        slot.append(unique[p.key()])
    return prompts, slot


def ask_teacher(backend, prompts: list[Prompt], sampling: SamplingParams,
                cache: str | os.PathLike | bool | None,
                progress: Callable[[float], None] | None) -> tuple[list, int]:
    """The teacher's generations per prompt, through the annotation cache (unless ``cache`` is
    False), and the number of cache hits."""
    from ..annotation import generate_cached

    gen_cache = None
    if cache is not False:
        from ..annotation.cache import GenerationCache, default_cache_path

        path = default_cache_path() if cache in (None, True) else Path(cache)
        gen_cache = GenerationCache(path, backend.name, backend.model, sampling)
    try:
        answers = generate_cached(backend, prompts, sampling, gen_cache, advance=progress)
    finally:
        cache_hits = gen_cache.hits if gen_cache is not None else 0
        if gen_cache is not None:
            gen_cache.close()
    return answers, cache_hits


def select_traces(candidates: Sequence[dict], generations: Sequence[list],
                  scorer: Callable[[str, str], float], min_score: float, answer: str
                  ) -> tuple[dict[str, list[dict]], Counter]:
    """Reasoning records of the traces that have reasoning and an answer scoring at least
    ``min_score``, deduplicated, by ground-truth label; and the counts of each outcome."""
    from ..parsing import parse_response

    counts: Counter = Counter()
    kept_by_label: dict[str, list[dict]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for rec, gens in zip(candidates, generations, strict=True):
        truth = rec["output"]
        for gen in gens:
            counts["generated"] += 1
            parsed = parse_response(gen.text, gen.reasoning, reasoning_mode=True,
                                    finish_reason=(gen.meta or {}).get("finish_reason"))
            if not parsed.reasoning.strip():
                counts["no_reasoning"] += 1
                continue
            if not parsed.label:
                counts["no_answer"] += 1
                continue
            if float(scorer(truth, parsed.label)) < min_score:
                counts["rejected"] += 1
                continue
            key = (rec["input"], " ".join(parsed.reasoning.split()))
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            counts["accepted"] += 1
            final = truth if answer == "truth" else parsed.label
            out = {"instruction": INSTRUCTION_REASONING, "input": rec["input"],
                   "output": format_reasoning_output(parsed.reasoning, final)}
            if "cell_name" in rec:
                out = {"cell_name": rec["cell_name"], **out}
            kept_by_label[truth].append(out)
    return kept_by_label, counts


def reasoning_info(backend, sampling: SamplingParams, n_candidates: int, n_prompts: int,
                   cache_hits: int, counts: Counter, min_score: float,
                   accepted_counts: dict[str, int], records: Sequence[dict]) -> dict:
    """The ``info`` of a reasoning build."""
    return {
        "builder": "reasoning",
        "teacher": redact_value(backend.describe()),  # no credentials from a server URL
        "sampling": sampling.to_dict(),
        "n_candidates": n_candidates,
        "n_prompts": n_prompts,
        "cache_hits": cache_hits,
        "n_generated": counts["generated"],
        "n_no_reasoning": counts["no_reasoning"],
        "n_no_answer": counts["no_answer"],
        "n_rejected": counts["rejected"],
        "n_duplicates": counts["duplicates"],
        "n_accepted": counts["accepted"],
        "n_kept": len(records),
        "acceptance_rate": counts["accepted"] / counts["generated"] if counts["generated"]
        else 0.0,
        "min_score": min_score,
        "accepted_label_counts": accepted_counts,
        "label_counts": dict(Counter(
            r["output"].rpartition("</think>")[2].strip() for r in records)),
    }
