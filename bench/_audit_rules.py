"""Canonical-marker rules for label audits in the benches (not the product's audit).

Fixed textbook phenotypes a label should not contradict, checked straight on the expression
matrix: the reference that ``bench/audit.py`` measures :func:`cellreasoner.tl.audit` against
(moved here from the previous ``bench/accuracy.py``, which no longer runs a label audit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp


def load_pbmc68k():
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    raw = a.raw.to_adata()
    return {
        "name": "pbmc68k_reduced (700 cells)",
        "X": sp.csr_matrix(raw.X),
        "genes": list(raw.var_names),
        "truth": a.obs["bulk_labels"].astype(str).to_numpy(),
        "clusters": a.obs["louvain"].astype(str).to_numpy(),
        "connectivities": a.obsp["connectivities"],
    }



@dataclass(frozen=True)
class AuditRule:
    """Cells whose label matches ``label`` (regex) contradict it when none of ``absent`` is
    detected (skipped when ``absent`` is empty), at least one of ``present_any`` is detected
    and every gene of ``present_all`` is detected (each skipped when empty)."""

    label: str
    text: str
    absent: tuple[str, ...] = ()
    present_any: tuple[str, ...] = ()
    present_all: tuple[str, ...] = ()


#: Textbook phenotypes (flow cytometry / scRNA-seq) that a label should not contradict. The
#: genes are canonical markers, so the knowledge base uses them too: "label-consistent" means
#: consistent with the textbook markers the builtin also relies on, not an independent truth.
#: SingleR's score on the contradicted cells shows how hard they are for a reference method.
AUDIT_RULES = (
    AuditRule(r"^(?:DC|Dendritic)", "dendritic-cell label; no DC marker, FCGR3A detected",
              absent=("FCER1A", "CLEC10A", "CD1C", "CLEC9A", "LILRA4", "IL3RA", "CLEC4C"),
              present_any=("FCGR3A",)),
    AuditRule(r"CD14(?!\d)", "CD14 monocyte label; FCER1A and CLEC10A detected (cDC2)",
              present_all=("FCER1A", "CLEC10A")),
    AuditRule(r"CD8(?!\d)", "CD8 T label; no CD8A/CD8B, but CD4 or CD40LG detected",
              absent=("CD8A", "CD8B"), present_any=("CD4", "CD40LG")),
    AuditRule(r"CD4(?!\d)", "CD4 T label; CD8A or CD8B detected, no CD4/CD40LG",
              absent=("CD4", "CD40LG"), present_any=("CD8A", "CD8B")),
    AuditRule(r"(?:^|\W)NK(?:\W|$)", "NK label; CD3D, CD3E and CD3G all detected",
              present_all=("CD3D", "CD3E", "CD3G")),
)


def label_audit(ds: dict, rules: tuple[AuditRule, ...] = AUDIT_RULES
                ) -> tuple[pd.Series, list[str]]:
    """Per cell the first of ``rules``' texts its expression meets ("" if none), and
    notes on genes the data does not measure (an absence clause is only tested on measured
    genes; a rule with a clause whose genes are all unmeasured is skipped)."""
    import re

    X = sp.csr_matrix(ds["X"])
    pos = {str(g): j for j, g in enumerate(ds["genes"])}

    def detected(genes: tuple[str, ...]) -> np.ndarray:
        cols = [pos[g] for g in genes]
        return np.asarray((X[:, cols] > 0).toarray())

    truth = pd.Series(ds["truth"]).astype(str)
    why = pd.Series([""] * len(truth), dtype=object)
    notes = []
    for rule in rules:
        matches = truth.str.contains(rule.label, flags=re.IGNORECASE).to_numpy()
        if not matches.any():
            continue
        named = rule.absent + rule.present_any + rule.present_all
        missing = [g for g in named if g not in pos]
        clauses = [c for c in (rule.absent, rule.present_any) if c] + [
            (g,) for g in rule.present_all]
        if any(all(g not in pos for g in c) for c in clauses):
            notes.append(f"skipped ({', '.join(missing)} not measured): {rule.text}")
            continue
        if missing:
            notes.append(f"{', '.join(missing)} not measured: {rule.text}")
        hit = matches.copy()
        if rule.absent:
            hit &= ~detected(tuple(g for g in rule.absent if g in pos)).any(axis=1)
        if rule.present_any:
            hit &= detected(tuple(g for g in rule.present_any if g in pos)).any(axis=1)
        if rule.present_all:
            hit &= detected(rule.present_all).all(axis=1)
        why[hit & (why == "").to_numpy()] = rule.text
    return why, notes


