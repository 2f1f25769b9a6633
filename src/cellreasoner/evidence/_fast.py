"""The fast path of the evidence checks (caches and a per-call memo; same results).

The checks here give exactly the results of the straightforward per-trace implementation in
``tests/evidence_reference.py`` (kept for the tests and ``bench/evidence.py``) while doing the
expensive work once:

* the vocabulary is compiled once per distinct vocabulary (LRU by content, with an identity
  fast path for the same list object) and never copied per call: the cells' own genes are a
  second layer consulted only for tokens the base vocabulary lacks;
* a trace is parsed once per distinct text (builtin traces repeat a lot), and within a call
  each distinct clause once (negation never crosses clauses), with a faster but equivalent
  clause splitter;
* a cell sentence is split once per distinct text, canonical ``"A, B, C"`` sentences with C
  string operations instead of a per-gene strip; gene collections are used as given when
  their symbols are clean ``str`` (checked once on the union of all cells' symbols);
* per cell only the genes some trace cites are looked up (one C-level set intersection),
  and the verdict is memoised per (trace, which cited genes are present);
* ``check_evidence_many`` pauses the cyclic GC while it builds its many small objects.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from ._core import (
    _CLAUSE_FAST,
    _STOP,
    CD_ALIASES,
    Evidence,
    _clause_mentions,
    _default_genes,
    _evidence_clauses,
    _mentions,
    _sentence_set,
    _Vocab,
)

_VOCAB_BY_ID: dict[int, tuple[object, object, _Vocab]] = {}
_VOCAB_BY_CONTENT: dict[object, _Vocab] = {}
_VOCAB_CACHE_SIZE = 8
_PARSE_CACHE: dict[tuple[int, str], list] = {}
_PARSE_CACHE_SIZE = 20_000


def _remember(cache: dict, key: object, value: object, size: int) -> None:
    """Insert into a small dict used as a FIFO cache (oldest entries dropped past ``size``)."""
    if len(cache) >= size:
        for old in list(cache)[: max(1, size // 4)]:
            cache.pop(old, None)  # another thread may have dropped it already
    cache[key] = value


def _base_vocab(vocabulary: Iterable[str]) -> _Vocab:
    """``vocabulary`` compiled to a :class:`_Vocab` (symbols stripped), cached per content."""
    if isinstance(vocabulary, _Vocab):
        return vocabulary
    if isinstance(vocabulary, list | tuple):
        hit = _VOCAB_BY_ID.get(id(vocabulary))
        if hit is not None and hit[0] is vocabulary and (
                isinstance(vocabulary, tuple) or hit[1] == vocabulary):
            return hit[2]
    key = vocabulary if isinstance(vocabulary, frozenset) else tuple(vocabulary)
    try:
        vocab = _VOCAB_BY_CONTENT.get(key)
    except TypeError:  # unhashable symbols: compile without caching
        return _Vocab(frozenset(str(g).strip() for g in key if str(g).strip()))
    if vocab is None:
        vocab = _Vocab(frozenset(str(g).strip() for g in key if str(g).strip()))
        _remember(_VOCAB_BY_CONTENT, key, vocab, _VOCAB_CACHE_SIZE)
    if isinstance(vocabulary, list | tuple):
        snapshot = vocabulary if isinstance(vocabulary, tuple) else list(vocabulary)
        _remember(_VOCAB_BY_ID, id(vocabulary), (vocabulary, snapshot, vocab), _VOCAB_CACHE_SIZE)
    return vocab


def _default_base() -> _Vocab:
    """The ranked gene list as a :class:`_Vocab` (taken as is, like the reference does)."""
    genes = _default_genes()
    vocab = _VOCAB_BY_CONTENT.get(("default", genes))
    if vocab is None or vocab.genes is not genes:
        vocab = _Vocab(genes)
        _remember(_VOCAB_BY_CONTENT, ("default", genes), vocab, _VOCAB_CACHE_SIZE)
    return vocab


class _Layered:
    """``base`` genes plus ``extra`` genes, resolving tokens exactly like :class:`_Vocab`.

    With ``log`` set, every lookup that falls through to ``extra`` is recorded, so a parse can
    be reused for another ``extra`` that answers those lookups the same way.
    """

    __slots__ = ("base", "extra", "log")

    def __init__(self, base: _Vocab, extra: frozenset[str] | set[str],
                 log: list | None = None):
        self.base = base
        self.extra = extra
        self.log = log

    def has(self, gene: str) -> bool:
        if gene in self.base.genes:
            return True
        found = gene in self.extra
        if self.log is not None:
            self.log.append((gene, found))
        return found

    def resolve(self, token: str) -> tuple[str, tuple[str, ...]] | None:
        if token in _STOP:
            return None
        if self.has(token):
            return token, (token,)
        up = token.upper()
        if up in CD_ALIASES and (token == up or token[:2] == "CD") and not self.has(up):
            genes = tuple(g for g in CD_ALIASES[up] if self.has(g))
            if genes:
                return up, genes
        return None


class _Parsed:
    """The cell-independent part of a trace's check: what it cites and how."""

    __slots__ = ("cited", "genes", "negated", "flat", "simple", "verdicts", "rows")

    def __init__(self, mentions: list[tuple[str, tuple[str, ...], bool]]):
        status: dict[str, list] = {}  # name -> [genes, any_positive_mention, any_negated]
        for name, genes, neg in mentions:
            rec = status.setdefault(name, [genes, False, False])
            rec[2 if neg else 1] = True
        self.cited = tuple(status)
        self.genes = tuple(status[n][0] for n in self.cited)
        self.negated = tuple(n for n in self.cited if status[n][2] and not status[n][1])
        self.flat = tuple(dict.fromkeys(g for gs in self.genes for g in gs))
        self.simple = len(self.flat) == len(self.cited) and all(len(gs) == 1
                                                                for gs in self.genes)
        self.verdicts: dict[tuple, Evidence] = {}
        self.rows: dict[tuple[bool, ...], tuple] = {}  # check_evidence_many's output rows

    def verdict(self, hits: tuple[bool, ...], min_cited: int, threshold: float) -> Evidence:
        """The evidence for a cell whose genes contain ``flat[i]`` where ``hits[i]``."""
        key = (hits, min_cited, threshold)
        ev = self.verdicts.get(key)
        if ev is None:
            ev = self.verdicts[key] = Evidence(*self.fields(hits, min_cited, threshold))
        return ev

    def fields(self, hits: tuple[bool, ...], min_cited: int, threshold: float) -> tuple:
        """:class:`Evidence`'s fields for a cell whose genes contain ``flat[i]`` where
        ``hits[i]``."""
        cited, negated = self.cited, self.negated
        if self.simple:  # one own gene per cited name: the hits are the mask
            mask = hits
        else:
            on = {g for g, h in zip(self.flat, hits, strict=True) if h}
            mask = tuple(not on.isdisjoint(gs) for gs in self.genes)
        present = tuple(n for n, m in zip(cited, mask, strict=True) if m)
        absent = tuple(n for n, m in zip(cited, mask, strict=True) if not m)
        unsupported = tuple(n for n in absent if n not in negated)
        contradicted = tuple(n for n in present if n in negated)
        consistent = len(cited) - len(unsupported) - len(contradicted)
        frac = consistent / len(cited) if cited else 1.0
        flagged = len(cited) >= min_cited and frac < threshold
        return cited, present, absent, negated, unsupported, contradicted, frac, flagged


