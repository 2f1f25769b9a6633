"""``cr.tl.audit``: check labels someone already assigned against each cell's own expression.

Each label is grounded in the Cell Ontology and matched to the built-in reasoner's knowledge
base (:mod:`._knowledge`); every cell is scored against every knowledge-base type with the
reasoner's own marker scores (:meth:`~cellreasoner.backends.builtin.reasoner.Reasoner.score`,
on the cell's own expression, no neighbour smoothing). A type's *path score* is the mean score
along its lineage (root to type), so a subtype label needs its lineage's markers too. Then:

- ``contradicted``: the best type outside the label's family (its lineage, subtypes and CL
  relatives) beats the label's path score by at least ``margin`` and reaches
  ``min_alternative``: the cell looks like that type instead; when that type is of the
  label's own lineage (a sibling subtype), the cell must also express the label's negative
  markers (``min_negative``), since a subtype marker that is not detected is often dropout;
- ``unsupported``: the label is not a cell type the knowledge base knows (or does not ground
  in CL), or the cell shows too little of the label's markers (below ``min_support``) and
  nothing else clearly;
- ``consistent``: otherwise.

Per cell, ``audit_supporting`` names the label's markers the cell expresses,
``audit_contradicting`` the label's negative markers it expresses (and, when contradicted, the
alternative's markers), ``audit_alternative`` the type it looks like instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ._knowledge import LabelTypes, label_types

STATUSES = ("consistent", "contradicted", "unsupported")
#: Marker genes named per cell and field.
MAX_NAMED = 6


@dataclass
class AuditResult:
    """What :func:`audit` found.

    Attributes
    ----------
    cells
        One row per cell (index = cell names): ``label``, ``status``, ``supporting``,
        ``contradicting``, ``alternative``, ``label_score``, ``alternative_score``.
    summary
        One row per label: its CL term, cells, how many are consistent / contradicted /
        unsupported, the fraction contradicted and what the contradicted cells look like
        instead (``looks_like``).
    provenance
        Settings and counts (also ``adata.uns[key_added]``).
    adata
        The audited AnnData (``obs`` holds the ``{key_added}_*`` columns).
    """

    cells: pd.DataFrame
    summary: pd.DataFrame
    provenance: dict
    adata: object | None = None

    def __repr__(self) -> str:
        counts = self.cells["status"].value_counts()
        return (f"AuditResult({len(self.cells)} cells: "
                + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + ")")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the per-label :attr:`summary` as CSV (atomic)."""
        from ..annotation.output import write_csv

        return write_csv(self.summary, path)


