"""``--check-labels``: do a table's cluster names (cell-type labels) agree with its markers?

Each name is read as a Cell Ontology term (a parenthesised note is dropped: "B cell
(activated)" is read as "B cell"; a ``label_map`` can say how to read author labels), placed in
the knowledge base's lineage tree (the type with that CL id, else its closest knowledge-base
ancestor, else its best-scoring knowledge-base descendant) and compared with the built-in
reasoner's decision on the same markers:

- ``agrees``: the decision lies on the name's lineage path (the same type, a subtype of it,
  or a broader type whose subtype step the markers leave open);
- ``disagrees``: the two paths part between unrelated lineages (B cell and T cell; not T
  cell and NK cell, nor a precursor and a mature type: the reasoner's related groups, which
  it never reads as contradicting each other) and the markers score the decision's branch at
  least :data:`DISAGREE_MARGIN` above the name's; or they part at a subtype step with twice
  that margin and no support at all for the name's branch;
- ``uncertain``: anything else (the name is not a known cell type, no lineage is supported,
  or the branches score too close to tell).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..backends.builtin.reasoner import Reasoner
from ..ontology.lineages import HEMATOPOIETIC_PRECURSORS, related_groups
from .scoring import TableScores, absent, contradicting, listed

#: Score difference between the evidence's branch and the name's branch that contradicts the name.
DISAGREE_MARGIN = 0.15
#: Values of the ``label_check`` column.
CHECK_VALUES = ("agrees", "disagrees", "uncertain")
_NOTE = re.compile(r"\s*[\(\[][^()\[\]]*[\)\]]\s*")


def label_text(name: str) -> str:
    """The cell-type label of a cluster name: the text before a parenthesised note."""
    text = _NOTE.sub(" ", str(name)).strip()
    return " ".join(text.split()) or str(name).strip()


def _kb_type(reasoner: Reasoner, cl_id: str, S: np.ndarray) -> int:
    """The knowledge-base type standing for ``cl_id`` (-1: none related)."""
    from ..ontology import get_ontology

    onto = get_ontology()
    ids = [str(c) for c in reasoner.cl_ids]
    if cl_id in ids:
        return ids.index(cl_id)
    if not onto.exists(cl_id):
        return -1
    anc = onto.ancestors(cl_id)  # id -> distance
    best, dist = -1, None
    for t, c in enumerate(ids):
        if c in anc and (dist is None or anc[c] < dist):
            best, dist = t, anc[c]
    if best >= 0:
        return best
    below = onto.descendants(cl_id)
    kids = [t for t, c in enumerate(ids) if c in below]
    return max(kids, key=lambda t: S[t]) if kids else -1


def _groups(cl_id: str) -> set[str]:
    """The related groups of a CL term: the reasoner's rule
    (:func:`~cellreasoner.ontology.lineages.related_groups`), with only a hematopoietic
    precursor related to every lineage (a monocyte, a "precursor cell" of macrophages in CL,
    is not a precursor of B or T cells)."""
    from ..ontology import get_ontology

    onto = get_ontology()
    if not onto.exists(cl_id):
        return set()
    return related_groups(onto.ancestors_self(cl_id), HEMATOPOIETIC_PRECURSORS)


def _related(reasoner: Reasoner, a: int, b: int) -> bool:
    """Whether lineages ``a`` and ``b`` are related states (T and NK cells, a haematopoietic
    precursor and a mature type), which co-express markers without contradicting each other."""
    return bool(_groups(str(reasoner.cl_ids[a])) & _groups(str(reasoner.cl_ids[b])))


def _markers(reasoner: Reasoner, ts: TableScores, i: int, t: int, k: int = 4) -> str:
    ms = listed(ts, i, [int(m) for m in reasoner._pos_sorted[t]])[:k]
    return ", ".join(f"{ts.spelled[m]} (#{ts.ranks[i][m] + 1})" for m in ms)


def check_labels(reasoner: Reasoner, ts: TableScores,
                 label_map: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``label_check`` and ``label_check_reason`` for every cluster of a scored table.

    Parameters
    ----------
    reasoner
        The built-in reasoner that scored the table.
    ts
        Its :class:`~.scoring.TableScores`.
    label_map
        ``{cluster name: CL id}`` read first (see
        :func:`cellreasoner.evaluation.truth.read_truth_map`); default ``None``.

    Returns
    -------
    pandas.DataFrame
        Indexed by cluster, columns ``label_check`` and ``label_check_reason``.
    """
    label_map = dict(label_map or {})
    out = [_verdict(reasoner, ts, i, name, label_map) for i, name in enumerate(ts.clusters)]
    return pd.DataFrame(out, columns=["label_check", "label_check_reason"],
                        index=pd.Index(ts.clusters, name="cluster"))


