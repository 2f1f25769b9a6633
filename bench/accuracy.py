"""Accuracy and speed of the built-in marker reasoner, side by side with SingleR.

Usage::

    python bench/accuracy.py [--shared ../shared] [--seeds 20] [--speed-cells 200000]

Datasets (real, offline): the CellReasoner PBMC3k demo (``../shared/data/pbmc_demo.rds``,
Seurat tutorial labels) and ``scanpy.datasets.pbmc68k_reduced()`` (``.raw``, labels
``bulk_labels``, clusters ``louvain``, its kNN graph). Every prediction is scored against the
ground truth with the automatic hierarchical scorer :func:`cellreasoner.evaluation.score_pair`
(1 subtype / 0.5 major / 0.25 partial / 0 incorrect).

Rows: the reasoner per cell, per cell with kNN smoothing, the same without the self-training
refinement of dropout steps (on by default, see :mod:`cellreasoner.backends.builtin.refine`),
per cluster (all tissues, and restricted to ``tissue="blood"``); SingleR trained on a
stratified half of the same dataset and evaluated on the other half (mean over ``--seeds``
splits; the reasoner's score on the same held-out halves is printed beside it, since its
knowledge base never sees the labels, and the paired per-cell difference with a bootstrap interval).
Then the builtin's most frequent answers per ground-truth label (to tell label noise from
reasoning errors); a label audit (cells whose own expression contradicts their label by fixed
canonical-marker rules, see :func:`label_audit`) with SingleR and the builtin scored on the
label-consistent and the contradicted held-out cells separately; a confidence-calibration
table (all cells and label-consistent cells, with expected calibration errors) and the
reasoner's speed in cells/s.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellreasoner.backends.builtin.reasoner import Reasoner
from cellreasoner.evaluation import LEVELS, PairScorer

ROOT = Path(__file__).resolve().parents[1]


def load_demo(shared: Path):
    import scanpy as sc

    from cellreasoner.checks import looks_like_counts
    from cellreasoner.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = read(shared / "data" / "pbmc_demo.rds")
    b = a.copy()
    if sp.issparse(b.X) and looks_like_counts(b.X, max_values=None):
        sc.pp.normalize_total(b, target_sum=1e4)
        sc.pp.log1p(b)
    sc.pp.pca(b, n_comps=10)
    sc.pp.neighbors(b, n_neighbors=5)
    sc.tl.leiden(b, resolution=1.0, flavor="igraph", n_iterations=2, directed=False)
    return {
        "name": "PBMC3k demo (35 cells)",
        "X": sp.csr_matrix(b.X),
        "genes": list(a.var_names),
        "truth": a.obs["seurat_annotations"].astype(str).to_numpy(),
        "clusters": b.obs["leiden"].astype(str).to_numpy(),
        "connectivities": b.obsp["connectivities"],
    }


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


def summarize(scores: np.ndarray) -> dict:
    row = {"mean": float(np.mean(scores)) if len(scores) else float("nan"), "n": len(scores)}
    for level, name in LEVELS.items():
        row[name] = float(np.mean(scores == level)) if len(scores) else float("nan")
    return row


def reasoner_predictions(ds: dict, tissue: str | None) -> dict[str, np.ndarray]:
    r = Reasoner(tissue=tissue)
    out = {}
    out["per cell"] = r.annotate_matrix(ds["X"], ds["genes"], reasoning=False).label
    out["per cell + kNN smoothing"] = r.annotate_matrix(
        ds["X"], ds["genes"], connectivities=ds["connectivities"], reasoning=False).label
    out["per cell + kNN, no refinement"] = Reasoner(tissue=tissue, refine=False).annotate_matrix(
        ds["X"], ds["genes"], connectivities=ds["connectivities"], reasoning=False).label
    res, keys = r.annotate_groups(ds["X"], ds["genes"], ds["clusters"], reasoning=False)
    lut = dict(zip(keys, res.label, strict=True))
    out["per cluster"] = np.array([lut[c] for c in ds["clusters"].astype(str)], dtype=object)
    return out


def confusion(truth: list[str], pred: np.ndarray, scorer: PairScorer, top: int = 4
              ) -> pd.DataFrame:
    """The ``top`` most frequent predictions per ground-truth label, with their score."""
    s = scorer.score_many(truth, list(pred))
    df = pd.DataFrame({"truth": truth, "prediction": pred, "score": s})
    out = (df.groupby(["truth", "prediction"]).agg(cells=("score", "size"),
                                                   score=("score", "first"))
           .reset_index().sort_values(["truth", "cells"], ascending=[True, False]))
    return out.groupby("truth").head(top).set_index(["truth", "prediction"])


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


def label_audit(ds: dict) -> tuple[pd.Series, list[str]]:
    """Per cell the first :data:`AUDIT_RULES` text its expression meets ("" if none), and
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
    for rule in AUDIT_RULES:
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


