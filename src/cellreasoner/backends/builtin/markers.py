"""The marker knowledge base: cell types, CL terms, lineage tree, weighted markers.

The built-in file (``cellreasoner/data/markers.tsv``) is tab-separated with the columns
``name, cl_id, parent, tissues, positive, negative, source``; lines starting with ``#`` are
comments. ``parent`` is either the name of another type in the file (that type is the parent in
the decision tree) or a CL id (the type is then a lineage root of the tree). Markers are written
``GENE`` or ``GENE:weight`` (weight 0-3, default 1), comma-separated. User files use the same
format and are merged with (or replace) the built-in one.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ...errors import InputError

COLUMNS = ("name", "cl_id", "parent", "tissues", "positive", "negative", "source")
#: Version of the built-in knowledge base (part of the builtin backend's model name).
KB_VERSION = "2026.12.3"
#: Tissue tag that stands for every solid tissue (not blood, not bone marrow).
SOLID = "solid"
_NON_SOLID = frozenset({"blood", "bone_marrow"})
#: Common ways of naming a tissue -> the knowledge base's tissue tag.
TISSUE_SYNONYMS: dict[str, str] = {
    "pbmc": "blood", "pbmcs": "blood", "peripheral_blood": "blood", "whole_blood": "blood",
    "marrow": "bone_marrow", "bm": "bone_marrow",
    "lymph_node": "lymphoid", "spleen": "lymphoid", "tonsil": "lymphoid",
    "intestine": "gut", "small_intestine": "gut", "colon": "gut", "large_intestine": "gut",
    "ileum": "gut", "duodenum": "gut", "rectum": "gut", "gastric": "stomach",
    "lungs": "lung", "airway": "lung", "hepatic": "liver", "renal": "kidney",
    "cns": "brain", "cortex": "brain", "cerebral_cortex": "brain", "retina": "eye",
    "skeletal_muscle": "muscle", "cardiac": "heart", "mammary": "breast",
    "mammary_gland": "breast", "tumour": "tumor", "cancer": "tumor", "fat": "adipose",
    "epidermis": "skin", "dermis": "skin", "peripheral_nerve": "nerve",
}
_SYMBOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")
_CL_ID = re.compile(r"^CL:\d{7}$")

#: Renamed HGNC symbols: current symbol -> older symbols still found in many datasets.
ALIASES: dict[str, tuple[str, ...]] = {
    "JCHAIN": ("IGJ",),
    "SELENOP": ("SEPP1",),
    "CAVIN2": ("SDPR",),
    "MPIG6B": ("C6orf25",),
    "CBLIF": ("GIF",),
    "ACP3": ("ACPP",),
    "PLPP5": ("PPAPDC1B",),
    "CEMIP": ("KIAA1199",),
    "NECTIN2": ("PVRL2",),
    "H2AZ1": ("H2AFZ",),
}


@dataclass(frozen=True)
class CellType:
    """One knowledge-base entry.

    ``positive``/``negative`` map gene symbol -> weight; ``parent`` is a type name or a CL id.
    """

    name: str
    cl_id: str
    parent: str
    tissues: tuple[str, ...]
    positive: dict[str, float]
    negative: dict[str, float]
    source: str


@dataclass
class MarkerDB:
    """A validated set of cell types forming a forest (roots have a CL id as parent).

    Attributes
    ----------
    types
        The cell types, in file order.
    version
        Knowledge-base version string.
    """

    types: list[CellType]
    version: str = KB_VERSION
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {t.name: i for i, t in enumerate(self.types)}

    def __len__(self) -> int:
        return len(self.types)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> CellType:
        try:
            return self.types[self._index[name]]
        except KeyError:
            raise InputError(f"Cell type '{name}' is not in the marker knowledge base.") from None

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.types]

    def index(self, name: str) -> int:
        return self._index[name]

    def parent_of(self, name: str) -> str | None:
        """The parent type's name, or None for a lineage root."""
        p = self[name].parent
        return p if p in self._index else None

    def children(self, name: str | None) -> list[str]:
        """Names of the direct children of ``name`` (``None``: the lineage roots)."""
        return [t.name for t in self.types if self.parent_of(t.name) == name]

    def lineage(self, name: str) -> list[str]:
        """Path from the lineage root down to ``name`` (inclusive)."""
        path = [name]
        while (p := self.parent_of(path[-1])) is not None:
            path.append(p)
        return path[::-1]

    def genes(self) -> list[str]:
        """Every marker gene (positive or negative), sorted."""
        out: set[str] = set()
        for t in self.types:
            out.update(t.positive)
            out.update(t.negative)
        return sorted(out)

    def tissues(self) -> list[str]:
        out: set[str] = set()
        for t in self.types:
            out.update(t.tissues)
        return sorted(out)

    def restrict(self, tissue: str | Sequence[str] | None) -> MarkerDB:
        """Types found in ``tissue`` (plus their ancestors, so the tree stays whole).

        ``"solid"`` types count for every tissue except blood and bone marrow.
        """
        if tissue is None:
            return self
        wanted = [tissue] if isinstance(tissue, str) else list(tissue)
        wanted = [w.strip().lower().replace(" ", "_").replace("-", "_") for w in wanted]
        wanted = [TISSUE_SYNONYMS.get(w, w) for w in wanted]
        known = set(self.tissues()) | {SOLID}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise InputError(
                f"Unknown tissue {', '.join(map(repr, unknown))}. Known tissues: "
                f"{', '.join(sorted(known))}."
            )
        keep: set[str] = set()
        for t in self.types:
            for w in wanted:
                if w in t.tissues or (SOLID in t.tissues and w not in _NON_SOLID):
                    keep.update(self.lineage(t.name))
        return MarkerDB([t for t in self.types if t.name in keep], version=self.version)


