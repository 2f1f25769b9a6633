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
#: How a trace words the evidence, per input modality (see ``Reasoner.modality``): what
#: follows the present markers, and the note's head on what the cell's own markers say.
#: ATAC evidence is gene activity (accessibility), not expression.
WORDING = {"rna": (" present", "Own expression alone"),
           "atac": (" gene activity high", "Own gene activity alone")}
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
        self._name = np.array([*self.names, ""], dtype=object)
        self._no = np.array([f"no {g}" for g in self.names] + [""], dtype=object)
        self._tname = np.array(list(r.names), dtype=object)
        self._oname = np.array([*r.names, UNKNOWN], dtype=object)  # -1: Unknown
        self._cl = np.array([f"{r.names[t]} ({r.cl_ids[t]})" for t in range(T)], dtype=object)
        self._present, self._own = WORDING[r.modality]
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
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
        """(texts, each cell's distinct key, the distinct keys, their text parts) of ``K``.

        The parts are the text before the numbers, between them (only where no lineage is
        supported: score, then confidence) and after them, one per distinct key.
        """
        n = len(K)
        if n == 0:
            empty = np.zeros(0, dtype=object)
            return empty, np.zeros(0, dtype=np.int64), K, (empty, empty, empty)
        uniq, inv, _ = _unique_rows(K)
        head, mid, tail = self._parts(uniq)
        out = head[inv] + _fmt(conf)
        none = np.flatnonzero(K[:, 0] == 1)
        if len(none):
            out[none] = head[inv[none]] + _fmt(S[none, root[none]]) + mid[inv[none]] + \
                _fmt(conf[none])
        return out + tail[inv], inv, uniq, (head, mid, tail)

    def _parts(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The text parts of distinct keys, built with array operations."""
        U = len(uniq)
        status, node, a, b = (uniq[:, j] for j in range(4))
        slots = uniq[:, _HEAD:].reshape(U, self.max_depth, _STEP)
        head = np.full(U, "", dtype=object)
        ok = np.flatnonzero(status == 0)
        if len(ok):
            path = self.path[node[ok]]
            for d in range(self.max_depth):
                at = np.flatnonzero(path[:, d] >= 0)
                rows = ok[at]
                step = self._cite_texts(slots[rows, d]) + " → " + self._tname[path[at, d]]
                if d:
                    learnt = (uniq[rows, 5] >> (d - 1)) & 1 == 1
                    knn = ~learnt & ((uniq[rows, 4] >> (d - 1)) & 1 == 1)
                    step[learnt] = step[learnt] + _VIA_CLF
                    step[knn] = step[knn] + _VIA_KNN
                    step = "; " + step
                head[rows] = head[rows] + step
            head[ok] = head[ok] + ". Final: " + self._cl[node[ok]] + ", confidence "
        none = np.flatnonzero(status == 1)
        mid = np.full(U, "", dtype=object)
        if len(none):
            absent, some = _join(slots[none, 0, :3], self._no, ", ")
            absent[~some] = "no marker genes measured"
            head[none] = (absent + ": no lineage has enough marker evidence (best "
                          + self._tname[a[none]] + ", score ")
            mid[none] = f") → {UNKNOWN}, confidence "
        both = np.flatnonzero(status == 2)
        if len(both):
            head[both] = (self._cite_texts(slots[both, 0]) + " → " + self._tname[a[both]] + "; "
                          + self._cite_texts(slots[both, 1]) + " → " + self._tname[b[both]]
                          + "; contradictory lineage evidence (possible doublet) → "
                          + f"{UNKNOWN}, confidence ")
        tail = np.full(U, ".", dtype=object)
        noted = np.flatnonzero(uniq[:, 6] != -2)
        if len(noted):
            tail[noted] = (f". ({self._own}: " + self._oname[uniq[noted, 6]]
                           + "; the call uses the kNN neighbours' shared evidence.)")
        return head, mid, tail

    def _cite_texts(self, step: np.ndarray) -> np.ndarray:
        """"A, B present, no C" (or "weak marker evidence") per row of step slots."""
        pos, has_pos = _join(step[:, :4], self._name, ", ")
        neg, has_neg = _join(step[:, 4:], self._no, ", ")
        out = np.full(len(step), "weak marker evidence", dtype=object)
        out[has_pos] = pos[has_pos] + self._present
        both = has_pos & has_neg
        out[both] = out[both] + ", " + neg[both]
        only = has_neg & ~has_pos
        out[only] = neg[only]
        return out

    # ------------------------------------------------------------------ evidence
    def _set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        from ...evidence import CD_ALIASES, check_evidence

        self.vocabulary = list(vocabulary)
        self._vocab_set = frozenset(str(g).strip() for g in self.vocabulary)
        self._aliases = CD_ALIASES
        self._check = check_evidence
        # cited names: ids into a registry, the markers' own names first
        self._ids: dict[str, int] = {}
        self._cited_names: list[str] = []
        self._marker_id = np.array([self._id(g) for g in self.names], dtype=np.int64)
        self._safe_gene = np.array([self._plain_gene(g) for g in self.names] + [True],
                                   dtype=bool)
        self._safe_type = np.array([_plain_name(n) for n in self.r.names] + [True], dtype=bool)
        # numbers and the fixed wording never read as genes (else every key is parsed)
        self.numbers_plain = not any(re.fullmatch(r"[0-9.\-]+", g) for g in self._vocab_set)
        samples = [
            f"zzqx{self._present}, no zzqx → zzqx; weak marker evidence → zzqx{_VIA_KNN}; weak "
            f"marker evidence → zzqx{_VIA_CLF}. Final: zzqx (CL:0000000), confidence 0.00."
            f" ({self._own}: zzqx; the call uses the kNN neighbours' shared evidence.)",
            "no marker genes measured: no lineage has enough marker evidence (best zzqx, "
            "score 0.00) → Unknown, confidence 0.00.",
            "weak marker evidence → zzqx; weak marker evidence → zzqx; contradictory lineage "
            f"evidence (possible doublet) → {UNKNOWN}, confidence 0.00.",
        ]
        self._plain_template = self.numbers_plain and "zzqx" not in self._vocab_set and not any(
            self._parse(t)[0] for t in samples)
        self._best_clause: dict[int, list[tuple[int, bool]]] = {}

    def _id(self, name: str) -> int:
        got = self._ids.get(name)
        if got is None:
            got = self._ids[name] = len(self._cited_names)
            self._cited_names.append(name)
        return got

    def _plain_gene(self, g: str) -> bool:
        """A symbol the parser reads as just that gene, in any position of a trace."""
        return (g in self._vocab_set and _TOKEN.fullmatch(g) is not None
                and g.lower() not in _WORDS
                and not any(w.lower() in _WORDS for w in re.split(r"[.\-]", g)))

    def _parse(self, text: str) -> tuple[tuple[str, ...], frozenset[str]]:
        ev = self._check(text, (), vocabulary=self.vocabulary)
        return ev.cited, frozenset(ev.negated)

    def genes_of(self, name_id: int) -> tuple[str, ...]:
        """The genes a cited name stands for (itself, or a CD name's genes)."""
        name = self._cited_names[name_id]
        if name in self._vocab_set:
            return (name,)
        return tuple(g for g in self._aliases.get(name, ()) if g in self._vocab_set)

    def citations(self, uniq: np.ndarray, parts: tuple) -> tuple[np.ndarray, np.ndarray]:
        """(cited name ids, -1 padded, in order of first mention; negated) per distinct key:
        what the evidence parser finds in those traces."""
        U = len(uniq)
        status = uniq[:, 0]
        ids = uniq[:, _HEAD:].astype(np.int64)
        neg = np.tile(np.arange(ids.shape[1]) % _STEP >= 4, (U, 1))
        neg[status == 1] = True  # "no A, no B, no C: no lineage ..."
        valid = ids >= 0
        plain = self._plain_template & self._safe_gene[np.where(valid, ids, -1)].all(axis=1)
        plain &= self._safe_type[self._types_named(uniq)].all(axis=1)
        ids = np.where(valid, self._marker_id[np.maximum(ids, 0)], -1)
        extra = [self._best_cites(int(t)) for t in uniq[:, 2]] if (status == 1).any() else []
        width = max((len(e) for e, st in zip(extra, status, strict=False) if st == 1),
                    default=0)
        if width:
            more = np.full((U, width), -1, dtype=np.int64)
            more_neg = np.zeros((U, width), dtype=bool)
            for u in np.flatnonzero(status == 1):
                for j, (c, ng) in enumerate(extra[u]):
                    more[u, j], more_neg[u, j] = c, ng
            ids, neg = np.hstack([ids, more]), np.hstack([neg, more_neg])
        cid, cneg = _first_mentions(ids, neg)
        parsed = {}
        for u in np.flatnonzero(~plain):  # read by the parser itself
            text = "0.00".join([parts[0][u], parts[1][u]] if status[u] == 1 else [parts[0][u]])
            cited, negated = self._parse(text + "0.00" + parts[2][u])
            parsed[u] = ([self._id(c) for c in cited], [c in negated for c in cited])
        width = max([cid.shape[1]] + [len(c) for c, _ in parsed.values()])
        if width > cid.shape[1]:
            pad = width - cid.shape[1]
            cid = np.hstack([cid, np.full((U, pad), -1, dtype=np.int64)])
            cneg = np.hstack([cneg, np.zeros((U, pad), dtype=bool)])
        for u, (c, ng) in parsed.items():
            cid[u], cneg[u] = -1, False
            cid[u, :len(c)], cneg[u, :len(c)] = c, ng
        return cid, cneg

    def _types_named(self, uniq: np.ndarray) -> np.ndarray:
        """Per key, the types whose names its text holds (-1: none)."""
        status, node, own = uniq[:, 0], uniq[:, 1], uniq[:, 6]
        path = np.where((status == 0)[:, None], self.path[np.maximum(node, 0)], -1)
        two = np.where((status == 2)[:, None], uniq[:, 2:4], -1)
        one = np.where(status == 1, uniq[:, 2], -1)
        return np.column_stack([path, two, one, np.where(own >= 0, own, -1)])

    def _best_cites(self, t: int) -> list[tuple[int, bool]]:
        """What the parser reads in the best lineage's name ("best ... (CXCL12-abundant")."""
        got = self._best_clause.get(t)
        if got is None:
            cited, negated = self._parse(f"no lineage has enough marker evidence (best "
                                         f"{self.r.names[t]}, score 0.00) → {UNKNOWN}, "
                                         "confidence 0.00.")
            got = self._best_clause[t] = [(self._id(c), c in negated) for c in cited]
        return got

    def evidence(self, inv: np.ndarray, cid: np.ndarray, cneg: np.ndarray, member
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(fraction, flag, cited_present, cited_absent) per cell, as the engine's check of
        the trace against the cell's sentence gives them (``min_cited=2``,
        ``threshold=0.5``; fraction NaN and nothing cited where no gene is cited).

        ``inv``, ``cid``, ``cneg`` come from :meth:`texts` and :meth:`citations`;
        ``member(genes)`` tells, as a cells x genes boolean array, whether each cell's
        sentence holds each gene.
        """
        n = len(inv)
        used = np.unique(cid[cid >= 0])
        genes = [self.genes_of(int(i)) for i in used]
        flat = sorted({g for gs in genes for g in gs})
        col = {g: j for j, g in enumerate(flat)}
        inside = np.zeros((n, len(flat) + 1), dtype=bool)  # last column: no gene
        if flat:
            inside[:, :-1] = member(flat)
        gcol = np.full(len(self._cited_names) + 1, len(flat), dtype=np.int64)  # -1: none
        multi = []
        for i, gs in zip(used, genes, strict=True):
            if len(gs) == 1:
                gcol[i] = col[gs[0]]
            elif gs:
                multi.append((int(i), [col[g] for g in gs]))
        ids = cid[inv]
        hit = inside[np.arange(n)[:, None], gcol[ids]]
        for i, cols in multi:
            at = ids == i
            hit[at] = inside[np.nonzero(at)[0]][:, cols].any(axis=1)
        cited, ng = ids >= 0, cneg[inv]
        n_cited = cited.sum(axis=1)
        wrong = (cited & ~hit & ~ng).sum(axis=1) + (hit & ng).sum(axis=1)
        some = n_cited > 0
        frac = np.full(n, np.nan)
        frac[some] = (n_cited[some] - wrong[some]) / n_cited[some]
        flag = some & (n_cited >= 2) & (frac < 0.5)
        present = np.full(n, "", dtype=object)
        absent = np.full(n, "", dtype=object)
        rows = np.flatnonzero(some)
        if len(rows):
            key = np.hstack([inv[rows, None], np.packbits(hit[rows], axis=1).astype(np.int64)])
            _, which, first = _unique_rows(key)
            names = np.array([*self._cited_names, ""], dtype=object)
            sel, h = ids[rows[first]], hit[rows[first]]
            pres = _join(np.where(h, sel, -1), names, ", ")[0]
            absn = _join(np.where(~h, sel, -1), names, ", ")[0]
            present[rows], absent[rows] = pres[which], absn[which]
        return frac, flag, present, absent


_ROW_WEIGHTS = np.random.default_rng(0).integers(1, 2**63, 256, dtype=np.uint64) | np.uint64(1)


def _unique_rows(K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct rows, each row's index among them, a row holding each) of an integer
    matrix, by a 64-bit row hash (checked: a collision falls back to the exact row sort)."""
    if K.shape[1] <= len(_ROW_WEIGHTS):
        h = (K.astype(np.uint64) * _ROW_WEIGHTS[:K.shape[1]]).sum(axis=1, dtype=np.uint64)
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
        uniq = K[first]
        inv = inv.ravel()
        if (uniq[inv] == K).all():
            return uniq, inv, first
    uniq, first, inv = np.unique(K, axis=0, return_index=True, return_inverse=True)
    return uniq, inv.ravel(), first


def _first_mentions(ids: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the distinct ids in order of first mention (-1 padded) and whether every
    mention of each is negated."""
    valid = ids >= 0
    L = ids.shape[1]
    same = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    first = valid & ~(same & np.tri(L, L, -1, dtype=bool)[None]).any(axis=2)
    positive = (same & ~neg[:, None, :]).any(axis=2)
    order = np.argsort(~first, axis=1, kind="stable")
    keep = np.take_along_axis(first, order, axis=1)
    cid = np.where(keep, np.take_along_axis(ids, order, axis=1), -1)
    cneg = keep & ~np.take_along_axis(positive, order, axis=1)
    width = int(keep.sum(axis=1).max()) if len(ids) else 0
    return cid[:, :width], cneg[:, :width]


def _join(ids: np.ndarray, table: np.ndarray, sep: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``sep.join(table[i] for i in row if i >= 0)``, and whether any was joined."""
    out = np.full(len(ids), "", dtype=object)
    started = np.zeros(len(ids), dtype=bool)
    for j in range(ids.shape[1]):
        at = np.flatnonzero(ids[:, j] >= 0)
        if len(at) == 0:
            continue
        piece = table[ids[at, j]]
        out[at] = np.where(started[at], out[at] + sep + piece, piece)
        started[at] = True
    return out, started


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
