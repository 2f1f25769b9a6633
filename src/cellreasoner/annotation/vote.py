"""Ontology-aware votes: several backends' answers for one item (a cell or a cluster), and
the cells of one cluster.

:func:`consensus_vote` is the one decision; :func:`consensus_frame` applies it to a table of
answers (one column per backend), voting each distinct combination of answers once, so it
serves per-cell, cluster and marker-table runs alike.

The rules, with ``n`` the number of backends (an abstention, "Unknown", counts in ``n``):

1. more than half abstain: the consensus abstains ("Unknown");
2. one answer (its grounded Cell Ontology term, or its text when it has none) is given by
   more than half: it wins (``how="majority"``, ``"unanimous"`` when all agree);
3. else the answers meet at their closest common CL ancestor (``how="ancestor"``): that of
   all grounded answers when it is informative (not a generic root such as "cell") and holds
   more than half of the answers, e.g. "CD4-positive T cell" + "CD8-positive T cell" +
   "T cell" -> "T cell"; otherwise the most specific informative term whose subtree holds
   more than half of them ("CD4-positive T cell" + "CD8-positive T cell" + "hepatocyte" ->
   "mature alpha-beta T cell");
4. else the most frequent answer when it is the only one (``how="plurality"``), else
   "Unknown" (``how="tie"``).

``agreement`` is the fraction of all backends whose answer lies in the consensus term's
subtree (for an abstaining consensus: the fraction that abstained); ``entropy`` is the Shannon
entropy (bits) of the distribution of answers (0 when all agree; 1 for an even two-way split).

Cells of one cluster (:func:`cluster_consensus`, the built-in reasoner's cluster mode). A
cluster that merges two types (a Leiden cluster of NK and CD8 T cells) must not be labelled
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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from ..ontology import UNINFORMATIVE, get_ontology, normalize
from ..parsing import UNPARSED_LABEL as UNKNOWN

#: Labels that are an abstention, not an answer (compared after :func:`normalize`).
ABSTAIN = frozenset({"", "unknown", "unassigned", "na", "none"})


@dataclass(frozen=True)
class Vote:
    """The consensus of one item.

    Attributes
    ----------
    label
        The consensus label: the winning backend's own text, or the CL name of the term the
        answers met at; ``"Unknown"`` when the consensus abstains.
    ontology_id, ontology_label
        Its CL term (``""`` when it has none).
    agreement
        Fraction of the backends whose answer lies in the consensus term's subtree.
    entropy
        Shannon entropy (bits) of the answers.
    how
        ``unanimous``, ``majority``, ``ancestor``, ``plurality``, ``tie`` or ``abstain``.
    """

    label: str
    ontology_id: str
    ontology_label: str
    agreement: float
    entropy: float
    how: str


def _key(label: str, ontology_id: str) -> str:
    """An answer's identity: its CL term, else its normalised text, else abstention ("")."""
    if ontology_id:
        return ontology_id
    text = normalize(label or "")
    return "" if text in ABSTAIN else f"text:{text}"


def _entropy(keys: Sequence[str]) -> float:
    counts = np.array(list(Counter(keys).values()), dtype=float)
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def _meeting_term(ids: Sequence[str], n: int) -> str | None:
    """The closest common informative CL ancestor of all ``ids`` when it holds more than half
    of ``n`` answers; else the most specific informative term whose subtree does."""
    onto = get_ontology()
    known = [i for i in ids if onto.exists(i)]
    common = onto.lowest_informative_ancestor(known) if len(known) * 2 > n else None
    if common is not None:  # every answer meets there
        return common
    anc = [onto.ancestors_self(i) if onto.exists(i) else {i: 0} for i in ids]
    support: Counter = Counter(t for a in anc for t in a if t not in UNINFORMATIVE)
    qualified = {t for t, s in support.items() if s * 2 > n}
    if not qualified:
        return None
    # most specific: not a strict ancestor of another qualifying term
    specific = [t for t in qualified
                if not any(o != t and onto.is_ancestor(t, o) for o in qualified)]

    def rank(t: str) -> tuple:
        dist = [a[t] for a in anc if t in a]
        return (-support[t], sum(dist) / len(dist), t)

    return min(specific, key=rank)