def _parse_markers(text: str, where: str, column: str) -> dict[str, float]:
    out: dict[str, float] = {}
    text = text.strip()
    if not text or text == "-":
        return out
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        gene, _, w = tok.partition(":")
        gene = gene.strip()
        if not _SYMBOL.match(gene):
            raise InputError(f"{where}, column '{column}': '{gene}' is not a gene symbol "
                             "(letters, digits, '.', '-'). Write markers as GENE or GENE:weight.")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise InputError(f"{where}, column '{column}': weight '{w}' of {gene} is not a "
                             "number. Write markers as GENE or GENE:weight (0-3).") from None
        if not 0 < weight <= 3:
            raise InputError(f"{where}, column '{column}': weight {weight} of {gene} must be in "
                             "(0, 3].")
        if gene in out:
            raise InputError(f"{where}, column '{column}': marker {gene} is listed twice.")
        out[gene] = weight
    return out


def read_marker_file(path: str | os.PathLike, *, require_tree: bool = True) -> list[CellType]:
    """Read one marker file (built-in format) into cell types, validating every row.

    Parameters
    ----------
    path
        TSV file with header ``name, cl_id, parent, tissues, positive, negative, source``
        (``source`` optional for user files; ``.csv`` files are comma-separated with the
        marker lists quoted).
    require_tree
        Check that every parent that is not a CL id names a type in the same file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"Marker file not found: {p}. Pass a TSV with the columns "
                         f"{', '.join(COLUMNS)}.")
    delim = "," if p.suffix.lower() == ".csv" else "\t"
    with open(p, encoding="utf-8", newline="") as fh:
        lines = [(i, line) for i, line in enumerate(fh, 1) if line.strip()
                 and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"Marker file {p} has no rows.")
    reader = csv.reader([line for _, line in lines], delimiter=delim)
    rows = list(reader)
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in COLUMNS[:5] if c not in header]
    if missing:
        raise InputError(f"{p}, line {lines[0][0]}: header lacks column(s) "
                         f"{', '.join(missing)}; expected {', '.join(COLUMNS)} "
                         f"({'comma' if delim == ',' else 'tab'}-separated).")
    col = {c: header.index(c) for c in COLUMNS if c in header}
    types: list[CellType] = []
    seen: dict[str, int] = {}
    for (lineno, _), row in zip(lines[1:], rows[1:], strict=True):
        where = f"{p}, line {lineno}"
        if len(row) < len(header):
            raise InputError(f"{where}: has {len(row)} fields, the header has {len(header)} "
                             f"(fields are {'comma' if delim == ',' else 'tab'}-separated).")

        def get(c: str, row=row) -> str:
            return row[col[c]].strip() if c in col else ""

        name, cl_id, parent = get("name"), get("cl_id"), get("parent")
        if not name:
            raise InputError(f"{where}, column 'name': empty type name.")
        if name in seen:
            raise InputError(f"{where}, column 'name': type '{name}' is already defined on "
                             f"line {seen[name]}.")
        if not _CL_ID.match(cl_id):
            raise InputError(f"{where}, column 'cl_id': '{cl_id}' is not a Cell Ontology id "
                             "like CL:0000236.")
        if not parent:
            raise InputError(f"{where}, column 'parent': give a type name from this file or a "
                             "CL id (e.g. CL:0000542 for a lymphocyte lineage root).")
        tissues = tuple(t.strip().lower() for t in get("tissues").split(",") if t.strip())
        pos = _parse_markers(get("positive"), where, "positive")
        neg = _parse_markers(get("negative"), where, "negative")
        if not pos:
            raise InputError(f"{where}, column 'positive': type '{name}' needs at least one "
                             "positive marker.")
        both = sorted(set(pos) & set(neg))
        if both:
            raise InputError(f"{where}: {', '.join(both)} listed as both positive and negative "
                             f"marker of '{name}'.")
        seen[name] = lineno
        types.append(CellType(name, cl_id, parent, tissues, pos, neg, get("source")))
    if require_tree:
        _check_tree(types, str(p))
    return types


def _check_tree(types: Iterable[CellType], where: str) -> None:
    byname = {t.name: t for t in types}
    for t in byname.values():
        if t.parent not in byname and not _CL_ID.match(t.parent):
            raise InputError(f"{where}: parent '{t.parent}' of '{t.name}' is neither a type in "
                             "the file nor a CL id.")
        seen = {t.name}
        p = t.parent
        while p in byname:
            if p in seen:
                raise InputError(f"{where}: the parents of '{t.name}' form a cycle.")
            seen.add(p)
            p = byname[p].parent


def builtin_marker_path() -> Path:
    """Path of the built-in knowledge base file."""
    return Path(str(resources.files("cellreasoner") / "data" / "markers.tsv"))


def load_markers(
    path: str | os.PathLike | None = None,
    tissue: str | Sequence[str] | None = None,
    *,
    extra: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    replace: bool = False,
    species: str = "human",
) -> MarkerDB:
    """Load the marker knowledge base.

    Parameters
    ----------
    path
        A marker file to use; default ``None`` uses the built-in knowledge base.
    tissue
        Keep only types found in this tissue (or these tissues), plus their ancestors;
        default ``None`` keeps all.
    extra
        User marker file(s) in the same format, merged in: a row whose name exists replaces the
        built-in row, new names are added (their parent may be a built-in type). CellMarker
        2.0 tables and PanglaoDB exports are read too and merged by CL id (see
        :mod:`cellreasoner.markers.knowledge`).
    replace
        With ``path`` given, use only that file (default ``False``: ``path`` is merged into the
        built-in base like ``extra``).
    species
        Rows of CellMarker/PanglaoDB files to read (default ``"human"``).
    """
    base = read_marker_file(builtin_marker_path())
    version = KB_VERSION
    user_files: list[str | os.PathLike] = []
    if path is not None:
        if replace:
            base = read_marker_file(path)
            version = f"{KB_VERSION}+{Path(path).stem}"
        else:
            user_files.append(path)
    if extra is not None:
        user_files.extend([extra] if isinstance(extra, str | os.PathLike) else list(extra))
    added: dict = {}
    for f in user_files:
        from ...markers.knowledge import external_layout, merge_external, read_external

        if external_layout(f) is not None:  # CellMarker / PanglaoDB: merged by CL id
            external = read_external(f, species=species,
                                     tissue=tissue if isinstance(tissue, str) else None)
            base = merge_external(base, external, Path(f).name, added)
            _check_tree(base, str(f))
            version = f"{version}+{Path(f).stem}"
            continue
        user = read_marker_file(f, require_tree=False)
        merged = {t.name: t for t in base}
        for t in user:
            merged[t.name] = t
        base = list(merged.values())
        _check_tree(base, str(f))
        version = f"{version}+{Path(f).stem}"
    return MarkerDB(base, version=version).restrict(tissue)


__all__ = ["ALIASES", "KB_VERSION", "TISSUE_SYNONYMS", "CellType", "MarkerDB",
           "builtin_marker_path", "load_markers", "read_marker_file"]
