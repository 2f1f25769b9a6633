"""Grounding of free-text cell-type labels and model answers in the Cell Ontology (CL).

:func:`map_label` turns a label such as ``"CD14+ Mono"``, ``"CD8 TEM_2"``, ``"myCAF TPM1"`` or a
model answer with reasoning (``"<think>...</think>Naive CD4+ T cells."``) into a
:class:`LabelMatch`. When the text cannot be grounded confidently it is returned unmapped
(``id=None``) rather than matched to a wrong term. :func:`map_label` holds the one memo of
groundings (labels repeat across cells); :func:`ground_labels` maps an array of labels with one
lookup per distinct label.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources as _ir
from typing import TYPE_CHECKING

from ..errors import InputError
from ..parsing import extract_answer
from ._compose import GLUED, compose_b, compose_t
from .index import UNINFORMATIVE, CellOntology, get_ontology, normalize

if TYPE_CHECKING:
    import numpy as np

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

_MAX_REDUCE_WORDS = 6

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
    for pat, rep in GLUED:
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
    composed = compose_t(toks) or compose_b(toks)
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


def ground_labels(texts: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """CL id and CL label of every text, grounding each distinct text once.

    Parameters
    ----------
    texts
        Labels or model answers (a list, array, :class:`~pandas.Series`, ...); empty strings,
        ``None`` and ``NaN`` count as unmatched.

    Returns
    -------
    tuple of numpy.ndarray
        ``(ids, labels)``, object arrays as long as ``texts``: the CL id and label of each
        text's :func:`map_label` match, ``""`` in both where it has none.
    """
    import numpy as np
    import pandas as pd

    values = np.asarray(texts if isinstance(texts, np.ndarray | pd.Series | list | tuple)
                        else list(texts), dtype=object)
    codes, distinct = pd.factorize(values)  # None/NaN -> code -1 (the "" slot below)
    ids = np.full(len(distinct) + 1, "", dtype=object)
    labels = np.full(len(distinct) + 1, "", dtype=object)
    for j, text in enumerate(distinct):
        match = map_label(text) if text else None
        if match is not None and match.id:
            ids[j], labels[j] = str(match.id), str(match.label)
    return ids[codes], labels[codes]


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


__all__ = ["LabelMatch", "ground_labels", "ground_obs", "map_label", "map_labels"]