def audit(
    adata,
    labels: str,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    tissue: str | None = None,
    markers: str | os.PathLike | None = None,
    margin: float = 0.2,
    min_alternative: float = 0.35,
    min_support: float = 0.15,
    min_negative: float = 2.0,
    key_added: str = "audit",
    copy: bool = False,
    chunk_size: int = 20_000,
) -> AuditResult:
    """Audit the cell-type labels in ``adata.obs[labels]`` against each cell's expression.

    Parameters
    ----------
    adata
        AnnData, or a path read with :func:`cellreasoner.io.read`.
    labels
        The ``obs`` column holding the labels to check.
    layer, use_raw
        Expression to read (default ``X``; a scaled ``X`` with a ``.raw`` reads ``.raw``, as
        :func:`~cellreasoner.annotate` does).
    tissue
        Restrict the knowledge base to a tissue (e.g. ``"blood"``; default all).
    markers
        A user marker file merged into the built-in knowledge base (same format).
    margin
        How much the best alternative's path score must beat the label's (default 0.2).
    min_alternative
        The path score the alternative needs at least (default 0.35).
    min_support
        Below this path score the label counts as unsupported by the cell (default 0.15).
    min_negative
        An alternative of the label's own lineage (a sibling subtype, e.g. CD4 vs CD8 T cell)
        contradicts the label only when the cell expresses at least this many weight units of
        the label's negative markers (default 2.0: one strong or two ordinary markers).
    key_added
        Prefix of the ``obs`` columns and the ``uns`` key (default ``"audit"``).
    copy
        Audit a copy and leave ``adata`` untouched (default False: write into ``adata``).
    chunk_size
        Cells scored at a time (default 20,000).

    Returns
    -------
    AuditResult
        ``obs`` gets ``{key_added}_status`` (``consistent`` / ``contradicted`` /
        ``unsupported``), ``_supporting``, ``_contradicting``, ``_alternative``,
        ``_label_score`` and ``_alternative_score`` (each ``{key_added}_...``);
        ``uns[key_added]`` the settings, counts and summary.
    """
    from ..backends.builtin.reasoner import Reasoner
    from ..checks import check_key_added, check_obs_column, in_memory_copy, prefer_raw
    from ..io import open_input
    from ..matrix import from_anndata

    check_key_added(key_added, "audit")
    _check_scores(margin=margin, min_alternative=min_alternative, min_support=min_support)
    given = isinstance(adata, str | os.PathLike)
    adata, source, input_name, _ = open_input(adata, layer=layer, use_raw=use_raw)
    check_obs_column(adata, labels, "Label", "Pass --labels COLUMN with the labels to audit.")
    if copy and not given:
        adata = in_memory_copy(adata)
        source = from_anndata(adata, layer=layer, use_raw=use_raw)
    if layer is None and not use_raw and prefer_raw(adata):
        use_raw = True
        source = from_anndata(adata, use_raw=True)
    reasoner = Reasoner(markers, tissue)
    raw = adata.obs[labels]
    texts = raw.astype(object).where(raw.notna(), "").astype(str).to_numpy()
    codes, distinct = pd.factorize(texts)
    kinds = [label_types(t, reasoner) if t else None for t in distinct]
    rules = _Rules(float(margin), float(min_alternative), float(min_support),
                   float(min_negative), *_tree(reasoner))
    cells = _audit_cells(reasoner, source, codes, kinds, rules, chunk_size)
    cells.insert(0, "label", texts)
    summary = label_summary(cells, dict(zip(distinct, kinds, strict=True)))
    provenance = {
        "labels": labels, "knowledge_base": reasoner.db.version, "tissue": tissue,
        "layer": "raw" if use_raw else (layer or "X"), "margin": float(margin),
        "min_alternative": float(min_alternative), "min_support": float(min_support),
        "min_negative": float(min_negative),
        "counts": {s: int((cells["status"] == s).sum()) for s in STATUSES},
        "summary": {c: summary[c].tolist() for c in summary.columns},
    }
    if given:
        provenance["input"] = input_name
    _write_obs(adata, cells, key_added, provenance)
    return AuditResult(cells=cells, summary=summary, provenance=provenance, adata=adata)


def _check_scores(**scores: float) -> None:
    """One clear error for a score threshold outside [0, 1]."""
    for name, value in scores.items():
        if not 0.0 <= float(value) <= 1.0:
            raise InputError(f"{name}={value}: scores lie between 0 and 1; pass a value there.")


def _audit_cells(reasoner, source, codes: np.ndarray, kinds: list[LabelTypes | None],
                 rules: _Rules, chunk_size: int) -> pd.DataFrame:
    """The per-cell audit, ``chunk_size`` cells at a time, indexed by cell name."""
    genes = [str(g) for g in source.var_names]
    parts = []
    start = 0
    for chunk in source.iter_chunks(chunk_size):
        stop = start + chunk.shape[0]
        parts.append(_audit_chunk(reasoner, chunk, genes, codes[start:stop], kinds, rules))
        start = stop
    cells = pd.concat(parts) if parts else _empty_cells()
    cells.index = pd.Index(np.asarray(source.obs_names).astype(str), name="cell")
    return cells


def _tree(reasoner) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, ...], ...]]:
    """(types x types matrix whose row ``t`` averages the scores along ``t``'s lineage, root
    to ``t``; each type's lineage root; each type's lineage as type indices)."""
    n = len(reasoner.names)
    L = np.zeros((n, n), dtype=np.float32)
    roots = np.zeros(n, dtype=np.int64)
    paths = tuple(tuple(reasoner.db.index(p) for p in reasoner.db.lineage(name))
                  for name in reasoner.names)
    for t, path in enumerate(paths):
        L[t, list(path)] = 1.0 / len(path)
        roots[t] = path[0]
    return L, roots, paths