def stratified_half(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        train.extend(idx[: max(1, len(idx) // 2)])
    mask = np.zeros(len(labels), dtype=bool)
    mask[train] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def singler_predict(ds: dict, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    import singler

    X = ds["X"]
    ref = np.asarray(X[train].todense()).T
    tst = np.asarray(X[test].todense()).T
    res = singler.annotate_single(
        test_data=tst, ref_data=ref, ref_labels=list(ds["truth"][train]),
        test_features=ds["genes"], ref_features=ds["genes"])
    return np.asarray(res.column("best"), dtype=object)


def calibration(ds: dict, scorer: PairScorer, consistent: np.ndarray
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability table (all cells | label-consistent cells) and the expected calibration
    error of the confidence against three readings of "right": the exact label (score 1),
    the mean hierarchical score, and the lineage (score > 0)."""
    res = Reasoner().annotate_matrix(ds["X"], ds["genes"], reasoning=False)
    s = np.asarray(scorer.score_many(list(ds["truth"]), list(res.label)))
    bins = pd.cut(res.confidence, [0, 0.25, 0.5, 0.75, 0.9, 1.0], include_lowest=True)
    df = pd.DataFrame({"confidence": bins, "conf": res.confidence, "score": s,
                       "exact": s == 1, "lineage_ok": s > 0, "consistent": consistent})
    parts, ece = [], []
    for name, sub in (("all", df), ("label-consistent", df[df["consistent"]])):
        g = sub.groupby("confidence", observed=True).agg(
            cells=("score", "size"), mean_conf=("conf", "mean"), exact=("exact", "mean"),
            mean_score=("score", "mean"), lineage_right=("lineage_ok", "mean"))
        w = g["cells"] / g["cells"].sum()
        ece.append({"cells": name, **{f"ECE vs {c}": float((w * (g["mean_conf"] - g[c]).abs())
                                                            .sum())
                                      for c in ("exact", "mean_score", "lineage_right")}})
        parts.append(g.set_axis(pd.MultiIndex.from_product([[name], g.columns]), axis=1))
    return pd.concat(parts, axis=1), pd.DataFrame(ece)


def speed(ds: dict, n_cells: int) -> pd.DataFrame:
    reps = max(1, n_cells // ds["X"].shape[0])
    X = sp.vstack([ds["X"]] * reps).tocsr()
    r = Reasoner()
    rows = []
    for reasoning in (False, True):
        t0 = time.perf_counter()
        r.annotate_matrix(X, ds["genes"], reasoning=reasoning)
        dt = time.perf_counter() - t0
        rows.append({"cells": X.shape[0], "traces": reasoning, "seconds": round(dt, 2),
                     "cells/s": int(X.shape[0] / dt)})
    conn = sp.kron(sp.identity(reps, format="csr"), ds["connectivities"], format="csr")
    t0 = time.perf_counter()
    r.annotate_matrix(X, ds["genes"], connectivities=conn, reasoning=False)
    dt = time.perf_counter() - t0
    rows.append({"cells": X.shape[0], "traces": "no (+kNN smoothing)", "seconds": round(dt, 2),
                 "cells/s": int(X.shape[0] / dt)})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    # 20 splits hold every cell out about 10 times; with 5 the pooled rows weight cells by how
    # often chance held them out (1 to 5 times), which the paired per-cell table avoids
    ap.add_argument("--seeds", type=int, default=20,
                    help="SingleR half/half splits (default 20)")
    ap.add_argument("--speed-cells", type=int, default=200_000,
                    help="cells for the speed test (pbmc68k tiled; default 200000)")
    args = ap.parse_args()
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    scorer = PairScorer()
    datasets = [load_demo(args.shared), load_pbmc68k()]
    rows = []
    per_label = {}
    confusions = {}
    audits: dict[str, pd.Series] = {}
    audit_rows: list[dict] = []
    paired: list[dict] = []
    for ds in datasets:
        truth = list(ds["truth"])
        by_label = pd.DataFrame({"truth": truth})
        for tissue in (None, "blood"):
            for method, pred in reasoner_predictions(ds, tissue).items():
                s = scorer.score_many(truth, list(pred))
                if tissue is None:
                    by_label[f"builtin {method}"] = s
                    if method == "per cell":
                        confusions[ds["name"]] = confusion(truth, pred, scorer)
                rows.append({"dataset": ds["name"],
                             "method": f"builtin {method}" + (f" [tissue={tissue}]" if tissue
                                                              else ""),
                             **summarize(s)})
        held_r, held_s, held_k, held_ok = [], [], [], []
        singler_sum = np.zeros(len(truth))
        singler_n = np.zeros(len(truth))
        # the builtin never sees labels: its answer for a held-out cell is its answer on the
        # whole dataset (per cell it is the same; with kNN the graph is label-free)
        knn_scores = np.asarray(by_label["builtin per cell + kNN smoothing"])
        audit, notes = label_audit(ds)
        audits[ds["name"]] = (audit, notes)
        for seed in range(args.seeds):
            train, test = stratified_half(ds["truth"], seed)
            pred_s = singler_predict(ds, train, test)
            held_s.append(scorer.score_many([truth[i] for i in test], list(pred_s)))
            np.add.at(singler_sum, test, held_s[-1])
            np.add.at(singler_n, test, 1)
            pred_r = Reasoner().annotate_matrix(ds["X"][test], ds["genes"],
                                                reasoning=False).label
            held_r.append(scorer.score_many([truth[i] for i in test], list(pred_r)))
            held_k.append(knn_scores[test])
            held_ok.append((audit.to_numpy() == "")[test])
        held = {"SingleR": np.concatenate(held_s), "builtin per cell": np.concatenate(held_r),
                "builtin + kNN": np.concatenate(held_k)}
        ok = np.concatenate(held_ok)
        rows.append({"dataset": ds["name"],
                     "method": f"SingleR (trained on other half, {args.seeds} splits)",
                     **summarize(held["SingleR"])})
        rows.append({"dataset": ds["name"],
                     "method": "builtin per cell on the same held-out halves",
                     **summarize(held["builtin per cell"])})
        rows.append({"dataset": ds["name"],
                     "method": "builtin per cell + kNN on the same held-out halves",
                     **summarize(held["builtin + kNN"])})
        audit_rows.extend(
            {"dataset": ds["name"], "held-out cells": subset, "n": int(m.sum()),
             **{k: float(v[m].mean()) if m.any() else float("nan") for k, v in held.items()}}
            for subset, m in (("all", np.ones_like(ok)), ("label-consistent", ok),
                              ("label contradicted by own markers", ~ok)))
        by_label["SingleR (held-out)"] = np.where(singler_n > 0, singler_sum /
                                                  np.maximum(singler_n, 1), np.nan)
        # paired per cell: the builtin + kNN minus SingleR's mean over the splits that held
        # the cell out; 95% bootstrap interval over cells (fixed seed)
        seen = singler_n > 0
        diff = knn_scores[seen] - singler_sum[seen] / singler_n[seen]
        rng = np.random.default_rng(0)
        boot = [rng.choice(diff, len(diff)).mean() for _ in range(2000)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        paired.append({"dataset": ds["name"], "cells": int(seen.sum()),
                       "builtin + kNN minus SingleR": float(diff.mean()),
                       "95% CI low": float(lo), "95% CI high": float(hi)})
        per_label[ds["name"]] = by_label.groupby("truth").agg(
            cells=("truth", "size"), **{c: (c, "mean") for c in by_label.columns[1:]})
    table = pd.DataFrame(rows)
    fmt = {c: "{:.3f}".format for c in ["mean", *LEVELS.values()]}
    print("\n== Hierarchical score (mean) and 4-level distribution ==")
    print(table.to_string(index=False, formatters=fmt))
    print("\nPaired per cell (each held-out cell once, averaged over the splits that held it "
          "out; the pooled rows above weight cells by how often they were held out; the "
          "interval resamples cells, not splits):")
    print(pd.DataFrame(paired).to_string(index=False, float_format="{:+.3f}".format))
    for name, tab in per_label.items():
        print(f"\n== Mean score per ground-truth label: {name} ==")
        print(tab.to_string(float_format="{:.2f}".format))
    for name, tab in confusions.items():
        print(f"\n== Builtin per cell: most frequent answers per ground-truth label: {name} ==")
        print(tab.to_string(float_format="{:.2f}".format))
    print("\n== Label audit: cells whose own expression contradicts their label ==")
    print("(rules in bench/accuracy.py AUDIT_RULES: textbook markers, which the builtin's "
          "knowledge base also uses)")
    for name, (audit, notes) in audits.items():
        counts = audit[audit != ""].value_counts()
        print(f"{name}: {int(counts.sum())} of {len(audit)} cells")
        for text, n in counts.items():
            print(f"  {n:4d}  {text}")
        for note in notes:
            print(f"        note: {note}")
    print("\nMean score on the held-out halves, by audit outcome:")
    print(pd.DataFrame(audit_rows).to_string(index=False, float_format="{:.3f}".format))
    ds68 = datasets[1]
    table68, ece = calibration(ds68, scorer, (audits[ds68["name"]][0] == "").to_numpy())
    print("\n== Calibration on pbmc68k_reduced (per cell, all tissues) ==")
    print(table68.to_string(float_format="{:.3f}".format))
    print(ece.to_string(index=False, float_format="{:.3f}".format))
    print(f"\n== Speed (pbmc68k_reduced tiled to ~{args.speed_cells:,} cells) ==")
    print(speed(datasets[1], args.speed_cells).to_string(index=False))


if __name__ == "__main__":
    main()
