"""CellReasoner's hierarchical score, computed automatically from the Cell Ontology graph.

The paper judges every (ground truth, prediction) pair on four levels: 1 "Subtype correct",
0.5 "Major correct", 0.25 "Partially correct", 0 "Incorrect". Here both labels are grounded with
:func:`cellreasoner.ontology.map_label` and scored by rules on the CL graph:

0. identical label text (after normalisation)                                   -> 1
1. same term, or the prediction is a subtype of the truth                        -> 1
2. both fall under the same curated *subtype anchor* (CD4 T, CD8 T, gamma-delta T,
   plasma cell, monocyte, macrophage, cDC, pDC, hepatocyte, acinar, ...)           -> 1
3. the prediction is a broader, still informative term (T cell for CD4 T, myeloid
   for a dendritic cell, epithelial for acinar)                                   -> 0.5
4. both in the same curated *major type* (T cell, B lineage, monocyte/macrophage,
   endothelial, mural, ...)                                                       -> 0.5
   - majors without a finer level in practice (fibroblast incl. myofibroblast and
     stellate cells, erythroid, malignant cell states)                            -> 1
   - epithelial cell is a lineage: two different named epithelial types
     (hepatocyte vs cholangiocyte vs acinar) are different cell types             -> 0
5. a progenitor truth and a prediction in the lineage it gives rise to            -> 0.5
6. a hedged answer ("X or Y"): all readings right -> the least specific reading's
   score; one reading right and another wrong                                     -> 0.25
7. otherwise (or a label that cannot be grounded)                                 -> 0

An ambiguous truth label (``EC``: endothelial or epithelial cell) is scored under its most
favourable reading.

A user table of judged pairs (the paper's ``all_pair_score.xlsx`` layout) overrides the rules
where it has the pair, and an optional LLM judge (any :class:`~cellreasoner.backends.Backend`)
can replace them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..ontology import UNINFORMATIVE, CellOntology, LabelMatch, get_ontology, map_label, normalize
from .judge import LLMJudge
from .metrics import LEVEL_BY_NAME, LEVELS

if TYPE_CHECKING:
    import pandas as pd

    from ..backends import Backend

log = logging.getLogger(__name__)

#: Major cell types (name -> CL roots). A term belongs to every major whose root is the term
#: itself or one of its ancestors.
MAJOR_TYPES: dict[str, tuple[str, ...]] = {
    "T cell": ("CL:0000084",),
    "NK cell": ("CL:0000623",),
    "innate lymphoid cell": ("CL:0001065",),
    "B lineage": ("CL:0000945",),
    "monocyte/macrophage": ("CL:0000576", "CL:0000235", "CL:0000092", "CL:0000559"),
    "dendritic cell": ("CL:0000451",),
    "mast cell": ("CL:0000097",),
    "granulocyte": ("CL:0000094",),
    "megakaryocyte/platelet": ("CL:0000556", "CL:0000233", "CL:0000553"),
    "erythroid": ("CL:0000764",),
    "hematopoietic progenitor": ("CL:0008001",),
    "epithelial cell": ("CL:0000066", "CL:0000646", "CL:0000064"),
    "endothelial cell": ("CL:0000115",),
    "fibroblast": ("CL:0000057", "CL:0000186"),
    "mural cell": ("CL:0008034", "CL:0000669", "CL:0000192"),
    "muscle cell": ("CL:0000187",),
    "neuron": ("CL:0000540",),
    "glial cell": ("CL:0000125",),
    "retinal cell": ("CL:0009004",),
    "melanocyte": ("CL:0000148",),
    "osteoblast": ("CL:0000062",),
    "chondrocyte": ("CL:0000138",),
    "adipocyte": ("CL:0000136",),
    "malignant cell": ("CL:0001064",),
}

#: Majors without a finer level used by annotators: any two members are subtype-correct.
FLAT_MAJORS = frozenset({"fibroblast", "erythroid", "malignant cell", "melanocyte",
                         "osteoblast", "chondrocyte", "adipocyte"})

#: Lineages rather than majors: two different named subtypes in them (hepatocyte vs acinar
#: cell vs cholangiocyte) are different cell types, not "major correct".
LINEAGE_MAJORS = frozenset({"epithelial cell"})

#: Subtype anchors: two terms under the same anchor are the same subtype.
SUBTYPE_ANCHORS: frozenset[str] = frozenset({
    "CL:0000624", "CL:0000625", "CL:0000798", "CL:0000940", "CL:0000814",  # CD4, CD8, gd, MAIT, NKT
    "CL:0000236", "CL:0000786", "CL:0000980",  # B cell, plasma cell, plasmablast
    "CL:0000576", "CL:0000235", "CL:0000092",  # monocyte, macrophage, osteoclast
    "CL:0000990", "CL:0000784",  # cDC, pDC
    "CL:0000623",  # NK
    "CL:0000775", "CL:0000771", "CL:0000767",  # neutrophil, eosinophil, basophil
    "CL:0000182", "CL:0000622", "CL:0000068", "CL:0000312", "CL:0000646", "CL:0000158",
    "CL:0000064", "CL:0000160", "CL:0000322", "CL:0000584", "CL:0000163", "CL:0000165",
    "CL:0005026",  # hepatocyte, acinar, duct, keratinocyte, basal, club, ciliated, goblet,
    # alveolar, enterocyte, endocrine, neuroendocrine, hepatoblast
    "CL:1000398", "CL:0002138", "CL:1000413", "CL:0002543", "CL:0002144",  # endothelial kinds
    "CL:0000669", "CL:0000192",  # pericyte, smooth muscle
    "CL:0000128", "CL:0002453", "CL:0000127", "CL:0000636", "CL:0002573",  # glia kinds
    "CL:0000210", "CL:0000561", "CL:0000745", "CL:0000748",  # retinal neurons
    "CL:0000037", "CL:0000557", "CL:0000049", "CL:0000050",  # HSC, GMP, CMP, MEP
})

#: Broad lineage words that include cell types CL files elsewhere (added to the CL ancestry).
BROAD_MEMBERS: dict[str, tuple[str, ...]] = {
    "CL:0000763": ("CL:0000451", "CL:0000576", "CL:0000235", "CL:0000889"),  # myeloid
    "CL:0009004": ("CL:0000210", "CL:0000561", "CL:0000745", "CL:0000748", "CL:0000636",
                   "CL:0000740"),  # retinal cell
    "CL:0008019": ("CL:0000057", "CL:0000186", "CL:0000669", "CL:0000192", "CL:0008034",
                   "CL:0000062", "CL:0000138", "CL:0000136"),  # mesenchymal cell
    "CL:0000499": ("CL:0000186", "CL:0000669", "CL:0000192", "CL:0008034"),  # stromal cell
    "CL:0011012": ("CL:0000148", "CL:0002573"),  # neural crest cell
    "CL:0011026": ("CL:0000038",),  # progenitor cell
}

#: Lineages a progenitor gives rise to (progenitor root -> lineage roots).
PROGENITOR_LINEAGES: dict[str, tuple[str, ...]] = {
    "CL:0000557": ("CL:0000763",),  # GMP -> myeloid cells
    "CL:0000049": ("CL:0000763",),  # CMP -> myeloid cells
    "CL:0000050": ("CL:0000764", "CL:0000556"),  # MEP -> erythroid, megakaryocyte
    "CL:0000051": ("CL:0000542",),  # CLP -> lymphocytes
    "CL:0005026": ("CL:0000182", "CL:1000488"),  # hepatoblast -> hepatocyte, cholangiocyte
}


@dataclass(frozen=True)
class Explanation:
    """Why a pair got its score."""

    score: float
    level: str
    rule: str
    source: str  # "table", "judge" or "ontology"
    truth: LabelMatch | None = None
    prediction: LabelMatch | None = None

    def __str__(self) -> str:
        t = self.truth.label if self.truth and self.truth.label else "unmapped"
        p = self.prediction.label if self.prediction and self.prediction.label else "unmapped"
        return f"{self.score:g} ({self.level}) via {self.source}: {self.rule} [{t} | {p}]"


class _Rules:
    """The CL-graph rules, memoised on (truth id, prediction id)."""

    def __init__(self, onto: CellOntology):
        self.onto = onto
        extra: dict[str, set[str]] = {}
        for broad, members in BROAD_MEMBERS.items():
            for m in members:
                for d in {m} | onto.descendants(m):
                    extra.setdefault(d, set()).add(broad)
                    extra[d].update(onto.ancestors(broad))
        self._extra = extra

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one instance per ontology, kept alive
    def anc(self, cid: str) -> frozenset[str]:
        """Ancestors-or-self, plus the curated broad lineage terms."""
        return frozenset(self.onto.ancestors_self(cid)) | frozenset(self._extra.get(cid, ()))

    @functools.lru_cache(maxsize=65536)  # noqa: B019
    def majors(self, cid: str) -> frozenset[str]:
        a = self.anc(cid)
        return frozenset(m for m, roots in MAJOR_TYPES.items() if a.intersection(roots))

    @functools.lru_cache(maxsize=262144)  # noqa: B019
    def score(self, t: str, p: str) -> tuple[float, str]:
        onto = self.onto
        if t == p:
            return 1.0, "same term"
        at, ap = self.anc(t), self.anc(p)
        if t in ap:
            return 1.0, f"prediction is a subtype of '{onto.label(t)}'"
        shared_anchor = at & ap & SUBTYPE_ANCHORS
        if shared_anchor:
            a = min(shared_anchor, key=lambda x: onto.ancestors_self(t).get(x, 99))
            return 1.0, f"same subtype '{onto.label(a)}'"
        if p in at:
            if p in UNINFORMATIVE:
                return 0.0, f"prediction '{onto.label(p)}' is too generic"
            return 0.5, f"prediction '{onto.label(p)}' is a broader term"
        shared = self.majors(t) & self.majors(p)
        if shared:
            flat = shared & FLAT_MAJORS
            if flat:
                return 1.0, f"same major type '{sorted(flat)[0]}' (no finer level)"
            if not (shared - LINEAGE_MAJORS) and (at & SUBTYPE_ANCHORS) and (
                    ap & SUBTYPE_ANCHORS):
                return 0.0, (f"different {sorted(shared)[0]} types "
                             f"({onto.label(t)} vs {onto.label(p)})")
            return 0.5, f"same major type '{sorted(shared)[0]}'"
        for prog, lineages in PROGENITOR_LINEAGES.items():
            if prog in at and ap.intersection(lineages):
                return 0.5, f"progenitor '{onto.label(prog)}' and its progeny lineage"
        mt = ", ".join(sorted(self.majors(t))) or onto.label(t)
        mp = ", ".join(sorted(self.majors(p))) or onto.label(p)
        return 0.0, f"different major types ({mt} vs {mp})"


def _readings(m: LabelMatch) -> list[str]:
    if m.how == "ambiguous" and m.alternatives:
        return list(m.alternatives)
    return [m.id] if m.id else []


def _auto(rules: _Rules, truth: str, pred: str) -> Explanation:
    mt, mp = map_label(truth), map_label(pred)
    if normalize(str(truth)) == normalize(str(pred)) and normalize(str(truth)):
        return Explanation(1.0, LEVELS[1.0], "identical label text", "ontology", mt, mp)
    t_ids = _readings(mt)
    hedge = list(mp.alternatives) if mp.how in {"either", "ambiguous"} and mp.alternatives else []
    p_ids = hedge or ([mp.id] if mp.id else [])
    if not t_ids or not p_ids:
        side = "truth" if not t_ids else "prediction"
        return Explanation(0.0, LEVELS[0.0], f"{side} not mapped to the Cell Ontology",
                           "ontology", mt, mp)
    best: tuple[float, str] = (-1.0, "")
    for t in t_ids:
        scored = [rules.score(t, p) for p in p_ids]
        vals = [s for s, _ in scored]
        if len(p_ids) == 1:
            cand = scored[0]
        elif max(vals) == 0.0:
            cand = (0.0, "no reading of the hedged answer is right")
        elif min(vals) == 0.0:
            cand = (0.25, "hedged answer: one reading right, another wrong")
        else:
            i = int(np.argmin(vals))
            cand = (vals[i], f"hedged answer, least specific reading: {scored[i][1]}")
        if cand[0] > best[0]:
            best = cand
    return Explanation(best[0], LEVELS[best[0]], best[1], "ontology", mt, mp)


# --------------------------------------------------------------------------- pair table

_TRUTH, _PRED, _EVAL, _SCORE = ("Ground Truth", "Model Prediction", "Prediction Evaluation",
                                "Evaluation Score")


def _load_pair_table(table) -> dict[tuple[str, str], float]:
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        df, where = table, "the pair table DataFrame"
    else:
        path = Path(os.fspath(table)).expanduser()
        where = str(path)
        if not path.is_file():
            raise InputError(f"Pair table not found: {path}. Pass an .xlsx or .csv file with "
                             f"columns '{_TRUTH}', '{_PRED}', '{_EVAL}', '{_SCORE}'.")
        try:
            if path.suffix.lower() in {".xlsx", ".xlsm", ".xls"}:
                df = pd.read_excel(path)
            elif path.suffix.lower() in {".tsv", ".txt"}:
                df = pd.read_csv(path, sep="\t")
            else:
                df = pd.read_csv(path)
        except ImportError as exc:
            raise InputError(f"Reading {path} needs openpyxl: pip install openpyxl") from exc
        except Exception as exc:  # pandas raises many parser error types
            raise InputError(f"Could not read pair table {path} ({type(exc).__name__}: {exc}). "
                             "Use an .xlsx or .csv file.") from exc
    cols = [str(c).strip() for c in df.columns]
    df = df.set_axis(cols, axis=1)
    missing = [c for c in (_TRUTH, _PRED) if c not in cols]
    if missing or (_SCORE not in cols and _EVAL not in cols):
        need = missing + ([] if (_SCORE in cols or _EVAL in cols) else [f"{_SCORE}' or '{_EVAL}"])
        raise InputError(f"Pair table {where} lacks column(s) '{', '.join(need)}'; it has "
                         f"{cols}. Expected columns '{_TRUTH}', '{_PRED}', '{_EVAL}', "
                         f"'{_SCORE}' (as in CellReasoner's all_pair_score.xlsx).")
    seen: dict[tuple[str, str], list[float]] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        rec = dict(zip(cols, row, strict=True))
        score = None
        if _SCORE in cols and rec[_SCORE] == rec[_SCORE]:
            try:
                score = float(rec[_SCORE])
            except (TypeError, ValueError):
                score = None
        if score is None and _EVAL in cols:
            score = LEVEL_BY_NAME.get(str(rec[_EVAL]).strip().lower())
        if score not in LEVELS:
            raise InputError(f"Pair table {where}, row {i + 2}: score "
                             f"{rec.get(_SCORE)!r}/{rec.get(_EVAL)!r} is not one of "
                             f"{sorted(LEVELS)} / {list(LEVELS.values())}.")
        seen.setdefault((_norm(rec[_TRUTH]), _norm(rec[_PRED])), []).append(float(score))
    return seen


def _norm(label) -> str:
    """A pair-table key: the label with its whitespace normalised (the notebook's match)."""
    return " ".join(str(label).split())


def resolve_duplicates(scores: list[float]) -> float:
    """One score for a pair the table judged several times: the most frequent judgment,
    a tie going to the lower score (a disputed pair is not given the benefit of the doubt)."""
    counts = {s: scores.count(s) for s in scores}
    best = max(counts.values())
    return min(s for s, c in counts.items() if c == best)


# --------------------------------------------------------------------------- scorer


@dataclass
class PairScorer:
    """Score (truth, prediction) pairs on the four CellReasoner levels.

    Parameters
    ----------
    pair_table
        Optional path (xlsx/csv) or DataFrame with columns ``Ground Truth``,
        ``Model Prediction``, ``Prediction Evaluation``/``Evaluation Score``; its judgments
        override every other source for the pairs it contains. Default ``None``.
    judge
        Optional :class:`LLMJudge`, :class:`~cellreasoner.backends.Backend` or backend name;
        when given it scores the pairs missing from the table instead of the ontology rules.
        Default ``None``.
    judge_scope
        ``"all"`` (default): the judge scores every pair missing from the table;
        ``"unmapped"``: only pairs where a label cannot be grounded in the Cell Ontology, the
        rest keep the (free, deterministic) ontology rules.
    table_only
        The upstream notebook's semantics (default False): only pairs in the table are
        scored (exact match after whitespace normalisation); the others score ``NaN``.

    Notes
    -----
    Labels are matched after whitespace normalisation. A pair the table judges several
    times takes its most frequent judgment, a tie the lower score
    (:func:`resolve_duplicates`); :attr:`conflicts` lists the pairs whose rows disagree.
    """

    pair_table: str | os.PathLike | pd.DataFrame | None = None
    judge: LLMJudge | Backend | str | None = None
    judge_scope: str = "all"
    table_only: bool = False
    conflicts: dict = field(default_factory=dict, init=False, repr=False)
    _table: dict = field(default_factory=dict, init=False, repr=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)
    _n_scored: int = field(default=0, init=False, repr=False)
    _n_table: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if self.pair_table is not None:
            judged = _load_pair_table(self.pair_table)
            self._table = {k: resolve_duplicates(v) for k, v in judged.items()}
            self.conflicts = {k: v for k, v in judged.items() if len(set(v)) > 1}
            repeated = sum(len(v) > 1 for v in judged.values())
            if self.conflicts:
                log.warning("pair table: %d pairs appear more than once (after whitespace "
                            "normalisation) and %d of them disagree; each takes its most "
                            "frequent judgment, a tie the lower score", repeated,
                            len(self.conflicts))
        elif self.table_only:
            raise InputError("table_only (--pair-table-only) needs a pair table.")
        if self.judge_scope not in {"all", "unmapped"}:
            raise InputError(f"judge_scope must be 'all' or 'unmapped', not "
                             f"{self.judge_scope!r}.")
        if self.judge is not None and not isinstance(self.judge, LLMJudge):
            self.judge = LLMJudge(self.judge)
        self._rules = _rules_for(get_ontology())

    def _needs_judge(self, truth: str, pred: str) -> bool:
        if self.judge is None:
            return False
        if self.judge_scope == "all":
            return True
        return not (_readings(map_label(truth)) and (map_label(pred).id or
                                                     map_label(pred).alternatives))

    @property
    def coverage(self) -> float:
        """Fraction of the pairs scored so far that came from the user pair table."""
        return self._n_table / self._n_scored if self._n_scored else 0.0

    def explain(self, truth: str, pred: str) -> Explanation:
        """Score of one pair with the rule (or source) that decided it."""
        key = (_norm(truth), _norm(pred))
        if key in self._table:
            s = self._table[key]
            return Explanation(s, LEVELS[s], "pair table", "table")
        if self.table_only:
            return Explanation(float("nan"), "unscored", "not in the pair table", "table")
        if self._needs_judge(*key):
            s = self.judge.judge(*key)
            return Explanation(s, LEVELS[s], f"LLM judge ({self.judge._model})", "judge")
        return _auto(self._rules, truth, pred)

    def score(self, truth: str, pred: str) -> float:
        """The score (1, 0.5, 0.25 or 0) of one pair."""
        return float(self.score_many([truth], [pred])[0])

    def score_many(self, truths: Iterable[str], preds: Iterable[str]) -> np.ndarray:
        """Scores of many pairs (each distinct pair is scored once)."""
        truths, preds = [str(t) for t in truths], [str(p) for p in preds]
        if len(truths) != len(preds):
            raise InputError(f"score_many needs as many predictions as truths "
                             f"({len(truths)} truths, {len(preds)} predictions).")
        keys = [(_norm(t), _norm(p)) for t, p in zip(truths, preds, strict=True)]
        todo = [k for k in dict.fromkeys(keys) if k not in self._cache]
        if todo:
            from_table = [k for k in todo if k in self._table]
            for k in from_table:
                self._cache[k] = self._table[k]
            rest = [k for k in todo if k not in self._table]
            if self.table_only:  # the notebook's semantics: what the table lacks is unscored
                self._cache.update(dict.fromkeys(rest, float("nan")))
                rest = []
            judged = [k for k in rest if self._needs_judge(*k)]
            if judged:
                for k, s in zip(judged, self.judge.judge_many(judged), strict=True):
                    self._cache[k] = s
            for k in rest:
                if k not in self._cache:
                    self._cache[k] = _auto(self._rules, *k).score
        self._n_scored += len(keys)
        self._n_table += sum(k in self._table for k in keys)
        return np.fromiter((self._cache[k] for k in keys), dtype=float, count=len(keys))


@functools.lru_cache(maxsize=2)
def _rules_for(onto: CellOntology) -> _Rules:
    return _Rules(onto)


@functools.lru_cache(maxsize=1)
def _default_scorer() -> PairScorer:
    return PairScorer()


def score_pair(truth: str, prediction: str) -> float:
    """Automatic CellReasoner score of one (truth, prediction) pair from the CL graph.

    Parameters
    ----------
    truth
        The ground-truth label (free text; mapped to the Cell Ontology).
    prediction
        The predicted label.

    Returns
    -------
    float
        ``1.0`` (Subtype correct), ``0.5`` (Major correct), ``0.25`` (Partially correct) or
        ``0.0`` (Incorrect); see :data:`LEVELS`.
    """
    return _default_scorer().score(truth, prediction)


def explain_pair(truth: str, prediction: str) -> Explanation:
    """The rule behind :func:`score_pair`."""
    return _default_scorer().explain(truth, prediction)


__all__ = ["BROAD_MEMBERS", "FLAT_MAJORS", "LINEAGE_MAJORS", "MAJOR_TYPES",
           "PROGENITOR_LINEAGES", "SUBTYPE_ANCHORS", "Explanation", "PairScorer",
           "explain_pair", "score_pair"]
