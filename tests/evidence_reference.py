"""The straightforward evidence checks: the specification the fast path is tested against.

:func:`reference_check_evidence` and :func:`reference_check_evidence_many` give what
:func:`cellreasoner.evidence.check_evidence` / :func:`~cellreasoner.evidence.check_evidence_many`
must give, with none of their caches: the vocabulary is rebuilt and every trace parsed per call.
Used by ``tests/test_evidence.py`` and ``bench/evidence.py`` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cellreasoner.evidence._core import (
    Evidence,
    _check_inputs,
    _default_genes,
    _mentions,
    _sentence_set,
    _Vocab,
)


def _check(reasoning: str, expressed: frozenset[str], vocab: _Vocab, min_cited: int,
           threshold: float) -> Evidence:
    status: dict[str, list] = {}  # name -> [genes, any_positive_mention, any_negated]
    for name, genes, neg in _mentions(str(reasoning or ""), vocab):
        rec = status.setdefault(name, [genes, False, False])
        if neg:
            rec[2] = True
        else:
            rec[1] = True
    cited = tuple(status)
    present = tuple(n for n in cited if any(g in expressed for g in status[n][0]))
    absent = tuple(n for n in cited if n not in present)
    negated = tuple(n for n in cited if status[n][2] and not status[n][1])
    unsupported = tuple(n for n in absent if n not in negated)
    contradicted = tuple(n for n in present if n in negated)
    consistent = len(cited) - len(unsupported) - len(contradicted)
    frac = consistent / len(cited) if cited else 1.0
    flagged = len(cited) >= min_cited and frac < threshold
    return Evidence(cited, present, absent, negated, unsupported, contradicted, frac, flagged)


def _default_vocab(extra: Iterable[str]) -> _Vocab:
    """The ranked gene list (read once per process) plus ``extra`` genes."""
    return _Vocab(_default_genes() | frozenset(str(g).strip() for g in extra))


def reference_check_evidence(
    reasoning: str,
    sentence_genes: str | Iterable[str],
    vocabulary: Iterable[str] | None = None,
    *,
    min_cited: int = 2,
    threshold: float = 0.5,
) -> Evidence:
    """The straightforward :func:`check_evidence` (vocabulary rebuilt and trace parsed per call).

    """
    expressed = _sentence_set(sentence_genes)
    vocab = _Vocab(list(vocabulary) + list(expressed)) if vocabulary is not None \
        else _default_vocab(expressed)
    return _check(reasoning, expressed, vocab, min_cited, threshold)


def reference_check_evidence_many(
    reasonings: Sequence[str | None],
    sentences: Sequence[str | Iterable[str]],
    vocabulary: Iterable[str] | None = None,
    *,
    index: Sequence | None = None,
    min_cited: int = 2,
    threshold: float = 0.5,
):
    """The straightforward :func:`check_evidence_many`: one full check per trace.

    """
    import pandas as pd

    _check_inputs(reasonings, sentences)
    sets = [_sentence_set(s) for s in sentences]
    union: set[str] = set().union(*sets) if sets else set()
    vocab = _Vocab(list(vocabulary) + sorted(union)) if vocabulary is not None \
        else _default_vocab(sorted(union))
    rows = []
    for r, expressed in zip(reasonings, sets, strict=True):
        text = "" if r is None or (isinstance(r, float) and r != r) else str(r)
        ev = _check(text, expressed, vocab, min_cited, threshold)
        rows.append({"cited": ", ".join(ev.cited), "present": ", ".join(ev.present),
                     "absent": ", ".join(ev.absent), "negated": ", ".join(ev.negated),
                     "n_cited": len(ev.cited), "fraction_present": ev.fraction_present,
                     "flagged": ev.flagged})
    return pd.DataFrame(rows, index=list(index) if index is not None else None)
