"""The built-in reasoner on a marker table: ranked lists scored against the knowledge base.

A cluster's marker list becomes one row of the reasoner's evidence matrix (clusters x
knowledge-base markers): a listed marker counts by its rank (1 for the first, falling linearly
to 0.5 for the last), its fold change (full from a log2 fold change of 1, half at 0) and its
specificity across the clusters of the same table (a gene listed by every cluster says little
about any one of them). The reasoner's own scoring and lineage-tree walk
(:meth:`~cellreasoner.backends.builtin.reasoner.Reasoner.score`,
:meth:`~cellreasoner.backends.builtin.reasoner.Reasoner.decide`) then give the label and its
confidence, so a marker table and a matrix are judged by the same knowledge and decisions.

A listed negative marker (CD3E for a B cell) is contradicting evidence whatever the list's
length. An expected marker *missing* from a list is cited against a type only when the list is
long (at least :data:`LONG_LIST` markers): a top-10 list cannot say that CD19 is absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..backends.builtin.markers import ALIASES
from ..backends.builtin.reasoner import UNKNOWN, Reasoner
from ..errors import InputError
from ..species._detect import SPECIES, SYNONYMS
from .table import MarkerTable

#: A cluster list at least this long is taken to say that an unlisted marker is absent.
LONG_LIST = 100
# SPECIES (the species table of cellreasoner.species): whose symbols are matched to the
# (human) knowledge base; mouse symbols are read upper-cased (Cd3e -> CD3E), the usual
# one-to-one ortholog approximation.
#: Markers cited per step of a trace.
CITED = 4


def check_species(species: str) -> str:
    """The species name, checked (``"human"`` or ``"mouse"``)."""
    s = str(species).strip().lower()
    s = SYNONYMS.get(s, s)
    if s not in SPECIES:
        raise InputError(f"species must be one of {', '.join(SPECIES)}, not {species!r}.")
    return s


@dataclass
class TableScores:
    """The reasoner's view of one marker table.

    Attributes
    ----------
    clusters
        Cluster names, in table order.
    evidence
        Clusters x knowledge-base markers evidence in [0, 1] (CSR).
    ranks
        Per cluster: knowledge-base marker index -> its rank in the cluster's list.
    lengths
        Markers listed per cluster.
    scores
        Clusters x knowledge-base types scores.
    node, root, confidence, status
        The reasoner's decision per cluster (see ``Reasoner.decide``).
    spelled
        Knowledge-base markers as the table spells them.
    """

    clusters: list[str]
    evidence: sp.csr_matrix
    ranks: list[dict[int, int]]
    lengths: np.ndarray
    scores: np.ndarray
    node: np.ndarray
    root: np.ndarray
    confidence: np.ndarray
    status: np.ndarray
    spelled: list[str]

    def long(self, i: int) -> bool:
        """Whether cluster ``i``'s list is long enough to call an unlisted marker absent."""
        return bool(self.lengths[i] >= LONG_LIST)


def _gene_index(reasoner: Reasoner, species: str) -> dict[str, int]:
    gi = {g: i for i, g in enumerate(reasoner.genes)}
    for g, alts in ALIASES.items():
        if g in gi:
            for a in alts:
                gi.setdefault(a, gi[g])
    if species == "mouse":
        gi = {k.upper(): v for k, v in gi.items()}
    return gi


