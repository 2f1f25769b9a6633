"""The marker reasoner's reasoning traces and their evidence check, vectorised.

A trace depends on a few things only: the decision (status, the path down the tree, which
steps the kNN neighbours or the classifier took) and, per step, the at most four expressed
and two missing markers it cites, plus the confidence (and, when no lineage is supported, the
best score) printed at its end. Every cell is reduced to a small integer key of those choices
(computed for all cells at once with array operations), each distinct key's text is written
once, and only the numbers are filled in per cell.

The evidence columns (which cited genes the cell's sentence contains) come from the same keys:
the writer knows which genes a trace cites and whether it negates them, so the engine need not
parse its own text again. When a name could read differently to the evidence parser (a gene
symbol that is also an English word, a cell-type name holding a gene symbol, ...), that key's
text is handed to :func:`cellreasoner.evidence.check_evidence` itself, so the columns are
always exactly the parser's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from .reasoner import Reasoner

UNKNOWN = "Unknown"
#: Columns of a key before the cited markers: status, node, lineage a, lineage b,
#: neighbour-step bits, classifier-step bits, own call (``-2``: none noted).
_HEAD = 7
#: Cited markers per step: four expressed, two missing.
_STEP = 6
_VIA_KNN = " (from the kNN neighbours)"
_VIA_CLF = " (by a classifier trained on this dataset's cells with decisive markers)"
_NOTE = " (Own expression alone: {}; the call uses the kNN neighbours' shared evidence.)"
#: Words the evidence parser reads as structure (negation cues, clause breaks, conclusion
#: heads, list words, stop words): a gene symbol spelling one of them is checked by the
#: parser itself.
_WORDS = frozenset({
    "no", "not", "nor", "neither", "without", "lack", "lacks", "lacking", "absence", "absent",
    "negative", "for", "loss", "of", "missing", "devoid", "free", "exclude", "excludes",
    "express", "expressed", "expression", "expresses", "expressing", "high", "positive",
    "present", "elevated", "but", "only", "whereas", "while", "however", "although", "final",
    "answer", "own", "markers", "alone", "is", "are", "was", "were", "appear", "appears", "seem",
    "seems", "completely", "notably", "also", "clearly", "undetectable", "detected", "seen",
    "found", "and", "or", "as", "well", "all", "the", "can", "has", "end", "set", "max", "cat",
    "rest", "impact", "caps", "gas", "camp", "bad", "tat", "per", "she", "he", "it", "on", "in",
    "to", "be", "gc", "th", "neg", "null", "deficient",
})
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*[A-Za-z0-9]|[A-Za-z0-9]")
_PLAIN_NAME = re.compile(r"[^.;:!?\n→]*")
_NAME_WORDS = re.compile(r"\b(?:but|whereas|while|however|although|final|answer|own)\b|->|=>|⇒",
                         re.I)


@dataclass
class _Trace:
    """One distinct trace: its text around the per-cell numbers and what it cites."""

    parts: tuple[str, ...]  # text before, between and after the numbers
    cited: tuple[str, ...]  # names in order of first mention
    negated: np.ndarray  # per cited name: only mentioned as missing
    genes: tuple[tuple[str, ...], ...]  # per cited name: the genes it stands for


class TraceWriter:
    """Writes the reasoning traces of :class:`~.reasoner.Reasoner` (and their evidence).

    Parameters
    ----------
    reasoner
        The reasoner whose decisions are written.
    names
        The marker names as the data spells them (older aliases such as IGJ for JCHAIN).
    vocabulary
        The evidence check's gene vocabulary (gene list plus the data's genes); needed only
        for :meth:`evidence`.
    """

    def __init__(self, reasoner: Reasoner, names: Sequence[str],
                 vocabulary: Sequence[str] | None = None) -> None:
        r = self.r = reasoner
        self.names = [str(g) for g in names]
        T = len(r.names)
        depth = np.zeros(T, dtype=np.int64)
        for t in range(T):
            u = t
            while r.parent[u] >= 0:
                u = r.parent[u]
                depth[t] += 1
        self.max_depth = int(depth.max()) + 1 if T else 1
        self.path = np.full((T, self.max_depth), -1, dtype=np.int64)
        for t in range(T):
            u = t
            for d in range(depth[t], -1, -1):
                self.path[t, d] = u
                u = r.parent[u]
        M = len(r.genes)
        self.pos_order = _order_table(r._pos_sorted, M)
        self.neg_order = _order_table(r._neg_sorted, M)
        self._memo: dict[bytes, _Trace] = {}
        self._cl = [f"{r.names[t]} ({r.cl_ids[t]})" for t in range(T)]
        self.vocabulary = None
        self.numbers_plain = True
        if vocabulary is not None:
            self._set_vocabulary(vocabulary)

    # ------------------------------------------------------------------ keys
    def keys(self, E: sp.csr_matrix, measured, node: np.ndarray, root: np.ndarray,
             status: np.ndarray, S: np.ndarray, borrowed: np.ndarray | None = None,
             refined: np.ndarray | None = None, own_node: np.ndarray | None = None
             ) -> np.ndarray:
        """Cells x key-columns integer matrix: equal rows have equal traces up to numbers."""
        n, M = len(node), len(self.r.genes)
        E = sp.csr_matrix(E)
        present = np.zeros((n, M + 1), dtype=bool)  # the last column: padding, never set
        present[np.repeat(np.arange(n), np.diff(E.indptr)), E.indices] = True
        if isinstance(measured, np.ndarray) and measured.ndim == 1:
            missing = ~present
            missing[:, :M] &= measured[None, :]
        else:
            missing = np.zeros((n, M + 1), dtype=bool)
            missing[:, :M] = sp.csr_matrix(measured).toarray() > 0
            missing &= ~present
        missing[:, M] = False
        K = np.full((n, _HEAD + _STEP * self.max_depth), -1, dtype=np.int32)
        K[:, 0] = status
        K[:, 1] = node
        K[:, 4] = 0 if borrowed is None else borrowed
        K[:, 5] = 0 if refined is None else refined
        K[:, 6] = -2
        if own_node is not None:
            noted = own_node != node
            K[noted, 6] = own_node[noted]
        ok = np.flatnonzero(status == 0)
        for d in range(self.max_depth):
            t = self.path[np.maximum(node[ok], 0), d]
            rows = ok[t >= 0]
            self._cite(K, rows, t[t >= 0], present, missing, _HEAD + _STEP * d, 4, 2)
        none = np.flatnonzero(status == 1)
        K[none, 2] = root[none]
        K[none, _HEAD:_HEAD + 3] = _first(missing, none, self.pos_order[root[none]], 3)
        both = np.flatnonzero(status == 2)
        if len(both):
            roots = np.flatnonzero(self.r.is_root)
            top = roots[np.argsort(-S[both][:, roots], axis=1)[:, :2]]
            K[both, 2], K[both, 3] = top[:, 0], top[:, 1]
            self._cite(K, both, top[:, 0], present, missing, _HEAD, 3, 0)
            self._cite(K, both, top[:, 1], present, missing, _HEAD + _STEP, 3, 0)
        return K

    def _cite(self, K, rows, types, present, missing, col, k_pos, k_neg) -> None:
        K[rows, col:col + k_pos] = _first(present, rows, self.pos_order[types], k_pos)
        if k_neg:
            K[rows, col + 4:col + 4 + k_neg] = _first(missing, rows, self.neg_order[types],
                                                       k_neg)

    # ------------------------------------------------------------------ text
    def write(self, E, measured, node, root, conf, status, S, borrowed=None, refined=None,
              own_node=None) -> np.ndarray:
        """One reasoning text per cell (an object array of ``str``)."""
        K = self.keys(E, measured, node, root, status, S, borrowed, refined, own_node)
        return self.texts(K, conf, S, root)[0]

    def texts(self, K: np.ndarray, conf: np.ndarray, S: np.ndarray, root: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, list[_Trace]]:
        """(texts, each cell's distinct-trace index, the distinct traces) of keys ``K``."""
        n = len(K)
        if n == 0:
            return np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64), []
        uniq, inv = np.unique(K, axis=0, return_inverse=True)
        inv = inv.ravel()
        traces = [self._trace(row) for row in uniq]
        c = _fmt(conf)
        out = np.empty(n, dtype=object)
        status = K[:, 0]
        none = status == 1
        first = np.array([t.parts[0] for t in traces], dtype=object)[inv]
        last = np.array([t.parts[-1] for t in traces], dtype=object)[inv]
        some = ~none
        out[some] = first[some] + c[some] + last[some]
        if none.any():
            idx = np.flatnonzero(none)
            mid = np.array([t.parts[1] if len(t.parts) > 2 else "" for t in traces],
                           dtype=object)[inv[idx]]
            score = _fmt(S[idx, root[idx]])
            out[idx] = first[idx] + score + mid + c[idx] + last[idx]
        return out, inv, traces

    def _trace(self, key: np.ndarray) -> _Trace:
        b = key.tobytes()
        got = self._memo.get(b)
        if got is None:
            got = self._memo[b] = self._build(key)
        return got

    def _build(self, key: np.ndarray) -> _Trace:
        r, names = self.r, self.names
        status, node, a, b, bits, learnt, own = (int(v) for v in key[:_HEAD])
        steps = key[_HEAD:].reshape(self.max_depth, _STEP)
        mentions: list[tuple[int, bool]] = []  # (marker, negated) in order of mention
        names_used: list[int] = []
        if status == 1:
            absent = [int(g) for g in steps[0, :3] if g >= 0]
            mentions += [(g, True) for g in absent]
            text = ", ".join(f"no {names[g]}" for g in absent)
            parts = [f"{text or 'no marker genes measured'}: no lineage has enough marker "
                     f"evidence (best {r.names[a]}, score ", ") → Unknown, confidence "]
            names_used.append(a)
        elif status == 2:
            cites = []
            for step, t in ((steps[0], a), (steps[1], b)):
                cites.append(f"{self._cite_text(step, mentions)} → {r.names[t]}")
                names_used.append(t)
            parts = ["; ".join(cites) + "; contradictory lineage evidence (possible doublet) → "
                     f"{UNKNOWN}, confidence "]
        else:
            cites = []
            for d, t in enumerate(self.path[node]):
                if t < 0:
                    break
                via = ""
                if d and learnt >> (d - 1) & 1:
                    via = _VIA_CLF
                elif d and bits >> (d - 1) & 1:
                    via = _VIA_KNN
                cites.append(f"{self._cite_text(steps[d], mentions)} → {r.names[t]}{via}")
                names_used.append(int(t))
            parts = ["; ".join(cites) + f". Final: {self._cl[node]}, confidence "]
        tail = "."
        if own != -2:
            tail += _NOTE.format(r.names[own] if own >= 0 else UNKNOWN)
            names_used.append(own)
        parts.append(tail)
        if self.vocabulary is None:
            return _Trace(tuple(parts), (), np.zeros(0, dtype=bool), ())
        return self._citations(tuple(parts), status, a, mentions, names_used)

    def _cite_text(self, step: np.ndarray, mentions: list[tuple[int, bool]]) -> str:
        pos = [int(g) for g in step[:4] if g >= 0]
        neg = [int(g) for g in step[4:] if g >= 0]
        mentions += [(g, False) for g in pos] + [(g, True) for g in neg]
        text = []
        if pos:
            text.append(", ".join(self.names[g] for g in pos) + " present")
        if neg:
            text.append(", ".join(f"no {self.names[g]}" for g in neg))
        return ", ".join(text) if text else "weak marker evidence"

    # ------------------------------------------------------------------ evidence
    def _set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        from ...evidence import CD_ALIASES, check_evidence

        self.vocabulary = list(vocabulary)
        self._vocab_set = frozenset(str(g).strip() for g in self.vocabulary)
        self._aliases = CD_ALIASES
        self._check = check_evidence
        self._safe_gene = np.array([self._plain_gene(g) for g in self.names], dtype=bool)
        self._safe_type = np.array([_plain_name(n) for n in self.r.names], dtype=bool)
        # numbers and the fixed wording never read as genes (else every key is parsed)
        numeric = any(re.fullmatch(r"[0-9.\-]+", g) for g in self._vocab_set)
        self.numbers_plain = not numeric
        samples = [
            f"zzqx present, no zzqx → zzqx; weak marker evidence → zzqx{_VIA_KNN}; weak "
            f"marker evidence → zzqx{_VIA_CLF}. Final: zzqx (CL:0000000), confidence 0.00."
            + _NOTE.format("zzqx"),
            "no marker genes measured: no lineage has enough marker evidence (best zzqx, "
            "score 0.00) → Unknown, confidence 0.00.",
            "weak marker evidence → zzqx; weak marker evidence → zzqx; contradictory lineage "
            f"evidence (possible doublet) → {UNKNOWN}, confidence 0.00.",
        ]
        self._plain_template = not numeric and "zzqx" not in self._vocab_set and not any(
            self._parse(t)[0] for t in samples)
        self._best_clause: dict[int, tuple] = {}

    def _plain_gene(self, g: str) -> bool:
        """A symbol the parser reads as just that gene, in any position of a trace."""
        return (g in self._vocab_set and _TOKEN.fullmatch(g) is not None
                and g.lower() not in _WORDS
                and not any(w.lower() in _WORDS for w in re.split(r"[.\-]", g)))

    def _parse(self, text: str) -> tuple[tuple[str, ...], frozenset[str]]:
        ev = self._check(text, (), vocabulary=self.vocabulary)
        return ev.cited, frozenset(ev.negated)

    def _genes_of(self, name: str) -> tuple[str, ...]:
        if name in self._vocab_set:
            return (name,)
        return tuple(g for g in self._aliases.get(name, ()) if g in self._vocab_set)

    def _citations(self, parts: tuple[str, ...], status: int, best: int,
                   mentions: list[tuple[int, bool]], names_used: list[int]) -> _Trace:
        """What the evidence parser finds in this trace: by construction when every name in
        it is plain, else by parsing the text (numbers are never genes: checked once)."""
        plain = (self._plain_template and all(self._safe_gene[g] for g, _ in mentions)
                 and all(self._safe_type[t] for t in names_used))
        if not plain:
            cited, negated = self._parse("0.00".join(parts))
            return _Trace(parts, cited, np.array([c in negated for c in cited], dtype=bool),
                          tuple(self._genes_of(c) for c in cited))
        status_of: dict[str, list[bool]] = {}  # name -> [any positive, any negated]
        for g, neg in mentions:
            rec = status_of.setdefault(self.names[g], [False, False])
            rec[1 if neg else 0] = True
        if status == 1:  # the best lineage's name is read too ("best ... (CXCL12-abundant")
            for name, neg in self._best_cites(best):
                rec = status_of.setdefault(name, [False, False])
                rec[1 if neg else 0] = True
        cited = tuple(status_of)
        negated = np.array([status_of[c][1] and not status_of[c][0] for c in cited],
                           dtype=bool)
        return _Trace(parts, cited, negated, tuple(self._genes_of(c) for c in cited))

    def _best_cites(self, t: int) -> tuple[tuple[str, bool], ...]:
        got = self._best_clause.get(t)
        if got is None:
            cited, negated = self._parse(f"no lineage has enough marker evidence (best "
                                         f"{self.r.names[t]}, score 0.00) → {UNKNOWN}, "
                                         "confidence 0.00.")
            got = self._best_clause[t] = tuple((c, c in negated) for c in cited)
        return got

    def evidence(self, inv: np.ndarray, traces: list[_Trace], member
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(fraction, flag, cited_present, cited_absent) per cell, as the engine's check of
        the trace against the cell's sentence gives them (``min_cited=2``,
        ``threshold=0.5``; fraction NaN and nothing cited where no gene is cited).

        ``inv`` and ``traces`` come from :meth:`texts`; ``member(genes)`` tells, as a
        cells x genes boolean array, whether each cell's sentence contains each gene.
        """
        n = len(inv)
        width = max((len(t.cited) for t in traces), default=0)
        if width == 0:
            return (np.full(n, np.nan), np.zeros(n, dtype=bool), np.full(n, "", dtype=object),
                    np.full(n, "", dtype=object))
        flat = sorted({g for t in traces for gs in t.genes for g in gs})
        col = {g: j for j, g in enumerate(flat)}
        inside = np.zeros((n, len(flat) + 1), dtype=bool)  # last column: no gene
        inside[:, :-1] = member(flat)
        U = len(traces)
        gid = np.full((U, width), len(flat), dtype=np.int64)
        neg = np.zeros((U, width), dtype=bool)
        cited = np.zeros((U, width), dtype=bool)
        multi: list[tuple[int, int]] = []  # (trace, name) standing for several genes
        for u, t in enumerate(traces):
            k = len(t.cited)
            cited[u, :k] = True
            neg[u, :k] = t.negated
            for j, gs in enumerate(t.genes):
                if len(gs) == 1:
                    gid[u, j] = col[gs[0]]
                elif gs:
                    multi.append((u, j))
        hit = inside[np.arange(n)[:, None], gid[inv]]
        for u, j in multi:
            cells = np.flatnonzero(inv == u)
            cols = [col[g] for g in traces[u].genes[j]]
            hit[cells, j] = inside[cells][:, cols].any(axis=1)
        c, ng = cited[inv], neg[inv]
        n_cited = c.sum(axis=1)
        wrong = (c & ~hit & ~ng).sum(axis=1) + (hit & ng).sum(axis=1)
        some = n_cited > 0
        frac = np.full(n, np.nan)
        frac[some] = (n_cited[some] - wrong[some]) / n_cited[some]
        flag = some & (n_cited >= 2) & (frac < 0.5)
        present = np.full(n, "", dtype=object)
        absent = np.full(n, "", dtype=object)
        rows = np.flatnonzero(some)
        if len(rows):
            bits = np.packbits(hit[rows] & c[rows], axis=1)
            key = np.concatenate([inv[rows, None].astype(np.int64).view(np.uint8)
                                  .reshape(len(rows), -1), bits], axis=1)
            uniq, first, which = np.unique(key, axis=0, return_index=True,
                                           return_inverse=True)
            texts = [_joined(traces[inv[rows[i]]], hit[rows[i]]) for i in first]
            pres = np.array([t[0] for t in texts], dtype=object)
            absn = np.array([t[1] for t in texts], dtype=object)
            present[rows], absent[rows] = pres[which.ravel()], absn[which.ravel()]
        return frac, flag, present, absent


def _joined(tr: _Trace, hit: np.ndarray) -> tuple[str, str]:
    """(cited names in the sentence, the others), ``", "``-joined."""
    return (", ".join(c for c, h in zip(tr.cited, hit, strict=False) if h),
            ", ".join(c for c, h in zip(tr.cited, hit, strict=False) if not h))


def _plain_name(name: str) -> bool:
    """A cell-type name that cannot split a clause or read as a conclusion head."""
    return _PLAIN_NAME.fullmatch(name) is not None and not _NAME_WORDS.search(name)


def _order_table(lists: Sequence[Sequence[int]], pad: int) -> np.ndarray:
    """Ragged per-type marker lists as a padded matrix (``pad``: a never-set column)."""
    width = max((len(x) for x in lists), default=0) or 1
    out = np.full((len(lists), width), pad, dtype=np.int64)
    for t, x in enumerate(lists):
        out[t, :len(x)] = x
    return out


def _first(mask: np.ndarray, rows: np.ndarray, order: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first ``k`` markers of its ``order`` row where ``mask`` is set (-1 pad)."""
    out = np.full((len(rows), k), -1, dtype=np.int32)
    if len(rows) == 0:
        return out
    hit = mask[rows[:, None], order]
    count = np.cumsum(hit, axis=1)
    for j in range(k):
        reached = count > j
        has = reached[:, -1]
        at = reached.argmax(axis=1)
        out[has, j] = order[np.flatnonzero(has), at[has]]
    return out


def _fmt(values: np.ndarray) -> np.ndarray:
    """``f"{v:.2f}"`` per value (formatted once per distinct value)."""
    uniq, inv = np.unique(np.asarray(values), return_inverse=True)
    return np.array([f"{v:.2f}" for v in uniq], dtype=object)[inv.ravel()]


__all__ = ["TraceWriter"]
