"""Cell Ontology (CL) grounding of free-text cell-type labels and model answers.

The ontology ships offline inside the ``cellxgene-ontology-guide`` package. The first call builds
a compact index (labels, synonyms, ancestors with distances, deprecation) and caches it as a pickle
under :func:`cellreasoner.resources.cache_dir`, keyed by the package's CL version; later processes
load the pickle, and :func:`get_ontology` keeps one instance per process.

:func:`map_label` turns a label such as ``"CD14+ Mono"``, ``"CD8 TEM_2"``, ``"myCAF TPM1"`` or a
model answer with reasoning (``"<think>...</think>Naive CD4+ T cells."``) into a
:class:`LabelMatch`. When the text cannot be grounded confidently it is returned unmapped
(``id=None``) rather than matched to a wrong term.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import tempfile
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources as _ir
from pathlib import Path

from ..errors import InputError

#: Terms too generic to count as an answer (the CL roots above any lineage).
UNINFORMATIVE = frozenset({
    "CL:0000000", "CL:0000255", "CL:0002242", "CL:0000219", "CL:0000226", "CL:0000548",
    "CL:0000003", "CL:0000211", "CL:0000393", "CL:0000404", "CL:0000325", "CL:0000151",
    "CL:0000183", "CL:0000630", "CL:0000188", "CL:0000412", "CL:0000417", "CL:0011115",
    "CL:0000034", "CL:0000723", "CL:0002320", "CL:0000457", "CL:0000081", "CL:0000225",
    "CL:0001061", "CL:0000842", "CL:0000234", "CL:0000518", "CL:0000145", "CL:0000154",
    "CL:0002076", "CL:0000327",
})

_INDEX_FORMAT = 4  # bump when the pickled index layout changes


# --------------------------------------------------------------------------- index


def _cl_source() -> tuple[str, dict]:
    """(version string, raw CL term dict) from the installed cellxgene-ontology-guide."""
    try:
        from cellxgene_ontology_guide.supported_versions import CXGSchema
    except ImportError as exc:  # it is a base dependency; say so clearly if missing
        raise InputError(
            "The Cell Ontology comes from the package 'cellxgene-ontology-guide'. "
            "Install it with: pip install cellxgene-ontology-guide"
        ) from exc
    schema = CXGSchema()
    version = schema.supported_ontologies["CL"]["version"]
    return version, schema.ontology("CL")


def _cl_version() -> str:
    from cellxgene_ontology_guide.supported_versions import CXGSchema

    return CXGSchema().supported_ontologies["CL"]["version"]


def _build_index(version: str, raw: dict) -> dict:
    labels: dict[str, str] = {}
    synonyms: dict[str, tuple[str, ...]] = {}
    ancestors: dict[str, dict[str, int]] = {}
    deprecated: set[str] = set()
    replaced_by: dict[str, str] = {}
    for cid, term in raw.items():
        if not cid.startswith("CL:"):
            continue
        labels[cid] = term.get("label", cid)
        syn = tuple(term.get("synonyms") or ())
        if syn:
            synonyms[cid] = syn
        ancestors[cid] = {a: int(d) for a, d in (term.get("ancestors") or {}).items()
                          if a.startswith("CL:")}
        if term.get("deprecated"):
            deprecated.add(cid)
            if term.get("replaced_by"):
                replaced_by[cid] = term["replaced_by"]
    children: dict[str, list[str]] = {}
    for cid, anc in ancestors.items():
        for a, d in anc.items():
            if d == 1:
                children.setdefault(a, []).append(cid)
    # normalised label/synonym -> id; labels win over synonyms, live terms over obsolete ones,
    # and a synonym shared by several terms is dropped (ambiguous)
    lookup: dict[str, tuple[str, str]] = {}
    ambiguous: set[str] = set()
    for cid, lab in labels.items():
        if cid not in deprecated:
            lookup.setdefault(normalize(lab), (cid, "exact"))
    for cid, syns in synonyms.items():
        if cid in deprecated:
            continue
        for syn in syns:
            key = normalize(syn)
            if key in lookup:
                if lookup[key][1] == "synonym" and lookup[key][0] != cid:
                    ambiguous.add(key)
                continue
            lookup[key] = (cid, "synonym")
    for key in ambiguous:
        del lookup[key]
    return {"format": _INDEX_FORMAT, "version": version, "labels": labels,
            "synonyms": synonyms, "ancestors": ancestors, "deprecated": deprecated,
            "replaced_by": replaced_by, "children": children, "lookup": lookup}


class CellOntology:
    """Read-only view of the Cell Ontology: labels, synonyms, ancestry.

    Parameters
    ----------
    index
        The compact index built by :func:`get_ontology` (use that function instead of
        constructing this class directly).
    """

    def __init__(self, index: dict):
        self.version: str = index["version"]
        self._labels: dict[str, str] = index["labels"]
        self._synonyms: dict[str, tuple[str, ...]] = index["synonyms"]
        self._ancestors: dict[str, dict[str, int]] = index["ancestors"]
        self._deprecated: set[str] = index["deprecated"]
        self._replaced_by: dict[str, str] = index["replaced_by"]
        self._children: dict[str, list[str]] = index["children"]
        # normalised label/synonym -> (id, "exact"|"synonym")
        self._lookup: dict[str, tuple[str, str]] = index["lookup"]

    # -- terms
    def ids(self, include_deprecated: bool = False) -> list[str]:
        """All CL ids (live terms only unless ``include_deprecated``)."""
        return [c for c in self._labels if include_deprecated or c not in self._deprecated]

    def exists(self, cl_id: str) -> bool:
        """True if ``cl_id`` is a CL term (live or obsolete)."""
        return cl_id in self._labels

    def _check(self, cl_id: str) -> None:
        if cl_id not in self._labels:
            raise InputError(f"Unknown Cell Ontology id '{cl_id}' (CL {self.version}). "
                             "Use an id such as 'CL:0000236'.")

    def label(self, cl_id: str) -> str:
        """The term's label, e.g. ``label("CL:0000236") == "B cell"``."""
        self._check(cl_id)
        return self._labels[cl_id]

    def synonyms(self, cl_id: str) -> list[str]:
        """Exact/related synonyms listed in CL (may be empty)."""
        self._check(cl_id)
        return list(self._synonyms.get(cl_id, ()))

    def is_deprecated(self, cl_id: str) -> bool:
        self._check(cl_id)
        return cl_id in self._deprecated

    def replacement(self, cl_id: str) -> str | None:
        """The term replacing an obsolete one, if CL names it."""
        self._check(cl_id)
        return self._replaced_by.get(cl_id)

    def lookup(self, text: str) -> tuple[str, str] | None:
        """Exact label/synonym lookup after :func:`normalize`; ``(id, "exact"|"synonym")``."""
        return self._lookup.get(normalize(text))

    # -- graph
    def ancestors(self, cl_id: str) -> dict[str, int]:
        """All ancestors (``is_a`` and ``part_of`` closure as CL ships it) with distances."""
        self._check(cl_id)
        return dict(self._ancestors[cl_id])

    def ancestors_self(self, cl_id: str) -> dict[str, int]:
        """:meth:`ancestors` plus the term itself at distance 0."""
        out = {cl_id: 0}
        out.update(self._ancestors.get(cl_id, {}))
        return out

    def is_ancestor(self, ancestor: str, term: str) -> bool:
        """True if ``ancestor`` is a strict ancestor of ``term``."""
        return ancestor in self._ancestors.get(term, {})

    def children(self, cl_id: str) -> list[str]:
        self._check(cl_id)
        return list(self._children.get(cl_id, ()))

    def descendants(self, cl_id: str) -> set[str]:
        self._check(cl_id)
        out: set[str] = set()
        stack = [cl_id]
        while stack:
            for c in self._children.get(stack.pop(), ()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def common_ancestors(self, a: str, b: str) -> list[str]:
        """Shared ancestors-or-self, closest first (by summed distance)."""
        aa, bb = self.ancestors_self(a), self.ancestors_self(b)
        shared = set(aa) & set(bb)
        return sorted(shared, key=lambda x: (aa[x] + bb[x], x))

    def lowest_informative_ancestor(self, ids: Sequence[str]) -> str | None:
        """The closest common ancestor-or-self of ``ids`` that is not a generic root term."""
        if not ids:
            return None
        shared = set(self.ancestors_self(ids[0]))
        for i in ids[1:]:
            shared &= set(self.ancestors_self(i))
        shared -= UNINFORMATIVE
        if not shared:
            return None
        return min(shared, key=lambda x: (sum(self.ancestors_self(i)[x] for i in ids), x))


@functools.lru_cache(maxsize=1)
def get_ontology() -> CellOntology:
    """The process-wide :class:`CellOntology` (index cached on disk after the first build)."""
    from ..resources import cache_dir

    version = _cl_version()
    path = Path(cache_dir()) / f"cl_index_{version}_v{_INDEX_FORMAT}.pkl"
    index = None
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                index = pickle.load(fh)
            if index.get("format") != _INDEX_FORMAT or index.get("version") != version:
                index = None
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            index = None  # a stale or truncated cache file is rebuilt below
    if index is None:
        index = _build_index(*_cl_source())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("wb", dir=path.parent, suffix=".tmp",
                                             delete=False) as fh:
                pickle.dump(index, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(fh.name, path)  # atomic: concurrent processes never see half a file
        except OSError as exc:  # read-only cache: keep working from memory
            warnings.warn(f"Could not cache the Cell Ontology index in {path.parent}: {exc}",
                          RuntimeWarning, stacklevel=2)
    return CellOntology(index)


# --------------------------------------------------------------------------- normalisation

_SINGULAR_KEEP = {"us", "ss", "is"}
_GREEK = [("γδ", " gamma-delta "), ("γ δ", " gamma-delta "), ("αβ", " alpha-beta "),
          ("α", "alpha"), ("β", "beta"), ("γ", "gamma"), ("δ", "delta"), ("φ", "phi")]


_SHORT_PLURALS = {"dcs": "dc", "nks": "nk", "ecs": "ec", "tcs": "tc", "bs": "b", "ts": "t"}


def _singular(tok: str) -> str:
    if tok in _SHORT_PLURALS:
        return _SHORT_PLURALS[tok]
    if len(tok) >= 4 and tok.endswith("s") and tok[-2:] not in _SINGULAR_KEEP:
        return tok[:-1]
    return tok


def normalize(text: str) -> str:
    """Canonical lookup key: lower case, ``+``/``⁺`` -> ``-positive``, singular nouns, no
    punctuation, ``T-cells``/``T_cells`` -> ``t cell``, Greek letters spelled out."""
    s = unicodedata.normalize("NFKC", str(text))
    for g, r in _GREEK:
        s = s.replace(g, r)
    s = s.lower().replace("_", " ")
    s = re.sub(r"\bgamma\s*-?\s*delta\b", "gamma-delta", s)
    s = re.sub(r"\balpha\s*-?\s*beta\b", "alpha-beta", s)
    s = re.sub(r"([a-z0-9])\s*\+", r"\1-positive ", s)
    s = re.sub(r"\b([a-z]{1,4}\d+[a-z]?)-(?=\s|/|$)", r"\1-negative ", s)
    s = re.sub(r"\b(\w+)\s*-\s*(cells?|lymphocytes?)\b", r"\1 \2", s)
    s = re.sub(r"[\"'`*#:;,.!?()\[\]{}]", " ", s)
    toks = [_singular(t) for t in s.split()]
    return " ".join(toks)


# --------------------------------------------------------------------------- aliases


@functools.lru_cache(maxsize=1)
def _aliases() -> dict[str, tuple[str, ...]]:
    text = (_ir.files("cellreasoner") / "data" / "cl_aliases.tsv").read_text(encoding="utf-8")
    out: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        out[normalize(parts[0])] = tuple(parts[1].split("|"))
    return out


# --------------------------------------------------------------------------- label mapping


@dataclass(frozen=True)
class LabelMatch:
    """Result of grounding one label.

    Attributes
    ----------
    id
        CL id, or ``None`` when unmapped/ambiguous.
    label
        The CL label of ``id``.
    score
        Confidence in [0, 1] (1 exact ... 0 unmapped).
    how
        ``exact``, ``synonym``, ``abbreviation``, ``composed``, ``normalized``,
        ``marker-subset``, ``either``, ``ambiguous``, ``fuzzy`` or ``unmapped``.
    alternatives
        CL ids of the readings of an ``X or Y`` answer or of an ambiguous abbreviation.
    text
        The answer text that was grounded (after removing reasoning and filler).
    """

    id: str | None
    label: str | None
    score: float
    how: str
    alternatives: tuple[str, ...] = ()
    text: str = ""


_HOW_SCORE = {"exact": 1.0, "synonym": 0.95, "abbreviation": 0.9, "composed": 0.85,
              "marker-subset": 0.8, "normalized": 0.75, "either": 0.6, "fuzzy": 0.6,
              "ambiguous": 0.3, "unmapped": 0.0}

_CLOSE_TAG = re.compile(r"</\s*[a-z]+\s*>", re.I)
_OPEN_TAG = re.compile(r"<\s*[a-z]+\s*>", re.I)
_FILLER = re.compile(
    r"^(?:final\s+)?(?:answer|annotation|cell\s*type|prediction|result|label)s?\s*(?:is|:|-)\s*"
    r"|^(?:the\s+)?(?:final\s+)?(?:cell\s*type|annotation|answer)\s+(?:is|would\s+be)\s+"
    r"|^(?:these|this|the)\s+(?:cells?|cluster)\s+(?:is|are)\s+(?:most\s+)?(?:likely\s+)?"
    r"|^(?:most\s+)?likely\s+|^probably\s+|^possibly\s+|^(?:an?|the)\s+",
    re.I,
)
_ANSWER_IN_PROSE = re.compile(
    r"(?:final\s+(?:answer|annotation)|(?:cell\s+type|annotation|answer)\s+(?:should\s+be|"
    r"would\s+be|is)|annotated?\s+as|most\s+likely\s+"
    r"(?:to\s+be\s+)?|therefore,?\s+(?:the\s+)?(?:cells?\s+(?:is|are)\s+)?)[:\s]*"
    r"\**\s*([A-Za-z0-9+⁺/ _-]{2,60}?)\s*(?:\*\*|[.\n,;]|$)",
    re.I,
)
_MAX_WORDS = 12
_MAX_REDUCE_WORDS = 6


def extract_answer(text: str) -> str:
    """The final answer in a model response: after ``</think>``, without filler and quotes.

    Long free-text reasoning without a closing tag yields the phrase after "final answer",
    "the cell type is", ... or ``""`` when no answer can be found.
    """
    s = str(text).replace("\r", "")
    parts = [p.strip() for p in _CLOSE_TAG.split(s)]
    parts = [_OPEN_TAG.sub(" ", p).strip() for p in parts]
    short = [p for p in parts if p and len(p.split()) <= _MAX_WORDS]
    if parts and parts[-1] and parts[-1] in short:
        cand = parts[-1]
    elif short:
        cand = short[0]
    else:
        hits = _ANSWER_IN_PROSE.findall(s)
        cand = hits[-1] if hits else ""
    cand = cand.strip().splitlines()[0] if cand.strip() else ""
    for _ in range(3):  # a short sentence: "Therefore, the annotation should be B cells."
        hits = _ANSWER_IN_PROSE.findall(cand) if len(cand.split()) > 3 else []
        if not hits or hits[-1] == cand:
            break
        cand = hits[-1]
    outside = re.sub(r"\([^)]*\)", " ", cand).strip()
    if outside:
        cand = re.sub(r"\s+", " ", outside)
    for _ in range(3):
        new = _FILLER.sub("", cand.strip(" \t\"'`*#:.;,!?")).strip()
        if new == cand:
            break
        cand = new
    return cand.strip(" \t\"'`*#:.;,!?")


_ALT_SPLIT = re.compile(r"\s*(?:\bor\b|\band/or\b|\bvs\.?\b|;)\s*", re.I)
_GENE_TOKEN = re.compile(r"^(?:[A-Z][A-Z0-9]*\d[A-Z0-9]*|[A-Z]{3,}[0-9]*[A-Z]?|[A-Z]+-[A-Z0-9]+)$")
_NUMERIC = re.compile(r"^(?:\d+|[ivx]+)$", re.I)
_MODIFIERS = {
    "activated", "active", "resting", "proliferating", "proliferative", "cycling", "dividing",
    "inflammatory", "tumor-associated", "tumour-associated", "tumor-infiltrating",
    "cancer-associated", "tissue-specific", "tissue-resident", "resident", "infiltrating",
    "mature", "normal-like", "normal", "stressed", "stress", "early", "late", "primary",
    "reactive", "polarized", "differentiated", "quiescent", "interferon", "ifn", "ifn-stimulated",
    "pancreatic", "gastric", "hepatic", "liver", "gastrointestinal", "intestinal", "colonic",
    "colorectal", "lung", "pulmonary", "renal", "kidney", "breast", "mammary", "luminal", "skin",
    "dermal", "portal", "periportal", "pericentral", "central", "intermediate", "vascular",
    "tumor", "tumour", "cancer", "malignant", "neoplastic", "epithelial-like", "like", "other",
    "putative", "peripheral", "circulating", "blood", "thymic", "bone", "marrow", "lymph",
    "node", "spleen", "splenic", "human", "mouse", "murine", "cell", "s", "type", "subtype",
    "population", "cluster", "lineage", "derived", "monocyte-derived", "ebv-infected",
    "ebv-associated", "ebv", "chronic", "acute", "non-inflammatory", "immunosuppressive",
    "suppressive", "regulatory-like", "stalk-like", "tip-like", "progenitor-like", "immature",
    "atypical", "secretory", "cytotoxic", "effector", "memory", "naive", "helper", "highly",
    "high-grade", "low-grade", "stimulated", "transformed", "origin", "likely", "probable",
}
_MALIGNANT_WORDS = {"tumor", "tumour", "cancer", "malignant", "neoplastic", "carcinoma",
                    "malignancy", "neoplasm", "metastatic"}
_LINEAGE_NOT_T = {"b", "mono", "monocyte", "macrophage", "dendritic", "dc", "pdc", "cdc",
                  "neutrophil", "plasma", "epithelial", "endothelial", "fibroblast", "nk",
                  "myeloid", "mast", "erythrocyte", "platelet", "hepatocyte", "natural"}
_T_TOKENS = {"t", "tconv", "tc", "tex", "tem", "tcm", "temra", "treg", "th", "th1", "th2",
             "th17", "th22", "tfh", "ctl", "mait", "nkt", "tprolif", "t-helper", "trm", "tn",
             "thelper", "lymphocyte"}


_B_SUBSETS = (("switched", "CL:0000972"), ("class-switched", "CL:0000972"),
              ("unswitched", "CL:0000970"), ("memory", "CL:0000787"), ("naive", "CL:0000788"),
              ("germinal", "CL:0000844"), ("gc", "CL:0000844"), ("transitional", "CL:0000818"),
              ("immature", "CL:0000816"), ("plasma", "CL:0000786"))


def _compose_b(tokens: list[str]) -> str | None:
    """B-cell subsets written in any order (``B memory``, ``naive B``, ``B_cells_switched``)."""
    ts = set(tokens)
    if "b" not in ts or ts & (_T_TOKENS | {"nk", "mono", "monocyte", "dc", "macrophage"}):
        return None
    for tok, cid in _B_SUBSETS:
        if tok in ts:
            return cid
    return "CL:0000236"


def _compose_t(tokens: list[str]) -> str | None:
    """Compose a CL T-cell term from tokens such as ``cd8 tem``, ``naive cd4``, ``cd4 treg``."""
    ts = set(tokens)
    has_cd4 = bool(ts & {"cd4", "cd4-positive"})
    has_cd8 = bool(ts & {"cd8", "cd8-positive", "cd8a", "cd8a-positive"})
    t_evidence = (bool(ts & _T_TOKENS) and ("lymphocyte" not in ts or "t" in ts)) or bool(
        ts & {"gamma-delta", "gdt", "mait", "nkt"})
    if ts & _LINEAGE_NOT_T and not (ts & {"t", "nkt"}):
        return None
    if not t_evidence and not (has_cd4 or has_cd8):
        return None
    if "gamma-delta" in ts or "gdt" in ts:
        return "CL:0000798"
    if "mait" in ts:
        return "CL:0000940"
    if "nkt" in ts or ("nk" in ts and "t" in ts) or "nk-like" in ts:
        return "CL:0000814"
    if ts & {"treg", "regulatory", "t-reg"} or ("reg" in ts and "t" in ts):
        return "CL:0000795" if has_cd8 and not has_cd4 else (
            "CL:0000792" if has_cd4 else "CL:0000815")
    for tok, cid in (("th1", "CL:0000545"), ("th2", "CL:0000546"), ("th17", "CL:0000899"),
                     ("th22", "CL:0001042"), ("tfh", "CL:0002038")):
        if tok in ts:
            return cid
    if "follicular" in ts and "helper" in ts:
        return "CL:0002038"
    naive = bool(ts & {"naive", "tn"})
    memory = "memory" in ts
    temra = "temra" in ts or ("terminally" in ts and memory)
    tem = "tem" in ts or ("effector" in ts and memory)
    tcm = "tcm" in ts or ("central" in ts and memory)
    exhausted = bool(ts & {"tex", "exhausted"})
    cytotoxic = bool(ts & {"cytotoxic", "ctl", "tc"})
    helper = bool(ts & {"helper", "th", "t-helper", "thelper"})
    if has_cd4 and has_cd8:
        return "CL:0000084"
    if has_cd4:
        for flag, cid in ((temra, "CL:0001087"), (tem, "CL:0000905"), (tcm, "CL:0000904"),
                          (naive, "CL:0000895"), (memory, "CL:0000897"),
                          (exhausted, "CL:0020030"), (cytotoxic, "CL:0000934"),
                          (helper, "CL:0000492")):
            if flag:
                return cid
        return "CL:0000624"
    if has_cd8:
        for flag, cid in ((temra, "CL:0001062"), (tem, "CL:0000913"), (tcm, "CL:0000907"),
                          (naive, "CL:0000900"), (memory, "CL:0000909"),
                          (exhausted, "CL:0020031"), (cytotoxic, "CL:0000794")):
            if flag:
                return cid
        return "CL:0000625"
    for flag, cid in ((temra, "CL:4030002"), (tem or tcm or memory or "trm" in ts, "CL:0000813"),
                      (naive, "CL:0000898"), (exhausted, "CL:0011025"),
                      (cytotoxic, "CL:0000910"), (helper, "CL:0000912"),
                      ("alpha-beta" in ts, "CL:0000789")):
        if flag:
            return cid
    return "CL:0000084"


_GLUED = [
    (re.compile(r"\bcd([48])(?:-positive)?t(ex|conv|em|cm|reg|e|c)?\b"), r"cd\1 t\2"),
    (re.compile(r"\bcd3(?:-positive)?\s*t\b"), "t"),
    (re.compile(r"\bcd3t\b"), "t"),
    (re.compile(r"\btprolif\b"), "t"),
    (re.compile(r"\bt-prolif\w*\b"), "t"),
    (re.compile(r"\b(?:gamma-delta|gd|γδ)\s*-?\s*t\b"), "gamma-delta t"),
    (re.compile(r"\bt\s+regulatory\b|\bregulatory\s+t\b"), "treg"),
    (re.compile(r"\bnatural\s+killer\b"), "nk"),
    (re.compile(r"\bth\s+(1|2|17|22)\b"), r"th\1"),
    (re.compile(r"\bt\s+helper\b|\bhelper\s+t\b"), "t helper"),
]


def _lookup_phrase(key: str, onto: CellOntology) -> tuple[tuple[str, ...], str] | None:
    """Exact/synonym/alias/composed lookup of one normalised phrase."""
    if not key:
        return None
    aliases = _aliases()
    keys = [key, key + " cell"] if len(key) >= 3 else [key]
    if key.endswith(" cell"):
        keys.append(key[: -len(" cell")])
    for k in keys:
        hit = onto._lookup.get(k)
        if hit is not None and hit[0] not in UNINFORMATIVE:
            return (hit[0],), hit[1]
        if k in aliases:
            return aliases[k], "abbreviation"
    glued = key
    for pat, rep in _GLUED:
        glued = pat.sub(rep, glued)
    toks = glued.replace("/", " ").split()
    toks = [t for t in toks if t not in {"cell", "cells"}]
    if glued != key:
        for k in (glued, glued + " cell"):
            if k in aliases:
                return aliases[k], "abbreviation"
            hit = onto._lookup.get(k)
            if hit is not None and hit[0] not in UNINFORMATIVE:
                return (hit[0],), hit[1]
    composed = _compose_t(toks) or _compose_b(toks)
    if composed is not None:
        return (composed,), "composed"
    return None


def _strip_markers(raw: str) -> str | None:
    """Drop trailing marker-gene symbols / numeric suffixes (``CD8 TEM_2`` -> ``CD8 TEM``)."""
    toks = re.split(r"[\s_]+", raw.strip())
    aliases = _aliases()
    changed = False
    while len(toks) > 1:
        last = toks[-1]
        if _NUMERIC.match(last) or (_GENE_TOKEN.match(last) and normalize(last) not in aliases):
            toks.pop()
            changed = True
        else:
            break
    if len(toks) == 1:
        m = re.match(r"^([A-Za-z][A-Za-z-]*?[A-Za-z])_?\d+$", toks[0])
        if m and normalize(m.group(1)) in aliases and normalize(toks[0]) not in aliases:
            toks = [m.group(1)]
            changed = True
    return " ".join(toks) if changed else None


def _reductions(key: str) -> Iterable[str]:
    """Progressively simpler phrases: drop modifier/organ words, then leading or trailing
    words, then read ``X-like`` as ``X``."""
    toks = key.split()
    seen = {key}
    # drop modifier words anywhere, one at a time, then all at once
    for i, t in enumerate(toks):
        if t in _MODIFIERS or t.endswith("-like"):
            cand = " ".join(toks[:i] + toks[i + 1:])
            if cand and cand not in seen:
                seen.add(cand)
                yield cand
    kept = [t for t in toks if t not in _MODIFIERS and not t.endswith("-like")]
    cand = " ".join(kept)
    if cand and cand not in seen:
        seen.add(cand)
        yield cand
    # leading words dropped one at a time (organ adjectives not in the list), then trailing
    for i in range(1, len(kept)):
        cand = " ".join(kept[i:])
        if cand not in seen and cand not in {"cell"}:
            seen.add(cand)
            yield cand
    for i in range(len(kept) - 1, 0, -1):
        cand = " ".join(kept[:i])
        if cand not in seen and cand not in {"cell"}:
            seen.add(cand)
            yield cand
    # "-like" used as a noun: "fibroblast-like", "epithelial-like"
    for t in toks:
        if t.endswith("-like") and len(t) > 6:
            base = t[: -len("-like")]
            if base not in seen:
                seen.add(base)
                yield base


def _ground_one(raw: str, onto: CellOntology) -> tuple[tuple[str, ...], str] | None:
    key = normalize(raw)
    if not key:
        return None
    hit = _lookup_phrase(key, onto)
    if hit:
        return hit
    stripped = _strip_markers(raw)
    if stripped:
        hit = _ground_one(stripped, onto)
        if hit:
            return hit[0], ("marker-subset" if hit[1] in {"exact", "synonym", "abbreviation",
                                                           "composed"} else hit[1])
    if len(key.split()) > _MAX_REDUCE_WORDS:
        return None
    for cand in _reductions(key):
        hit = _lookup_phrase(cand, onto)
        if hit:
            return hit[0], "normalized"
    fuzzy = _fuzzy(key, onto)
    if fuzzy:
        return fuzzy
    if set(key.split()) & _MALIGNANT_WORDS:
        return ("CL:0001064",), "normalized"
    return None


def _fuzzy(key: str, onto: CellOntology) -> tuple[tuple[str, ...], str] | None:
    import difflib

    if len(key) < 6 or len(key) > 60:
        return None
    pool = _fuzzy_pool(onto).get(key[:2], ())
    best = difflib.get_close_matches(key, pool, n=1, cutoff=0.9)
    if not best:
        return None
    k = best[0]
    ids = _aliases().get(k) or (onto._lookup[k][0],)
    return ids, "fuzzy"


@functools.lru_cache(maxsize=4)
def _fuzzy_pool(onto: CellOntology) -> dict[str, list[str]]:
    """Candidate keys for typo matching, bucketed by their first two characters."""
    keys = {k for k, (cid, _) in onto._lookup.items() if cid not in UNINFORMATIVE}
    keys |= {k for k in _aliases() if len(k) >= 6}
    pool: dict[str, list[str]] = {}
    for k in sorted(keys):
        pool.setdefault(k[:2], []).append(k)
    return pool


def _split_alternatives(answer: str) -> list[str]:
    parts = [p for p in _ALT_SPLIT.split(answer) if p and p.strip()]
    out: list[str] = []
    for p in parts:
        # "Mono/Macro", "cytotoxic T/NK cells": slash between words (not between markers)
        if "/" in p and not re.search(r"(?:\+|-|\bcd\d+\w*)\s*/", p, re.I):
            halves = [h.strip() for h in p.split("/") if h.strip()]
            if len(halves) == 2 and all(re.search(r"[A-Za-z]", h) for h in halves):
                out.extend(halves)
                continue
        out.append(p.replace("/", " ").strip())
    return out


#: Placeholders annotators use for cells without a type.
_NOT_A_TYPE = frozenset({"n/a", "na", "nan", "none", "null", "unknown", "unassigned",
                         "undetermined", "unclassified", "doublet", "low quality", "other",
                         "mixed", "ambiguous", "not applicable", "debris", "empty", "unsure"})


def _match(text: str, onto: CellOntology) -> LabelMatch:
    answer = extract_answer(text)
    if not answer or normalize(answer).replace(" cell", "") in _NOT_A_TYPE:
        return LabelMatch(None, None, 0.0, "unmapped", (), "")
    key = normalize(answer)  # whole-label hits first ("Megakaryocyte/Platelet")
    hit = onto._lookup.get(key)
    if hit is not None and hit[0] not in UNINFORMATIVE:
        return _finish(hit[0], hit[1], (), answer, onto)
    if key in _aliases() and len(_aliases()[key]) == 1:
        return _finish(_aliases()[key][0], "abbreviation", (), answer, onto)
    parts = _split_alternatives(answer)
    if len(parts) <= 1:
        hit = _ground_one(parts[0] if parts else answer, onto)
        if not hit:
            return LabelMatch(None, None, 0.0, "unmapped", (), answer)
        ids, how = hit
        if len(ids) == 1:
            return _finish(ids[0], how, (), answer, onto)
        return LabelMatch(None, None, _HOW_SCORE["ambiguous"], "ambiguous", ids, answer)
    ids: list[str] = []
    for p in parts:
        hit = _ground_one(p, onto)
        if hit is None:
            continue
        for i in hit[0]:
            if i not in ids:
                ids.append(i)
    if not ids:
        return LabelMatch(None, None, 0.0, "unmapped", (), answer)
    if len(ids) == 1:
        return _finish(ids[0], "normalized", (), answer, onto)
    # one reading more specific than all others -> take it; else lowest informative ancestor
    for i in ids:
        if all(j == i or onto.is_ancestor(j, i) for j in ids):
            return _finish(i, "either", tuple(ids), answer, onto)
    lca = onto.lowest_informative_ancestor(ids)
    if lca is None:
        return LabelMatch(None, None, _HOW_SCORE["ambiguous"], "either", tuple(ids), answer)
    return _finish(lca, "either", tuple(ids), answer, onto)


def _finish(cid: str, how: str, alts: tuple[str, ...], text: str,
            onto: CellOntology) -> LabelMatch:
    if cid in onto._deprecated and cid in onto._replaced_by:
        rep = onto._replaced_by[cid]
        if rep in onto._labels:
            cid = rep
    return LabelMatch(cid, onto.label(cid), _HOW_SCORE.get(how, 0.5), how, alts, text)


_MAX_CACHED_CHARS = 2000


@functools.lru_cache(maxsize=65536)
def _match_cached(text: str) -> LabelMatch:
    return _match(text, get_ontology())


def map_label(text: str) -> LabelMatch:
    """Ground one cell-type label or model answer to a Cell Ontology term.

    Parameters
    ----------
    text
        A label (``"CD14+ Mono"``, ``"gamma-delta_T_Cells_1"``) or a model response, possibly
        with ``<think>...</think>`` reasoning before the answer.

    Returns
    -------
    LabelMatch
        ``id=None`` (``how="unmapped"``/``"ambiguous"``) when no confident term exists.
    """
    if text is None or (isinstance(text, float) and text != text):
        return LabelMatch(None, None, 0.0, "unmapped", (), "")
    text = str(text)
    if len(text) > _MAX_CACHED_CHARS:  # long reasoning responses: do not pin them in memory
        return _match(text, get_ontology())
    return _match_cached(text)


def map_labels(texts: Iterable[str]) -> list[LabelMatch]:
    """:func:`map_label` over many labels (memoised: repeated labels are grounded once)."""
    return [map_label(t) for t in texts]


def ground_obs(adata, key: str, key_added: str | None = None, *, copy: bool = False):
    """Ground the labels of ``adata.obs[key]`` in the Cell Ontology (scanpy style).

    Adds ``{key_added}_id``, ``{key_added}_label`` and ``{key_added}_how`` (categorical; missing
    where a label cannot be grounded) and records provenance in
    ``adata.uns["cellreasoner"]["ontology"][key_added]``.

    Parameters
    ----------
    adata
        An :class:`~anndata.AnnData`.
    key
        The ``obs`` column with cell-type labels or model answers.
    key_added
        Prefix of the new columns (default ``f"{key}_cl"``).
    copy
        Return a modified copy instead of writing in place (default ``False``).
    """
    import pandas as pd

    if key not in adata.obs.columns:
        cols = ", ".join(map(str, adata.obs.columns[:20]))
        raise InputError(f"adata.obs has no column '{key}'. Pass one of: {cols}.")
    if copy:
        adata = adata.copy()
    key_added = key_added or f"{key}_cl"
    raw = adata.obs[key]
    texts = raw.astype(object).where(raw.notna(), "").astype(str)
    matches = {t: map_label(t) for t in pd.unique(texts)}
    for field_name in ("id", "label", "how"):
        values = texts.map(lambda t, f=field_name: getattr(matches[t], f))
        if field_name != "how":
            values = values.where(values.notna(), None)
        adata.obs[f"{key_added}_{field_name}"] = pd.Categorical(values)
    unmapped = sorted(t for t, m in matches.items() if m.id is None and t)
    uns = adata.uns.setdefault("cellreasoner", {})
    uns.setdefault("ontology", {})[key_added] = {
        "source_key": key,
        "ontology": "CL",
        "cl_version": get_ontology().version,
        "n_labels": len(matches),
        "unmapped_labels": unmapped,
    }
    return adata if copy else None


__all__ = ["CellOntology", "LabelMatch", "UNINFORMATIVE", "extract_answer", "get_ontology",
           "ground_obs", "map_label", "map_labels", "normalize"]
