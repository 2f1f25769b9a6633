"""The built-in knowledge base in mouse symbols: every marker through its ortholog, plus the
mouse markers of ``cellreasoner/data/markers_mouse.tsv``: genes the human base cannot name
(Ly6c2, Ly6g, Siglech, Klrb1c) and those the mouse literature uses where human panels decide
on a gene mouse lacks (S1pr5 for terminal effector CD8 T cells, Treml4 vs Ccr2 for
monocytes)."""

from __future__ import annotations

import logging
from dataclasses import replace
from importlib import resources as _pkg
from pathlib import Path

from ..backends.builtin.markers import CellType, MarkerDB, read_marker_file
from ._orthologs import Orthologs

log = logging.getLogger(__name__)


def mouse_marker_path() -> Path:
    """The shipped mouse markers (the knowledge-base format; rows name built-in types)."""
    return Path(str(_pkg.files("cellreasoner") / "data" / "markers_mouse.tsv"))


def _translate(markers: dict[str, float], to_mouse: dict[str, str], mouse: frozenset[str],
               human: frozenset[str]) -> dict[str, float]:
    """Markers in mouse symbols: a human symbol through its ortholog (paralogs sharing one
    keep the larger weight), a mouse symbol kept, a human one without ortholog left out (it
    counts as unmeasured, as any marker the data lacks)."""
    out: dict[str, float] = {}
    for gene, weight in markers.items():
        m = to_mouse.get(gene)
        if m is None and (gene in mouse or (gene not in human and not gene.isupper())):
            m = gene  # already a mouse symbol (a user's own mouse marker file)
        if m is not None:
            out[m] = max(weight, out.get(m, 0.0))
    return out


def mouse_marker_db(db: MarkerDB, orthologs: Orthologs) -> MarkerDB:
    """``db`` (human symbols) for mouse data.

    Parameters
    ----------
    db
        A knowledge base in human symbols (the built-in one, maybe merged with a user file).
    orthologs
        From :func:`~cellreasoner.species.load_orthologs`.

    Returns
    -------
    MarkerDB
        The same types, tree and CL terms, markers in mouse symbols, with the mouse
        markers added to their types; ``version`` ends in ``+mouse``.
    """
    to_mouse, mouse, human = (orthologs.to_mouse(), orthologs.mouse_symbols,
                              orthologs.human_symbols)
    extra = {t.name: t for t in read_marker_file(mouse_marker_path(), require_tree=False)}
    types: list[CellType] = []
    for t in db.types:
        pos = _translate(t.positive, to_mouse, mouse, human)
        neg = _translate(t.negative, to_mouse, mouse, human)
        add = extra.pop(t.name, None)
        if add is not None:
            pos.update(add.positive)
            neg.update(add.negative)
        for g in set(pos) & set(neg):  # two human markers of opposite sign, one mouse gene
            del neg[g]
        source = t.source + (f"; mouse: {add.source}" if add is not None else "")
        types.append(replace(t, positive=pos, negative=neg, source=source))
    return MarkerDB(_mouse_terms(_without_empty_leaves(types)), version=f"{db.version}+mouse")


def _mouse_terms(types: list[CellType]) -> list[CellType]:
    """Types the Cell Ontology names for humans ("group 2 innate lymphoid cell, human") get
    the mouse term when CL has one, else the species-neutral term (matched exactly)."""
    from ..ontology import map_label

    renamed: dict[str, tuple[str, str]] = {}
    for t in types:
        if t.name.endswith(", human"):
            base = t.name[: -len(", human")]
            for name in (f"{base}, mouse", base):
                match = map_label(name)
                if match.id and match.how == "exact":
                    renamed[t.name] = (name, match.id)
                    break
    if not renamed:
        return types
    out = []
    for t in types:
        name, cl_id = renamed.get(t.name, (t.name, t.cl_id))
        parent = renamed[t.parent][0] if t.parent in renamed else t.parent
        out.append(replace(t, name=name, cl_id=cl_id, parent=parent))
    return out


def _without_empty_leaves(types: list[CellType]) -> list[CellType]:
    """Leave out types left with no positive marker (every one human-only, e.g. the
    salivary proteins) unless another type descends from them."""
    while True:
        parents = {t.parent for t in types}
        empty = [t.name for t in types if not t.positive and t.name not in parents]
        if not empty:
            return types
        log.debug("mouse: no positive marker has a mouse ortholog in %s", ", ".join(empty))
        types = [t for t in types if t.name not in empty]


__all__ = ["mouse_marker_db", "mouse_marker_path"]
