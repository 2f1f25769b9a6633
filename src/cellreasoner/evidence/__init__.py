"""Does a reasoning trace rely on genes the cell actually expresses?

:func:`cited_genes` finds the gene symbols a model mentions; :func:`check_evidence` splits them
into genes present in the cell's sentence and genes absent from it, treating negated mentions
("no CD27", "CD3E absent", "lack of MS4A1", "negative for CD19", "CD14-") as correct uses of an
absent gene. A trace is *flagged* when it leans on genes the cell does not express.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence

from ._core import CD_ALIASES, Evidence, _check_inputs, _mentions, _Vocab
from ._fast import (
    _COLUMNS,
    _base_vocab,
    _default_base,
    _fast_sentence_set,
    _hits,
    _many_rows,
    _parse_shared,
)


def cited_genes(text: str, vocabulary: Iterable[str]) -> list[str]:
    """Gene symbols mentioned in ``text``, in order of first mention.

    Parameters
    ----------
    text
        A reasoning trace.
    vocabulary
        Known gene symbols (e.g. the ranked gene list plus ``adata.var_names``). Matching is
        case-sensitive so English words are not taken for genes; common CD names (``CD3``,
        ``CD8``, ``CD16``, ``HLA-DR``) count when one of their genes is in the vocabulary.
    """
    vocab = vocabulary if isinstance(vocabulary, _Vocab) else _Vocab(vocabulary)
    seen: dict[str, None] = {}
    for name, _, _ in _mentions(str(text or ""), vocab):
        seen.setdefault(name, None)
    return list(seen)


def check_evidence(
    reasoning: str,
    sentence_genes: str | Iterable[str],
    vocabulary: Iterable[str] | None = None,
    *,
    min_cited: int = 2,
    threshold: float = 0.5,
) -> Evidence:
    """Check whether a reasoning trace relies on genes the cell expresses.

    Parameters
    ----------
    reasoning
        The model's reasoning (the ``<think>`` content).
    sentence_genes
        The cell's genes: a cell sentence ``"CD3E, CD8A, ..."`` or an iterable of symbols
        (a ``set``/``frozenset`` of stripped symbols is used without copying).
    vocabulary
        Gene symbols to recognise; default ``None`` = the ranked gene list
        (:func:`cellreasoner.resources.load_gene_list`) plus the sentence genes. A vocabulary
        is compiled once and cached (pass the same list or a ``frozenset`` on repeated calls).
    min_cited
        Minimum number of cited genes before a trace can be flagged (default 2).
    threshold
        Flag when ``fraction_present`` is below this (default 0.5).

    Returns
    -------
    Evidence
        The genes cited (present, absent, negated), the fraction present and the flag.
    """
    expressed = _fast_sentence_set(sentence_genes)
    base = _base_vocab(vocabulary) if vocabulary is not None else _default_base()
    parsed = _parse_shared(str(reasoning or ""), base, expressed)
    return parsed.verdict(_hits(parsed, expressed), min_cited, threshold)


def check_evidence_many(
    reasonings: Sequence[str | None],
    sentences: Sequence[str | Iterable[str]],
    vocabulary: Iterable[str] | None = None,
    *,
    index: Sequence | None = None,
    min_cited: int = 2,
    threshold: float = 0.5,
):
    """:func:`check_evidence` for many cells, as a DataFrame ready for ``adata.obs``.

    The vocabulary is built once (default: ranked gene list plus every sentence's genes).
    Columns: ``cited``, ``present``, ``absent``, ``negated`` (comma-joined strings),
    ``n_cited``, ``fraction_present`` and ``flagged``. Missing reasoning gives no citations.

    Each distinct trace is parsed once and each distinct sentence split once, so repeated
    traces (the builtin backend's) cost a dictionary lookup and a few set lookups per cell.
    Sentences may be cell-sentence strings or collections of gene symbols; lists or sets of
    the symbols (e.g. ``CellSentences.cell_genes(i)``) avoid joining and re-splitting text.
    """
    import pandas as pd

    _check_inputs(reasonings, sentences)
    # the loops create many small acyclic objects: cyclic GC passes over the caller's (large)
    # heap would cost more than the check itself, so the collector pauses meanwhile
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        out = _many_rows(reasonings, sentences, vocabulary, min_cited, threshold)
    finally:
        if gc_was_on:
            gc.enable()
    idx = list(index) if index is not None else None
    if not out:
        return pd.DataFrame([], index=idx)
    columns = dict(zip(_COLUMNS, map(list, zip(*out, strict=True)), strict=True))
    return pd.DataFrame(columns, index=idx)


__all__ = ["CD_ALIASES", "Evidence", "check_evidence", "check_evidence_many", "cited_genes"]