def _empty_cells() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("status", "supporting", "contradicting",
                                         "alternative", "label_score", "alternative_score")})


@dataclass(frozen=True)
class _Rules:
    """The thresholds of :func:`audit`, and the knowledge base's tree as arrays."""

    margin: float
    min_alternative: float
    min_support: float
    min_negative: float
    lineage: np.ndarray  # types x types: row t averages the scores along t's lineage
    roots: np.ndarray  # each type's lineage root
    paths: tuple[tuple[int, ...], ...]  # each type's lineage, root to type


def _audit_chunk(reasoner, X, genes: list[str], codes: np.ndarray,
                 kinds: list[LabelTypes | None], rules: _Rules) -> pd.DataFrame:
    """The audit of one block of cells (``codes``: each cell's label index in ``kinds``)."""
    E, measured, spelled = reasoner._marker_matrix(X, genes)
    S = reasoner.score(E, measured)
    path = S @ rules.lineage.T  # cells x types: mean score along each type's lineage
    NE = np.asarray(E @ reasoner.N.T)  # cells x types: weight units of expressed negatives
    n = X.shape[0]
    out = {"status": np.full(n, "unsupported", dtype=object),
           "supporting": np.full(n, "", dtype=object),
           "contradicting": np.full(n, "", dtype=object),
           "alternative": np.full(n, "", dtype=object),
           "label_score": np.full(n, np.nan), "alternative_score": np.full(n, np.nan)}
    E = E.tocsr()
    for code in np.unique(codes):
        kind = kinds[code] if code >= 0 else None
        if kind is None or not kind.types:
            continue
        rows = np.flatnonzero(codes == code)
        best_own, alt, contra = _decide(kind, rows, path, NE, rules, out)
        _name_markers(reasoner, E, spelled, kind, rows, best_own, alt, contra, rules, out)
    return pd.DataFrame(out)


def _decide(kind: LabelTypes, rows: np.ndarray, path: np.ndarray, NE: np.ndarray,
            rules: _Rules, out: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The status and scores of the cells ``rows`` of one label (written into ``out``);
    returns each cell's best own type (index into ``kind.types``), best alternative (-1:
    none) and whether it contradicts the label."""
    own_score, alt_score = out["label_score"], out["alternative_score"]
    own = path[np.ix_(rows, list(kind.types))]
    best_own = own.argmax(axis=1)
    own_score[rows] = own.max(axis=1)
    others = np.where(kind.family, -np.inf, path[rows])
    if np.isfinite(others).any():
        alt = others.argmax(axis=1)
        alt_score[rows] = others[np.arange(len(rows)), alt]
    else:
        alt = np.full(len(rows), -1)
    contra = ((alt >= 0) & (alt_score[rows] >= rules.min_alternative)
              & (alt_score[rows] - own_score[rows] >= rules.margin))
    # an alternative of the label's own lineage (a sibling subtype) contradicts it only
    # when the cell also expresses the label's negative markers: a missing subtype marker
    # alone is dropout, not evidence against the label
    label_root = np.array([p[0] for p in kind.paths])[best_own]
    same_lineage = rules.roots[np.maximum(alt, 0)] == label_root
    negative_units = np.empty(len(rows))
    for b in np.unique(best_own):  # each of the label's lineages once, not once per cell
        mine = best_own == b
        negative_units[mine] = NE[np.ix_(rows[mine], list(kind.paths[b]))].max(axis=1)
    contra &= ~same_lineage | (negative_units >= rules.min_negative)
    out["status"][rows] = np.where(contra, "contradicted",
                                   np.where(own_score[rows] >= rules.min_support, "consistent",
                                            "unsupported"))
    return best_own, alt, contra


def _name_markers(reasoner, E, spelled: list[str], kind: LabelTypes, rows: np.ndarray,
                  best_own: np.ndarray, alt: np.ndarray, contra: np.ndarray, rules: _Rules,
                  out: dict) -> None:
    """``supporting``, ``contradicting`` and ``alternative`` of the cells ``rows`` of one
    label; each lineage's marker weights are sliced once, not once per cell."""
    P, N = reasoner.P, reasoner.N
    own_pos = {b: P[list(kind.paths[b])] for b in np.unique(best_own)}
    own_neg = {b: N[list(kind.paths[b])] for b in own_pos}
    own_any = {b: w.max(axis=0) > 0 for b, w in own_pos.items()}  # the label's own markers
    theirs: dict[int, np.ndarray] = {}
    for k, i in enumerate(rows):
        b = best_own[k]
        present = E.indices[E.indptr[i]:E.indptr[i + 1]]
        out["supporting"][i] = ", ".join(_named(own_pos[b], present, spelled))
        against = _named(own_neg[b], present, spelled)
        if contra[k]:
            a = int(alt[k])
            out["alternative"][i] = str(reasoner.names[a])
            if a not in theirs:
                theirs[a] = P[list(rules.paths[a])]
            against += _named(theirs[a], present, spelled, exclude=own_any[b])
        out["contradicting"][i] = ", ".join(dict.fromkeys(against))