def _parse_shared(text: str, base: _Vocab, extra: frozenset[str] | set[str]) -> _Parsed:
    """Parse ``text`` against ``base`` + ``extra``, reusing earlier parses across calls.

    A stored parse is reused when every lookup it made past ``base`` has the same answer in
    this ``extra``, which makes it the parse this vocabulary gives.
    """
    key = (id(base), text)
    variants = _PARSE_CACHE.get(key)
    if variants is not None:
        for owner, probes, parsed in variants:
            if owner is base and all((g in extra) is f for g, f in probes):
                return parsed
    log: list[tuple[str, bool]] = []
    parsed = _Parsed(_mentions(text, _Layered(base, extra, log)))
    entry = (base, tuple(dict.fromkeys(log)), parsed)
    if variants is not None and variants[0][0] is base:
        variants.append(entry)
        del variants[:-8]
    else:
        _remember(_PARSE_CACHE, key, [entry], _PARSE_CACHE_SIZE)
    return parsed


def _hits(parsed: _Parsed, expressed: frozenset[str] | set[str]) -> tuple[bool, ...]:
    return tuple(map(expressed.__contains__, parsed.flat))


def _fast_sentence_set(sentence: str | Iterable[str]) -> frozenset[str] | set[str]:
    """:func:`_sentence_set` with C string operations for canonical ``"A, B, C"`` text.

    When every space follows a comma and no other whitespace occurs (``isprintable`` rules
    out tabs, newlines and Unicode spaces), stripping each comma-separated field is the same
    as deleting the ", " spaces. Other inputs take the reference path.
    """
    if isinstance(sentence, str):
        if sentence.isprintable() and sentence.count(" ") == sentence.count(", "):
            out = set(sentence.replace(", ", ",").split(","))
            out.discard("")
            return out
        return _sentence_set(sentence)
    raw, genes = _raw_set(sentence)
    return raw if raw is not None and _clean(raw) else _sentence_set(genes)


def _text_symbols(sentence: str) -> Collection[str]:
    """The symbols of a sentence string: ``_sentence_set`` up to empty strings, faster.

    Canonical ``"A, B, C"`` text (see :func:`_fast_sentence_set`) is split in C without a
    per-symbol strip.
    """
    if sentence.isprintable() and sentence.count(" ") == sentence.count(", "):
        return sentence.replace(", ", ",").split(",")
    return _sentence_set(sentence)


