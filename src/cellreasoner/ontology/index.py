"""The Cell Ontology (CL) index: labels, synonyms, ancestry, and the lookup-key normaliser.

The ontology ships offline inside the ``cellxgene-ontology-guide`` package. The first call builds
a compact index (labels, synonyms, ancestors with distances, deprecation) and caches it as
checked JSON (:mod:`._store`: nothing executable, verified before use) under
:func:`cellreasoner.resources.cache_dir`, keyed by the package's CL version; later processes
load it, and :func:`get_ontology` keeps one instance per process.

:func:`normalize` lives here because it makes the index's lookup keys; grounding
(:mod:`cellreasoner.ontology.grounding`) uses the same keys.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from . import _store

log = logging.getLogger(__name__)

#: Terms too generic to count as an answer (the CL roots above any lineage).
UNINFORMATIVE = frozenset({
    "CL:0000000", "CL:0000255", "CL:0002242", "CL:0000219", "CL:0000226", "CL:0000548",
    "CL:0000003", "CL:0000211", "CL:0000393", "CL:0000404", "CL:0000325", "CL:0000151",
    "CL:0000183", "CL:0000630", "CL:0000188", "CL:0000412", "CL:0000417", "CL:0011115",
    "CL:0000034", "CL:0000723", "CL:0002320", "CL:0000457", "CL:0000081", "CL:0000225",
    "CL:0001061", "CL:0000842", "CL:0000234", "CL:0000518", "CL:0000145", "CL:0000154",
    "CL:0002076", "CL:0000327",
})

_INDEX_FORMAT = _store.LAYOUT  # bump _store.LAYOUT when the stored index layout changes


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
    from .._secrets import private_file
    from ..resources import cache_dir

    version = _cl_version()
    folder = Path(cache_dir())
    path = _store.index_path(folder, version)
    index = None
    if path.is_file():
        index, why = _store.load_index(path, version)
        if index is not None:
            private_file(path)  # a file an older version left 0644 is tightened
        else:
            log.warning("Rebuilding the Cell Ontology index: %s %s.", path, why)
    if index is None:
        index = _build_index(*_cl_source())
        try:
            _store.save_index(path, index)
        except OSError as exc:  # read-only cache: keep working from memory
            warnings.warn(f"Could not cache the Cell Ontology index in {folder}: {exc}",
                          RuntimeWarning, stacklevel=2)
        _store.remove_legacy(folder)
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


__all__ = ["UNINFORMATIVE", "CellOntology", "get_ontology", "normalize"]