def score_table(reasoner: Reasoner, table: MarkerTable, *, species: str = "human"
                ) -> TableScores:
    """Score every cluster of ``table`` against the reasoner's knowledge base.

    Parameters
    ----------
    reasoner
        The built-in :class:`~cellreasoner.backends.builtin.reasoner.Reasoner`.
    table
        The (filtered) marker table.
    species
        ``"human"`` (default) or ``"mouse"`` (symbols matched upper-cased).

    Returns
    -------
    TableScores
        Evidence, scores and decisions per cluster.

    Raises
    ------
    InputError
        When no gene of the table is a marker in the knowledge base.
    """
    species = check_species(species)
    gi = _gene_index(reasoner, species)
    clusters = list(table.clusters)
    ci = {c: i for i, c in enumerate(clusters)}
    f = table.frame
    genes = f["gene"].astype(str)
    keys = genes.str.upper() if species == "mouse" else genes
    m = keys.map(gi)
    hit = m.notna().to_numpy()
    if not hit.any():
        example = ", ".join(genes.head(3))
        raise InputError(
            f"Marker table {table.source}: none of its {genes.nunique()} genes (e.g. {example}) "
            f"is a marker of the {len(reasoner.names)} knowledge-base cell types. Use gene "
            "symbols (not Ensembl ids), the right --species, or a --tissue/--markers "
            "knowledge that covers these cells.")
    lengths = f.groupby("cluster", sort=False).size().reindex(clusters).to_numpy()
    rows = f["cluster"].map(ci).to_numpy()[hit]
    cols = m[hit].astype(int).to_numpy()
    rank = f["rank"].to_numpy()[hit]
    n = np.maximum(lengths[rows] - 1, 1)
    w_rank = 1.0 - 0.5 * rank / n
    lfc = f["logfc"].to_numpy(dtype=float)[hit]
    w_fc = np.where(np.isfinite(lfc), np.clip(0.5 + 0.5 * lfc, 0.5, 1.0), 1.0)
    # specificity: in how many of the table's clusters each knowledge-base marker is listed
    C = len(clusters)
    pairs = np.unique(np.stack([rows, cols]), axis=1)
    k = np.bincount(pairs[1], minlength=len(reasoner.genes))
    w_spec = (np.clip(1.0 - 0.75 * (k[cols] - 1) / max(C - 1, 1), 0.25, 1.0) if C > 2
              else np.ones(len(cols)))
    value = (w_rank * w_fc * w_spec).astype(np.float32)
    E = sp.csr_matrix((value, (rows, cols)), shape=(C, len(reasoner.genes)), dtype=np.float32)
    E.sum_duplicates()  # an alias and its symbol both listed: keep one
    E.data = np.minimum(E.data, 1.0)
    ranks: list[dict[int, int]] = [{} for _ in clusters]
    spelled = list(reasoner.genes)
    for r_, c_, k_, g_ in zip(rows, cols, rank, genes[hit], strict=True):
        ranks[r_].setdefault(int(c_), int(k_))
        if g_ != reasoner.genes[c_] and g_.upper() != reasoner.genes[c_]:
            spelled[c_] = g_
    measured = np.ones(len(reasoner.genes), dtype=bool)
    S = reasoner.score(E, measured)
    node, root, conf, status = reasoner.decide(S)
    return TableScores(clusters, E, ranks, lengths, S, node, root, conf, status, spelled)


def listed(ts: TableScores, i: int, markers: Sequence[int]) -> list[int]:
    """``markers`` (knowledge-base indices) that cluster ``i`` lists, by rank."""
    r = ts.ranks[i]
    return sorted((m for m in markers if m in r), key=r.__getitem__)


def _cite(reasoner: Reasoner, ts: TableScores, i: int, markers: Sequence[int]) -> str:
    return ", ".join(f"{ts.spelled[m]} (#{ts.ranks[i][m] + 1})" for m in markers)


def supporting(reasoner: Reasoner, ts: TableScores, i: int, t: int) -> list[int]:
    """Listed positive markers of type ``t`` and its ancestors, by rank."""
    pos: set[int] = set()
    u = t
    while u >= 0:
        pos.update(int(m) for m in reasoner._pos_sorted[u])
        u = int(reasoner.parent[u])
    return listed(ts, i, sorted(pos))


def contradicting(reasoner: Reasoner, ts: TableScores, i: int, t: int) -> list[int]:
    """Listed negative markers of type ``t``, by rank."""
    return listed(ts, i, [int(m) for m in reasoner._neg_sorted[t]])


def absent(reasoner: Reasoner, ts: TableScores, i: int, t: int, k: int = 3) -> list[int]:
    """Strong (weight >= 2) expected markers of ``t`` the cluster's long list lacks."""
    if not ts.long(i):
        return []
    return [int(m) for m in reasoner._pos_sorted[t]
            if reasoner.P[t, m] >= 2 and int(m) not in ts.ranks[i]][:k]