def _raw_set(genes: Iterable[str]) -> tuple[frozenset | set | None, Iterable]:
    """(the symbols as a set without conversion or ``None`` if unhashable, the symbols)."""
    if isinstance(genes, frozenset | set):
        return genes, genes
    genes = list(genes)
    try:
        return set(genes), genes
    except TypeError:
        return None, genes


def _clean(symbols: Iterable) -> bool:
    """True when every symbol is a ``str`` that ``str(g).strip()`` leaves unchanged."""
    return all(isinstance(g, str) and str(g) == g and g.strip() == g for g in symbols)


def _mentions_memo(text: str, vocab: _Layered, clauses: dict[str, list]) -> list:
    """:func:`_mentions` with each distinct clause parsed once (``clauses``: clause -> list)."""
    out: list[tuple[str, tuple[str, ...], bool]] = []
    for clause in _evidence_clauses(_CLAUSE_FAST.split(text)):
        got = clauses.get(clause)
        if got is None:
            got = clauses[clause] = _clause_mentions(clause, vocab)
        out.extend(got)
    return out


_COLLECTIONS = frozenset({list, tuple, set, frozenset})
_COLUMNS = ("cited", "present", "absent", "negated", "n_cited", "fraction_present", "flagged")


def _many_rows(reasonings: Sequence, sentences: Sequence, vocabulary: Iterable[str] | None,
               min_cited: int, threshold: float) -> list[tuple]:
    """The output rows of :func:`check_evidence_many`, one tuple per cell."""
    # each distinct sentence -> its symbols (list or set of clean str), split once
    by_text: dict[str, Collection[str]] = {}
    by_content: dict[tuple, Collection[str]] = {}  # lists/tuples of equal symbols
    by_id: dict[int, tuple] = {}  # other collections: id -> (object kept alive, symbols)
    given: dict[int, Collection[str]] = {}  # every distinct collection of symbols, by id
    cell_genes: list[Collection[str]] = []
    for s in sentences:
        if isinstance(s, str):
            got = by_text.get(s)
            if got is None:
                got = by_text[s] = _text_symbols(s)
        elif type(s) is list or type(s) is tuple:
            try:
                key = tuple(s)
                got = by_content.get(key)
            except TypeError:  # unhashable symbols
                key, got = None, None
            if got is None:
                got = given[id(s)] = s
                if key is not None:
                    by_content[key] = s
        else:
            hit = by_id.get(id(s))
            if hit is None or hit[0] is not s:
                syms = s if type(s) in _COLLECTIONS else list(s)
                hit = by_id[id(s)] = (s, syms)
                given[id(syms)] = syms
            got = hit[1]
        cell_genes.append(got)
    try:
        union = set().union(*by_text.values(), *given.values())
        clean = not given or _clean(union)
    except TypeError:  # unhashable symbols
        clean = False
    if not clean:  # symbols needing str()/strip(): convert collections like the reference
        fixed = {k: _sentence_set(v) for k, v in given.items()}
        cell_genes = [fixed.get(id(x), x) for x in cell_genes]
        union = set().union(*by_text.values(), *fixed.values())
    base = _base_vocab(vocabulary) if vocabulary is not None else _default_base()
    layered = _Layered(base, union)
    # each distinct trace parsed once, each distinct clause of it too
    parses: dict[str, _Parsed] = {}
    clauses: dict[str, list] = {}
    parsed_of: list[_Parsed] = []
    for r in reasonings:
        if type(r) is str:
            text = r
        else:
            text = "" if r is None or (isinstance(r, float) and r != r) else str(r)
        parsed = parses.get(text)
        if parsed is None:
            parsed = parses[text] = _Parsed(_mentions_memo(text, layered, clauses))
        parsed_of.append(parsed)
    # per cell only the genes some trace cites are looked up
    needed = set().union(*(p.flat for p in parses.values()))
    cited_in: dict[int, set[str]] = {}
    out: list[tuple] = []
    append = out.append
    for parsed, genes in zip(parsed_of, cell_genes, strict=True):
        flat = parsed.flat
        if flat:
            got = cited_in.get(id(genes))
            if got is None:
                got = cited_in[id(genes)] = needed.intersection(genes)
            hits = tuple(map(got.__contains__, flat))
        else:
            hits = ()
        row = parsed.rows.get(hits)  # parses are this call's own: rows need no settings key
        if row is None:
            cited, present, absent, negated, _, _, frac, flagged = parsed.fields(
                hits, min_cited, threshold)
            row = parsed.rows[hits] = (", ".join(cited), ", ".join(present), ", ".join(absent),
                                       ", ".join(negated), len(cited), frac, flagged)
        append(row)
    return out