def _named(W: np.ndarray, present: np.ndarray, spelled: list[str],
           exclude: np.ndarray | None = None) -> list[str]:
    """The expressed markers of the types whose weight rows are ``W``, heaviest first."""
    if len(present) == 0:
        return []
    weight = W[:, present].max(axis=0)
    keep = weight > 0
    if exclude is not None:
        keep &= ~exclude[present]
    idx = present[keep]
    order = np.argsort(-weight[keep], kind="stable")[:MAX_NAMED]
    return [spelled[m] for m in idx[order]]


def label_summary(cells: pd.DataFrame,
                  kinds: dict[str, LabelTypes | None] | None = None) -> pd.DataFrame:
    """One row per label: counts per status and what the contradicted cells look like.

    Parameters
    ----------
    cells
        One row per cell with ``label``, ``status`` and ``alternative`` (an audit's
        :attr:`AuditResult.cells`, or the ``obs`` columns it wrote).
    kinds
        Each label's place in the knowledge base (adds ``ontology_id``, ``ontology_label``
        and ``in_knowledge_base``); default ``None``: counts only.

    Returns
    -------
    pandas.DataFrame
        ``label``, (the CL columns), ``n_cells``, one count per status,
        ``fraction_contradicted`` and ``looks_like``; most contradicted first.
    """
    rows = []
    for text, mine in cells.groupby("label", sort=False):
        counts = mine["status"].value_counts()
        alts = mine.loc[mine["status"] == "contradicted", "alternative"].value_counts()
        row: dict = {"label": text}
        if kinds is not None:
            kind = kinds.get(text)
            row.update(ontology_id=kind.ontology_id if kind else "",
                       ontology_label=kind.ontology_label if kind else "",
                       in_knowledge_base=bool(kind and kind.types))
        rows.append({
            **row,
            "n_cells": int(len(mine)),
            **{s: int(counts.get(s, 0)) for s in STATUSES},
            "fraction_contradicted": float(counts.get("contradicted", 0) / max(len(mine), 1)),
            "looks_like": "; ".join(f"{a} ({c})" for a, c in alts.head(3).items()),
        })
    out = pd.DataFrame(rows)
    return out.sort_values(["contradicted", "n_cells"], ascending=False, ignore_index=True)


def _write_obs(adata, cells: pd.DataFrame, key: str, provenance: dict) -> None:
    from ..annotation.result import uns_safe

    adata.obs[f"{key}_status"] = pd.Categorical(cells["status"].to_numpy(),
                                                categories=list(STATUSES))
    for f in ("supporting", "contradicting"):
        adata.obs[f"{key}_{f}"] = cells[f].to_numpy(dtype=object)
    adata.obs[f"{key}_alternative"] = pd.Categorical(cells["alternative"].to_numpy())
    adata.obs[f"{key}_label_score"] = cells["label_score"].to_numpy(dtype=np.float64)
    adata.obs[f"{key}_alternative_score"] = cells["alternative_score"].to_numpy(
        dtype=np.float64)
    adata.uns[key] = uns_safe(provenance)


__all__ = ["STATUSES", "AuditResult", "audit", "label_summary"]
