"""External marker knowledge: CellMarker 2.0 and PanglaoDB tables merged into the built-in base.

Users bring the databases they trust; the product reads their copy (it ships neither):

- **CellMarker 2.0** (Hu et al. 2023, NAR), ``Cell_marker_*.csv`` (UTF-8 with BOM): columns
  ``species, tissue_class, tissue_type, cancer_type, cell_type, cell_name, cellontology_id,
  marker, Symbol, ..., PMID``. A row counts when its species matches and it has a CL id; the
  weight of a (cell type, gene) marker grows with the number of distinct publications
  (PMIDs) reporting it: 1 source -> 1, 2 -> 2, 4 or more -> 3.
- **PanglaoDB** (Franzén et al. 2019), the TSV export: ``species`` (``Hs``/``Mm``/``Mm Hs``),
  ``official gene symbol``, ``cell type``, ``organ``, ``ubiquitousness index``,
  ``canonical marker``, ``sensitivity_human``, ...; weight 1, +1 for a canonical marker,
  +1 for a human sensitivity of at least 0.5; genes with ubiquitousness index above 0.1 (found
  in most cell types) are left out. Also its 0/1 gene x cell-type matrix (``.xlsx``, genes in
  the first column, one column per cell type; needs ``openpyxl``), weight 1.

PanglaoDB names its cell types in plain words ("T cells"); they are read as CL terms by
:func:`cellreasoner.ontology.map_label`. A type whose CL id the built-in base has gains the
new markers (a marker it lists already keeps its curated weight); another type joins the tree
under its closest built-in CL ancestor. A marker that several external files support gains one
weight unit per further file (at most 3). With a tissue, rows of other tissues are left out
(PanglaoDB's "Immune system" rows count for every tissue).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ..backends.builtin.markers import (
    TISSUE_SYNONYMS,
    CellType,
    MarkerDB,
    load_markers,
)
from ..errors import InputError
from ..species._detect import SYNONYMS

#: Layouts :func:`external_layout` recognises.
EXTERNAL_LAYOUTS = ("cellmarker", "panglaodb", "panglaodb_matrix")
#: Markers kept per external cell type (the best supported).
MAX_MARKERS = 30
#: External types need this many markers to join the tree as a new type.
MIN_MARKERS = 3
#: PanglaoDB genes more ubiquitous than this are not markers.
MAX_UBIQUITOUSNESS = 0.1


def _tag(tissue: str) -> str:
    t = str(tissue).strip().lower().replace(" ", "_").replace("-", "_")
    return TISSUE_SYNONYMS.get(t, t)


def _header(path: Path) -> list[str]:
    if path.suffix.lower() in (".xlsx", ".xls"):
        return []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline()
    sep = "\t" if first.count("\t") > first.count(",") else ","
    return [h.strip().strip('"').lower() for h in first.split(sep)]


def external_layout(path: str | os.PathLike) -> str | None:
    """``"cellmarker"``, ``"panglaodb"``, ``"panglaodb_matrix"`` or ``None`` (the built-in
    knowledge-base format or anything else) for a marker-knowledge file."""
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    if p.suffix.lower() in (".xlsx", ".xls"):
        return "panglaodb_matrix"
    h = set(_header(p))
    if {"cell_name", "symbol", "species"} <= h and ("cellontology_id" in h or "pmid" in h):
        return "cellmarker"
    if {"official gene symbol", "cell type"} <= h:
        return "panglaodb"
    return None


def _species_ok(values: pd.Series, species: str) -> pd.Series:
    names = {species, *(k for k, v in SYNONYMS.items() if v == species)}
    return values.astype(str).str.lower().str.split().map(
        lambda toks: any(t in names for t in toks) or " ".join(toks) in names)


def _weights(support: pd.Series) -> pd.Series:
    """Weight 1-3 from the number of supporting sources (1 -> 1, 2 -> 2, >= 4 -> 3)."""
    return support.map(lambda k: float(min(3, 1 + math.floor(math.log2(max(int(k), 1))))))


def read_cellmarker(path: str | os.PathLike, *, species: str = "human",
                    tissue: str | None = None) -> dict[str, dict[str, float]]:
    """``{CL id: {gene: weight}}`` from a CellMarker 2.0 table.

    Parameters
    ----------
    path
        The CellMarker CSV (e.g. ``Cell_marker_All.csv``).
    species
        ``"human"`` (default) or ``"mouse"``.
    tissue
        Keep rows of this tissue only (``tissue_class``/``tissue_type``, read with the
        knowledge base's tissue synonyms); default ``None``: all.

    Returns
    -------
    dict
        Marker weights per CL id, best supported first, at most :data:`MAX_MARKERS` each.
    """
    p = Path(path).expanduser()
    try:
        df = pd.read_csv(p, encoding="utf-8-sig", dtype=str, keep_default_na=False,
                         usecols=lambda c: c in ("species", "tissue_class", "tissue_type",
                                                 "cellontology_id", "Symbol", "marker", "PMID",
                                                 "cell_name"))
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"Cannot read CellMarker table {p} ({exc}).") from None
    missing = [c for c in ("species", "cellontology_id", "Symbol") if c not in df.columns]
    if missing:
        raise InputError(f"CellMarker table {p} lacks column(s) {', '.join(missing)}.")
    df = df[_species_ok(df["species"], species)]
    if tissue is not None:
        want = _tag(tissue)
        tags = df.get("tissue_class", pd.Series("", index=df.index)).map(_tag)
        tags2 = df.get("tissue_type", pd.Series("", index=df.index)).map(_tag)
        df = df[(tags == want) | (tags2 == want)]
    df = df.assign(cl=df["cellontology_id"].str.strip().str.replace("_", ":", regex=False),
                   gene=df["Symbol"].str.strip())
    df = df[df["cl"].str.fullmatch(r"CL:\d{7}") & df["gene"].str.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9.\-]*")]
    if df.empty:
        raise InputError(f"CellMarker table {p}: no {species} row with a CL id and a gene "
                         f"symbol{f' in tissue {tissue!r}' if tissue else ''}.")
    pmid = df["PMID"] if "PMID" in df else pd.Series(range(len(df)), index=df.index)
    support = df.assign(pmid=pmid).groupby(["cl", "gene"], sort=False)["pmid"].nunique()
    return _top(support)


def _top(support: pd.Series) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    w = _weights(support)
    frame = pd.DataFrame({"support": support, "weight": w}).reset_index()
    frame = frame.sort_values(["cl", "support"], ascending=[True, False], kind="stable")
    for cl, sub in frame.groupby("cl", sort=False):
        sub = sub.head(MAX_MARKERS)
        out[str(cl)] = dict(zip(sub["gene"], sub["weight"].astype(float), strict=True))
    return out


def _ground(names: Iterable[str]) -> dict[str, str]:
    from ..ontology import ground_labels

    names = list(dict.fromkeys(str(n) for n in names))
    ids, _ = ground_labels(names)
    return {n: str(i) for n, i in zip(names, ids, strict=True) if i}


def read_panglaodb(path: str | os.PathLike, *, species: str = "human",
                   tissue: str | None = None) -> dict[str, dict[str, float]]:
    """``{CL id: {gene: weight}}`` from a PanglaoDB TSV export or its 0/1 ``.xlsx`` matrix.

    Parameters
    ----------
    path
        ``PanglaoDB_markers_*.tsv`` (or ``.tsv.gz``) or a gene x cell-type 0/1 ``.xlsx``.
    species
        ``"human"`` (default) or ``"mouse"`` (TSV only; the matrix has no species column).
    tissue
        Keep rows of this organ (plus "Immune system" rows); default ``None``: all.

    Returns
    -------
    dict
        Marker weights per CL id (cell-type names read by the ontology; unread names are
        left out).
    """
    p = Path(path).expanduser()
    if p.suffix.lower() in (".xlsx", ".xls"):
        return _panglao_matrix(p)
    try:
        df = pd.read_csv(p, sep="\t", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"Cannot read PanglaoDB table {p} ({exc}).") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("official gene symbol", "cell type") if c not in df.columns]
    if missing:
        raise InputError(f"PanglaoDB table {p} lacks column(s) {', '.join(missing)}.")
    if "species" in df:
        df = df[_species_ok(df["species"], species)]
    if tissue is not None and "organ" in df:
        organ = df["organ"].map(_tag)
        df = df[(organ == _tag(tissue)) | (organ == "immune_system")]
    if "ubiquitousness index" in df:
        ui = pd.to_numeric(df["ubiquitousness index"], errors="coerce").fillna(0.0)
        df = df[ui <= MAX_UBIQUITOUSNESS]
    cl = _ground(df["cell type"])
    df = df.assign(cl=df["cell type"].map(cl), gene=df["official gene symbol"].str.strip())
    df = df[df["cl"].notna() & (df["gene"] != "")]
    if df.empty:
        raise InputError(f"PanglaoDB table {p}: no {species} marker of a cell type the Cell "
                         f"Ontology reads{f' in tissue {tissue!r}' if tissue else ''}.")
    w = pd.Series(1.0, index=df.index)
    if "canonical marker" in df:
        w += pd.to_numeric(df["canonical marker"], errors="coerce").fillna(0.0).clip(0, 1)
    if "sensitivity_human" in df:
        w += (pd.to_numeric(df["sensitivity_human"], errors="coerce").fillna(0.0) >= 0.5)
    df = df.assign(weight=w.clip(1.0, 3.0))
    out: dict[str, dict[str, float]] = {}
    for c, sub in df.sort_values("weight", ascending=False, kind="stable").groupby(
            "cl", sort=False):
        sub = sub.drop_duplicates("gene").head(MAX_MARKERS)
        out[str(c)] = dict(zip(sub["gene"], sub["weight"].astype(float), strict=True))
    return out


def _panglao_matrix(p: Path) -> dict[str, dict[str, float]]:
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        raise InputError(f"Reading {p} (.xlsx) needs openpyxl: pip install "
                         "'cellreasoner[markers]'.") from None
    try:
        df = pd.read_excel(p, index_col=0)
    except (ValueError, OSError) as exc:
        raise InputError(f"Cannot read PanglaoDB matrix {p} ({exc}).") from None
    df = df[[str(i) != "Marker" for i in df.index]]  # a repeated header row
    df = df.apply(pd.to_numeric, errors="coerce").fillna(0)
    cl = _ground(df.columns)
    out: dict[str, dict[str, float]] = {}
    for col in df.columns:
        if str(col) not in cl:
            continue
        genes = [str(g).strip() for g in df.index[df[col].to_numpy() > 0]]
        merged = out.setdefault(cl[str(col)], {})
        for g in genes:
            merged[g] = 1.0
    if not out:
        raise InputError(f"PanglaoDB matrix {p}: no column names a cell type the Cell Ontology "
                         "reads.")
    return out


def read_external(path: str | os.PathLike, *, species: str = "human",
                  tissue: str | None = None) -> dict[str, dict[str, float]]:
    """``{CL id: {gene: weight}}`` of a CellMarker or PanglaoDB file (layout detected)."""
    layout = external_layout(path)
    if layout == "cellmarker":
        return read_cellmarker(path, species=species, tissue=tissue)
    if layout in ("panglaodb", "panglaodb_matrix"):
        return read_panglaodb(path, species=species, tissue=tissue)
    raise InputError(f"{path} is neither a CellMarker 2.0 table nor a PanglaoDB export.")


def merge_external(types: list[CellType], external: dict[str, dict[str, float]],
                   source: str, added: dict[tuple[str, str], float] | None = None
                   ) -> list[CellType]:
    """The knowledge-base types with ``external`` markers merged in (see the module notes).

    ``added`` records markers earlier external files added, so that a marker several files
    support gains weight; it is updated in place.
    """
    from ..ontology import get_ontology

    onto = get_ontology()
    added = {} if added is None else added
    by_cl: dict[str, int] = {}
    for i, t in enumerate(types):
        by_cl.setdefault(t.cl_id, i)
    out = list(types)
    names = {t.name for t in out}
    for cl, genes in external.items():
        if cl in by_cl:
            i = by_cl[cl]
            t = out[i]
            pos = dict(t.positive)
            for g, w in genes.items():
                if g in t.negative:
                    continue
                if (cl, g) in added:
                    pos[g] = min(3.0, pos.get(g, w) + 1.0)
                elif g not in pos:
                    pos[g] = w
                else:
                    continue
                added[(cl, g)] = pos[g]
            out[i] = CellType(t.name, t.cl_id, t.parent, t.tissues, pos, dict(t.negative),
                              f"{t.source}; {source}" if t.source else source)
            continue
        if len(genes) < MIN_MARKERS or not onto.exists(cl):
            continue
        anc = onto.ancestors(cl)
        parents = [(anc[t.cl_id], t.name) for t in out if t.cl_id in anc]
        parent = min(parents)[1] if parents else "CL:0000000"
        name = onto.label(cl)
        if name in names:
            name = f"{name} ({cl})"
        tissues = out[[t.name for t in out].index(parent)].tissues if parents else ("solid",)
        out.append(CellType(name, cl, parent, tissues, dict(genes), {}, source))
        names.add(name)
        by_cl[cl] = len(out) - 1
        for g, w in genes.items():
            added[(cl, g)] = w
    return out


def load_knowledge(markers: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                   *, tissue: str | None = None, species: str = "human") -> MarkerDB:
    """The built-in knowledge base with user marker files merged in.

    Parameters
    ----------
    markers
        Files in the built-in format, CellMarker 2.0 tables or PanglaoDB exports (one path or
        several); default ``None``: the built-in base alone.
    tissue
        Restrict to this tissue (default ``None``: all).
    species
        Rows of external databases to read (default ``"human"``).

    Returns
    -------
    MarkerDB
        The merged, tissue-restricted knowledge base.
    """
    files = [] if markers is None else ([markers] if isinstance(markers, str | os.PathLike)
                                        else list(markers))
    return load_markers(None, tissue=tissue, extra=files or None, species=species)


__all__ = ["EXTERNAL_LAYOUTS", "external_layout", "load_knowledge", "merge_external",
           "read_cellmarker", "read_external", "read_panglaodb"]