def _runner_up(reasoner: Reasoner, S: np.ndarray, t: int) -> tuple[str, float] | None:
    p = reasoner.parent[t]
    sib = (np.flatnonzero(reasoner.child_mask[p]) if p >= 0
           else np.flatnonzero(reasoner.is_root))
    sib = sib[sib != t]
    if not len(sib):
        return None
    j = sib[np.argmax(S[sib])]
    return str(reasoner.names[j]), float(S[j])


def trace(reasoner: Reasoner, ts: TableScores, i: int) -> str:
    """The marker-by-marker reasoning of cluster ``i``'s decision."""
    S = ts.scores[i]
    head = f"Cluster {ts.clusters[i]} ({int(ts.lengths[i])} markers"
    head += ", long enough to read absences)." if ts.long(i) else ")."
    if ts.status[i] == 1:
        roots = np.flatnonzero(reasoner.is_root)
        best = roots[np.argmax(S[roots])]
        return (f"{head} No lineage is supported: the best, {reasoner.names[best]}, scores "
                f"{S[best]:.2f} (below {reasoner.min_score:g}). Final answer: {UNKNOWN}.")
    if ts.status[i] == 2:
        roots = np.flatnonzero(reasoner.is_root)
        a, b = roots[np.argsort(-S[roots])[:2]]
        return (f"{head} Contradictory lineages: {reasoner.names[a]} "
                f"({_cite(reasoner, ts, i, listed(ts, i, reasoner._pos_sorted[a])[:CITED])}) "
                f"and {reasoner.names[b]} "
                f"({_cite(reasoner, ts, i, listed(ts, i, reasoner._pos_sorted[b])[:CITED])}) "
                f"score {S[a]:.2f} and {S[b]:.2f}. Final answer: {UNKNOWN}.")
    t = int(ts.node[i])
    steps = []
    for step in reasoner.db.lineage(str(reasoner.names[t])):
        u = reasoner.db.index(step)
        pos = listed(ts, i, reasoner._pos_sorted[u])[:CITED]
        text = f"{step}: {_cite(reasoner, ts, i, pos) or 'no own marker listed'}"
        text += f" (score {S[u]:.2f}"
        ru = _runner_up(reasoner, S, u)
        text += f"; next {ru[0]} {ru[1]:.2f})" if ru and ru[1] > 0 else ")"
        steps.append(text)
    parts = [head, " -> ".join(steps) + "."]
    neg = contradicting(reasoner, ts, i, t)[:CITED]
    if neg:
        parts.append(f"Against it: {_cite(reasoner, ts, i, neg)} listed.")
    miss = absent(reasoner, ts, i, t)
    if miss:
        parts.append("Expected but not listed: " + ", ".join(ts.spelled[m] for m in miss) + ".")
    parts.append(f"Confidence {float(ts.confidence[i]):.2f}. Final answer: {reasoner.names[t]}.")
    return " ".join(parts)


def builtin_frame(reasoner: Reasoner, ts: TableScores) -> pd.DataFrame:
    """One row per cluster: label, CL id and name, confidence, reasoning, supporting markers."""
    from ..ontology import get_ontology

    onto = get_ontology()
    rows = []
    for i, cluster in enumerate(ts.clusters):
        t = int(ts.node[i])
        if t < 0:
            rows.append((cluster, UNKNOWN, "", "", float(ts.confidence[i]), trace(reasoner, ts, i),
                         ""))
            continue
        cid = str(reasoner.cl_ids[t])
        name = onto.label(cid) if onto.exists(cid) else ""
        sup = supporting(reasoner, ts, i, t)
        rows.append((cluster, str(reasoner.names[t]), cid, name, float(ts.confidence[i]),
                     trace(reasoner, ts, i), ", ".join(ts.spelled[m] for m in sup)))
    return pd.DataFrame(rows, columns=["cluster", "label", "ontology_id", "ontology_label",
                                       "confidence", "reasoning", "supporting_markers"])


__all__ = ["LONG_LIST", "SPECIES", "TableScores", "builtin_frame", "check_species",
           "score_table", "trace"]
