"""Which knowledge-base types a given label stands for, and which ones compete with it.

A label is grounded in the Cell Ontology (:func:`cellreasoner.ontology.map_label`) and then
matched to the built-in reasoner's knowledge base (:class:`~cellreasoner.backends.builtin.
markers.MarkerDB`): the types with that CL term; else, for a broad label ("lymphocyte"), the
types below it in CL; else, for a label finer than the knowledge base, its closest CL ancestor
that the knowledge base has. Its *family* (never an alternative) is those types, their
knowledge-base lineage and their subtypes, plus every type whose CL term is an ancestor or
descendant of the label's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ontology import get_ontology, map_label


@dataclass(frozen=True)
class LabelTypes:
    """One label's place in the knowledge base.

    Attributes
    ----------
    ontology_id, ontology_label
        The label's CL term (``""`` when it does not ground).
    types
        Indices of the knowledge-base types the label stands for (empty: not in knowledge).
    paths
        For each of ``types``, the indices of its lineage from the root down to it.
    family
        Boolean mask over all types: those that never count as an alternative.
    """

    ontology_id: str
    ontology_label: str
    types: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]
    family: np.ndarray


def label_types(label: str, reasoner) -> LabelTypes:
    """Match ``label`` to the knowledge base of ``reasoner`` (a
    :class:`~cellreasoner.backends.builtin.reasoner.Reasoner`)."""
    n_types = len(reasoner.names)
    none = LabelTypes("", "", (), (), np.zeros(n_types, dtype=bool))
    match = map_label(label)
    if not match.id:
        return none
    onto = get_ontology()
    cid = match.id
    ids = [str(c) for c in reasoner.cl_ids]
    known = [onto.exists(c) for c in ids]
    types = [t for t, c in enumerate(ids) if c == cid]
    if not types:  # a broad label: the types below it
        types = [t for t, c in enumerate(ids) if known[t] and onto.is_ancestor(cid, c)]
        # only the topmost of them (their subtypes are in the family anyway)
        types = [t for t in types if not any(
            o != t and onto.is_ancestor(ids[o], ids[t]) for o in types)]
    if not types:  # a label finer than the knowledge base: its closest known ancestor
        anc = onto.ancestors(cid)
        inside = [(anc[c], t) for t, c in enumerate(ids) if c in anc]
        if inside:
            best = min(d for d, _ in inside)
            types = [t for d, t in inside if d == best]
    if not types:
        return LabelTypes(cid, match.label or "", (), (), none.family)
    paths = tuple(tuple(reasoner.db.index(n) for n in reasoner.db.lineage(reasoner.names[t]))
                  for t in types)
    family = np.zeros(n_types, dtype=bool)
    for path in paths:
        family[list(path)] = True
    for t in types:
        family |= _below(reasoner, t)
    for t, c in enumerate(ids):
        if known[t] and (c == cid or onto.is_ancestor(c, cid) or onto.is_ancestor(cid, c)):
            family[t] = True
    return LabelTypes(cid, match.label or "", tuple(types), paths, family)


def _below(reasoner, t: int) -> np.ndarray:
    """Mask of the knowledge-base subtypes of type ``t`` (any depth)."""
    out = np.zeros(len(reasoner.names), dtype=bool)
    stack = [t]
    while stack:
        kids = np.flatnonzero(reasoner.child_mask[stack.pop()])
        new = kids[~out[kids]]
        out[new] = True
        stack.extend(new.tolist())
    return out


__all__ = ["LabelTypes", "label_types"]
