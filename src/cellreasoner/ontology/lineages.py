"""Which lineages are related states rather than a contradiction: the one rule.

Two co-expressed lineages (T cells and NK cells, a monocyte and a dendritic cell) are states of
one another when their Cell Ontology terms share a group of :data:`RELATED_GROUPS`; the B
lineage is its own group, and a precursor is related to every lineage (progenitors co-express
the programmes they give rise to). The built-in reasoner
(:mod:`cellreasoner.backends.builtin.reasoner`) and the marker-table label check
(:mod:`cellreasoner.markers.check`) both read it from here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

#: CL groups within which two co-expressed lineages are related states, not a contradiction
#: (lymphocyte, mononuclear phagocyte, granulocyte, myeloid cell, epithelial cell, connective
#: tissue cell, glial cell, neuron); the B lineage is its own group.
RELATED_GROUPS = ("CL:0000542", "CL:0000113", "CL:0000094", "CL:0000763", "CL:0000066",
                  "CL:0002320", "CL:0000125", "CL:0000540")
#: B cell: its own group (B cells and T/NK cells are not states of one another).
B_LINEAGE = "CL:0000945"
#: lymphocyte: the group the B lineage leaves.
LYMPHOCYTE = "CL:0000542"
#: hematopoietic precursor cell, precursor cell: related to every lineage (the reasoner's set).
PRECURSORS = frozenset({"CL:0008001", "CL:0011115"})
#: hematopoietic precursor cell alone: the label check's set (a monocyte, a "precursor cell"
#: of macrophages in CL, is not a precursor of B or T cells).
HEMATOPOIETIC_PRECURSORS = frozenset({"CL:0008001"})


def related_groups(ancestors: Iterable[str],
                   precursors: Collection[str] = PRECURSORS) -> set[str]:
    """The related groups of a CL term, from the term and its ancestors.

    Parameters
    ----------
    ancestors
        The term's id and the ids of all its CL ancestors.
    precursors
        Terms whose descendants are related to every lineage (default :data:`PRECURSORS`).

    Returns
    -------
    set of str
        Ids of :data:`RELATED_GROUPS` (and :data:`B_LINEAGE`); two terms are related states
        when their groups intersect.
    """
    anc = set(ancestors)
    groups = anc & set(RELATED_GROUPS)
    if B_LINEAGE in anc:  # B cells and T/NK cells are not states of one another
        groups = (groups - {LYMPHOCYTE}) | {B_LINEAGE}
    if anc & set(precursors):  # progenitors co-express the programmes they give rise to
        groups = set(RELATED_GROUPS) | {B_LINEAGE}
    return groups


__all__ = ["B_LINEAGE", "HEMATOPOIETIC_PRECURSORS", "PRECURSORS", "RELATED_GROUPS",
           "related_groups"]