def _verdict(reasoner: Reasoner, ts: TableScores, i: int, name: str,
             label_map: Mapping[str, str]) -> tuple[str, str]:
    """``(label_check, label_check_reason)`` of cluster ``i`` named ``name``."""
    from ..ontology import get_ontology, map_label

    onto = get_ontology()
    S = ts.scores[i]
    text = label_text(name)
    cl_id = label_map.get(name) or label_map.get(text)
    if not cl_id:
        m = map_label(text)
        cl_id = m.id or ""
    if not cl_id:
        return ("uncertain", f"'{text}' is not read as a Cell Ontology cell type.")
    given = f"'{text}' ({cl_id} {onto.label(cl_id) if onto.exists(cl_id) else ''})".replace(
        " )", ")")
    tc = _kb_type(reasoner, cl_id, S)
    if tc < 0:
        return ("uncertain", f"{given} has no type in the marker knowledge base.")
    p = int(ts.node[i])
    if p < 0:
        why = ("no lineage is supported" if ts.status[i] == 1
               else "the markers support two unrelated lineages")
        return ("uncertain", f"{given}: {why}.")
    path_c = reasoner.db.lineage(str(reasoner.names[tc]))
    path_p = reasoner.db.lineage(str(reasoner.names[p]))
    d = next((k for k, (a, b) in enumerate(zip(path_c, path_p, strict=False)) if a != b),
             None)
    if d is None:  # one path is the start of the other
        return _on_one_path(reasoner, ts, i, given, tc, p, path_c, path_p)
    return _parting(reasoner, ts, i, given, d, reasoner.db.index(path_c[d]),
                    reasoner.db.index(path_p[d]))


def _on_one_path(reasoner: Reasoner, ts: TableScores, i: int, given: str, tc: int, p: int,
                 path_c: list[str], path_p: list[str]) -> tuple[str, str]:
    """The verdict when the name's lineage path and the decision's are one path."""
    S = ts.scores[i]
    if len(path_c) <= len(path_p):
        sup = _markers(reasoner, ts, i, tc) or _markers(reasoner, ts, i, p)
        return ("agrees", f"{given} is supported by {sup or 'its lineage'}"
                + (f"; the markers specify {reasoner.names[p]}." if p != tc else "."))
    deeper = reasoner.db.index(path_c[len(path_p)])
    if S[deeper] >= reasoner.min_child_score:
        return ("agrees", f"{given} is supported by "
                f"{_markers(reasoner, ts, i, deeper) or 'its lineage'}.")
    return ("uncertain", f"{given}: the markers support "
            f"{reasoner.names[p]} ({_markers(reasoner, ts, i, p)}) but "
            f"not the subtype {path_c[len(path_p)]}.")


def _parting(reasoner: Reasoner, ts: TableScores, i: int, given: str, d: int, a: int,
             b: int) -> tuple[str, str]:
    """The verdict when the name's path (branch ``a``) and the decision's (branch ``b``)
    part at depth ``d``."""
    S = ts.scores[i]
    margin = float(S[b] - S[a])
    evid = _markers(reasoner, ts, i, b)
    # parting between unrelated lineages with a clear margin contradicts the name;
    # parting at a subtype step only when the name's own branch has no support at all
    # and the other one a clear lead; related lineages (T and NK cells, a precursor and
    # what it gives rise to: the reasoner's own co-expressed states) never do
    related = d == 0 and _related(reasoner, a, b)
    if (margin >= DISAGREE_MARGIN if d == 0
            else margin >= 2 * DISAGREE_MARGIN and S[a] <= 0) and not related:
        against = contradicting(reasoner, ts, i, a)[:4]
        miss = absent(reasoner, ts, i, a)
        why = f"{given} disagrees with the markers: they point to {reasoner.names[b]}"
        why += f" ({evid})" if evid else ""
        why += f", score {S[b]:.2f} vs {S[a]:.2f} for {reasoner.names[a]}"
        if against:
            why += "; listed against it: " + ", ".join(ts.spelled[m] for m in against)
        if miss:
            why += "; its markers " + ", ".join(ts.spelled[m] for m in miss) + " not listed"
        own = _markers(reasoner, ts, i, a)
        why += f"; its own markers listed: {own}." if own else "; none of its markers listed."
        return ("disagrees", why)
    if related and margin >= DISAGREE_MARGIN:
        return ("uncertain", f"{given}: the markers favour {reasoner.names[b]} "
                f"({evid}), a related lineage (co-expressed states, not a "
                f"contradiction), by {margin:.2f} over {reasoner.names[a]}.")
    return ("uncertain", f"{given}: the markers favour {reasoner.names[b]} "
            f"({evid or 'weakly'}) by only {margin:.2f} over {reasoner.names[a]}.")


__all__ = ["CHECK_VALUES", "DISAGREE_MARGIN", "check_labels", "label_text"]
