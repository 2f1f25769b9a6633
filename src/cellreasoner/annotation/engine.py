"""The generation engine: identical prompts asked once, answers cached, samples voted.

Finished answers are kept in a persistent SQLite cache (a killed run resumes where it stopped);
runs sharing a cache claim prompts before asking them, so concurrent runs split the work and
wait for each other's answers instead of asking twice (see :mod:`.cache`). Every prompt's
``sampling.n`` samples are parsed and voted into one :class:`Answer`.

A prompt the backend could not answer (:func:`~cellreasoner.backends.base.failed_generations`)
is not cached; its answer is "Unknown" with ``failure="request"``. An answer that does not
parse to a cell type (:func:`cellreasoner.parsing.is_label`) is "Unknown" with
``failure="parse"``, its raw text kept in ``response``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..backends import Backend, Generation
from ..backends.base import is_failed
from ..errors import BackendError
from ..parsing import UNPARSED_LABEL, majority_label, parse_response
from ..prompts import Prompt, SamplingParams
from .cache import GenerationCache

log = logging.getLogger(__name__)

#: Prompt keys looked up in the cache at a time.
CACHE_WINDOW = 4096
#: Seconds between looks at the cache while other runs answer the prompts they claimed.
POLL_SECONDS = 0.25


@dataclass
class Stats:
    """Counts of model work in one run."""

    model_calls: int = 0
    generations: int = 0
    cache_hits: int = 0
    partial_hits: int = 0
    #: prompts the backend could not answer (not cached: a rerun asks them again)
    failed: int = 0
    #: prompts answered by another run sharing the cache while this one waited (in cache_hits)
    shared: int = 0


@dataclass
class Answer:
    """The voted answer of one unique prompt."""

    label: str
    confidence: float
    response: str
    reasoning: str
    samples: list[str] = field(default_factory=list)
    ontology: tuple[str, str] | None = None  # (id, label) when the backend reports it
    #: "" (answered), "parse" (not a cell type) or "request" (the backend gave no answer)
    failure: str = ""


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
        # a fresh seed for samples first..n-1, so extra samples differ from the cached ones
        sp = replace(sampling, n=n - first,
                     seed=None if sampling.seed is None else sampling.seed + first)
        pending = dict.fromkeys(idx)  # ordered, O(1) removal
        index_of = {keys[i]: i for i in idx} if cache is not None else {}
        told = False
        while pending:
            done: set[int] = set()
            if cache is None:
                batch = list(itertools.islice(pending, batch_size))
            else:
                mine, answered = cache.claim((keys[i] for i in pending), first, batch_size,
                                             last_sample=n - 1)
                seen = [index_of[k] for k in answered]
                done = _answered_elsewhere(seen, keys, first, n, cache, weights, advance,
                                           stats, out)
                # stored only in part (a run with another n): this run asks them itself
                batch = [index_of[k] for k in mine] + [i for i in seen if i not in done]
            if batch:
                result = _generate_batch(backend, prompts, keys, batch, sp, first, cache,
                                         [weights[i] for i in batch], advance, stats)
                for j, i in enumerate(batch):
                    out[i][first:] = list(result[j])
                done.update(batch)
            elif not done:  # every prompt left is held by another live run sharing the cache
                if not told:
                    told = True
                    log.info("%d prompt(s) are being asked by another run sharing the cache %s "
                             "(%s); waiting for its answers instead of asking again.",
                             len(pending), cache.path, ", ".join(cache.held_by_others()))
                time.sleep(POLL_SECONDS)
            for i in done:
                del pending[i]
    return out  # type: ignore[return-value]


def _answered_elsewhere(waiting: list[int], keys: Sequence[str], first: int, n: int,
                        cache: GenerationCache, weights: Sequence[int],
                        advance: Callable[[float], None], stats: Stats,
                        out: list[list[Generation | None]]) -> set[int]:
    """The waiting prompts another run has answered meanwhile (copied into ``out``)."""
    done: set[int] = set()
    for start in range(0, len(waiting), CACHE_WINDOW):
        window = waiting[start:start + CACHE_WINDOW]
        got = cache.get_many([keys[i] for i in window], n)
        for i in window:
            gens = got.get(keys[i])
            if gens is not None and all(g is not None for g in gens[first:]):
                out[i][first:] = gens[first:]
                done.add(i)
                stats.cache_hits += 1
                stats.shared += 1
                advance(weights[i])
    return done


def _generate_batch(backend: Backend, prompts: Sequence[Prompt], keys: Sequence[str],
                    batch: list[int], sampling: SamplingParams, first: int,
                    cache: GenerationCache | None, batch_w: list[int],
                    advance: Callable[[float], None], stats: Stats) -> list[list[Generation]]:
    """One backend call for ``batch``; answers are cached as they arrive."""
    stored: set[int] = set()
    mean_w = sum(batch_w) / len(batch_w)
    credited = 0.0

    def on_result(j: int, gens: Sequence[Generation]) -> None:
        if cache is not None and is_failed(gens):
            cache.release([keys[batch[j]]], first)  # not an answer: a rerun asks it again
        elif cache is not None:
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
        _release_unstored(cache, keys, batch, stored, first)
        if "on_result" not in str(exc) and "progress" not in str(exc):
            raise
        raise BackendError(
            f"Backend '{backend.name}': generate() must accept progress= and on_result= "
            f"(see cellreasoner.backends.Backend.generate): {exc}") from exc
    except BaseException:
        _release_unstored(cache, keys, batch, stored, first)  # others need not wait a lease
        raise
    if len(result) != len(batch) or any(len(g) != sampling.n for g in result):
        raise BackendError(
            f"Backend '{backend.name}' returned {len(result)} answers with "
            f"{sorted({len(g) for g in result})} samples for {len(batch)} prompts with "
            f"n={sampling.n}; expected one list of n generations per prompt."
        )
    failed = [j for j in range(len(batch)) if is_failed(result[j])]
    if cache is not None:
        cache.put_many([(keys[i], first, result[j]) for j, i in enumerate(batch)
                        if j not in stored and j not in failed])
        cache.release([keys[batch[j]] for j in failed], first)
    stats.failed += len(failed)
    stats.generations += (len(batch) - len(failed)) * sampling.n
    advance(sum(batch_w) - credited)
    return result


def _release_unstored(cache: GenerationCache | None, keys: Sequence[str], batch: list[int],
                      stored: set[int], first: int) -> None:
    if cache is not None:
        cache.release([keys[i] for j, i in enumerate(batch) if j not in stored], first)


def vote(generations: Sequence[Generation], reasoning: bool = False) -> Answer:
    """Parse every sample and take the majority label.

    ``reasoning``: the prompts ended with ``"<think> "`` (see :func:`parse_response`).
    Confidence is the backend's own ``meta["confidence"]`` when it reports one (builtin),
    else the agreement fraction of several samples, else NaN (one sample: not measured).
    A failed prompt is "Unknown" with ``failure="request"``; a winning answer that was cut
    off (the backend's ``finish_reason`` is ``"length"``, or the text never reaches an
    answer) is "Unknown" with ``failure="incomplete"``; one that does not parse to a cell
    type is "Unknown" with ``failure="parse"``.
    """
    if is_failed(generations):
        return Answer(label=UNPARSED_LABEL, confidence=math.nan, response="", reasoning="",
                      samples=[UNPARSED_LABEL] * len(generations), failure="request")
    parsed = [parse_response(g.text, g.reasoning, reasoning_mode=reasoning,
                             finish_reason=(g.meta or {}).get("finish_reason"))
              for g in generations]
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
                  ontology=ontology,
                  failure=_failure_of(parsed[k]) if parsed and label else "")


def _failure_of(parsed) -> str:
    """``"incomplete"`` (cut off: token limit, unclosed ``<think>``, no final answer),
    ``"parse"`` (not a cell type) or ``""``."""
    if not parsed.complete:
        return "incomplete"
    return "parse" if parsed.unparsed else ""


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
    return [vote(g, reasoning) for g in gens], cell_answer, keys
