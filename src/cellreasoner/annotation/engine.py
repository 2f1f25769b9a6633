"""The generation engine: identical prompts asked once, answers cached, samples voted.

Finished answers are kept in a persistent SQLite cache (a killed run resumes where it stopped);
every prompt's ``sampling.n`` samples are parsed and voted into one :class:`Answer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..backends import Backend, Generation
from ..errors import BackendError
from ..parsing import majority_label, parse_response
from ..prompts import Prompt, SamplingParams
from .cache import GenerationCache

#: Prompt keys looked up in the cache at a time.
CACHE_WINDOW = 4096


@dataclass
class Stats:
    """Counts of model work in one run."""

    model_calls: int = 0
    generations: int = 0
    cache_hits: int = 0
    partial_hits: int = 0


@dataclass
class Answer:
    """The voted answer of one unique prompt."""

    label: str
    confidence: float
    response: str
    reasoning: str
    samples: list[str] = field(default_factory=list)
    ontology: tuple[str, str] | None = None  # (id, label) when the backend reports it


def _cached_samples(prompts: Sequence[Prompt], keys: Sequence[str], n: int,
                    cache: GenerationCache | None, weights: Sequence[int],
                    advance: Callable[[float], None], stats: Stats,
                    out: list[list[Generation | None]]) -> dict[int, list[int]]:
    """Fill ``out`` from the cache; returns first missing sample -> prompt indices."""
    todo: dict[int, list[int]] = {}
    for start in range(0, len(prompts), CACHE_WINDOW):
        window = range(start, min(start + CACHE_WINDOW, len(prompts)))
        got = cache.get_many([keys[i] for i in window], n) if cache is not None else {}
        for i in window:
            gens = got.get(keys[i])
            have = 0
            if gens is not None:
                while have < n and gens[have] is not None:
                    out[i][have] = gens[have]
                    have += 1
            if have == n:
                stats.cache_hits += 1
                advance(weights[i])
            else:
                stats.partial_hits += have > 0
                todo.setdefault(have, []).append(i)
    return todo


def generate_cached(backend: Backend, prompts: Sequence[Prompt], sampling: SamplingParams,
                    cache: GenerationCache | None = None, *, batch_size: int = 256,
                    weights: Sequence[int] | None = None,
                    advance: Callable[[float], None] | None = None,
                    stats: Stats | None = None) -> list[list[Generation]]:
    """``sampling.n`` generations for every (already unique) prompt, through the cache.

    Cached samples are reused; missing ones are generated in backend calls of at most
    ``batch_size`` prompts and stored as each prompt finishes (the backend's ``on_result``
    callback) or at the end of each call. ``advance`` is called with the number of *cells*
    (``weights``, one per prompt) finished.
    """
    n = sampling.n
    stats = stats if stats is not None else Stats()
    weights = list(weights) if weights is not None else [1] * len(prompts)
    advance = advance or (lambda k: None)
    keys = [p.key() for p in prompts]
    out: list[list[Generation | None]] = [[None] * n for _ in prompts]
    todo = _cached_samples(prompts, keys, n, cache, weights, advance, stats, out)
    for first, idx in sorted(todo.items()):
        count = n - first
        # a fresh seed for samples first..n-1, so extra samples differ from the cached ones
        sp = replace(sampling, n=count,
                     seed=None if sampling.seed is None else sampling.seed + first)
        for b in range(0, len(idx), batch_size):
            batch = idx[b:b + batch_size]
            result = _generate_batch(backend, prompts, keys, batch, sp, first, cache,
                                     [weights[i] for i in batch], advance, stats)
            for j, i in enumerate(batch):
                out[i][first:] = list(result[j])
    return out  # type: ignore[return-value]


def _generate_batch(backend: Backend, prompts: Sequence[Prompt], keys: Sequence[str],
                    batch: list[int], sampling: SamplingParams, first: int,
                    cache: GenerationCache | None, batch_w: list[int],
                    advance: Callable[[float], None], stats: Stats) -> list[list[Generation]]:
    """One backend call for ``batch``; answers are cached as they arrive."""
    stored: set[int] = set()
    mean_w = sum(batch_w) / len(batch_w)
    credited = 0.0

    def on_result(j: int, gens: Sequence[Generation]) -> None:
        if cache is not None:
            cache.put(keys[batch[j]], list(gens), first)
        stored.add(j)

    def progress(k: int) -> None:
        nonlocal credited
        credited += k * mean_w
        advance(k * mean_w)

    stats.model_calls += len(batch)
    try:
        result = backend.generate([prompts[i] for i in batch], sampling, progress=progress,
                                  on_result=on_result)
    except TypeError as exc:
        if "on_result" not in str(exc) and "progress" not in str(exc):
            raise
        raise BackendError(
            f"Backend '{backend.name}': generate() must accept progress= and on_result= "
            f"(see cellreasoner.backends.Backend.generate): {exc}") from exc
    if len(result) != len(batch) or any(len(g) != sampling.n for g in result):
        raise BackendError(
            f"Backend '{backend.name}' returned {len(result)} answers with "
            f"{sorted({len(g) for g in result})} samples for {len(batch)} prompts with "
            f"n={sampling.n}; expected one list of n generations per prompt."
        )
    if cache is not None:
        cache.put_many([(keys[i], first, result[j]) for j, i in enumerate(batch)
                        if j not in stored])
    stats.generations += len(batch) * sampling.n
    advance(sum(batch_w) - credited)
    return result


def vote(generations: Sequence[Generation]) -> Answer:
    """Parse every sample and take the majority label.

    Confidence is the backend's own ``meta["confidence"]`` when it reports one (builtin),
    else the agreement fraction of several samples, else NaN (one sample: not measured).
    """
    parsed = [parse_response(g.text, g.reasoning) for g in generations]
    labels = [p.label for p in parsed]
    label, agreement, k = majority_label(labels)
    chosen = generations[k] if generations else Generation("")
    own = chosen.meta.get("confidence")
    if own is not None:  # a backend that scores its answers (builtin) keeps its own confidence
        confidence = float(own)
    elif len(generations) > 1:
        confidence = agreement
    else:
        confidence = math.nan
    ontology = None
    if "ontology_id" in chosen.meta:
        ontology = (str(chosen.meta.get("ontology_id") or ""),
                    str(chosen.meta.get("ontology_label") or ""))
    return Answer(label=label, confidence=confidence, response=chosen.text or "",
                  reasoning=parsed[k].reasoning if parsed else "", samples=labels,
                  ontology=ontology)


def run_cell_prompts(backend: Backend, sentences, instruction: str, reasoning: bool,
                     sampling: SamplingParams, cache: GenerationCache | None,
                     batch_size: int, advance: Callable[[float], None],
                     stats: Stats) -> tuple[list[Answer], np.ndarray, list[str]]:
    """Per-cell prompts, deduplicated.

    Returns the answers per unique prompt, each cell's unique-prompt index and the unique
    prompts' keys.
    """
    first_cell: dict[str, int] = {}
    cell_answer = np.empty(len(sentences), dtype=np.int64)
    keys: list[str] = []
    for i, sentence in enumerate(sentences.iter_sentences()):
        key = Prompt(instruction, sentence, reasoning).key()
        u = first_cell.setdefault(key, len(keys))
        if u == len(keys):
            keys.append(key)
        cell_answer[i] = u
    # the first cell of each prompt stands for it (its index u numbers first appearances)
    reps = np.unique(cell_answer, return_index=True)[1]
    weights = np.bincount(cell_answer, minlength=len(keys))
    prompts = [Prompt(instruction, sentences.sentence(int(i)), reasoning) for i in reps]
    gens = generate_cached(backend, prompts, sampling, cache, batch_size=batch_size,
                           weights=weights.tolist(), advance=advance, stats=stats)
    return [vote(g) for g in gens], cell_answer, keys