def consensus_vote(labels: Sequence[str], ontology_ids: Sequence[str]) -> Vote:
    """The ontology-aware consensus of one item's answers (one per backend).

    Parameters
    ----------
    labels
        Each backend's label (``"Unknown"`` or ``""`` for an abstention).
    ontology_ids
        Each backend's grounded CL id (``""`` where the label has none), aligned with
        ``labels``.

    Returns
    -------
    Vote
        See the module docstring for the rules.
    """
    labels = ["" if x is None else str(x) for x in labels]
    ids = ["" if x is None or x != x else str(x) for x in ontology_ids]
    if len(labels) != len(ids) or not labels:
        raise InputError("consensus_vote needs one ontology id per label, and some labels.")
    n = len(labels)
    keys = [_key(lab, i) for lab, i in zip(labels, ids, strict=True)]
    entropy = _entropy(keys)
    counts = Counter(keys)
    if counts[""] * 2 > n:
        return Vote(UNKNOWN, "", "", counts[""] / n, entropy, "abstain")
    top, k = max(counts.items(), key=lambda kv: (kv[1], kv[0] != "", -keys.index(kv[0])))
    if top and k * 2 > n:
        return _decided(top, labels, keys, ids, entropy, "unanimous" if k == n else "majority")
    grounded = [i for i in ids if i]
    term = _meeting_term(grounded, n) if grounded else None
    if term is not None:
        return _decided(term, labels, keys, ids, entropy, "ancestor")
    answered = [(key, c) for key, c in counts.most_common() if key]
    if len(answered) == 1 or (answered and answered[0][1] > answered[1][1]):
        return _decided(answered[0][0], labels, keys, ids, entropy, "plurality")
    agreement = counts[""] / n
    return Vote(UNKNOWN, "", "", agreement, entropy, "tie")


def _decided(key: str, labels: list[str], keys: list[str], ids: list[str], entropy: float,
             how: str) -> Vote:
    """The vote for the winning answer/term ``key``, with its agreement."""
    n = len(labels)
    if key.startswith("text:"):
        first = keys.index(key)
        return Vote(labels[first], "", "", keys.count(key) / n, entropy, how)
    onto = get_ontology()
    inside = [bool(i) and (i == key or onto.is_ancestor(key, i)) for i in ids]
    name = onto.label(key) if onto.exists(key) else ""
    label = next((labels[j] for j, i in enumerate(ids) if i == key), name)
    return Vote(label, key, name, sum(inside) / n, entropy, how)


def consensus_frame(labels: pd.DataFrame, ontology_ids: pd.DataFrame) -> pd.DataFrame:
    """:func:`consensus_vote` for every row of a table of answers.

    Parameters
    ----------
    labels, ontology_ids
        One row per item and one column per backend, same shape and index.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``labels``, with the :class:`Vote` fields as columns. Each distinct row
        of answers is voted once.
    """
    if labels.shape != ontology_ids.shape:
        raise InputError(f"labels {labels.shape} and ontology_ids {ontology_ids.shape} must have "
                         "the same shape: one column per backend, one row per item.")
    lab = labels.astype(object).where(labels.notna(), "").astype(str).to_numpy()
    ids = ontology_ids.astype(object).where(ontology_ids.notna(), "").astype(str).to_numpy()
    rows = [tuple(a) + tuple(b) for a, b in zip(lab, ids, strict=True)]
    codes, distinct = pd.factorize(pd.Series(rows, dtype=object))
    m = lab.shape[1]
    votes = [consensus_vote(list(r[:m]), list(r[m:])) for r in distinct]
    fields = ("label", "ontology_id", "ontology_label", "agreement", "entropy", "how")
    out = pd.DataFrame({f: np.asarray([getattr(v, f) for v in votes], dtype=object)[codes]
                        for f in fields}, index=labels.index)
    out["agreement"] = out["agreement"].astype(np.float64)
    out["entropy"] = out["entropy"].astype(np.float64)
    return out


#: Share of a cluster's cells that its label must cover; below it for the majority answer
#: (and the answers below it in the ontology), the cluster is flagged mixed and labelled at
#: the common parent.
MIN_AGREEMENT = 0.75


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
    onto = get_ontology()
    n = len(labels)
    conf = np.asarray(confidence, dtype=float)
    conf = np.where(np.isfinite(conf), conf, 0.0)
    counts = Counter(labels)
    composition = ", ".join(f"{lab} {c / n:.0%}" for lab, c in counts.most_common(3))
    # ontology lookups per distinct answer, not per cell
    distinct, which = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)
    distinct = [i if i and onto.exists(i) else "" for i in distinct]
    ids = [distinct[j] for j in which]
    cover: dict[str, np.ndarray] = {}
    for j, i in enumerate(distinct):
        if not i:
            continue
        cells = which == j
        for a in onto.ancestors_self(i):
            cover[a] = cover[a] | cells if a in cover else cells.copy()
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
    members = pd.Series(np.arange(len(g))).groupby(g, sort=False).indices
    for c in sorted(members, key=str):
        idx = members[c]
        call = consensus_call(list(labels[idx]), list(ids[idx]), conf[idx],
                              min_agreement=min_agreement)
        rows[c] = {**call.__dict__, "n_cells": len(idx)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "cluster"
    return out


__all__ = ["ABSTAIN", "MIN_AGREEMENT", "UNKNOWN", "ClusterCall", "Vote", "cluster_consensus",
           "consensus_call", "consensus_frame", "consensus_vote"]
