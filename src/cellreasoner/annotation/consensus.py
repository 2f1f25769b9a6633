"""A cluster's label from its cells' own answers: the most specific Cell Ontology term most of
its cells agree on.

A cluster that merges two types (a Leiden cluster of NK and CD8 T cells) must not be labelled
with one of them at full confidence. Each cluster's label is the most specific CL term that
covers (is, or is an ancestor of) the answers of at least ``min_agreement`` of its cells; when
the majority answer (with the answers below it) falls short, the cluster is *mixed* and its
label stops at the common parent (NK + CD8 T -> lymphocyte); a cluster of monocytes, some
called classical, stays "monocyte" and is not mixed. The cluster's confidence is the mean
of its cells' own confidences, counting 0 for the cells its label does not cover, so
disagreement inside the cluster lowers it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Share of a cluster's cells that its label must cover; below it for the majority answer
#: (and the answers below it in the ontology), the cluster is flagged mixed and labelled at
#: the common parent.
MIN_AGREEMENT = 0.75
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class ClusterCall:
    """One cluster's consensus: label, CL id and name, agreement, confidence, mixed flag and
    composition (its most frequent cell answers with their shares)."""

    label: str
    ontology_id: str
    ontology_label: str
    agreement: float
    confidence: float
    mixed: bool
    composition: str


def _depth(onto, cl_id: str) -> int:
    return max(onto.ancestors_self(cl_id).values(), default=0)


def consensus_call(labels: list[str], ids: list[str], confidence: np.ndarray, *,
                   min_agreement: float = MIN_AGREEMENT) -> ClusterCall:
    """The consensus of one cluster's cell answers (``ids``: their CL ids, "" if none)."""
    from ..ontology import UNINFORMATIVE, get_ontology

    onto = get_ontology()
    n = len(labels)
    conf = np.asarray(confidence, dtype=float)
    conf = np.where(np.isfinite(conf), conf, 0.0)
    counts = Counter(labels)
    composition = ", ".join(f"{lab} {c / n:.0%}" for lab, c in counts.most_common(3))
    ids = [i if i and onto.exists(i) else "" for i in ids]
    cover: dict[str, np.ndarray] = {}
    for k, i in enumerate(ids):
        if not i:
            continue
        for a in onto.ancestors_self(i):
            cover.setdefault(a, np.zeros(n, dtype=bool))[k] = True
    top_label, top_n = counts.most_common(1)[0]
    top_id = ids[labels.index(top_label)]
    if top_id and cover[top_id].mean() >= min_agreement:
        chosen = top_id
        label = top_label
    else:
        ok = [a for a, m in cover.items() if m.mean() >= min_agreement and a not in UNINFORMATIVE]
        if not ok:
            agree = top_n / n
            return ClusterCall(UNKNOWN, "", "", agree, 0.0 if top_label == UNKNOWN else
                               float(np.where(np.asarray(labels) == top_label, conf, 0).mean()),
                               True, composition)
        chosen = max(ok, key=lambda a: (_depth(onto, a), cover[a].mean(), a))
        label = onto.label(chosen)
    covered = cover[chosen]
    mixed = chosen != top_id  # the label had to move above the cells' majority answer
    return ClusterCall(label, chosen, onto.label(chosen), float(covered.mean()),
                       float(np.where(covered, conf, 0.0).mean()), bool(mixed), composition)


def cluster_consensus(table: pd.DataFrame, groups: pd.Series, *,
                      min_agreement: float = MIN_AGREEMENT) -> pd.DataFrame:
    """One row per cluster (index ``cluster``, sorted): ``label``, ``ontology_id``,
    ``ontology_label``, ``confidence``, ``agreement``, ``mixed``, ``n_cells`` and
    ``composition``, from the per-cell ``table`` (columns ``label``, ``ontology_id``,
    ``confidence``; rows in the order of ``groups``).

    Parameters
    ----------
    table
        Per-cell answers.
    groups
        Cluster of every cell.
    min_agreement
        Share of a cluster's cells its label must cover (default :data:`MIN_AGREEMENT`).
    """
    g = groups.astype(str).to_numpy()
    labels = table["label"].astype(str).to_numpy()
    ids = table["ontology_id"].fillna("").astype(str).to_numpy()
    conf = table["confidence"].to_numpy(dtype=float)
    rows = {}
    for c in sorted(set(g), key=str):
        idx = np.flatnonzero(g == c)
        call = consensus_call(list(labels[idx]), list(ids[idx]), conf[idx],
                              min_agreement=min_agreement)
        rows[c] = {**call.__dict__, "n_cells": len(idx)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "cluster"
    return out


__all__ = ["MIN_AGREEMENT", "ClusterCall", "cluster_consensus", "consensus_call"]
